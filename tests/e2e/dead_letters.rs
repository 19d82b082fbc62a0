//! Poison and dead letters: a message a consumer fails on every delivery is kept with
//! its reason after the last one (with an event), the consumer goes on, and `hq_admin`
//! replays it once the cause is fixed, exactly once. An event JetStream refuses for
//! what it is is set aside the same way, and the relay publishes what follows it. A
//! letter naming a customer rests sealed, replays, and an erasure clears it.

use std::time::{Duration, Instant};

use renewal_contract::lists::{
    CaseOpened, ErasePersonalData, ErasureReason, ListIssued, ListItem, ListKind,
};
use renewal_contract::platform::{DeadLettered, ErasureDone};
use renewal_contract::subject;
use renewal_e2e::{TestSystem, events, local, policy};
use renewal_platform::pii::Place;
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
            ..Default::default()
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

/// The scheduler's letter of a case's opening as it rests: (message id, payload, sealed
/// payload).
async fn scheduler_letter(system: &TestSystem) -> (String, Vec<u8>, Vec<u8>) {
    sqlx::query_as(
        "SELECT message_id, payload, sealed_payload FROM scheduler.dead_letters
         WHERE subject = 'lists.case.opened'",
    )
    .fetch_one(system.sim.pool())
    .await
    .expect("the letter")
}

