//! Dispatch's phone-task gateway against the real Postgres and NATS, on the simulated
//! clock: commands become tasks ordered by urgency; 100 parallel leases never hand a
//! task out twice; stale and foreign tokens get 409; outcomes come out as events (a
//! wrong number marks the contact data); an expired lease returns the task and five
//! leases without an outcome dead-letter it; no calls at night; a renewal withdraws
//! the case's tasks; an owner change moves the owner's tasks. And the SMS sender
//! against the mock vendor: a send due at night waits for the morning; a vendor outage
//! (HTTP 503) is retried with a growing wait, a permanent refusal fails at once with its
//! code, and an outage that outlasts five attempts leaves the message dead with its
//! reason. Operations see each queue's figures and the dead tasks, HQ puts a dead task
//! back once, and a case's contacts show its SMS with their receipts and its calls with
//! their outcomes, with no personal data. HQ sees the failed and dead SMS and the
//! opt-outs with their numbers masked, and resends a dead SMS once (not a reminder to a
//! number that opted out, nor for a closed case), as a new message.

use std::collections::HashSet;

use renewal_contract::assignment::OwnerAssigned;
use renewal_contract::dispatch::{CallOutcome, PhoneTaskCompleted};
use renewal_contract::lists::CaseOpened;
use renewal_contract::scheduler::{CreatePhoneTask, TaskQueue};
use renewal_contract::subject;
use renewal_e2e::{TestSystem, events, local, policy, queue_sms, send_sms};
use serde_json::{Value, json};
use uuid::Uuid;

fn command(case_id: Uuid, queue: TaskQueue, owner: &str, days_to_expiry: i32) -> CreatePhoneTask {
    CreatePhoneTask {
        command_id: Uuid::new_v4().to_string(),
        case_id: case_id.to_string(),
        policy_no: format!("P{}", &case_id.simple().to_string()[..10]),
        stage: "T-15".into(),
        queue: queue as i32,
        owner_agent: owner.into(),
        branch_code: "SH01".into(),
        city_code: "310000".into(),
        promotion: "续保送洗车".into(),
        customer_name: "王芳".into(),
        mobile: "+8613812345678".into(),
        plate: "沪AD12345".into(),
        expiry_date: "2027-01-31".into(),
        time_zone: "Asia/Shanghai".into(),
        days_to_expiry,
        due_at_ms: 0,
    }
}

async fn create(system: &TestSystem, commands: &[CreatePhoneTask]) {
    let bus = &system.sim.deps.bus;
    for c in commands {
        bus.publish(
            subject::DISPATCH_CMD_CREATE_PHONE_TASK,
            &c.command_id,
            None,
            prost::Message::encode_to_vec(c),
        )
        .await
        .expect("published");
    }
    system.sim.settle().await.expect("settles");
}

