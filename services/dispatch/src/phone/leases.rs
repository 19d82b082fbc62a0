//! Leases: an agent takes up to `max` tasks of a queue for `lease_seconds`, each with
//! a fresh token. The pick is one statement with `FOR UPDATE SKIP LOCKED`, so two
//! agents never hold the same task; a task whose lease ran out is available again
//! (the old token is stale from the next lease on). Heartbeat extends a lease, release
//! gives it back (optionally until a retry time); the token must be the current one,
//! or the answer is 409.
//!
//! Requests arriving together for the same queue and filter are leased by one
//! statement (a group commit, as completions are): one walk of the queue and one
//! commit for all. The first request's share is the most urgent, and each task is
//! leased in the name of the agent it is handed to.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::Row;
use uuid::Uuid;

use super::{MAX_LEASES, PhoneTasks, TaskError, refusal};

pub const DEFAULT_LEASE_SECONDS: i64 = 300;
pub const MAX_LEASE_SECONDS: i64 = 3600;
pub const MAX_BATCH: i64 = 100;

#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct LeaseRequest {
    /// The human agent who will make the calls (the caller's own agent code, except
    /// for the call center, which names its agent).
    pub agent_id: String,
    /// owner, branch, campaign, hq or city (the city company's support).
    pub queue: String,
    #[serde(default)]
    pub max: Option<i64>,
    #[serde(default)]
    pub lease_seconds: Option<i64>,
    /// Only tasks of this branch / city (a branch's or a city's call team).
    #[serde(default)]
    pub branch_code: Option<String>,
    #[serde(default)]
    pub city_code: Option<String>,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct HeartbeatRequest {
    pub lease_token: Uuid,
    #[serde(default)]
    pub lease_seconds: Option<i64>,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct ReleaseRequest {
    pub lease_token: Uuid,
    /// Not before this time (RFC 3339), e.g. the customer asked to be called later.
    #[serde(default)]
    pub retry_at: Option<DateTime<Utc>>,
}

/// What an agent sees of a leased task. The customer's ID number never leaves the
/// core systems: the agent gets only what a call needs.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct TaskView {
    pub id: Uuid,
    pub lease_token: Uuid,
    pub lease_expires_at: DateTime<Utc>,
    pub queue: String,
    /// Days to expiry when the task was made: lower is more urgent.
    pub priority: i32,
    pub case_id: Uuid,
    pub policy_no: String,
    pub stage: String,
    pub owner_agent: String,
    pub branch_code: String,
    pub city_code: String,
    pub promotion: String,
    pub customer: Customer,
    pub expiry_date: String,
    pub time_zone: String,
    /// This lease is the n-th (a task goes to dead letter after 5 without an outcome).
    pub lease_number: i32,
    /// Earlier calls on the same case, oldest first.
    pub history: Vec<EarlierCall>,
    /// The case's renewal terms (its quote, with any discount approved), if it has one.
    pub terms: Option<crate::terms::Terms>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Customer {
    pub name: String,
    pub mobile: String,
    pub plate: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct EarlierCall {
    pub stage: String,
    pub outcome: String,
    pub completed_at: Option<DateTime<Utc>>,
    pub agent_id: String,
    pub reason: String,
}

pub(crate) fn queue_name(raw: &str) -> Result<&'static str, TaskError> {
    match raw.trim().to_ascii_lowercase().as_str() {
        "owner" => Ok("owner"),
        "branch" => Ok("branch"),
        "campaign" => Ok("campaign"),
        "hq" => Ok("hq"),
        "city" => Ok("city"),
        _ => Err(TaskError::Invalid(format!(
            "queue {raw:?} is not one of owner, branch, campaign, hq, city"
        ))),
    }
}

fn lease_seconds(raw: Option<i64>) -> Result<i64, TaskError> {
    let secs = raw.unwrap_or(DEFAULT_LEASE_SECONDS);
    if !(10..=MAX_LEASE_SECONDS).contains(&secs) {
        return Err(TaskError::Invalid(format!(
            "lease_seconds must be 10..={MAX_LEASE_SECONDS}"
        )));
    }
    Ok(secs)
}

/// One agent's lease request, checked, waiting in a batch.
pub(crate) struct Ask {
    /// Requests with the same key are leased by one statement.
    key: AskKey,
    agent: String,
    max: i64,
}

#[derive(Clone, PartialEq, Eq, Hash)]
struct AskKey {
    queue: &'static str,
    /// The owner queue's owner ('' for the other queues).
    owner: String,
    branch_code: String,
    city_code: String,
    lease_seconds: i64,
}

/// The rows leased for one request (the batch's statement failed for all, or not).
pub(crate) type Answer = Result<Vec<sqlx::postgres::PgRow>, std::sync::Arc<sqlx::Error>>;

/// The group commit of leases: requests arriving together are leased by one statement
/// per queue and filter (one walk of the queue, one commit), each its own share.
pub(crate) type Leases = super::group_commit::GroupCommit<Ask, Answer>;

/// One lease batch written at a time (the next gathers meanwhile: two at a time gave
/// batches of 1.5 requests and no gain, one gives about 2.6 and 9% more tasks a second
/// in `renewal bench dispatch`), at most 32 requests each.
pub(crate) fn leases() -> Leases {
    Leases::new(1, 32)
}

pub async fn lease(tasks: &PhoneTasks, request: &LeaseRequest) -> Result<Vec<TaskView>, TaskError> {
    let ask = checked(request)?;
    let now = tasks.clock.now();
    // Counted here first; the database is asked only near the cap (the count there,
    // exact across replicas, costs a scan of the leased tasks).
    if tasks.leased.held_here(&ask.agent) + ask.max > super::MAX_OPEN_LEASES {
        let held = held_by(tasks, &ask.agent, now).await?;
        if held + ask.max > super::MAX_OPEN_LEASES {
            return Err(too_many_leases(held));
        }
    }
    let agent = ask.agent.clone();
    let rows = tasks
        .leases
        .submit(ask, |batch| lease_batch(tasks.clone(), batch))
        .await
        .ok_or_else(|| TaskError::Unavailable("the lease was not written".into()))?
        .map_err(TaskError::Batch)?;
    let views = leased_tasks(tasks, &rows, &agent)?;
    if !views.is_empty() {
        renewal_platform::activity::record();
    }
    metrics::counter!("phone_tasks_total", "status" => "leased").increment(views.len() as u64);
    Ok(views)
}

/// The request checked: its queue, agent, size and lease length.
fn checked(request: &LeaseRequest) -> Result<Ask, TaskError> {
    let queue = queue_name(&request.queue)?;
    let agent = request.agent_id.trim();
    if agent.is_empty() || agent.len() > 64 {
        return Err(TaskError::Invalid(
            "agent_id must be 1..=64 characters".into(),
        ));
    }
    let max = request.max.unwrap_or(1);
    if !(1..=MAX_BATCH).contains(&max) {
        return Err(TaskError::Invalid(format!("max must be 1..={MAX_BATCH}")));
    }
    let text = |v: &Option<String>| v.as_deref().unwrap_or("").to_owned();
    Ok(Ask {
        key: AskKey {
            queue,
            // The owner queue holds each owner's own tasks.
            owner: if queue == "owner" {
                agent.to_owned()
            } else {
                String::new()
            },
            branch_code: text(&request.branch_code),
            city_code: text(&request.city_code),
            lease_seconds: lease_seconds(request.lease_seconds)?,
        },
        agent: agent.to_owned(),
        max,
    })
}

/// Leases a batch: one statement per queue and filter, run side by side, each request
/// answered with its rows.
async fn lease_batch(tasks: PhoneTasks, batch: Vec<super::group_commit::Waiting<Ask, Answer>>) {
    let mut groups: std::collections::HashMap<AskKey, Vec<_>> = Default::default();
    for waiting in batch {
        groups
            .entry(waiting.0.key.clone())
            .or_default()
            .push(waiting);
    }
    let now = tasks.clock.now();
    futures::future::join_all(groups.into_iter().map(|(key, group)| {
        let tasks = &tasks;
        async move {
            let asks: Vec<&Ask> = group.iter().map(|(ask, _)| ask).collect();
            match lease_statement(tasks, &key, &asks, now).await {
                Ok(mut shares) => {
                    for ((_, answer), rows) in group.into_iter().zip(shares.drain(..)) {
                        let _ = answer.send(Ok(rows));
                    }
                }
                Err(e) => {
                    let e = std::sync::Arc::new(e);
                    for (_, answer) in group {
                        let _ = answer.send(Err(e.clone()));
                    }
                }
            }
        }
    }))
    .await;
}

/// One statement: leases that ran out for the last time go to dead letter, and the
/// most urgent available tasks are leased, the first request's share first, each with
/// the calls made on its case before. The two updates touch disjoint rows (by their
/// lease count). Returns each request's rows, in the order asked.
async fn lease_statement(
    tasks: &PhoneTasks,
    key: &AskKey,
    asks: &[&Ask],
    now: DateTime<Utc>,
) -> Result<Vec<Vec<sqlx::postgres::PgRow>>, sqlx::Error> {
    let agents: Vec<&str> = asks.iter().map(|a| a.agent.as_str()).collect();
    let maxes: Vec<i64> = asks.iter().map(|a| a.max).collect();
    let rows = sqlx::query(LEASE)
        .bind(key.queue)
        .bind(now)
        .bind(MAX_LEASES)
        .bind(&key.owner)
        .bind(&key.branch_code)
        .bind(&key.city_code)
        .bind(tasks.call_hours.start)
        .bind(tasks.call_hours.end)
        .bind(&agents)
        .bind(&maxes)
        .bind(key.lease_seconds as f64)
        .fetch_all(&tasks.pool)
        .await?;
    let dead = match rows.first() {
        Some(r) => r.try_get::<i64, _>("dead")? as u64,
        None => 0,
    };
    if dead > 0 {
        tracing::warn!(
            tasks = dead,
            "phone tasks went to dead letter after {MAX_LEASES} leases without an outcome"
        );
        metrics::counter!("phone_tasks_total", "status" => "dead").increment(dead);
        renewal_platform::activity::record();
    }
    let mut shares: Vec<Vec<_>> = asks.iter().map(|_| Vec::new()).collect();
    for row in rows {
        // The row that only counts dead letters belongs to no request.
        let Some(ord) = row.try_get::<Option<i64>, _>("ord")? else {
            continue;
        };
        if let Some(share) = shares.get_mut((ord - 1) as usize) {
            share.push(row);
        }
    }
    Ok(shares)
}

/// The lease statement ([`lease_statement`]): `wanted` numbers the requests and where
/// each one's share ends, `assigned` gives each picked task to the request whose share
/// its rank falls in.
const LEASE: &str = "WITH wanted AS (
         SELECT w.agent, w.ord, (sum(w.n) OVER (ORDER BY w.ord))::int8 AS upto
         FROM unnest($9::text[], $10::int8[]) WITH ORDINALITY AS w(agent, n, ord)
     ),
     dead AS (
         UPDATE dispatch.phone_tasks SET state = 'dead', lease_token = NULL,
             last_error = 'no outcome after ' || leases || ' leases'
         WHERE state = 'leased' AND available_at <= $2 AND leases >= $3
         RETURNING id
     ),
     picked AS (
         SELECT id, days_to_expiry, available_at FROM dispatch.phone_tasks
         WHERE queue = $1 AND state IN ('open', 'leased') AND available_at <= $2 AND leases < $3
           AND ($4 = '' OR owner_agent = $4)
           AND ($5 = '' OR branch_code = $5)
           AND ($6 = '' OR city_code = $6)
           AND ($2 AT TIME ZONE time_zone)::time >= $7
           AND ($2 AT TIME ZONE time_zone)::time < $8
         ORDER BY days_to_expiry, available_at
         LIMIT (SELECT max(upto) FROM wanted)
         FOR UPDATE SKIP LOCKED),
     assigned AS (
         SELECT p.id, w.agent, w.ord
         FROM (SELECT id, row_number() OVER (ORDER BY days_to_expiry, available_at, id) AS rank
               FROM picked) p
         CROSS JOIN LATERAL (
             SELECT agent, ord FROM wanted WHERE wanted.upto >= p.rank ORDER BY ord LIMIT 1) w
     ),
     leased AS (
         UPDATE dispatch.phone_tasks t
         SET state = 'leased', lease_token = gen_random_uuid(), leased_by = a.agent,
             available_at = $2 + make_interval(secs => $11), leases = t.leases + 1
         FROM assigned a WHERE t.id = a.id
         RETURNING a.ord, t.id, t.lease_token, t.available_at, t.queue, t.days_to_expiry, t.case_id,
                   t.policy_no, t.stage, t.owner_agent, t.branch_code, t.city_code, t.promotion,
                   t.contact_enc, t.expiry_date, t.time_zone, t.leases, t.traceparent,
                   (SELECT coalesce(jsonb_agg(jsonb_build_object(
                                'stage', h.stage, 'outcome', coalesce(h.outcome, ''),
                                'completed_at', h.completed_at, 'agent_id', coalesce(h.leased_by, ''),
                                'reason', coalesce(h.outcome_detail->>'reason', ''))
                            ORDER BY h.completed_at), '[]'::jsonb)
                    FROM dispatch.phone_tasks h
                    WHERE h.case_id = t.case_id AND h.state = 'completed') AS history,
                   (SELECT jsonb_build_object('quote_id', ct.quote_id, 'premium_fen', ct.premium_fen,
                                'last_premium_fen', ct.last_premium_fen,
                                'change_fen', ct.premium_fen - ct.last_premium_fen,
                                'claim_free_years', ct.claim_free_years, 'promotion', ct.promotion,
                                'valid_until', ct.valid_until, 'discount_percent', ct.discount_percent,
                                'discount_extra', ct.discount_extra)
                    FROM dispatch.case_terms ct WHERE ct.case_id = t.case_id) AS terms
     )
     SELECT *, (SELECT count(*) FROM dead) AS dead FROM leased
     UNION ALL
     SELECT NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
            NULL, NULL, NULL, NULL, NULL, (SELECT count(*) FROM dead)
     WHERE NOT EXISTS (SELECT 1 FROM leased)
     ORDER BY ord, days_to_expiry, available_at";

