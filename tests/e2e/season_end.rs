//! The end of the season as the handbooks run it, on the simulated clock against the
//! real Postgres and NATS: a lapsed case stays open for rescue (its T+1 call reaches
//! the campaign queue and is leased at 10:05), a renewal on T+5 closes it rescued with
//! no T+15 call, so does a new policy for the same car, a customer insured elsewhere leaves the lapse register, which says
//! since when and what was tried; a renewal reported on the phone stops every contact
//! at once, and one the core system never confirms reopens the case with a check task
//! for its owner.

use chrono::{DateTime, Utc};
use renewal_contract::lists::{
    CaseClosed, CaseLapsed, CaseOutcome, CaseReopened, ListIssued, ListKind,
};
use renewal_contract::scheduler::{CreatePhoneTask, SendSms};
use renewal_contract::subject;
use renewal_e2e::{ORG_CSV, TestSystem, events, local, policy};
use serde_json::{Value, json};

async fn claim(system: &TestSystem, policy_no: &str) {
    let (status, body) = system
        .post_json(
            &format!("/v1/claims/{policy_no}:claim"),
            json!({"branch_code": "SH01", "owner_agent": "SH01-A03"}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
}

async fn lease(system: &TestSystem, agent: &str, queue: &str) -> Vec<Value> {
    let (status, body) = system
        .post_json(
            "/v1/phone-tasks:lease",
            json!({"agent_id": agent, "queue": queue, "max": 10, "lease_seconds": 600}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    body["tasks"].as_array().cloned().unwrap_or_default()
}

async fn complete(system: &TestSystem, task: &Value, outcome: Value) {
    let mut body = outcome;
    body["lease_token"] = task["lease_token"].clone();
    let id = task["id"].as_str().expect("task id");
    let (status, answer) = system
        .post_json(&format!("/v1/phone-tasks/{id}:complete"), body)
        .await;
    assert_eq!(status, 200, "{answer}");
}

fn task_of<'a>(tasks: &'a [Value], policy_no: &str) -> &'a Value {
    tasks
        .iter()
        .find(|t| t["policy_no"] == policy_no)
        .unwrap_or_else(|| panic!("a task for {policy_no} in {tasks:?}"))
}

async fn case_state(system: &TestSystem, policy_no: &str) -> String {
    let (status, body) = system.get_json(&format!("/v1/policies/{policy_no}")).await;
    assert_eq!(status, 200, "{body}");
    body["case"]["state"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

/// (stage, state) of the case's timers in due order.
async fn timeline(system: &TestSystem, policy_no: &str) -> Vec<(String, String)> {
    let (status, body) = system
        .get_json(&format!("/v1/cases/{policy_no}/timeline"))
        .await;
    assert_eq!(status, 200, "{body}");
    body["stages"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|s| {
            (
                s["stage"].as_str().unwrap_or_default().to_owned(),
                s["state"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect()
}

fn state_of<'a>(line: &'a [(String, String)], stage: &str) -> &'a str {
    line.iter()
        .find(|t| t.0 == stage)
        .map_or("absent", |t| t.1.as_str())
}

/// The SMS and phone-task commands the scheduler issued for the policy due at or after
/// `since`, as (stage, due).
async fn contacts_since(
    system: &TestSystem,
    policy_no: &str,
    since: DateTime<Utc>,
) -> Vec<(String, i64)> {
    let since = since.timestamp_millis();
    let sms: Vec<SendSms> = events(system, subject::DISPATCH_CMD_SEND_SMS).await;
    let calls: Vec<CreatePhoneTask> = events(system, subject::DISPATCH_CMD_CREATE_PHONE_TASK).await;
    sms.iter()
        .filter(|c| c.policy_no == policy_no && c.due_at_ms >= since)
        .map(|c| (c.stage.clone(), c.due_at_ms))
        .chain(
            calls
                .iter()
                .filter(|c| c.policy_no == policy_no && c.due_at_ms >= since)
                .map(|c| (c.stage.clone(), c.due_at_ms)),
        )
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lapsed_case_is_rescued_and_the_lapse_register_says_what_was_tried() {
    let system = TestSystem::start("lr", local("2026-12-01", 0)).await;
    let sim = &system.sim;
    system.load_org(ORG_CSV).await;
    // P1 is rescued on T+5; P2 stays lapsed, unreachable on T+1; P3's customer insured
    // the car elsewhere; P4's car is insured again on a new policy.
    let mut policies = ["P1", "P2", "P3", "P4"].map(|no| policy(no, "2027-02-15"));
    policies[3].vin = "11111111111111111".into();
    sim.publish_policies(&policies).await.expect("published");
    sim.advance_to(local("2026-12-01", 9)).await.expect("time");
    for no in ["P1", "P2", "P3", "P4"] {
        claim(&system, no).await;
    }

    // T+1, 10:05: the cases lapsed overnight but stay open; the rescue calls are in the
    // campaign queue.
    sim.advance_to(local("2027-02-16", 10) + chrono::Duration::minutes(5))
        .await
        .expect("time");
    let lapsed: Vec<CaseLapsed> = events(&system, subject::LISTS_CASE_LAPSED).await;
    assert_eq!(lapsed.len(), 4, "{lapsed:?}");
    assert!(lapsed.iter().all(|l| l.lapsed_on == "2027-02-16"));
    let closed: Vec<CaseClosed> = events(&system, subject::LISTS_CASE_CLOSED).await;
    assert!(closed.is_empty(), "a lapse closes nothing: {closed:?}");
    assert_eq!(case_state(&system, "P1").await, "lapsed");
    let tasks = lease(&system, "CC-1", "campaign").await;
    let rescue: Vec<(&str, &str)> = tasks
        .iter()
        .map(|t| {
            (
                t["policy_no"].as_str().unwrap_or_default(),
                t["stage"].as_str().unwrap_or_default(),
            )
        })
        .collect();
    for no in ["P1", "P2", "P3"] {
        assert!(
            rescue.contains(&(no, "T+1")),
            "the T+1 rescue call of {no} is leased at 10:05: {rescue:?}"
        );
    }
    complete(
        &system,
        task_of(&tasks, "P1"),
        json!({"outcome": "promised", "promised_date": "2027-02-20"}),
    )
    .await;
    complete(
        &system,
        task_of(&tasks, "P2"),
        json!({"outcome": "unreachable"}),
    )
    .await;
    complete(
        &system,
        task_of(&tasks, "P3"),
        json!({"outcome": "insured_elsewhere", "reason": "switched insurer"}),
    )
    .await;
    sim.settle().await.expect("settles");
    assert_eq!(case_state(&system, "P3").await, "insured_elsewhere");

    // T+3: a new policy for P4's car (another number, another year) ends its lapse.
    sim.advance_to(local("2027-02-18", 12)).await.expect("time");
    let mut again = policy("N4", "2028-02-18");
    again.vin = "11111111111111111".into();
    again.mobile = "+8613700002222".into();
    sim.publish_policies(&[again]).await.expect("published");
    sim.settle().await.expect("settles");
    assert_eq!(case_state(&system, "P4").await, "rescued");

    // T+5: P1 renews: the case ends rescued, and its T+15 call never happens.
    sim.advance_to(local("2027-02-20", 12)).await.expect("time");
    sim.publish_renewal("P1", "P1-2027").await.expect("renewed");
    sim.advance_to(local("2027-03-05", 12)).await.expect("time");
    assert_eq!(case_state(&system, "P1").await, "rescued");
    let closed: Vec<CaseClosed> = events(&system, subject::LISTS_CASE_CLOSED).await;
    let outcomes: Vec<(&str, i32)> = closed
        .iter()
        .map(|c| (c.policy_no.as_str(), c.outcome))
        .collect();
    assert!(
        outcomes.contains(&("P1", CaseOutcome::Rescued as i32)),
        "{outcomes:?}"
    );
    let p4 = closed
        .iter()
        .find(|c| c.policy_no == "P4")
        .expect("P4 closed");
    assert_eq!(
        (p4.outcome, p4.new_policy_no.as_str()),
        (CaseOutcome::Rescued as i32, "N4")
    );
    assert!(
        outcomes.contains(&("P3", CaseOutcome::InsuredElsewhere as i32)),
        "{outcomes:?}"
    );
    assert!(
        contacts_since(&system, "P1", local("2027-02-20", 12))
            .await
            .is_empty(),
        "no contact after the rescue"
    );
    let p1 = timeline(&system, "P1").await;
    assert_eq!(state_of(&p1, "T+15"), "cancelled", "{p1:?}");
    let p2 = timeline(&system, "P2").await;
    assert_eq!(
        state_of(&p2, "T+15"),
        "fired",
        "P2 is still being rescued: {p2:?}"
    );
    for no in ["P1", "P3"] {
        assert_eq!(
            contacts_since(&system, no, local("2027-03-01", 0))
                .await
                .len(),
            0
        );
    }

    // 1 March: the lapse register holds P2 only, with since when and what was tried.
    let lists: Vec<ListIssued> = events(&system, subject::LISTS_LIST_ISSUED).await;
    let march: Vec<&ListIssued> = lists
        .iter()
        .filter(|l| l.kind == ListKind::Lapse as i32 && l.issued_on == "2027-03-01")
        .collect();
    assert_eq!(march.len(), 1, "{march:?}");
    let items: Vec<(&str, &str, i32, &str)> = march[0]
        .items
        .iter()
        .map(|i| {
            (
                i.policy_no.as_str(),
                i.lapsed_on.as_str(),
                i.calls_made,
                i.last_outcome.as_str(),
            )
        })
        .collect();
    assert_eq!(items, [("P2", "2027-02-16", 1, "unreachable")]);

    // The rescue is credited as a renewal.
    let (status, report) = system
        .get_json("/v1/reports/renewal-rate?from=2027-02-01&to=2027-02-28&group_by=branch")
        .await;
    assert_eq!(status, 200, "{report}");
    let total = &report["total"];
    assert_eq!(
        (&total["due"], &total["rescued"], &total["lapsed"]),
        (&json!(4), &json!(2), &json!(2)),
        "{report}"
    );

    // The month's review: each lost case with its reason (P2 was never reached before
    // its lapse, P3 insured elsewhere; the rescued ones are not lost), the lapse rescue,
    // by channel; issued on 1 March for February and published.
    let (status, analysis) = system
        .get_json("/v1/reports/monthly-analysis?month=2027-02")
        .await;
    assert_eq!(status, 200, "{analysis}");
    assert_eq!(
        analysis["loss_reasons"],
        json!({"insured_elsewhere": 1, "not_contacted_in_time": 1}),
        "{analysis}"
    );
    assert_eq!(
        analysis["lapse_rescue"],
        json!({"lapsed": 4, "rescued": 2, "rescue_rate": 0.5})
    );
    assert_eq!(analysis["by_branch"][0]["key"], "SH01", "{analysis}");
    assert_eq!(
        analysis["by_category"][0]["target_rate"], 0.75,
        "{analysis}"
    );
    let (status, by_channel) = system
        .get_json("/v1/reports/renewal-rate?from=2027-02-01&to=2027-02-28&group_by=channel")
        .await;
    assert_eq!(status, 200, "{by_channel}");
    assert_eq!(by_channel["groups"][0]["key"], "dealer", "{by_channel}");
    assert_eq!(by_channel["groups"][0]["due"], 4, "{by_channel}");
    let targets = by_channel["targets"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert_eq!(
        targets.len(),
        6,
        "the six categories' targets: {by_channel}"
    );
    assert_eq!(
        (&targets[0]["target_rate"], &targets[5]["target_rate"]),
        (&json!(0.75), &Value::Null)
    );
    let reviews: Vec<renewal_contract::lists::ReviewIssued> =
        events(&system, subject::LISTS_REVIEW_ISSUED).await;
    let february: Vec<_> = reviews.iter().filter(|r| r.period == "2027-02").collect();
    assert_eq!(february.len(), 1, "{reviews:?}");
    let body: Value = serde_json::from_str(&february[0].body_json).expect("json");
    assert_eq!(body["loss_reasons"], analysis["loss_reasons"]);
    let (status, csv) = system
        .get_json("/v1/reports/monthly-analysis?month=2027-2")
        .await;
    assert_eq!(status, 400, "{csv}");
    system.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renewal_reported_on_the_phone_stops_every_contact_and_an_unconfirmed_one_reopens() {
    let system = TestSystem::start("rr", local("2026-12-01", 0)).await;
    let sim = &system.sim;
    system.load_org(ORG_CSV).await;
    // R1's renewal is confirmed by the core system two days after the call; R2's never is.
    sim.publish_policies(&[policy("R1", "2027-02-15"), policy("R2", "2027-02-15")])
        .await
        .expect("published");
    sim.advance_to(local("2026-12-01", 9)).await.expect("time");
    claim(&system, "R1").await;
    claim(&system, "R2").await;

    // T-30, 10:05: the owner calls both; each says they renewed.
    let called = local("2027-01-16", 10) + chrono::Duration::minutes(5);
    sim.advance_to(called).await.expect("time");
    let tasks = lease(&system, "SH01-A03", "owner").await;
    for no in ["R1", "R2"] {
        complete(
            &system,
            task_of(&tasks, no),
            json!({"outcome": "renewed", "new_policy_no": format!("{no}-2027")}),
        )
        .await;
    }
    sim.settle().await.expect("settles");
    assert_eq!(case_state(&system, "R1").await, "renewal_reported");
    let r1 = timeline(&system, "R1").await;
    for stage in ["T-15 call", "T-15 SMS", "T-10", "T-7", "T-5", "T+1", "T+15"] {
        assert_eq!(state_of(&r1, stage), "held", "{stage}: {r1:?}");
    }

    // An SMS the scheduler fired just before it heard of the call (due a minute
    // before it ended) reaches dispatch after it: it is withdrawn, never sent.
    let (_, r1_case) = system.get_json("/v1/cases/R1").await;
    let overtaken = SendSms {
        command_id: uuid::Uuid::now_v7().to_string(),
        case_id: r1_case["case_id"].as_str().unwrap_or_default().to_owned(),
        policy_no: "R1".into(),
        stage: "T-30 SMS".into(),
        template: "renewal_campaign".into(),
        expiry_date: "2027-02-15".into(),
        time_zone: "Asia/Shanghai".into(),
        marketing: true,
        due_at_ms: (called - chrono::Duration::minutes(1)).timestamp_millis(),
        ..Default::default()
    };
    sim.deps
        .bus
        .publish(
            subject::DISPATCH_CMD_SEND_SMS,
            &overtaken.command_id,
            None,
            prost::Message::encode_to_vec(&overtaken),
        )
        .await
        .expect("published");
    sim.settle().await.expect("settles");
    let state: String =
        sqlx::query_scalar("SELECT state FROM dispatch.sms_messages WHERE id = $1::uuid")
            .bind(&overtaken.command_id)
            .fetch_one(sim.pool())
            .await
            .expect("kept");
    assert_eq!(state, "withdrawn");

    sim.advance_to(local("2027-01-18", 11)).await.expect("time");
    sim.publish_renewal("R1", "R1-2027").await.expect("renewed");
    sim.advance_to(local("2027-03-05", 12)).await.expect("time");

    // R1: not one contact after the call, and the case closed renewed.
    assert_eq!(case_state(&system, "R1").await, "renewed");
    assert_eq!(
        contacts_since(&system, "R1", called).await,
        [],
        "a renewed outcome is followed by no contact at all"
    );
    let sent_after: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM dispatch.sms_messages
         WHERE policy_no = 'R1' AND created_at > $1 AND sent_at IS NOT NULL",
    )
    .bind(called)
    .fetch_one(system.sim.pool())
    .await
    .expect("counted");
    assert_eq!(sent_after, 0);

    // R2: unconfirmed after three days, reopened on 20 January with a check task for
    // its owner; the held contacts resumed from then on.
    let reopened: Vec<CaseReopened> = events(&system, subject::LISTS_CASE_REOPENED).await;
    assert_eq!(reopened.len(), 1, "{reopened:?}");
    assert_eq!(
        (
            reopened[0].policy_no.as_str(),
            reopened[0].reported_policy_no.as_str(),
            reopened[0].lapsed
        ),
        ("R2", "R2-2027", false)
    );
    let r2 = timeline(&system, "R2").await;
    let check: Vec<&(String, String)> = r2
        .iter()
        .filter(|t| t.0.starts_with("renewal check"))
        .collect();
    assert_eq!(check.len(), 1, "{r2:?}");
    assert_eq!(check[0].1, "fired");
    let calls: Vec<CreatePhoneTask> =
        events(&system, subject::DISPATCH_CMD_CREATE_PHONE_TASK).await;
    let check_task = calls
        .iter()
        .find(|c| c.policy_no == "R2" && c.stage.starts_with("renewal check"))
        .expect("the check task was made");
    assert_eq!(
        (check_task.queue, check_task.owner_agent.as_str()),
        (
            renewal_contract::scheduler::TaskQueue::Owner as i32,
            "SH01-A03"
        )
    );
    assert!(check_task.due_at_ms >= local("2027-01-20", 0).timestamp_millis());
    assert_eq!(state_of(&r2, "T-15 call"), "fired", "{r2:?}");
    assert_eq!(state_of(&r2, "T+1"), "fired", "{r2:?}");
    assert_eq!(case_state(&system, "R2").await, "lapsed");
    system.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn escalations_are_work_items_in_the_hq_city_and_supervisor_queues() {
    let system = TestSystem::start("es", local("2026-12-01", 0)).await;
    let sim = &system.sim;
    system.load_org(ORG_CSV).await;
    // E1: the owner judges it at high risk of loss; E2 (an important customer) and E3:
    // the owner cannot renew them in time.
    let mut e2 = policy("E2", "2027-02-15");
    e2.important = true;
    sim.publish_policies(&[policy("E1", "2027-02-15"), e2, policy("E3", "2027-02-15")])
        .await
        .expect("published");
    sim.advance_to(local("2026-12-01", 9)).await.expect("time");
    for no in ["E1", "E2", "E3"] {
        claim(&system, no).await;
    }
    sim.advance_to(local("2027-01-16", 10) + chrono::Duration::minutes(5))
        .await
        .expect("time");
    let tasks = lease(&system, "SH01-A03", "owner").await;
    complete(
        &system,
        task_of(&tasks, "E1"),
        json!({"outcome": "high_risk_of_loss", "reason": "rival offered 15% cash"}),
    )
    .await;
    for no in ["E2", "E3"] {
        complete(
            &system,
            task_of(&tasks, no),
            json!({"outcome": "cannot_renew_in_time"}),
        )
        .await;
    }
    sim.settle().await.expect("settles");

    // E1 went to HQ at once, and its HQ task is leased the same morning, before T.
    let (_, e1) = system.get_json("/v1/cases/E1").await;
    assert_eq!(
        (&e1["phase"], &e1["owner_agent"]),
        (&json!("hq"), &json!("HQ")),
        "{e1}"
    );
    let hq = lease(&system, "CC-1", "hq").await;
    let hq_task = task_of(&hq, "E1");
    assert!(
        hq_task["stage"]
            .as_str()
            .is_some_and(|s| s.starts_with("HQ outbound")),
        "{hq_task}"
    );
    assert!(
        sim.now() < local("2027-02-15", 0),
        "leased before the expiry"
    );
    complete(
        &system,
        hq_task,
        json!({"outcome": "promised", "promised_date": "2027-02-01"}),
    )
    .await;

    // E2: the owner keeps the case, and the city company's support queue has its task;
    // another city's admin may not lease from it.
    let (_, e2) = system.get_json("/v1/cases/E2").await;
    assert_eq!(
        (&e2["phase"], &e2["owner_agent"]),
        (&json!("city_company"), &json!("SH01-A03")),
        "{e2}"
    );
    let other_city =
        system.client(&renewal_e2e::Grant::role(renewal_e2e::Role::CityAdmin).city("110000"));
    let (status, body) = renewal_e2e::post_json_to(
        &other_city,
        &system.url("/v1/phone-tasks:lease"),
        json!({"agent_id": "BJ-CITY", "queue": "city", "city_code": "310000"}),
    )
    .await;
    assert_eq!(status, 403, "{body}");
    let shanghai =
        system.client(&renewal_e2e::Grant::role(renewal_e2e::Role::CityAdmin).city("310000"));
    let (status, body) = renewal_e2e::post_json_to(
        &shanghai,
        &system.url("/v1/phone-tasks:lease"),
        json!({"agent_id": "SH-CITY", "queue": "city", "city_code": "310000"}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let city_tasks = body["tasks"].as_array().cloned().unwrap_or_default();
    assert_eq!(city_tasks.len(), 1, "{body}");
    assert_eq!(city_tasks[0]["policy_no"], "E2");
    // E3: back to its branch for someone else to take.
    let (_, e3) = system.get_json("/v1/cases/E3").await;
    assert_eq!(e3["phase"], "branch_reassign", "{e3}");

    // T-10: the supervisor sees the branch's at-risk cases with their last call.
    sim.advance_to(local("2027-02-05", 10)).await.expect("time");
    let supervisor = system.client(
        &renewal_e2e::Grant::role(renewal_e2e::Role::Supervisor)
            .agent("SH01-S01")
            .branch("SH01")
            .city("310000"),
    );
    let (status, body) =
        renewal_e2e::get_json_with(&supervisor, &system.url("/v1/branches/SH01/alerts")).await;
    assert_eq!(status, 200, "{body}");
    let alerts = body["alerts"].as_array().cloned().unwrap_or_default();
    let view: Vec<(String, String)> = alerts
        .iter()
        .map(|a| {
            (
                a["policy_no"].as_str().unwrap_or_default().to_owned(),
                a["last_outcome"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    assert!(view.contains(&("E1".into(), "promised".into())), "{body}");
    assert!(view.iter().any(|(p, _)| p == "E2"), "{body}");
    assert!(
        !body.to_string().contains("+86"),
        "no customer data: {body}"
    );
    let other_branch = system.client(
        &renewal_e2e::Grant::role(renewal_e2e::Role::Supervisor)
            .agent("BJ01-S01")
            .branch("BJ01")
            .city("110000"),
    );
    let (status, _) =
        renewal_e2e::get_json_with(&other_branch, &system.url("/v1/branches/SH01/alerts")).await;
    assert_eq!(status, 403);
    system.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deadlines_count_working_days_and_a_city_may_only_shorten_them() {
    let system = TestSystem::start("wd", local("2026-09-30", 12)).await;
    let sim = &system.sim;
    system.load_org(ORG_CSV).await;
    // W1's T-5 (13 December 2026) is a Sunday.
    sim.publish_policies(&[policy("W1", "2026-12-18"), policy("W2", "2026-12-20")])
        .await
        .expect("published");
    // The lists are issued on 1 October, the first day of the National Day holiday
    // (1-7 October; Saturday the 10th is a make-up workday): the fifth working day
    // after is Tuesday the 13th, so the claim window ends at its midnight.
    sim.advance_to(local("2026-10-01", 9)).await.expect("time");
    let claims = system.get_items("/v1/branches/SH01/claims").await;
    let deadlines: Vec<(&str, &str)> = claims
        .as_array()
        .into_iter()
        .flatten()
        .map(|c| {
            (
                c["policy_no"].as_str().unwrap_or_default(),
                c["deadline"].as_str().unwrap_or_default(),
            )
        })
        .collect();
    let end_of_13th = local("2026-10-14", 0).to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    assert_eq!(
        deadlines,
        [("W1", end_of_13th.as_str()), ("W2", end_of_13th.as_str())],
        "{claims}"
    );
    claim(&system, "W1").await;

    // The owner's T-5 confirmation is asked on Friday the 11th, not on Sunday.
    let (status, body) = system.get_json("/v1/cases/W1/timeline").await;
    assert_eq!(status, 200, "{body}");
    let t5 = body["stages"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|s| s["stage"] == "T-5")
        .cloned()
        .unwrap_or_default();
    assert_eq!(
        t5["due_at"],
        local("2026-12-11", 9).to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        "{body}"
    );

    // A city may tighten its deadlines, never lengthen them.
    let shanghai =
        system.client(&renewal_e2e::Grant::role(renewal_e2e::Role::CityAdmin).city("310000"));
    let put = |body: Value| {
        let http = shanghai.clone();
        let url = system.url("/v1/cities/310000/settings");
        async move {
            let response = http.put(url).json(&body).send().await.expect("answers");
            let status = response.status().as_u16();
            (status, response.json::<Value>().await.unwrap_or_default())
        }
    };
    let (status, body) = put(json!({"claim_days": 7, "pool_days": 3, "step_hours": 24})).await;
    assert_eq!(status, 400, "{body}");
    let detail = body["detail"].as_str().unwrap_or_default();
    assert!(
        detail.contains("only shorten") && detail.contains("claim_days 7"),
        "{body}"
    );
    let (_, settings) = system.get_json("/v1/cities/310000/settings").await;
    assert_eq!(settings["claim_days"], 5, "nothing written: {settings}");
    let (status, body) = put(json!({"claim_days": 3, "pool_days": 2, "step_hours": 12})).await;
    assert_eq!(status, 200, "{body}");
    system.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_from_the_core_system_reach_the_open_case() {
    let system = TestSystem::start("ch", local("2026-12-01", 0)).await;
    let sim = &system.sim;
    system.load_org(ORG_CSV).await;
    let policies = ["C1", "C2", "C3"].map(|no| policy(no, "2027-02-15"));
    sim.publish_policies(&policies).await.expect("published");
    sim.advance_to(local("2026-12-01", 9)).await.expect("time");
    for no in ["C1", "C2", "C3"] {
        claim(&system, no).await;
    }

    // C1's expiry moves ten days on to 25 February; C3 moves to branch SH02.
    let mut c1 = policy("C1", "2027-02-25");
    c1.version = 2;
    let mut c3 = policy("C3", "2027-02-15");
    c3.version = 2;
    c3.branch_code = "SH02".into();
    sim.publish_policies(&[c1, c3]).await.expect("published");
    sim.settle().await.expect("settles");
    let utc = |date: &str, hour: u32| {
        local(date, hour).to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
    };
    let (status, body) = system.get_json("/v1/cases/C1/timeline").await;
    assert_eq!(status, 200, "{body}");
    let due: Vec<(String, String)> = body["stages"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|s| {
            (
                s["stage"].as_str().unwrap_or_default().to_owned(),
                s["due_at"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    let want: Vec<(String, String)> = [
        ("T-60", utc("2026-12-27", 10)),
        ("T-30", utc("2027-01-26", 10)),
        ("T-15 call", utc("2027-02-10", 10)),
        ("T-15 SMS", utc("2027-02-10", 11)),
        ("T-10", utc("2027-02-15", 9)),
        ("T-7", utc("2027-02-18", 10)),
        // 20 February is a Saturday: the owner's confirmation is asked on Friday.
        ("T-5", utc("2027-02-19", 9)),
        ("T+1", utc("2027-02-26", 10)),
        ("T+15", utc("2027-03-12", 10)),
    ]
    .into_iter()
    .map(|(s, d)| (s.to_owned(), d))
    .collect();
    let mut got = due.clone();
    got.sort_by(|a, b| a.0.cmp(&b.0));
    let mut want_sorted = want.clone();
    want_sorted.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(got, want_sorted, "every stage re-planned: {body}");
    let (_, c1_policy) = system.get_json("/v1/policies/C1").await;
    assert_eq!(
        c1_policy["case"]["effective_expiry_date"], "2027-02-25",
        "{c1_policy}"
    );
    let (_, c3_case) = system.get_json("/v1/cases/C3").await;
    assert_eq!(
        (
            &c3_case["phase"],
            &c3_case["branch_code"],
            &c3_case["owner_agent"]
        ),
        (&json!("branch"), &json!("SH02"), &Value::Null),
        "re-routed to its new branch's claims: {c3_case}"
    );
    let sh02 = system.get_items("/v1/branches/SH02/claims").await;
    assert!(
        sh02.as_array()
            .into_iter()
            .flatten()
            .any(|c| c["policy_no"] == "C3"),
        "{sh02}"
    );

    // T-30: C2's number is wrong. Its contacts wait, and the owner gets a correction.
    sim.advance_to(local("2027-01-16", 10) + chrono::Duration::minutes(5))
        .await
        .expect("time");
    let tasks = lease(&system, "SH01-A03", "owner").await;
    complete(
        &system,
        task_of(&tasks, "C2"),
        json!({"outcome": "wrong_number"}),
    )
    .await;
    sim.settle().await.expect("settles");
    let (_, body) = system.get_json("/v1/cases/C2/timeline").await;
    let line: Vec<(String, String)> = body["stages"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|s| {
            (
                s["stage"].as_str().unwrap_or_default().to_owned(),
                s["state"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    assert_eq!(state_of(&line, "T-15 call"), "held", "{line:?}");
    assert_eq!(
        state_of(&line, "T-10"),
        "pending",
        "the alert still comes: {line:?}"
    );
    let corrections = lease(&system, "SH01-A03", "owner").await;
    assert!(
        corrections.iter().any(|t| t["policy_no"] == "C2"
            && t["stage"]
                .as_str()
                .is_some_and(|s| s.starts_with("contact correction"))),
        "{corrections:?}"
    );

    // The core system sends the corrected number: the held contacts resume, and the
    // T-15 call goes to the new number.
    sim.advance_to(local("2027-01-18", 11)).await.expect("time");
    let mut c2 = policy("C2", "2027-02-15");
    c2.version = 2;
    c2.mobile = "+8613900001111".into();
    sim.publish_policies(&[c2]).await.expect("published");
    sim.settle().await.expect("settles");
    let (_, body) = system.get_json("/v1/cases/C2/timeline").await;
    let t15 = body["stages"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|s| s["stage"] == "T-15 call")
        .cloned()
        .unwrap_or_default();
    assert_eq!(t15["state"], "pending", "{body}");
    let corrected: Option<DateTime<Utc>> = sqlx::query_scalar(
        "SELECT max(corrected_at) FROM dispatch.contact_corrections c
         JOIN dispatch.phone_tasks t ON t.id = c.task_id WHERE t.policy_no = 'C2'",
    )
    .fetch_one(sim.pool())
    .await
    .expect("read");
    assert!(corrected.is_some(), "the wrong-number mark is cleared");
    sim.advance_to(local("2027-01-31", 10) + chrono::Duration::minutes(5))
        .await
        .expect("time");
    let campaign = lease(&system, "CC-1", "campaign").await;
    let call = task_of(&campaign, "C2");
    assert_eq!(call["customer"]["mobile"], "+8613900001111", "{call}");
    system.finish().await;
}

/// A wrong-number call and the core system's corrected number can cross: the call
/// ended first, the correction is taken in first. The case's contacts end as they do
/// in the other order (nothing held, the owner still asked to check the number), and
/// a promise made on a later call pauses a contact whether it was held or not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrected_number_that_crosses_the_wrong_number_call_holds_nothing() {
    use renewal_contract::dispatch::{CallOutcome, PhoneTaskCompleted};
    let system = TestSystem::start("cx", local("2026-12-01", 0)).await;
    let sim = &system.sim;
    system.load_org(ORG_CSV).await;
    sim.publish_policies(&[policy("X1", "2027-02-15")])
        .await
        .expect("published");
    sim.advance_to(local("2026-12-01", 9)).await.expect("time");
    claim(&system, "X1").await;

    // T-30: the owner's call ends with a wrong number at 10:05...
    sim.advance_to(local("2027-01-16", 10) + chrono::Duration::minutes(5))
        .await
        .expect("time");
    let tasks = lease(&system, "SH01-A03", "owner").await;
    let task = task_of(&tasks, "X1").clone();
    let ended = sim.now();
    // ... and the corrected number, sent a minute later, is taken in before the call's
    // outcome (the outcome is published here by hand, after it).
    sim.advance_to(ended + chrono::Duration::minutes(1))
        .await
        .expect("time");
    let mut x1 = policy("X1", "2027-02-15");
    x1.version = 2;
    x1.mobile = "+8613900002222".into();
    sim.publish_policies(&[x1]).await.expect("published");
    sim.settle().await.expect("settles");
    let case_id: uuid::Uuid =
        sqlx::query_scalar("SELECT case_id FROM lists.cases WHERE policy_no = 'X1'")
            .fetch_one(sim.pool())
            .await
            .expect("case");
    let outcome = PhoneTaskCompleted {
        task_id: task["id"].as_str().unwrap_or_default().to_owned(),
        case_id: case_id.to_string(),
        policy_no: "X1".into(),
        stage: "T-30".into(),
        outcome: CallOutcome::WrongNumber as i32,
        agent_id: "SH01-A03".into(),
        completed_at_ms: ended.timestamp_millis(),
        ..Default::default()
    };
    sim.deps
        .bus
        .publish(
            subject::DISPATCH_TASK_COMPLETED,
            "crossed-wrong-number",
            None,
            prost::Message::encode_to_vec(&outcome),
        )
        .await
        .expect("published");
    sim.settle().await.expect("settles");
    let line = timeline(&system, "X1").await;
    assert_eq!(state_of(&line, "T-15 call"), "pending", "{line:?}");
    assert!(
        line.iter()
            .any(|(stage, _)| stage.starts_with("contact correction")),
        "the owner still checks the number: {line:?}"
    );

    // The other order, on the same case: a wrong number now holds the contacts; the
    // customer, reached another way, promises to renew by 12 February, which pauses the
    // T-15 call and T-7 SMS (held or not), and the corrected number resumes only what
    // is after it.
    sim.advance_to(local("2027-01-17", 10) + chrono::Duration::minutes(5))
        .await
        .expect("time");
    let mut again = outcome.clone();
    again.task_id = "second-wrong-number".into();
    again.completed_at_ms = sim.now().timestamp_millis();
    sim.deps
        .bus
        .publish(
            subject::DISPATCH_TASK_COMPLETED,
            "second-wrong-number",
            None,
            prost::Message::encode_to_vec(&again),
        )
        .await
        .expect("published");
    sim.settle().await.expect("settles");
    assert_eq!(
        state_of(&timeline(&system, "X1").await, "T-15 call"),
        "held"
    );
    let mut promise = again.clone();
    promise.task_id = "promise".into();
    promise.outcome = CallOutcome::Promised as i32;
    promise.promised_date = "2027-02-12".into();
    sim.deps
        .bus
        .publish(
            subject::DISPATCH_TASK_COMPLETED,
            "promise",
            None,
            prost::Message::encode_to_vec(&promise),
        )
        .await
        .expect("published");
    sim.settle().await.expect("settles");
    let mut x1 = policy("X1", "2027-02-15");
    x1.version = 3;
    x1.mobile = "+8613900003333".into();
    sim.publish_policies(&[x1]).await.expect("published");
    sim.settle().await.expect("settles");
    let line = timeline(&system, "X1").await;
    assert_eq!(state_of(&line, "T-15 call"), "skipped", "{line:?}");
    assert_eq!(state_of(&line, "T-7"), "skipped", "{line:?}");
    assert_eq!(state_of(&line, "T+1"), "pending", "{line:?}");
    system.finish().await;
}
