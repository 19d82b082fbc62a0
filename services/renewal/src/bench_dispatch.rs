//! `renewal bench dispatch`: the dispatch service's figures, against the loopback
//! Postgres and NATS and the mock vendor, with every service running (the
//! simulation, its clock held at 10:00 in Shanghai), printed as `name value` lines.
//!
//! 1. Phone tasks: 20,000 campaign tasks; 32 concurrent pullers lease 10 at a time
//!    over HTTP and complete each: `tasks_per_s`, `double_leases` (tasks leased more
//!    than once, counted by the database and by the pullers).
//! 2. Receipts: 50,000 sent messages; 16 concurrent vendor connections push their
//!    receipts in arrays of 100 as fast as the webhook answers: `receipts_per_s` (and
//!    the latency at that saturation, `webhook_saturated_p50_ms` / `_p99_ms`, which is
//!    only connections over throughput). Then the latency at the rate the issue names:
//!    100,000 more receipts pushed at 20,000 a second (an array of 100 every 5 ms, each
//!    on its own connection as needed, timed from when it was due to go, so a slow
//!    answer cannot hide the ones queued behind it): `webhook_p50_ms`, `webhook_p99_ms`.
//! 3. Sends: 20,000 queued messages; timed until the sender has handed all to the
//!    mock vendor (signed, paced at the configured QPS). The vendor holds its receipts
//!    back until the burst is sent, as handsets report seconds later: `sms_sends_per_s`
//!    measures the sending path. Then 20,000 more with the receipts pushed back as fast
//!    as the mock vendor can, so both paths share the machine:
//!    `sms_sends_with_receipts_per_s`.
//!
//! Each part starts on a quiet system (the events of the part before published and
//! consumed), so it is measured on its own.

use std::collections::HashSet;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{NaiveDate, NaiveTime};
use tokio::sync::Mutex;

use crate::simulation::{SimOptions, Simulation};

const TASKS: i64 = 20_000;
const PULLERS: usize = 32;
const RECEIPTS: i64 = 50_000;
const RECEIPT_CLIENTS: usize = 16;
/// Receipts pushed at the rate, and that rate.
const PACED_RECEIPTS: i64 = 100_000;
const PACED_PER_S: u64 = 20_000;
const SENDS: i64 = 20_000;

fn line(name: &str, value: impl std::fmt::Display) {
    println!("{name} {value}");
}

pub async fn dispatch() -> ExitCode {
    match run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("renewal bench dispatch: {e}");
            ExitCode::FAILURE
        }
    }
}

fn err(e: impl std::fmt::Display) -> String {
    e.to_string()
}

async fn run() -> Result<(), String> {
    let (database_url, nats_url, access) = crate::bench::bench_target(
        "BENCH_DISPATCH_DATABASE_URL",
        "postgres://postgres@127.0.0.1:5432/renewal_bench_dispatch",
    )?;
    let tz = chrono_tz::Asia::Shanghai;
    let start = renewal_platform::local_instant(
        NaiveDate::from_ymd_opt(2026, 12, 1).unwrap_or_default(),
        NaiveTime::from_hms_opt(10, 0, 0).unwrap_or_default(),
        tz,
    );
    let sim = Simulation::start_with(
        SimOptions {
            database_url,
            pii_keys: secrecy::SecretString::from(crate::simulation::DEMO_PII_KEY),
            nats_url,
            prefix: "benchdispatch".into(),
            fresh: true,
            start,
            seed: 1,
            time_zone: tz,
            max_deliveries: crate::simulation::MAX_DELIVERIES,
        },
        None,
        &access,
    )
    .await
    .map_err(err)?;
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(64)
        .build()
        .map_err(err)?;

    // BENCH_DISPATCH_PARTS (e.g. `tasks,sends`) runs some parts only.
    let parts =
        std::env::var("BENCH_DISPATCH_PARTS").unwrap_or_else(|_| "tasks,receipts,sends".into());
    let runs = |part: &str| parts.split(',').any(|p| p.trim() == part);
    if runs("tasks") {
        phone_tasks(&sim, &http).await?;
    }
    if runs("receipts") {
        receipts(&sim, &http).await?;
    }
    if runs("sends") {
        sends(&sim).await?;
    }

    let bus = sim.deps.bus.clone();
    sim.stop().await.map_err(err)?;
    bus.delete_streams().await;
    Ok(())
}

