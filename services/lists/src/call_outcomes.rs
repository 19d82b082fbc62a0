//! What the calls found, as the case sees it (`dispatch.task.completed`): every
//! completed call counts towards the lapse register's "what was tried"; a renewal
//! reported on the phone holds the case as `renewal_reported` until the core system
//! confirms it (the scheduler and dispatch stop its contacts on the same event; the
//! daily run reopens it if no confirmation comes); a customer who insured the vehicle
//! elsewhere, or sold or scrapped it, ends the case lost, off the lapse lists.

use chrono::{DateTime, Utc};
use renewal_contract::dispatch::{CallOutcome, PhoneTaskCompleted};
use renewal_contract::lists::CaseOutcome;
use renewal_contract::subject;
use renewal_platform::inbox::field;
use renewal_platform::{Delivery, HandleError, Handler, Outbox};
use sqlx::{PgConnection, Row};

use crate::cases;

pub struct CallOutcomes {
    pub outbox: Outbox,
}

impl Handler for CallOutcomes {
    async fn handle(&self, tx: &mut PgConnection, delivery: &Delivery) -> Result<(), HandleError> {
        if delivery.subject != subject::DISPATCH_TASK_COMPLETED {
            return Ok(());
        }
        let event: PhoneTaskCompleted = delivery.decode()?;
        let case_id = field::uuid("case_id", &event.case_id)?;
        let at = field::instant_ms("completed_at_ms", event.completed_at_ms)?;
        let outcome = CallOutcome::try_from(event.outcome).unwrap_or(CallOutcome::Unspecified);
        let Some(case) = sqlx::query(
            "UPDATE lists.cases SET calls_made = calls_made + 1,
                 last_outcome = $2, last_outcome_at = GREATEST(last_outcome_at, $3)
             WHERE case_id = $1
             RETURNING policy_no, state",
        )
        .bind(case_id)
        .bind(outcome_name(outcome))
        .bind(at)
        .fetch_optional(&mut *tx)
        .await?
        else {
            tracing::info!(task_id = %event.task_id, "outcome for a case lists does not know; nothing to record");
            return Ok(());
        };
        let policy_no: String = case.try_get("policy_no")?;
        match outcome {
            CallOutcome::Renewed => report_renewal(tx, case_id, &event, at).await?,
            CallOutcome::InsuredElsewhere => {
                lost(
                    tx,
                    &self.outbox,
                    &policy_no,
                    CaseOutcome::InsuredElsewhere,
                    at,
                )
                .await?
            }
            CallOutcome::VehicleSold => {
                lost(tx, &self.outbox, &policy_no, CaseOutcome::VehicleSold, at).await?
            }
            _ => {}
        }
        Ok(())
    }
}

/// A renewal reported by the caller: the case waits for the core system's
/// confirmation (a case already closed, or reported before, is left as it is).
async fn report_renewal(
    tx: &mut PgConnection,
    case_id: uuid::Uuid,
    event: &PhoneTaskCompleted,
    at: DateTime<Utc>,
) -> Result<(), sqlx::Error> {
    let reported = sqlx::query(
        "UPDATE lists.cases SET state = 'renewal_reported', reported_at = $2,
             reported_policy_no = NULLIF($3, ''), reported_by = NULLIF($4, '')
         WHERE case_id = $1 AND state IN ('open', 'lapsed')",
    )
    .bind(case_id)
    .bind(at)
    .bind(&event.new_policy_no)
    .bind(&event.agent_id)
    .execute(&mut *tx)
    .await?;
    metrics::counter!("renewals_reported_total").increment(reported.rows_affected());
    Ok(())
}

/// The customer is lost to another insurer or no longer has the vehicle: the case ends.
async fn lost(
    tx: &mut PgConnection,
    outbox: &Outbox,
    policy_no: &str,
    outcome: CaseOutcome,
    at: DateTime<Utc>,
) -> Result<(), sqlx::Error> {
    cases::close(tx, outbox, policy_no, outcome, "", at).await?;
    Ok(())
}

/// The outcome as the register shows it: `unreachable`, `insured_elsewhere`, ...
fn outcome_name(outcome: CallOutcome) -> String {
    outcome
        .as_str_name()
        .trim_start_matches("CALL_OUTCOME_")
        .to_ascii_lowercase()
}
