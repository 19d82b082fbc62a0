//! The sender: hands each queued SMS to the vendor at most once.
//!
//! 1. **Claim**: a batch of due messages is taken with `FOR UPDATE SKIP LOCKED`, checked
//!    against what must never happen (closed case, opted-out customer, night time), and
//!    the rest are committed as `sending` with their attempt counted, before any call.
//!    Only those have their sealed contact opened (one open per SMS sent).
//! 2. **Hand over**: [`IN_FLIGHT`] at a time (paced by the vendor's QPS; in any order, so
//!    a slow answer holds back no other request). Right before each call the message is
//!    checked again against the renewals and opt-outs noted since the claim
//!    ([`super::stops`]); nothing waits on a lock of a message being sent, so a close or
//!    an opt-out is never held up by a slow vendor.
//! 3. **Record** every outcome with its event in one transaction (one update and one
//!    outbox insert for the batch), only where the message is still in the attempt this
//!    sender made. An answer the vendor did not give (a timeout, a reset) leaves the
//!    message `unknown`, and a crash leaves it `sending`: neither is sent again before the
//!    vendor was asked about it ([`super::doubts`]).
//!
//! [`WORKERS`] senders run at once, so one batch is being claimed or recorded while
//! another is with the vendor. A stopping process claims nothing more, lets the calls
//! under way finish (the vendor timeout is shorter than `SHUTDOWN_GRACE`), puts the rest
//! of its batches back in the queue, and records it all. A refusal that says the vendor did not take the message
//! retries with backoff; after too many attempts the message is dead with its reason;
//! permanent refusals fail at once.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, NaiveDate, Utc};
use futures::StreamExt;
use renewal_contract::dispatch::{SmsStatus, SmsStatusChanged};
use renewal_contract::subject;
use renewal_platform::pii::{BlindIndex, PiiCipher, PiiError};
use renewal_platform::{Clock, Outbox, local_date, local_instant};
use sqlx::{PgConnection, PgPool, Row};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::config::Hours;
use crate::sealed::{self, SmsContact};
use crate::sms::stops::{Stop, Stops};
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
    /// Opens the messages' sealed contacts (only those handed over).
    pub pii: Arc<PiiCipher>,
    /// Renewals and opt-outs noted since a batch was claimed.
    pub stops: Stops,
    /// The vendor's timeout (a call takes no longer).
    pub vendor_timeout: Duration,
    /// How long after a lost answer the vendor is asked about the message (its records
    /// lag behind its answers).
    pub ask_after: Duration,
    /// Messages this process has with the vendor now (never settled from under it).
    pub in_flight: Arc<Mutex<HashSet<Uuid>>>,
    /// Fires when the process stops: the calls under way finish, the messages of the
    /// batch not called yet go back to the queue.
    pub stopping: CancellationToken,
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
        // Nothing in doubt is sent again before the vendor was asked about it.
        if let Err(e) = sender.settle_doubts().await {
            tracing::warn!(error = %e, "settling SMS in doubt failed; retrying");
        }
        let claimed = match sender.send_batch(queued).await {
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

/// When this service next has work of its own: the earliest attempt of a queued
/// message, or the time to ask the vendor about one in doubt.
pub async fn next_wakeup(pool: &PgPool) -> Result<Option<DateTime<Utc>>, sqlx::Error> {
    // One minimum per partial index (a single `state IN (...)` matches neither, and
    // scans the table).
    sqlx::query_scalar(
        "SELECT least(
             (SELECT min(next_attempt_at) FROM dispatch.sms_messages WHERE state = 'queued'),
             (SELECT min(next_attempt_at) FROM dispatch.sms_messages WHERE state IN ('sending', 'unknown')))",
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

/// The states of a message (`dispatch.sms_messages.state`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SmsState {
    Queued,
    /// Committed before its vendor call: the call is under way (or its sender died).
    Sending,
    /// The vendor's answer was lost: it may or may not have the message.
    Unknown,
    Sent,
    Delivered,
    Failed,
    Dead,
    Withdrawn,
    Suppressed,
}

impl SmsState {
    pub fn as_str(self) -> &'static str {
        match self {
            SmsState::Queued => "queued",
            SmsState::Sending => "sending",
            SmsState::Unknown => "unknown",
            SmsState::Sent => "sent",
            SmsState::Delivered => "delivered",
            SmsState::Failed => "failed",
            SmsState::Dead => "dead",
            SmsState::Withdrawn => "withdrawn",
            SmsState::Suppressed => "suppressed",
        }
    }
}