#[derive(serde::Deserialize)]
struct Leased {
    tasks: Vec<LeasedTask>,
}

#[derive(serde::Deserialize)]
struct LeasedTask {
    id: uuid::Uuid,
    lease_token: uuid::Uuid,
}

async fn phone_tasks(sim: &Simulation, http: &reqwest::Client) -> Result<(), String> {
    sim.settle().await.map_err(err)?;
    let pii = dispatch_pii()?;
    let (mut ids, mut contacts) = (Vec::new(), Vec::new());
    for i in 1..=TASKS {
        let id = uuid::Uuid::new_v4();
        let contact = renewal_dispatch::sealed::TaskContact {
            customer_name: "王芳".into(),
            mobile: format!("+86138{i:08}"),
            plate: format!("沪A{i}"),
        };
        contacts.push(
            renewal_dispatch::sealed::seal_task(&pii, &id.to_string(), &contact).map_err(err)?,
        );
        ids.push(id);
    }
    sqlx::query(
        "INSERT INTO dispatch.phone_tasks (id, case_id, policy_no, stage, queue, branch_code, city_code,
             contact_enc, expiry_date, time_zone, days_to_expiry, available_at, created_at)
         SELECT u.id, gen_random_uuid(), 'PB' || u.i, 'T-15', 'campaign', 'SH01', '310000',
                u.contact_enc, '2026-12-16', 'Asia/Shanghai', (u.i % 30) - 5, $2, $2
         FROM unnest($1::uuid[], $3::bytea[]) WITH ORDINALITY AS u(id, contact_enc, i)",
    )
    .bind(&ids)
    .bind(sim.now())
    .bind(&contacts)
    .execute(sim.pool())
    .await
    .map_err(err)?;
    let lease_url = format!("http://{}/v1/phone-tasks:lease", sim.http_addr);
    let base = format!("http://{}/v1/phone-tasks", sim.http_addr);
    // The call center's machine client, verified on every request as in production.
    let token = sim
        .token(&renewal_platform::dev_issuer::Grant::role(
            renewal_platform::Role::CallCenter,
        ))
        .map_err(err)?;
    let seen = Arc::new(Mutex::new((HashSet::new(), 0_u64)));
    let started = Instant::now();
    let mut pullers = tokio::task::JoinSet::new();
    for p in 0..PULLERS {
        let (http, lease_url, base, seen, token) = (
            http.clone(),
            lease_url.clone(),
            base.clone(),
            seen.clone(),
            token.clone(),
        );
        pullers.spawn(async move {
            let agent = format!("CC-{p:02}");
            loop {
                // The puller reads what it needs of each task (the rest of the answer
                // is parsed over and not kept).
                let body: Leased = http
                    .post(&lease_url)
                    .bearer_auth(&token)
                    .json(&serde_json::json!({"agent_id": agent, "queue": "campaign", "max": 10, "lease_seconds": 300}))
                    .send()
                    .await
                    .map_err(err)?
                    .json()
                    .await
                    .map_err(err)?;
                let tasks = body.tasks;
                if tasks.is_empty() {
                    return Ok::<(), String>(());
                }
                {
                    let mut seen = seen.lock().await;
                    for t in &tasks {
                        if !seen.0.insert(t.id) {
                            seen.1 += 1;
                        }
                    }
                }
                for t in &tasks {
                    let response = http
                        .post(format!("{base}/{}:complete", t.id))
                        .bearer_auth(&token)
                        .json(&serde_json::json!({"lease_token": t.lease_token, "outcome": "unreachable"}))
                        .send()
                        .await
                        .map_err(err)?;
                    if !response.status().is_success() {
                        return Err(format!("complete answered {}", response.status()));
                    }
                }
            }
        });
    }
    while let Some(done) = pullers.join_next().await {
        done.map_err(err)??;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let (completed, leased_twice): (i64, i64) = sqlx::query_as(
        "SELECT count(*) FILTER (WHERE state = 'completed'), count(*) FILTER (WHERE leases > 1)
         FROM dispatch.phone_tasks",
    )
    .fetch_one(sim.pool())
    .await
    .map_err(err)?;
    let client_dupes = seen.lock().await.1;
    line("tasks", completed);
    line("tasks_pullers", PULLERS);
    line("tasks_per_s", format!("{:.0}", completed as f64 / elapsed));
    line("double_leases", leased_twice as u64 + client_dupes);
    Ok(())
}

