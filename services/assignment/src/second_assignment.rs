//! The second assignment: on the scheduler's T-5 command the owner confirms the case
//! can still be renewed; if they cannot (or do not answer in time) it is reassigned
//! within the branch, then city-wide, then to HQ's centralized outbound team (dispatch
//! makes an hq-queue task of that step). Important customers and group policies
//! escalate to the city company for support instead: the owner keeps the case and
//! dispatch makes a city-queue task. Each step is an event; the credit stays with the
//! originating agent throughout.

use axum::Json;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use chrono::{DateTime, Utc};
use renewal_contract::scheduler::ConfirmOwner;
use renewal_contract::subject;
use renewal_platform::inbox::field;
use renewal_platform::{Delivery, HandleError, Handler, Outbox};
use serde::Deserialize;
use sqlx::{PgConnection, Row};
use uuid::Uuid;

use crate::claims::{ClaimApi, LockedCase, lock_case};
use crate::ownership::{self, HQ_OWNER, NewOwner};
use crate::refusals::{Refusal, body, required};
use crate::routing::{self, Step};

/// `assignment.cmd.confirm_owner` (T-5, not renewed); and lists' erasures, which the
/// consumer's `assignment.cmd.>` takes too (see `crate::COMMANDS`).
pub struct Commands {
    pub outbox: Outbox,
    pub clock: renewal_platform::Clock,
    pub wake: std::sync::Arc<tokio::sync::Notify>,
}

impl Handler for Commands {
    async fn handle(&self, tx: &mut PgConnection, delivery: &Delivery) -> Result<(), HandleError> {
        match delivery.subject.as_str() {
            subject::ASSIGNMENT_CMD_CONFIRM_OWNER => {}
            subject::ASSIGNMENT_CMD_ERASE_PERSONAL_DATA => {
                return crate::erasure::erase(tx, &self.outbox, self.clock.now(), delivery).await;
            }
            other => {
                return Err(HandleError::Malformed(format!(
                    "unexpected subject {other}"
                )));
            }
        }
        let command: ConfirmOwner = delivery.decode()?;
        let case_id = field::uuid("case_id", &command.case_id)?;
        let now = self.clock.now();
        let (ids, dues): (Vec<Uuid>, Vec<DateTime<Utc>>) = step_deadlines(tx, &[case_id], now)
            .await?
            .into_iter()
            .unzip();
        let row = sqlx::query(
            "UPDATE assignment.cases c SET phase = 'confirming', phase_due_at = u.due
             FROM UNNEST($1::uuid[], $2::timestamptz[]) AS u(id, due)
             WHERE c.case_id = u.id AND c.state = 'open' AND c.phase = 'owned'
             RETURNING c.phase_due_at",
        )
        .bind(&ids)
        .bind(&dues)
        .fetch_optional(&mut *tx)
        .await?;
        // A closed case, or one already past this step (a replay), has nothing to confirm.
        if let Some(row) = row {
            routing::record_many(
                tx,
                &self.outbox,
                &[Step {
                    case_id,
                    step: "confirming",
                    reason: command.stage,
                    deadline: row.try_get("phase_due_at")?,
                }],
                "system",
                now,
            )
            .await?;
        }
        Ok(())
    }

    fn committed(&self) {
        self.wake.notify_one();
    }

    /// Commands name cases, never a customer: kept whole.
    fn redact(&self, delivery: &Delivery) -> Option<Vec<u8>> {
        Some(delivery.payload.to_vec())
    }
}

/// Where a case goes when its owner cannot renew it: for important customers and group
/// policies, the city company's support while the owner keeps it; else the branch.
pub(crate) async fn owner_gives_up(
    tx: &mut PgConnection,
    outbox: &Outbox,
    cases: &[(Uuid, String, bool)],
    reason: &str,
    by: &str,
    now: DateTime<Utc>,
) -> Result<(), sqlx::Error> {
    let (supported, to_branch): (Vec<_>, Vec<_>) = cases.iter().partition(|c| c.2);
    let supported: Vec<Uuid> = supported.into_iter().map(|c| c.0).collect();
    let to_branch: Vec<Uuid> = to_branch.into_iter().map(|c| c.0).collect();
    if !supported.is_empty() {
        sqlx::query(
            "UPDATE assignment.cases SET phase = 'city_company', phase_due_at = NULL
             WHERE case_id = ANY($1)",
        )
        .bind(&supported)
        .execute(&mut *tx)
        .await?;
        let steps: Vec<Step> = supported
            .iter()
            .map(|id| Step {
                case_id: *id,
                step: "city_support",
                reason: reason.to_owned(),
                deadline: None,
            })
            .collect();
        routing::record_many(tx, outbox, &steps, by, now).await?;
    }
    step_to(tx, outbox, &to_branch, "branch_reassign", reason, by, now).await?;
    Ok(())
}

