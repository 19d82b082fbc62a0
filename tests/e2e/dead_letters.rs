//! Poison and dead letters: a message a consumer fails on every delivery is kept with
//! its reason after the last one (with an event), the consumer goes on, and `hq_admin`
//! replays it once the cause is fixed, exactly once. An event JetStream refuses for
//! what it is is set aside the same way, and the relay publishes what follows it.

use std::time::{Duration, Instant};

use renewal_contract::lists::{CaseOpened, ListIssued, ListItem, ListKind};
use renewal_contract::platform::DeadLettered;
use renewal_contract::subject;
use renewal_e2e::{TestSystem, events, local, policy};
use serde_json::Value;
use uuid::Uuid;

async fn wait_for_count(system: &TestSystem, sql: &'static str, want: i64, what: &str) {
    let started = Instant::now();
    loop {
        let n: i64 = sqlx::query_scalar(sql)
            .fetch_one(system.sim.pool())
            .await
            .expect("count");
        if n == want {
            return;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "{what}: {n}, not {want}, within 60 s"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poison_message_is_kept_after_its_last_delivery_and_replayed_once_fixed() {
    let system = TestSystem::start_with_deliveries("dl", local("2026-12-01", 0), 5).await;
    let sim = &system.sim;
    sim.publish_policies(&[policy("P2026L0001", "2027-02-15")])
        .await
        .expect("published");
    sim.settle().await.expect("settles");
    let opened: Vec<CaseOpened> = events(&system, subject::LISTS_CASE_OPENED).await;
    let known = opened.first().expect("a case opened").clone();

    // A list naming a case assignment has never heard of: it can never be handled.
    let stranger = Uuid::new_v4();
    let list = ListIssued {
        list_id: Uuid::new_v4().to_string(),
        kind: ListKind::Renewal as i32,
        city_code: known.city_code.clone(),
        branch_code: known.branch_code.clone(),
        issued_on: "2026-12-01".into(),
        monthly: false,
        page: 1,
        pages: 1,
        total_items: 1,
        items: vec![ListItem {
            case_id: stranger.to_string(),
            policy_no: "P2026L0099".into(),
            expiry_date: known.expiry_date.clone(),
            effective_expiry_date: known.effective_expiry_date.clone(),
            days_to_expiry: known.days_to_expiry,
            bucket: known.bucket,
            agent_code: known.agent_code.clone(),
            category: known.category.clone(),
            important: false,
            group_policy: false,
        }],
        issued_at_ms: sim.now().timestamp_millis(),
    };
    sim.deps
        .bus
        .publish(
            subject::LISTS_LIST_ISSUED,
            "poison-list-1",
            None,
            prost::Message::encode_to_vec(&list),
        )
        .await
        .expect("published");
    // Given up after its fifth delivery (this system's MAX_DELIVERIES).
    wait_for_count(
        &system,
        "SELECT count(*) FROM assignment.dead_letters",
        1,
        "dead letters",
    )
    .await;
    let (source, consumer, message_id, reason, deliveries): (String, String, String, String, i32) =
        sqlx::query_as(
            "SELECT source, consumer, message_id, reason, deliveries FROM assignment.dead_letters",
        )
        .fetch_one(sim.pool())
        .await
        .expect("the letter");
    assert_eq!(
        (source.as_str(), consumer.as_str(), message_id.as_str()),
        ("consumer", "lists.list.issued", "poison-list-1")
    );
    assert!(reason.contains("not opened here yet"), "{reason}");
    assert_eq!(deliveries, 5);
    sim.settle()
        .await
        .expect("the consumer goes on; nothing left in flight");
    let announced: Vec<DeadLettered> = events(&system, "assignment.dead_letter.recorded").await;
    assert_eq!(announced.len(), 1);
    assert_eq!(announced[0].message_id, "poison-list-1");

    // hq_admin sees it, without its payload.
    let page = system.get_items("/v1/dead-letters/assignment").await;
    let items = page.as_array().expect("items");
    assert_eq!(items.len(), 1, "{page}");
    let id = items[0]["id"].as_i64().expect("id");
    assert!(items[0].get("payload").is_none());
    assert_eq!(items[0]["reason"], Value::String(reason.clone()));

    // Replayed before the cause is fixed: it fails again and stays waiting.
    let replay = format!("/v1/dead-letters/assignment/{id}:replay");
    let (status, body) = system.post_json(&replay, serde_json::json!({})).await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["code"], "replay_failed");

    // The cause goes (the case opens), and the replay applies it, once.
    let mut late = known.clone();
    late.case_id = stranger.to_string();
    late.policy_no = "P2026L0099".into();
    sim.deps
        .bus
        .publish(
            subject::LISTS_CASE_OPENED,
            "late-open-1",
            None,
            prost::Message::encode_to_vec(&late),
        )
        .await
        .expect("published");
    sim.settle().await.expect("settles");
    let (status, body) = system.post_json(&replay, serde_json::json!({})).await;
    assert_eq!(
        (status, body["result"].as_str()),
        (200, Some("applied")),
        "{body}"
    );
    let (list_id, phase): (Option<Uuid>, String) =
        sqlx::query_as("SELECT list_id, phase FROM assignment.cases WHERE case_id = $1")
            .bind(stranger)
            .fetch_one(sim.pool())
            .await
            .expect("the case");
    assert_eq!(list_id.map(|l| l.to_string()), Some(list.list_id.clone()));
    assert_ne!(phase, "awaiting_list");
    let (status, body) = system.post_json(&replay, serde_json::json!({})).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (409, Some("already_replayed"))
    );
    assert!(
        system
            .get_items("/v1/dead-letters/assignment")
            .await
            .as_array()
            .is_some_and(|a| a.is_empty()),
        "none waiting"
    );
    system.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_jetstream_refuses_is_set_aside_and_the_relay_goes_on() {
    let system = TestSystem::start_with_deliveries("do", local("2026-12-01", 0), 5).await;
    let sim = &system.sim;
    // An event for a subject no stream captures (a bug of ours), written like any
    // event of the service's, then an ordinary one behind it.
    let refused = Uuid::now_v7();
    let mut tx = sim.pool().begin().await.expect("begin");
    sqlx::query(
        "INSERT INTO lists.outbox (id, subject, payload) VALUES ($1, 'nowhere.event', '\\x00')",
    )
    .bind(refused)
    .execute(&mut *tx)
    .await
    .expect("written");
    tx.commit().await.expect("committed");
    sim.publish_policies(&[policy("P2026L0002", "2027-02-15")])
        .await
        .expect("published");

    wait_for_count(
        &system,
        "SELECT count(*) FROM lists.dead_letters WHERE source = 'outbox'",
        1,
        "outbox letters",
    )
    .await;
    sim.settle().await.expect("the relay went on");
    let opened: Vec<CaseOpened> = events(&system, subject::LISTS_CASE_OPENED).await;
    assert_eq!(opened.len(), 1, "the event behind it was published");
    let (attempts, set_aside, error): (i32, bool, Option<String>) = sqlx::query_as(
        "SELECT attempts, set_aside_at IS NOT NULL, last_error FROM lists.outbox WHERE id = $1",
    )
    .bind(refused)
    .fetch_one(sim.pool())
    .await
    .expect("the row");
    assert_eq!((attempts, set_aside), (5, true));
    assert!(error.is_some());
    let page = system.get_items("/v1/dead-letters/lists").await;
    assert_eq!(page[0]["source"], "outbox", "{page}");
    assert_eq!(page[0]["message_id"], refused.to_string());
    system.finish().await;
}
