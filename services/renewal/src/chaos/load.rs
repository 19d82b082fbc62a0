//! The open-loop load of a chaos run: policies two days from expiry (their catch-up
//! SMS and call fall due a minute after their case opens), a third of them renewed
//! 40-100 s later so the renewal races the SMS, one in five of the others replying
//! `TD` 40-100 s after (pushed to dispatch's webhook as the vendor pushes replies, so
//! the opt-out races the SMS too), customers holding two policies, and 50 agents leasing and
//! completing the call tasks with pauses, one of them a zombie that holds its lease
//! past its expiry. Everything it did and saw goes to the history; the checker holds
//! the system to it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use renewal_contract::core::{Policy, PolicyRenewed, PolicyUpserted};
use renewal_contract::subject;
use renewal_platform::Bus;
use serde_json::json;
use tokio_util::sync::CancellationToken;

use super::History;

/// What the load did, for the checker.
#[derive(Default)]
pub struct Ledger {
    pub published: Vec<String>,
    /// Policy number → when its renewal was acknowledged by JetStream.
    pub renewed: HashMap<String, DateTime<Utc>>,
    /// Mobiles whose `TD` reply dispatch's webhook acknowledged.
    pub opted_out: Vec<String>,
    /// Every lease an agent got: task, case, when (by dispatch's clock: the lease's
    /// expiry less its length).
    pub leases: Vec<(String, String, DateTime<Utc>)>,
    /// Completions answered 200, by task.
    pub completions: HashMap<String, u32>,
    /// A zombie's completion after its lease expired that was accepted.
    pub zombie_accepted: u32,
    pub zombie_refused: u32,
}

pub type Shared = Arc<Mutex<Ledger>>;

/// The call queues there are, with their owner agent (owner queues).
pub type Queues = Arc<Mutex<Vec<(String, Option<String>)>>>;

pub const CITY: &str = "310000";
pub const BRANCH: &str = "SH01";

/// The organisation the run's policies belong to.
pub const ORG_CSV: &str =
    "city_code,branch_code,branch_name,agent_code,agent_name,role,capacity,active
310000,SH01,上海一支,SH01-A01,张伟,agent,500,true
310000,SH01,上海一支,SH01-A02,李娜,agent,500,true
310000,SH01,上海一支,SH01-S01,赵敏,supervisor,0,true
";

/// A valid VIN of its own for policy `n`.
fn vin(n: usize) -> String {
    let mut vin = *b"LSVAU2180N2000000";
    vin[11..].copy_from_slice(format!("{:06}", n % 1_000_000).as_bytes());
    vin[8] = renewal_lists::policy_checks::vin_check_digit(&vin);
    String::from_utf8_lossy(&vin).into_owned()
}

fn policy(n: usize, today: chrono::NaiveDate) -> Policy {
    let end = today + chrono::Days::new(2);
    Policy {
        policy_no: format!("PCH{n:06}"),
        version: 1,
        customer_name: "王芳".into(),
        // Two policies per customer.
        mobile: format!("+86137{:08}", n / 2),
        id_number: "11010519491231002X".into(),
        plate: "沪AD12345".into(),
        // A car each: a vehicle's policies would share a case.
        vin: vin(n),
        city_code: CITY.into(),
        branch_code: BRANCH.into(),
        agent_code: "SH01-A01".into(),
        channel: "dealer".into(),
        category: "insured_last_year".into(),
        start_date: (end - chrono::Months::new(12)).to_string(),
        end_date: end.to_string(),
        premium_fen: 456_700,
        important: false,
        group_policy: false,
        real_data_at_sale: true,
    }
}

/// Publishes until JetStream acknowledges (the core system retries the same way).
async fn publish(
    bus: &Bus,
    subject_name: &str,
    key: &str,
    payload: Vec<u8>,
    cancel: &CancellationToken,
) -> bool {
    let mut wait = Duration::from_millis(200);
    while !cancel.is_cancelled() {
        if let Ok(ack) = bus.send(subject_name, key, None, payload.clone()).await
            && let Ok(Ok(_)) = tokio::time::timeout(Duration::from_secs(10), ack).await
        {
            return true;
        }
        tokio::time::sleep(wait).await;
        wait = (wait * 2).min(Duration::from_secs(5));
    }
    false
}

/// What follows a policy's publication, racing its catch-up SMS.
#[derive(Clone, Copy)]
enum Then {
    Nothing,
    Renewal(Duration),
    OptOut(Duration),
}

