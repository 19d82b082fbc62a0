//! Bounded tables: pruning deletes inbox keys older than the inbox retention (longer
//! than the streams keep messages) and published outbox rows older than a week, and
//! keeps what someone must still act on (rejected messages, unpublished events).

use renewal_contract::subject;
use renewal_e2e::{TestSystem, local, policy};
use renewal_platform::retention::{Retention, prune_once};

async fn count(system: &TestSystem, sql: &'static str) -> i64 {
    sqlx::query_scalar(sql)
        .fetch_one(system.sim.pool())
        .await
        .expect("count")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pruning_deletes_what_is_past_its_retention_and_keeps_the_rest() {
    let system = TestSystem::start("rt", local("2026-12-01", 0)).await;
    let sim = &system.sim;
    // A rejected message (kept for inspection) beside ordinary ones.
    sim.deps
        .bus
        .publish(
            subject::CORE_POLICY_UPSERTED,
            "garbage-rt",
            None,
            vec![0xff],
        )
        .await
        .expect("published");
    sim.publish_policies(&[
        policy("P2026R0001", "2027-02-15"),
        policy("P2026R0002", "2027-03-15"),
    ])
    .await
    .expect("published");
    sim.settle().await.expect("settles");
    let handled = count(
        &system,
        "SELECT count(*) FROM lists.inbox WHERE rejected_reason IS NULL",
    )
    .await;
    let published = count(
        &system,
        "SELECT count(*) FROM lists.outbox WHERE published_at IS NOT NULL",
    )
    .await;
    assert!(
        handled >= 2 && published >= 1,
        "{handled} handled, {published} published"
    );

    // Nothing is old enough yet.
    let pruned = prune_once(sim.pool(), "lists", Retention::default())
        .await
        .expect("pruned");
    assert_eq!((pruned.inbox, pruned.outbox), (0, 0));

    // Forty days on (the database's clock is what retention reads): past the inbox's 35
    // days and the outbox's 7. One event is still waiting to be published.
    sqlx::query("UPDATE lists.inbox SET received_at = received_at - interval '40 days'")
        .execute(sim.pool())
        .await
        .expect("aged");
    sqlx::query("UPDATE lists.outbox SET created_at = created_at - interval '40 days'")
        .execute(sim.pool())
        .await
        .expect("aged");
    sqlx::query(
        "INSERT INTO lists.outbox (id, subject, payload, created_at, set_aside_at, last_error)
         VALUES (gen_random_uuid(), 'lists.case.opened', '\\x00', now() - interval '40 days', now(), 'kept')",
    )
    .execute(sim.pool())
    .await
    .expect("an unpublished event");
    let pruned = prune_once(sim.pool(), "lists", Retention::default())
        .await
        .expect("pruned");
    assert_eq!(
        pruned.inbox as i64, handled,
        "every old key of a handled message"
    );
    assert_eq!(pruned.outbox as i64, published, "every old published event");
    assert_eq!(
        count(&system, "SELECT count(*) FROM lists.inbox").await,
        1,
        "the rejected message stays"
    );
    assert_eq!(
        count(&system, "SELECT count(*) FROM lists.outbox").await,
        1,
        "the unpublished event stays"
    );
    system.finish().await;
}
