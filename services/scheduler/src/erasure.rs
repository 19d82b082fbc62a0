//! Erasure (`scheduler.cmd.erase_personal_data`, from lists: a customer's request, or
//! the retention of cases closed long ago). In the transaction of its inbox row the
//! scheduler blanks the contact of each named case (the sealed name, mobile and plate
//! become the empty value, the mobile's blind index none), cancels the case's pending
//! timers (the command may come before the case's closing, which travels on another
//! stream), clears the contact from the dead letters of the case's opening, and answers
//! `scheduler.erasure.done` through its outbox. Each case keeps its row and its timers'
//! history, so the figures stay. An erased case never fires again (`timers::claim`), and
//! an opening that arrives after its erasure stores no contact and plans only cancelled
//! timers (a case erased before the scheduler heard of it is recorded as closed).

use std::collections::HashMap;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use renewal_contract::subject;
use renewal_platform::erasure::{self, ErasureCommand};
use renewal_platform::{Clock, Delivery, HandleError, Handler, Outbox};
use sqlx::PgConnection;
use tokio::sync::Notify;
use uuid::Uuid;

/// What the scheduler keeps of an erased case, on purpose.
const KEPT: &[&str] = &[
    "cases: each case's row (policy number, dates, city, branch, reminder plan, state) and its timers' history, for the figures; the contact (name, mobile, plate) and the mobile's blind index are blanked",
    "owners: the agent code owning each case (staff data, not the customer's)",
];

pub struct Erasures {
    pub clock: Clock,
    pub outbox: Outbox,
    pub timers_changed: Arc<Notify>,
}

impl Handler for Erasures {
    async fn handle(&self, tx: &mut PgConnection, delivery: &Delivery) -> Result<(), HandleError> {
        if delivery.subject != subject::SCHEDULER_CMD_ERASE_PERSONAL_DATA {
            return Err(HandleError::Malformed(format!(
                "unexpected subject {}",
                delivery.subject
            )));
        }
        let command = ErasureCommand::decode(delivery)?;
        let now = self.clock.now();
        let erased = erase(tx, &self.outbox, &command.case_ids, now).await?;
        let kept = KEPT.iter().map(|k| (*k).to_owned()).collect();
        let done = subject::SCHEDULER_ERASURE_DONE;
        command
            .answer(tx, &self.outbox, crate::SCHEMA, done, erased, kept, now)
            .await?;
        Ok(())
    }

    fn committed(&self) {
        self.timers_changed.notify_one();
    }

    /// The command names cases, never a customer: a refused one is kept whole.
    fn redact(&self, delivery: &Delivery) -> Option<Vec<u8>> {
        Some(delivery.payload.to_vec())
    }
}

/// Erases what the scheduler keeps of the cases; the counts by kind.
async fn erase(
    tx: &mut PgConnection,
    outbox: &Outbox,
    case_ids: &[Uuid],
    now: DateTime<Utc>,
) -> Result<HashMap<String, u64>, sqlx::Error> {
    // A case not heard of yet is recorded closed and erased, so that its opening,
    // should it still come, brings no contact and no timer.
    sqlx::query(
        "INSERT INTO scheduler.cases (case_id, policy_no, state, closed_reason, closed_at, contact_enc, erased_at)
         SELECT id, '', 'closed', 'erased', $2, '\\x'::bytea, $2 FROM unnest($1::uuid[]) AS id
         ON CONFLICT (case_id) DO NOTHING",
    )
    .bind(case_ids)
    .bind(now)
    .execute(&mut *tx)
    .await?;
    // Locked in key order (as the ids are sorted): what each case held before.
    let held: i64 = sqlx::query_scalar(
        "SELECT count(*) FILTER (WHERE length(contact_enc) > 0 OR length(mobile_enc) > 0
                                     OR mobile_index IS NOT NULL)
         FROM (SELECT contact_enc, mobile_enc, mobile_index FROM scheduler.cases WHERE case_id = ANY($1)
               ORDER BY case_id FOR UPDATE) c",
    )
    .bind(case_ids)
    .fetch_one(&mut *tx)
    .await?;
    // No blind index rather than an empty one: the frequency cap takes cases with equal
    // indexes for one customer, and every erased case is nobody's.
    sqlx::query(
        "UPDATE scheduler.cases SET contact_enc = '\\x', mobile_enc = NULL, mobile_index = NULL,
             erased_at = coalesce(erased_at, $2)
         WHERE case_id = ANY($1)
           AND (erased_at IS NULL OR contact_enc IS NULL OR length(contact_enc) > 0
                OR mobile_enc IS NOT NULL OR mobile_index IS NOT NULL)",
    )
    .bind(case_ids)
    .bind(now)
    .execute(&mut *tx)
    .await?;
    let timers = crate::cases::cancel_pending(tx, case_ids, "erased", None).await?;
    let dead_letters = erasure::clear_opened_letters(tx, outbox, case_ids).await?;
    Ok(HashMap::from([
        ("cases".to_owned(), held as u64),
        ("timers_cancelled".to_owned(), timers),
        ("dead_letters".to_owned(), dead_letters),
    ]))
}
