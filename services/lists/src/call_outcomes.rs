//! What the calls found, as the case sees it (`dispatch.task.completed`): every
//! completed call counts towards the lapse register's "what was tried"; a renewal
//! reported on the phone holds the case as `renewal_reported` until the core system
//! confirms it (the scheduler and dispatch stop its contacts on the same event; the
//! daily run reopens it if no confirmation comes); a customer who insured the vehicle
//! elsewhere, or sold or scrapped it, ends the case lost, off the lapse lists.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use renewal_contract::dispatch::{CallOutcome, PhoneTaskCompleted};
use renewal_contract::lists::CaseOutcome;
use renewal_platform::completed_calls::CompletedCall;
use renewal_platform::{Delivery, HandleError, Handler, Outbox};
use sqlx::{PgConnection, Row};

use crate::cases;

pub struct CallOutcomes {
    pub outbox: Outbox,
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
}

impl CallOutcomes {
    /// Counts the calls on their cases in one statement, then ends or holds the cases
    /// whose call said so, in the order the calls came.
    async fn apply(
        &self,
        tx: &mut PgConnection,
        calls: Vec<CompletedCall>,
    ) -> Result<(), HandleError> {
        if calls.is_empty() {
            return Ok(());
        }
        let known = record(tx, &calls).await?;
        if known.len() < calls.len() {
            tracing::info!(
                calls = calls.len(),
                on_known_cases = known.len(),
                "outcomes for cases lists does not know; nothing to record for them"
            );
        }
        for call in &calls {
            let Some(policy_no) = known.get(&call.case_id) else {
                continue;
            };
            match call.outcome {
                CallOutcome::Renewed => {
                    report_renewal(tx, call.case_id, &call.event, call.at).await?
                }
                CallOutcome::InsuredElsewhere => {
                    lost(
                        tx,
                        &self.outbox,
                        policy_no,
                        CaseOutcome::InsuredElsewhere,
                        call.at,
                    )
                    .await?
                }
                CallOutcome::VehicleSold => {
                    lost(
                        tx,
                        &self.outbox,
                        policy_no,
                        CaseOutcome::VehicleSold,
                        call.at,
                    )
                    .await?
                }
                _ => {}
            }
        }
        Ok(())
    }
}

/// Every call counts on its case; the case keeps the outcome of its last call (in the
/// order the calls came) and the latest time. The cases lists knows, with their policy.
async fn record(
    tx: &mut PgConnection,
    calls: &[CompletedCall],
) -> Result<HashMap<uuid::Uuid, String>, sqlx::Error> {
    let rows = sqlx::query(
        "UPDATE lists.cases c SET calls_made = c.calls_made + v.calls,
             last_outcome = v.last_outcome, last_outcome_at = GREATEST(c.last_outcome_at, v.last_at),
             refused_because = COALESCE(v.refused_because, c.refused_because)
         FROM (SELECT case_id, count(*)::int AS calls,
                      (array_agg(outcome ORDER BY n DESC))[1] AS last_outcome, max(at) AS last_at,
                      (array_agg(refusal ORDER BY n DESC) FILTER (WHERE refusal IS NOT NULL))[1]
                          AS refused_because
               FROM unnest($1::uuid[], $2::text[], $3::timestamptz[], $4::text[]) WITH ORDINALITY
                    AS u(case_id, outcome, at, refusal, n)
               GROUP BY case_id) v
         WHERE c.case_id = v.case_id
         RETURNING c.case_id, c.policy_no",
    )
    .bind(calls.iter().map(|c| c.case_id).collect::<Vec<_>>())
    .bind(
        calls
            .iter()
            .map(CompletedCall::outcome_name)
            .collect::<Vec<_>>(),
    )
    .bind(calls.iter().map(|c| c.at).collect::<Vec<_>>())
    .bind(calls.iter().map(refusal).collect::<Vec<_>>())
    .fetch_all(&mut *tx)
    .await?;
    rows.into_iter()
        .map(|row| Ok((row.try_get("case_id")?, row.try_get("policy_no")?)))
        .collect()
}

/// The reason code of a refusal (the customer's words stay with dispatch).
fn refusal(call: &CompletedCall) -> Option<&'static str> {
    (call.outcome == CallOutcome::Refused)
        .then(|| crate::losses::refusal_code(&call.event.reason).as_str())
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
