//! The walking skeleton across all four services, against the real Postgres and NATS:
//! a policy imported into lists becomes a case, is listed for its branch, claimed in
//! assignment, and gets a T-60 timer in scheduler, whose SMS command dispatch sends to the (mock) vendor over
//! HTTP; the vendor's receipt comes back through the webhook and is recorded.

use std::time::Duration;

use renewal_contract::{Stream, subject};
use renewal_e2e::{ORG_CSV, TestSystem, local, policy};

async fn stream_messages(system: &TestSystem, stream: Stream) -> u64 {
    let bus = &system.sim.deps.bus;
    let mut s = bus
        .js
        .get_stream(bus.subjects.stream(stream))
        .await
        .expect("stream exists");
    s.info().await.expect("stream info").state.messages
}

/// Shrinks the server's duplicate window to 200 ms, so a copy published after it is
/// stored and delivered: only the inbox stands between it and a second effect.
async fn shrink_duplicate_window(bus: &renewal_platform::Bus, stream: Stream) {
    let mut config = bus
        .js
        .get_stream(bus.subjects.stream(stream))
        .await
        .expect("stream")
        .info()
        .await
        .expect("info")
        .config
        .clone();
    config.duplicate_window = Duration::from_millis(200);
    bus.js.update_stream(config).await.expect("stream updated");
}