/// The vendor's date of an attempt (it keeps its records by China's calendar; SMS go
/// out only by day, so an attempt never straddles its midnight).
pub fn vendor_day(at: DateTime<Utc>) -> NaiveDate {
    local_date(at, chrono_tz::Asia::Shanghai)
}

pub(crate) struct Claimed {
    pub id: Uuid,
    pub case_id: Uuid,
    pub policy_no: String,
    pub stage: String,
    pub template: String,
    pub marketing: bool,
    /// Attempts made, this one included once it is claimed for sending.
    pub attempts: i32,
    pub traceparent: Option<String>,
}

impl Claimed {
    /// A message as the claim and the settling of doubts select it.
    pub(crate) fn read(row: &sqlx::postgres::PgRow) -> Result<Self, sqlx::Error> {
        Ok(Claimed {
            id: row.try_get("id")?,
            case_id: row.try_get("case_id")?,
            policy_no: row.try_get("policy_no")?,
            stage: row.try_get("stage")?,
            template: row.try_get("template")?,
            marketing: row.try_get("marketing")?,
            attempts: row.try_get("attempts")?,
            traceparent: row.try_get("traceparent")?,
        })
    }
}

/// A claimed message to hand over, its contact opened.
pub(crate) struct ToSend {
    pub m: Claimed,
    pub contact: SmsContact,
    /// A marketing message's number under every key of the keyring (checked against
    /// the opt-outs); empty for a notice.
    pub indexes: Vec<BlindIndex>,
}

/// Opens a claimed message's contact, with a marketing message's number under every
/// key of the keyring.
fn open_contact(
    pii: &PiiCipher,
    m: &Claimed,
    sealed: &[u8],
) -> Result<(SmsContact, Vec<BlindIndex>), PiiError> {
    let contact = sealed::open_sms(pii, &m.id.to_string(), sealed).inspect_err(|e| {
        tracing::error!(message_id = %m.id, error = %e, "an SMS's sealed contact does not open");
    })?;
    let indexes = if m.marketing {
        pii.blind_indexes(&sealed::e164(&contact.mobile))
    } else {
        Vec::new()
    };
    Ok((contact, indexes))
}

/// A contact that does not open (its key is not in the keyring, or it was damaged)
/// can never be sent.
fn unreadable(e: PiiError) -> Verdict {
    Verdict::Failed("sealed_contact_unreadable".into(), e.to_string())
}

