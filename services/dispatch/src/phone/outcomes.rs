//! Outcomes: the agent holding the lease completes the task with what the call ended
//! with (DOMAIN.md's list, each with its fields). The task's new state, the
//! `dispatch.task.completed` event, for a wrong number the mark on the customer's
//! contact data, and for a renewal or a lost customer the withdrawal of the case's
//! other open tasks and queued SMS, are written by one statement (the event is built from the task as read
//! just before: the fields it takes from the task never change while the lease token
//! is the same, and the statement completes the task only under that token).
//!
//! Completions arriving together are read and written together ([`Completions`], a
//! group commit): while a batch is being written the next ones queue, and the first of
//! them writes all that queued in one statement, after one read of the tasks this
//! process did not lease itself ([`HeldTasks`] remembers what a completion needs of
//! the tasks it leased). Each
//! agent is answered only once its own completion is committed. Completing again with
//! the same token and outcome (a retry after a lost answer) answers the same, with no
//! second event. A task withdrawn while leased still takes its holder's outcome, so no
//! outcome of a call that happened is lost.

use chrono::{DateTime, NaiveDate, Utc};
use renewal_contract::dispatch::{CallOutcome, PhoneTaskCompleted};
use renewal_contract::subject;
use serde::Deserialize;
use sqlx::{PgPool, Row};
use tokio::sync::oneshot;
use uuid::Uuid;

use super::{PhoneTasks, TaskError};

#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct CompleteRequest {
    pub lease_token: Uuid,
    /// renewed, promised, call_back, refused, unreachable, wrong_number,
    /// insured_elsewhere, vehicle_sold, cannot_renew_in_time (the owner escalates it),
    /// high_risk_of_loss (to HQ's centralized calling).
    pub outcome: String,
    /// renewed: the new policy number.
    #[serde(default)]
    pub new_policy_no: Option<String>,
    /// promised: the date the customer promised (YYYY-MM-DD).
    #[serde(default)]
    pub promised_date: Option<String>,
    /// call_back: when to call again (RFC 3339).
    #[serde(default)]
    pub call_back_at: Option<DateTime<Utc>>,
    /// refused (required) and the loss outcomes: why.
    #[serde(default)]
    pub reason: Option<String>,
}

/// An outcome with the fields it needs, checked.
#[derive(Debug, PartialEq)]
pub struct Outcome {
    pub kind: CallOutcome,
    pub new_policy_no: String,
    pub promised_date: Option<NaiveDate>,
    pub call_back_at: Option<DateTime<Utc>>,
    pub reason: String,
}

pub fn outcome_name(kind: CallOutcome) -> &'static str {
    match kind {
        CallOutcome::Renewed => "renewed",
        CallOutcome::Promised => "promised",
        CallOutcome::CallBack => "call_back",
        CallOutcome::Refused => "refused",
        CallOutcome::Unreachable => "unreachable",
        CallOutcome::WrongNumber => "wrong_number",
        CallOutcome::InsuredElsewhere => "insured_elsewhere",
        CallOutcome::VehicleSold => "vehicle_sold",
        CallOutcome::CannotRenewInTime => "cannot_renew_in_time",
        CallOutcome::HighRiskOfLoss => "high_risk_of_loss",
        CallOutcome::Unspecified => "unspecified",
    }
}

