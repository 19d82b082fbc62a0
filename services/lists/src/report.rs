//! Read-only facts for the funnel report and the demo's checks.

use chrono::{DateTime, NaiveDate, Utc};
use sqlx::{PgPool, Row};

#[derive(Debug, Clone)]
pub struct CaseFacts {
    pub case_id: uuid::Uuid,
    pub policy_no: String,
    pub expiry_date: NaiveDate,
    pub state: String,
    pub opened_at: DateTime<Utc>,
    pub closed_at: Option<DateTime<Utc>>,
    /// For a renewed or rescued case: when we knew (the renewal reported on a call, when
    /// the core system then confirmed it, or the confirmation).
    pub renewal_known_at: Option<DateTime<Utc>>,
}

pub async fn policy_count(pool: &PgPool) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar("SELECT count(*) FROM lists.policies")
        .fetch_one(pool)
        .await
}

pub async fn cases(pool: &PgPool) -> Result<Vec<CaseFacts>, sqlx::Error> {
    let rows = sqlx::query(
        "SELECT case_id, policy_no, expiry_date, state, opened_at, closed_at,
                CASE WHEN state IN ('renewed', 'rescued') THEN
                    CASE WHEN reported_at IS NOT NULL AND reopened_at IS NULL
                         THEN LEAST(reported_at, closed_at) ELSE closed_at END
                END AS renewal_known_at
         FROM lists.cases ORDER BY policy_no",
    )
    .fetch_all(pool)
    .await?;
    rows.iter()
        .map(|r| {
            Ok(CaseFacts {
                case_id: r.try_get("case_id")?,
                policy_no: r.try_get("policy_no")?,
                expiry_date: r.try_get("expiry_date")?,
                state: r.try_get("state")?,
                opened_at: r.try_get("opened_at")?,
                closed_at: r.try_get("closed_at")?,
                renewal_known_at: r.try_get("renewal_known_at")?,
            })
        })
        .collect()
}

/// Cases whose renewal reported on the phone was reopened unconfirmed.
pub async fn renewals_reopened(pool: &PgPool) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar("SELECT count(*) FROM lists.cases WHERE reopened_at IS NOT NULL")
        .fetch_one(pool)
        .await
}