pub(crate) enum Verdict {
    Sent(String),
    /// The vendor did not take it: queued again for `at`.
    Retry(DateTime<Utc>, String),
    /// Not handed over after all (no attempt made): queued again for `at`.
    Requeued(DateTime<Utc>, &'static str),
    /// The vendor's answer was lost: asked about at `at`.
    Unknown(DateTime<Utc>, String),
    Dead(String),
    Failed(String, String),
    /// Not sent: its case closed or its number opted out before the claim.
    Suppressed(SmsState),
    /// Not sent: its case closed or its number opted out after the claim.
    Stopped(SmsState),
    Deferred(DateTime<Utc>),
}

impl<V: SmsVendor> Sender<V> {
    /// Sends one batch; returns how many messages it claimed. A full batch wakes a
    /// sibling sender through `more`, so a burst is claimed by every sender at once
    /// while this one hands its batch over (one wake-up per command would leave the
    /// others asleep until their timer).
    pub async fn send_batch(&self, more: &Notify) -> Result<usize, sqlx::Error> {
        // Nothing is claimed for sending while the stops cannot be checked.
        if !self.stops.wait_fresh(Duration::from_secs(1)).await {
            return Ok(0);
        }
        let now = self.clock.now();
        let (claimed, to_send) = self.claim(now).await?;
        if claimed as i64 == BATCH {
            more.notify_one();
        }
        if to_send.is_empty() {
            return Ok(claimed);
        }
        let sends: Vec<_> = to_send
            .iter()
            .enumerate()
            .map(|(i, t)| async move { (i, self.hand_over(t, now).await) })
            .collect();
        // Unordered, so one slow answer does not hold back the requests behind it.
        let mut outcomes: Vec<(usize, Verdict)> = futures::stream::iter(sends)
            .buffer_unordered(IN_FLIGHT)
            .collect()
            .await;
        outcomes.sort_by_key(|(i, _)| *i);
        let ids: Vec<Uuid> = to_send.iter().map(|t| t.m.id).collect();
        let verdicts: Vec<(Claimed, Verdict)> = to_send
            .into_iter()
            .map(|t| t.m)
            .zip(outcomes.into_iter().map(|(_, v)| v))
            .collect();
        let recorded = self.record_answers(&verdicts, now).await;
        // Unrecorded, they stay `sending` and are settled by asking the vendor.
        self.release(&ids);
        if recorded? > 0 {
            self.outbox.wake();
        }
        renewal_platform::activity::record();
        Ok(claimed)
    }

    /// Records the vendor's answers (again if Postgres chose this transaction to break
    /// a deadlock or a serialization conflict).
    async fn record_answers(
        &self,
        verdicts: &[(Claimed, Verdict)],
        now: DateTime<Utc>,
    ) -> Result<usize, sqlx::Error> {
        let mut attempt = 0;
        loop {
            let recorded = async {
                let mut tx = self.pool.begin().await?;
                let events = record(&mut tx, &self.outbox, verdicts, now, Fence::Attempt).await?;
                tx.commit().await?;
                Ok::<_, sqlx::Error>(events)
            }
            .await;
            match recorded {
                Err(sqlx::Error::Database(e))
                    if attempt < 3 && matches!(e.code().as_deref(), Some("40P01" | "40001")) =>
                {
                    attempt += 1;
                }
                other => return other,
            }
        }
    }