impl CompleteRequest {
    pub fn outcome(&self, now: DateTime<Utc>) -> Result<Outcome, TaskError> {
        let kind = match self.outcome.trim().to_ascii_lowercase().as_str() {
            "renewed" => CallOutcome::Renewed,
            "promised" => CallOutcome::Promised,
            "call_back" => CallOutcome::CallBack,
            "refused" => CallOutcome::Refused,
            "unreachable" => CallOutcome::Unreachable,
            "wrong_number" => CallOutcome::WrongNumber,
            "insured_elsewhere" => CallOutcome::InsuredElsewhere,
            "vehicle_sold" => CallOutcome::VehicleSold,
            "cannot_renew_in_time" => CallOutcome::CannotRenewInTime,
            "high_risk_of_loss" => CallOutcome::HighRiskOfLoss,
            other => {
                return Err(TaskError::Invalid(format!(
                    "outcome {other:?} is not one of renewed, promised, call_back, refused, \
                     unreachable, wrong_number, insured_elsewhere, vehicle_sold, \
                     cannot_renew_in_time, high_risk_of_loss"
                )));
            }
        };
        let text = |v: &Option<String>| v.as_deref().map(str::trim).unwrap_or("").to_owned();
        let outcome = Outcome {
            kind,
            new_policy_no: text(&self.new_policy_no),
            promised_date: match self.promised_date.as_deref() {
                None => None,
                Some(raw) => Some(NaiveDate::parse_from_str(raw.trim(), "%Y-%m-%d").map_err(
                    |_| TaskError::Invalid(format!("promised_date {raw:?} is not YYYY-MM-DD")),
                )?),
            },
            call_back_at: self.call_back_at,
            reason: text(&self.reason),
        };
        let missing = match kind {
            CallOutcome::Renewed if outcome.new_policy_no.is_empty() => Some("new_policy_no"),
            CallOutcome::Promised if outcome.promised_date.is_none() => Some("promised_date"),
            CallOutcome::CallBack if outcome.call_back_at.is_none() => Some("call_back_at"),
            CallOutcome::Refused if outcome.reason.is_empty() => Some("reason"),
            _ => None,
        };
        if let Some(field) = missing {
            return Err(TaskError::Invalid(format!(
                "outcome {} needs {field}",
                outcome_name(kind)
            )));
        }
        if let Some(at) = outcome.call_back_at {
            if at < now {
                return Err(TaskError::Invalid("call_back_at is in the past".into()));
            }
            if at > now + super::FARTHEST_AHEAD {
                return Err(TaskError::Invalid(format!(
                    "call_back_at is more than {} days ahead",
                    super::FARTHEST_AHEAD.num_days()
                )));
            }
        }
        if let Some(date) = outcome.promised_date
            && (date < now.date_naive() - chrono::Days::new(1)
                || date > (now + super::FARTHEST_AHEAD).date_naive())
        {
            return Err(TaskError::Invalid(format!(
                "promised_date must be from today to {} days ahead",
                super::FARTHEST_AHEAD.num_days()
            )));
        }
        if outcome.reason.chars().count() > 500 || outcome.new_policy_no.len() > 64 {
            return Err(TaskError::Invalid(
                "reason or new_policy_no is too long".into(),
            ));
        }
        Ok(outcome)
    }
}

pub async fn complete(
    tasks: &PhoneTasks,
    id: Uuid,
    request: &CompleteRequest,
) -> Result<serde_json::Value, TaskError> {
    let now = tasks.clock.now();
    let outcome = request.outcome(now)?;
    let name = outcome_name(outcome.kind);
    let done = serde_json::json!({ "id": id, "state": "completed", "outcome": name });
    let completion = Completion {
        task_id: id,
        lease_token: request.lease_token,
        name,
        outcome,
        completed_at: now,
        // The event continues the trace of the command that made the task, or else
        // this request's.
        fallback_traceparent: renewal_platform::telemetry::current_traceparent(),
    };
    match write(tasks, completion).await? {
        Answer::Written => {}
        Answer::NotFound => return Err(TaskError::NotFound(id.to_string())),
        Answer::NotHeld(state) => return Err(refused(&state)),
        // A retry of a completion that went through answers the same.
        Answer::Completed(recorded) if recorded.as_deref() == Some(name) => return Ok(done),
        Answer::Completed(recorded) => {
            return Err(TaskError::Conflict(format!(
                "the task was already completed as {}",
                recorded.unwrap_or_default()
            )));
        }
        Answer::Moved => {
            // Something moved the task between the read and the write (the same
            // completion sent twice at once, a new lease): answer as for what it is now.
            let now_state: Option<(String, Option<String>)> = sqlx::query_as(
                "SELECT state, outcome FROM dispatch.phone_tasks WHERE id = $1 AND lease_token = $2",
            )
            .bind(id)
            .bind(request.lease_token)
            .fetch_optional(&tasks.pool)
            .await?;
            return match now_state {
                Some((state, Some(recorded))) if state == "completed" && recorded == name => {
                    Ok(done)
                }
                Some((state, _)) => Err(refused(&state)),
                None => Err(refused("leased")),
            };
        }
    }
    tasks.outbox.wake();
    renewal_platform::activity::record();
    metrics::counter!("phone_tasks_total", "status" => "completed", "outcome" => name).increment(1);
    Ok(done)
}