async fn receipts(sim: &Simulation, http: &reqwest::Client) -> Result<(), String> {
    sim.settle().await.map_err(err)?;
    sent_messages(sim, "bench", RECEIPTS).await?;
    let batches = receipt_batches("bench", RECEIPTS);
    let queue = Arc::new(Mutex::new(batches));
    let started = Instant::now();
    let mut clients = tokio::task::JoinSet::new();
    for _ in 0..RECEIPT_CLIENTS {
        let (http, url, queue) = (http.clone(), sim.webhook_url.clone(), queue.clone());
        clients.spawn(async move {
            let mut latencies = Vec::new();
            loop {
                let Some(body) = queue.lock().await.pop() else {
                    return Ok::<_, String>(latencies);
                };
                latencies.push(push(&http, &url, body, Instant::now()).await?);
            }
        });
    }
    let mut latencies: Vec<Duration> = Vec::new();
    while let Some(done) = clients.join_next().await {
        latencies.extend(done.map_err(err)??);
    }
    let elapsed = started.elapsed().as_secs_f64();
    let final_states: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM dispatch.sms_messages WHERE state IN ('delivered', 'failed')",
    )
    .fetch_one(sim.pool())
    .await
    .map_err(err)?;
    line("receipts", final_states);
    line(
        "receipts_per_s",
        format!("{:.0}", RECEIPTS as f64 / elapsed),
    );
    latency_lines("webhook_saturated", &mut latencies);

    // The latency at the rate: an array due every 5 ms, whatever the answers.
    sim.settle().await.map_err(err)?;
    sent_messages(sim, "paced", PACED_RECEIPTS).await?;
    let batches = receipt_batches("paced", PACED_RECEIPTS);
    let every = Duration::from_secs(1) * 100 / PACED_PER_S as u32;
    let started = tokio::time::Instant::now();
    let mut pushes = tokio::task::JoinSet::new();
    for (k, body) in batches.into_iter().enumerate() {
        let due = started + every * k as u32;
        tokio::time::sleep_until(due).await;
        let (http, url) = (http.clone(), sim.webhook_url.clone());
        pushes.spawn(async move { push(&http, &url, body, due.into_std()).await });
    }
    let mut latencies: Vec<Duration> = Vec::new();
    while let Some(done) = pushes.join_next().await {
        latencies.push(done.map_err(err)??);
    }
    let elapsed = started.elapsed().as_secs_f64();
    line("receipts_paced", PACED_RECEIPTS);
    line(
        "receipts_paced_per_s",
        format!("{:.0}", PACED_RECEIPTS as f64 / elapsed),
    );
    latency_lines("webhook", &mut latencies);
    Ok(())
}

