//! The sender: claims a batch of queued messages with `FOR UPDATE SKIP LOCKED`,
//! re-checks what must never happen (closed case, opted-out customer, night time), hands
//! the rest to the vendor [`IN_FLIGHT`] at a time (paced by the vendor's QPS; in any
//! order, so a slow answer holds back no other request), and records every outcome with
//! its event in one transaction: one update and one outbox insert for the whole batch. [`WORKERS`] senders run at once, so one batch is being
//! claimed or recorded while another is with the vendor. Transient failures retry with
//! backoff; after too many attempts the message is dead with its reason; permanent
//! refusals fail at once.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::StreamExt;
use renewal_contract::dispatch::{SmsStatus, SmsStatusChanged};
use renewal_contract::subject;
use renewal_platform::{Clock, Outbox, local_date, local_instant};
use sqlx::{PgConnection, PgPool, Row};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::config::Hours;
use crate::sms::templates;
use crate::sms::vendor::{SmsRequest, SmsVendor, VendorError};

/// Messages claimed by one sender at a time.
const BATCH: i64 = 500;
/// Requests one sender has with the vendor at once.
const IN_FLIGHT: usize = 128;
/// Senders running at once.
pub const WORKERS: usize = 4;
pub const MAX_ATTEMPTS: i32 = 5;

pub struct Sender<V> {
    pub pool: PgPool,
    pub outbox: Outbox,
    pub clock: Clock,
    pub vendor: V,
    pub hours: Hours,
}

pub async fn run<V: SmsVendor>(sender: Sender<V>, queued: Arc<Notify>, cancel: CancellationToken) {
    let workers = (0..WORKERS).map(|_| work(&sender, &queued, &cancel));
    futures::future::join_all(workers).await;
}

async fn work<V: SmsVendor>(sender: &Sender<V>, queued: &Notify, cancel: &CancellationToken) {
    loop {
        if cancel.is_cancelled() {
            return;
        }
        let claimed = match sender.send_batch().await {
            Ok(n) if n as i64 == BATCH => continue,
            Ok(n) => n,
            Err(e) => {
                tracing::warn!(error = %e, "sending SMS failed; retrying");
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                }
            }
        };
        let now = sender.clock.now();
        let next = next_wakeup(&sender.pool)
            .await
            .ok()
            .flatten()
            .unwrap_or(now + chrono::Duration::days(1));
        if next <= now && claimed == 0 {
            // Due but claimed by the other sender: look again shortly, or when told.
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = queued.notified() => {}
                _ = tokio::time::sleep(Duration::from_millis(20)) => {}
            }
            continue;
        }
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
        let mut tx = renewal_platform::postgres::begin_claim(&self.pool).await?;
        let rows = sqlx::query(
            "SELECT m.id, m.case_id, m.policy_no, m.stage, m.template, m.mobile, m.template_params, m.time_zone,
                    m.marketing, m.attempts, m.traceparent,
                    EXISTS (SELECT 1 FROM dispatch.closed_cases c WHERE c.case_id = m.case_id) AS case_closed,
                    EXISTS (SELECT 1 FROM dispatch.opt_outs o WHERE o.mobile = m.mobile) AS opted_out
             FROM dispatch.sms_messages m
             WHERE m.state = 'queued' AND m.next_attempt_at <= $1
             ORDER BY m.next_attempt_at
             LIMIT $2
             FOR UPDATE SKIP LOCKED",
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
        let sends: Vec<_> = to_send
            .iter()
            .enumerate()
            .map(|(i, m)| async move { (i, self.send_one(m, now).await) })
            .collect();
        // Unordered, so one slow answer does not hold back the requests behind it.
        let mut outcomes: Vec<(usize, Verdict)> = futures::stream::iter(sends)
            .buffer_unordered(IN_FLIGHT)
            .collect()
            .await;
        outcomes.sort_by_key(|(i, _)| *i);
        verdicts.extend(
            to_send
                .into_iter()
                .zip(outcomes.into_iter().map(|(_, v)| v)),
        );

        let events = record(&mut tx, &self.outbox, &verdicts, now).await?;
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

impl<V: SmsVendor> Sender<V> {
    /// Hands one message to the vendor; what its answer means for the message.
    async fn send_one(&self, m: &Claimed, now: DateTime<Utc>) -> Verdict {
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
                let wait = renewal_platform::retry::redelivery_delay((m.attempts + 1) as u64 * 3);
                Verdict::Retry(
                    now + chrono::Duration::from_std(wait).unwrap_or_default(),
                    reason,
                )
            }
        }
    }
}

/// One row of the batch's update: what a verdict changes in the message.
#[derive(Default)]
struct Change {
    state: Option<&'static str>,
    tried: i32,
    next_attempt_at: Option<DateTime<Utc>>,
    vendor_message_id: Option<String>,
    vendor_code: Option<String>,
    last_error: Option<String>,
    clear_error: bool,
    sent_at: Option<DateTime<Utc>>,
}

