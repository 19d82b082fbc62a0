//! Erasure (`assignment.cmd.erase_personal_data`, from lists). Assignment keeps no
//! customer's personal data: its cases are policy numbers with their city, branch,
//! agents, dates and outcome, and its people are staff. The one place a customer's
//! contact can rest here is a dead letter of a case's opening (`CaseOpened` carries
//! it), which is cleared. It answers `assignment.erasure.done` through its outbox, in
//! the transaction of its inbox row, so the requester sees every service answer.

use std::collections::HashMap;

use renewal_contract::subject;
use renewal_platform::erasure::{self, ErasureCommand};
use renewal_platform::{Clock, Delivery, HandleError, Handler, Outbox};
use sqlx::PgConnection;

/// What assignment keeps of an erased case, on purpose.
const KEPT: &[&str] = &[
    "no customer personal data is kept by assignment: cases (policy number, city, branch, owner and credited agents, dates, outcome), claims and owner history stay for ownership and credit",
    "declines, owner and routing history keep the reasons staff typed (free text about the case, not screened for personal data)",
    "agents' and branches' names are staff data, not the customer's",
];

pub struct Erasures {
    pub clock: Clock,
    pub outbox: Outbox,
}

impl Handler for Erasures {
    async fn handle(&self, tx: &mut PgConnection, delivery: &Delivery) -> Result<(), HandleError> {
        if delivery.subject != subject::ASSIGNMENT_CMD_ERASE_PERSONAL_DATA {
            return Err(HandleError::Malformed(format!(
                "unexpected subject {}",
                delivery.subject
            )));
        }
        erase(tx, &self.outbox, self.clock.now(), delivery).await
    }

    /// The command names cases, never a customer: a refused one is kept whole.
    fn redact(&self, delivery: &Delivery) -> Option<Vec<u8>> {
        Some(delivery.payload.to_vec())
    }
}

/// Erases what assignment keeps of the command's cases and answers it (the commands
/// consumer, whose `assignment.cmd.>` also takes erasures, comes here too).
pub async fn erase(
    tx: &mut PgConnection,
    outbox: &Outbox,
    now: chrono::DateTime<chrono::Utc>,
    delivery: &Delivery,
) -> Result<(), HandleError> {
    let command = ErasureCommand::decode(delivery)?;
    let letters = erasure::clear_opened_letters(tx, outbox, &command.case_ids).await?;
    let erased = HashMap::from([("dead_letters".to_owned(), letters)]);
    let kept = KEPT.iter().map(|k| (*k).to_owned()).collect();
    let done = subject::ASSIGNMENT_ERASURE_DONE;
    command
        .answer(tx, outbox, crate::SCHEMA, done, erased, kept, now)
        .await?;
    Ok(())
}