/// `n` messages the vendor accepted (biz ids `<prefix>^1..=n`), waiting for receipts.
async fn sent_messages(sim: &Simulation, prefix: &str, n: i64) -> Result<(), String> {
    let (ids, contacts, indexes) =
        sealed_sms(n, |i| format!("+86139{i:08}"), |_| serde_json::json!({}))?;
    sqlx::query(
        "INSERT INTO dispatch.sms_messages (id, case_id, policy_no, stage, template, contact_enc, mobile_index,
             time_zone, marketing, state, next_attempt_at, created_at, vendor_message_id, sent_at)
         SELECT u.id, gen_random_uuid(), 'PR' || $3 || u.i, 'T-60', 'renewal_friendly',
                u.contact_enc, u.mobile_index, 'Asia/Shanghai', true, 'sent', $2, $2,
                $3 || '^' || u.i, $2
         FROM unnest($1::uuid[], $4::bytea[], $5::bytea[]) WITH ORDINALITY AS u(id, contact_enc, mobile_index, i)",
    )
    .bind(&ids)
    .bind(sim.now())
    .bind(prefix)
    .bind(&contacts)
    .bind(&indexes)
    .execute(sim.pool())
    .await
    .map_err(err)?;
    Ok(())
}

/// Dispatch's cipher as the simulation runs it (the demo key).
fn dispatch_pii() -> Result<renewal_platform::pii::PiiCipher, String> {
    renewal_platform::pii::PiiCipher::for_service(
        &secrecy::SecretString::from(crate::simulation::DEMO_PII_KEY),
        "dispatch",
    )
    .map_err(err)
}

/// Message ids, sealed contacts and blind indexes.
type SealedRows = (Vec<uuid::Uuid>, Vec<Vec<u8>>, Vec<Vec<u8>>);

/// Sealed contacts of `n` messages (rows 1..=n, as `WITH ORDINALITY` numbers them):
/// their ids, sealed contacts and blind indexes, as dispatch writes them.
fn sealed_sms(
    n: i64,
    mobile: impl Fn(i64) -> String,
    params: impl Fn(i64) -> serde_json::Value,
) -> Result<SealedRows, String> {
    let pii = dispatch_pii()?;
    let (mut ids, mut contacts, mut indexes) = (Vec::new(), Vec::new(), Vec::new());
    for i in 1..=n {
        let id = uuid::Uuid::new_v4();
        let contact = renewal_dispatch::sealed::SmsContact {
            mobile: mobile(i),
            template_params: params(i),
        };
        indexes.push(
            pii.blind_index(&renewal_dispatch::sealed::e164(&contact.mobile))
                .to_vec(),
        );
        contacts.push(
            renewal_dispatch::sealed::seal_sms(&pii, &id.to_string(), &contact).map_err(err)?,
        );
        ids.push(id);
    }
    Ok((ids, contacts, indexes))
}

/// The receipts for those messages as the vendor pushes them: JSON arrays of 100.
fn receipt_batches(prefix: &str, n: i64) -> Vec<String> {
    (0..n / 100)
        .map(|b| {
            let reports: Vec<serde_json::Value> = (b * 100 + 1..=b * 100 + 100)
                .map(|i| {
                    serde_json::json!({
                        "phone_number": format!("139{i:08}"), "send_time": "2026-12-01 10:00:00",
                        "report_time": "2026-12-01 10:00:05", "success": i % 10 != 0,
                        "err_code": if i % 10 != 0 { "DELIVERED" } else { "MOBILE_NOT_ON_SERVICE" },
                        "err_msg": "", "sms_size": "1", "biz_id": format!("{prefix}^{i}"), "out_id": ""
                    })
                })
                .collect();
            serde_json::Value::Array(reports).to_string()
        })
        .collect()
}

/// Pushes one array; how long after `since` the webhook acknowledged it.
async fn push(
    http: &reqwest::Client,
    url: &str,
    body: String,
    since: Instant,
) -> Result<Duration, String> {
    let response = http
        .post(url)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .map_err(err)?;
    if !response.status().is_success() {
        return Err(format!("webhook answered {}", response.status()));
    }
    Ok(since.elapsed())
}

/// `<name>_p50_ms` and `<name>_p99_ms`.
fn latency_lines(name: &str, latencies: &mut [Duration]) {
    latencies.sort();
    let pct = |p: f64| {
        latencies
            .get(((latencies.len() as f64 * p) as usize).min(latencies.len().saturating_sub(1)))
            .map(|d| d.as_secs_f64() * 1000.0)
            .unwrap_or(0.0)
    };
    line(&format!("{name}_p50_ms"), format!("{:.1}", pct(0.50)));
    line(&format!("{name}_p99_ms"), format!("{:.1}", pct(0.99)));
}

