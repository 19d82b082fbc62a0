//! The sender: claims queued messages with `FOR UPDATE SKIP LOCKED`, re-checks what
//! must never happen (closed case, opted-out customer, night time), hands each to the
//! vendor, and records the outcome with its event in one transaction. Transient
//! failures retry with backoff; after too many attempts the message is dead with its
//! reason; permanent refusals fail at once.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use renewal_contract::dispatch::{SmsStatus, SmsStatusChanged};
use renewal_contract::subject;
use renewal_platform::{Clock, Outbox, local_date, local_instant};
use sqlx::{PgConnection, PgPool, Row};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;
use uuid::Uuid;

use crate::config::Hours;
use crate::sms::templates;
use crate::sms::vendor::{SmsRequest, SmsVendor, VendorError};

const BATCH: i64 = 32;
pub const MAX_ATTEMPTS: i32 = 5;

pub struct Sender<V> {
    pub pool: PgPool,
    pub outbox: Outbox,
    pub clock: Clock,
    pub vendor: V,
    pub hours: Hours,
}

pub async fn run<V: SmsVendor>(sender: Sender<V>, queued: Arc<Notify>, cancel: CancellationToken) {
    loop {
        if cancel.is_cancelled() {
            return;
        }
        match sender.send_batch().await {
            Ok(n) if n as i64 == BATCH => continue,
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(error = %e, "sending SMS failed; retrying");
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                }
            }
        }
        let now = sender.clock.now();
        let next = next_wakeup(&sender.pool)
            .await
            .ok()
            .flatten()
            .unwrap_or(now + chrono::Duration::days(1));
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = queued.notified() => {}
            _ = sender.clock.sleep_until(next, Duration::from_secs(1)) => {}
        }
    }
}

/// When this service next has work of its own: the earliest queued message's attempt.
pub async fn next_wakeup(pool: &PgPool) -> Result<Option<DateTime<Utc>>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT min(next_attempt_at) FROM dispatch.sms_messages WHERE state = 'queued'",
    )
    .fetch_one(pool)
    .await
}

/// The next instant SMS may go out in `tz`, or None if now is allowed.
pub fn next_allowed(now: DateTime<Utc>, tz: chrono_tz::Tz, hours: Hours) -> Option<DateTime<Utc>> {
    let local = now.with_timezone(&tz).time();
    if local >= hours.start && local < hours.end {
        return None;
    }
    let today = local_date(now, tz);
    let day = if local < hours.start {
        today
    } else {
        today + chrono::Days::new(1)
    };
    Some(local_instant(day, hours.start, tz))
}

struct Claimed {
    id: Uuid,
    case_id: Uuid,
    policy_no: String,
    stage: String,
    template: String,
    mobile: String,
    params: serde_json::Value,
    attempts: i32,
    traceparent: Option<String>,
}