async fn sms_rows(system: &TestSystem, policy_no: &str) -> Vec<(String, String, Option<String>)> {
    sqlx::query_as("SELECT stage, state, vendor_code FROM dispatch.sms_messages WHERE policy_no = $1 ORDER BY stage")
        .bind(policy_no)
        .fetch_all(system.sim.pool())
        .await
        .expect("dispatch query")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_policy_travels_from_import_to_a_recorded_sms_receipt() {
    let system = TestSystem::start("sk", local("2026-12-01", 0)).await;
    let sim = &system.sim;
    system.load_org(ORG_CSV).await;
    // Expires in 76 days: inside the 90-day window at once; T-60 is 17 December 10:00.
    sim.publish_policies(&[policy("P2026A0001", "2027-02-15")])
        .await
        .expect("published");
    // The daily run at 00:05 issues the monthly lists: the case is SH01's to claim.
    sim.advance_to(local("2026-12-01", 9))
        .await
        .expect("time moves");
    let claims = system.get_items("/v1/branches/SH01/claims").await;
    assert_eq!(claims[0]["policy_no"], "P2026A0001", "{claims}");
    let (status, claimed) = system
        .post_json(
            "/v1/claims/P2026A0001:claim",
            serde_json::json!({"branch_code": "SH01", "owner_agent": "SH01-A03"}),
        )
        .await;
    assert_eq!(status, 200, "{claimed}");
    sim.settle().await.expect("settles");

    let (status, lists) = system.get_json("/v1/policies/P2026A0001").await;
    assert_eq!(status, 200, "{lists}");
    assert_eq!(lists["status"], "active");
    assert_eq!(lists["case"]["state"], "open");
    assert_eq!(
        lists["mobile_masked"], "138****5678",
        "the API masks the mobile"
    );

    let (status, case) = system.get_json("/v1/cases/P2026A0001").await;
    assert_eq!(status, 200, "{case}");
    assert_eq!(case["owner_agent"], "SH01-A03");
    assert_eq!(case["credited_agent"], "SH01-A03");
    assert_eq!(case["history"].as_array().map(Vec::len), Some(1));
    assert_eq!(case["history"][0]["reason"], "branch_claim");
    assert_eq!(
        case["routing"][0]["step"], "branch",
        "listed for the branch first"
    );

    let timers: Vec<(String, String, chrono::DateTime<chrono::Utc>)> =
        sqlx::query_as("SELECT stage, state, due_at FROM scheduler.timers ORDER BY due_at, stage")
            .fetch_all(sim.pool())
            .await
            .expect("timers");
    let stages: Vec<&str> = timers.iter().map(|t| t.0.as_str()).collect();
    assert_eq!(
        stages,
        [
            "T-60",
            "T-30",
            "T-15 call",
            "T-15 SMS",
            // T-5 (10 February 2027) is in the Spring Festival: asked before it.
            "T-5",
            "T-10",
            "T-7",
            "T+1",
            "T+15"
        ],
        "the default plan"
    );
    assert!(timers.iter().all(|t| t.1 == "pending"), "{timers:?}");
    assert_eq!(timers[0].2, local("2026-12-17", 10), "T-60 at 10:00");
    assert!(
        sms_rows(&system, "P2026A0001").await.is_empty(),
        "nothing is sent before T-60"
    );

    sim.advance_to(local("2026-12-17", 12))
        .await
        .expect("time moves");
    assert_eq!(
        sms_rows(&system, "P2026A0001").await,
        vec![(
            "T-60".to_owned(),
            "delivered".to_owned(),
            Some("DELIVERED".to_owned())
        )]
    );
    let sent_at: chrono::DateTime<chrono::Utc> = sqlx::query_scalar(
        "SELECT sent_at FROM dispatch.sms_messages WHERE policy_no = 'P2026A0001'",
    )
    .fetch_one(sim.pool())
    .await
    .expect("sent_at");
    assert_eq!(
        sent_at,
        local("2026-12-17", 10),
        "sent when due, in daytime"
    );
    let vendor: Vec<(String, String)> =
        sqlx::query_as("SELECT out_id, template_code FROM demo.vendor_messages")
            .fetch_all(sim.pool())
            .await
            .expect("vendor");
    let timer_id: uuid::Uuid =
        sqlx::query_scalar("SELECT id FROM scheduler.timers WHERE stage = 'T-60'")
            .fetch_one(sim.pool())
            .await
            .expect("timer");
    assert_eq!(
        vendor,
        vec![(timer_id.to_string(), "SMS_RENEWAL_T60".to_owned())],
        "one SMS, OutId = the timer"
    );

    // One trace follows the policy: case opened, SMS command, sent, delivered.
    // (Events of the daily run that cover many cases, such as the monthly list issued on
    // 1 December, start traces of their own, and so does the branch's claim request.)
    let trace_of = |tp: Option<String>| tp.and_then(|t| t.split('-').nth(1).map(str::to_owned));
    let mut traces = std::collections::BTreeSet::new();
    // The scheduler's timers are its outbox: each fired timer's command carries its trace.
    for (table, filter) in [
        (
            "lists.outbox",
            "subject NOT LIKE '%lists.list.issued' AND subject NOT LIKE '%lists.case.bucket_changed'
             AND subject NOT LIKE '%lists.quote.missing' AND subject NOT LIKE '%lists.review.issued'",
        ),
        ("scheduler.timers", "state = 'fired'"),
        ("dispatch.outbox", "true"),
    ] {
        let rows: Vec<Option<String>> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "SELECT traceparent FROM {table} WHERE {filter}"
        )))
        .fetch_all(sim.pool())
        .await
        .expect("outbox");
        assert!(!rows.is_empty(), "{table} published");
        for tp in rows {
            traces
                .insert(trace_of(tp).unwrap_or_else(|| panic!("{table} row without traceparent")));
        }
    }
    assert_eq!(
        traces.len(),
        1,
        "one trace id across all four services: {traces:?}"
    );

    // Every hop was a real JetStream message.
    assert_eq!(stream_messages(&system, Stream::Core).await, 1);
    let opened: Vec<renewal_contract::lists::CaseOpened> =
        renewal_e2e::events(&system, subject::LISTS_CASE_OPENED).await;
    assert_eq!(opened.len(), 1, "case opened");
    assert_eq!(
        stream_messages(&system, Stream::Assignment).await,
        1,
        "owner assigned (the list issued announced the claim)"
    );
    assert_eq!(
        stream_messages(&system, Stream::Dispatch).await,
        3,
        "send_sms, sms.sent, sms.delivered"
    );
    system.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renewal_stops_every_reminder_and_an_unrenewed_case_lapses() {
    let system = TestSystem::start("rn", local("2026-12-01", 0)).await;
    let sim = &system.sim;
    sim.publish_policies(&[
        policy("P2026B0001", "2027-02-15"),
        policy("P2026B0002", "2026-12-20"),
    ])
    .await
    .expect("published");
    sim.advance_to(local("2026-12-10", 11))
        .await
        .expect("time moves");
    sim.publish_renewal("P2026B0001", "R2027B0001")
        .await
        .expect("renewal published");
    sim.advance_to(local("2026-12-22", 1))
        .await
        .expect("time moves");

    let (_, renewed) = system.get_json("/v1/policies/P2026B0001").await;
    assert_eq!(renewed["status"], "renewed");
    assert_eq!(renewed["case"]["state"], "renewed");
    assert!(
        sms_rows(&system, "P2026B0001").await.is_empty(),
        "no reminder after renewal"
    );
    let states: Vec<String> = sqlx::query_scalar(
        "SELECT DISTINCT t.state FROM scheduler.timers t JOIN scheduler.cases c USING (case_id) WHERE c.policy_no = 'P2026B0001'",
    )
    .fetch_all(sim.pool())
    .await
    .expect("timers");
    assert_eq!(states, ["cancelled"], "every stage of the renewed case");

    // Expired on 20 December, never renewed: lapsed by the daily run of the 21st.
    let (_, lapsed) = system.get_json("/v1/policies/P2026B0002").await;
    assert_eq!(lapsed["status"], "lapsed");
    assert_eq!(lapsed["case"]["state"], "lapsed");
    let skipped: String = sqlx::query_scalar(
        "SELECT t.state FROM scheduler.timers t JOIN scheduler.cases c USING (case_id)
         WHERE c.policy_no = 'P2026B0002' AND t.stage = 'T-60'",
    )
    .fetch_one(sim.pool())
    .await
    .expect("timer");
    assert_eq!(
        skipped, "skipped",
        "T-60 was already behind when the case opened"
    );
    system.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redelivered_message_has_no_second_effect() {
    let system = TestSystem::start("rd", local("2026-12-01", 0)).await;
    let sim = &system.sim;
    let bus = &sim.deps.bus;
    // Shrink the server's duplicate window, so only our inbox stands between a
    // redelivery and a second effect.
    shrink_duplicate_window(bus, Stream::Lists).await;
    let name = bus.subjects.stream(Stream::Lists);

    sim.publish_policies(&[policy("P2026C0001", "2027-02-15")])
        .await
        .expect("published");
    sim.settle().await.expect("settles");
    let id: uuid::Uuid = sqlx::query_scalar("SELECT id FROM lists.outbox WHERE subject = $1")
        .bind(subject::LISTS_CASE_OPENED)
        .fetch_one(sim.pool())
        .await
        .expect("the case.opened event");
    // A published row keeps no payload (it held the customer's contact): the copy
    // republished is the one in the stream.
    let payload = bus
        .js
        .get_stream(&name)
        .await
        .expect("stream")
        .get_last_raw_message_by_subject(&bus.subjects.subject(subject::LISTS_CASE_OPENED))
        .await
        .expect("the event in the stream")
        .payload
        .to_vec();
    tokio::time::sleep(Duration::from_millis(400)).await;
    // The relay crashed after publishing but before marking the row: it publishes again.
    bus.publish(subject::LISTS_CASE_OPENED, &id.to_string(), None, payload)
        .await
        .expect("republished");
    sim.settle().await.expect("settles");

    let stored: u64 = bus
        .js
        .get_stream(&name)
        .await
        .expect("stream")
        .info()
        .await
        .expect("info")
        .state
        .messages;
    assert_eq!(
        stored, 2,
        "the server kept the copy; only the inbox can stop it"
    );
    let timers: i64 = sqlx::query_scalar("SELECT count(*) FROM scheduler.timers")
        .fetch_one(sim.pool())
        .await
        .expect("timers");
    assert_eq!(timers, 9, "one timer per stage of the default plan");
    system.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_message_is_kept_with_its_reason_and_the_consumer_goes_on() {
    let system = TestSystem::start("mf", local("2026-12-01", 0)).await;
    let sim = &system.sim;
    sim.deps
        .bus
        .publish(
            subject::CORE_POLICY_UPSERTED,
            "garbage-1",
            None,
            vec![0xff, 0xff, 0xff],
        )
        .await
        .expect("published");
    let mut bad = policy("P2026D0001", "2027-02-15");
    bad.end_date = "2027-15-45".into();
    sim.publish_policies(&[bad, policy("P2026D0002", "2027-02-15")])
        .await
        .expect("published");
    sim.settle().await.expect("settles");
    let rejected: Vec<(String, String)> = sqlx::query_as(
        "SELECT message_id, rejected_reason FROM lists.inbox WHERE rejected_reason IS NOT NULL ORDER BY message_id",
    )
    .fetch_all(sim.pool())
    .await
    .expect("inbox");
    assert_eq!(rejected.len(), 2, "{rejected:?}");
    assert!(rejected[0].1.contains("end_date"), "{rejected:?}");
    assert_eq!(rejected[1].0, "garbage-1");
    let (status, _) = system.get_json("/v1/policies/P2026D0002").await;
    assert_eq!(
        status, 200,
        "the good policy behind the bad ones still loaded"
    );
    let (status, _) = system.get_json("/v1/policies/P2026D0001").await;
    assert_eq!(status, 404);
    system.finish().await;
}

/// The call outcomes are a busy stream: lists, assignment and the scheduler take the
/// ones that are ready together in one transaction. A burst with a malformed message
/// and a late copy of an earlier one among them: the bad one is set aside with its
/// reason, every other call counts once, none twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_call_outcomes_with_a_bad_one_and_a_copy_counts_each_call_once() {
    use renewal_contract::dispatch::{CallOutcome, PhoneTaskCompleted};
    let system = TestSystem::start("bo", local("2026-12-01", 0)).await;
    let sim = &system.sim;
    let bus = &sim.deps.bus;
    let policies: Vec<_> = (1..=10)
        .map(|i| policy(&format!("P2026B{i:04}"), "2027-02-15"))
        .collect();
    sim.publish_policies(&policies).await.expect("published");
    sim.settle().await.expect("settles");
    let cases: Vec<(uuid::Uuid, String)> =
        sqlx::query_as("SELECT case_id, policy_no FROM lists.cases ORDER BY policy_no")
            .fetch_all(sim.pool())
            .await
            .expect("cases");
    assert_eq!(cases.len(), 10);
    // A copy published after the window the server drops copies in.
    shrink_duplicate_window(bus, Stream::Dispatch).await;

    let call = |k: usize| {
        let (case_id, policy_no) = &cases[k % cases.len()];
        prost::Message::encode_to_vec(&PhoneTaskCompleted {
            task_id: format!("task-{k}"),
            case_id: case_id.to_string(),
            policy_no: policy_no.clone(),
            stage: "T-15".into(),
            outcome: CallOutcome::Unreachable as i32,
            agent_id: "CC-01".into(),
            completed_at_ms: sim.now().timestamp_millis(),
            ..Default::default()
        })
    };
    for k in 0..200 {
        if k == 117 {
            bus.publish(
                subject::DISPATCH_TASK_COMPLETED,
                "call-bad",
                None,
                vec![0xff; 3],
            )
            .await
            .expect("published");
        }
        bus.publish(
            subject::DISPATCH_TASK_COMPLETED,
            &format!("call-{k}"),
            None,
            call(k),
        )
        .await
        .expect("published");
    }
    tokio::time::sleep(Duration::from_millis(400)).await;
    bus.publish(subject::DISPATCH_TASK_COMPLETED, "call-5", None, call(5))
        .await
        .expect("republished");
    sim.settle().await.expect("settles");

    assert_eq!(stream_messages(&system, Stream::Dispatch).await, 202);
    let calls: Vec<i32> =
        sqlx::query_scalar("SELECT calls_made FROM lists.cases ORDER BY policy_no")
            .fetch_all(sim.pool())
            .await
            .expect("calls");
    assert_eq!(calls, vec![20; 10], "each call counted once");
    for schema in ["lists", "assignment", "scheduler"] {
        let (handled, rejected): (i64, Vec<String>) = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT count(*) FILTER (WHERE message_id LIKE 'call-%' AND rejected_reason IS NULL),
                    coalesce(array_agg(message_id) FILTER (WHERE rejected_reason IS NOT NULL), '{{}}')
             FROM {schema}.inbox"
        )))
        .fetch_one(sim.pool())
        .await
        .expect("inbox");
        assert_eq!(handled, 200, "{schema}: every good call once");
        assert_eq!(rejected, vec!["call-bad".to_owned()], "{schema}");
    }
    system.finish().await;
}
