//! Owners: every change is a row in the history and an event with who, when and why.
//! `GET /v1/cases/{policy_no}` shows the current owner, the credited agent and history.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use renewal_contract::assignment::OwnerAssigned;
use renewal_contract::subject;
use renewal_platform::Outbox;
use serde::Serialize;
use sqlx::{PgConnection, PgPool, Row};
use uuid::Uuid;

/// Makes `owner` the case's owner and publishes the change.
pub async fn assign(
    tx: &mut PgConnection,
    outbox: &Outbox,
    case_id: Uuid,
    owner: &str,
    reason: &str,
    by: &str,
    now: DateTime<Utc>,
) -> Result<(), sqlx::Error> {
    let row = sqlx::query(
        "UPDATE assignment.cases c SET owner_agent = $2
         FROM (SELECT case_id, owner_agent AS previous FROM assignment.cases WHERE case_id = $1 FOR UPDATE) old
         WHERE c.case_id = old.case_id
         RETURNING c.policy_no, c.branch_code, c.credited_agent, old.previous",
    )
    .bind(case_id)
    .bind(owner)
    .fetch_one(&mut *tx)
    .await?;
    let previous: Option<String> = row.try_get("previous")?;
    sqlx::query(
        "INSERT INTO assignment.owner_history (case_id, owner_agent, previous_owner, reason, assigned_by, assigned_at)
         VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(case_id)
    .bind(owner)
    .bind(&previous)
    .bind(reason)
    .bind(by)
    .bind(now)
    .execute(&mut *tx)
    .await?;
    let event = OwnerAssigned {
        case_id: case_id.to_string(),
        policy_no: row.try_get("policy_no")?,
        branch_code: row.try_get("branch_code")?,
        owner_agent: owner.to_owned(),
        previous_owner: previous.unwrap_or_default(),
        credited_agent: row.try_get("credited_agent")?,
        reason: reason.to_owned(),
        assigned_by: by.to_owned(),
        assigned_at_ms: now.timestamp_millis(),
    };
    outbox
        .enqueue(tx, subject::ASSIGNMENT_OWNER_ASSIGNED, &event)
        .await?;
    metrics::counter!("owners_assigned_total", "reason" => reason.to_owned()).increment(1);
    Ok(())
}

pub fn routes(pool: PgPool) -> Router {
    Router::new()
        .route("/v1/cases/{policy_no}", get(show))
        .with_state(pool)
}

#[derive(Serialize)]
struct CaseView {
    case_id: Uuid,
    policy_no: String,
    branch_code: String,
    state: String,
    owner_agent: Option<String>,
    credited_agent: String,
    history: Vec<OwnerChange>,
}

#[derive(Serialize)]
struct OwnerChange {
    owner_agent: String,
    previous_owner: Option<String>,
    reason: String,
    assigned_by: String,
    assigned_at: DateTime<Utc>,
}

async fn show(State(pool): State<PgPool>, Path(policy_no): Path<String>) -> Response {
    match load(&pool, &policy_no).await {
        Ok(Some(view)) => Json(view).into_response(),
        Ok(None) => (
            StatusCode::NOT_FOUND,
            Json(serde_json::json!({"error": "unknown_case"})),
        )
            .into_response(),
        Err(e) => {
            tracing::error!(error = %e, "reading a case failed");
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                Json(serde_json::json!({"error": "internal"})),
            )
                .into_response()
        }
    }
}

async fn load(pool: &PgPool, policy_no: &str) -> Result<Option<CaseView>, sqlx::Error> {
    let Some(case) = sqlx::query(
        "SELECT case_id, policy_no, branch_code, state, owner_agent, credited_agent FROM assignment.cases WHERE policy_no = $1",
    )
    .bind(policy_no)
    .fetch_optional(pool)
    .await?
    else {
        return Ok(None);
    };
    let case_id: Uuid = case.try_get("case_id")?;
    let history = sqlx::query(
        "SELECT owner_agent, previous_owner, reason, assigned_by, assigned_at FROM assignment.owner_history
         WHERE case_id = $1 ORDER BY id",
    )
    .bind(case_id)
    .fetch_all(pool)
    .await?
    .iter()
    .map(|r| {
        Ok(OwnerChange {
            owner_agent: r.try_get("owner_agent")?,
            previous_owner: r.try_get("previous_owner")?,
            reason: r.try_get("reason")?,
            assigned_by: r.try_get("assigned_by")?,
            assigned_at: r.try_get("assigned_at")?,
        })
    })
    .collect::<Result<Vec<_>, sqlx::Error>>()?;
    Ok(Some(CaseView {
        case_id,
        policy_no: case.try_get("policy_no")?,
        branch_code: case.try_get("branch_code")?,
        state: case.try_get("state")?,
        owner_agent: case.try_get("owner_agent")?,
        credited_agent: case.try_get("credited_agent")?,
        history,
    }))
}
