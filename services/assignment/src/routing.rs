//! Where a case is worked: each step (onto a branch's claims, the research queue, the
//! city pool, the steps of the second assignment) is a history row and an
//! `assignment.case.routed` event.

use chrono::{DateTime, Utc};
use renewal_contract::assignment::CaseRouted;
use renewal_contract::subject;
use renewal_platform::Outbox;
use sqlx::{PgConnection, Row};
use uuid::Uuid;

#[derive(Debug, Clone)]
pub struct Step {
    pub case_id: Uuid,
    pub step: &'static str,
    pub reason: String,
    pub deadline: Option<DateTime<Utc>>,
}

/// Records the steps (the cases were already moved) and publishes them.
pub async fn record_many(
    tx: &mut PgConnection,
    outbox: &Outbox,
    steps: &[Step],
    by: &str,
    now: DateTime<Utc>,
) -> Result<usize, sqlx::Error> {
    if steps.is_empty() {
        return Ok(0);
    }
    let ids: Vec<Uuid> = steps.iter().map(|s| s.case_id).collect();
    let names: Vec<&str> = steps.iter().map(|s| s.step).collect();
    let reasons: Vec<&str> = steps.iter().map(|s| s.reason.as_str()).collect();
    let deadlines: Vec<Option<DateTime<Utc>>> = steps.iter().map(|s| s.deadline).collect();
    let rows = sqlx::query(
        "WITH step AS (
             SELECT * FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::timestamptz[])
                 AS u(case_id, step, reason, deadline)),
         written AS (
             INSERT INTO assignment.routing_history (case_id, step, reason, routed_by, routed_at, deadline)
             SELECT case_id, step, reason, $5, $6, deadline FROM step)
         SELECT s.case_id, s.step, s.reason, s.deadline, c.policy_no, c.city_code, c.branch_code,
                COALESCE(c.effective_expiry_date, c.expiry_date) AS expiry, c.time_zone, c.owner_agent
         FROM step s JOIN assignment.cases c USING (case_id)",
    )
    .bind(&ids)
    .bind(&names)
    .bind(&reasons)
    .bind(&deadlines)
    .bind(by)
    .bind(now)
    .fetch_all(&mut *tx)
    .await?;
    let mut events = Vec::with_capacity(rows.len());
    for row in &rows {
        let step: String = row.try_get("step")?;
        metrics::counter!("cases_routed_total", "step" => step.clone()).increment(1);
        events.push((
            subject::ASSIGNMENT_CASE_ROUTED,
            CaseRouted {
                case_id: row.try_get::<Uuid, _>("case_id")?.to_string(),
                policy_no: row.try_get("policy_no")?,
                city_code: row.try_get("city_code")?,
                branch_code: row.try_get("branch_code")?,
                step,
                reason: row.try_get("reason")?,
                routed_by: by.to_owned(),
                routed_at_ms: now.timestamp_millis(),
                deadline_ms: row
                    .try_get::<Option<DateTime<Utc>>, _>("deadline")?
                    .map_or(0, |d| d.timestamp_millis()),
                expiry_date: row
                    .try_get::<Option<chrono::NaiveDate>, _>("expiry")?
                    .map(|d| d.to_string())
                    .unwrap_or_default(),
                time_zone: row
                    .try_get::<Option<String>, _>("time_zone")?
                    .unwrap_or_default(),
                owner_agent: row
                    .try_get::<Option<String>, _>("owner_agent")?
                    .unwrap_or_default(),
            },
        ));
    }
    outbox.enqueue_many(tx, events).await?;
    Ok(rows.len())
}

/// Records the steps in the history without an event each: for claims opened from an
/// issued list, whose `lists.list.issued` event already carries every item.
pub async fn record_history(
    tx: &mut PgConnection,
    steps: &[Step],
    by: &str,
    now: DateTime<Utc>,
) -> Result<u64, sqlx::Error> {
    let ids: Vec<Uuid> = steps.iter().map(|s| s.case_id).collect();
    let names: Vec<&str> = steps.iter().map(|s| s.step).collect();
    let reasons: Vec<&str> = steps.iter().map(|s| s.reason.as_str()).collect();
    let deadlines: Vec<Option<DateTime<Utc>>> = steps.iter().map(|s| s.deadline).collect();
    let written = sqlx::query(
        "INSERT INTO assignment.routing_history (case_id, step, reason, routed_by, routed_at, deadline)
         SELECT case_id, step, reason, $5, $6, deadline
         FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::timestamptz[]) AS u(case_id, step, reason, deadline)",
    )
    .bind(&ids)
    .bind(&names)
    .bind(&reasons)
    .bind(&deadlines)
    .bind(by)
    .bind(now)
    .execute(&mut *tx)
    .await?;
    Ok(written.rows_affected())
}
