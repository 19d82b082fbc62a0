//! Firing due timers: claimed in batches with `FOR UPDATE SKIP LOCKED` (replicas share
//! the work without double-firing), each turned into a command in the outbox in the
//! same transaction that marks it fired. After downtime it catches up in due order.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, NaiveDate, Utc};
use renewal_contract::scheduler::SendSms;
use renewal_contract::subject;
use renewal_platform::{Clock, Outbox};
use sqlx::{PgPool, Row};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;
use uuid::Uuid;

const BATCH: i64 = 500;

pub async fn run(
    pool: PgPool,
    outbox: Outbox,
    clock: Clock,
    timers_changed: Arc<Notify>,
    cancel: CancellationToken,
) {
    loop {
        if cancel.is_cancelled() {
            return;
        }
        let now = clock.now();
        match fire_due(&pool, &outbox, now, clock.is_simulated()).await {
            Ok(n) if n as i64 == BATCH => continue,
            Ok(n) => {
                if n > 0 {
                    renewal_platform::activity::record();
                    outbox.wake();
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
            _ = timers_changed.notified() => {}
            _ = clock.sleep_until(next, Duration::from_secs(1)) => {}
        }
    }
}

/// When this service next has work of its own: the earliest pending timer.
pub async fn next_wakeup(pool: &PgPool) -> Result<Option<DateTime<Utc>>, sqlx::Error> {
    sqlx::query_scalar("SELECT min(due_at) FROM scheduler.timers WHERE state = 'pending'")
        .fetch_one(pool)
        .await
}

/// Fires one batch of due timers; returns how many it claimed.
async fn fire_due(
    pool: &PgPool,
    outbox: &Outbox,
    now: DateTime<Utc>,
    simulated: bool,
) -> Result<usize, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let due = sqlx::query(
        "SELECT t.id, t.case_id, t.stage, t.template, t.due_at, t.traceparent, c.policy_no, c.state AS case_state,
                c.customer_name, c.mobile, c.plate, c.expiry_date, c.time_zone
         FROM scheduler.timers t JOIN scheduler.cases c USING (case_id)
         WHERE t.state = 'pending' AND t.due_at <= $1
         ORDER BY t.due_at
         LIMIT $2
         FOR UPDATE OF t SKIP LOCKED",
    )
    .bind(now)
    .bind(BATCH)
    .fetch_all(&mut *tx)
    .await?;
    let mut fired = Vec::new();
    let mut dropped = Vec::new();
    for row in &due {
        let id: Uuid = row.try_get("id")?;
        let case_state: String = row.try_get("case_state")?;
        if case_state != "open" {
            dropped.push(id);
            continue;
        }
        let due_at: DateTime<Utc> = row.try_get("due_at")?;
        let expiry: Option<NaiveDate> = row.try_get("expiry_date")?;
        let command = SendSms {
            command_id: id.to_string(),
            case_id: row.try_get::<Uuid, _>("case_id")?.to_string(),
            policy_no: row.try_get("policy_no")?,
            stage: row.try_get("stage")?,
            template: row.try_get("template")?,
            mobile: row
                .try_get::<Option<String>, _>("mobile")?
                .unwrap_or_default(),
            customer_name: row
                .try_get::<Option<String>, _>("customer_name")?
                .unwrap_or_default(),
            plate: row
                .try_get::<Option<String>, _>("plate")?
                .unwrap_or_default(),
            expiry_date: expiry.map(|d| d.to_string()).unwrap_or_default(),
            time_zone: row
                .try_get::<Option<String>, _>("time_zone")?
                .unwrap_or_default(),
            marketing: true,
            due_at_ms: due_at.timestamp_millis(),
        };
        let traceparent: Option<String> = row.try_get("traceparent")?;
        outbox
            .enqueue_with_id(&mut tx, id, subject::DISPATCH_CMD_SEND_SMS, &command)
            .instrument(renewal_platform::telemetry::continue_trace(
                traceparent.as_deref(),
            ))
            .await?;
        if !simulated {
            let late = (now - due_at).num_milliseconds().max(0) as f64 / 1000.0;
            metrics::histogram!("timer_lateness_seconds").record(late);
        }
        fired.push(id);
    }
    sqlx::query("UPDATE scheduler.timers SET state = 'fired', fired_at = $2 WHERE id = ANY($1)")
        .bind(&fired)
        .bind(now)
        .execute(&mut *tx)
        .await?;
    sqlx::query(
        "UPDATE scheduler.timers SET state = 'cancelled', note = 'case closed' WHERE id = ANY($1)",
    )
    .bind(&dropped)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    metrics::counter!("timers_fired_total").increment(fired.len() as u64);
    Ok(due.len())
}
