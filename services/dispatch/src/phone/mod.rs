//! The phone-task gateway: commands become tasks in a queue (the owner's own, the
//! branch, the call center's campaign, HQ), ordered by urgency; agents pull them over
//! HTTP with a lease, keep the lease alive, and complete them with an outcome that is
//! published as an event. A task is never leased to two agents at once; a lease that
//! runs out returns the task to the queue, and after [`MAX_LEASES`] leases without an
//! outcome the task goes to dead letter.

pub mod intake;
pub mod leases;
pub mod outcomes;

use axum::Json;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use renewal_platform::{Clock, Outbox};
use sqlx::PgPool;
use uuid::Uuid;

use crate::config::Hours;

/// Leases a task may have without an outcome before it goes to dead letter.
pub const MAX_LEASES: i32 = 5;
/// Requests from the call center are small.
const MAX_BODY: usize = 64 * 1024;

#[derive(Clone)]
pub struct PhoneTasks {
    pub pool: PgPool,
    pub outbox: Outbox,
    pub clock: Clock,
    pub call_hours: Hours,
    /// Completions being written together.
    completions: std::sync::Arc<outcomes::Completions>,
    /// What a completion needs of the tasks this process leased.
    leased: std::sync::Arc<outcomes::HeldTasks>,
}

impl PhoneTasks {
    pub fn new(pool: PgPool, outbox: Outbox, clock: Clock, call_hours: Hours) -> Self {
        PhoneTasks {
            pool,
            outbox,
            clock,
            call_hours,
            completions: Default::default(),
            leased: Default::default(),
        }
    }
}

/// Everything the pull API can refuse, mapped to HTTP in one place.
#[derive(Debug, thiserror::Error)]
pub enum TaskError {
    #[error("no phone task {0}")]
    NotFound(String),
    /// A stale or foreign lease token, or a task no longer leased.
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    Invalid(String),
    #[error("postgres: {0}")]
    Db(#[from] sqlx::Error),
    /// Postgres failed for a batch this request was part of.
    #[error("{0}")]
    Unavailable(String),
}

impl TaskError {
    fn code(&self) -> &'static str {
        match self {
            TaskError::NotFound(_) => "not_found",
            TaskError::Conflict(_) => "lease_conflict",
            TaskError::Invalid(_) => "invalid_request",
            TaskError::Db(_) | TaskError::Unavailable(_) => "unavailable",
        }
    }
}

impl IntoResponse for TaskError {
    fn into_response(self) -> Response {
        let status = match &self {
            TaskError::NotFound(_) => StatusCode::NOT_FOUND,
            TaskError::Conflict(_) => StatusCode::CONFLICT,
            TaskError::Invalid(_) => StatusCode::BAD_REQUEST,
            TaskError::Db(e) => {
                tracing::error!(error = %e, "phone-task request failed");
                StatusCode::SERVICE_UNAVAILABLE
            }
            TaskError::Unavailable(e) => {
                tracing::error!(error = %e, "phone-task request failed");
                StatusCode::SERVICE_UNAVAILABLE
            }
        };
        metrics::counter!("phone_task_rejects_total", "status" => status.as_str().to_owned())
            .increment(1);
        let message = match &self {
            TaskError::Db(_) | TaskError::Unavailable(_) => "temporarily unavailable".to_owned(),
            other => other.to_string(),
        };
        (
            status,
            Json(serde_json::json!({ "error": self.code(), "message": message })),
        )
            .into_response()
    }
}

pub fn routes(tasks: PhoneTasks) -> Router {
    Router::new()
        .route("/v1/phone-tasks:lease", post(lease))
        .route("/v1/phone-tasks/{action}", post(act))
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(tasks)
}

fn parse<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, TaskError> {
    serde_json::from_slice(body).map_err(|e| TaskError::Invalid(format!("body: {e}")))
}

async fn lease(
    State(tasks): State<PhoneTasks>,
    body: Bytes,
) -> Result<Json<serde_json::Value>, TaskError> {
    let request: leases::LeaseRequest = parse(&body)?;
    let leased = leases::lease(&tasks, &request).await?;
    Ok(Json(serde_json::json!({ "tasks": leased })))
}

/// `POST /v1/phone-tasks/{id}:heartbeat|complete|release` (one path segment, as in
/// Google's custom methods).
async fn act(
    State(tasks): State<PhoneTasks>,
    Path(action): Path<String>,
    body: Bytes,
) -> Result<Json<serde_json::Value>, TaskError> {
    let (id, verb) = action
        .split_once(':')
        .ok_or_else(|| TaskError::NotFound(action.clone()))?;
    let id = Uuid::parse_str(id).map_err(|_| TaskError::NotFound(id.to_owned()))?;
    match verb {
        "heartbeat" => leases::heartbeat(&tasks, id, &parse(&body)?).await,
        "release" => leases::release(&tasks, id, &parse(&body)?).await,
        "complete" => outcomes::complete(&tasks, id, &parse(&body)?).await,
        other => Err(TaskError::NotFound(format!("{id}:{other}"))),
    }
    .map(Json)
}

/// Why a token was refused: the task is unknown (404) or not leased under it (409).
async fn refusal(pool: &PgPool, id: Uuid) -> TaskError {
    match sqlx::query_scalar::<_, String>("SELECT state FROM dispatch.phone_tasks WHERE id = $1")
        .bind(id)
        .fetch_optional(pool)
        .await
    {
        Ok(None) => TaskError::NotFound(id.to_string()),
        Ok(Some(state)) if state == "leased" || state == "open" => {
            TaskError::Conflict("the lease token is stale or belongs to another task".into())
        }
        Ok(Some(state)) => TaskError::Conflict(format!(
            "the task is {state}; the lease token no longer holds it"
        )),
        Err(e) => TaskError::Db(e),
    }
}