/// Where the load sends what it does.
#[derive(Clone)]
pub struct Targets {
    pub bus: Bus,
    /// Dispatch's reply webhooks (`.../up`), one per replica.
    pub replies: Vec<String>,
    pub http: reqwest::Client,
    pub ledger: Shared,
    pub history: History,
}

/// Publishes `rate` policies a second until `cancel`: a third renewed 40-100 s later,
/// one in five of the others opted out 40-100 s later.
pub async fn policies(targets: Targets, rate: f64, seed: u64, cancel: CancellationToken) {
    let mut rng = SmallRng::seed_from_u64(seed ^ 0x10ad);
    let today = renewal_platform::local_date(Utc::now(), chrono_tz::Asia::Shanghai);
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut in_flight = tokio::task::JoinSet::new();
    for n in 0.. {
        tokio::select! {
            _ = cancel.cancelled() => break,
            _ = tick.tick() => {}
        }
        let after = Duration::from_secs(rng.random_range(40..=100));
        let then = match n % 15 {
            0 | 3 | 6 | 9 | 12 => Then::Renewal(after),
            1 | 7 => Then::OptOut(after),
            _ => Then::Nothing,
        };
        // Open loop: a slow publish does not hold back the next policy.
        in_flight.spawn(one_policy(
            policy(n, today),
            then,
            targets.clone(),
            cancel.clone(),
        ));
        while in_flight.try_join_next().is_some() {}
    }
    // What is in flight when the load stops still lands (what is due later is not sent).
    while in_flight.join_next().await.is_some() {}
}

async fn one_policy(p: Policy, then: Then, t: Targets, cancel: CancellationToken) {
    let payload = prost::Message::encode_to_vec(&PolicyUpserted {
        policy: Some(p.clone()),
    });
    let key = format!("{}:{}", p.policy_no, p.version);
    if !publish(
        &t.bus,
        subject::CORE_POLICY_UPSERTED,
        &key,
        payload,
        &cancel,
    )
    .await
    {
        return;
    }
    t.ledger
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .published
        .push(p.policy_no.clone());
    let after = match then {
        Then::Nothing => return,
        Then::Renewal(after) | Then::OptOut(after) => after,
    };
    tokio::select! {
        _ = cancel.cancelled() => return,
        _ = tokio::time::sleep(after) => {}
    }
    match then {
        Then::Renewal(_) => renew(&p, &t, &cancel).await,
        Then::OptOut(_) => opt_out(&p.mobile, &t, &cancel).await,
        Then::Nothing => {}
    }
}

async fn renew(p: &Policy, t: &Targets, cancel: &CancellationToken) {
    let event = PolicyRenewed {
        policy_no: p.policy_no.clone(),
        new_policy_no: format!("{}R", p.policy_no),
        renewed_at_ms: Utc::now().timestamp_millis(),
    };
    let key = format!("renewed:{}", p.policy_no);
    let payload = prost::Message::encode_to_vec(&event);
    if publish(&t.bus, subject::CORE_POLICY_RENEWED, &key, payload, cancel).await {
        let at = Utc::now();
        t.ledger
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .renewed
            .insert(p.policy_no.clone(), at);
        t.history
            .write(json!({"event": "renewed", "policy_no": p.policy_no}));
    }
}

