//! A completed phone call (`dispatch.task.completed`) as the services that learn from
//! it read it: lists counts it on the case, assignment keeps it for the supervisors and
//! escalates, the scheduler reschedules the case's contacts.

use chrono::{DateTime, Utc};
use renewal_contract::dispatch::{CallOutcome, PhoneTaskCompleted};
use renewal_contract::subject;
use uuid::Uuid;

use crate::inbox::{Delivery, HandleError, field};

pub struct CompletedCall {
    pub case_id: Uuid,
    /// When the call ended.
    pub at: DateTime<Utc>,
    pub outcome: CallOutcome,
    pub event: PhoneTaskCompleted,
}

impl CompletedCall {
    /// The call a delivery carries; None for the other dispatch subjects.
    pub fn of(delivery: &Delivery) -> Result<Option<CompletedCall>, HandleError> {
        if delivery.subject != subject::DISPATCH_TASK_COMPLETED {
            return Ok(None);
        }
        let event: PhoneTaskCompleted = delivery.decode()?;
        Ok(Some(CompletedCall {
            case_id: field::uuid("case_id", &event.case_id)?,
            at: field::instant_ms("completed_at_ms", event.completed_at_ms)?,
            outcome: CallOutcome::try_from(event.outcome).unwrap_or(CallOutcome::Unspecified),
            event,
        }))
    }

    /// The calls of a batch of deliveries, in their order.
    pub fn all(deliveries: &[&Delivery]) -> Result<Vec<CompletedCall>, HandleError> {
        let mut calls = Vec::with_capacity(deliveries.len());
        for delivery in deliveries {
            calls.extend(CompletedCall::of(delivery)?);
        }
        Ok(calls)
    }

    /// The outcome as the services keep it: `unreachable`, `renewed`, ...
    pub fn outcome_name(&self) -> String {
        self.outcome
            .as_str_name()
            .trim_start_matches("CALL_OUTCOME_")
            .to_ascii_lowercase()
    }
}