/// One completion as the agent sent it, checked, waiting to be written.
pub(crate) struct Completion {
    task_id: Uuid,
    lease_token: Uuid,
    name: &'static str,
    outcome: Outcome,
    completed_at: DateTime<Utc>,
    fallback_traceparent: Option<String>,
}

/// A completion whose token holds its task, with its event, ready for the statement.
struct Ready {
    task_id: Uuid,
    lease_token: Uuid,
    outcome: &'static str,
    detail: serde_json::Value,
    agent_id: String,
    completed_at: DateTime<Utc>,
    event_id: Uuid,
    payload: Vec<u8>,
    traceparent: Option<String>,
}

/// What became of one completion of a batch.
#[derive(Debug)]
pub(crate) enum Answer {
    /// Committed, with its event.
    Written,
    /// No such task.
    NotFound,
    /// The token does not hold the task, which is in this state.
    NotHeld(String),
    /// The task was completed before, with this outcome.
    Completed(Option<String>),
    /// The token held the task when read but not when written.
    Moved,
}

pub(crate) type Written = Result<Answer, String>;

/// The group commit of completions: [`WRITERS`] batches written at once, at most
/// [`COMPLETIONS_PER_STATEMENT`] completions each.
pub(crate) type Completions = super::group_commit::GroupCommit<Completion, Written>;

pub(crate) fn completions() -> Completions {
    Completions::new(WRITERS, COMPLETIONS_PER_STATEMENT)
}

/// Batches being written at once.
const WRITERS: usize = 2;

/// Completions written in one statement at most.
const COMPLETIONS_PER_STATEMENT: usize = 500;

/// Queues a completion and returns once it is committed (or refused).
async fn write(tasks: &PhoneTasks, completion: Completion) -> Result<Answer, TaskError> {
    let (pool, schema, held) = (&tasks.pool, tasks.outbox.schema(), &tasks.leased);
    tasks
        .completions
        .submit(completion, |batch| {
            write_batch(pool.clone(), schema, held.clone(), batch)
        })
        .await
        .ok_or_else(|| TaskError::Unavailable("the completion was not written".into()))?
        .map_err(TaskError::Unavailable)
}

/// Writes a batch: one read of all its tasks (which tokens hold their task, and what
/// each event says), then one statement for those that do.
async fn write_batch(
    pool: PgPool,
    schema: &'static str,
    held: std::sync::Arc<HeldTasks>,
    batch: Vec<(Completion, oneshot::Sender<Written>)>,
) {
    // A task twice in one batch (a completion sent twice at once) is written once; the
    // other copy learns the outcome from the task afterwards.
    let mut seen = std::collections::HashSet::new();
    let (first, repeats): (Vec<_>, Vec<_>) =
        batch.into_iter().partition(|(c, _)| seen.insert(c.task_id));
    for (_, answer) in repeats {
        let _ = answer.send(Ok(Answer::Moved));
    }
    // Tasks this process leased under the same token need no read.
    let mut tasks = std::collections::HashMap::with_capacity(first.len());
    let mut unknown = Vec::new();
    for (c, _) in &first {
        match held.take(c.task_id, c.lease_token) {
            Some(task) => {
                tasks.insert(c.task_id, task.row());
            }
            None => unknown.push(c.task_id),
        }
    }
    let read = if unknown.is_empty() {
        Ok(Default::default())
    } else {
        read_tasks(&pool, &unknown).await
    };
    let read = read.map(|mut rows| {
        rows.extend(tasks);
        rows
    });
    let tasks = match read {
        Ok(tasks) => tasks,
        Err(e) => {
            tracing::error!(error = %e, "reading tasks to complete failed");
            for (_, answer) in first {
                let _ = answer.send(Err(e.to_string()));
            }
            return;
        }
    };
    let mut ready = Vec::with_capacity(first.len());
    let mut waiting = Vec::with_capacity(first.len());
    for (c, answer) in first {
        let task = tasks.get(&c.task_id);
        match prepare(c, task) {
            Ok(r) => {
                waiting.push((r.task_id, answer));
                ready.push(r);
            }
            Err(refusal) => {
                let _ = answer.send(Ok(refusal));
            }
        }
    }
    if ready.is_empty() {
        return;
    }
    let written = write_statement(&pool, schema, &ready).await;
    for (id, answer) in waiting {
        let _ = answer.send(match &written {
            Ok(done) if done.contains(&id) => Ok(Answer::Written),
            Ok(_) => Ok(Answer::Moved),
            Err(e) => Err(e.clone()),
        });
    }
}

