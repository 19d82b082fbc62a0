//! The scheduler against the real Postgres and NATS, on the simulated clock: the
//! default plan end to end, a renewal that stops everything, a case opened late, a
//! night-time stage and plan versions, a holiday expiry, each call outcome's
//! reschedule, the frequency cap, two instances sharing 10,000 timers, and a scheduler
//! process killed in the middle of a batch.

use renewal_contract::core::Policy;
use renewal_contract::dispatch::{CallOutcome, PhoneTaskCompleted};
use renewal_contract::scheduler::{CreatePhoneTask, SendSms, SupervisorAlert, TaskQueue};
use renewal_contract::subject;
use renewal_e2e::{ORG_CSV, TestSystem, events, local, policy};
use serde_json::{Value, json};

fn policy_of(no: &str, end: &str, branch: &str, agent: &str, city: &str) -> Policy {
    let mut p = policy(no, end);
    p.branch_code = branch.into();
    p.agent_code = agent.into();
    p.city_code = city.into();
    p
}

/// (stage, state, due_at, note) in due order.
async fn timeline(system: &TestSystem, policy_no: &str) -> Vec<(String, String, String, String)> {
    let (status, body) = system
        .get_json(&format!("/v1/cases/{policy_no}/timeline"))
        .await;
    assert_eq!(status, 200, "{body}");
    body["stages"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|s| {
                    let text = |v: &Value| v.as_str().unwrap_or_default().to_owned();
                    (
                        text(&s["stage"]),
                        text(&s["state"]),
                        text(&s["due_at"]),
                        text(&s["note"]),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

fn state_of<'a>(line: &'a [(String, String, String, String)], stage: &str) -> &'a str {
    line.iter()
        .find(|t| t.0 == stage)
        .map_or("absent", |t| t.1.as_str())
}

fn utc(date: &str, hour: u32, minute: u32) -> String {
    (local(date, hour) + chrono::Duration::minutes(minute as i64))
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

async fn claim(system: &TestSystem, policy_no: &str) {
    let (status, body) = system
        .post_json(
            &format!("/v1/claims/{policy_no}:claim"),
            json!({"branch_code": "SH01", "owner_agent": "SH01-A03"}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_default_plan_runs_end_to_end_for_a_case_that_never_renews() {
    let system = TestSystem::start("sd", local("2026-12-01", 0)).await;
    let sim = &system.sim;
    system.load_org(ORG_CSV).await;
    sim.publish_policies(&[policy("P1", "2027-02-15")])
        .await
        .expect("published");
    sim.advance_to(local("2026-12-01", 9)).await.expect("time");
    claim(&system, "P1").await;
    sim.advance_to(local("2027-03-03", 12)).await.expect("time");

    let line = timeline(&system, "P1").await;
    let fired: Vec<&str> = line
        .iter()
        .filter(|t| t.1 == "fired")
        .map(|t| t.0.as_str())
        .collect();
    assert_eq!(
        fired,
        [
            "T-60",
            "T-30",
            "T-15 call",
            "T-15 SMS",
            // T-5 (10 February) falls in the Spring Festival holiday: the owner is
            // asked on the last working day before it, ahead of T-10.
            "T-5",
            "T-10",
            "T-7",
            "T+1",
            "T+15"
        ],
        "every stage, the lapse rescue after the lapse too: {line:?}"
    );
    let tasks: Vec<CreatePhoneTask> =
        renewal_e2e::events(&system, subject::DISPATCH_CMD_CREATE_PHONE_TASK).await;
    let task_view: Vec<(String, i32, String)> = tasks
        .iter()
        .map(|t| (t.stage.clone(), t.queue, t.owner_agent.clone()))
        .collect();
    assert_eq!(
        task_view,
        vec![
            ("T-30".into(), TaskQueue::Owner as i32, "SH01-A03".into()),
            (
                "T-15 call".into(),
                TaskQueue::Campaign as i32,
                "SH01-A03".into()
            ),
            // Nobody answered the T-5 confirmation (4 February), but the second
            // assignment's steps count working days and the Spring Festival (5-12
            // February) came first: the case lapsed with its owner, who keeps it for
            // the rescue.
            ("T+1".into(), TaskQueue::Campaign as i32, "SH01-A03".into()),
            ("T+15".into(), TaskQueue::Campaign as i32, "SH01-A03".into()),
        ]
    );
    assert!(
        !tasks[0].promotion.is_empty(),
        "the T-30 call names the promotion"
    );
    assert_eq!(tasks[0].days_to_expiry, 30);
    let alerts: Vec<SupervisorAlert> =
        renewal_e2e::events(&system, subject::SCHEDULER_CASE_SUPERVISOR_ALERT).await;
    assert_eq!(alerts.len(), 1);
    assert_eq!(
        (alerts[0].stage.as_str(), alerts[0].owner_agent.as_str()),
        ("T-10", "SH01-A03")
    );
    let (_, case) = system.get_json("/v1/cases/P1").await;
    assert!(
        case["routing"]
            .as_array()
            .is_some_and(|r| r.iter().any(|s| s["step"] == "confirming")),
        "the T-5 command reached assignment: {case}"
    );
    system.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renewal_at_t_minus_20_stops_everything_and_a_late_case_gets_what_is_ahead() {
    let system = TestSystem::start("sr", local("2026-12-01", 0)).await;
    let sim = &system.sim;
    system.load_org(ORG_CSV).await;
    sim.publish_policies(&[policy("P1", "2027-02-15")])
        .await
        .expect("published");
    sim.advance_to(local("2027-01-26", 12)).await.expect("time");
    sim.publish_renewal("P1", "R1").await.expect("renewed");
    // Opened at T-20 (expires 15 February too).
    sim.publish_policies(&[policy("P2", "2027-02-15")])
        .await
        .expect("published");
    sim.advance_to(local("2027-03-03", 12)).await.expect("time");

    let line = timeline(&system, "P1").await;
    for stage in ["T-60", "T-30"] {
        assert_eq!(state_of(&line, stage), "fired", "{line:?}");
    }
    for t in line.iter().filter(|t| t.0 != "T-60" && t.0 != "T-30") {
        assert_eq!(
            (t.1.as_str(), t.3.as_str()),
            ("cancelled", "case renewed"),
            "{t:?}"
        );
    }
    let late = timeline(&system, "P2").await;
    assert_eq!(state_of(&late, "T-60"), "skipped");
    assert_eq!(state_of(&late, "T-30"), "skipped");
    let before_expiry = late
        .iter()
        .filter(|t| t.1 == "fired" && ["T-15 call", "T-15 SMS", "T-7"].contains(&t.0.as_str()))
        .count();
    assert!(
        before_expiry >= 2,
        "at least two contacts before expiry: {late:?}"
    );
    system.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn night_stages_move_into_the_day_and_a_new_plan_version_applies_to_new_cases() {
    let system = TestSystem::start("sn", local("2026-12-01", 0)).await;
    let sim = &system.sim;
    sim.publish_policies(&[policy("P1", "2027-02-15")])
        .await
        .expect("published");
    sim.settle().await.expect("settles");
    let plan = json!({"note": "night owls", "stages": [
        {"stage": "T-3 night", "days_before": 3, "at": "22:30", "action": "sms", "template": "renewal_friendly"},
        {"stage": "T-1 late", "days_before": 1, "at": "23:00", "action": "phone_task", "queue": "campaign"}
    ]});
    let response = system
        .http
        .clone()
        .put(system.url("/v1/plans/310000"))
        .json(&plan)
        .send()
        .await
        .expect("put");
    assert_eq!(response.status().as_u16(), 200);
    let body: Value = response.json().await.expect("json");
    assert_eq!(body["version"], 1, "{body}");
    assert_eq!(body["open_cases_keeping_their_plan"], 1, "{body}");
    let bad = system
        .http
        .clone()
        .put(system.url("/v1/plans/310000"))
        .json(
            &json!({"stages": [{"stage": "x", "days_before": 3, "at": "25:00", "action": "sms"}]}),
        )
        .send()
        .await
        .expect("put");
    assert_eq!(bad.status().as_u16(), 400, "a bad plan is refused");
    let (_, shown) = system.get_json("/v1/plans/310000").await;
    assert_eq!(shown["version"], 1, "{shown}");

    sim.publish_policies(&[policy("P2", "2027-02-15")])
        .await
        .expect("published");
    sim.settle().await.expect("settles");
    let old = timeline(&system, "P1").await;
    assert_eq!(old.len(), 9, "P1 keeps the default plan: {old:?}");
    let new = timeline(&system, "P2").await;
    assert_eq!(
        new,
        vec![
            (
                "T-3 night".into(),
                "pending".into(),
                utc("2027-02-13", 9, 0),
                "moved into the allowed hours".into()
            ),
            (
                "T-1 late".into(),
                "pending".into(),
                utc("2027-02-14", 20, 59),
                "moved into the allowed hours".into()
            ),
        ],
        "22:30 goes to the next morning; 23:00 the day before expiry comes earlier instead"
    );
    system.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_holiday_expiry_is_worked_against_the_day_before_the_holiday() {
    let system = TestSystem::start("sh", local("2027-08-01", 0)).await;
    let sim = &system.sim;
    // 4 October 2027 falls in the National Day holiday.
    sim.publish_policies(&[policy("P1", "2027-10-04")])
        .await
        .expect("published");
    sim.settle().await.expect("settles");
    let (_, body) = system.get_json("/v1/cases/P1/timeline").await;
    let effective = body["effective_expiry_date"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(effective.as_str() < "2027-10-01", "{body}");
    let date = chrono::NaiveDate::parse_from_str(&effective, "%Y-%m-%d").expect("date");
    let t60 = (date - chrono::Days::new(60)).to_string();
    let line = timeline(&system, "P1").await;
    assert_eq!(line[0].0, "T-60");
    assert_eq!(
        line[0].2,
        utc(&t60, 10, 0),
        "T-60 counts from the effective expiry"
    );
    system.finish().await;
}

async fn outcome(
    system: &TestSystem,
    n: u32,
    policy_no: &str,
    outcome: CallOutcome,
    edit: impl FnOnce(&mut PhoneTaskCompleted),
) {
    let (status, case) = system.get_json(&format!("/v1/cases/{policy_no}")).await;
    assert_eq!(status, 200, "{case}");
    let mut event = PhoneTaskCompleted {
        task_id: format!("task-{n}"),
        case_id: case["case_id"].as_str().unwrap_or_default().to_owned(),
        policy_no: policy_no.to_owned(),
        stage: "T-30".into(),
        outcome: outcome as i32,
        agent_id: "SH01-A03".into(),
        completed_at_ms: system.sim.now().timestamp_millis(),
        ..Default::default()
    };
    edit(&mut event);
    system
        .sim
        .deps
        .bus
        .publish(
            subject::DISPATCH_TASK_COMPLETED,
            &format!("outcome-{n}"),
            None,
            prost::Message::encode_to_vec(&event),
        )
        .await
        .expect("published");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_call_outcome_reschedules_the_contacts() {
    let system = TestSystem::start("so", local("2026-12-01", 0)).await;
    let sim = &system.sim;
    system.load_org(ORG_CSV).await;
    sim.publish_policies(&[
        policy("P1", "2027-02-15"),
        policy("P2", "2027-02-15"),
        policy("P3", "2027-02-15"),
        policy("P4", "2027-02-15"),
    ])
    .await
    .expect("published");
    sim.advance_to(local("2026-12-01", 9)).await.expect("time");
    let call_back = local("2026-12-10", 15);
    outcome(&system, 1, "P1", CallOutcome::CallBack, |e| {
        e.call_back_at_ms = call_back.timestamp_millis();
    })
    .await;
    outcome(&system, 2, "P2", CallOutcome::Promised, |e| {
        e.promised_date = "2027-01-20".into();
    })
    .await;
    for n in 3..=6 {
        outcome(&system, n, "P3", CallOutcome::Unreachable, |_| {}).await;
    }
    outcome(&system, 7, "P4", CallOutcome::Refused, |e| {
        e.reason = "too expensive".into()
    })
    .await;
    sim.settle().await.expect("settles");

    let p1 = timeline(&system, "P1").await;
    let back: Vec<&(String, String, String, String)> =
        p1.iter().filter(|t| t.0.starts_with("call back")).collect();
    assert_eq!(back.len(), 1, "{p1:?}");
    assert_eq!(
        (back[0].1.as_str(), back[0].2.clone()),
        ("pending", utc("2026-12-10", 15, 0))
    );

    let p2 = timeline(&system, "P2").await;
    assert_eq!(
        state_of(&p2, "T-30"),
        "skipped",
        "paused until the promise: {p2:?}"
    );
    assert_eq!(
        state_of(&p2, "T-15 call"),
        "pending",
        "after the promise, as planned"
    );
    assert!(
        p2.iter()
            .any(|t| t.0.starts_with("promise check") && t.2 == utc("2027-01-21", 10, 0)),
        "{p2:?}"
    );

    let p3 = timeline(&system, "P3").await;
    let retries: Vec<&str> = p3
        .iter()
        .filter(|t| t.0.starts_with("unreachable retry"))
        .map(|t| t.0.as_str())
        .collect();
    assert_eq!(
        retries,
        [
            "unreachable retry 1",
            "unreachable retry 2",
            "unreachable retry 3"
        ]
    );

    let p4 = timeline(&system, "P4").await;
    for stage in ["T-60", "T-30", "T-15 SMS", "T-7"] {
        assert_eq!(state_of(&p4, stage), "cancelled", "{p4:?}");
    }
    assert_eq!(
        state_of(&p4, "T+1"),
        "pending",
        "the plan keeps the lapse rescue"
    );
    assert_eq!(
        state_of(&p4, "T-5"),
        "pending",
        "the second assignment still happens"
    );
    system.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn marketing_sms_are_capped_per_customer_and_per_renewal() {
    let system = TestSystem::start("sc", local("2026-12-01", 0)).await;
    let sim = &system.sim;
    let sms = |name: &str, days: i32| {
        json!({"stage": name, "days_before": days, "at": "10:00", "action": "sms",
               "template": "renewal_friendly", "marketing": true})
    };
    let response = system.http.clone()
        .put(system.url("/v1/plans/110000"))
        .json(&json!({"stages": [sms("S1", 20), sms("S2", 19), sms("S3", 12), sms("S4", 8), sms("S5", 4)]}))
        .send()
        .await
        .expect("put");
    assert_eq!(response.status().as_u16(), 200);
    sim.publish_policies(&[policy_of("B1", "2027-01-30", "BJ01", "BJ01-A01", "110000")])
        .await
        .expect("published");
    sim.advance_to(local("2027-01-31", 12)).await.expect("time");
    let line = timeline(&system, "B1").await;
    let view: Vec<(&str, &str, &str)> = line
        .iter()
        .map(|t| (t.0.as_str(), t.1.as_str(), t.3.as_str()))
        .collect();
    assert_eq!(
        view,
        vec![
            ("S1", "fired", ""),
            ("S2", "fired", "postponed by the frequency cap"),
            ("S3", "fired", ""),
            ("S4", "fired", ""),
            (
                "S5",
                "skipped",
                "frequency cap: 4 marketing SMS per renewal"
            ),
        ]
    );
    assert_eq!(line[1].2, utc("2027-01-13", 10, 0), "three days after S1");
    system.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_scheduler_instances_share_ten_thousand_timers_without_double_firing() {
    let system = TestSystem::start("s2", local("2026-12-01", 0)).await;
    let sim = &system.sim;
    let pool = sim.pool().clone();
    let due = local("2026-12-20", 10);
    let pii = scheduler_cipher();
    sealed_cases(
        &pool,
        &pii,
        10_000,
        |n| (format!("Q{n}"), format!("+861380000{n}")),
        "2027-02-15",
        false,
    )
    .await;
    sqlx::query(
        "INSERT INTO scheduler.timers (id, case_id, stage, action, template, due_at, nominal_at)
         SELECT gen_random_uuid(), case_id, 'bench', 'sms', 'renewal_friendly', $1, $1 FROM scheduler.cases
         WHERE policy_no LIKE 'Q%'",
    )
    .bind(due)
    .execute(&pool)
    .await
    .expect("timers");
    let hours = renewal_scheduler::config::default_hours();
    let mut instances = tokio::task::JoinSet::new();
    for _ in 0..2 {
        let (pool, bus, pii) = (pool.clone(), sim.deps.bus.clone(), pii.clone());
        instances.spawn(async move {
            let mut claimed = 0;
            loop {
                let n = renewal_scheduler::timers::fire_due(&pool, &bus, due, true, &hours, &pii)
                    .await
                    .expect("fires");
                if n == 0 {
                    return claimed;
                }
                claimed += n;
            }
        });
    }
    let mut per_instance = Vec::new();
    while let Some(n) = instances.join_next().await {
        per_instance.push(n.expect("instance"));
    }
    assert_eq!(
        per_instance.iter().sum::<usize>(),
        10_000,
        "{per_instance:?}"
    );
    assert!(
        per_instance.iter().all(|n| *n > 0),
        "both took a share: {per_instance:?}"
    );
    let fired: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM scheduler.timers WHERE state = 'fired' AND stage = 'bench'",
    )
    .fetch_one(&pool)
    .await
    .expect("count");
    let sent: Vec<SendSms> = events::<SendSms>(&system, subject::DISPATCH_CMD_SEND_SMS)
        .await
        .into_iter()
        .filter(|c| c.stage == "bench")
        .collect();
    let commands: std::collections::HashSet<&str> =
        sent.iter().map(|c| c.command_id.as_str()).collect();
    assert_eq!((fired, commands.len()), (10_000, 10_000));
    // Each command names its case and carries no contact (dispatch keeps it).
    let cases: std::collections::HashSet<&str> = sent.iter().map(|c| c.case_id.as_str()).collect();
    assert_eq!(cases.len(), 10_000);
    assert!(
        sent.iter()
            .all(|c| c.mobile.is_empty() && c.customer_name.is_empty() && c.plate.is_empty())
    );
    system.finish().await;
}

/// The scheduler's cipher under the key the all-in-one and the scheduler process get.
fn scheduler_cipher() -> std::sync::Arc<renewal_platform::pii::PiiCipher> {
    renewal_scheduler::config::SchedulerConfig::with_key(renewal::simulation::DEMO_PII_KEY)
        .expect("key")
        .pii
}

/// `n` open cases, each with its policy number and mobile from `of(1..=n)`: the mobile's
/// blind index, as the scheduler keeps a case, and `with_contact` its contact sealed too,
/// as cases opened before dispatch kept the contacts.
async fn sealed_cases(
    pool: &sqlx::PgPool,
    pii: &renewal_platform::pii::PiiCipher,
    n: i64,
    of: impl Fn(i64) -> (String, String),
    expiry: &str,
    with_contact: bool,
) {
    let (mut ids, mut policies, mut contacts, mut mobiles, mut indexes) =
        (vec![], vec![], vec![], vec![], vec![]);
    for i in 1..=n {
        let (policy_no, mobile) = of(i);
        let id = uuid::Uuid::new_v4();
        if with_contact {
            let contact = renewal_scheduler::contact::Contact {
                name: "客户".into(),
                mobile,
                plate: "沪A12345".into(),
            };
            let sealed = renewal_scheduler::contact::seal(pii, id, &contact).expect("seals");
            contacts.push(Some(sealed.contact_enc));
            mobiles.push(None);
            indexes.push(sealed.mobile_index.map(|i| i.to_vec()));
        } else {
            let (sealed, index) = renewal_scheduler::contact::seal_mobile(pii, id, &mobile)
                .expect("seals")
                .unzip();
            contacts.push(None);
            mobiles.push(sealed);
            indexes.push(index.map(|i| i.to_vec()));
        }
        ids.push(id);
        policies.push(policy_no);
    }
    sqlx::query(
        "INSERT INTO scheduler.cases (case_id, policy_no, expiry_date, effective_expiry_date, time_zone,
             contact_enc, mobile_enc, mobile_index)
         SELECT u.id, u.policy_no, $6::date, $6::date, 'Asia/Shanghai', u.contact, u.mobile, u.idx
         FROM UNNEST($1::uuid[], $2::text[], $3::bytea[], $4::bytea[], $5::bytea[])
              AS u(id, policy_no, contact, mobile, idx)",
    )
    .bind(&ids)
    .bind(&policies)
    .bind(&contacts)
    .bind(&mobiles)
    .bind(&indexes)
    .bind(expiry)
    .execute(pool)
    .await
    .expect("cases");
}

/// The scheduler as its own process (the Kubernetes binary) on the wall clock, against
/// this test's database and subjects.
fn scheduler_process(system: &TestSystem) -> std::process::Child {
    use secrecy::ExposeSecret;
    let binary = renewal_e2e::renewal_binary().with_file_name("renewal-scheduler");
    std::process::Command::new(binary)
        .env(
            "DATABASE_URL",
            renewal_e2e::database_url(&system.name).expose_secret(),
        )
        .envs(renewal_e2e::nats_env())
        .env("NATS_STREAM_MAX_BYTES", "268435456")
        .env("NATS_PREFIX", &system.name)
        .env("HTTP_ADDR", "127.0.0.1:0")
        .env("ADMIN_ADDR", "127.0.0.1:0")
        .env("AUTH_DEV", "on")
        .env("PII_KEY", renewal::simulation::DEMO_PII_KEY)
        .env(
            "RENEWAL_STATE_DIR",
            std::env::temp_dir().join(format!("renewal-{}", system.name)),
        )
        .env("RUST_LOG", "off")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("renewal-scheduler starts (deploy/local/test builds it)")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scheduler_killed_between_claiming_and_committing_loses_and_doubles_nothing() {
    const TIMERS: i64 = 12_000;
    // The in-process system lives a month behind the wall clock, so these timers are
    // left to the scheduler process, which fires on the wall clock.
    // Its night, too, so dispatch only takes the commands in and holds the SMS back.
    let wall = chrono::Utc::now();
    let month_ago =
        renewal_platform::local_date(wall - chrono::Duration::days(30), renewal_e2e::TZ);
    let system = TestSystem::start(
        "sk",
        renewal_platform::local_instant(
            month_ago,
            chrono::NaiveTime::from_hms_opt(3, 0, 0).expect("time"),
            renewal_e2e::TZ,
        ),
    )
    .await;
    let sim = &system.sim;
    let pool = sim.pool().clone();
    // Opened before dispatch kept the contacts: each command carries its case's,
    // sealed under the key the scheduler process is given.
    sealed_cases(
        &pool,
        &scheduler_cipher(),
        TIMERS,
        |n| (format!("K{n}"), format!("+86137{n:08}")),
        "2099-01-01",
        true,
    )
    .await;
    sqlx::query(
        "INSERT INTO scheduler.timers (id, case_id, stage, action, template, due_at, nominal_at)
         SELECT gen_random_uuid(), case_id, 'kill', 'sms', 'renewal_friendly', $1, $1
         FROM scheduler.cases WHERE policy_no LIKE 'K%'",
    )
    .bind(wall - chrono::Duration::minutes(1))
    .execute(&pool)
    .await
    .expect("timers");
    let stream = sim
        .deps
        .bus
        .subjects
        .stream(renewal_contract::Stream::Dispatch);
    let in_stream = || async {
        sim.deps
            .bus
            .js
            .get_stream(stream.clone())
            .await
            .expect("stream")
            .info()
            .await
            .expect("info")
            .state
            .messages as i64
    };
    let fired = || async {
        sqlx::query_scalar::<_, i64>(
            "SELECT count(*) FROM scheduler.timers WHERE stage = 'kill' AND state = 'fired'",
        )
        .fetch_one(&pool)
        .await
        .expect("count")
    };

    // SIGKILL the moment JetStream holds commands whose timers are not yet marked fired:
    // a batch claimed and (partly) published, its transaction not committed.
    let mut child = scheduler_process(&system);
    let started = std::time::Instant::now();
    loop {
        let (published, committed) = (in_stream().await, fired().await);
        if (published > committed && committed < TIMERS - 5000)
            || started.elapsed() > std::time::Duration::from_secs(120)
            || child.try_wait().is_ok_and(|status| status.is_some())
        {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(2)).await;
    }
    child.kill().expect("SIGKILL");
    let _ = child.wait();
    let (published, committed) = (in_stream().await, fired().await);
    assert!(
        published > committed,
        "killed with {published} commands published and {committed} timers marked fired"
    );

    // Started again, it fires the rest, the killed batch included.
    let mut child = scheduler_process(&system);
    let started = std::time::Instant::now();
    while fired().await < TIMERS {
        assert!(
            started.elapsed() < std::time::Duration::from_secs(120),
            "the restarted scheduler did not finish"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    child.kill().expect("stop");
    let _ = child.wait();

    let commands = events::<SendSms>(&system, subject::DISPATCH_CMD_SEND_SMS).await;
    let distinct: std::collections::HashSet<&str> = commands
        .iter()
        .filter(|c| c.stage == "kill")
        .map(|c| c.command_id.as_str())
        .collect();
    assert_eq!(
        (commands.len(), distinct.len()),
        (TIMERS as usize, TIMERS as usize),
        "every timer's command once in JetStream"
    );
    // Dispatch (in the test's process) took every command in.
    let started = std::time::Instant::now();
    loop {
        let taken: i64 =
            sqlx::query_scalar("SELECT count(*) FROM dispatch.sms_messages WHERE stage = 'kill'")
                .fetch_one(&pool)
                .await
                .expect("dispatch");
        if taken == TIMERS {
            break;
        }
        assert!(
            started.elapsed() < std::time::Duration::from_secs(240),
            "dispatch took {taken} of {TIMERS} commands"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    system.finish().await;
}