enum Verdict {
    Sent(String),
    Retry(DateTime<Utc>, String),
    Dead(String),
    Failed(String, String),
    Suppressed(&'static str),
    Deferred(DateTime<Utc>),
}

impl<V: SmsVendor> Sender<V> {
    /// Sends one batch; returns how many messages it claimed.
    pub async fn send_batch(&self) -> Result<usize, sqlx::Error> {
        let now = self.clock.now();
        let mut tx = self.pool.begin().await?;
        let rows = sqlx::query(
            "SELECT m.id, m.case_id, m.policy_no, m.stage, m.template, m.mobile, m.template_params, m.time_zone,
                    m.marketing, m.attempts, m.traceparent,
                    (c.case_id IS NOT NULL) AS case_closed,
                    (o.mobile IS NOT NULL) AS opted_out
             FROM dispatch.sms_messages m
             LEFT JOIN dispatch.closed_cases c ON c.case_id = m.case_id
             LEFT JOIN dispatch.opt_outs o ON o.mobile = m.mobile
             WHERE m.state = 'queued' AND m.next_attempt_at <= $1
             ORDER BY m.next_attempt_at
             LIMIT $2
             FOR UPDATE OF m SKIP LOCKED",
        )
        .bind(now)
        .bind(BATCH)
        .fetch_all(&mut *tx)
        .await?;
        let mut to_send = Vec::new();
        let mut verdicts = Vec::new();
        for row in &rows {
            let claimed = Claimed {
                id: row.try_get("id")?,
                case_id: row.try_get("case_id")?,
                policy_no: row.try_get("policy_no")?,
                stage: row.try_get("stage")?,
                template: row.try_get("template")?,
                mobile: row.try_get("mobile")?,
                params: row.try_get("template_params")?,
                attempts: row.try_get("attempts")?,
                traceparent: row.try_get("traceparent")?,
            };
            let tz: chrono_tz::Tz = row
                .try_get::<String, _>("time_zone")?
                .parse()
                .unwrap_or(chrono_tz::Asia::Shanghai);
            if row.try_get::<bool, _>("case_closed")? {
                verdicts.push((claimed, Verdict::Suppressed("withdrawn")));
            } else if row.try_get::<bool, _>("marketing")? && row.try_get::<bool, _>("opted_out")? {
                verdicts.push((claimed, Verdict::Suppressed("suppressed")));
            } else if let Some(later) = next_allowed(now, tz, self.hours) {
                verdicts.push((claimed, Verdict::Deferred(later)));
            } else {
                to_send.push(claimed);
            }
        }
        let sends = to_send.iter().map(|m| async move {
            let Some(template) = templates::find(&m.template) else {
                return Verdict::Failed(
                    "unknown_template".into(),
                    format!("no template {:?}", m.template),
                );
            };
            let out_id = m.id.to_string();
            let request = SmsRequest {
                out_id: &out_id,
                mobile: &m.mobile,
                template_code: template.code,
                template_params: &m.params,
            };
            match self.vendor.send(request).await {
                Ok(accepted) => Verdict::Sent(accepted.vendor_message_id),
                Err(VendorError::Permanent { code, message }) => Verdict::Failed(code, message),
                Err(VendorError::Transient(reason)) if m.attempts + 1 >= MAX_ATTEMPTS => {
                    Verdict::Dead(reason)
                }
                Err(VendorError::Transient(reason)) => {
                    let wait =
                        renewal_platform::retry::redelivery_delay((m.attempts + 1) as u64 * 3);
                    Verdict::Retry(
                        now + chrono::Duration::from_std(wait).unwrap_or_default(),
                        reason,
                    )
                }
            }
        });
        let outcomes = futures::future::join_all(sends).await;
        verdicts.extend(to_send.into_iter().zip(outcomes));
        let mut events = 0;
        for (message, verdict) in &verdicts {
            let span = renewal_platform::telemetry::continue_trace(message.traceparent.as_deref());
            events += record(&mut tx, &self.outbox, message, verdict, now)
                .instrument(span)
                .await?;
        }
        tx.commit().await?;
        if !rows.is_empty() {
            renewal_platform::activity::record();
        }
        if events > 0 {
            self.outbox.wake();
        }
        Ok(rows.len())
    }
}

async fn record(
    tx: &mut PgConnection,
    outbox: &Outbox,
    m: &Claimed,
    verdict: &Verdict,
    now: DateTime<Utc>,
) -> Result<usize, sqlx::Error> {
    let (status, vendor_id, vendor_code) = match verdict {
        Verdict::Sent(biz_id) => {
            sqlx::query(
                "UPDATE dispatch.sms_messages SET state = 'sent', attempts = attempts + 1, vendor_message_id = $2,
                     sent_at = $3, last_error = NULL WHERE id = $1",
            )
            .bind(m.id)
            .bind(biz_id)
            .bind(now)
            .execute(&mut *tx)
            .await?;
            (SmsStatus::Sent, biz_id.as_str(), "")
        }
        Verdict::Retry(at, reason) => {
            tracing::warn!(message_id = %m.id, %reason, "vendor unavailable; the SMS will be retried");
            sqlx::query(
                "UPDATE dispatch.sms_messages SET attempts = attempts + 1, next_attempt_at = $2, last_error = $3 WHERE id = $1",
            )
            .bind(m.id)
            .bind(at)
            .bind(reason)
            .execute(&mut *tx)
            .await?;
            metrics::counter!("sms_total", "status" => "retry").increment(1);
            return Ok(0);
        }
        Verdict::Deferred(at) => {
            sqlx::query("UPDATE dispatch.sms_messages SET next_attempt_at = $2 WHERE id = $1")
                .bind(m.id)
                .bind(at)
                .execute(&mut *tx)
                .await?;
            metrics::counter!("sms_total", "status" => "deferred_quiet_hours").increment(1);
            return Ok(0);
        }
        Verdict::Suppressed(state) => {
            sqlx::query("UPDATE dispatch.sms_messages SET state = $2 WHERE id = $1")
                .bind(m.id)
                .bind(*state)
                .execute(&mut *tx)
                .await?;
            metrics::counter!("sms_total", "status" => *state).increment(1);
            return Ok(0);
        }
        Verdict::Dead(reason) => {
            tracing::error!(message_id = %m.id, %reason, "SMS dead after {MAX_ATTEMPTS} attempts");
            sqlx::query(
                "UPDATE dispatch.sms_messages SET state = 'dead', attempts = attempts + 1, last_error = $2 WHERE id = $1",
            )
            .bind(m.id)
            .bind(reason)
            .execute(&mut *tx)
            .await?;
            (SmsStatus::Failed, "", "dead_letter")
        }
        Verdict::Failed(code, message) => {
            tracing::warn!(message_id = %m.id, %code, "vendor refused the SMS");
            sqlx::query(
                "UPDATE dispatch.sms_messages SET state = 'failed', attempts = attempts + 1, vendor_code = $2,
                     last_error = $3 WHERE id = $1",
            )
            .bind(m.id)
            .bind(code)
            .bind(message)
            .execute(&mut *tx)
            .await?;
            (SmsStatus::Failed, "", code.as_str())
        }
    };
    let event = SmsStatusChanged {
        message_id: m.id.to_string(),
        case_id: m.case_id.to_string(),
        policy_no: m.policy_no.clone(),
        stage: m.stage.clone(),
        status: status as i32,
        vendor_message_id: vendor_id.to_owned(),
        vendor_code: vendor_code.to_owned(),
        at_ms: now.timestamp_millis(),
    };
    let subject = match status {
        SmsStatus::Sent => subject::DISPATCH_SMS_SENT,
        _ => subject::DISPATCH_SMS_FAILED,
    };
    outbox.enqueue(tx, subject, &event).await?;
    let label = match status {
        SmsStatus::Sent => "sent",
        _ => "failed",
    };
    metrics::counter!("sms_total", "status" => label).increment(1);
    Ok(1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn night_time_moves_to_the_next_morning_in_the_customers_zone() {
        let hours: Hours = "09:00-20:00".parse().expect("hours");
        let tz = chrono_tz::Asia::Shanghai;
        // 21:30 Beijing = 13:30 UTC: next morning 09:00 Beijing = 01:00 UTC.
        let night = Utc
            .with_ymd_and_hms(2026, 12, 1, 13, 30, 0)
            .single()
            .expect("date");
        assert_eq!(
            next_allowed(night, tz, hours),
            Utc.with_ymd_and_hms(2026, 12, 2, 1, 0, 0).single()
        );
        // 07:00 Beijing = 23:00 UTC the day before: same morning 09:00.
        let early = Utc
            .with_ymd_and_hms(2026, 11, 30, 23, 0, 0)
            .single()
            .expect("date");
        assert_eq!(
            next_allowed(early, tz, hours),
            Utc.with_ymd_and_hms(2026, 12, 1, 1, 0, 0).single()
        );
        // 10:00 Beijing is fine.
        let day = Utc
            .with_ymd_and_hms(2026, 12, 1, 2, 0, 0)
            .single()
            .expect("date");
        assert_eq!(next_allowed(day, tz, hours), None);
    }
}