/// What a completion needs of a task this process leased, as the lease left it: the
/// fields the event takes never change while the token is the same, and the statement
/// completes the task only under that token (a task withdrawn, released or leased
/// again meanwhile is answered from what it is then).
pub struct HeldTask {
    pub lease_token: Uuid,
    pub case_id: Uuid,
    pub policy_no: String,
    pub stage: String,
    pub agent_id: String,
    pub traceparent: Option<String>,
}

impl HeldTask {
    fn row(self) -> TaskRow {
        TaskRow {
            state: "leased".into(),
            lease_token: Some(self.lease_token),
            outcome: None,
            case_id: self.case_id,
            policy_no: self.policy_no,
            stage: self.stage,
            agent_id: self.agent_id,
            traceparent: self.traceparent,
        }
    }
}

/// The tasks this process leased and not yet completed, so a completion here needs no
/// read of its task (one statement per batch rather than two). A completion sent to
/// another replica, or after a restart, reads its task as before.
#[derive(Default)]
pub struct HeldTasks {
    held: std::sync::Mutex<Held>,
}

#[derive(Default)]
struct Held {
    tasks: std::collections::HashMap<Uuid, HeldTask>,
    /// Leases handed out here and not yet completed or released here, per agent.
    by_agent: std::collections::HashMap<String, i64>,
}

impl Held {
    fn remove(&mut self, id: &Uuid) -> Option<HeldTask> {
        let task = self.tasks.remove(id)?;
        if let Some(n) = self.by_agent.get_mut(&task.agent_id) {
            *n -= 1;
            if *n <= 0 {
                self.by_agent.remove(&task.agent_id);
            }
        }
        Some(task)
    }
}

/// Leases remembered at most; past it the memory starts again (leases that run out
/// without an outcome would otherwise stay).
const HELD_AT_MOST: usize = 100_000;

impl HeldTasks {
    pub fn remember(&self, id: Uuid, task: HeldTask) {
        let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        if held.tasks.len() >= HELD_AT_MOST {
            *held = Held::default();
        }
        *held.by_agent.entry(task.agent_id.clone()).or_default() += 1;
        if let Some(earlier) = held.tasks.insert(id, task)
            && let Some(n) = held.by_agent.get_mut(&earlier.agent_id)
        {
            *n -= 1;
        }
    }

    pub fn forget(&self, id: Uuid) {
        self.held
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&id);
    }

    /// Leases this process handed `agent` and has not seen completed or released (an
    /// upper bound on those still held here: some may have run out).
    pub fn held_here(&self, agent: &str) -> i64 {
        let held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        held.by_agent.get(agent).copied().unwrap_or(0)
    }

    /// The task if it was leased here under `token` (and forgets it).
    fn take(&self, id: Uuid, token: Uuid) -> Option<HeldTask> {
        let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        match held.tasks.get(&id) {
            Some(t) if t.lease_token == token => held.remove(&id),
            _ => None,
        }
    }
}

/// A task as a completion needs it.
struct TaskRow {
    state: String,
    lease_token: Option<Uuid>,
    outcome: Option<String>,
    case_id: Uuid,
    policy_no: String,
    stage: String,
    agent_id: String,
    traceparent: Option<String>,
}

async fn read_tasks(
    pool: &PgPool,
    ids: &[Uuid],
) -> Result<std::collections::HashMap<Uuid, TaskRow>, sqlx::Error> {
    let rows = sqlx::query(
        "SELECT id, state, lease_token, outcome, case_id, policy_no, stage,
                coalesce(leased_by, '') AS agent_id, traceparent
         FROM dispatch.phone_tasks WHERE id = ANY($1)",
    )
    .bind(ids)
    .fetch_all(pool)
    .await?;
    let mut tasks = std::collections::HashMap::with_capacity(rows.len());
    for r in rows {
        tasks.insert(
            r.try_get("id")?,
            TaskRow {
                state: r.try_get("state")?,
                lease_token: r.try_get("lease_token")?,
                outcome: r.try_get("outcome")?,
                case_id: r.try_get("case_id")?,
                policy_no: r.try_get("policy_no")?,
                stage: r.try_get("stage")?,
                agent_id: r.try_get("agent_id")?,
                traceparent: r.try_get("traceparent")?,
            },
        );
    }
    Ok(tasks)
}