/// Hands cases to HQ's centralized outbound team (its owner from now on; the credit
/// stays with the originating agent).
pub(crate) async fn send_to_hq(
    tx: &mut PgConnection,
    outbox: &Outbox,
    ids: &[Uuid],
    reason: &str,
    by: &str,
    now: DateTime<Utc>,
) -> Result<(), sqlx::Error> {
    let to_hq: Vec<NewOwner> = ids
        .iter()
        .map(|case_id| NewOwner {
            case_id: *case_id,
            owner: Some(HQ_OWNER.into()),
            owner_branch: None,
            phase: "hq",
            reason: "hq_outbound".into(),
        })
        .collect();
    ownership::assign_many(tx, outbox, &to_hq, by, now).await?;
    let steps: Vec<Step> = ids
        .iter()
        .map(|case_id| Step {
            case_id: *case_id,
            step: "hq",
            reason: reason.to_owned(),
            deadline: None,
        })
        .collect();
    routing::record_many(tx, outbox, &steps, by, now).await?;
    Ok(())
}

/// When a step begun at `now` ends for each case: its city's `step_hours`, counted on
/// working days in the case's time zone.
pub(crate) async fn step_deadlines(
    tx: &mut PgConnection,
    ids: &[Uuid],
    now: DateTime<Utc>,
) -> Result<Vec<(Uuid, DateTime<Utc>)>, sqlx::Error> {
    let rows = sqlx::query(
        "SELECT c.case_id, c.time_zone, COALESCE(s.step_hours, 24) AS step_hours
         FROM assignment.cases c LEFT JOIN assignment.city_settings s ON s.city_code = c.city_code
         WHERE c.case_id = ANY($1)",
    )
    .bind(ids)
    .fetch_all(&mut *tx)
    .await?;
    rows.iter()
        .map(|r| {
            let tz: chrono_tz::Tz = r
                .try_get::<Option<String>, _>("time_zone")?
                .and_then(|t| t.parse().ok())
                .unwrap_or(chrono_tz::Asia::Shanghai);
            let deadlines = crate::org::CityDeadlines {
                step_hours: r.try_get("step_hours")?,
                ..crate::org::CityDeadlines::HANDBOOK
            };
            Ok((r.try_get("case_id")?, deadlines.step_due(now, tz)))
        })
        .collect()
}

/// Moves cases to a timed phase (the owner stays until someone takes the case).
async fn step_to(
    tx: &mut PgConnection,
    outbox: &Outbox,
    ids: &[Uuid],
    phase: &'static str,
    reason: &str,
    by: &str,
    now: DateTime<Utc>,
) -> Result<(), sqlx::Error> {
    if ids.is_empty() {
        return Ok(());
    }
    let (ids, dues): (Vec<Uuid>, Vec<DateTime<Utc>>) =
        step_deadlines(tx, ids, now).await?.into_iter().unzip();
    let rows = sqlx::query(
        "UPDATE assignment.cases c SET phase = $3, phase_due_at = u.due
         FROM UNNEST($1::uuid[], $2::timestamptz[]) AS u(id, due)
         WHERE c.case_id = u.id
         RETURNING c.case_id, c.phase_due_at",
    )
    .bind(&ids)
    .bind(&dues)
    .bind(phase)
    .fetch_all(&mut *tx)
    .await?;
    let steps = rows
        .iter()
        .map(|r| {
            Ok(Step {
                case_id: r.try_get("case_id")?,
                step: phase,
                reason: reason.to_owned(),
                deadline: r.try_get("phase_due_at")?,
            })
        })
        .collect::<Result<Vec<_>, sqlx::Error>>()?;
    routing::record_many(tx, outbox, &steps, by, now).await?;
    Ok(())
}

