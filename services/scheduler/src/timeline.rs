//! `GET /v1/cases/{policy_no}/timeline`: every stage of the case, past and pending,
//! with when it was wanted, when it fires or fired, and why.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::get;
use chrono::{DateTime, Utc};
use renewal_platform::{Caller, Problem, Role, Scope};
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

pub fn routes(pool: PgPool) -> renewal_platform::http::Routes {
    renewal_platform::http::Routes::new()
        .route("/v1/cases/{policy_no}/timeline", get(timeline))
        .finish(|router| router.with_state(pool))
}

/// The case's owner, its branch's staff, its city and HQ.
const READERS: &[Role] = &[
    Role::Agent,
    Role::Supervisor,
    Role::BranchAdmin,
    Role::CityAdmin,
    Role::HqAdmin,
];

#[utoipa::path(get, path = "/v1/cases/{policy_no}/timeline", tag = "cases",
    params(("policy_no" = String, Path)),
    responses((status = 200, body = serde_json::Value, description = "Every stage of the case: planned, fired, skipped or cancelled, and why"),
              (status = 404, content_type = "application/problem+json", body = renewal_platform::openapi::ProblemDocument), renewal_platform::openapi::Refusals))]
async fn timeline(
    State(pool): State<PgPool>,
    caller: Caller,
    Path(policy_no): Path<String>,
) -> Result<Json<serde_json::Value>, Problem> {
    caller.require(READERS)?;
    let scope: Option<(Option<String>, Option<String>, Option<String>)> = sqlx::query_as(
        "SELECT c.city_code, c.branch_code, o.owner_agent
         FROM scheduler.cases c LEFT JOIN scheduler.owners o USING (case_id) WHERE c.policy_no = $1",
    )
    .bind(&policy_no)
    .fetch_optional(&pool)
    .await
    .map_err(|e| Problem::database(&e))?;
    let unknown = || {
        Problem::new(
            StatusCode::NOT_FOUND,
            "unknown_case",
            format!("no case for policy {policy_no}"),
        )
    };
    let (city, branch, owner) = scope.ok_or_else(unknown)?;
    caller.authorize(
        READERS,
        Scope {
            agent: owner.as_deref(),
            branch: branch.as_deref(),
            city: city.as_deref(),
        },
    )?;
    match load(&pool, &policy_no).await {
        Ok(Some(body)) => Ok(Json(body)),
        Ok(None) => Err(unknown()),
        Err(e) => Err(Problem::database(&e)),
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
