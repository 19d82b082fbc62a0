//! Owners: every change is a row in the history and an event with who, when and why.
//! One statement serves a single claim and a sweep of thousands (the automatic
//! assignment writes its own, re-checking each case, and publishes with `publish`).

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use renewal_contract::assignment::OwnerAssigned;
use renewal_contract::subject;
use renewal_platform::Outbox;
use sqlx::postgres::PgRow;
use sqlx::{PgConnection, Row};
use uuid::Uuid;

/// The owner HQ's centralized outbound team works under.
pub const HQ_OWNER: &str = "HQ";

/// The owner a city company's own team works under.
pub fn city_company_owner(city_code: &str) -> String {
    format!("CITY-{city_code}")
}

/// One change of owner. `owner` None hands the case back with no owner.
#[derive(Debug, Clone)]
pub struct NewOwner {
    pub case_id: Uuid,
    pub owner: Option<String>,
    pub owner_branch: Option<String>,
    /// The phase the case is in afterwards (`owned`, `hq`, `city_company`, `branch`).
    pub phase: &'static str,
    pub reason: String,
}

/// Applies the changes and publishes one `assignment.owner.assigned` per case changed.
pub async fn assign_many(
    tx: &mut PgConnection,
    outbox: &Outbox,
    changes: &[NewOwner],
    by: &str,
    now: DateTime<Utc>,
) -> Result<usize, sqlx::Error> {
    if changes.is_empty() {
        return Ok(0);
    }
    let ids: Vec<Uuid> = changes.iter().map(|c| c.case_id).collect();
    let owners: Vec<Option<&str>> = changes.iter().map(|c| c.owner.as_deref()).collect();
    let branches: Vec<Option<&str>> = changes.iter().map(|c| c.owner_branch.as_deref()).collect();
    let phases: Vec<&str> = changes.iter().map(|c| c.phase).collect();
    let reasons: Vec<&str> = changes.iter().map(|c| c.reason.as_str()).collect();
    let rows = sqlx::query(
        "WITH change AS (
             SELECT * FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[])
                 AS u(case_id, owner, branch, phase, reason)),
         old AS (
             SELECT c.case_id, c.owner_agent AS previous FROM assignment.cases c JOIN change USING (case_id)
             FOR UPDATE OF c),
         updated AS (
             UPDATE assignment.cases c
             SET owner_agent = change.owner, owner_branch = change.branch, phase = change.phase,
                 phase_due_at = NULL
             FROM change JOIN old USING (case_id)
             WHERE c.case_id = change.case_id
             RETURNING c.case_id, c.policy_no, c.branch_code, c.credited_agent, old.previous,
                       change.owner, change.reason),
         history AS (
             INSERT INTO assignment.owner_history (case_id, owner_agent, previous_owner, reason, assigned_by, assigned_at)
             SELECT case_id, owner, previous, reason, $6, $7 FROM updated)
         SELECT * FROM updated",
    )
    .bind(&ids)
    .bind(&owners)
    .bind(&branches)
    .bind(&phases)
    .bind(&reasons)
    .bind(by)
    .bind(now)
    .fetch_all(&mut *tx)
    .await?;
    publish(tx, outbox, &rows, by, now).await
}

/// Publishes one `assignment.owner.assigned` per changed case, from rows with the
/// case's `case_id`, `policy_no`, `branch_code`, `credited_agent` and the change's
/// `owner`, `previous` and `reason`. Returns how many.
pub(crate) async fn publish(
    tx: &mut PgConnection,
    outbox: &Outbox,
    rows: &[PgRow],
    by: &str,
    now: DateTime<Utc>,
) -> Result<usize, sqlx::Error> {
    let mut events = Vec::with_capacity(rows.len());
    let mut by_reason: HashMap<String, u64> = HashMap::new();
    for row in rows {
        let reason: String = row.try_get("reason")?;
        *by_reason.entry(reason.clone()).or_default() += 1;
        events.push((
            subject::ASSIGNMENT_OWNER_ASSIGNED,
            OwnerAssigned {
                case_id: row.try_get::<Uuid, _>("case_id")?.to_string(),
                policy_no: row.try_get("policy_no")?,
                branch_code: row.try_get("branch_code")?,
                owner_agent: row
                    .try_get::<Option<String>, _>("owner")?
                    .unwrap_or_default(),
                previous_owner: row
                    .try_get::<Option<String>, _>("previous")?
                    .unwrap_or_default(),
                credited_agent: row.try_get("credited_agent")?,
                reason,
                assigned_by: by.to_owned(),
                assigned_at_ms: now.timestamp_millis(),
            },
        ));
    }
    outbox.enqueue_many(tx, events).await?;
    for (reason, n) in by_reason {
        metrics::counter!("owners_assigned_total", "reason" => reason).increment(n);
    }
    Ok(rows.len())
}
