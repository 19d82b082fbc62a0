//! Plans in the database: the default (`*`) seeded from the repository, a city's own
//! versions added over HTTP. `GET /v1/plans/{city}` shows the plan a new case of the
//! city gets; `PUT /v1/plans/{city}` adds a version and says what it does to open cases.

use axum::Json;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use renewal_platform::{Caller, Problem, Role, Scope};
use sqlx::{PgConnection, PgPool, Row};

use crate::plan::{Plan, PlanError};

pub const DEFAULT_CITY: &str = "*";

/// Stores the repository's default plan as version 1 of `*` unless there is one.
pub async fn seed_default(pool: &PgPool) -> Result<(), String> {
    let plan = Plan::default_plan().map_err(|e| e.to_string())?;
    let stages = serde_json::to_value(&plan.stages).map_err(|e| e.to_string())?;
    sqlx::query(
        "INSERT INTO scheduler.plans (city_code, version, stages, note) VALUES ($1, 1, $2, $3)
         ON CONFLICT DO NOTHING",
    )
    .bind(DEFAULT_CITY)
    .bind(stages)
    .bind(&plan.note)
    .execute(pool)
    .await
    .map_err(|e| e.to_string())?;
    Ok(())
}

/// A stored version of a plan (the one an open case was planned with).
pub async fn version(
    conn: &mut PgConnection,
    city: &str,
    version: i32,
) -> Result<Option<Plan>, sqlx::Error> {
    let row = sqlx::query(
        "SELECT stages, note FROM scheduler.plans WHERE city_code = $1 AND version = $2",
    )
    .bind(city)
    .bind(version)
    .fetch_optional(&mut *conn)
    .await?;
    let Some(row) = row else { return Ok(None) };
    let stages: serde_json::Value = row.try_get("stages")?;
    Ok(Some(Plan {
        note: row.try_get("note")?,
        stages: serde_json::from_value(stages).map_err(|e| sqlx::Error::Decode(Box::new(e)))?,
    }))
}

/// The plan a new case of `city` gets: (plan city, version, plan).
pub async fn current(
    conn: &mut PgConnection,
    city: &str,
) -> Result<Option<(String, i32, Plan)>, sqlx::Error> {
    let row = sqlx::query(
        "SELECT city_code, version, stages, note FROM scheduler.plans
         WHERE city_code = $1 OR city_code = '*'
         ORDER BY (city_code = '*'), version DESC LIMIT 1",
    )
    .bind(city)
    .fetch_optional(&mut *conn)
    .await?;
    let Some(row) = row else { return Ok(None) };
    let stages: serde_json::Value = row.try_get("stages")?;
    let plan = Plan {
        note: row.try_get("note")?,
        stages: serde_json::from_value(stages).map_err(|e| sqlx::Error::Decode(Box::new(e)))?,
    };
    Ok(Some((
        row.try_get("city_code")?,
        row.try_get("version")?,
        plan,
    )))
}

pub fn routes(pool: PgPool) -> renewal_platform::http::Routes {
    renewal_platform::http::Routes::new()
        .route("/v1/plans/{city_code}", get(show).put(replace))
        .finish(|router| router.with_state(pool))
}

/// Plans are changed by HQ (for every city, `*`) and by a city's admin (their own).
const PLANNERS: &[Role] = &[Role::CityAdmin, Role::HqAdmin];

#[derive(Debug, thiserror::Error)]
enum PlanApiError {
    #[error("{0}")]
    Refused(#[from] Problem),
    #[error(transparent)]
    Plan(#[from] PlanError),
    #[error("postgres: {0}")]
    Db(#[from] sqlx::Error),
}

impl IntoResponse for PlanApiError {
    fn into_response(self) -> Response {
        match self {
            PlanApiError::Refused(p) => p,
            PlanApiError::Plan(e) => {
                Problem::new(StatusCode::BAD_REQUEST, "invalid_plan", e.to_string())
            }
            PlanApiError::Db(e) => Problem::database(&e),
        }
        .into_response()
    }
}

#[utoipa::path(get, path = "/v1/plans/{city_code}", tag = "plans",
    params(("city_code" = String, Path, description = "A city, or * for the plan of every city without its own")),
    responses((status = 200, body = serde_json::Value, description = "The city's current plan: city_code, plan_city, version, note, stages"),
              (status = 400, content_type = "application/problem+json", body = renewal_platform::openapi::ProblemDocument), renewal_platform::openapi::Refusals))]
async fn show(
    State(pool): State<PgPool>,
    caller: Caller,
    Path(city): Path<String>,
) -> Result<Json<serde_json::Value>, PlanApiError> {
    caller.authorize(PLANNERS, Scope::city(&city))?;
    let mut conn = pool.acquire().await?;
    let Some((plan_city, version, plan)) = current(&mut conn, &city).await? else {
        return Err(PlanApiError::Plan(PlanError::Empty));
    };
    Ok(Json(serde_json::json!({
        "city_code": city, "plan_city": plan_city, "version": version,
        "note": plan.note, "stages": plan.stages,
    })))
}

/// A new version for the city (or `*`): cases opened from now on follow it; open
/// cases keep the timers their version gave them.
#[utoipa::path(put, path = "/v1/plans/{city_code}", tag = "plans",
    params(("city_code" = String, Path)), request_body = crate::plan::Plan,
    responses((status = 200, body = serde_json::Value, description = "The new version; open cases keep theirs"),
              (status = 400, description = "The plan is refused, with the reason", content_type = "application/problem+json", body = renewal_platform::openapi::ProblemDocument), renewal_platform::openapi::Refusals))]
async fn replace(
    State(pool): State<PgPool>,
    caller: Caller,
    Path(city): Path<String>,
    json: Result<Json<Plan>, JsonRejection>,
) -> Result<Json<serde_json::Value>, PlanApiError> {
    caller.authorize(PLANNERS, Scope::city(&city))?;
    let plan = json
        .map(|Json(p)| p)
        .map_err(|e| PlanError::Json(e.body_text()))?;
    plan.check()?;
    let stages =
        serde_json::to_value(&plan.stages).map_err(|e| sqlx::Error::Encode(Box::new(e)))?;
    let mut tx = pool.begin().await?;
    sqlx::query("SELECT pg_advisory_xact_lock(hashtext('scheduler.plans:' || $1))")
        .bind(&city)
        .execute(&mut *tx)
        .await?;
    let version: i32 = sqlx::query_scalar(
        "INSERT INTO scheduler.plans (city_code, version, stages, note)
         SELECT $1, COALESCE(max(version), 0) + 1, $2, $3 FROM scheduler.plans WHERE city_code = $1
         RETURNING version",
    )
    .bind(&city)
    .bind(stages)
    .bind(&plan.note)
    .fetch_one(&mut *tx)
    .await?;
    let open: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM scheduler.cases WHERE state = 'open' AND (city_code = $1 OR $1 = '*')",
    )
    .bind(&city)
    .fetch_one(&mut *tx)
    .await?;
    tx.commit().await?;
    tracing::info!(city = %city, version, "reminder plan changed");
    Ok(Json(serde_json::json!({
        "city_code": city, "version": version,
        "applies_to": "cases opened from now on",
        "open_cases_keeping_their_plan": open,
    })))
}