async fn lease(system: &TestSystem, agent: &str, queue: &str, max: i64, secs: i64) -> Vec<Value> {
    let (status, body) = system
        .post_json(
            "/v1/phone-tasks:lease",
            json!({"agent_id": agent, "queue": queue, "max": max, "lease_seconds": secs}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    body["tasks"].as_array().cloned().unwrap_or_default()
}

async fn act(system: &TestSystem, task: &Value, verb: &str, body: Value) -> (u16, Value) {
    let id = task["id"].as_str().expect("task id");
    system
        .post_json(&format!("/v1/phone-tasks/{id}:{verb}"), body)
        .await
}

async fn state(system: &TestSystem, id: &str) -> (String, i32) {
    sqlx::query_as("SELECT state, leases FROM dispatch.phone_tasks WHERE id = $1::uuid")
        .bind(id)
        .fetch_one(system.sim.pool())
        .await
        .expect("task")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parallel_leases_never_overlap_and_outcomes_are_published_once() {
    let system = TestSystem::start("pt", local("2026-12-01", 10)).await;
    let commands: Vec<_> = (0..150)
        .map(|i| command(Uuid::new_v4(), TaskQueue::Campaign, "", 15 - (i % 30)))
        .collect();
    create(&system, &commands).await;
    // Redelivered commands make no second task.
    create(&system, &commands[..5]).await;
    let count: i64 = sqlx::query_scalar("SELECT count(*) FROM dispatch.phone_tasks")
        .fetch_one(system.sim.pool())
        .await
        .expect("count");
    assert_eq!(count, 150);

    // The most urgent first.
    let first = lease(&system, "CC-000", "campaign", 3, 300).await;
    let priorities: Vec<i64> = first
        .iter()
        .map(|t| t["priority"].as_i64().expect("priority"))
        .collect();
    assert_eq!(priorities, vec![-14, -14, -14], "{first:?}");
    assert_eq!(first[0]["customer"]["plate"], "沪AD12345");
    assert!(first[0].get("id_number").is_none());

    // 100 agents lease at once (leased together, a statement for many): every task
    // goes to exactly one of them, no agent gets more than it asked for, and the task
    // is leased in the name of the agent it was handed to.
    let mut pulls = tokio::task::JoinSet::new();
    for agent in 0..100 {
        let url = system.url("/v1/phone-tasks:lease");
        let http = system.http.clone();
        pulls.spawn(async move {
            let agent = format!("CC-{agent:03}");
            let response = http
                .post(url)
                .json(&json!({"agent_id": agent, "queue": "campaign", "max": 2, "lease_seconds": 300}))
                .send()
                .await
                .expect("HTTP answers");
            assert_eq!(response.status().as_u16(), 200);
            let body: Value = response.json().await.expect("json");
            (agent, body["tasks"].as_array().cloned().unwrap_or_default())
        });
    }
    let mut leased: Vec<Value> = first.clone();
    while let Some(pulled) = pulls.join_next().await {
        let (agent, tasks) = pulled.expect("puller");
        assert!(
            tasks.len() <= 2,
            "{agent} asked for 2 and got {}",
            tasks.len()
        );
        for task in &tasks {
            let holder: String = sqlx::query_scalar(
                "SELECT leased_by FROM dispatch.phone_tasks WHERE id = $1::uuid AND lease_token = $2::uuid",
            )
            .bind(task["id"].as_str().expect("id"))
            .bind(task["lease_token"].as_str().expect("token"))
            .fetch_one(system.sim.pool())
            .await
            .expect("the task is leased under the token handed out");
            assert_eq!(holder, agent);
        }
        leased.extend(tasks);
    }
    let ids: HashSet<&str> = leased.iter().filter_map(|t| t["id"].as_str()).collect();
    assert_eq!(leased.len(), 150, "every task leased");
    assert_eq!(ids.len(), 150, "no task leased twice");
    assert!(
        lease(&system, "CC-100", "campaign", 10, 300)
            .await
            .is_empty()
    );

    // A foreign token (another task's) and a made-up one are refused.
    let (a, b) = (&leased[0], &leased[1]);
    let (status, body) = act(
        &system,
        a,
        "heartbeat",
        json!({"lease_token": b["lease_token"]}),
    )
    .await;
    assert_eq!(status, 409, "{body}");
    let (status, _) = act(
        &system,
        a,
        "complete",
        json!({"lease_token": Uuid::new_v4(), "outcome": "unreachable"}),
    )
    .await;
    assert_eq!(status, 409);
    let (status, _) = system
        .post_json(
            &format!("/v1/phone-tasks/{}:complete", Uuid::new_v4()),
            json!({"lease_token": Uuid::new_v4(), "outcome": "unreachable"}),
        )
        .await;
    assert_eq!(status, 404);
    // An outcome without its fields is refused, nothing recorded.
    let (status, _) = act(
        &system,
        a,
        "complete",
        json!({"lease_token": a["lease_token"], "outcome": "renewed"}),
    )
    .await;
    assert_eq!(status, 400);

    // Outcomes with their fields.
    let outcomes = [
        json!({"outcome": "renewed", "new_policy_no": "P2027X0001"}),
        json!({"outcome": "promised", "promised_date": "2026-12-20"}),
        json!({"outcome": "call_back", "call_back_at": "2026-12-02T02:00:00Z"}),
        json!({"outcome": "refused", "reason": "too_expensive"}),
        json!({"outcome": "wrong_number"}),
        json!({"outcome": "insured_elsewhere", "reason": "switched insurer"}),
        json!({"outcome": "vehicle_sold"}),
        json!({"outcome": "unreachable"}),
    ];
    for (task, outcome) in leased.iter().zip(outcomes.iter()) {
        let mut body = outcome.clone();
        body["lease_token"] = task["lease_token"].clone();
        let (status, answer) = act(&system, task, "complete", body.clone()).await;
        assert_eq!(status, 200, "{answer}");
        // The call center retries after a lost answer: same answer, no second event.
        let (status, _) = act(&system, task, "complete", body).await;
        assert_eq!(status, 200);
    }
    // A completed task's token cannot complete it differently or keep it alive.
    let (status, _) = act(
        &system,
        a,
        "complete",
        json!({"lease_token": a["lease_token"], "outcome": "unreachable"}),
    )
    .await;
    assert_eq!(status, 409);
    let (status, _) = act(
        &system,
        a,
        "heartbeat",
        json!({"lease_token": a["lease_token"]}),
    )
    .await;
    assert_eq!(status, 409);
    system.sim.settle().await.expect("settles");
    let published: Vec<PhoneTaskCompleted> =
        events(&system, subject::DISPATCH_TASK_COMPLETED).await;
    assert_eq!(published.len(), 8, "one event per completed task");
    let renewed = published
        .iter()
        .find(|e| e.outcome == CallOutcome::Renewed as i32)
        .expect("renewed");
    assert_eq!(renewed.new_policy_no, "P2027X0001");
    assert_eq!(renewed.task_id, a["id"].as_str().expect("id"));
    assert_eq!(renewed.agent_id, "CC-000");
    let promised = published
        .iter()
        .find(|e| e.outcome == CallOutcome::Promised as i32)
        .expect("promised");
    assert_eq!(promised.promised_date, "2026-12-20");
    let call_back = published
        .iter()
        .find(|e| e.outcome == CallOutcome::CallBack as i32)
        .expect("call back");
    assert_eq!(call_back.call_back_at_ms, 1_796_176_800_000);
    let corrections: i64 = sqlx::query_scalar("SELECT count(*) FROM dispatch.contact_corrections")
        .fetch_one(system.sim.pool())
        .await
        .expect("count");
    assert_eq!(corrections, 1, "the wrong number is marked for correction");

    // A task fired for the renewed case before the scheduler heard of the call is
    // withdrawn; the next task of the promised case carries the call made on it before.
    let renewed_case = Uuid::parse_str(a["case_id"].as_str().expect("case id")).expect("uuid");
    let case_id = Uuid::parse_str(b["case_id"].as_str().expect("case id")).expect("uuid");
    create(
        &system,
        &[
            command(renewed_case, TaskQueue::Campaign, "", 3),
            command(case_id, TaskQueue::Campaign, "", 3),
        ],
    )
    .await;
    let next = lease(&system, "CC-200", "campaign", 5, 300).await;
    assert_eq!(next.len(), 1, "{next:?}");
    let history = next[0]["history"].as_array().cloned().unwrap_or_default();
    assert_eq!(history.len(), 1, "{next:?}");
    assert_eq!(history[0]["outcome"], "promised");
    assert_eq!(history[0]["agent_id"], "CC-000");
    assert_eq!(history[0]["stage"], "T-15");
    assert!(history[0]["completed_at"].is_string());
    system.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_leases_return_tasks_and_five_without_an_outcome_go_to_dead_letter() {
    let system = TestSystem::start("pl", local("2026-12-01", 10)).await;
    let c = command(Uuid::new_v4(), TaskQueue::Hq, "", 3);
    create(&system, std::slice::from_ref(&c)).await;
    let id = c.command_id.as_str();

    let held = lease(&system, "HQ-1", "hq", 1, 60).await;
    assert_eq!(held.len(), 1);
    assert!(
        lease(&system, "HQ-2", "hq", 1, 60).await.is_empty(),
        "held by HQ-1"
    );
    let (status, body) = act(
        &system,
        &held[0],
        "heartbeat",
        json!({"lease_token": held[0]["lease_token"], "lease_seconds": 120}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    // The lease runs out: the task is back in the queue, the old token stale.
    let now = system.sim.now();
    system
        .sim
        .advance_to(now + chrono::Duration::seconds(121))
        .await
        .expect("time moves");
    let second = lease(&system, "HQ-2", "hq", 1, 60).await;
    assert_eq!(second.len(), 1, "the expired lease returned the task");
    assert_eq!(second[0]["lease_number"], 2);
    let (status, _) = act(
        &system,
        &held[0],
        "complete",
        json!({"lease_token": held[0]["lease_token"], "outcome": "unreachable"}),
    )
    .await;
    assert_eq!(status, 409, "a stale token cannot complete");
    // Release with a retry time: not before then.
    let retry_at = system.sim.now() + chrono::Duration::minutes(30);
    let (status, body) = act(
        &system,
        &second[0],
        "release",
        json!({"lease_token": second[0]["lease_token"], "retry_at": retry_at}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert!(lease(&system, "HQ-3", "hq", 1, 60).await.is_empty());
    system.sim.advance_to(retry_at).await.expect("time moves");
    // Leases 3, 4 and 5 run out without an outcome.
    let mut last = Vec::new();
    for n in 3..=5 {
        last = lease(&system, "HQ-3", "hq", 1, 60).await;
        assert_eq!(last.len(), 1, "lease {n}");
        assert_eq!(last[0]["lease_number"], n);
        let now = system.sim.now();
        system
            .sim
            .advance_to(now + chrono::Duration::seconds(61))
            .await
            .expect("time moves");
    }
    assert!(lease(&system, "HQ-3", "hq", 1, 60).await.is_empty());
    assert_eq!(state(&system, id).await, ("dead".to_owned(), 5));
    // The last holder's token (still remembered by the process that leased it) no
    // longer completes the task.
    let (status, _) = act(
        &system,
        &last[0],
        "complete",
        json!({"lease_token": last[0]["lease_token"], "outcome": "unreachable"}),
    )
    .await;
    assert_eq!(status, 409, "a dead task takes no outcome");
    assert_eq!(state(&system, id).await, ("dead".to_owned(), 5));
    let reason: String =
        sqlx::query_scalar("SELECT last_error FROM dispatch.phone_tasks WHERE id = $1::uuid")
            .bind(id)
            .fetch_one(system.sim.pool())
            .await
            .expect("reason");
    assert!(reason.contains("5 leases"), "{reason}");
    system.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_calls_at_night_and_owner_tasks_follow_the_owner() {
    let system = TestSystem::start("pn", local("2026-12-01", 19)).await;
    let (status, doc) = system.get_json("/openapi.json").await;
    assert_eq!(status, 200);
    assert!(doc["paths"]["/v1/phone-tasks:lease"].is_object(), "{doc}");
    let case_id = Uuid::new_v4();
    let c = command(case_id, TaskQueue::Owner, "SH01-A01", 30);
    create(&system, std::slice::from_ref(&c)).await;
    // Only the owner leases from the owner queue.
    assert!(lease(&system, "SH01-A02", "owner", 5, 60).await.is_empty());
    system
        .sim
        .advance_to(local("2026-12-01", 20))
        .await
        .expect("time moves");
    let evening = lease(&system, "SH01-A01", "owner", 5, 60).await;
    assert_eq!(evening.len(), 1, "calls until 21:00 (SMS stop at 20:00)");
    let (status, _) = act(
        &system,
        &evening[0],
        "release",
        json!({"lease_token": evening[0]["lease_token"]}),
    )
    .await;
    assert_eq!(status, 200);
    system
        .sim
        .advance_to(local("2026-12-01", 21))
        .await
        .expect("time moves");
    assert!(
        lease(&system, "SH01-A01", "owner", 5, 60).await.is_empty(),
        "no calls at 21:00 in the customer's zone"
    );

    // The case moves to another owner, then is handed back with no owner.
    let assigned = |owner: &str, minutes: i64| OwnerAssigned {
        case_id: case_id.to_string(),
        policy_no: c.policy_no.clone(),
        branch_code: "SH01".into(),
        owner_agent: owner.into(),
        previous_owner: "SH01-A01".into(),
        credited_agent: "SH01-A03".into(),
        reason: "test".into(),
        assigned_by: "system".into(),
        assigned_at_ms: (local("2026-12-01", 20) + chrono::Duration::minutes(minutes))
            .timestamp_millis(),
    };
    let bus = &system.sim.deps.bus;
    for (i, event) in [assigned("SH01-A02", 1)].iter().enumerate() {
        bus.publish(
            subject::ASSIGNMENT_OWNER_ASSIGNED,
            &format!("owner-{i}"),
            None,
            prost::Message::encode_to_vec(event),
        )
        .await
        .expect("published");
    }
    system
        .sim
        .advance_to(local("2026-12-02", 9))
        .await
        .expect("time moves");
    assert!(lease(&system, "SH01-A01", "owner", 5, 60).await.is_empty());
    let got = lease(&system, "SH01-A02", "owner", 5, 60).await;
    assert_eq!(got.len(), 1, "the new owner has it in the morning");
    let (status, _) = act(
        &system,
        &got[0],
        "release",
        json!({"lease_token": got[0]["lease_token"]}),
    )
    .await;
    assert_eq!(status, 200);
    // Handed back (and an older event arriving late changes nothing).
    for (i, event) in [assigned("", 3), assigned("SH01-A01", 2)]
        .iter()
        .enumerate()
    {
        bus.publish(
            subject::ASSIGNMENT_OWNER_ASSIGNED,
            &format!("owner-late-{i}"),
            None,
            prost::Message::encode_to_vec(event),
        )
        .await
        .expect("published");
    }
    system.sim.settle().await.expect("settles");
    assert!(lease(&system, "SH01-A01", "owner", 5, 60).await.is_empty());
    let got = lease(&system, "SH01-A03", "branch", 5, 60).await;
    assert_eq!(got.len(), 1, "the branch works a case with no owner");
    system.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renewal_withdraws_the_cases_tasks_without_losing_a_call_in_progress() {
    let system = TestSystem::start("pw", local("2026-12-01", 10)).await;
    let sim = &system.sim;
    sim.publish_policies(&[policy("P2026D0001", "2027-01-31")])
        .await
        .expect("published");
    sim.settle().await.expect("settles");
    let opened: Vec<CaseOpened> = events(&system, subject::LISTS_CASE_OPENED).await;
    let case_id = Uuid::parse_str(&opened.first().expect("case opened").case_id).expect("uuid");
    let calling = command(case_id, TaskQueue::Campaign, "", 60);
    let waiting = command(case_id, TaskQueue::Hq, "", 60);
    create(&system, &[calling.clone(), waiting.clone()]).await;
    let held = lease(&system, "CC-1", "campaign", 1, 300).await;
    assert_eq!(held.len(), 1);

    sim.publish_renewal("P2026D0001", "P2027D0001")
        .await
        .expect("published");
    sim.settle().await.expect("settles");
    assert_eq!(
        state(&system, &waiting.command_id).await.0,
        "withdrawn",
        "a closed case's tasks are withdrawn"
    );
    assert!(lease(&system, "HQ-1", "hq", 5, 300).await.is_empty());
    let (status, _) = act(
        &system,
        &held[0],
        "heartbeat",
        json!({"lease_token": held[0]["lease_token"]}),
    )
    .await;
    assert_eq!(status, 409, "the holder learns the task was withdrawn");
    // The call that was in progress still reports its outcome.
    let (status, body) = act(
        &system,
        &held[0],
        "complete",
        json!({"lease_token": held[0]["lease_token"], "outcome": "renewed", "new_policy_no": "P2027D0001"}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    // A command for the closed case arriving late makes a withdrawn task.
    let late = command(case_id, TaskQueue::Campaign, "", 50);
    create(&system, std::slice::from_ref(&late)).await;
    assert_eq!(state(&system, &late.command_id).await.0, "withdrawn");
    assert!(lease(&system, "CC-1", "campaign", 5, 300).await.is_empty());
    system.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn opt_out_replies_in_every_spelling_opt_the_number_out_once_with_an_event() {
    use renewal_contract::dispatch::SmsOptedOut;
    let system = TestSystem::start("pr", local("2026-12-01", 10)).await;
    let url = system.sim.webhook_url.replace("/report", "/up");
    let reply = |phone: &str, content: &str, seq: u64| {
        json!({"phone_number": phone, "send_time": "2026-12-01 10:00:00", "content": content,
               "sign_name": "车险续保", "dest_code": "1234", "sequence_id": seq})
    };
    let post = |body: String| {
        let url = url.clone();
        async move {
            // The vendor carries no bearer token: the path token is its credential.
            let response = reqwest::Client::new()
                .post(url)
                .header("content-type", "application/json")
                .body(body)
                .send()
                .await
                .expect("HTTP answers");
            let status = response.status().as_u16();
            (status, response.json::<Value>().await.unwrap_or_default())
        }
    };
    let variants = [
        "TD",
        "td",
        " Td ",
        "ＴＤ",
        "\u{3000}t\u{3000}",
        "退订",
        "N",
        "ｓｔｏｐ",
        "STOP",
    ];
    let batch: Vec<Value> = variants
        .iter()
        .enumerate()
        .map(|(i, v)| reply(&format!("1390000000{i}"), v, i as u64))
        .chain([reply("13900000099", "好的，谢谢", 99)])
        .collect();
    for _ in 0..3 {
        // The vendor repeats its pushes.
        let (status, ack) = post(Value::Array(batch.clone()).to_string()).await;
        assert_eq!((status, ack), (200, json!({"code": 0, "msg": "成功"})));
    }
    // The same number opting out again changes nothing.
    let (status, _) = post(json!([reply("+8613900000000", "T", 1000)]).to_string()).await;
    assert_eq!(status, 200);
    // Strangers and bad bodies write nothing.
    let (status, _) = post_to(&url.replace("/sms/", "/sms/x"), batch[0].to_string()).await;
    assert_eq!(status, 401);
    let (status, _) = post("[{\"phone_number\": \"abc\", \"content\": \"TD\"}]".into()).await;
    assert_eq!(status, 400);
    system.sim.settle().await.expect("settles");
    let replies: i64 = sqlx::query_scalar("SELECT count(*) FROM dispatch.sms_replies")
        .fetch_one(system.sim.pool())
        .await
        .expect("count");
    assert_eq!(replies, variants.len() as i64 + 2, "each reply kept once");
    // One row per number, its E.164 form sealed and blind-indexed.
    let pii = dispatch_pii();
    let rows: Vec<(Uuid, Vec<u8>, Vec<u8>)> =
        sqlx::query_as("SELECT id, mobile_index, mobile_enc FROM dispatch.opt_outs")
            .fetch_all(system.sim.pool())
            .await
            .expect("opt-outs");
    let mut opted = Vec::new();
    for (id, index, sealed) in rows {
        let mobile = renewal_dispatch::sealed::open_opt_out(&pii, &id.to_string(), &sealed)
            .expect("the opt-out opens");
        assert_eq!(index, pii.blind_index(&mobile).to_vec(), "{mobile}");
        opted.push(mobile);
    }
    opted.sort();
    assert_eq!(opted.len(), variants.len(), "{opted:?}");
    assert!(opted.iter().all(|m| m.starts_with("+86")), "{opted:?}");
    assert!(!opted.contains(&"+8613900000099".to_owned()));
    let published: Vec<SmsOptedOut> = events(&system, subject::DISPATCH_SMS_OPTED_OUT).await;
    assert_eq!(published.len(), variants.len(), "one event per number");
    system.finish().await;
}

/// Dispatch's cipher as the simulation configures it.
fn dispatch_pii() -> renewal_platform::pii::PiiCipher {
    renewal_platform::pii::PiiCipher::for_service(
        &secrecy::SecretString::from(renewal::simulation::DEMO_PII_KEY),
        "dispatch",
    )
    .expect("the demo key")
}

async fn post_to(url: &str, body: String) -> (u16, Value) {
    let response = reqwest::Client::new()
        .post(url)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .expect("HTTP answers");
    let status = response.status().as_u16();
    (status, response.json::<Value>().await.unwrap_or_default())
}

/// What dispatch holds about one message: state, attempts, next attempt, sent at,
/// vendor code, last error.
type MessageRow = (
    String,
    i32,
    chrono::DateTime<chrono::Utc>,
    Option<chrono::DateTime<chrono::Utc>>,
    Option<String>,
    Option<String>,
);

async fn message(
    system: &TestSystem,
    command: &renewal_contract::scheduler::SendSms,
) -> MessageRow {
    sqlx::query_as(
        "SELECT state, attempts, next_attempt_at, sent_at, vendor_code, last_error
         FROM dispatch.sms_messages WHERE id = $1::uuid",
    )
    .bind(&command.command_id)
    .fetch_one(system.sim.pool())
    .await
    .expect("message")
}

async fn vendor_accepted(system: &TestSystem) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM demo.vendor_messages")
        .fetch_one(system.sim.pool())
        .await
        .expect("count")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_send_due_at_night_is_held_back_until_the_morning() {
    use renewal_contract::dispatch::SmsStatusChanged;
    // 21:00 in Shanghai: a command arrives due now (the scheduler would not do that;
    // dispatch is the last line of defence).
    let system = TestSystem::start("pq", local("2026-12-01", 21)).await;
    let command = send_sms("+8613900000011");
    queue_sms(&system, &command).await;
    let (state, attempts, next, sent_at, _, _) = message(&system, &command).await;
    assert_eq!((state.as_str(), attempts, sent_at), ("queued", 0, None));
    assert_eq!(
        next,
        local("2026-12-02", 9),
        "held until 09:00 next morning"
    );
    assert_eq!(
        vendor_accepted(&system).await,
        0,
        "nothing reached the vendor"
    );

    // Still night at 08:59.
    system
        .sim
        .advance_to(local("2026-12-02", 9) - chrono::Duration::minutes(1))
        .await
        .expect("time moves");
    assert_eq!(message(&system, &command).await.0, "queued");
    assert_eq!(vendor_accepted(&system).await, 0);

    system
        .sim
        .advance_to(local("2026-12-02", 12))
        .await
        .expect("time moves");
    let (state, attempts, _, sent_at, _, _) = message(&system, &command).await;
    assert_eq!(state, "delivered");
    assert_eq!(attempts, 1);
    assert_eq!(sent_at, Some(local("2026-12-02", 9)), "sent at 09:00 sharp");
    assert_eq!(vendor_accepted(&system).await, 1);
    let sent: Vec<SmsStatusChanged> = events(&system, subject::DISPATCH_SMS_SENT).await;
    assert_eq!(sent.len(), 1);
    system.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vendor_outages_are_retried_with_backoff_and_refusals_are_not() {
    use renewal::vendor_sim::Fault;
    use renewal_contract::dispatch::SmsStatusChanged;
    let system = TestSystem::start("pv", local("2026-12-01", 10)).await;
    let vendor = &system.sim.vendor;
    // Down twice, then up again.
    let flaky = send_sms("+8613900000021");
    vendor.inject(&flaky.mobile, Fault::Unavailable { times: 2 });
    // Refuses for good (a number on the vendor's blacklist).
    let refused = send_sms("+8613900000022");
    vendor.inject(
        &refused.mobile,
        Fault::Refuse {
            code: "isv.BLACK_KEY_CONTROL_LIMIT".into(),
        },
    );
    // Down for longer than we try.
    let down = send_sms("+8613900000023");
    vendor.inject(&down.mobile, Fault::Unavailable { times: 100 });
    let start = system.sim.now();
    for c in [&flaky, &refused, &down] {
        queue_sms(&system, c).await;
    }

    // The first attempt failed with a 5xx: queued again, a little later.
    let (state, attempts, first_retry, _, _, error) = message(&system, &flaky).await;
    assert_eq!((state.as_str(), attempts), ("queued", 1));
    assert!(
        error.unwrap_or_default().contains("503"),
        "the reason is kept"
    );
    let first_wait = first_retry - start;
    assert!(first_wait > chrono::Duration::zero());
    system
        .sim
        .advance_to(first_retry)
        .await
        .expect("time moves");
    let (state, attempts, second_retry, _, _, _) = message(&system, &flaky).await;
    assert_eq!((state.as_str(), attempts), ("queued", 2));
    assert!(
        second_retry - first_retry > first_wait,
        "the wait grows: {first_wait} then {}",
        second_retry - first_retry
    );
    system
        .sim
        .advance_to(start + chrono::Duration::minutes(10))
        .await
        .expect("time moves");
    let (state, attempts, _, sent_at, _, error) = message(&system, &flaky).await;
    assert_eq!(state, "delivered", "the third attempt went through");
    assert_eq!(attempts, 3);
    assert_eq!(sent_at, Some(second_retry));
    assert_eq!(error, None, "no error left on a sent message");
    assert_eq!(vendor.requests_for(&flaky.mobile), 3);

    // A permanent refusal: failed at once with the vendor's code and message, never retried.
    let (state, attempts, _, sent_at, code, error) = message(&system, &refused).await;
    assert_eq!((state.as_str(), attempts, sent_at), ("failed", 1, None));
    assert_eq!(code.as_deref(), Some("isv.BLACK_KEY_CONTROL_LIMIT"));
    assert!(error.is_some_and(|e| !e.is_empty()));
    assert_eq!(vendor.requests_for(&refused.mobile), 1);

    // Down for good: dead after five attempts, with the last reason.
    let (state, attempts, _, sent_at, _, error) = message(&system, &down).await;
    assert_eq!((state.as_str(), attempts, sent_at), ("dead", 5, None));
    assert!(error.unwrap_or_default().contains("503"));
    assert_eq!(vendor.requests_for(&down.mobile), 5);
    assert_eq!(
        vendor_accepted(&system).await,
        1,
        "only the flaky one got through"
    );

    // What the rest of the system hears: one sent, two failed (with the reasons' codes).
    let sent: Vec<SmsStatusChanged> = events(&system, subject::DISPATCH_SMS_SENT).await;
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].message_id, flaky.command_id);
    let mut failed: Vec<(String, String)> =
        events::<SmsStatusChanged>(&system, subject::DISPATCH_SMS_FAILED)
            .await
            .into_iter()
            .map(|e| (e.message_id, e.vendor_code))
            .collect();
    failed.sort();
    let mut expected = vec![
        (
            refused.command_id.clone(),
            "isv.BLACK_KEY_CONTROL_LIMIT".to_owned(),
        ),
        (down.command_id.clone(), "dead_letter".to_owned()),
    ];
    expected.sort();
    assert_eq!(failed, expected);
    system.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_opt_out_stops_every_reminder_whatever_the_command_calls_it_and_no_notice() {
    let system = TestSystem::start("pm", local("2026-12-01", 10)).await;
    let mobile = "+8613900000031";
    let pii = dispatch_pii();
    let id = Uuid::now_v7();
    sqlx::query(
        "INSERT INTO dispatch.opt_outs (id, mobile_index, mobile_enc, opted_out_at) VALUES ($1, $2, $3, now())",
    )
    .bind(id)
    .bind(&pii.blind_index(mobile)[..])
    .bind(renewal_dispatch::sealed::seal_opt_out(&pii, &id.to_string(), mobile).expect("seals"))
    .execute(system.sim.pool())
    .await
    .expect("opted out");
    // A reminder whose command claims it is not marketing (a plan or a forged
    // command trying to get past the opt-out): the template decides, it is held back.
    let mut reminder = send_sms(mobile);
    reminder.marketing = false;
    queue_sms(&system, &reminder).await;
    // A transactional notice (the renewal went through) still reaches the customer.
    let mut notice = send_sms(mobile);
    notice.template = "renewal_confirmed".into();
    notice.marketing = false;
    queue_sms(&system, &notice).await;
    system
        .sim
        .advance_to(local("2026-12-01", 11))
        .await
        .expect("time moves");
    assert_eq!(message(&system, &reminder).await.0, "suppressed");
    assert_eq!(message(&system, &notice).await.0, "delivered");
    assert_eq!(
        vendor_accepted(&system).await,
        1,
        "only the notice was sent"
    );
    system.finish().await;
}

/// The vendor's webhook and the sender have connections of their own: while API
/// callers hold every connection of the services' pool (leases waiting on a lock), a
/// message whose retry falls due is still sent, and the vendor's receipt for it is
/// still recorded. When the lock goes, the waiting callers are answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_callers_holding_every_connection_do_not_stop_the_sender_or_the_webhook() {
    use renewal::vendor_sim::Fault;
    let system = TestSystem::start("rsv", local("2026-12-01", 10)).await;
    let sim = &system.sim;
    let sms = send_sms("+8613900000021");
    sim.vendor
        .inject(&sms.mobile, Fault::Unavailable { times: 1 });
    queue_sms(&system, &sms).await;
    let (state, attempts, retry_at, ..) = message(&system, &sms).await;
    assert_eq!((state.as_str(), attempts), ("queued", 1));

    // Another session locks the phone tasks; more heartbeats than the pool has
    // connections each take one and wait for the lock (leases would not: those
    // arriving together share one statement).
    let mut blocker = sim.pool().begin().await.expect("begin");
    sqlx::query("LOCK TABLE dispatch.phone_tasks IN ACCESS EXCLUSIVE MODE")
        .execute(&mut *blocker)
        .await
        .expect("locked");
    let services = &sim.deps.pool;
    let size = services.options().get_max_connections();
    let mut callers = tokio::task::JoinSet::new();
    for _ in 0..size + 10 {
        let (http, url) = (
            system.http.clone(),
            system.url(&format!("/v1/phone-tasks/{}:heartbeat", Uuid::new_v4())),
        );
        callers.spawn(async move {
            http.post(url)
                .json(&json!({"lease_token": Uuid::new_v4()}))
                .send()
                .await
                .expect("HTTP answers")
                .status()
                .as_u16()
        });
    }
    let exhausted = || services.size() == size && services.num_idle() == 0;
    let waited = std::time::Instant::now();
    while !exhausted() {
        assert!(
            waited.elapsed() < std::time::Duration::from_secs(10),
            "the callers hold every connection ({} of {size} open, {} idle)",
            services.size(),
            services.num_idle()
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }

    // The retry falls due: sent, and the vendor's receipt recorded, on the reserve.
    sim.clock.advance_to(retry_at).expect("the clock moves");
    let receipts = || async {
        sqlx::query_scalar::<_, i64>(
            "SELECT count(*) FROM dispatch.sms_receipts WHERE message_id = $1::uuid",
        )
        .bind(&sms.command_id)
        .fetch_one(sim.pool())
        .await
        .expect("count")
    };
    let waited = std::time::Instant::now();
    while receipts().await == 0 {
        assert!(
            waited.elapsed() < std::time::Duration::from_secs(15),
            "the receipt was recorded while the API held the pool (message {:?})",
            message(&system, &sms).await
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let (state, attempts, _, sent_at, ..) = message(&system, &sms).await;
    assert_eq!((state.as_str(), attempts), ("delivered", 2));
    assert_eq!(sent_at, Some(retry_at));
    assert!(exhausted(), "the API's callers still held the pool");

    // The lock goes: the waiting callers get their answer (no such task), the rest a
    // 503 to retry.
    blocker.rollback().await.expect("rollback");
    while let Some(status) = callers.join_next().await {
        let status = status.expect("caller");
        assert!(matches!(status, 404 | 503), "answered {status}");
    }
    assert_eq!(receipts().await, 1, "one receipt, recorded once");
    assert_eq!(sim.vendor.requests_for(&sms.mobile), 2);
    system.finish().await;
}

/// The owner queue's figures in `GET /v1/phone-queues` as `http` sees them.
async fn owner_queue(system: &TestSystem, http: &reqwest::Client, query: &str) -> (u16, Value) {
    let url = system.url(&format!("/v1/phone-queues{query}"));
    let (status, body) = renewal_e2e::get_json_with(http, &url).await;
    let owner = body["queues"]
        .as_array()
        .and_then(|q| q.iter().find(|q| q["queue"] == "owner").cloned());
    (status, owner.unwrap_or(body))
}

/// Two owner tasks of SH01-A01 leased five times each, every lease left to run out.
async fn two_dead_tasks(system: &TestSystem) -> (Vec<CreatePhoneTask>, Vec<Value>) {
    let tasks = vec![
        command(Uuid::new_v4(), TaskQueue::Owner, "SH01-A01", 3),
        command(Uuid::new_v4(), TaskQueue::Owner, "SH01-A01", 4),
    ];
    // A second apart, so the older is listed first.
    create(system, &tasks[..1]).await;
    let now = system.sim.now();
    system
        .sim
        .advance_to(now + chrono::Duration::seconds(1))
        .await
        .expect("time moves");
    create(system, &tasks[1..]).await;
    let mut last = Vec::new();
    for n in 1..=5 {
        last = lease(system, "SH01-A01", "owner", 2, 60).await;
        assert_eq!(last.len(), 2, "lease {n}");
        let now = system.sim.now();
        system
            .sim
            .advance_to(now + chrono::Duration::seconds(61))
            .await
            .expect("time moves");
    }
    (tasks, last)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operations_see_dead_tasks_and_hq_requeues_one_for_one_more_round_of_calls() {
    use renewal_e2e::{Grant, Role};
    let system = TestSystem::start("po", local("2026-12-01", 10)).await;
    let (tasks, last) = two_dead_tasks(&system).await;
    let (first, second) = (&tasks[0].command_id, &tasks[1].command_id);
    // Their last leases ran out: dead in the figures before a lease request marks them.
    let hq = system.http.clone();
    let (status, owner) = owner_queue(&system, &hq, "").await;
    assert_eq!(status, 200, "{owner}");
    assert_eq!(
        (&owner["open"], &owner["leased"], &owner["dead"]),
        (&json!(0), &json!(0), &json!(2)),
        "{owner}"
    );
    assert!(lease(&system, "SH01-A01", "owner", 2, 60).await.is_empty());
    assert_eq!(state(&system, first).await, ("dead".to_owned(), 5));
    // A city's admin sees their city only, and may not name another.
    let shanghai = system.client(&Grant::role(Role::CityAdmin).city("310000"));
    let beijing = system.client(&Grant::role(Role::CityAdmin).city("110000"));
    assert_eq!(owner_queue(&system, &shanghai, "").await.1["dead"], 2);
    assert_eq!(owner_queue(&system, &beijing, "").await.1["dead"], 0);
    assert_eq!(owner_queue(&system, &beijing, "?city=310000").await.0, 403);

    // The dead tasks, oldest first, a page at a time, with no personal data.
    let (status, page) = system
        .get_json("/v1/phone-tasks?state=dead&page_size=1")
        .await;
    assert_eq!(status, 200, "{page}");
    let dead = &page["items"][0];
    assert_eq!(
        (&dead["id"], &dead["leases"], &dead["queue"], &dead["stage"]),
        (&json!(first), &json!(5), &json!("owner"), &json!("T-15")),
        "{page}"
    );
    assert_eq!(dead["policy_no"], tasks[0].policy_no.as_str());
    assert_eq!(dead["last_leased_by"], "SH01-A01");
    assert!(
        dead["reason"]
            .as_str()
            .is_some_and(|r| r.contains("5 leases"))
    );
    let token = page["next_page_token"].as_str().expect("a second page");
    let (_, rest) = system
        .get_json(&format!(
            "/v1/phone-tasks?state=dead&page_size=1&page_token={token}"
        ))
        .await;
    assert_eq!(rest["items"][0]["id"], second.as_str(), "{rest}");
    assert!(rest.get("next_page_token").is_none(), "{rest}");
    let text = format!("{page}{rest}");
    assert!(!text.contains("13812345678") && !text.contains("王芳") && !text.contains("沪AD"));
    assert_eq!(system.get_json("/v1/phone-tasks?state=open").await.0, 400);

    // Only HQ requeues: anyone else is refused and nothing moves.
    let requeue = format!("/v1/phone-tasks/{first}:requeue");
    for grant in [
        Grant::role(Role::CityAdmin).city("310000"),
        Grant::role(Role::CallCenter),
        Grant::role(Role::Agent)
            .agent("SH01-A01")
            .branch("SH01")
            .city("310000"),
    ] {
        let http = system.client(&grant);
        let (status, body) =
            renewal_e2e::post_json_to(&http, &system.url(&requeue), json!({})).await;
        assert_eq!(
            (status, body["code"].as_str()),
            (403, Some("forbidden_role")),
            "{body}"
        );
    }
    assert_eq!(state(&system, first).await, ("dead".to_owned(), 5));
    let (status, body) = system.post_json(&requeue, json!({})).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        (&body["state"], &body["leases"]),
        (&json!("open"), &json!(0))
    );
    assert_eq!(state(&system, first).await, ("open".to_owned(), 0));
    // Once only: it is no longer dead.
    let (status, body) = system.post_json(&requeue, json!({})).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (409, Some("not_dead")),
        "{body}"
    );
    let unknown = format!("/v1/phone-tasks/{}:requeue", Uuid::new_v4());
    assert_eq!(system.post_json(&unknown, json!({})).await.0, 404);
    let (_, owner) = owner_queue(&system, &hq, "").await;
    assert_eq!(
        (&owner["open"], &owner["dead"]),
        (&json!(1), &json!(1)),
        "{owner}"
    );

    // Its last holder's token stays stale; the owner leases it again, once.
    let stale = last
        .iter()
        .find(|t| t["id"] == first.as_str())
        .expect("leased");
    let done = json!({"lease_token": stale["lease_token"], "outcome": "unreachable"});
    assert_eq!(act(&system, stale, "complete", done).await.0, 409);
    let agent = system.client(
        &Grant::role(Role::Agent)
            .agent("SH01-A01")
            .branch("SH01")
            .city("310000"),
    );
    let lease_url = system.url("/v1/phone-tasks:lease");
    let take = json!({"agent_id": "SH01-A01", "queue": "owner", "max": 5});
    let (status, got) = renewal_e2e::post_json_to(&agent, &lease_url, take.clone()).await;
    assert_eq!(status, 200, "{got}");
    let got = got["tasks"].as_array().cloned().unwrap_or_default();
    assert_eq!(got.len(), 1, "only the requeued task: {got:?}");
    assert_eq!(
        (&got[0]["id"], &got[0]["lease_number"]),
        (&json!(first), &json!(1))
    );
    let (_, again) = renewal_e2e::post_json_to(&agent, &lease_url, take).await;
    assert_eq!(again["tasks"], json!([]), "not leased twice");
    let (_, owner) = owner_queue(&system, &hq, "").await;
    assert_eq!(
        (&owner["leased"], &owner["open"]),
        (&json!(1), &json!(0)),
        "{owner}"
    );
    let done = json!({"lease_token": got[0]["lease_token"], "outcome": "unreachable"});
    let complete = system.url(&format!("/v1/phone-tasks/{first}:complete"));
    assert_eq!(
        renewal_e2e::post_json_to(&agent, &complete, done.clone())
            .await
            .0,
        200
    );
    assert_eq!(
        renewal_e2e::post_json_to(&agent, &complete, done).await.0,
        200,
        "a retry"
    );
    let published: Vec<PhoneTaskCompleted> =
        events(&system, subject::DISPATCH_TASK_COMPLETED).await;
    assert_eq!(
        published.iter().filter(|e| e.task_id == *first).count(),
        1,
        "completed once"
    );
    assert_eq!(system.post_json(&requeue, json!({})).await.0, 409);
    system.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cases_contacts_show_its_sms_with_receipts_and_its_calls_with_outcomes() {
    use renewal_e2e::{Grant, ORG_CSV, Role};
    let system = TestSystem::start("pc", local("2026-12-01", 0)).await;
    let sim = &system.sim;
    system.load_org(ORG_CSV).await;
    sim.publish_policies(&[policy("W1", "2027-02-15")])
        .await
        .expect("published");
    sim.advance_to(local("2026-12-01", 9)).await.expect("time");
    let (status, body) = system
        .post_json(
            "/v1/claims/W1:claim",
            json!({"branch_code": "SH01", "owner_agent": "SH01-A03"}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    // T-60's SMS (17 December) is delivered; T-30 (16 January): the owner calls.
    sim.advance_to(local("2027-01-16", 10) + chrono::Duration::minutes(5))
        .await
        .expect("time");
    let owner = system.client(
        &Grant::role(Role::Agent)
            .agent("SH01-A03")
            .branch("SH01")
            .city("310000"),
    );
    let (status, leased) = renewal_e2e::post_json_to(
        &owner,
        &system.url("/v1/phone-tasks:lease"),
        json!({"agent_id": "SH01-A03", "queue": "owner", "max": 10}),
    )
    .await;
    assert_eq!(status, 200, "{leased}");
    let call = leased["tasks"]
        .as_array()
        .and_then(|t| t.iter().find(|t| t["stage"] == "T-30").cloned())
        .unwrap_or_else(|| panic!("the T-30 call: {leased}"));
    let (status, done) = act(
        &system,
        &call,
        "complete",
        json!({"lease_token": call["lease_token"], "outcome": "promised", "promised_date": "2027-01-20"}),
    )
    .await;
    assert_eq!(status, 200, "{done}");

    let (status, contacts) =
        renewal_e2e::get_json_with(&owner, &system.url("/v1/cases/W1/contacts")).await;
    assert_eq!(status, 200, "{contacts}");
    assert_eq!(contacts["policy_no"], "W1");
    let sms = contacts["sms"]
        .as_array()
        .and_then(|s| s.iter().find(|s| s["stage"] == "T-60").cloned())
        .unwrap_or_else(|| panic!("the T-60 SMS: {contacts}"));
    assert_eq!(sms["state"], "delivered", "{sms}");
    assert!(sms["sent_at"].is_string(), "{sms}");
    assert_eq!(
        (&sms["receipts"][0]["status"], &sms["receipts"][0]["code"]),
        (&json!("delivered"), &json!("DELIVERED")),
        "{sms}"
    );
    let task = contacts["phone_tasks"]
        .as_array()
        .and_then(|t| t.iter().find(|t| t["id"] == call["id"]).cloned())
        .unwrap_or_else(|| panic!("the T-30 task: {contacts}"));
    assert_eq!(
        (
            &task["queue"],
            &task["state"],
            &task["outcome"],
            &task["leases"]
        ),
        (
            &json!("owner"),
            &json!("completed"),
            &json!("promised"),
            &json!(1)
        ),
        "{task}"
    );
    assert!(task["completed_at"].is_string(), "{task}");
    let text = contacts.to_string();
    assert!(
        !text.contains("13812345678") && !text.contains("王芳") && !text.contains("沪AD"),
        "no personal data: {text}"
    );
    // Its branch and city read it; another agent and another city do not.
    let supervisor = Grant::role(Role::Supervisor)
        .agent("SH01-S01")
        .branch("SH01")
        .city("310000");
    let answers = [
        (supervisor, 200),
        (Grant::role(Role::CityAdmin).city("310000"), 200),
        (
            Grant::role(Role::Agent)
                .agent("SH01-A01")
                .branch("SH01")
                .city("310000"),
            403,
        ),
        (Grant::role(Role::CityAdmin).city("110000"), 403),
        (Grant::role(Role::CallCenter), 403),
    ];
    for (grant, expected) in answers {
        let http = system.client(&grant);
        let (status, body) =
            renewal_e2e::get_json_with(&http, &system.url("/v1/cases/W1/contacts")).await;
        assert_eq!(status, expected, "{body}");
    }
    let (status, body) = system.get_json("/v1/cases/NOPE/contacts").await;
    assert_eq!(
        (status, body["code"].as_str()),
        (404, Some("unknown_case")),
        "{body}"
    );
    system.finish().await;
}

/// What dispatch holds about a message by its id: state, attempts, sent at, last error.
async fn message_by_id(
    system: &TestSystem,
    id: &str,
) -> (
    String,
    i32,
    Option<chrono::DateTime<chrono::Utc>>,
    Option<String>,
) {
    sqlx::query_as(
        "SELECT state, attempts, sent_at, last_error FROM dispatch.sms_messages WHERE id = $1::uuid",
    )
    .bind(id)
    .fetch_one(system.sim.pool())
    .await
    .expect("message")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operations_see_failed_and_dead_sms_masked_and_hq_resends_one_once() {
    use renewal::vendor_sim::Fault;
    use renewal_contract::lists::{CaseClosed, CaseOutcome};
    use renewal_e2e::{Grant, Role};
    let system = TestSystem::start("ps", local("2026-12-01", 10)).await;
    let vendor = &system.sim.vendor;
    let refused = send_sms("+8613900000032");
    vendor.inject(
        &refused.mobile,
        Fault::Refuse {
            code: "isv.BLACK_KEY_CONTROL_LIMIT".into(),
        },
    );
    let down = send_sms("+8613900000033");
    vendor.inject(&down.mobile, Fault::Unavailable { times: 100 });
    let fine = send_sms("+8613900000034");
    let closed = send_sms("+8613900000035");
    vendor.inject(&closed.mobile, Fault::Unavailable { times: 100 });
    let start = system.sim.now();
    for command in [&refused, &down, &fine, &closed] {
        queue_sms(&system, command).await;
    }
    system
        .sim
        .advance_to(start + chrono::Duration::minutes(10))
        .await
        .expect("time moves");
    assert_eq!(message(&system, &down).await.0, "dead");
    assert_eq!(message(&system, &refused).await.0, "failed");

    // HQ sees each, its number masked, and nothing else of the customer (a page at a
    // time).
    let all_dead = system.get_items("/v1/sms?state=dead").await;
    assert_eq!(all_dead.as_array().map(Vec::len), Some(2), "{all_dead}");
    let dead = all_dead
        .as_array()
        .and_then(|d| d.iter().find(|m| m["id"] == down.command_id.as_str()))
        .expect("the dead SMS is listed");
    assert_eq!(dead["mobile_masked"], "139****0033");
    assert_eq!(dead["attempts"], 5);
    assert!(
        dead["last_error"]
            .as_str()
            .unwrap_or_default()
            .contains("503")
    );
    let failed = system.get_items("/v1/sms?state=failed").await;
    assert_eq!(failed.as_array().map(Vec::len), Some(1), "{failed}");
    assert_eq!(failed[0]["id"], refused.command_id.as_str());
    assert_eq!(failed[0]["vendor_code"], "isv.BLACK_KEY_CONTROL_LIMIT");
    for text in [all_dead.to_string(), failed.to_string()] {
        for secret in ["13900000033", "13900000032", "王芳", "沪AD12345"] {
            assert!(!text.contains(secret), "{secret} in {text}");
        }
    }
    let (status, body) = system.get_json("/v1/sms?state=queued").await;
    assert_eq!(
        (status, body["code"].as_str()),
        (400, Some("invalid_request"))
    );

    // Only HQ resends: a city's admin is refused and nothing moves.
    let resend = format!("/v1/sms/{}:resend", down.command_id);
    let city = system.client(&Grant::role(Role::CityAdmin).city("310000"));
    let (status, body) = renewal_e2e::post_json_to(&city, &system.url(&resend), json!({})).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (403, Some("forbidden_role")),
        "{body}"
    );
    let (status, body) = renewal_e2e::get_json_with(&city, &system.url("/v1/opt-outs")).await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(message(&system, &down).await.0, "dead");

    // The vendor is back: HQ resends, as a new message; a retried resend sends nothing
    // more and names the same one.
    vendor.inject(&down.mobile, Fault::Unavailable { times: 0 });
    let (status, first) = system.post_json(&resend, json!({})).await;
    assert_eq!(status, 200, "{first}");
    let again_id = first["message_id"]
        .as_str()
        .expect("the new message")
        .to_owned();
    assert_ne!(again_id, down.command_id);
    assert_eq!(
        (first["state"].as_str(), first["attempts"].as_i64()),
        (Some("queued"), Some(0))
    );
    let (status, again) = system.post_json(&resend, json!({})).await;
    assert_eq!(
        (status, &again["message_id"], &again["resent_at"]),
        (200, &first["message_id"], &first["resent_at"]),
        "{again}"
    );
    system
        .sim
        .advance_to(start + chrono::Duration::minutes(20))
        .await
        .expect("time moves");
    let (state, attempts, sent_at, error) = message_by_id(&system, &again_id).await;
    assert_eq!((state.as_str(), attempts, error), ("delivered", 1, None));
    assert!(sent_at.is_some());
    assert_eq!(
        message(&system, &down).await.0,
        "dead",
        "the first keeps its history"
    );
    assert_eq!(
        vendor.requests_for(&down.mobile),
        6,
        "five tries, then one resend"
    );
    let left = system.get_items("/v1/sms?state=dead").await;
    assert_eq!(
        left.as_array().map(Vec::len),
        Some(1),
        "a resent SMS leaves the list: {left}"
    );
    // Asked again, it says the resend was delivered, and sends nothing.
    let (status, body) = system.post_json(&resend, json!({})).await;
    assert_eq!(
        (status, &body["state"], &body["message_id"]),
        (200, &json!("delivered"), &first["message_id"]),
        "{body}"
    );
    assert_eq!(vendor.requests_for(&down.mobile), 6);
    // A message that reached its customer is not sent again.
    let (status, body) = system
        .post_json(&format!("/v1/sms/{}:resend", fine.command_id), json!({}))
        .await;
    assert_eq!(
        (status, body["code"].as_str()),
        (409, Some("not_resendable")),
        "{body}"
    );
    assert_eq!(vendor.requests_for(&fine.mobile), 1);
    let (status, _) = system
        .post_json(&format!("/v1/sms/{}:resend", Uuid::new_v4()), json!({}))
        .await;
    assert_eq!(status, 404);

    // A renewed case's dead reminder is not sent again.
    let close = CaseClosed {
        case_id: closed.case_id.clone(),
        policy_no: closed.policy_no.clone(),
        outcome: CaseOutcome::Renewed as i32,
        new_policy_no: format!("{}R", closed.policy_no),
        closed_at_ms: system.sim.now().timestamp_millis(),
    };
    system
        .sim
        .deps
        .bus
        .publish(
            subject::LISTS_CASE_CLOSED,
            &closed.case_id,
            None,
            prost::Message::encode_to_vec(&close),
        )
        .await
        .expect("published");
    system.sim.settle().await.expect("settles");
    vendor.inject(&closed.mobile, Fault::Unavailable { times: 0 });
    let (status, body) = system
        .post_json(&format!("/v1/sms/{}:resend", closed.command_id), json!({}))
        .await;
    assert_eq!(
        (status, body["code"].as_str()),
        (409, Some("case_stopped")),
        "{body}"
    );
    assert_eq!(message(&system, &closed).await.0, "dead");

    // The refused number opts out: its reminder is not sent again, and HQ sees the
    // opt-out, masked.
    let url = system.sim.webhook_url.replace("/report", "/up");
    let reply = json!([{"phone_number": "13900000032", "send_time": "2026-12-01 10:20:00",
                        "content": "TD", "sign_name": "车险续保", "dest_code": "1234", "sequence_id": 1}]);
    assert_eq!(post_to(&url, reply.to_string()).await.0, 200);
    let resend_refused = format!("/v1/sms/{}:resend", refused.command_id);
    let (status, body) = system.post_json(&resend_refused, json!({})).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (409, Some("opted_out")),
        "{body}"
    );
    assert_eq!(message(&system, &refused).await.0, "failed");
    let outs = system.get_items("/v1/opt-outs").await;
    assert_eq!(outs.as_array().map(Vec::len), Some(1), "{outs}");
    assert_eq!(outs[0]["mobile_masked"], "139****0032");
    assert!(!outs.to_string().contains("13900000032"));
    system.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resent_sms_goes_to_the_cases_corrected_number() {
    use renewal::vendor_sim::Fault;
    let system = TestSystem::start("pn", local("2026-12-01", 10)).await;
    let sim = &system.sim;
    let mut first = policy("P2026N0001", "2027-01-31");
    sim.publish_policies(std::slice::from_ref(&first))
        .await
        .expect("published");
    sim.settle().await.expect("settles");
    let opened: Vec<CaseOpened> = events(&system, subject::LISTS_CASE_OPENED).await;
    let case_id = opened.first().expect("case opened").case_id.clone();
    // The number on file is refused by the vendor.
    sim.vendor.inject(
        &first.mobile,
        Fault::Refuse {
            code: "isv.MOBILE_NUMBER_ILLEGAL".into(),
        },
    );
    let mut reminder = send_sms("");
    reminder.case_id = case_id.clone();
    reminder.policy_no = first.policy_no.clone();
    queue_sms(&system, &reminder).await;
    assert_eq!(message(&system, &reminder).await.0, "failed");

    // The core system corrects the mobile; HQ resends, to the new number.
    first.version = 2;
    first.mobile = "+8613912340000".into();
    sim.publish_policies(std::slice::from_ref(&first))
        .await
        .expect("published");
    sim.settle().await.expect("settles");
    let (status, resent) = system
        .post_json(
            &format!("/v1/sms/{}:resend", reminder.command_id),
            json!({}),
        )
        .await;
    assert_eq!(status, 200, "{resent}");
    sim.settle().await.expect("settles");
    let id = resent["message_id"].as_str().expect("the new message");
    let (state, _, _, _) = message_by_id(&system, id).await;
    assert_eq!(state, "delivered");
    let sealed: Vec<u8> =
        sqlx::query_scalar("SELECT contact_enc FROM dispatch.sms_messages WHERE id = $1::uuid")
            .bind(id)
            .fetch_one(sim.pool())
            .await
            .expect("the new message");
    let contact = renewal_dispatch::sealed::open_sms(&dispatch_pii(), id, &sealed).expect("opens");
    assert_eq!(contact.mobile, "+8613912340000");
    assert_eq!(
        sim.vendor.requests_for("+8613812345678"),
        1,
        "the old number once"
    );
    system.finish().await;
}
