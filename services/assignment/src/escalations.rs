//! Escalations from the phone (`dispatch.task.completed`): an owner who records that a
//! case "cannot be renewed in time" gives it up at once (the second assignment's
//! reassignment within the branch, or the city company's support for important
//! customers and group policies, the owner keeping the case); one who judges the
//! customer "at high risk of loss" sends it to HQ's centralized calling. Every call's
//! outcome is kept on the case as its last call, for the supervisors' queue
//! (`crate::supervision`).

use renewal_contract::dispatch::CallOutcome;
use renewal_platform::completed_calls::CompletedCall;
use renewal_platform::{Delivery, HandleError, Handler, Outbox};
use sqlx::{PgConnection, Row};

use crate::second_assignment::{owner_gives_up, send_to_hq};

pub struct CallOutcomes {
    pub outbox: Outbox,
    pub wake: std::sync::Arc<tokio::sync::Notify>,
}

impl Handler for CallOutcomes {
    async fn handle(&self, tx: &mut PgConnection, delivery: &Delivery) -> Result<(), HandleError> {
        self.apply(tx, CompletedCall::of(delivery)?.into_iter().collect())
            .await
    }

    async fn handle_batch(
        &self,
        tx: &mut PgConnection,
        deliveries: &[&Delivery],
    ) -> Result<(), HandleError> {
        self.apply(tx, CompletedCall::all(deliveries)?).await
    }

    fn committed(&self) {
        self.wake.notify_one();
    }

    /// Outcomes name cases, never a customer: kept whole.
    fn redact(&self, delivery: &Delivery) -> Option<Vec<u8>> {
        Some(delivery.payload.to_vec())
    }
}

impl CallOutcomes {
    /// Keeps each case's last call (one statement for all), then, in the order the
    /// calls came, parks a case reported renewed and escalates the ones the caller
    /// gave up on.
    async fn apply(
        &self,
        tx: &mut PgConnection,
        calls: Vec<CompletedCall>,
    ) -> Result<(), HandleError> {
        if calls.is_empty() {
            return Ok(());
        }
        crate::supervision::record_calls(
            tx,
            &calls
                .iter()
                .map(|c| (c.case_id, c.event.stage.as_str(), c.outcome_name(), c.at))
                .collect::<Vec<_>>(),
        )
        .await?;
        crate::progress::record(
            tx,
            &calls
                .iter()
                .map(|c| (c.case_id, c.event.agent_id.as_str(), c.outcome_name(), c.at))
                .collect::<Vec<_>>(),
        )
        .await?;
        for call in &calls {
            match call.outcome {
                // No step of the second assignment runs while the core system confirms it.
                CallOutcome::Renewed => crate::case_changes::park(tx, call.case_id).await?,
                CallOutcome::CannotRenewInTime | CallOutcome::HighRiskOfLoss => {
                    self.escalate(tx, call).await?
                }
                _ => {}
            }
        }
        Ok(())
    }

    async fn escalate(
        &self,
        tx: &mut PgConnection,
        call: &CompletedCall,
    ) -> Result<(), HandleError> {
        let Some(case) = sqlx::query(
            "SELECT phase, city_code, important OR group_policy AS supported FROM assignment.cases
             WHERE case_id = $1 AND state = 'open' AND outcome IS NULL FOR UPDATE",
        )
        .bind(call.case_id)
        .fetch_optional(&mut *tx)
        .await?
        else {
            // Closed or lapsed: nothing left to escalate.
            return Ok(());
        };
        let phase: String = case.try_get("phase")?;
        let by = if call.event.agent_id.is_empty() {
            "system"
        } else {
            call.event.agent_id.as_str()
        };
        let reason = outcome_reason(call.outcome).to_owned();
        match call.outcome {
            CallOutcome::CannotRenewInTime if matches!(phase.as_str(), "owned" | "confirming") => {
                let city: String = case.try_get("city_code")?;
                let supported: bool = case.try_get("supported")?;
                owner_gives_up(
                    tx,
                    &self.outbox,
                    &[(call.case_id, city, supported)],
                    &reason,
                    by,
                    call.at,
                )
                .await?;
            }
            CallOutcome::HighRiskOfLoss if phase != "hq" => {
                send_to_hq(tx, &self.outbox, &[call.case_id], &reason, by, call.at).await?;
            }
            // Already past the step the outcome asks for.
            _ => {}
        }
        metrics::counter!("escalations_total", "outcome" => outcome_reason(call.outcome))
            .increment(1);
        Ok(())
    }
}

fn outcome_reason(outcome: CallOutcome) -> &'static str {
    match outcome {
        CallOutcome::HighRiskOfLoss => "high_risk_of_loss",
        _ => "owner_cannot_renew",
    }
}
