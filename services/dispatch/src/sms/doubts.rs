//! Messages in doubt: `unknown` (the vendor's answer to our call was lost: a timeout, a
//! reset connection) and `sending` past its sender's deadline (the sender died during
//! the call). The vendor may or may not have taken them, and it takes a repeat as a
//! second SMS, so none is sent again before the vendor was asked: `QuerySendDetails`
//! for the number and the attempt's date, matched on our `OutId`.
//!
//! - Found: it was sent (`sent`, with its event; the receipt follows as usual).
//! - Not found, asked `ask_after` after the attempt (the vendor's records lag behind its
//!   answers; a dying process's last request arrives within it): it was not taken, and
//!   is queued again (or dead after the last attempt; a sender's death does not count
//!   as an attempt, as it may have died before the call).
//! - The vendor cannot be asked: asked again later; nothing is sent meanwhile.
//! - Its contact was erased (`crate::erasure`): it cannot be asked about without the
//!   number, and stays `unknown` for good (its case is closed: never sent again).

use std::time::Duration;

use chrono::{DateTime, NaiveDate, Utc};
use futures::StreamExt;
use renewal_platform::pii::PiiError;
use sqlx::Row;
use uuid::Uuid;

use crate::sealed;
use crate::sms::sending::{Claimed, Fence, Sender, SmsState, Verdict, record, retry_or_dead};
use crate::sms::vendor::SmsVendor;

/// Messages settled per pass.
const BATCH: i64 = 50;
/// Questions to the vendor at once.
const ASKING: usize = 8;

impl<V: SmsVendor> Sender<V> {
    /// Asks the vendor about the messages in doubt that are due; returns how many.
    pub async fn settle_doubts(&self) -> Result<usize, sqlx::Error> {
        let now = self.clock.now();
        let mine: Vec<Uuid> = self
            .in_flight
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .copied()
            .collect();
        let mut tx = renewal_platform::postgres::begin_claim(&self.pool).await?;
        let rows = sqlx::query(
            "SELECT id, case_id, policy_no, stage, template, contact_enc, marketing,
                    attempts, traceparent, sending_on, state
             FROM dispatch.sms_messages
             WHERE state IN ('sending', 'unknown') AND next_attempt_at <= $1 AND id <> ALL($2)
             ORDER BY next_attempt_at
             LIMIT $3
             FOR UPDATE SKIP LOCKED",
        )
        .bind(now)
        .bind(&mine)
        .bind(BATCH)
        .fetch_all(&mut *tx)
        .await?;
        if rows.is_empty() {
            return Ok(0);
        }
        let mut doubts = Vec::with_capacity(rows.len());
        let mut erased = Vec::new();
        for row in &rows {
            let claimed = Claimed::read(row)?;
            let day: Option<NaiveDate> = row.try_get("sending_on")?;
            let state: String = row.try_get("state")?;
            let sealed: Vec<u8> = row.try_get("contact_enc")?;
            if sealed.is_empty() {
                let never = crate::erasure::never();
                erased.push((
                    claimed,
                    Verdict::Unknown(never, crate::erasure::CANNOT_ASK.into()),
                ));
                continue;
            }
            // Only the number is needed to ask.
            let mobile =
                sealed::open_sms(&self.pii, &claimed.id.to_string(), &sealed).map(|c| c.mobile);
            doubts.push((claimed, mobile, day, state == SmsState::Sending.as_str()));
        }
        let asks: Vec<_> = doubts
            .iter()
            .map(|(m, mobile, day, abandoned)| self.ask(m, mobile, *day, *abandoned, now))
            .collect();
        let asked: Vec<Verdict> = futures::stream::iter(asks).buffered(ASKING).collect().await;
        let verdicts: Vec<(Claimed, Verdict)> = doubts
            .into_iter()
            .map(|(m, ..)| m)
            .zip(asked)
            .chain(erased)
            .collect();
        let events = record(&mut tx, &self.outbox, &verdicts, now, Fence::Locked).await?;
        tx.commit().await?;
        if events > 0 {
            self.outbox.wake();
        }
        renewal_platform::activity::record();
        Ok(verdicts.len())
    }

    /// What the vendor's records say of one message in doubt.
    async fn ask(
        &self,
        m: &Claimed,
        mobile: &Result<String, PiiError>,
        day: Option<NaiveDate>,
        abandoned: bool,
        now: DateTime<Utc>,
    ) -> Verdict {
        let later = now
            + chrono::TimeDelta::from_std(self.ask_after.max(Duration::from_secs(5)))
                .unwrap_or_default();
        let mobile = match mobile {
            Ok(mobile) => mobile,
            // Never sent again unasked: asked again later (once the keyring has its key).
            Err(e) => {
                tracing::error!(message_id = %m.id, error = %e, "an SMS in doubt's sealed contact does not open");
                return Verdict::Unknown(
                    later,
                    format!("cannot ask the vendor: the contact does not open: {e}"),
                );
            }
        };
        let day = day.unwrap_or_else(|| crate::sms::sending::vendor_day(now));
        match self.vendor.query(mobile, &m.id.to_string(), day).await {
            Ok(Some(found)) => {
                tracing::info!(message_id = %m.id, status = found.status, "the vendor had the message in doubt: sent");
                metrics::counter!("sms_doubts_settled_total", "found" => "yes").increment(1);
                Verdict::Sent(String::new())
            }
            // Its sender died, maybe before making the call (a claimed batch goes out a
            // share at a time): queued again, the attempt not counted.
            Ok(None) if abandoned => {
                metrics::counter!("sms_doubts_settled_total", "found" => "no").increment(1);
                Verdict::Requeued(now, "its sender stopped before the vendor took it")
            }
            Ok(None) => {
                metrics::counter!("sms_doubts_settled_total", "found" => "no").increment(1);
                retry_or_dead(m.attempts, now, "the vendor never took it".into())
            }
            Err(e) => Verdict::Unknown(later, format!("cannot ask the vendor: {e}")),
        }
    }
}
