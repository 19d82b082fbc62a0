//! Read-only facts for the funnel report and the demo's checks.

use sqlx::PgPool;

/// Timers by state, e.g. [("fired", 1200), ("pending", 300)].
pub async fn timers_by_state(pool: &PgPool) -> Result<Vec<(String, i64)>, sqlx::Error> {
    sqlx::query_as("SELECT state, count(*) FROM scheduler.timers GROUP BY state ORDER BY state")
        .fetch_all(pool)
        .await
}
