//! The phone-task gateway: commands become tasks in a queue (the owner's own, the
//! branch, the call center's campaign, HQ), ordered by urgency; agents pull them over
//! HTTP with a lease, keep the lease alive, and complete them with an outcome that is
//! published as an event. A task is never leased to two agents at once; a lease that
//! runs out returns the task to the queue, and after [`MAX_LEASES`] leases without an
//! outcome the task goes to dead letter. Operations see each queue's figures and the
//! dead tasks, and HQ may put a dead task back in its queue (`queues`).

pub mod group_commit;
pub mod intake;
pub mod leases;
pub mod outcomes;
pub mod queues;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use renewal_platform::{Caller, Clock, Outbox, Problem, Role};
use sqlx::PgPool;
use uuid::Uuid;

use crate::config::Hours;

/// Leases a task may have without an outcome before it goes to dead letter.
pub const MAX_LEASES: i32 = 5;
/// Requests from the call center are small.
const MAX_BODY: usize = 64 * 1024;
/// Lease requests one agent's desk may make per second (a person takes one call at
/// a time; a desk leasing in batches needs a few).
pub const LEASES_PER_SECOND: u32 = 50;
/// How far ahead a call back, a retry or a promise may be set.
pub const FARTHEST_AHEAD: chrono::Duration = chrono::Duration::days(60);
/// Tasks one agent may hold at once: a puller that leases without completing cannot
/// empty a queue.
pub const MAX_OPEN_LEASES: i64 = 200;

#[derive(Clone)]
pub struct PhoneTasks {
    pub pool: PgPool,
    pub outbox: Outbox,
    pub clock: Clock,
    pub call_hours: Hours,
    /// Opens the tasks' sealed contacts.
    pub pii: std::sync::Arc<renewal_platform::pii::PiiCipher>,
    /// Completions being written together.
    completions: std::sync::Arc<outcomes::Completions>,
    /// What a completion needs of the tasks this process leased.
    leased: std::sync::Arc<outcomes::HeldTasks>,
    /// Leases being written together.
    leases: std::sync::Arc<leases::Leases>,
    /// Leases per caller and the agent it names.
    lease_quota: renewal_platform::quotas::Quota,
}

