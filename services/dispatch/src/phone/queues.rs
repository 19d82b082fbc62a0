//! The queues as operations see them: each queue's open, leased and dead tasks and how
//! long the oldest has waited (`GET /v1/phone-queues`), the dead tasks themselves
//! (`GET /v1/phone-tasks?state=dead`), and a dead task put back in its queue with its
//! leases again (`POST /v1/phone-tasks/{id}:requeue`). No personal data.
//!
//! A task whose last lease ran out is dead, whether or not a lease request has marked
//! it so yet (the lease statement does, [`super::leases::lease`]); one whose earlier
//! lease ran out is open again.

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use chrono::{DateTime, Utc};
use renewal_platform::paging::{Page, PageQuery};
use renewal_platform::{Caller, Problem, Role};
use serde::{Deserialize, Serialize};
use sqlx::Row;
use uuid::Uuid;

use super::{MAX_LEASES, PhoneTasks, TaskError};
use crate::commands::CaseStops;

/// The queues, in the order they are listed.
pub const QUEUES: [&str; 5] = ["owner", "branch", "campaign", "hq", "city"];

/// Who may requeue a dead task, and list them.
pub const REQUEUERS: &[Role] = &[Role::HqAdmin];

#[derive(Debug, Default, Deserialize)]
pub struct QueuesQuery {
    /// Only this city's tasks (a city's admin: their own, set for them).
    pub city: Option<String>,
}

/// Every queue's figures, for one city or all.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct QueuesView {
    /// The city counted; none: every city.
    pub city_code: Option<String>,
    pub as_of: DateTime<Utc>,
    pub queues: Vec<QueueView>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct QueueView {
    /// owner, branch, campaign, hq or city.
    pub queue: String,
    /// Waiting to be leased (now or from a later time: a call back, a retry, the
    /// morning), a task whose lease ran out included.
    pub open: i64,
    /// Held under a lease that has not run out.
    pub leased: i64,
    /// Given up after 5 leases without an outcome.
    pub dead: i64,
    /// When the oldest open task was made.
    pub oldest_open_created_at: Option<DateTime<Utc>>,
    /// Since when the open task waiting longest may be called.
    pub earliest_open_available_at: Option<DateTime<Utc>>,
    /// How old the oldest open task is, in seconds.
    pub oldest_open_age_seconds: Option<i64>,
}

/// A task counts as open, leased or dead as the lease statement would take it now
/// (`$2` now, `$3` the leases a task may have).
const OPEN: &str = "(state = 'open' OR (state = 'leased' AND available_at <= $2 AND leases < $3))";

/// `GET /v1/phone-queues`: HQ sees every city (or the one it names), a city's admin
/// their city (naming another: 403).
pub(super) async fn queues(
    State(tasks): State<PhoneTasks>,
    caller: Caller,
    query: Result<Query<QueuesQuery>, QueryRejection>,
) -> Result<Json<QueuesView>, TaskError> {
    let role = caller.require(&[Role::HqAdmin, Role::CityAdmin])?;
    let Query(query) = query.map_err(|e| TaskError::Invalid(e.body_text()))?;
    let mut city = query.city.filter(|c| !c.trim().is_empty());
    if role == Role::CityAdmin {
        let mine = caller.city_code.clone().unwrap_or_default();
        if city.as_ref().is_some_and(|c| *c != mine) {
            return Err(Problem::new(
                axum::http::StatusCode::FORBIDDEN,
                "out_of_scope",
                "this is outside your agent code, branch or city",
            )
            .into());
        }
        city = Some(mine);
    }
    let now = tasks.clock.now();
    let sql = format!(
        "WITH live AS (
             SELECT queue,
                    count(*) FILTER (WHERE {OPEN}) AS open,
                    count(*) FILTER (WHERE state = 'leased' AND available_at > $2) AS leased,
                    count(*) FILTER (WHERE state = 'leased' AND available_at <= $2 AND leases >= $3) AS lapsed,
                    min(created_at) FILTER (WHERE {OPEN}) AS oldest,
                    min(available_at) FILTER (WHERE {OPEN}) AS earliest
             FROM dispatch.phone_tasks
             WHERE state IN ('open', 'leased') AND ($1 = '' OR city_code = $1)
             GROUP BY queue
         ),
         dead AS (
             SELECT queue, count(*) AS n FROM dispatch.phone_tasks
             WHERE state = 'dead' AND ($1 = '' OR city_code = $1)
             GROUP BY queue
         )
         SELECT q.queue, coalesce(l.open, 0) AS open, coalesce(l.leased, 0) AS leased,
                coalesce(l.lapsed, 0) + coalesce(d.n, 0) AS dead, l.oldest, l.earliest
         FROM unnest($4::text[]) WITH ORDINALITY AS q(queue, n)
         LEFT JOIN live l ON l.queue = q.queue LEFT JOIN dead d ON d.queue = q.queue
         ORDER BY q.n"
    );
    let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(city.as_deref().unwrap_or(""))
        .bind(now)
        .bind(MAX_LEASES)
        .bind(&QUEUES[..])
        .fetch_all(&tasks.pool)
        .await?;
    let queues = rows
        .iter()
        .map(|r| {
            let oldest: Option<DateTime<Utc>> = r.try_get("oldest")?;
            Ok(QueueView {
                queue: r.try_get("queue")?,
                open: r.try_get("open")?,
                leased: r.try_get("leased")?,
                dead: r.try_get("dead")?,
                oldest_open_created_at: oldest,
                earliest_open_available_at: r.try_get("earliest")?,
                oldest_open_age_seconds: oldest.map(|at| (now - at).num_seconds().max(0)),
            })
        })
        .collect::<Result<_, sqlx::Error>>()?;
    Ok(Json(QueuesView {
        city_code: city,
        as_of: now,
        queues,
    }))
}

