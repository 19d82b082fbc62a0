//! Firing due timers: claimed in batches with `FOR UPDATE SKIP LOCKED` (replicas share
//! the work without double-firing) and published straight to JetStream while the claim
//! is held. The timers table is its own outbox: each command's `Nats-Msg-Id` is its
//! timer's id, and the timer is marked fired in the claiming transaction only after
//! JetStream acknowledged every command of the batch. A crash before that commit leaves
//! the batch pending and it fires again with the same ids: JetStream's duplicate window
//! and each consumer's inbox drop the copies, so nothing is lost and nothing doubles.
//! After downtime it catches up in due order. Marketing SMS respect the frequency cap:
//! one per customer per 3 days, four per renewal.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, NaiveDate, Utc};
use renewal_contract::scheduler::{
    ConfirmOwner, CreatePhoneTask, SendSms, SupervisorAlert, TaskQueue,
};
use renewal_contract::subject;
use renewal_platform::{Bus, Clock};
use sqlx::{PgConnection, PgPool, Row};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::plan::{Hours, Placed};

pub const BATCH: i64 = 5000;
/// Commands published and not yet acknowledged, per firing loop.
const IN_FLIGHT: usize = 1024;
/// The frequency cap.
const CAP_GAP: chrono::Duration = chrono::Duration::days(3);
const CAP_PER_RENEWAL: i64 = 4;
/// Woken by messages, the loop looks at most this often: messages come in floods
/// (every outcome and case event wakes it), and one look serves them all.
const WAKE_GAP: Duration = Duration::from_millis(20);

/// Why a batch did not fire; it stays pending and is tried again.
#[derive(Debug, thiserror::Error)]
pub enum FireError {
    #[error("postgres: {0}")]
    Db(#[from] sqlx::Error),
    #[error(transparent)]
    Publish(#[from] renewal_platform::bus::BusError),
    #[error("jetstream did not acknowledge a command: {0}")]
    Ack(String),
}

pub async fn run(
    pool: PgPool,
    bus: Bus,
    clock: Clock,
    hours: Hours,
    timers_changed: Arc<Notify>,
    cancel: CancellationToken,
) {
    let mut backlog_counted = std::time::Instant::now();
    let mut pace = renewal_platform::wakeups::Pace::new(WAKE_GAP);
    loop {
        if cancel.is_cancelled() {
            return;
        }
        let now = clock.now();
        match fire_due(&pool, &bus, now, clock.is_simulated(), &hours).await {
            Ok(n) if n as i64 == BATCH => {
                // Catching up: how many are due and not yet fired, every few seconds.
                if backlog_counted.elapsed() >= Duration::from_secs(5) {
                    backlog_counted = std::time::Instant::now();
                    if let Ok(due) = due_count(&pool, now).await {
                        metrics::gauge!("timers_due").set(due as f64);
                    }
                }
                continue;
            }
            Ok(n) => {
                // Caught up: whatever was due has fired.
                metrics::gauge!("timers_due").set(0.0);
                if n > 0 {
                    renewal_platform::activity::record();
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "firing timers failed; retrying");
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                }
            }
        }
        let next = match next_wakeup(&pool).await {
            Ok(Some(t)) => t,
            Ok(None) => now + chrono::Duration::days(1),
            Err(_) => now + chrono::Duration::seconds(1),
        };
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = timers_changed.notified() => {
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = pace.look() => {}
                }
            }
            _ = clock.sleep_until(next, Duration::from_secs(1)) => {}
        }
    }
}

/// Pending timers already due (counted up to a million: the gauge is for alerting).
async fn due_count(pool: &PgPool, now: DateTime<Utc>) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT count(*) FROM (SELECT 1 FROM scheduler.timers
                               WHERE state = 'pending' AND due_at <= $1 LIMIT 1000000) due",
    )
    .bind(now)
    .fetch_one(pool)
    .await
}