async fn sends(sim: &Simulation) -> Result<(), String> {
    sim.settle().await.map_err(err)?;
    sim.vendor.hold_receipts(true);
    let alone = send_burst(sim, "PS").await;
    sim.vendor.hold_receipts(false);
    let alone = alone?;
    line("sms_sent", alone.0);
    line("sms_sends_per_s", format!("{:.0}", alone.1));
    crate::bench::print_postgres_tls(sim.pool()).await;
    sim.settle().await.map_err(err)?;
    let with_receipts = send_burst(sim, "PT").await?;
    line(
        "sms_sends_with_receipts_per_s",
        format!("{:.0}", with_receipts.1),
    );
    Ok(())
}

/// Queues [`SENDS`] messages (policies `<prefix>1..`), wakes the sender and waits until
/// none is queued: how many it sent, and how many a second.
async fn send_burst(sim: &Simulation, prefix: &str) -> Result<(i64, f64), String> {
    let (ids, contacts, indexes) = sealed_sms(
        SENDS,
        |i| format!("+86137{i:08}"),
        |i| serde_json::json!({"name": "王芳", "plate": format!("沪A{i}"), "expiry": "2027-01-30"}),
    )?;
    sqlx::query(
        "INSERT INTO dispatch.sms_messages (id, case_id, policy_no, stage, template, contact_enc, mobile_index,
             time_zone, marketing, state, next_attempt_at, created_at)
         SELECT u.id, gen_random_uuid(), $3 || u.i, 'T-60', 'renewal_friendly', u.contact_enc, u.mobile_index,
                'Asia/Shanghai', true, 'queued', $2, $2
         FROM unnest($1::uuid[], $4::bytea[], $5::bytea[]) WITH ORDINALITY AS u(id, contact_enc, mobile_index, i)",
    )
    .bind(&ids)
    .bind(sim.now())
    .bind(prefix)
    .bind(&contacts)
    .bind(&indexes)
    .execute(sim.pool())
    .await
    .map_err(err)?;
    // One real command wakes the sender at once.
    let wake = renewal_contract::scheduler::SendSms {
        command_id: uuid::Uuid::new_v4().to_string(),
        case_id: uuid::Uuid::new_v4().to_string(),
        policy_no: format!("{prefix}0"),
        stage: "T-60".into(),
        template: "renewal_friendly".into(),
        mobile: "+8613700000000".into(),
        customer_name: "王芳".into(),
        plate: "沪A0".into(),
        expiry_date: "2027-01-30".into(),
        time_zone: "Asia/Shanghai".into(),
        marketing: true,
        due_at_ms: 0,
    };
    let started = Instant::now();
    sim.deps
        .bus
        .publish(
            renewal_contract::subject::DISPATCH_CMD_SEND_SMS,
            &wake.command_id,
            None,
            prost::Message::encode_to_vec(&wake),
        )
        .await
        .map_err(err)?;
    loop {
        // Done when none is waiting or with the vendor. (One look per partial index, and
        // no count: counting 20,000 queued rows every 20 ms cost the database a fifth
        // of a core, taken from what is measured.)
        let busy: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM dispatch.sms_messages WHERE state = 'queued')
                 OR EXISTS (SELECT 1 FROM dispatch.sms_messages WHERE state IN ('sending', 'unknown'))",
        )
        .fetch_one(sim.pool())
        .await
        .map_err(err)?;
        if !busy {
            break;
        }
        if started.elapsed() > Duration::from_secs(600) {
            return Err("messages still queued or sending after 600 s".into());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let sent: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM dispatch.sms_messages WHERE policy_no LIKE $1 || '%' AND state IN ('sent', 'delivered')",
    )
    .bind(prefix)
    .fetch_one(sim.pool())
    .await
    .map_err(err)?;
    Ok((sent, sent as f64 / elapsed))
}