/// Records the batch's verdicts with one update, and their events with one insert.
/// Returns how many events it wrote.
async fn record(
    tx: &mut PgConnection,
    outbox: &Outbox,
    verdicts: &[(Claimed, Verdict)],
    now: DateTime<Utc>,
) -> Result<usize, sqlx::Error> {
    let fallback_trace = renewal_platform::telemetry::current_traceparent();
    let mut changes = Vec::with_capacity(verdicts.len());
    let mut events = Vec::new();
    for (m, verdict) in verdicts {
        let (change, event) = match verdict {
            Verdict::Sent(biz_id) => (
                Change {
                    state: Some("sent"),
                    tried: 1,
                    vendor_message_id: Some(biz_id.clone()),
                    clear_error: true,
                    sent_at: Some(now),
                    ..Change::default()
                },
                Some((SmsStatus::Sent, biz_id.as_str(), "")),
            ),
            Verdict::Retry(at, reason) => {
                tracing::warn!(message_id = %m.id, %reason, "vendor unavailable; the SMS will be retried");
                metrics::counter!("sms_total", "status" => "retry").increment(1);
                (
                    Change {
                        tried: 1,
                        next_attempt_at: Some(*at),
                        last_error: Some(reason.clone()),
                        ..Change::default()
                    },
                    None,
                )
            }
            Verdict::Deferred(at) => {
                metrics::counter!("sms_total", "status" => "deferred_quiet_hours").increment(1);
                (
                    Change {
                        next_attempt_at: Some(*at),
                        ..Change::default()
                    },
                    None,
                )
            }
            Verdict::Suppressed(state) => {
                metrics::counter!("sms_total", "status" => *state).increment(1);
                (
                    Change {
                        state: Some(state),
                        ..Change::default()
                    },
                    None,
                )
            }
            Verdict::Dead(reason) => {
                tracing::error!(message_id = %m.id, %reason, "SMS dead after {MAX_ATTEMPTS} attempts");
                (
                    Change {
                        state: Some("dead"),
                        tried: 1,
                        last_error: Some(reason.clone()),
                        ..Change::default()
                    },
                    Some((SmsStatus::Failed, "", "dead_letter")),
                )
            }
            Verdict::Failed(code, message) => {
                tracing::warn!(message_id = %m.id, %code, "vendor refused the SMS");
                (
                    Change {
                        state: Some("failed"),
                        tried: 1,
                        vendor_code: Some(code.clone()),
                        last_error: Some(message.clone()),
                        ..Change::default()
                    },
                    Some((SmsStatus::Failed, "", code.as_str())),
                )
            }
        };
        changes.push((m.id, change));
        let Some((status, vendor_id, vendor_code)) = event else {
            continue;
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
        let (subject, label) = match status {
            SmsStatus::Sent => (subject::DISPATCH_SMS_SENT, "sent"),
            _ => (subject::DISPATCH_SMS_FAILED, "failed"),
        };
        metrics::counter!("sms_total", "status" => label).increment(1);
        // The event stays in the trace of the command that queued the message.
        events.push((
            Uuid::now_v7(),
            subject,
            prost::Message::encode_to_vec(&event),
            m.traceparent.clone().or_else(|| fallback_trace.clone()),
        ));
    }
    if !changes.is_empty() {
        let ids: Vec<Uuid> = changes.iter().map(|(id, _)| *id).collect();
        let states: Vec<Option<&str>> = changes.iter().map(|(_, c)| c.state).collect();
        let tried: Vec<i32> = changes.iter().map(|(_, c)| c.tried).collect();
        let next: Vec<Option<DateTime<Utc>>> =
            changes.iter().map(|(_, c)| c.next_attempt_at).collect();
        let vendor_ids: Vec<Option<&str>> = changes
            .iter()
            .map(|(_, c)| c.vendor_message_id.as_deref())
            .collect();
        let codes: Vec<Option<&str>> = changes
            .iter()
            .map(|(_, c)| c.vendor_code.as_deref())
            .collect();
        let errors: Vec<Option<&str>> = changes
            .iter()
            .map(|(_, c)| c.last_error.as_deref())
            .collect();
        let clear: Vec<bool> = changes.iter().map(|(_, c)| c.clear_error).collect();
        let sent: Vec<Option<DateTime<Utc>>> = changes.iter().map(|(_, c)| c.sent_at).collect();
        sqlx::query(
            "UPDATE dispatch.sms_messages m SET
                 state = coalesce(v.state, m.state),
                 attempts = m.attempts + v.tried,
                 next_attempt_at = coalesce(v.next_attempt_at, m.next_attempt_at),
                 vendor_message_id = coalesce(v.vendor_message_id, m.vendor_message_id),
                 vendor_code = coalesce(v.vendor_code, m.vendor_code),
                 last_error = CASE WHEN v.clear_error THEN NULL ELSE coalesce(v.last_error, m.last_error) END,
                 sent_at = coalesce(v.sent_at, m.sent_at)
             FROM unnest($1::uuid[], $2::text[], $3::int[], $4::timestamptz[], $5::text[], $6::text[],
                         $7::text[], $8::bool[], $9::timestamptz[])
                  AS v(id, state, tried, next_attempt_at, vendor_message_id, vendor_code, last_error,
                       clear_error, sent_at)
             WHERE m.id = v.id",
        )
        .bind(&ids)
        .bind(&states)
        .bind(&tried)
        .bind(&next)
        .bind(&vendor_ids)
        .bind(&codes)
        .bind(&errors)
        .bind(&clear)
        .bind(&sent)
        .execute(&mut *tx)
        .await?;
    }
    let written = events.len();
    if written > 0 {
        outbox.enqueue_commands(tx, events).await?;
    }
    Ok(written)
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
