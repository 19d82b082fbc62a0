//! Erasure (`assignment.cmd.erase_personal_data`, from lists). Assignment keeps no
//! customer's personal data: its cases are policy numbers with their city, branch,
//! agents, dates and outcome, and its people are staff. The one place a customer's
//! contact can rest here is a dead letter of a case's opening (`CaseOpened` carries
//! it), which is cleared. It answers `assignment.erasure.done` through its outbox, in
//! the transaction of its inbox row, so the requester sees every service answer.

use std::collections::{HashMap, HashSet};

use renewal_contract::lists::{CaseOpened, ErasePersonalData};
use renewal_contract::platform::ErasureDone;
use renewal_contract::subject;
use renewal_platform::{Clock, Delivery, HandleError, Handler, Outbox};
use sqlx::{PgConnection, Row};
use uuid::Uuid;

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
    let command: ErasePersonalData = delivery.decode()?;
    if command.erasure_id.trim().is_empty() {
        return Err(HandleError::Malformed("erasure_id is empty".into()));
    }
    let (case_ids, unknown) = case_ids(&command.case_ids);
    let mut erased = HashMap::from([(
        "dead_letters".to_owned(),
        redact_dead_letters(tx, &case_ids).await?,
    )]);
    if unknown > 0 {
        erased.insert("unknown".into(), unknown);
    }
    let done = ErasureDone {
        erasure_id: command.erasure_id,
        service: crate::SCHEMA.into(),
        erased,
        kept: KEPT.iter().map(|k| (*k).to_owned()).collect(),
        done_at_ms: now.timestamp_millis(),
    };
    outbox
        .enqueue(tx, subject::ASSIGNMENT_ERASURE_DONE, &done)
        .await?;
    metrics::counter!("erasures_total", "service" => crate::SCHEMA).increment(1);
    Ok(())
}

/// The named cases as ids (each once), and how many names were not a case id.
fn case_ids(raw: &[String]) -> (HashSet<Uuid>, u64) {
    let mut ids = HashSet::with_capacity(raw.len());
    let mut unknown = 0;
    for name in raw {
        match Uuid::parse_str(name.trim()) {
            Ok(id) => {
                ids.insert(id);
            }
            Err(_) => unknown += 1,
        }
    }
    (ids, unknown)
}

/// Clears the customer from the dead letters of the cases' openings; how many changed.
async fn redact_dead_letters(
    tx: &mut PgConnection,
    case_ids: &HashSet<Uuid>,
) -> Result<u64, sqlx::Error> {
    if case_ids.is_empty() {
        return Ok(0);
    }
    let rows = sqlx::query(
        "SELECT id, payload FROM assignment.dead_letters WHERE subject = $1 ORDER BY id FOR UPDATE",
    )
    .bind(subject::LISTS_CASE_OPENED)
    .fetch_all(&mut *tx)
    .await?;
    let mut changed = 0;
    for row in rows {
        let payload: Vec<u8> = row.try_get("payload")?;
        // A letter that does not decode names no case it could be found by.
        let Ok(mut opened) = <CaseOpened as prost::Message>::decode(payload.as_slice()) else {
            continue;
        };
        let ours = Uuid::parse_str(opened.case_id.trim()).is_ok_and(|id| case_ids.contains(&id));
        if !ours || opened.customer.is_none() {
            continue;
        }
        opened.customer = None;
        sqlx::query("UPDATE assignment.dead_letters SET payload = $2 WHERE id = $1")
            .bind(row.try_get::<i64, _>("id")?)
            .bind(prost::Message::encode_to_vec(&opened))
            .execute(&mut *tx)
            .await?;
        changed += 1;
    }
    Ok(changed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_that_are_not_case_ids_are_counted() {
        let a = Uuid::now_v7();
        let (ids, unknown) = case_ids(&[a.to_string(), "x".into(), a.to_string()]);
        assert_eq!(ids, HashSet::from([a]));
        assert_eq!(unknown, 1);
    }
}
