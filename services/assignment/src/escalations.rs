//! Escalations from the phone (`dispatch.task.completed`): an owner who records that a
//! case "cannot be renewed in time" gives it up at once (the second assignment's
//! reassignment within the branch, or the city company's support for important
//! customers and group policies, the owner keeping the case); one who judges the
//! customer "at high risk of loss" sends it to HQ's centralized calling. Every call's
//! outcome is kept on the case as its last call, for the supervisors' queue
//! (`crate::supervision`).

use renewal_contract::dispatch::{CallOutcome, PhoneTaskCompleted};
use renewal_contract::subject;
use renewal_platform::inbox::field;
use renewal_platform::{Delivery, HandleError, Handler, Outbox};
use sqlx::{PgConnection, Row};

use crate::second_assignment::{owner_gives_up, send_to_hq};

pub struct CallOutcomes {
    pub outbox: Outbox,
    pub wake: std::sync::Arc<tokio::sync::Notify>,
}

impl Handler for CallOutcomes {
    async fn handle(&self, tx: &mut PgConnection, delivery: &Delivery) -> Result<(), HandleError> {
        if delivery.subject != subject::DISPATCH_TASK_COMPLETED {
            return Ok(());
        }
        let event: PhoneTaskCompleted = delivery.decode()?;
        let outcome = CallOutcome::try_from(event.outcome).unwrap_or(CallOutcome::Unspecified);
        let case_id = field::uuid("case_id", &event.case_id)?;
        let at = field::instant_ms("completed_at_ms", event.completed_at_ms)?;
        let name = outcome
            .as_str_name()
            .trim_start_matches("CALL_OUTCOME_")
            .to_ascii_lowercase();
        // The caller's free text stays in dispatch's task (the reason may name people).
        crate::supervision::record_call(tx, case_id, &event.stage, &name, at).await?;
        if outcome == CallOutcome::Renewed {
            // No step of the second assignment runs while the core system confirms it.
            crate::case_changes::park(tx, case_id).await?;
        }
        if !matches!(
            outcome,
            CallOutcome::CannotRenewInTime | CallOutcome::HighRiskOfLoss
        ) {
            return Ok(());
        }
        let Some(case) = sqlx::query(
            "SELECT phase, city_code, important OR group_policy AS supported FROM assignment.cases
             WHERE case_id = $1 AND state = 'open' AND outcome IS NULL FOR UPDATE",
        )
        .bind(case_id)
        .fetch_optional(&mut *tx)
        .await?
        else {
            // Closed or lapsed: nothing left to escalate.
            return Ok(());
        };
        let phase: String = case.try_get("phase")?;
        let by = if event.agent_id.is_empty() {
            "system"
        } else {
            event.agent_id.as_str()
        };
        let reason = outcome_reason(outcome).to_owned();
        match outcome {
            CallOutcome::CannotRenewInTime if matches!(phase.as_str(), "owned" | "confirming") => {
                let city: String = case.try_get("city_code")?;
                let supported: bool = case.try_get("supported")?;
                owner_gives_up(
                    tx,
                    &self.outbox,
                    &[(case_id, city, supported)],
                    &reason,
                    by,
                    at,
                )
                .await?;
            }
            CallOutcome::HighRiskOfLoss if phase != "hq" => {
                send_to_hq(tx, &self.outbox, &[case_id], &reason, by, at).await?;
            }
            // Already past the step the outcome asks for.
            _ => {}
        }
        metrics::counter!("escalations_total", "outcome" => outcome_reason(outcome)).increment(1);
        Ok(())
    }

    fn committed(&self) {
        self.wake.notify_one();
    }

    /// Outcomes name cases, never a customer: kept whole.
    fn redact(&self, delivery: &Delivery) -> Option<Vec<u8>> {
        Some(delivery.payload.to_vec())
    }
}

fn outcome_reason(outcome: CallOutcome) -> &'static str {
    match outcome {
        CallOutcome::HighRiskOfLoss => "high_risk_of_loss",
        _ => "owner_cannot_renew",
    }
}