/// When this service next has work of its own: the earliest pending timer.
pub async fn next_wakeup(pool: &PgPool) -> Result<Option<DateTime<Utc>>, sqlx::Error> {
    sqlx::query_scalar("SELECT min(due_at) FROM scheduler.timers WHERE state = 'pending'")
        .fetch_one(pool)
        .await
}

/// Writes a case's placed stages (a stage already there is left as it is).
pub async fn insert(
    tx: &mut PgConnection,
    case_id: Uuid,
    placed: &[Placed],
) -> Result<(), sqlx::Error> {
    let ids: Vec<Uuid> = placed.iter().map(|_| Uuid::now_v7()).collect();
    let stages: Vec<&str> = placed.iter().map(|p| p.stage.stage.as_str()).collect();
    let actions: Vec<&str> = placed.iter().map(|p| p.stage.action.as_str()).collect();
    let templates: Vec<&str> = placed.iter().map(|p| p.stage.template.as_str()).collect();
    let dues: Vec<DateTime<Utc>> = placed.iter().map(|p| p.due).collect();
    let nominals: Vec<DateTime<Utc>> = placed.iter().map(|p| p.nominal).collect();
    let states: Vec<&str> = placed
        .iter()
        .map(|p| {
            if p.skipped.is_some() {
                "skipped"
            } else {
                "pending"
            }
        })
        .collect();
    let notes: Vec<Option<String>> = placed
        .iter()
        .map(|p| {
            p.skipped
                .map(str::to_owned)
                .or_else(|| (p.due != p.nominal).then(|| "moved into the allowed hours".to_owned()))
        })
        .collect();
    let queues: Vec<Option<&str>> = placed
        .iter()
        .map(|p| p.stage.queue.map(|q| q.as_str()))
        .collect();
    let marketing: Vec<bool> = placed.iter().map(|p| p.stage.is_marketing()).collect();
    let promotions: Vec<&str> = placed.iter().map(|p| p.stage.promotion.as_str()).collect();
    let keep: Vec<bool> = placed.iter().map(|p| p.stage.keep_after_refusal).collect();
    sqlx::query(
        "INSERT INTO scheduler.timers (id, case_id, stage, action, template, due_at, nominal_at, state, note,
             queue, marketing, promotion, keep_after_refusal, traceparent)
         SELECT u.id, c.case_id, u.stage, u.action, u.template, u.due_at, u.nominal_at,
                CASE WHEN c.state = 'closed' THEN 'cancelled' ELSE u.state END,
                CASE WHEN c.state = 'closed' THEN 'case closed' ELSE u.note END,
                u.queue, u.marketing, u.promotion, u.keep, $14
         FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::text[], $5::timestamptz[], $6::timestamptz[],
                     $7::text[], $8::text[], $9::text[], $10::bool[], $11::text[], $12::bool[])
              AS u(id, stage, action, template, due_at, nominal_at, state, note, queue, marketing, promotion, keep)
         JOIN scheduler.cases c ON c.case_id = $13
         ON CONFLICT (case_id, stage) DO NOTHING",
    )
    .bind(&ids)
    .bind(&stages)
    .bind(&actions)
    .bind(&templates)
    .bind(&dues)
    .bind(&nominals)
    .bind(&states)
    .bind(&notes)
    .bind(&queues)
    .bind(&marketing)
    .bind(&promotions)
    .bind(&keep)
    .bind(case_id)
    .bind(renewal_platform::telemetry::current_traceparent())
    .execute(&mut *tx)
    .await?;
    Ok(())
}

fn queue_of(raw: Option<&str>, owner: Option<&str>) -> TaskQueue {
    match raw {
        Some("owner") if owner.is_some_and(|o| !o.is_empty()) => TaskQueue::Owner,
        Some("owner") | Some("branch") => TaskQueue::Branch,
        Some("hq") => TaskQueue::Hq,
        _ => TaskQueue::Campaign,
    }
}