/// Opens the scheduler's letter as a key rotation would (bound to its table and key).
fn open_scheduler_letter(message_id: &str, sealed: &[u8]) -> CaseOpened {
    let pii = renewal_platform::pii::PiiCipher::for_service(
        &secrecy::SecretString::from(renewal::simulation::DEMO_PII_KEY),
        "scheduler",
    )
    .expect("the demo key");
    let row = format!("consumer/lists.case.>/{message_id}");
    let place = Place::new("scheduler.dead_letters", "sealed_payload", &row);
    let plain = pii
        .open_bytes(sealed, place)
        .expect("opens under its place");
    let elsewhere = Place::new("scheduler.dead_letters", "sealed_payload", "consumer/x/y");
    assert!(
        pii.open_bytes(sealed, elsewhere).is_err(),
        "bound to its row"
    );
    prost::Message::decode(plain.as_slice()).expect("a case opening")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_letter_naming_a_customer_rests_sealed_or_without_it_replays_and_is_erased() {
    let system = TestSystem::start_with_deliveries("dls", local("2026-12-01", 0), 3).await;
    let sim = &system.sim;
    // The scheduler trips on this one case's row until the trigger goes.
    sqlx::raw_sql(
        "CREATE FUNCTION scheduler.refuse_poison() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN
             IF NEW.policy_no = 'P2026L0007' THEN RAISE EXCEPTION 'poison case'; END IF;
             RETURN NEW;
         END $$;
         CREATE TRIGGER refuse_poison BEFORE INSERT ON scheduler.cases
             FOR EACH ROW EXECUTE FUNCTION scheduler.refuse_poison();
         CREATE TRIGGER refuse_poison BEFORE INSERT ON assignment.cases
             FOR EACH ROW EXECUTE FUNCTION scheduler.refuse_poison();",
    )
    .execute(sim.pool())
    .await
    .expect("trigger");
    let customer = policy("P2026L0007", "2027-02-15");
    sim.publish_policies(std::slice::from_ref(&customer))
        .await
        .expect("published");
    wait_for_count(
        &system,
        "SELECT count(*) FROM scheduler.dead_letters",
        1,
        "the scheduler's dead letters",
    )
    .await;

    wait_for_count(
        &system,
        "SELECT count(*) FROM assignment.dead_letters",
        1,
        "assignment's dead letters",
    )
    .await;

    // Assignment holds no key: its letter keeps the opening without the customer.
    let (payload, sealed): (Vec<u8>, Vec<u8>) =
        sqlx::query_as("SELECT payload, sealed_payload FROM assignment.dead_letters")
            .fetch_one(sim.pool())
            .await
            .expect("assignment's letter");
    assert!(sealed.is_empty());
    let kept: CaseOpened = prost::Message::decode(payload.as_slice()).expect("an opening");
    assert_eq!(
        (kept.policy_no.as_str(), kept.customer),
        ("P2026L0007", None)
    );

    // The scheduler's at rest: sealed, nothing of the customer in clear.
    let (message_id, payload, sealed) = scheduler_letter(&system).await;
    assert!(payload.is_empty(), "the clear payload is not kept");
    let haystack = String::from_utf8_lossy(&sealed);
    for clear in [
        &customer.mobile[3..],
        &customer.customer_name,
        &customer.plate,
    ] {
        assert!(!haystack.contains(clear), "{clear} in clear");
    }
    let opened = open_scheduler_letter(&message_id, &sealed);
    let contact = opened.customer.clone().expect("kept whole");
    assert_eq!(contact.mobile, customer.mobile);

    // Replayed once the cause is fixed: the case is the scheduler's, with its contact.
    sqlx::raw_sql(
        "DROP TRIGGER refuse_poison ON scheduler.cases;
         DROP TRIGGER refuse_poison ON assignment.cases;",
    )
    .execute(sim.pool())
    .await
    .expect("drop triggers");
    let page = system.get_items("/v1/dead-letters/assignment").await;
    let id = page[0]["id"].as_i64().expect("a letter waiting");
    let replay = format!("/v1/dead-letters/assignment/{id}:replay");
    let (status, body) = system.post_json(&replay, serde_json::json!({})).await;
    assert_eq!(
        (status, body["result"].as_str()),
        (200, Some("applied")),
        "{body}"
    );
    let page = system.get_items("/v1/dead-letters/scheduler").await;
    let id = page[0]["id"].as_i64().expect("a letter waiting");
    let replay = format!("/v1/dead-letters/scheduler/{id}:replay");
    let (status, body) = system.post_json(&replay, serde_json::json!({})).await;
    assert_eq!(
        (status, body["result"].as_str()),
        (200, Some("applied")),
        "{body}"
    );
    let held: bool = sqlx::query_scalar(
        "SELECT contact_enc IS NULL AND length(mobile_enc) > 0 AND mobile_index IS NOT NULL
         FROM scheduler.cases WHERE case_id = $1::uuid",
    )
    .bind(&opened.case_id)
    .fetch_one(sim.pool())
    .await
    .expect("the case");
    assert!(
        held,
        "the replayed opening brought its mobile (sealed and indexed)"
    );

    // Erased: the letter stays sealed and no longer names the customer.
    let erase = ErasePersonalData {
        erasure_id: "erase-letter-1".into(),
        case_ids: vec![opened.case_id.clone()],
        reason: ErasureReason::Request as i32,
        requested_at_ms: 0,
    };
    sim.deps
        .bus
        .publish(
            subject::SCHEDULER_CMD_ERASE_PERSONAL_DATA,
            "erase-letter-1",
            None,
            prost::Message::encode_to_vec(&erase),
        )
        .await
        .expect("published");
    sim.settle().await.expect("settles");
    let done: Vec<ErasureDone> = events(&system, subject::SCHEDULER_ERASURE_DONE).await;
    assert_eq!(done.len(), 1);
    assert_eq!(
        done[0].erased.get("dead_letters"),
        Some(&1),
        "{:?}",
        done[0]
    );
    let (_, payload, sealed) = scheduler_letter(&system).await;
    assert!(payload.is_empty());
    let erased = open_scheduler_letter(&message_id, &sealed);
    assert_eq!(erased.customer, None);
    assert_eq!(erased.case_id, opened.case_id);
    system.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_erasure_request_clears_the_customer_from_lists_sealed_letters() {
    let system = TestSystem::start_with_deliveries("dll", local("2026-12-01", 0), 3).await;
    let sim = &system.sim;
    let first = policy("P2026L0008", "2027-02-15");
    sim.publish_policies(std::slice::from_ref(&first))
        .await
        .expect("published");
    sim.settle().await.expect("settles");
    // The policy's second version trips lists until it is given up on.
    sqlx::raw_sql(
        "CREATE FUNCTION lists.refuse_second() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN
             IF NEW.version = 2 THEN RAISE EXCEPTION 'poison version'; END IF;
             RETURN NEW;
         END $$;
         CREATE TRIGGER refuse_second BEFORE UPDATE ON lists.policies
             FOR EACH ROW EXECUTE FUNCTION lists.refuse_second();",
    )
    .execute(sim.pool())
    .await
    .expect("trigger");
    let mut second = first.clone();
    second.version = 2;
    second.plate = "沪AD54321".into();
    sim.publish_policies(std::slice::from_ref(&second))
        .await
        .expect("published");
    wait_for_count(
        &system,
        "SELECT count(*) FROM lists.dead_letters",
        1,
        "lists' dead letters",
    )
    .await;
    let pii = renewal_platform::pii::PiiCipher::for_service(
        &secrecy::SecretString::from(renewal::simulation::DEMO_PII_KEY),
        "lists",
    )
    .expect("the demo key");
    let letter = || async {
        let (key, payload, sealed): (String, Vec<u8>, Vec<u8>) = sqlx::query_as(
            "SELECT source || '/' || consumer || '/' || message_id, payload, sealed_payload
             FROM lists.dead_letters",
        )
        .fetch_one(sim.pool())
        .await
        .expect("the letter");
        assert!(payload.is_empty(), "kept sealed only");
        assert!(!String::from_utf8_lossy(&sealed).contains("13812345678"));
        let place = Place::new("lists.dead_letters", "sealed_payload", &key);
        let plain = pii.open_bytes(&sealed, place).expect("opens");
        let upsert: renewal_contract::core::PolicyUpserted =
            prost::Message::decode(plain.as_slice()).expect("an upsert");
        upsert.policy.expect("a policy")
    };
    assert_eq!(letter().await.plate, second.plate, "kept whole, sealed");

    let (status, body) = system
        .post_json("/v1/erasures", serde_json::json!({"mobile": first.mobile}))
        .await;
    assert_eq!(status, 202, "{body}");
    let cleared: Option<String> = sqlx::query_scalar(
        "SELECT erased->>'dead_letters' FROM lists.erasure_answers WHERE service = 'lists'",
    )
    .fetch_one(sim.pool())
    .await
    .expect("lists' answer");
    assert_eq!(cleared.as_deref(), Some("1"));
    let kept = letter().await;
    assert_eq!(kept.policy_no, "P2026L0008");
    for field in [
        &kept.customer_name,
        &kept.mobile,
        &kept.id_number,
        &kept.plate,
        &kept.vin,
    ] {
        assert_eq!(field, "[redacted]");
    }
    system.finish().await;
}