/// The leased rows as the agent sees them.
fn leased_tasks(
    tasks: &PhoneTasks,
    rows: &[sqlx::postgres::PgRow],
    agent: &str,
) -> Result<Vec<TaskView>, TaskError> {
    let mut views = Vec::with_capacity(rows.len());
    for r in rows {
        // The row that only counts dead letters has no task.
        match leased_task(tasks, r, agent) {
            Ok(Some(view)) => views.push(view),
            Ok(None) => {}
            // The others are served; this one returns to the queue when its lease runs
            // out (and goes to dead letter after the last).
            Err(e @ TaskError::Pii { .. }) => {
                tracing::error!(error = %e, "a leased task's contact does not open; not handed out")
            }
            Err(e) => return Err(e),
        }
    }
    Ok(views)
}

/// A leased row as the agent sees it; the process remembers what completing it
/// will need.
fn leased_task(
    tasks: &PhoneTasks,
    r: &sqlx::postgres::PgRow,
    agent: &str,
) -> Result<Option<TaskView>, TaskError> {
    let Some(id) = r.try_get::<Option<Uuid>, _>("id")? else {
        return Ok(None);
    };
    let history: sqlx::types::Json<Vec<EarlierCall>> = r.try_get("history")?;
    let sealed: Vec<u8> = r.try_get("contact_enc")?;
    // An erased contact (its task withdrawn, so not leased in the normal course) shows
    // as empty rather than failing the lease.
    let contact = if sealed.is_empty() {
        crate::sealed::TaskContact::erased()
    } else {
        crate::sealed::open_task(&tasks.pii, &id.to_string(), &sealed)
            .map_err(|source| TaskError::Pii { task: id, source })?
    };
    let view = TaskView {
        id,
        lease_token: r.try_get("lease_token")?,
        lease_expires_at: r.try_get("available_at")?,
        queue: r.try_get("queue")?,
        priority: r.try_get("days_to_expiry")?,
        case_id: r.try_get("case_id")?,
        policy_no: r.try_get("policy_no")?,
        stage: r.try_get("stage")?,
        owner_agent: r.try_get("owner_agent")?,
        branch_code: r.try_get("branch_code")?,
        city_code: r.try_get("city_code")?,
        promotion: r.try_get("promotion")?,
        customer: Customer {
            name: contact.customer_name,
            mobile: contact.mobile,
            plate: contact.plate,
        },
        expiry_date: r.try_get("expiry_date")?,
        time_zone: r.try_get("time_zone")?,
        lease_number: r.try_get("leases")?,
        history: history.0,
        terms: r
            .try_get::<Option<sqlx::types::Json<crate::terms::Terms>>, _>("terms")?
            .map(|t| t.0),
    };
    tasks.leased.remember(
        id,
        super::outcomes::HeldTask {
            lease_token: r.try_get("lease_token")?,
            case_id: r.try_get("case_id")?,
            policy_no: r.try_get("policy_no")?,
            stage: r.try_get("stage")?,
            agent_id: agent.to_owned(),
            traceparent: r.try_get("traceparent")?,
        },
    );
    Ok(Some(view))
}