/// Fires one batch of due timers; returns how many it claimed.
pub async fn fire_due(
    pool: &PgPool,
    bus: &Bus,
    now: DateTime<Utc>,
    simulated: bool,
    hours: &Hours,
) -> Result<usize, FireError> {
    let mut tx = pool.begin().await?;
    // One statement claims the batch and marks it fired (a crash before the commit below
    // undoes both), and reads what the commands and the frequency cap need. Its
    // subqueries see the table as it was before this statement, so the counts are of
    // SMS fired earlier; each is one index lookup per customer and per case, whatever
    // the planner thinks of the fast-growing set of fired SMS.
    let due = sqlx::query(
        "WITH claimed AS (
             SELECT ctid FROM scheduler.timers
             WHERE state = 'pending' AND due_at <= $1
             ORDER BY due_at
             LIMIT $2
             FOR UPDATE SKIP LOCKED
         ), fired AS (
             UPDATE scheduler.timers SET state = 'fired', fired_at = $1
             WHERE ctid = ANY(ARRAY(SELECT ctid FROM claimed))
             RETURNING ctid::text AS tid, id, case_id, stage, action, template, due_at, nominal_at,
                       traceparent, queue, marketing, promotion
         )
         SELECT f.tid, f.id, f.case_id, f.stage, f.action, f.template, f.due_at, f.traceparent, f.queue,
                f.marketing, f.promotion, c.policy_no,
                CASE WHEN c.state = 'open' OR (c.closed_reason = 'lapsed' AND f.nominal_at > c.closed_at)
                     THEN 'open' ELSE 'closed' END AS case_state, c.customer_name, c.mobile,
                c.plate, c.expiry_date, c.effective_expiry_date, c.time_zone, c.city_code, c.branch_code,
                o.owner_agent, l.last_marketing_sms,
                -- No marketing SMS to this mobile yet means none to this case either.
                CASE WHEN l.last_marketing_sms IS NOT NULL THEN
                    (SELECT count(*) FROM scheduler.timers t
                     WHERE t.case_id = f.case_id AND t.action = 'sms' AND t.marketing AND t.state = 'fired')
                END AS marketing_sms_sent
         FROM fired f JOIN scheduler.cases c USING (case_id)
         LEFT JOIN scheduler.owners o USING (case_id)
         LEFT JOIN LATERAL (
             SELECT max(t.fired_at) AS last_marketing_sms FROM scheduler.timers t
             WHERE f.marketing
               AND t.case_id = ANY(ARRAY(SELECT m.case_id FROM scheduler.cases m WHERE m.mobile = c.mobile))
               AND t.action = 'sms' AND t.marketing AND t.state = 'fired'
         ) l ON true
         ORDER BY f.due_at",
    )
    .bind(now)
    .bind(BATCH)
    .fetch_all(&mut *tx)
    .await?;
    if due.is_empty() {
        return Ok(0);
    }
    // The frequency cap: each customer's last marketing SMS, each case's count.
    let mut last_sms: HashMap<String, DateTime<Utc>> = HashMap::new();
    let mut per_case: HashMap<Uuid, i64> = HashMap::new();
    for row in &due {
        if let Some(last) = row.try_get::<Option<DateTime<Utc>>, _>("last_marketing_sms")? {
            let mobile: Option<String> = row.try_get("mobile")?;
            last_sms.insert(mobile.unwrap_or_default(), last);
        }
        if let Some(n) = row.try_get::<Option<i64>, _>("marketing_sms_sent")? {
            per_case.insert(row.try_get("case_id")?, n);
        }
    }
    let mut commands = Vec::with_capacity(due.len());
    let mut fired = Vec::new();
    let mut dropped = Vec::new();
    let (mut capped, mut capped_notes) = (Vec::new(), Vec::new());
    let (mut postponed, mut postponed_to) = (Vec::new(), Vec::new());
    for row in &due {
        let id: Uuid = row.try_get("id")?;
        // The locked row's address: what the updates below find it by.
        let tid: String = row.try_get("tid")?;
        if row.try_get::<String, _>("case_state")? != "open" {
            dropped.push(tid);
            continue;
        }
        let case_id: Uuid = row.try_get("case_id")?;
        let due_at: DateTime<Utc> = row.try_get("due_at")?;
        let stage: String = row.try_get("stage")?;
        let expiry: Option<NaiveDate> = row.try_get("expiry_date")?;
        let expiry_text = expiry.map(|d| d.to_string()).unwrap_or_default();
        let tz_name: String = row
            .try_get::<Option<String>, _>("time_zone")?
            .unwrap_or_default();
        let mobile: String = row
            .try_get::<Option<String>, _>("mobile")?
            .unwrap_or_default();
        let owner: Option<String> = row.try_get("owner_agent")?;
        let traceparent: Option<String> = row.try_get("traceparent")?;
        let marketing: bool = row.try_get("marketing")?;
        let (subject_name, payload) = match row.try_get::<String, _>("action")?.as_str() {
            "sms" => {
                if marketing {
                    let sent = per_case.get(&case_id).copied().unwrap_or(0);
                    if sent >= CAP_PER_RENEWAL {
                        capped.push(tid);
                        capped_notes.push("frequency cap: 4 marketing SMS per renewal".to_owned());
                        continue;
                    }
                    if let Some(last) = last_sms.get(&mobile)
                        && now - *last < CAP_GAP
                    {
                        let tz: chrono_tz::Tz =
                            tz_name.parse().unwrap_or(chrono_tz::Asia::Shanghai);
                        let effective: Option<NaiveDate> = row.try_get("effective_expiry_date")?;
                        let limit = effective.map(|d| {
                            renewal_platform::local_instant(d, chrono::NaiveTime::MIN, tz)
                        });
                        match crate::plan::allowed(*last + CAP_GAP, hours.sms, None, tz) {
                            Some(at) if limit.is_none_or(|l| at < l) => {
                                postponed.push(tid);
                                postponed_to.push(at);
                            }
                            _ => {
                                capped.push(tid);
                                capped_notes.push(
                                    "frequency cap: one marketing SMS per customer per 3 days"
                                        .to_owned(),
                                );
                            }
                        }
                        continue;
                    }
                    last_sms.insert(mobile.clone(), now);
                    *per_case.entry(case_id).or_default() += 1;
                }
                let command = SendSms {
                    command_id: id.to_string(),
                    case_id: case_id.to_string(),
                    policy_no: row.try_get("policy_no")?,
                    stage,
                    template: row.try_get("template")?,
                    mobile,
                    customer_name: row
                        .try_get::<Option<String>, _>("customer_name")?
                        .unwrap_or_default(),
                    plate: row
                        .try_get::<Option<String>, _>("plate")?
                        .unwrap_or_default(),
                    expiry_date: expiry_text,
                    time_zone: tz_name,
                    marketing,
                    due_at_ms: due_at.timestamp_millis(),
                };
                (
                    subject::DISPATCH_CMD_SEND_SMS,
                    prost::Message::encode_to_vec(&command),
                )
            }
            "phone_task" => {
                let queue_raw: Option<String> = row.try_get("queue")?;
                let queue = queue_of(queue_raw.as_deref(), owner.as_deref());
                let days = expiry.map_or(0, |e| {
                    (e - renewal_platform::local_date(
                        now,
                        tz_name.parse().unwrap_or(chrono_tz::Asia::Shanghai),
                    ))
                    .num_days() as i32
                });
                let command = CreatePhoneTask {
                    command_id: id.to_string(),
                    case_id: case_id.to_string(),
                    policy_no: row.try_get("policy_no")?,
                    stage,
                    queue: queue as i32,
                    owner_agent: owner.unwrap_or_default(),
                    branch_code: row
                        .try_get::<Option<String>, _>("branch_code")?
                        .unwrap_or_default(),
                    city_code: row
                        .try_get::<Option<String>, _>("city_code")?
                        .unwrap_or_default(),
                    promotion: row.try_get("promotion")?,
                    customer_name: row
                        .try_get::<Option<String>, _>("customer_name")?
                        .unwrap_or_default(),
                    mobile,
                    plate: row
                        .try_get::<Option<String>, _>("plate")?
                        .unwrap_or_default(),
                    expiry_date: expiry_text,
                    time_zone: tz_name,
                    days_to_expiry: days,
                    due_at_ms: due_at.timestamp_millis(),
                };
                (
                    subject::DISPATCH_CMD_CREATE_PHONE_TASK,
                    prost::Message::encode_to_vec(&command),
                )
            }
            "supervisor_alert" => {
                let alert = SupervisorAlert {
                    alert_id: id.to_string(),
                    case_id: case_id.to_string(),
                    policy_no: row.try_get("policy_no")?,
                    stage,
                    owner_agent: owner.unwrap_or_default(),
                    branch_code: row
                        .try_get::<Option<String>, _>("branch_code")?
                        .unwrap_or_default(),
                    city_code: row
                        .try_get::<Option<String>, _>("city_code")?
                        .unwrap_or_default(),
                    expiry_date: expiry_text,
                    due_at_ms: due_at.timestamp_millis(),
                };
                (
                    subject::SCHEDULER_CASE_SUPERVISOR_ALERT,
                    prost::Message::encode_to_vec(&alert),
                )
            }
            _ => {
                let command = ConfirmOwner {
                    command_id: id.to_string(),
                    case_id: case_id.to_string(),
                    policy_no: row.try_get("policy_no")?,
                    stage,
                    due_at_ms: due_at.timestamp_millis(),
                };
                (
                    subject::ASSIGNMENT_CMD_CONFIRM_OWNER,
                    prost::Message::encode_to_vec(&command),
                )
            }
        };
        if !simulated {
            let late = (now - due_at).num_milliseconds().max(0) as f64 / 1000.0;
            metrics::histogram!("timer_lateness_seconds").record(late);
        }
        commands.push((id, subject_name, payload, traceparent));
        fired.push(tid);
    }
    // Publish while the claim is held, a window of acknowledgements in flight (each holds
    // one of the connection's permits, shared with every other publisher in the process).
    let mut acks: std::collections::VecDeque<async_nats::jetstream::context::PublishAckFuture> =
        std::collections::VecDeque::with_capacity(IN_FLIGHT);
    for (id, subject_name, payload, traceparent) in commands {
        if acks.len() == IN_FLIGHT
            && let Some(ack) = acks.pop_front()
        {
            ack.await.map_err(|e| FireError::Ack(e.to_string()))?;
        }
        acks.push_back(
            bus.send(
                subject_name,
                &id.to_string(),
                traceparent.as_deref(),
                payload,
            )
            .await?,
        );
    }
    for ack in acks {
        ack.await.map_err(|e| FireError::Ack(e.to_string()))?;
    }
    // The claim marked the whole batch fired; put right what did not fire.
    if !dropped.is_empty() {
        sqlx::query(
            "UPDATE scheduler.timers SET state = 'cancelled', fired_at = NULL, note = 'case closed'
             WHERE ctid = ANY($1::text[]::tid[])",
        )
        .bind(&dropped)
        .execute(&mut *tx)
        .await?;
    }
    if !capped.is_empty() {
        sqlx::query(
            "UPDATE scheduler.timers t SET state = 'skipped', fired_at = NULL, note = u.note
             FROM UNNEST($1::text[]::tid[], $2::text[]) AS u(tid, note) WHERE t.ctid = u.tid",
        )
        .bind(&capped)
        .bind(&capped_notes)
        .execute(&mut *tx)
        .await?;
    }
    if !postponed.is_empty() {
        sqlx::query(
            "UPDATE scheduler.timers t SET state = 'pending', fired_at = NULL, due_at = u.due_at,
                 note = 'postponed by the frequency cap'
             FROM UNNEST($1::text[]::tid[], $2::timestamptz[]) AS u(tid, due_at) WHERE t.ctid = u.tid",
        )
        .bind(&postponed)
        .bind(&postponed_to)
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    metrics::counter!("timers_fired_total").increment(fired.len() as u64);
    metrics::counter!("messages_out_total", "service" => crate::SCHEMA)
        .increment(fired.len() as u64);
    metrics::counter!("timers_capped_total").increment(capped.len() as u64);
    Ok(due.len())
}
