//! What every service that keeps a copy of a customer's data shares when lists tells it
//! to erase some cases (`<service>.cmd.erase_personal_data`): reading the command, the
//! answer (`<service>.erasure.done`, what it erased and what it kept on purpose), and
//! clearing the customer from the dead letters of the cases' openings (assignment and
//! the scheduler both consume `lists.case.opened`, which carries the contact). What is
//! erased is each service's own (its `erasure.rs`).

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, Utc};
use renewal_contract::lists::{CaseOpened, ErasePersonalData};
use renewal_contract::platform::ErasureDone;
use renewal_contract::subject;
use sqlx::PgConnection;
use uuid::Uuid;

use crate::{Delivery, HandleError, Outbox};

/// An erasure command as a service executes it.
#[derive(Debug)]
pub struct ErasureCommand {
    pub erasure_id: String,
    /// The named cases, each once, sorted (rows are locked in key order).
    pub case_ids: Vec<Uuid>,
    /// Names that were not a case id: skipped (one bad name does not stop the others'
    /// erasure) and counted in the answer.
    pub unknown: u64,
}

impl ErasureCommand {
    /// Reads the command; one without an erasure id is malformed.
    pub fn decode(delivery: &Delivery) -> Result<ErasureCommand, HandleError> {
        let command: ErasePersonalData = delivery.decode()?;
        if command.erasure_id.trim().is_empty() {
            return Err(HandleError::Malformed("erasure_id is empty".into()));
        }
        let (case_ids, unknown) = case_ids(&command.case_ids);
        Ok(ErasureCommand {
            erasure_id: command.erasure_id,
            case_ids,
            unknown,
        })
    }

    /// Answers the command through the outbox, in the erasure's transaction.
    #[allow(clippy::too_many_arguments)]
    pub async fn answer(
        self,
        tx: &mut PgConnection,
        outbox: &Outbox,
        service: &'static str,
        subject: &str,
        mut erased: HashMap<String, u64>,
        kept: Vec<String>,
        now: DateTime<Utc>,
    ) -> Result<(), sqlx::Error> {
        if self.unknown > 0 {
            erased.insert("unknown".into(), self.unknown);
        }
        let done = ErasureDone {
            erasure_id: self.erasure_id,
            service: service.into(),
            erased,
            kept,
            done_at_ms: now.timestamp_millis(),
        };
        outbox.enqueue(tx, subject, &done).await?;
        metrics::counter!("erasures_total", "service" => service).increment(1);
        Ok(())
    }
}

/// The named cases as ids (each once, sorted), and how many names were not a case id.
pub fn case_ids(raw: &[String]) -> (Vec<Uuid>, u64) {
    let mut ids = Vec::with_capacity(raw.len());
    let mut unknown = 0;
    for name in raw {
        match Uuid::parse_str(name.trim()) {
            Ok(id) => ids.push(id),
            Err(_) => unknown += 1,
        }
    }
    ids.sort_unstable();
    ids.dedup();
    (ids, unknown)
}

/// Clears the customer from the service's dead letters of the cases' openings (a replay
/// of one then brings no contact), sealed or not. How many letters it changed.
pub async fn clear_opened_letters(
    tx: &mut PgConnection,
    outbox: &Outbox,
    case_ids: &[Uuid],
) -> Result<u64, sqlx::Error> {
    if case_ids.is_empty() {
        return Ok(0);
    }
    let wanted: HashSet<String> = case_ids.iter().map(Uuid::to_string).collect();
    crate::dead_letters::rewrite(tx, outbox, &[subject::LISTS_CASE_OPENED], |_, payload| {
        // A letter that does not decode names no case it could be found by.
        let mut opened = <CaseOpened as prost::Message>::decode(payload).ok()?;
        if !wanted.contains(opened.case_id.trim()) || opened.customer.is_none() {
            return None;
        }
        opened.customer = None;
        Some(prost::Message::encode_to_vec(&opened))
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_that_are_not_case_ids_are_counted_and_the_others_kept_once() {
        let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
        let (ids, unknown) = case_ids(&[
            b.to_string(),
            "not-a-case".into(),
            format!(" {a} "),
            a.to_string(),
            String::new(),
        ]);
        assert_eq!(ids, vec![a, b]);
        assert_eq!(unknown, 2);
    }
}