/// The leases `agent` holds that have not run out (read through the index of leased
/// tasks; an index of their own would cost every lease and completion a write).
async fn held_by(tasks: &PhoneTasks, agent: &str, now: DateTime<Utc>) -> Result<i64, TaskError> {
    Ok(sqlx::query_scalar(
        "SELECT count(*) FROM dispatch.phone_tasks
         WHERE state = 'leased' AND leased_by = $1 AND available_at > $2",
    )
    .bind(agent)
    .bind(now)
    .fetch_one(&tasks.pool)
    .await?)
}

fn too_many_leases(held: i64) -> TaskError {
    renewal_platform::Problem::new(
        axum::http::StatusCode::TOO_MANY_REQUESTS,
        "too_many_leases",
        format!(
            "the agent holds {held} leases; complete or release some first (at most {} at once)",
            super::MAX_OPEN_LEASES
        ),
    )
    .into()
}

pub async fn heartbeat(
    tasks: &PhoneTasks,
    id: Uuid,
    request: &HeartbeatRequest,
) -> Result<serde_json::Value, TaskError> {
    let secs = lease_seconds(request.lease_seconds)?;
    let now = tasks.clock.now();
    let until: Option<DateTime<Utc>> = sqlx::query_scalar(
        "UPDATE dispatch.phone_tasks SET available_at = $3 + make_interval(secs => $4)
         WHERE id = $1 AND lease_token = $2 AND state = 'leased'
         RETURNING available_at",
    )
    .bind(id)
    .bind(request.lease_token)
    .bind(now)
    .bind(secs as f64)
    .fetch_optional(&tasks.pool)
    .await?;
    match until {
        Some(until) => Ok(serde_json::json!({ "id": id, "lease_expires_at": until })),
        None => Err(refusal(&tasks.pool, id).await),
    }
}