#[derive(Debug, Deserialize)]
pub struct TasksQuery {
    /// dead (the only state listed).
    pub state: Option<String>,
    #[serde(flatten)]
    pub page: PageQuery,
}

/// A dead task, as operations see it.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct DeadTask {
    pub id: Uuid,
    pub case_id: Uuid,
    pub policy_no: String,
    pub queue: String,
    pub stage: String,
    pub branch_code: String,
    pub city_code: String,
    /// Leases taken without an outcome.
    pub leases: i32,
    /// The agent who held the last lease.
    pub last_leased_by: Option<String>,
    /// When the last lease ran out (or, given back, the retry time it named).
    pub last_lease_ended_at: DateTime<Utc>,
    pub created_at: DateTime<Utc>,
    /// Why it is dead.
    pub reason: String,
}

/// Where a page of dead tasks continues: after this task (oldest first).
type DeadKey = (DateTime<Utc>, Uuid);

/// `GET /v1/phone-tasks?state=dead`: the dead tasks, oldest first, paged (HQ).
pub(super) async fn listed(
    State(tasks): State<PhoneTasks>,
    caller: Caller,
    query: Result<Query<TasksQuery>, QueryRejection>,
) -> Result<Json<Page<DeadTask>>, TaskError> {
    caller.require(REQUEUERS)?;
    let Query(query) = query.map_err(|e| TaskError::Invalid(e.body_text()))?;
    match query.state.as_deref().map(str::trim) {
        None | Some("dead") => {}
        Some(other) => {
            return Err(TaskError::Invalid(format!(
                "state {other:?}: only dead tasks are listed (state=dead)"
            )));
        }
    }
    let after: Option<DeadKey> = query.page.after()?;
    let (after_at, after_id) = after.unzip();
    let size = query.page.size();
    // Each part in key order through its index: the dead ones, and those whose last
    // lease ran out (few: the leases that ran out since the last lease request).
    let columns = "id, case_id, policy_no, queue, stage, branch_code, city_code, leases, leased_by,
                   available_at, created_at,
                   coalesce(last_error, 'no outcome after ' || leases || ' leases') AS reason";
    let after = "(created_at, id) > (coalesce($1, '-infinity'::timestamptz),
                                     coalesce($2, '00000000-0000-0000-0000-000000000000'::uuid))";
    let sql = format!(
        "(SELECT {columns} FROM dispatch.phone_tasks WHERE state = 'dead' AND {after}
          ORDER BY created_at, id LIMIT $5)
         UNION ALL
         (SELECT {columns} FROM dispatch.phone_tasks
          WHERE state = 'leased' AND available_at <= $3 AND leases >= $4 AND {after}
          ORDER BY created_at, id LIMIT $5)
         ORDER BY created_at, id LIMIT $5"
    );
    let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(after_at)
        .bind(after_id)
        .bind(tasks.clock.now())
        .bind(MAX_LEASES)
        .bind(size + 1)
        .fetch_all(&tasks.pool)
        .await?;
    let items = rows
        .iter()
        .map(|r| {
            Ok(DeadTask {
                id: r.try_get("id")?,
                case_id: r.try_get("case_id")?,
                policy_no: r.try_get("policy_no")?,
                queue: r.try_get("queue")?,
                stage: r.try_get("stage")?,
                branch_code: r.try_get("branch_code")?,
                city_code: r.try_get("city_code")?,
                leases: r.try_get("leases")?,
                last_leased_by: r.try_get("leased_by")?,
                last_lease_ended_at: r.try_get("available_at")?,
                created_at: r.try_get("created_at")?,
                reason: r.try_get("reason")?,
            })
        })
        .collect::<Result<Vec<_>, sqlx::Error>>()?;
    Ok(Json(Page::of(items, size, |t| (t.created_at, t.id))))
}

