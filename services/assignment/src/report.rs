//! Read-only facts for the funnel report and the demo's checks.

use chrono::{DateTime, Utc};
use sqlx::{PgPool, Row};

#[derive(Debug, Clone)]
pub struct FirstOwner {
    pub policy_no: String,
    pub owner_agent: String,
    pub credited_agent: String,
    pub assigned_at: DateTime<Utc>,
    /// Owner changes that named the owner the case already had (an effect applied twice).
    pub repeated: i64,
}

/// Each case's first owner (cases never given one are absent).
pub async fn first_owners(pool: &PgPool) -> Result<Vec<FirstOwner>, sqlx::Error> {
    let rows = sqlx::query(
        "SELECT c.policy_no, c.credited_agent, h.owner_agent, h.assigned_at, n.repeated
         FROM assignment.cases c
         JOIN LATERAL (SELECT owner_agent, assigned_at FROM assignment.owner_history
                       WHERE case_id = c.case_id AND owner_agent IS NOT NULL ORDER BY id LIMIT 1) h ON true
         JOIN LATERAL (SELECT count(*) AS repeated FROM assignment.owner_history
                       WHERE case_id = c.case_id AND owner_agent = previous_owner) n ON true
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
                repeated: r.try_get("repeated")?,
            })
        })
        .collect()
}

/// How cases got their owners over the season.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct OwnerSources {
    pub claimed_by_branch: i64,
    pub claimed_from_pool: i64,
    pub assigned_automatically: i64,
    /// Second assignment: reassigned in the branch, city-wide, to HQ or the city company.
    pub reassigned: i64,
    /// Handed back to the branch because the owner was deactivated.
    pub handed_back: i64,
    pub researched: i64,
    pub declined: i64,
}

pub async fn owner_sources(pool: &PgPool) -> Result<OwnerSources, sqlx::Error> {
    let rows: Vec<(String, i64)> =
        sqlx::query_as("SELECT reason, count(*) FROM assignment.owner_history GROUP BY reason")
            .fetch_all(pool)
            .await?;
    let mut s = OwnerSources::default();
    for (reason, n) in rows {
        match reason.as_str() {
            "branch_claim" => s.claimed_by_branch += n,
            "city_pool" => s.claimed_from_pool += n,
            "auto_assign" | "auto_assign_hq" => s.assigned_automatically += n,
            "second_assignment_branch"
            | "second_assignment_city"
            | "hq_outbound"
            | "city_company" => s.reassigned += n,
            "agent_deactivated" => s.handed_back += n,
            _ => {}
        }
    }
    s.researched = sqlx::query_scalar(
        "SELECT count(*) FROM assignment.routing_history WHERE step = 'branch' AND reason = 'researched'",
    )
    .fetch_one(pool)
    .await?;
    s.declined = sqlx::query_scalar("SELECT count(*) FROM assignment.declines")
        .fetch_one(pool)
        .await?;
    Ok(s)
}

/// T-10 alerts that reached the supervisors' queue.
pub async fn supervisor_alerts(pool: &PgPool) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar("SELECT count(*) FROM assignment.supervisor_alerts")
        .fetch_one(pool)
        .await
}