pub async fn release(
    tasks: &PhoneTasks,
    id: Uuid,
    request: &ReleaseRequest,
) -> Result<serde_json::Value, TaskError> {
    let now = tasks.clock.now();
    let retry_at = request.retry_at.unwrap_or(now).max(now);
    if retry_at > now + super::FARTHEST_AHEAD {
        return Err(TaskError::Invalid(format!(
            "retry_at is more than {} days ahead",
            super::FARTHEST_AHEAD.num_days()
        )));
    }
    let state: Option<String> = sqlx::query_scalar(
        "UPDATE dispatch.phone_tasks
         SET state = CASE WHEN leases >= $4 THEN 'dead' ELSE 'open' END,
             last_error = CASE WHEN leases >= $4 THEN 'released after ' || leases || ' leases without an outcome' END,
             lease_token = NULL, available_at = $3
         WHERE id = $1 AND lease_token = $2 AND state = 'leased'
         RETURNING state",
    )
    .bind(id)
    .bind(request.lease_token)
    .bind(retry_at)
    .bind(MAX_LEASES)
    .fetch_optional(&tasks.pool)
    .await?;
    match state {
        Some(state) => {
            tasks.leased.forget(id);
            renewal_platform::activity::record();
            metrics::counter!("phone_tasks_total", "status" => if state == "dead" { "dead" } else { "released" })
                .increment(1);
            Ok(serde_json::json!({ "id": id, "state": state, "available_at": retry_at }))
        }
        None => Err(refusal(&tasks.pool, id).await),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn queues_and_lease_lengths_are_checked() {
        assert_eq!(super::queue_name(" Campaign ").ok(), Some("campaign"));
        assert!(super::queue_name("vip").is_err());
        assert!(super::lease_seconds(Some(5)).is_err());
        assert!(super::lease_seconds(Some(3601)).is_err());
        assert_eq!(super::lease_seconds(None).ok(), Some(300));
    }
}