/// The second assignment's deadlines that have passed: an unconfirmed case is treated
/// as one its owner cannot renew; a case nobody in the branch took opens city-wide;
/// one nobody in the city took goes to HQ.
pub async fn step_due(
    tx: &mut PgConnection,
    outbox: &Outbox,
    now: DateTime<Utc>,
    limit: i64,
) -> Result<usize, sqlx::Error> {
    let due = sqlx::query(
        "SELECT case_id, city_code, phase, important OR group_policy AS to_city FROM assignment.cases
         WHERE state = 'open' AND phase IN ('confirming', 'branch_reassign', 'city_reassign')
           AND phase_due_at <= $1
         ORDER BY phase_due_at LIMIT $2
         FOR UPDATE SKIP LOCKED",
    )
    .bind(now)
    .bind(limit)
    .fetch_all(&mut *tx)
    .await?;
    let (mut unconfirmed, mut to_city, mut to_hq) = (Vec::new(), Vec::new(), Vec::new());
    for row in &due {
        let case_id: Uuid = row.try_get("case_id")?;
        match row.try_get::<String, _>("phase")?.as_str() {
            "confirming" => {
                unconfirmed.push((case_id, row.try_get("city_code")?, row.try_get("to_city")?))
            }
            "branch_reassign" => to_city.push(case_id),
            _ => to_hq.push(case_id),
        }
    }
    owner_gives_up(tx, outbox, &unconfirmed, "confirm_deadline", "system", now).await?;
    step_to(
        tx,
        outbox,
        &to_city,
        "city_reassign",
        "no_branch_taker",
        "system",
        now,
    )
    .await?;
    send_to_hq(tx, outbox, &to_hq, "no_city_taker", "system", now).await?;
    Ok(due.len())
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct OwnerAnswer {
    /// The owner answering.
    pub agent_code: String,
    /// Why the owner cannot renew it (for `:release`).
    pub reason: Option<String>,
}

/// `POST /v1/cases/{policy_no}:confirm` (the owner can still renew it) or
/// `POST /v1/cases/{policy_no}:release` with a reason (the owner cannot).
pub async fn owner_answers(
    State(api): State<ClaimApi>,
    caller: renewal_platform::Caller,
    Path(action): Path<String>,
    json: Result<Json<OwnerAnswer>, JsonRejection>,
) -> Result<Json<serde_json::Value>, Refusal> {
    let (policy_no, verb) = action
        .rsplit_once(':')
        .filter(|(p, _)| !p.is_empty())
        .ok_or_else(|| {
            Refusal::Invalid(format!("{action:?}: use {{policy_no}}:confirm or :release"))
        })?;
    caller.require(crate::access::OWNER_ANSWERS)?;
    let answer = body(json)?;
    let agent = required("agent_code", &answer.agent_code)?;
    if verb != "confirm" && verb != "release" {
        return Err(Refusal::Invalid(format!(
            "unknown action {verb:?}: use confirm or release"
        )));
    }
    let reason = if verb == "release" {
        required("reason", answer.reason.as_deref().unwrap_or(""))?.to_owned()
    } else {
        String::new()
    };
    let now = api.clock.now();
    let mut tx = api.pool.begin().await?;
    let case = lock_case(&mut tx, policy_no).await?;
    let scope = renewal_platform::Scope {
        agent: case.owner_agent.as_deref(),
        branch: case.owner_branch.as_deref().or(Some(&case.branch_code)),
        city: Some(&case.city_code),
    };
    if caller.authorize(crate::access::OWNER_ANSWERS, scope)? == renewal_platform::Role::Agent {
        caller.must_match("agent_code", agent, &caller.agent_code)?;
    }
    if case.owner_agent.as_deref() != Some(agent) {
        return Err(Refusal::NotOwner {
            agent: agent.to_owned(),
        });
    }
    let phase = if verb == "confirm" {
        confirm(&mut tx, &api.outbox, &case, agent, now).await?
    } else {
        release(&mut tx, &api.outbox, &case, agent, &reason, now).await?
    };
    tx.commit().await?;
    api.outbox.wake();
    api.wake.notify_one();
    Ok(Json(
        serde_json::json!({"policy_no": policy_no, "phase": phase}),
    ))
}

/// The owner can still renew the case: it stays theirs.
async fn confirm(
    tx: &mut PgConnection,
    outbox: &Outbox,
    case: &LockedCase,
    agent: &str,
    now: DateTime<Utc>,
) -> Result<&'static str, Refusal> {
    if case.phase != "confirming" {
        return Err(Refusal::WrongPhase {
            action: "confirmed",
            phase: case.phase.clone(),
        });
    }
    sqlx::query(
        "UPDATE assignment.cases SET phase = 'owned', phase_due_at = NULL WHERE case_id = $1",
    )
    .bind(case.case_id)
    .execute(&mut *tx)
    .await?;
    routing::record_many(
        tx,
        outbox,
        &[Step {
            case_id: case.case_id,
            step: "confirmed",
            reason: "owner_can_renew".into(),
            deadline: None,
        }],
        agent,
        now,
    )
    .await?;
    Ok("owned")
}

/// The owner cannot renew the case in time: second assignment takes it to the branch,
/// or to the city company for important and group policies.
async fn release(
    tx: &mut PgConnection,
    outbox: &Outbox,
    case: &LockedCase,
    agent: &str,
    reason: &str,
    now: DateTime<Utc>,
) -> Result<&'static str, Refusal> {
    if case.phase != "owned" && case.phase != "confirming" {
        return Err(Refusal::WrongPhase {
            action: "released",
            phase: case.phase.clone(),
        });
    }
    let to_city = case.escalates_to_city();
    owner_gives_up(
        tx,
        outbox,
        &[(case.case_id, case.city_code.clone(), to_city)],
        &format!("owner_cannot_renew: {reason}"),
        agent,
        now,
    )
    .await?;
    Ok(if to_city {
        "city_company"
    } else {
        "branch_reassign"
    })
}