/// What a requeue found of the task (read under its lock).
struct Found {
    state: String,
    leases: i32,
    available_at: DateTime<Utc>,
    stops: CaseStops,
}

/// `POST /v1/phone-tasks/{id}:requeue` (HQ): a dead task is open again, now, with its
/// leases again. Refused (409) for a task that is not dead, and for one whose case no
/// longer wants calls: closed, ended on a call after the task was made (renewed or
/// lost), or with a wrong number not corrected yet. The task's case is locked as a
/// close or a new task locks it; the task's row as a completion locks it, and its old
/// lease token stays stale.
pub async fn requeue(tasks: &PhoneTasks, id: Uuid) -> Result<serde_json::Value, TaskError> {
    let now = tasks.clock.now();
    let mut tx = tasks.pool.begin().await?;
    let case_id: Option<Uuid> =
        sqlx::query_scalar("SELECT case_id FROM dispatch.phone_tasks WHERE id = $1")
            .bind(id)
            .fetch_optional(&mut *tx)
            .await?;
    let case_id = case_id.ok_or_else(|| TaskError::NotFound(id.to_string()))?;
    crate::commands::lock_case(&mut tx, case_id).await?;
    let found = found(&mut tx, id, case_id).await?;
    let dead = found.state == "dead"
        || (found.state == "leased" && found.available_at <= now && found.leases >= MAX_LEASES);
    if !dead {
        return Err(TaskError::NotDead(format!(
            "the task is {}; only a dead task is requeued",
            found.state
        )));
    }
    if let Some(why) = found.stops.why() {
        return Err(TaskError::CaseStopped(why.into()));
    }
    sqlx::query(
        "UPDATE dispatch.phone_tasks
         SET state = 'open', leases = 0, lease_token = NULL, leased_by = NULL,
             available_at = $2, last_error = NULL
         WHERE id = $1",
    )
    .bind(id)
    .bind(now)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    tasks.leased.forget(id);
    renewal_platform::activity::record();
    metrics::counter!("phone_tasks_total", "status" => "requeued").increment(1);
    tracing::info!(task = %id, "a dead phone task was put back in its queue");
    Ok(serde_json::json!({ "id": id, "state": "open", "leases": 0, "available_at": now }))
}

/// The task, locked, and whether its case still wants calls.
async fn found(tx: &mut sqlx::PgConnection, id: Uuid, case_id: Uuid) -> Result<Found, TaskError> {
    let sql = format!(
        "SELECT t.state, t.leases, t.available_at, {stops}
         FROM dispatch.phone_tasks t {joins}
         WHERE t.id = $1
         FOR UPDATE OF t",
        stops = CaseStops::columns("t.created_at"),
        joins = CaseStops::joins(),
    );
    let row = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(id)
        .bind(case_id)
        .fetch_optional(&mut *tx)
        .await?
        .ok_or_else(|| TaskError::NotFound(id.to_string()))?;
    Ok(Found {
        state: row.try_get("state")?,
        leases: row.try_get("leases")?,
        available_at: row.try_get("available_at")?,
        stops: CaseStops::read(&row)?,
    })
}