/// The customer texts `TD`: pushed to either dispatch replica until one acknowledges
/// it, as the vendor pushes replies.
async fn opt_out(mobile: &str, t: &Targets, cancel: &CancellationToken) {
    let national = mobile.trim_start_matches("+86");
    let local = Utc::now()
        .with_timezone(&chrono_tz::Asia::Shanghai)
        .format("%Y-%m-%d %H:%M:%S")
        .to_string();
    let body = json!([{"phone_number": national, "send_time": local, "content": "TD",
                       "sign_name": "", "dest_code": "", "sequence_id": 1}]);
    for attempt in 0usize.. {
        if cancel.is_cancelled() {
            return;
        }
        let url = &t.replies[attempt % t.replies.len()];
        let answer = t
            .http
            .post(url)
            .json(&body)
            .timeout(Duration::from_secs(5))
            .send()
            .await;
        if matches!(&answer, Ok(r) if r.status().is_success()) {
            t.ledger
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .opted_out
                .push(mobile.to_owned());
            t.history.write(json!({"event": "opted_out"}));
            return;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// One agent: leases up to two tasks from the queues there are, works each 1-4 s and
/// completes it. The zombie leases for 10 s, works 20 s, and tries to complete anyway.
pub async fn agent(
    n: usize,
    http: reqwest::Client,
    dispatch: Vec<String>,
    queues: Queues,
    seed: u64,
    ledger: Shared,
    cancel: CancellationToken,
) {
    let mut rng = SmallRng::seed_from_u64(seed ^ (n as u64).wrapping_mul(0x9e37));
    let zombie = n == 0;
    while !cancel.is_cancelled() {
        let pause = Duration::from_millis(rng.random_range(500..2500));
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(pause) => {}
        }
        let known = queues.lock().unwrap_or_else(|e| e.into_inner()).clone();
        if known.is_empty() {
            continue;
        }
        let (queue, owner) = &known[rng.random_range(0..known.len())];
        let agent_id = owner
            .clone()
            .filter(|o| !o.is_empty())
            .unwrap_or_else(|| format!("CC-{n:03}"));
        let base = &dispatch[rng.random_range(0..dispatch.len())];
        let lease_seconds = if zombie { 10 } else { 60 };
        let Ok(response) = http
            .post(format!("{base}/v1/phone-tasks:lease"))
            .json(&json!({"agent_id": agent_id, "queue": queue, "max": 2, "lease_seconds": lease_seconds}))
            .timeout(Duration::from_secs(5))
            .send()
            .await
        else {
            continue;
        };
        if !response.status().is_success() {
            continue;
        }
        let Ok(body) = response.json::<serde_json::Value>().await else {
            continue;
        };
        let tasks = body["tasks"].as_array().cloned().unwrap_or_default();
        {
            // Each lease when dispatch granted it: its expiry less its length.
            let mut ledger = ledger.lock().unwrap_or_else(|e| e.into_inner());
            for task in &tasks {
                let granted = task["lease_expires_at"]
                    .as_str()
                    .and_then(|at| DateTime::parse_from_rfc3339(at).ok())
                    .map(|at| at.with_timezone(&Utc) - chrono::Duration::seconds(lease_seconds))
                    .unwrap_or_else(Utc::now);
                let id = task["id"].as_str().unwrap_or_default().to_owned();
                let case = task["case_id"].as_str().unwrap_or_default().to_owned();
                ledger.leases.push((id, case, granted));
            }
        }
        for task in tasks {
            let id = task["id"].as_str().unwrap_or_default().to_owned();
            let work = if zombie {
                Duration::from_secs(20)
            } else {
                Duration::from_millis(rng.random_range(1000..4000))
            };
            tokio::time::sleep(work).await;
            complete(&http, base, &id, &task["lease_token"], zombie, &ledger).await;
        }
    }
}

async fn complete(
    http: &reqwest::Client,
    base: &str,
    id: &str,
    token: &serde_json::Value,
    zombie: bool,
    ledger: &Shared,
) {
    // A completion lost to a fault is tried again, as an agent's app would.
    for _ in 0..5 {
        let answer = http
            .post(format!("{base}/v1/phone-tasks/{id}:complete"))
            .json(&json!({"lease_token": token, "outcome": "unreachable"}))
            .timeout(Duration::from_secs(5))
            .send()
            .await;
        let Ok(answer) = answer else {
            tokio::time::sleep(Duration::from_secs(1)).await;
            continue;
        };
        let status = answer.status().as_u16();
        let mut ledger = ledger.lock().unwrap_or_else(|e| e.into_inner());
        match status {
            200 => {
                *ledger.completions.entry(id.to_owned()).or_default() += 1;
                if zombie {
                    ledger.zombie_accepted += 1;
                }
                return;
            }
            409 | 404 | 410 => {
                if zombie {
                    ledger.zombie_refused += 1;
                }
                return;
            }
            _ => {}
        }
        drop(ledger);
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Keeps the list of call queues (and their owners) the agents pull from.
pub async fn queues(pool: sqlx::PgPool, into: Queues, cancel: CancellationToken) {
    while !cancel.is_cancelled() {
        if let Ok(found) = sqlx::query_as::<_, (String, Option<String>)>(
            "SELECT DISTINCT queue, owner_agent FROM dispatch.phone_tasks
             WHERE state = 'open' OR (state = 'leased' AND available_at <= now())",
        )
        .fetch_all(&pool)
        .await
        {
            *into.lock().unwrap_or_else(|e| e.into_inner()) = found;
        }
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_secs(3)) => {}
        }
    }
}
