//! `GET /v1/cases/{policy_no}/timeline`: every stage of the case, past and pending,
//! with when it was wanted, when it fires or fired, and why.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::{PgPool, Row};

#[derive(Debug, Serialize)]
struct Entry {
    stage: String,
    action: String,
    state: String,
    nominal_at: Option<DateTime<Utc>>,
    due_at: DateTime<Utc>,
    fired_at: Option<DateTime<Utc>>,
    note: Option<String>,
}

pub fn routes(pool: PgPool) -> axum::Router {
    axum::Router::new()
        .route("/v1/cases/{policy_no}/timeline", get(timeline))
        .with_state(pool)
}

async fn timeline(State(pool): State<PgPool>, Path(policy_no): Path<String>) -> Response {
    match load(&pool, &policy_no).await {
        Ok(Some(body)) => Json(body).into_response(),
        Ok(None) => (
            StatusCode::NOT_FOUND,
            Json(serde_json::json!({"error": "unknown_case", "detail": format!("no case for policy {policy_no}")})),
        )
            .into_response(),
        Err(e) => {
            tracing::error!(error = %e, "reading a timeline failed");
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                Json(serde_json::json!({"error": "internal"})),
            )
                .into_response()
        }
    }
}

async fn load(pool: &PgPool, policy_no: &str) -> Result<Option<serde_json::Value>, sqlx::Error> {
    let Some(case) = sqlx::query(
        "SELECT case_id, state, closed_reason, plan_city, plan_version, effective_expiry_date, time_zone
         FROM scheduler.cases WHERE policy_no = $1",
    )
    .bind(policy_no)
    .fetch_optional(pool)
    .await?
    else {
        return Ok(None);
    };
    let entries = sqlx::query(
        "SELECT stage, action, state, nominal_at, due_at, fired_at, note FROM scheduler.timers
         WHERE case_id = $1 ORDER BY due_at, stage",
    )
    .bind(case.try_get::<uuid::Uuid, _>("case_id")?)
    .fetch_all(pool)
    .await?
    .iter()
    .map(|r| {
        Ok(Entry {
            stage: r.try_get("stage")?,
            action: r.try_get("action")?,
            state: r.try_get("state")?,
            nominal_at: r.try_get("nominal_at")?,
            due_at: r.try_get("due_at")?,
            fired_at: r.try_get("fired_at")?,
            note: r.try_get("note")?,
        })
    })
    .collect::<Result<Vec<_>, sqlx::Error>>()?;
    Ok(Some(serde_json::json!({
        "policy_no": policy_no,
        "state": case.try_get::<String, _>("state")?,
        "closed_reason": case.try_get::<Option<String>, _>("closed_reason")?,
        "plan": {"city_code": case.try_get::<Option<String>, _>("plan_city")?,
                 "version": case.try_get::<Option<i32>, _>("plan_version")?},
        "effective_expiry_date": case.try_get::<Option<chrono::NaiveDate>, _>("effective_expiry_date")?,
        "time_zone": case.try_get::<Option<String>, _>("time_zone")?,
        "stages": entries,
    })))
}
