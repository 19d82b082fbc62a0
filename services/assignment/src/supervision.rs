//! The branch supervisors' queue: the T-10 alerts (`scheduler.case.supervisor_alert`)
//! of cases not renewed, read with `GET /v1/branches/{branch}/alerts` while the case is
//! still being worked before its expiry, each with its owner to push and its last call
//! (kept from `dispatch.task.completed`). Policy numbers and staff codes only: no
//! customer's personal data.

use axum::Json;
use axum::extract::{Path, State};
use chrono::{DateTime, NaiveDate, TimeZone, Utc};
use renewal_contract::scheduler::SupervisorAlert;
use renewal_contract::subject;
use renewal_platform::inbox::field;
use renewal_platform::{Caller, Delivery, HandleError, Handler};
use serde::Serialize;
use sqlx::{PgConnection, Row};

use crate::access;
use crate::claims::ClaimApi;
use crate::refusals::Refusal;

/// At most this many alerts in one answer (the most urgent).
const MAX_ALERTS: i64 = 500;

pub struct Alerts;

impl Handler for Alerts {
    async fn handle(&self, tx: &mut PgConnection, delivery: &Delivery) -> Result<(), HandleError> {
        if delivery.subject != subject::SCHEDULER_CASE_SUPERVISOR_ALERT {
            return Ok(());
        }
        let alert: SupervisorAlert = delivery.decode()?;
        let id = field::uuid("alert_id", &alert.alert_id)?;
        let case_id = field::uuid("case_id", &alert.case_id)?;
        let raised_at = Utc
            .timestamp_millis_opt(alert.due_at_ms)
            .single()
            .ok_or_else(|| HandleError::Malformed(format!("due_at_ms {}", alert.due_at_ms)))?;
        sqlx::query(
            "INSERT INTO assignment.supervisor_alerts (alert_id, case_id, stage, raised_at)
             VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
        )
        .bind(id)
        .bind(case_id)
        .bind(&alert.stage)
        .bind(raised_at)
        .execute(&mut *tx)
        .await?;
        metrics::counter!("supervisor_alerts_total").increment(1);
        Ok(())
    }

    /// Alerts name cases and staff, never a customer: kept whole.
    fn redact(&self, delivery: &Delivery) -> Option<Vec<u8>> {
        Some(delivery.payload.to_vec())
    }
}

/// Keeps each case's last call (stage, outcome, when), in the order the calls ended:
/// of `calls` (case, stage, outcome, ended at), a case takes its latest (the later in
/// the list where two ended at once), and only if it ended after the one it has.
pub async fn record_calls(
    tx: &mut PgConnection,
    calls: &[(uuid::Uuid, &str, String, DateTime<Utc>)],
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE assignment.cases c
         SET last_call_stage = v.stage, last_outcome = v.outcome, last_outcome_at = v.at
         FROM (SELECT DISTINCT ON (case_id) case_id, stage, outcome, at
               FROM unnest($1::uuid[], $2::text[], $3::text[], $4::timestamptz[]) WITH ORDINALITY
                    AS u(case_id, stage, outcome, at, n)
               ORDER BY case_id, at DESC, n DESC) v
         WHERE c.case_id = v.case_id AND (c.last_outcome_at IS NULL OR c.last_outcome_at <= v.at)",
    )
    .bind(calls.iter().map(|c| c.0).collect::<Vec<_>>())
    .bind(calls.iter().map(|c| c.1).collect::<Vec<_>>())
    .bind(calls.iter().map(|c| c.2.as_str()).collect::<Vec<_>>())
    .bind(calls.iter().map(|c| c.3).collect::<Vec<_>>())
    .execute(&mut *tx)
    .await?;
    Ok(())
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct AtRiskCase {
    pub policy_no: String,
    /// The owner to push ("HQ" once HQ's outbound team has it).
    pub owner_agent: Option<String>,
    pub phase: String,
    /// The alert's stage, e.g. "T-10".
    pub stage: String,
    pub expiry_date: NaiveDate,
    pub raised_at: DateTime<Utc>,
    /// The case's last completed call (null when none was completed yet): its stage,
    /// outcome and when (the caller's own words stay with the call, in dispatch).
    pub last_call_stage: Option<String>,
    pub last_outcome: Option<String>,
    pub last_outcome_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct AtRiskCases {
    pub branch_code: String,
    /// Most urgent expiry first.
    pub alerts: Vec<AtRiskCase>,
}

/// `GET /v1/branches/{branch_code}/alerts`: the branch's at-risk cases (its T-10
/// alerts of cases still open and not lapsed), with their owners and last calls.
#[utoipa::path(get, path = "/v1/branches/{branch_code}/alerts", tag = "supervision",
    params(("branch_code" = String, Path)),
    responses((status = 200, body = AtRiskCases), renewal_platform::openapi::Refusals,
              (status = 422, description = "No such branch", content_type = "application/problem+json", body = renewal_platform::openapi::ProblemDocument)))]
pub async fn branch_alerts(
    State(api): State<ClaimApi>,
    caller: Caller,
    Path(branch): Path<String>,
) -> Result<Json<AtRiskCases>, Refusal> {
    if !access::read_branch(&api.pool, &caller, &branch).await? {
        return Err(Refusal::UnknownBranch(branch));
    }
    let rows = sqlx::query(
        "SELECT c.policy_no, c.owner_agent, c.phase, a.stage, c.effective_expiry_date, c.expiry_date,
                a.raised_at, c.last_call_stage, c.last_outcome, c.last_outcome_at
         FROM assignment.supervisor_alerts a JOIN assignment.cases c USING (case_id)
         WHERE coalesce(c.owner_branch, c.branch_code) = $1 AND c.state = 'open' AND c.outcome IS NULL
         ORDER BY coalesce(c.effective_expiry_date, c.expiry_date), c.policy_no
         LIMIT $2",
    )
    .bind(&branch)
    .bind(MAX_ALERTS)
    .fetch_all(&api.pool)
    .await?;
    let alerts = rows
        .iter()
        .map(|r| {
            let expiry: Option<NaiveDate> = r.try_get("effective_expiry_date")?;
            Ok(AtRiskCase {
                policy_no: r.try_get("policy_no")?,
                owner_agent: r.try_get("owner_agent")?,
                phase: r.try_get("phase")?,
                stage: r.try_get("stage")?,
                expiry_date: expiry.map_or_else(|| r.try_get("expiry_date"), Ok)?,
                raised_at: r.try_get("raised_at")?,
                last_call_stage: r.try_get("last_call_stage")?,
                last_outcome: r.try_get("last_outcome")?,
                last_outcome_at: r.try_get("last_outcome_at")?,
            })
        })
        .collect::<Result<Vec<_>, sqlx::Error>>()?;
    Ok(Json(AtRiskCases {
        branch_code: branch,
        alerts,
    }))
}
