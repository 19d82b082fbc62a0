//! Erasure as each service carries it out (issue 16), against the real Postgres and
//! NATS, the erase commands published as lists publishes them:
//!
//! - dispatch blanks a case's SMS, tasks and replies, withdraws what was still to go,
//!   keeps the number's opt-out, leaves another case whole, answers once (its commands
//!   consumer takes the command too: the shared inbox lets one of the two answer), and
//!   keeps a later command for the case withdrawn without its contact;
//! - the scheduler blanks the case's contact and cancels its pending timers, leaves
//!   another case's alone, answers once per command (a second command erases nothing
//!   more), and a timer of the erased case planned later ends cancelled, not retried;
//! - assignment, which keeps no customer data, answers too;
//! - dispatch keeps each case's contact from its opening (the scheduler keeps none), a
//!   command naming only its case waits for the opening and then goes with it, and an
//!   erasure blanks it.

use std::collections::HashMap;

use renewal_contract::lists::{CaseOpened, Customer, ErasePersonalData, ErasureReason};
use renewal_contract::platform::ErasureDone;
use renewal_contract::scheduler::{CreatePhoneTask, SendSms, TaskQueue};
use renewal_contract::subject;
use renewal_e2e::{TestSystem, events, local, policy};
use serde_json::{Value, json};
use uuid::Uuid;

fn erase(erasure_id: &str, case_ids: &[String]) -> ErasePersonalData {
    ErasePersonalData {
        erasure_id: erasure_id.into(),
        case_ids: case_ids.to_vec(),
        reason: ErasureReason::Request as i32,
        requested_at_ms: 0,
    }
}

async fn publish(system: &TestSystem, subject_name: &str, id: &str, message: &impl prost::Message) {
    system
        .sim
        .deps
        .bus
        .publish(subject_name, id, None, message.encode_to_vec())
        .await
        .expect("published");
    system.sim.settle().await.expect("settles");
}

/// The answers published on `subject_name` for `erasure_id`.
async fn answers(system: &TestSystem, subject_name: &str, erasure_id: &str) -> Vec<ErasureDone> {
    let all: Vec<ErasureDone> = events(system, subject_name).await;
    all.into_iter()
        .filter(|d| d.erasure_id == erasure_id)
        .collect()
}

fn counts(done: &ErasureDone) -> HashMap<&str, u64> {
    done.erased.iter().map(|(k, v)| (k.as_str(), *v)).collect()
}

fn sms(case_id: Uuid, mobile: &str, due_at_ms: i64) -> SendSms {
    SendSms {
        case_id: case_id.to_string(),
        policy_no: format!("P{}", &case_id.simple().to_string()[..10]),
        due_at_ms,
        ..renewal_e2e::send_sms(mobile)
    }
}

fn task(case_id: Uuid, mobile: &str) -> CreatePhoneTask {
    CreatePhoneTask {
        command_id: Uuid::new_v4().to_string(),
        case_id: case_id.to_string(),
        policy_no: format!("P{}", &case_id.simple().to_string()[..10]),
        stage: "T-15".into(),
        queue: TaskQueue::Campaign as i32,
        owner_agent: String::new(),
        branch_code: "SH01".into(),
        city_code: "310000".into(),
        promotion: String::new(),
        customer_name: "王芳".into(),
        mobile: mobile.into(),
        plate: "沪AD12345".into(),
        expiry_date: "2027-01-31".into(),
        time_zone: "Asia/Shanghai".into(),
        days_to_expiry: 60,
        due_at_ms: 0,
    }
}

/// The vendor pushes a reply from `phone`.
async fn reply(system: &TestSystem, phone: &str, content: &str, seq: u64) {
    let url = system.sim.webhook_url.replace("/report", "/up");
    let body = json!([{"phone_number": phone, "send_time": "2026-12-01 10:05:00", "content": content,
                       "sign_name": "车险续保", "dest_code": "1234", "sequence_id": seq}]);
    let response = reqwest::Client::new()
        .post(url)
        .json(&body)
        .send()
        .await
        .expect("HTTP answers");
    assert_eq!(response.status().as_u16(), 200);
}

/// (state, contact bytes, index bytes) of one message.
async fn message(system: &TestSystem, id: &str) -> (String, usize, usize) {
    let (state, contact, index): (String, i32, i32) = sqlx::query_as(
        "SELECT state, length(contact_enc), length(mobile_index) FROM dispatch.sms_messages WHERE id = $1::uuid",
    )
    .bind(id)
    .fetch_one(system.sim.pool())
    .await
    .expect("message");
    (state, contact as usize, index as usize)
}