impl PhoneTasks {
    pub fn new(
        pool: PgPool,
        outbox: Outbox,
        clock: Clock,
        call_hours: Hours,
        pii: std::sync::Arc<renewal_platform::pii::PiiCipher>,
    ) -> Self {
        PhoneTasks {
            pool,
            outbox,
            clock,
            call_hours,
            pii,
            completions: std::sync::Arc::new(outcomes::completions()),
            leased: Default::default(),
            leases: std::sync::Arc::new(leases::leases()),
            lease_quota: renewal_platform::quotas::Quota::per_second(
                "lease",
                LEASES_PER_SECOND,
                2 * LEASES_PER_SECOND,
            ),
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
    /// A requeue of a task that is not dead.
    #[error("{0}")]
    NotDead(String),
    /// A requeue of a task whose case no longer wants calls.
    #[error("{0}")]
    CaseStopped(String),
    #[error("postgres: {0}")]
    Db(#[from] sqlx::Error),
    /// A task's sealed contact does not open (its key is not in the keyring?).
    #[error("the contact of task {task} does not open: {source}")]
    Pii {
        task: Uuid,
        source: renewal_platform::pii::PiiError,
    },
    /// Postgres failed for a batch this request was part of.
    #[error("{0}")]
    Unavailable(String),
    /// Postgres failed for a batch of leases this request was part of.
    #[error("postgres: {0}")]
    Batch(std::sync::Arc<sqlx::Error>),
    /// The caller may not do this (401, 403, 429).
    #[error("{0}")]
    Refused(#[from] Problem),
}

impl IntoResponse for TaskError {
    fn into_response(self) -> Response {
        let problem = match self {
            TaskError::NotFound(d) => Problem::new(StatusCode::NOT_FOUND, "not_found", d),
            TaskError::Conflict(d) => Problem::new(StatusCode::CONFLICT, "lease_conflict", d),
            TaskError::Invalid(d) => Problem::new(StatusCode::BAD_REQUEST, "invalid_request", d),
            TaskError::NotDead(d) => Problem::new(StatusCode::CONFLICT, "not_dead", d),
            TaskError::CaseStopped(d) => Problem::new(StatusCode::CONFLICT, "case_stopped", d),
            TaskError::Db(e) => Problem::database(&e),
            TaskError::Batch(e) => Problem::database(&e),
            e @ TaskError::Pii { .. } => Problem::internal(&e),
            TaskError::Unavailable(e) => Problem::unavailable(&e),
            TaskError::Refused(p) => p,
        };
        metrics::counter!("phone_task_rejects_total", "status" => problem.status.to_string())
            .increment(1);
        problem.into_response()
    }
}

/// Who works which queue: an owner their own tasks, a branch's people its branch
/// queue, the city company its city's support queue, the call center (naming its human
/// agent per request) the campaign and HQ queues; HQ any. A body `agent_id`,
/// `branch_code` or `city_code` must agree with the token.
fn authorize_lease(caller: &Caller, request: &mut leases::LeaseRequest) -> Result<(), TaskError> {
    let role = match leases::queue_name(&request.queue)? {
        "owner" => caller.require(&[Role::HqAdmin, Role::Agent])?,
        "branch" => {
            let role = caller.require(&[
                Role::HqAdmin,
                Role::BranchAdmin,
                Role::Supervisor,
                Role::Agent,
            ])?;
            if role != Role::HqAdmin {
                let mine = caller.branch_code.clone().unwrap_or_default();
                let given = request.branch_code.get_or_insert_with(|| mine.clone());
                caller.must_match("branch_code", given, &Some(mine))?;
            }
            role
        }
        "city" => {
            let role = caller.require(&[Role::HqAdmin, Role::CityAdmin])?;
            if role != Role::HqAdmin {
                let mine = caller.city_code.clone().unwrap_or_default();
                let given = request.city_code.get_or_insert_with(|| mine.clone());
                caller.must_match("city_code", given, &Some(mine))?;
            }
            return Ok(());
        }
        _ => caller.require(&[Role::HqAdmin, Role::CallCenter])?,
    };
    if matches!(role, Role::Agent | Role::BranchAdmin | Role::Supervisor) {
        caller.must_match("agent_id", request.agent_id.trim(), &caller.agent_code)?;
    }
    Ok(())
}

/// Heartbeat, complete and release: the lease token names the task and proves the
/// lease; the caller must be one who may lease.
const WORKERS: &[Role] = &[
    Role::Agent,
    Role::Supervisor,
    Role::BranchAdmin,
    Role::CityAdmin,
    Role::CallCenter,
    Role::HqAdmin,
];

pub fn routes(tasks: PhoneTasks) -> renewal_platform::http::Routes {
    renewal_platform::http::Routes::new()
        .route("/v1/phone-tasks:lease", post(lease))
        .route("/v1/phone-tasks", get(queues::listed))
        .route("/v1/phone-tasks/{action}", post(act))
        .route("/v1/phone-queues", get(queues::queues))
        .finish(|router| {
            router
                .layer(DefaultBodyLimit::max(MAX_BODY))
                .with_state(tasks)
        })
}

fn parse<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, TaskError> {
    serde_json::from_slice(body).map_err(|e| TaskError::Invalid(format!("body: {e}")))
}

async fn lease(
    State(tasks): State<PhoneTasks>,
    caller: Caller,
    body: Bytes,
) -> Result<Json<serde_json::Value>, TaskError> {
    let mut request: leases::LeaseRequest = parse(&body)?;
    authorize_lease(&caller, &mut request)?;
    tasks
        .lease_quota
        .take(&format!("{}/{}", caller.subject, request.agent_id.trim()))?;
    let leased = leases::lease(&tasks, &request).await?;
    Ok(Json(serde_json::json!({ "tasks": leased })))
}

/// `POST /v1/phone-tasks/{id}:heartbeat|complete|release`, and HQ's `:requeue` (one
/// path segment, as in Google's custom methods).
async fn act(
    State(tasks): State<PhoneTasks>,
    caller: Caller,
    Path(action): Path<String>,
    body: Bytes,
) -> Result<Json<serde_json::Value>, TaskError> {
    let (id, verb) = action.split_once(':').unwrap_or((&action, ""));
    let admitted = if verb == "requeue" {
        queues::REQUEUERS
    } else {
        WORKERS
    };
    caller.require(admitted)?;
    let id = Uuid::parse_str(id).map_err(|_| TaskError::NotFound(id.to_owned()))?;
    match verb {
        "heartbeat" => leases::heartbeat(&tasks, id, &parse(&body)?).await,
        "release" => leases::release(&tasks, id, &parse(&body)?).await,
        "complete" => outcomes::complete(&tasks, id, &parse(&body)?).await,
        "requeue" => queues::requeue(&tasks, id).await,
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
