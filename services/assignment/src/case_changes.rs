//! A case whose policy changed while it is worked (`lists.case.changed`): a new expiry
//! moves the moment it must have an owner by; new flags decide where it escalates; a
//! new branch re-routes it: a claim waiting at the old branch, or a case owned there,
//! goes to the new branch's claims (its owner, of the old branch, hands it over), with
//! the claim window counted from now. A case further on (research, pool, second
//! assignment, HQ) keeps its step; its branch is noted.

use chrono::{DateTime, Utc};
use renewal_contract::lists::CaseChanged;
use renewal_platform::inbox::field;
use renewal_platform::{HandleError, Outbox};
use sqlx::{PgConnection, Row};
use uuid::Uuid;

use crate::ownership::{self, NewOwner};
use crate::routing::{self, Step};

pub async fn changed(
    tx: &mut PgConnection,
    outbox: &Outbox,
    event: &CaseChanged,
    now: DateTime<Utc>,
) -> Result<(), HandleError> {
    let id = field::uuid("case_id", &event.case_id)?;
    let expiry = field::date("expiry_date", &event.expiry_date)?;
    let effective = field::date("effective_expiry_date", &event.effective_expiry_date)?;
    let tz = field::time_zone("time_zone", &event.time_zone)?;
    let owner_by = renewal_platform::local_instant(
        effective - chrono::Days::new(crate::cases::OWNER_BY_DAYS),
        chrono::NaiveTime::MIN,
        tz,
    );
    let Some(case) = sqlx::query(
        "UPDATE assignment.cases SET expiry_date = $2, effective_expiry_date = $3, owner_by = $4,
             important = $5, group_policy = $6
         WHERE case_id = $1 AND state = 'open'
         RETURNING branch_code, phase, owner_agent, city_code, outcome",
    )
    .bind(id)
    .bind(expiry)
    .bind(effective)
    .bind(owner_by)
    .bind(event.important)
    .bind(event.group_policy)
    .fetch_optional(&mut *tx)
    .await?
    else {
        return Ok(());
    };
    let branch: String = case.try_get("branch_code")?;
    // A lapsed case stays with the owner working its rescue.
    let lapsed = case.try_get::<Option<String>, _>("outcome")?.is_some();
    if event.changed.iter().any(|c| c == "branch") && branch != event.branch_code && !lapsed {
        let phase: String = case.try_get("phase")?;
        let city: String = case.try_get("city_code")?;
        reroute(tx, outbox, id, &phase, &city, &event.branch_code, tz, now).await?;
    }
    Ok(())
}

/// Moves the case to `branch`: its claims when the old branch was to claim or owns it.
#[allow(clippy::too_many_arguments)]
async fn reroute(
    tx: &mut PgConnection,
    outbox: &Outbox,
    id: Uuid,
    phase: &str,
    city: &str,
    branch: &str,
    tz: chrono_tz::Tz,
    now: DateTime<Utc>,
) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE assignment.cases SET branch_code = $2 WHERE case_id = $1")
        .bind(id)
        .bind(branch)
        .execute(&mut *tx)
        .await?;
    if !matches!(phase, "branch" | "owned" | "confirming" | "branch_reassign") {
        return Ok(());
    }
    if phase != "branch" {
        let handed = NewOwner {
            case_id: id,
            owner: None,
            owner_branch: None,
            phase: "branch",
            reason: "branch_changed".into(),
        };
        ownership::assign_many(tx, outbox, &[handed], "system", now).await?;
    }
    let deadlines = crate::org::city_deadlines(tx, city).await?;
    let due = deadlines.claim_due(renewal_platform::local_date(now, tz), tz);
    sqlx::query(
        "UPDATE assignment.cases SET phase = 'branch', phase_due_at = $2 WHERE case_id = $1",
    )
    .bind(id)
    .bind(due)
    .execute(&mut *tx)
    .await?;
    let step = Step {
        case_id: id,
        step: "branch",
        reason: "branch_changed".into(),
        deadline: Some(due),
    };
    routing::record_many(tx, outbox, &[step], "system", now).await?;
    Ok(())
}

/// A renewal was reported on a call: no deadline runs while the core system confirms it.
pub async fn park(tx: &mut PgConnection, case_id: Uuid) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE assignment.cases SET phase_due_at = NULL WHERE case_id = $1 AND state = 'open'",
    )
    .bind(case_id)
    .execute(&mut *tx)
    .await?;
    Ok(())
}

/// The reported renewal was not confirmed (`lists.case.reopened`): a case that lapsed
/// meanwhile is kept for its rescue; one still before its expiry picks its step up
/// again with a step's time from now.
pub async fn reopened(
    tx: &mut PgConnection,
    event: &renewal_contract::lists::CaseReopened,
    now: DateTime<Utc>,
) -> Result<(), HandleError> {
    let id = field::uuid("case_id", &event.case_id)?;
    if event.lapsed {
        return Ok(crate::cases::keep_for_rescue(tx, id).await?);
    }
    let timed: bool = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM assignment.cases
                        WHERE case_id = $1 AND state = 'open' AND outcome IS NULL
                          AND phase IN ('research', 'branch', 'pool', 'confirming',
                                        'branch_reassign', 'city_reassign'))",
    )
    .bind(id)
    .fetch_one(&mut *tx)
    .await?;
    if !timed {
        return Ok(());
    }
    let (ids, dues): (Vec<Uuid>, Vec<DateTime<Utc>>) =
        crate::second_assignment::step_deadlines(tx, &[id], now)
            .await?
            .into_iter()
            .unzip();
    sqlx::query(
        "UPDATE assignment.cases c SET phase_due_at = u.due
         FROM UNNEST($1::uuid[], $2::timestamptz[]) AS u(id, due) WHERE c.case_id = u.id",
    )
    .bind(&ids)
    .bind(&dues)
    .execute(&mut *tx)
    .await?;
    Ok(())
}