/// The completion with its event if its token holds the task (the statement checks
/// again under the row lock), or the answer it gets without a write.
fn prepare(c: Completion, task: Option<&TaskRow>) -> Result<Ready, Answer> {
    let Some(task) = task else {
        return Err(Answer::NotFound);
    };
    if task.lease_token != Some(c.lease_token) {
        return Err(Answer::NotHeld(task.state.clone()));
    }
    if task.state == "completed" {
        return Err(Answer::Completed(task.outcome.clone()));
    }
    let outcome = &c.outcome;
    let event = PhoneTaskCompleted {
        task_id: c.task_id.to_string(),
        case_id: task.case_id.to_string(),
        policy_no: task.policy_no.clone(),
        stage: task.stage.clone(),
        outcome: outcome.kind as i32,
        new_policy_no: outcome.new_policy_no.clone(),
        promised_date: outcome
            .promised_date
            .map(|d| d.to_string())
            .unwrap_or_default(),
        call_back_at_ms: outcome
            .call_back_at
            .map(|t| t.timestamp_millis())
            .unwrap_or(0),
        reason: outcome.reason.clone(),
        agent_id: task.agent_id.clone(),
        completed_at_ms: c.completed_at.timestamp_millis(),
    };
    let detail = serde_json::json!({
        "new_policy_no": outcome.new_policy_no,
        "promised_date": outcome.promised_date.map(|d| d.to_string()),
        "call_back_at": outcome.call_back_at,
        "reason": outcome.reason,
    });
    Ok(Ready {
        task_id: c.task_id,
        lease_token: c.lease_token,
        outcome: c.name,
        detail,
        agent_id: task.agent_id.clone(),
        completed_at: c.completed_at,
        event_id: Uuid::now_v7(),
        payload: prost::Message::encode_to_vec(&event),
        traceparent: task.traceparent.clone().or(c.fallback_traceparent),
    })
}

/// The outcomes after which none of the case's other contacts waiting here may go.
const ENDS_THE_CASE: &[&str] = &[
    "renewed",
    "insured_elsewhere",
    "vehicle_sold",
    "wrong_number",
];

/// The completion statement's part for a batch with an [`ENDS_THE_CASE`] outcome (the
/// rest of the time it is left out: a plan for it, on a table whose statistics are
/// not gathered yet, reads every waiting task's index entry to find none).
const WITHDRAWALS: &str = "
         -- A renewal reported on the call, a customer lost (insured elsewhere, vehicle
         -- sold) or a wrong number: the case's other contacts waiting here stop at once
         -- (the scheduler holds or stops its timers on the same event). The cases are
         -- an array, so the updates go by index (a join would be costed as a scan of
         -- every task and message, batch after batch).
         ended AS (
             SELECT DISTINCT case_id FROM done
             WHERE outcome IN ('renewed', 'insured_elsewhere', 'vehicle_sold', 'wrong_number')
         ),
         tasks_withdrawn AS (
             UPDATE dispatch.phone_tasks t SET state = 'withdrawn',
                    last_error = 'renewed, lost or a wrong number on another call of the case'
             WHERE t.case_id = ANY(ARRAY(SELECT case_id FROM ended))
               AND t.state IN ('open', 'leased') AND t.id NOT IN (SELECT id FROM done)
         ),
         sms_withdrawn AS (
             UPDATE dispatch.sms_messages m SET state = 'withdrawn',
                    last_error = 'renewed, lost or a wrong number on a call'
             WHERE m.case_id = ANY(ARRAY(SELECT case_id FROM ended)) AND m.state = 'queued'
         ),
";