/// (state, contact bytes) of one task.
async fn phone_task(system: &TestSystem, id: &str) -> (String, usize) {
    let (state, contact): (String, i32) = sqlx::query_as(
        "SELECT state, length(contact_enc) FROM dispatch.phone_tasks WHERE id = $1::uuid",
    )
    .bind(id)
    .fetch_one(system.sim.pool())
    .await
    .expect("task");
    (state, contact as usize)
}

/// Replies still holding a text, from the number with this blind index.
async fn replies_from(system: &TestSystem, index: &[u8]) -> i64 {
    sqlx::query_scalar(
        "SELECT count(*) FROM dispatch.sms_replies WHERE mobile_index = $1 AND length(reply_enc) > 0",
    )
    .bind(index)
    .fetch_one(system.sim.pool())
    .await
    .expect("count")
}

fn dispatch_pii() -> renewal_platform::pii::PiiCipher {
    renewal_platform::pii::PiiCipher::for_service(
        &secrecy::SecretString::from(renewal::simulation::DEMO_PII_KEY),
        "dispatch",
    )
    .expect("the demo key")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dispatch_erases_a_case_keeps_its_opt_out_and_leaves_another_case_whole() {
    let system = TestSystem::start("ed", local("2026-12-01", 10)).await;
    let pii = dispatch_pii();
    let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
    let (mobile_a, mobile_b) = ("+8613900000041", "+8613900000042");
    let tomorrow = (system.sim.now() + chrono::Duration::days(1)).timestamp_millis();
    let sent = sms(a, mobile_a, 0);
    let queued = sms(a, mobile_a, tomorrow);
    let other = sms(b, mobile_b, tomorrow);
    for c in [&sent, &queued, &other] {
        publish(&system, subject::DISPATCH_CMD_SEND_SMS, &c.command_id, c).await;
    }
    let (task_a, task_b) = (task(a, mobile_a), task(b, mobile_b));
    for c in [&task_a, &task_b] {
        publish(
            &system,
            subject::DISPATCH_CMD_CREATE_PHONE_TASK,
            &c.command_id,
            c,
        )
        .await;
    }
    reply(&system, "13900000041", "好的，谢谢", 1).await;
    reply(&system, "13900000041", "TD", 2).await;
    reply(&system, "13900000042", "好的", 3).await;
    system.sim.settle().await.expect("settles");
    let sent_state = message(&system, &sent.command_id).await.0;
    assert!(
        ["sent", "delivered"].contains(&sent_state.as_str()),
        "{sent_state}"
    );
    let (index_a, index_b) = (
        pii.blind_index(mobile_a).to_vec(),
        pii.blind_index(mobile_b).to_vec(),
    );
    assert_eq!(replies_from(&system, &index_a).await, 2);

    let id = Uuid::now_v7().to_string();
    let command = erase(&id, &[a.to_string(), "P2026-not-a-case".into()]);
    let msg_id = Uuid::now_v7().to_string();
    publish(
        &system,
        subject::DISPATCH_CMD_ERASE_PERSONAL_DATA,
        &msg_id,
        &command,
    )
    .await;
    // The same message again (a republish): nothing more.
    publish(
        &system,
        subject::DISPATCH_CMD_ERASE_PERSONAL_DATA,
        &msg_id,
        &command,
    )
    .await;

    assert_eq!(
        message(&system, &sent.command_id).await,
        (sent_state.clone(), 0, 0)
    );
    assert_eq!(
        message(&system, &queued.command_id).await,
        ("withdrawn".into(), 0, 0)
    );
    assert_eq!(
        phone_task(&system, &task_a.command_id).await,
        ("withdrawn".into(), 0)
    );
    assert_eq!(
        replies_from(&system, &index_a).await,
        0,
        "the number's replies are blanked"
    );
    let blanked: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM dispatch.sms_replies
         WHERE length(reply_enc) = 0 AND length(mobile_index) = 0 AND length(content_digest) = 16",
    )
    .fetch_one(system.sim.pool())
    .await
    .expect("count");
    assert_eq!(blanked, 2, "the rows stay, blank");
    let opted_out: i64 =
        sqlx::query_scalar("SELECT count(*) FROM dispatch.opt_outs WHERE mobile_index = $1")
            .bind(&index_a)
            .fetch_one(system.sim.pool())
            .await
            .expect("count");
    assert_eq!(opted_out, 1, "the opt-out is kept");
    // The other case is whole.
    let (state, contact, index) = message(&system, &other.command_id).await;
    assert_eq!(state, "queued");
    assert!(contact > 0 && index > 0);
    let (state, contact) = phone_task(&system, &task_b.command_id).await;
    assert_eq!(state, "open");
    assert!(contact > 0);
    assert_eq!(replies_from(&system, &index_b).await, 1);

    let done = answers(&system, subject::DISPATCH_ERASURE_DONE, &id).await;
    assert_eq!(done.len(), 1, "one answer: {done:?}");
    assert_eq!(done[0].service, "dispatch");
    let erased = counts(&done[0]);
    for (kind, n) in [
        ("sms_messages", 2),
        ("sms_withdrawn", 1),
        ("phone_tasks", 1),
        ("phone_tasks_withdrawn", 1),
        ("sms_replies", 2),
        ("unknown", 1),
    ] {
        assert_eq!(erased.get(kind).copied(), Some(n), "{kind}: {erased:?}");
    }
    assert!(
        done[0].kept.iter().any(|k| k.starts_with("opt_outs")),
        "{:?}",
        done[0].kept
    );

    late_commands_and_a_second_erasure(&system, a, &id).await;
    // A lease sees the other case's task only.
    let (status, body) = system
        .post_json(
            "/v1/phone-tasks:lease",
            json!({"agent_id": "CC-1", "queue": "campaign", "max": 10, "lease_seconds": 60}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let leased: Vec<&Value> = body["tasks"].as_array().into_iter().flatten().collect();
    assert_eq!(leased.len(), 1, "{body}");
    assert_eq!(leased[0]["case_id"], b.to_string());
    system.finish().await;
}

/// Commands for the erased case arriving after its erasure keep no contact and go
/// nowhere; a second erasure of it erases nothing more.
async fn late_commands_and_a_second_erasure(system: &TestSystem, a: Uuid, id: &str) {
    let late_sms = sms(a, "+8613900000041", 0);
    publish(
        system,
        subject::DISPATCH_CMD_SEND_SMS,
        &late_sms.command_id,
        &late_sms,
    )
    .await;
    let late_task = task(a, "+8613900000041");
    publish(
        system,
        subject::DISPATCH_CMD_CREATE_PHONE_TASK,
        &late_task.command_id,
        &late_task,
    )
    .await;
    system
        .sim
        .advance_to(system.sim.now() + chrono::Duration::minutes(5))
        .await
        .expect("time moves");
    assert_eq!(
        message(system, &late_sms.command_id).await,
        ("withdrawn".into(), 0, 0)
    );
    assert_eq!(
        phone_task(system, &late_task.command_id).await,
        ("withdrawn".into(), 0)
    );

    let again = Uuid::now_v7().to_string();
    publish(
        system,
        subject::DISPATCH_CMD_ERASE_PERSONAL_DATA,
        &again,
        &erase(id, &[a.to_string()]),
    )
    .await;
    let done = answers(system, subject::DISPATCH_ERASURE_DONE, id).await;
    assert_eq!(done.len(), 2, "{done:?}");
    assert!(
        counts(&done[1]).values().all(|n| *n == 0),
        "{:?}",
        done[1].erased
    );
}

/// (sealed bytes, blind index present, erased) of the scheduler's copy of a case: its
/// sealed mobile (a contact only for cases opened before dispatch kept them).
async fn scheduler_case(system: &TestSystem, case_id: &str) -> (usize, bool, bool) {
    let (sealed, indexed, erased): (i32, bool, bool) = sqlx::query_as(
        "SELECT coalesce(length(contact_enc), 0) + coalesce(length(mobile_enc), 0),
                mobile_index IS NOT NULL, erased_at IS NOT NULL
         FROM scheduler.cases WHERE case_id = $1::uuid",
    )
    .bind(case_id)
    .fetch_one(system.sim.pool())
    .await
    .expect("case");
    (sealed as usize, indexed, erased)
}

/// A case's timers by state.
async fn timers(system: &TestSystem, case_id: &str) -> HashMap<String, i64> {
    let rows: Vec<(String, i64)> = sqlx::query_as(
        "SELECT state, count(*) FROM scheduler.timers WHERE case_id = $1::uuid GROUP BY state",
    )
    .bind(case_id)
    .fetch_all(system.sim.pool())
    .await
    .expect("timers");
    rows.into_iter().collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_scheduler_blanks_the_contact_and_its_erased_case_never_fires() {
    let system = TestSystem::start("es", local("2026-12-01", 8)).await;
    let mut other = policy("P2026E0002", "2027-02-15");
    other.mobile = "+8613900000052".into();
    system
        .sim
        .publish_policies(&[policy("P2026E0001", "2027-02-15"), other])
        .await
        .expect("published");
    system.sim.settle().await.expect("settles");
    let opened: Vec<CaseOpened> = events(&system, subject::LISTS_CASE_OPENED).await;
    let case_of = |no: &str| {
        opened
            .iter()
            .find(|c| c.policy_no == no)
            .map(|c| c.case_id.clone())
            .expect("case opened")
    };
    let (erased_case, other_case) = (case_of("P2026E0001"), case_of("P2026E0002"));
    let before = timers(&system, &other_case).await;
    assert!(
        before.get("pending").copied().unwrap_or(0) > 0,
        "{before:?}"
    );
    // The scheduler keeps the mobile sealed and indexed (the contact is dispatch's).
    let (sealed, indexed, erased) = scheduler_case(&system, &erased_case).await;
    assert!(sealed > 0 && indexed && !erased);

    let id = Uuid::now_v7().to_string();
    let command = erase(&id, &[erased_case.clone(), "nonsense".into()]);
    let msg_id = Uuid::now_v7().to_string();
    publish(
        &system,
        subject::SCHEDULER_CMD_ERASE_PERSONAL_DATA,
        &msg_id,
        &command,
    )
    .await;
    publish(
        &system,
        subject::SCHEDULER_CMD_ERASE_PERSONAL_DATA,
        &msg_id,
        &command,
    )
    .await;

    assert_eq!(
        scheduler_case(&system, &erased_case).await,
        (0, false, true)
    );
    let erased_timers = timers(&system, &erased_case).await;
    assert_eq!(erased_timers.get("pending"), None, "{erased_timers:?}");
    let cancelled = erased_timers.get("cancelled").copied().unwrap_or(0);
    assert!(cancelled > 0, "{erased_timers:?}");
    assert_eq!(
        timers(&system, &other_case).await,
        before,
        "another case's timers"
    );
    let (contact, indexed, erased) = scheduler_case(&system, &other_case).await;
    assert!(contact > 0 && indexed && !erased, "another case's mobile");
    let done = answers(&system, subject::SCHEDULER_ERASURE_DONE, &id).await;
    assert_eq!(done.len(), 1, "{done:?}");
    let erased = counts(&done[0]);
    assert_eq!(erased.get("cases"), Some(&1), "{erased:?}");
    assert_eq!(
        erased.get("timers_cancelled"),
        Some(&(cancelled as u64)),
        "{erased:?}"
    );
    assert_eq!(erased.get("unknown"), Some(&1), "{erased:?}");

    // A second command (another message): nothing more to erase.
    publish(
        &system,
        subject::SCHEDULER_CMD_ERASE_PERSONAL_DATA,
        &Uuid::now_v7().to_string(),
        &command,
    )
    .await;
    let done = answers(&system, subject::SCHEDULER_ERASURE_DONE, &id).await;
    assert_eq!(done.len(), 2, "{done:?}");
    let again = counts(&done[1]);
    assert_eq!(
        (again.get("cases"), again.get("timers_cancelled")),
        (Some(&0), Some(&0)),
        "{again:?}"
    );

    planned_later_never_fires(&system, &erased_case, &other_case).await;
    system.finish().await;
}

/// A timer of the erased case planned after the erasure (an outcome's reschedule, say)
/// ends cancelled when due, rather than held for a contact that will never open; the
/// other case's SMS go out as planned.
async fn planned_later_never_fires(system: &TestSystem, erased_case: &str, other_case: &str) {
    let due = system.sim.now() + chrono::Duration::hours(3);
    sqlx::query(
        "INSERT INTO scheduler.timers (id, case_id, stage, action, template, due_at, nominal_at, state, marketing)
         VALUES ($1, $2::uuid, 'call_back_sms', 'sms', 'renewal_friendly', $3, $3, 'pending', true)",
    )
    .bind(Uuid::now_v7())
    .bind(erased_case)
    .bind(due)
    .execute(system.sim.pool())
    .await
    .expect("a timer planned later");
    // Written behind the scheduler's back: any message it handles wakes its timers
    // (an erasure of a case it never heard of, here).
    let wake = erase(&Uuid::now_v7().to_string(), &[Uuid::now_v7().to_string()]);
    let id = Uuid::now_v7().to_string();
    publish(
        system,
        subject::SCHEDULER_CMD_ERASE_PERSONAL_DATA,
        &id,
        &wake,
    )
    .await;
    system
        .sim
        .advance_to(local("2026-12-20", 12))
        .await
        .expect("time moves");
    let (state, note): (String, Option<String>) = sqlx::query_as(
        "SELECT state, note FROM scheduler.timers WHERE case_id = $1::uuid AND stage = 'call_back_sms'",
    )
    .bind(erased_case)
    .fetch_one(system.sim.pool())
    .await
    .expect("timer");
    assert_eq!(
        (state.as_str(), note.as_deref()),
        ("cancelled", Some("case erased"))
    );
    let sent: Vec<SendSms> = events(system, subject::DISPATCH_CMD_SEND_SMS).await;
    assert!(
        sent.iter().all(|s| s.case_id != erased_case),
        "an erased case's SMS went out"
    );
    assert!(
        sent.iter().any(|s| s.case_id == other_case),
        "the other case's T-60 SMS"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn assignment_keeps_no_customer_data_and_answers_once() {
    let system = TestSystem::start("ea", local("2026-12-01", 8)).await;
    let id = Uuid::now_v7().to_string();
    let command = erase(&id, &[Uuid::now_v7().to_string()]);
    publish(
        &system,
        subject::ASSIGNMENT_CMD_ERASE_PERSONAL_DATA,
        &Uuid::now_v7().to_string(),
        &command,
    )
    .await;
    let done = answers(&system, subject::ASSIGNMENT_ERASURE_DONE, &id).await;
    assert_eq!(done.len(), 1, "its two consumers answer once: {done:?}");
    assert_eq!(done[0].service, "assignment");
    assert!(
        counts(&done[0]).values().all(|n| *n == 0),
        "{:?}",
        done[0].erased
    );
    assert!(
        done[0]
            .kept
            .iter()
            .any(|k| k.contains("no customer personal data")),
        "{:?}",
        done[0].kept
    );
    let rejected: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM assignment.inbox WHERE rejected_reason IS NOT NULL",
    )
    .fetch_one(system.sim.pool())
    .await
    .expect("count");
    assert_eq!(rejected, 0, "no consumer refused the command");
    system.finish().await;
}

/// Dispatch's copy of a case's contact: (name, mobile, plate), or None once blanked.
async fn case_contact(system: &TestSystem, case_id: &str) -> Option<(String, String, String)> {
    let sealed: Vec<u8> = sqlx::query_scalar(
        "SELECT contact_enc FROM dispatch.case_contacts WHERE case_id = $1::uuid",
    )
    .bind(case_id)
    .fetch_one(system.sim.pool())
    .await
    .expect("the case's contact");
    if sealed.is_empty() {
        return None;
    }
    assert!(
        !String::from_utf8_lossy(&sealed).contains("139000000"),
        "sealed"
    );
    let place = renewal_platform::pii::Place::new("dispatch.case_contacts", "contact_enc", case_id);
    Some(
        dispatch_pii()
            .open_json(&sealed, place)
            .expect("opens for its case"),
    )
}

/// Waits for the message of command `id` to be taken in.
async fn taken_in(system: &TestSystem, id: &str) -> bool {
    for _ in 0..150 {
        let n: i64 =
            sqlx::query_scalar("SELECT count(*) FROM dispatch.sms_messages WHERE id = $1::uuid")
                .bind(id)
                .fetch_one(system.sim.pool())
                .await
                .expect("count");
        if n == 1 {
            return true;
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dispatch_keeps_the_contact_from_the_opening_and_fills_commands_naming_only_the_case() {
    let system = TestSystem::start("dk", local("2026-12-01", 10)).await;
    let sim = &system.sim;
    sim.publish_policies(&[policy("P2026K0001", "2027-02-15")])
        .await
        .expect("published");
    sim.settle().await.expect("settles");
    let opened: Vec<CaseOpened> = events(&system, subject::LISTS_CASE_OPENED).await;
    let known = opened.first().expect("a case opened").clone();
    let held = case_contact(&system, &known.case_id).await;
    assert_eq!(
        held,
        Some(("王芳".into(), "+8613812345678".into(), "沪AD12345".into()))
    );
    let (scheduler_contact, indexed): (bool, bool) = sqlx::query_as(
        "SELECT contact_enc IS NOT NULL, length(mobile_enc) > 0 AND mobile_index IS NOT NULL
         FROM scheduler.cases WHERE case_id = $1::uuid",
    )
    .bind(&known.case_id)
    .fetch_one(sim.pool())
    .await
    .expect("the scheduler's case");
    assert_eq!(
        (scheduler_contact, indexed),
        (false, true),
        "the scheduler keeps the mobile only"
    );

    // A command for a case whose opening has not reached dispatch yet waits for it.
    let b = Uuid::now_v7();
    let mut command = sms(b, "", sim.now().timestamp_millis());
    command.customer_name.clear();
    command.plate.clear();
    let bytes = prost::Message::encode_to_vec(&command);
    sim.deps
        .bus
        .publish(
            subject::DISPATCH_CMD_SEND_SMS,
            &command.command_id,
            None,
            bytes,
        )
        .await
        .expect("published");
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    let early: i64 =
        sqlx::query_scalar("SELECT count(*) FROM dispatch.sms_messages WHERE case_id = $1")
            .bind(b)
            .fetch_one(sim.pool())
            .await
            .expect("count");
    assert_eq!(early, 0, "not taken in without a contact");
    let mut late = known.clone();
    late.case_id = b.to_string();
    late.policy_no = "P2026K0002".into();
    late.customer = Some(Customer {
        name: "李雷".into(),
        mobile: "+8613900000077".into(),
        plate: "沪B00077".into(),
    });
    publish(&system, subject::LISTS_CASE_OPENED, "late-open-k2", &late).await;
    assert!(
        taken_in(&system, &command.command_id).await,
        "taken in once the opening came"
    );
    let sealed: Vec<u8> =
        sqlx::query_scalar("SELECT contact_enc FROM dispatch.sms_messages WHERE id = $1::uuid")
            .bind(&command.command_id)
            .fetch_one(sim.pool())
            .await
            .expect("message");
    let contact = renewal_dispatch::sealed::open_sms(&dispatch_pii(), &command.command_id, &sealed)
        .expect("opens");
    assert_eq!(contact.mobile, "+8613900000077");
    assert_eq!(contact.template_params["name"], "李雷");
    assert_eq!(contact.template_params["plate"], "沪B00077");

    // A task naming only its case goes with the case's contact too.
    let mut t = task(b, "");
    t.customer_name.clear();
    t.plate.clear();
    publish(
        &system,
        subject::DISPATCH_CMD_CREATE_PHONE_TASK,
        &t.command_id.clone(),
        &t,
    )
    .await;
    let sealed: Vec<u8> =
        sqlx::query_scalar("SELECT contact_enc FROM dispatch.phone_tasks WHERE id = $1::uuid")
            .bind(&t.command_id)
            .fetch_one(sim.pool())
            .await
            .expect("task");
    let contact = renewal_dispatch::sealed::open_task(&dispatch_pii(), &t.command_id, &sealed)
        .expect("opens");
    assert_eq!(
        (contact.customer_name.as_str(), contact.mobile.as_str()),
        ("李雷", "+8613900000077")
    );

    // Erased: the case's contact is blanked, and a later command is kept without one.
    let id = "erase-k2";
    publish(
        &system,
        subject::DISPATCH_CMD_ERASE_PERSONAL_DATA,
        id,
        &erase(id, &[b.to_string()]),
    )
    .await;
    let done = answers(&system, subject::DISPATCH_ERASURE_DONE, id).await;
    assert_eq!(counts(&done[0]).get("case_contacts"), Some(&1), "{done:?}");
    assert_eq!(case_contact(&system, &b.to_string()).await, None);
    let mut after = sms(b, "", sim.now().timestamp_millis());
    after.customer_name.clear();
    after.plate.clear();
    publish(
        &system,
        subject::DISPATCH_CMD_SEND_SMS,
        &after.command_id.clone(),
        &after,
    )
    .await;
    assert_eq!(
        message(&system, &after.command_id).await,
        ("withdrawn".into(), 0, 0)
    );
    assert_eq!(
        case_contact(&system, &known.case_id).await.map(|c| c.1),
        Some("+8613812345678".into()),
        "another case's stays"
    );
    system.finish().await;
}
