//! Outcomes: the agent holding the lease completes the task with what the call ended
//! with (DOMAIN.md's list, each with its fields). The task's new state, the
//! `dispatch.task.completed` event and, for a wrong number, the mark on the customer's
//! contact data are written by one statement (the event is built from the task as read
//! just before: the fields it takes from the task never change while the lease token
//! is the same, and the statement completes the task only under that token). Completing again with the same
//! token and outcome (a retry after a lost answer) answers the same, with no second
//! event. A task withdrawn while leased still takes its holder's outcome, so no
//! outcome of a call that happened is lost.

use chrono::{DateTime, NaiveDate, Utc};
use renewal_contract::dispatch::{CallOutcome, PhoneTaskCompleted};
use renewal_contract::subject;
use serde::Deserialize;
use sqlx::Row;
use uuid::Uuid;

use super::{PhoneTasks, TaskError};

#[derive(Debug, Deserialize)]
pub struct CompleteRequest {
    pub lease_token: Uuid,
    /// renewed, promised, call_back, refused, unreachable, wrong_number,
    /// insured_elsewhere, vehicle_sold.
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
            other => {
                return Err(TaskError::Invalid(format!(
                    "outcome {other:?} is not one of renewed, promised, call_back, refused, \
                     unreachable, wrong_number, insured_elsewhere, vehicle_sold"
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
        if let Some(at) = outcome.call_back_at
            && at < now
        {
            return Err(TaskError::Invalid("call_back_at is in the past".into()));
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
    let task = sqlx::query(
        "SELECT state, lease_token, outcome, case_id, policy_no, stage, coalesce(leased_by, '') AS agent_id,
                traceparent
         FROM dispatch.phone_tasks WHERE id = $1",
    )
    .bind(id)
    .fetch_optional(&tasks.pool)
    .await?
    .ok_or_else(|| TaskError::NotFound(id.to_string()))?;
    let state: String = task.try_get("state")?;
    if task.try_get::<Option<Uuid>, _>("lease_token")? != Some(request.lease_token) {
        return Err(refused(&state));
    }
    if state == "completed" {
        // A retry of a completion that went through answers the same.
        let recorded: Option<String> = task.try_get("outcome")?;
        return match recorded {
            Some(recorded) if recorded == name => Ok(done),
            recorded => Err(TaskError::Conflict(format!(
                "the task was already completed as {}",
                recorded.unwrap_or_default()
            ))),
        };
    }
    let case_id: Uuid = task.try_get("case_id")?;
    let agent_id: String = task.try_get("agent_id")?;
    let event = PhoneTaskCompleted {
        task_id: id.to_string(),
        case_id: case_id.to_string(),
        policy_no: task.try_get("policy_no")?,
        stage: task.try_get("stage")?,
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
        agent_id: agent_id.clone(),
        completed_at_ms: now.timestamp_millis(),
    };
    let detail = serde_json::json!({
        "new_policy_no": outcome.new_policy_no,
        "promised_date": outcome.promised_date.map(|d| d.to_string()),
        "call_back_at": outcome.call_back_at,
        "reason": outcome.reason,
    });
    // The event continues the trace of the command that made the task.
    let traceparent = task
        .try_get::<Option<String>, _>("traceparent")?
        .or_else(renewal_platform::telemetry::current_traceparent);
    let sql = format!(
        "WITH done AS (
             UPDATE dispatch.phone_tasks
             SET state = 'completed', outcome = $3, outcome_detail = $4, completed_at = $5
             WHERE id = $1 AND lease_token = $2 AND state IN ('leased', 'withdrawn')
                   AND coalesce(leased_by, '') = $6
             RETURNING id, case_id, policy_no, mobile
         ),
         corrected AS (
             INSERT INTO dispatch.contact_corrections (task_id, case_id, policy_no, mobile, reported_by, reported_at)
             SELECT id, case_id, policy_no, mobile, $6, $5 FROM done WHERE $3 = 'wrong_number'
             ON CONFLICT DO NOTHING
         ),
         published AS (
             INSERT INTO {schema}.outbox (id, subject, payload, traceparent)
             SELECT $7, $8, $9, $10 FROM done
         )
         SELECT count(*) FROM done",
        schema = tasks.outbox.schema()
    );
    let completed: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
        .bind(id)
        .bind(request.lease_token)
        .bind(name)
        .bind(&detail)
        .bind(now)
        .bind(&agent_id)
        .bind(Uuid::now_v7())
        .bind(subject::DISPATCH_TASK_COMPLETED)
        .bind(prost::Message::encode_to_vec(&event))
        .bind(traceparent)
        .fetch_one(&tasks.pool)
        .await?;
    if completed == 0 {
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
            Some((state, Some(recorded))) if state == "completed" && recorded == name => Ok(done),
            Some((state, _)) => Err(refused(&state)),
            None => Err(refused("leased")),
        };
    }
    tasks.outbox.wake();
    renewal_platform::activity::record();
    metrics::counter!("phone_tasks_total", "status" => "completed", "outcome" => name).increment(1);
    Ok(done)
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