/// The completion statement for `batch` (with the withdrawals only where it needs
/// them).
fn completion_sql(schema: &str, batch: &[Ready]) -> String {
    format!(
        "WITH input AS (
             SELECT * FROM unnest($1::uuid[], $2::uuid[], $3::text[], $4::jsonb[], $5::text[],
                                  $6::timestamptz[], $7::uuid[], $8::bytea[], $9::text[])
                 AS v(id, token, outcome, detail, agent_id, completed_at, event_id, payload, traceparent)
         ),
         done AS (
             UPDATE dispatch.phone_tasks t
             SET state = 'completed', outcome = v.outcome, outcome_detail = v.detail,
                 completed_at = v.completed_at
             FROM input v
             WHERE t.id = v.id AND t.lease_token = v.token AND t.state IN ('leased', 'withdrawn')
                   AND coalesce(t.leased_by, '') = v.agent_id
             RETURNING t.id, t.case_id, t.policy_no, v.outcome, v.agent_id, v.completed_at,
                       v.event_id, v.payload, v.traceparent
         ),
         corrected AS (
             INSERT INTO dispatch.contact_corrections (task_id, case_id, policy_no, reported_by, reported_at)
             SELECT id, case_id, policy_no, agent_id, completed_at FROM done
             WHERE outcome = 'wrong_number'
             ON CONFLICT DO NOTHING
         ),
{withdrawals}         published AS (
             INSERT INTO {schema}.outbox (id, subject, payload, traceparent)
             SELECT event_id, $10, payload, traceparent FROM done ORDER BY event_id
         )
         SELECT id FROM done",
        withdrawals = if batch.iter().any(|c| ENDS_THE_CASE.contains(&c.outcome)) {
            WITHDRAWALS
        } else {
            ""
        },
    )
}

async fn write_statement(
    pool: &PgPool,
    schema: &'static str,
    batch: &[Ready],
) -> Result<std::collections::HashSet<Uuid>, String> {
    let sql = completion_sql(schema, batch);
    let mut attempt = 0;
    loop {
        let done: Result<Vec<Uuid>, sqlx::Error> =
            sqlx::query_scalar(sqlx::AssertSqlSafe(sql.clone()))
                .bind(batch.iter().map(|c| c.task_id).collect::<Vec<_>>())
                .bind(batch.iter().map(|c| c.lease_token).collect::<Vec<_>>())
                .bind(batch.iter().map(|c| c.outcome).collect::<Vec<_>>())
                .bind(batch.iter().map(|c| c.detail.clone()).collect::<Vec<_>>())
                .bind(
                    batch
                        .iter()
                        .map(|c| c.agent_id.as_str())
                        .collect::<Vec<_>>(),
                )
                .bind(batch.iter().map(|c| c.completed_at).collect::<Vec<_>>())
                .bind(batch.iter().map(|c| c.event_id).collect::<Vec<_>>())
                .bind(
                    batch
                        .iter()
                        .map(|c| c.payload.as_slice())
                        .collect::<Vec<_>>(),
                )
                .bind(
                    batch
                        .iter()
                        .map(|c| c.traceparent.as_deref())
                        .collect::<Vec<_>>(),
                )
                .bind(subject::DISPATCH_TASK_COMPLETED)
                .fetch_all(pool)
                .await;
        match done {
            Ok(ids) => return Ok(ids.into_iter().collect()),
            // A dead-letter sweep or another batch locking the same rows the other way round.
            Err(sqlx::Error::Database(e))
                if attempt < 3 && e.code().as_deref() == Some("40P01") =>
            {
                attempt += 1;
            }
            Err(e) => {
                tracing::error!(error = %e, "recording completions failed");
                return Err(e.to_string());
            }
        }
    }
}

/// A token that does not hold the task (stale, foreign, or the task moved on): 409.
fn refused(state: &str) -> TaskError {
    match state {
        "leased" | "open" => {
            TaskError::Conflict("the lease token is stale or belongs to another task".into())
        }
        other => TaskError::Conflict(format!(
            "the task is {other}; the lease token no longer holds it"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(outcome: &str) -> CompleteRequest {
        CompleteRequest {
            lease_token: Uuid::nil(),
            outcome: outcome.into(),
            new_policy_no: None,
            promised_date: None,
            call_back_at: None,
            reason: None,
        }
    }

    #[test]
    fn each_outcome_needs_its_fields() {
        let now = Utc::now();
        assert!(request("renewed").outcome(now).is_err());
        assert!(request("promised").outcome(now).is_err());
        assert!(request("call_back").outcome(now).is_err());
        assert!(request("refused").outcome(now).is_err());
        assert!(request("lost").outcome(now).is_err());
        assert!(request("unreachable").outcome(now).is_ok());
        let mut r = request("renewed");
        r.new_policy_no = Some("P2027".into());
        assert_eq!(
            r.outcome(now).map(|o| o.kind).ok(),
            Some(CallOutcome::Renewed)
        );
        let mut r = request("promised");
        r.promised_date = Some("2027-02-30".into());
        assert!(r.outcome(now).is_err(), "no such date");
        let mut r = request("call_back");
        r.call_back_at = Some(now - chrono::Duration::hours(1));
        assert!(r.outcome(now).is_err(), "not in the past");
    }
}