    /// Claims due messages; records those that must not or cannot go now, and commits
    /// the rest as `sending`, their contacts opened. Returns how many it claimed, and
    /// those to hand over.
    async fn claim(&self, now: DateTime<Utc>) -> Result<(usize, Vec<ToSend>), sqlx::Error> {
        let mut tx = renewal_platform::postgres::begin_claim(&self.pool).await?;
        let rows = sqlx::query(
            "SELECT m.id, m.case_id, m.policy_no, m.stage, m.template, m.contact_enc, m.time_zone,
                    m.marketing, m.attempts, m.traceparent,
                    -- An erased contact (its case is closed too) is never opened nor sent.
                    (length(m.contact_enc) = 0
                     OR EXISTS (SELECT 1 FROM dispatch.closed_cases c WHERE c.case_id = m.case_id)) AS case_closed,
                    EXISTS (SELECT 1 FROM dispatch.opt_outs o WHERE o.mobile_index = m.mobile_index) AS opted_out
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
            let claimed = Claimed::read(row)?;
            match self.triage(row, &claimed, now)? {
                Some(verdict) => verdicts.push((claimed, verdict)),
                // Only what goes now is opened.
                None => match open_contact(&self.pii, &claimed, row.try_get("contact_enc")?) {
                    Ok((contact, indexes)) => to_send.push(ToSend {
                        m: claimed,
                        contact,
                        indexes,
                    }),
                    Err(e) => verdicts.push((claimed, unreadable(e))),
                },
            }
        }
        if to_send.iter().any(|t| t.indexes.len() > 1) {
            to_send = opted_out_under_older_keys(&mut tx, to_send, &mut verdicts).await?;
        }
        for t in &mut to_send {
            t.m.attempts += 1;
        }
        record(&mut tx, &self.outbox, &verdicts, now, Fence::Locked).await?;
        if !to_send.is_empty() {
            // Past the call's timeout and the time to record it, a message still
            // `sending` was abandoned (its sender died): then the vendor is asked.
            let abandoned = now
                + chrono::TimeDelta::from_std(self.vendor_timeout + self.ask_after)
                    .unwrap_or_default();
            sqlx::query(
                "UPDATE dispatch.sms_messages
                 SET state = 'sending', attempts = attempts + 1, next_attempt_at = $2, sending_on = $3
                 WHERE id = ANY($1)",
            )
            .bind(to_send.iter().map(|t| t.m.id).collect::<Vec<_>>())
            .bind(abandoned)
            .bind(vendor_day(now))
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        self.in_flight
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend(to_send.iter().map(|t| t.m.id));
        Ok((rows.len(), to_send))
    }

    /// What must happen instead of sending a claimed message now, if anything: its
    /// case closed, its number opted out (a marketing message), or night time.
    fn triage(
        &self,
        row: &sqlx::postgres::PgRow,
        claimed: &Claimed,
        now: DateTime<Utc>,
    ) -> Result<Option<Verdict>, sqlx::Error> {
        let tz: chrono_tz::Tz = row
            .try_get::<String, _>("time_zone")?
            .parse()
            .unwrap_or(chrono_tz::Asia::Shanghai);
        Ok(if row.try_get::<bool, _>("case_closed")? {
            Some(Verdict::Suppressed(SmsState::Withdrawn))
        } else if claimed.marketing && row.try_get::<bool, _>("opted_out")? {
            Some(Verdict::Suppressed(SmsState::Suppressed))
        } else {
            next_allowed(now, tz, self.hours).map(Verdict::Deferred)
        })
    }

    fn release(&self, ids: &[Uuid]) {
        let mut in_flight = self.in_flight.lock().unwrap_or_else(|e| e.into_inner());
        for id in ids {
            in_flight.remove(id);
        }
    }

    /// Hands one message to the vendor, unless a renewal or an opt-out came since the
    /// claim; what the vendor's answer means for the message.
    async fn hand_over(&self, t: &ToSend, now: DateTime<Utc>) -> Verdict {
        let m = &t.m;
        let Some(template) = templates::find(&m.template) else {
            return Verdict::Failed(
                "unknown_template".into(),
                format!("no template {:?}", m.template),
            );
        };
        self.vendor.pace().await;
        if self.stopping.is_cancelled() {
            return Verdict::Requeued(now, "the process is stopping");
        }
        // The last check, right before the call.
        if !self.stops.fresh() {
            return Verdict::Requeued(now, "renewals and opt-outs could not be read");
        }
        match self.stops.stop_for(m.case_id, &t.indexes, m.marketing) {
            Some(Stop::CaseClosed) => return Verdict::Stopped(SmsState::Withdrawn),
            Some(Stop::OptedOut) => return Verdict::Stopped(SmsState::Suppressed),
            None => {}
        }
        let out_id = m.id.to_string();
        let request = SmsRequest {
            out_id: &out_id,
            mobile: &t.contact.mobile,
            template_code: template.code_for(&t.contact.template_params),
            template_params: &t.contact.template_params,
        };
        match self.vendor.send(request).await {
            Ok(accepted) => Verdict::Sent(accepted.vendor_message_id),
            Err(VendorError::Permanent { code, message }) => Verdict::Failed(code, message),
            Err(VendorError::Unavailable(reason)) => retry_or_dead(m.attempts, now, reason),
            Err(VendorError::InDoubt(reason)) => Verdict::Unknown(
                now + chrono::TimeDelta::from_std(self.ask_after).unwrap_or_default(),
                reason,
            ),
        }
    }
}

/// While the keyring has several keys (a rotation under way), a message and an opt-out
/// of one number may be indexed under different keys, which the claim's comparison of
/// the stored indexes misses: the marketing messages to send are looked up again under
/// every key (one more query per batch, during a rotation only). Returns those still
/// to send; the others are suppressed.
async fn opted_out_under_older_keys(
    tx: &mut PgConnection,
    to_send: Vec<ToSend>,
    verdicts: &mut Vec<(Claimed, Verdict)>,
) -> Result<Vec<ToSend>, sqlx::Error> {
    let all: Vec<Vec<u8>> = to_send
        .iter()
        .flat_map(|t| t.indexes.iter().map(|i| i.to_vec()))
        .collect();
    let found: HashSet<Vec<u8>> = sqlx::query_scalar(
        "SELECT mobile_index FROM dispatch.opt_outs WHERE mobile_index = ANY($1)",
    )
    .bind(&all)
    .fetch_all(&mut *tx)
    .await?
    .into_iter()
    .collect();
    if found.is_empty() {
        return Ok(to_send);
    }
    let mut still = Vec::with_capacity(to_send.len());
    for t in to_send {
        if t.indexes.iter().any(|i| found.contains(&i[..])) {
            verdicts.push((t.m, Verdict::Suppressed(SmsState::Suppressed)));
        } else {
            still.push(t);
        }
    }
    Ok(still)
}

/// After an attempt the vendor did not take: again later, or dead after the last.
pub(crate) fn retry_or_dead(attempts: i32, now: DateTime<Utc>, reason: String) -> Verdict {
    if attempts >= MAX_ATTEMPTS {
        return Verdict::Dead(reason);
    }
    let wait = renewal_platform::retry::redelivery_delay(attempts as u64 * 3);
    Verdict::Retry(
        now + chrono::Duration::from_std(wait).unwrap_or_default(),
        reason,
    )
}

/// Which rows a batch's update may change.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Fence {
    /// Rows this transaction holds locked.
    Locked,
    /// Rows still `sending` in the attempt this sender claimed (a receipt may have
    /// moved a sent one on already; then only its sending is recorded).
    Attempt,
}

/// One row of the batch's update: what a verdict changes in the message.
#[derive(Default)]
struct Change {
    state: Option<SmsState>,
    /// Added to the attempts (-1: the claimed attempt was not made after all).
    tried: i32,
    next_attempt_at: Option<DateTime<Utc>>,
    vendor_message_id: Option<String>,
    vendor_code: Option<String>,
    last_error: Option<String>,
    clear_error: bool,
    sent_at: Option<DateTime<Utc>>,
}

/// Logs and counts a verdict.
fn note(m: &Claimed, verdict: &Verdict) {
    let status = match verdict {
        Verdict::Retry(_, reason) => {
            tracing::warn!(message_id = %m.id, %reason, "vendor unavailable; the SMS will be retried");
            "retry"
        }
        Verdict::Requeued(_, reason) => {
            tracing::info!(message_id = %m.id, %reason, "SMS not handed over; queued again");
            return;
        }
        Verdict::Unknown(_, reason) => {
            tracing::warn!(message_id = %m.id, %reason, "the vendor's answer was lost; it will be asked before any resend");
            "unknown"
        }
        Verdict::Deferred(_) => "deferred_quiet_hours",
        Verdict::Suppressed(state) => state.as_str(),
        Verdict::Stopped(state) => {
            metrics::counter!("sms_stopped_before_call_total").increment(1);
            state.as_str()
        }
        Verdict::Dead(reason) => {
            tracing::error!(message_id = %m.id, %reason, "SMS dead after {MAX_ATTEMPTS} attempts");
            return;
        }
        Verdict::Failed(code, _) => {
            tracing::warn!(message_id = %m.id, %code, "vendor refused the SMS");
            return;
        }
        // Counted with its event.
        Verdict::Sent(_) => return,
    };
    metrics::counter!("sms_total", "status" => status).increment(1);
}

/// What a verdict changes, and the event it publishes (status, vendor id, vendor code).
fn change_for(
    m: &Claimed,
    verdict: &Verdict,
    now: DateTime<Utc>,
) -> (Change, Option<(SmsStatus, String, String)>) {
    note(m, verdict);
    let queued_for = |at: &DateTime<Utc>| Change {
        state: Some(SmsState::Queued),
        next_attempt_at: Some(*at),
        ..Change::default()
    };
    let change = match verdict {
        Verdict::Sent(biz_id) => Change {
            state: Some(SmsState::Sent),
            // Empty when the vendor was asked about it rather than answering.
            vendor_message_id: (!biz_id.is_empty()).then(|| biz_id.clone()),
            clear_error: true,
            sent_at: Some(now),
            ..Change::default()
        },
        Verdict::Retry(at, reason) => Change {
            last_error: Some(reason.clone()),
            ..queued_for(at)
        },
        // The attempt claimed for it was not made.
        Verdict::Requeued(at, _) => Change {
            tried: -1,
            ..queued_for(at)
        },
        Verdict::Unknown(at, reason) => Change {
            state: Some(SmsState::Unknown),
            next_attempt_at: Some(*at),
            last_error: Some(reason.clone()),
            ..Change::default()
        },
        Verdict::Deferred(at) => Change {
            next_attempt_at: Some(*at),
            ..Change::default()
        },
        Verdict::Suppressed(state) => Change {
            state: Some(*state),
            ..Change::default()
        },
        Verdict::Stopped(state) => Change {
            state: Some(*state),
            tried: -1,
            ..Change::default()
        },
        Verdict::Dead(reason) => Change {
            state: Some(SmsState::Dead),
            last_error: Some(reason.clone()),
            ..Change::default()
        },
        Verdict::Failed(code, message) => Change {
            state: Some(SmsState::Failed),
            vendor_code: Some(code.clone()),
            last_error: Some(message.clone()),
            ..Change::default()
        },
    };
    let event = match verdict {
        Verdict::Sent(biz_id) => Some((SmsStatus::Sent, biz_id.clone(), String::new())),
        Verdict::Dead(_) => Some((SmsStatus::Failed, String::new(), "dead_letter".into())),
        Verdict::Failed(code, _) => Some((SmsStatus::Failed, String::new(), code.clone())),
        _ => None,
    };
    (change, event)
}

/// Records a batch's verdicts with one update, and the events of the messages it
/// changed with one insert. Returns how many events it wrote.
pub(crate) async fn record(
    tx: &mut PgConnection,
    outbox: &Outbox,
    verdicts: &[(Claimed, Verdict)],
    now: DateTime<Utc>,
    fence: Fence,
) -> Result<usize, sqlx::Error> {
    if verdicts.is_empty() {
        return Ok(0);
    }
    let mut changes = Vec::with_capacity(verdicts.len());
    let mut events = std::collections::HashMap::new();
    for (m, verdict) in verdicts {
        let (change, event) = change_for(m, verdict, now);
        changes.push((m.id, m.attempts, change));
        if let Some(event) = event {
            events.insert(m.id, (m, event));
        }
    }
    let changed = update(tx, &changes, fence).await?;
    let fallback_trace = renewal_platform::telemetry::current_traceparent();
    let mut written = Vec::with_capacity(events.len());
    for id in changed {
        let Some((m, (status, vendor_id, vendor_code))) = events.remove(&id) else {
            continue;
        };
        let event = SmsStatusChanged {
            message_id: m.id.to_string(),
            case_id: m.case_id.to_string(),
            policy_no: m.policy_no.clone(),
            stage: m.stage.clone(),
            status: status as i32,
            vendor_message_id: vendor_id,
            vendor_code,
            at_ms: now.timestamp_millis(),
        };
        let (subject, label) = match status {
            SmsStatus::Sent => (subject::DISPATCH_SMS_SENT, "sent"),
            _ => (subject::DISPATCH_SMS_FAILED, "failed"),
        };
        metrics::counter!("sms_total", "status" => label).increment(1);
        // The event stays in the trace of the command that queued the message.
        written.push((
            Uuid::now_v7(),
            subject,
            prost::Message::encode_to_vec(&event),
            m.traceparent.clone().or_else(|| fallback_trace.clone()),
        ));
    }
    if !events.is_empty() {
        tracing::warn!(
            messages = events.len(),
            "outcomes not recorded: the messages were settled meanwhile"
        );
    }
    let n = written.len();
    if n > 0 {
        outbox.enqueue_commands(tx, written).await?;
    }
    Ok(n)
}

/// The batch's update; returns the ids it changed.
async fn update(
    tx: &mut PgConnection,
    changes: &[(Uuid, i32, Change)],
    fence: Fence,
) -> Result<Vec<Uuid>, sqlx::Error> {
    let ids: Vec<Uuid> = changes.iter().map(|(id, ..)| *id).collect();
    let attempts: Vec<i32> = changes.iter().map(|(_, a, _)| *a).collect();
    let states: Vec<Option<&str>> = changes
        .iter()
        .map(|(.., c)| c.state.map(SmsState::as_str))
        .collect();
    let tried: Vec<i32> = changes.iter().map(|(.., c)| c.tried).collect();
    let next: Vec<Option<DateTime<Utc>>> =
        changes.iter().map(|(.., c)| c.next_attempt_at).collect();
    let vendor_ids: Vec<Option<&str>> = changes
        .iter()
        .map(|(.., c)| c.vendor_message_id.as_deref())
        .collect();
    let codes: Vec<Option<&str>> = changes
        .iter()
        .map(|(.., c)| c.vendor_code.as_deref())
        .collect();
    let errors: Vec<Option<&str>> = changes
        .iter()
        .map(|(.., c)| c.last_error.as_deref())
        .collect();
    let clear: Vec<bool> = changes.iter().map(|(.., c)| c.clear_error).collect();
    let sent: Vec<Option<DateTime<Utc>>> = changes.iter().map(|(.., c)| c.sent_at).collect();
    // Rows are locked in key order first, as the receipts webhook locks them, so a
    // batch and a push of receipts queue rather than deadlock. The locking runs once,
    // as a one-time filter, before the update: joined to the update row by row, the
    // planner (which guesses a CTE's size) chose a nested loop over the locked rows,
    // quadratic in the batch (55 ms for 500 rows, most of the sender's time).
    sqlx::query_scalar(
        "WITH v AS (
             SELECT * FROM unnest($1::uuid[], $2::int[], $3::text[], $4::int[], $5::timestamptz[], $6::text[],
                                  $7::text[], $8::text[], $9::bool[], $10::timestamptz[])
                 AS v(id, attempt, state, tried, next_attempt_at, vendor_message_id, vendor_code, last_error,
                      clear_error, sent_at)
         ),
         locked AS MATERIALIZED (
             SELECT count(*) AS n FROM (
                 SELECT m.id FROM dispatch.sms_messages m WHERE m.id IN (SELECT id FROM v)
                 ORDER BY m.id FOR UPDATE) l
         )
         UPDATE dispatch.sms_messages m SET
             state = CASE WHEN m.state IN ('delivered', 'failed') THEN m.state
                          ELSE coalesce(v.state, m.state) END,
             attempts = m.attempts + v.tried,
             next_attempt_at = coalesce(v.next_attempt_at, m.next_attempt_at),
             vendor_message_id = coalesce(v.vendor_message_id, m.vendor_message_id),
             vendor_code = coalesce(v.vendor_code, m.vendor_code),
             last_error = CASE WHEN v.clear_error THEN NULL ELSE coalesce(v.last_error, m.last_error) END,
             sent_at = coalesce(m.sent_at, v.sent_at)
         FROM v
         WHERE m.id = v.id AND (SELECT n FROM locked) >= 0
           AND ($11 OR (m.attempts = v.attempt
                        AND (m.state = 'sending'
                             OR (v.state = 'sent' AND m.state IN ('delivered', 'failed') AND m.sent_at IS NULL))))
         RETURNING m.id",
    )
    .bind(&ids)
    .bind(&attempts)
    .bind(&states)
    .bind(&tried)
    .bind(&next)
    .bind(&vendor_ids)
    .bind(&codes)
    .bind(&errors)
    .bind(&clear)
    .bind(&sent)
    .bind(fence == Fence::Locked)
    .fetch_all(&mut *tx)
    .await
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
