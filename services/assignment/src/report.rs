//! Read-only facts for the funnel report and the demo's checks.

use chrono::{DateTime, Utc};
use sqlx::{PgPool, Row};

#[derive(Debug, Clone)]
pub struct FirstOwner {
    pub policy_no: String,
    pub owner_agent: String,
    pub credited_agent: String,
    pub assigned_at: DateTime<Utc>,
    /// How many owner changes the case has had.
    pub changes: i64,
}

/// Each case's first owner (cases never given one are absent).
pub async fn first_owners(pool: &PgPool) -> Result<Vec<FirstOwner>, sqlx::Error> {
    let rows = sqlx::query(
        "SELECT c.policy_no, c.credited_agent, h.owner_agent, h.assigned_at, n.changes
         FROM assignment.cases c
         JOIN LATERAL (SELECT owner_agent, assigned_at FROM assignment.owner_history
                       WHERE case_id = c.case_id ORDER BY id LIMIT 1) h ON true
         JOIN LATERAL (SELECT count(*) AS changes FROM assignment.owner_history WHERE case_id = c.case_id) n ON true
         ORDER BY c.policy_no",
    )
    .fetch_all(pool)
    .await?;
    rows.iter()
        .map(|r| {
            Ok(FirstOwner {
                policy_no: r.try_get("policy_no")?,
                owner_agent: r.try_get("owner_agent")?,
                credited_agent: r.try_get("credited_agent")?,
                assigned_at: r.try_get("assigned_at")?,
                changes: r.try_get("changes")?,
            })
        })
        .collect()
}
