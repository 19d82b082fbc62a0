//! Read-only facts for the funnel report and the demo's checks.

use chrono::{DateTime, Utc};
use sqlx::{PgPool, Row};

#[derive(Debug, Clone)]
pub struct SmsFacts {
    pub id: uuid::Uuid,
    pub policy_no: String,
    pub stage: String,
    pub state: String,
    pub marketing: bool,
    pub time_zone: String,
    pub sent_at: Option<DateTime<Utc>>,
    pub opted_out_before_send: bool,
}

/// Every message with what the funnel checks. A message counts as sent to an opted-out
/// number if it was sent after the opt-out; one sent at the very instant of the opt-out
/// is the message the customer answered (a simulated clock stands still while the
/// reply comes back), since no two marketing SMS to one customer are ever due at the
/// same instant (the frequency cap keeps them three days apart).
pub async fn messages(pool: &PgPool) -> Result<Vec<SmsFacts>, sqlx::Error> {
    let rows = sqlx::query(
        "SELECT m.id, m.policy_no, m.stage, m.state, m.marketing, m.time_zone, m.sent_at,
                (o.opted_out_at IS NOT NULL AND m.sent_at IS NOT NULL AND o.opted_out_at < m.sent_at) AS opted_out_before_send
         FROM dispatch.sms_messages m LEFT JOIN dispatch.opt_outs o ON o.mobile_index = m.mobile_index
         ORDER BY m.policy_no, m.stage",
    )
    .fetch_all(pool)
    .await?;
    rows.iter()
        .map(|r| {
            Ok(SmsFacts {
                id: r.try_get("id")?,
                policy_no: r.try_get("policy_no")?,
                stage: r.try_get("stage")?,
                state: r.try_get("state")?,
                marketing: r.try_get("marketing")?,
                time_zone: r.try_get("time_zone")?,
                sent_at: r.try_get("sent_at")?,
                opted_out_before_send: r.try_get("opted_out_before_send")?,
            })
        })
        .collect()
}

/// Receipts recorded, and how many matched none of our messages.
pub async fn receipts(pool: &PgPool) -> Result<(i64, i64), sqlx::Error> {
    let row = sqlx::query(
        "SELECT count(*) AS total, count(*) FILTER (WHERE message_id IS NULL) AS unmatched FROM dispatch.sms_receipts",
    )
    .fetch_one(pool)
    .await?;
    Ok((row.try_get("total")?, row.try_get("unmatched")?))
}

/// Numbers that opted out of marketing SMS by reply (by blind index: a number indexed
/// under two keys during a rotation counts twice until re-sealed).
pub async fn opted_out(pool: &PgPool) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT count(DISTINCT mobile_index) FROM dispatch.sms_replies WHERE opt_out",
    )
    .fetch_one(pool)
    .await
}

/// Phone tasks by outcome (completed) or by state (the rest), e.g. `completed:renewed`,
/// `open`, `dead`.
pub async fn phone_tasks(pool: &PgPool) -> Result<Vec<(String, i64)>, sqlx::Error> {
    sqlx::query_as(
        "SELECT CASE WHEN state = 'completed' THEN 'completed:' || outcome ELSE state END AS label,
                count(*)
         FROM dispatch.phone_tasks GROUP BY 1 ORDER BY 1",
    )
    .fetch_all(pool)
    .await
}

/// The back half of the season as dispatch saw it: lapse-rescue calls completed (tasks
/// made after the expiry), HQ calls completed, wrong numbers corrected.
#[derive(Debug, Clone, Copy, Default)]
pub struct SeasonEndWork {
    pub rescue_tasks_completed: i64,
    pub hq_tasks_completed: i64,
    pub contact_corrections: i64,
}

pub async fn season_end_work(pool: &PgPool) -> Result<SeasonEndWork, sqlx::Error> {
    let row = sqlx::query(
        "SELECT count(*) FILTER (WHERE state = 'completed' AND days_to_expiry < 0) AS rescue,
                count(*) FILTER (WHERE state = 'completed' AND queue = 'hq') AS hq,
                (SELECT count(*) FROM dispatch.contact_corrections WHERE corrected_at IS NOT NULL) AS corrected
         FROM dispatch.phone_tasks",
    )
    .fetch_one(pool)
    .await?;
    Ok(SeasonEndWork {
        rescue_tasks_completed: row.try_get("rescue")?,
        hq_tasks_completed: row.try_get("hq")?,
        contact_corrections: row.try_get("corrected")?,
    })
}

/// Calls made: (policy, when the task was made) of every completed task.
pub async fn calls_made(pool: &PgPool) -> Result<Vec<(String, DateTime<Utc>)>, sqlx::Error> {
    sqlx::query_as(
        "SELECT policy_no, created_at FROM dispatch.phone_tasks WHERE state = 'completed'",
    )
    .fetch_all(pool)
    .await
}
