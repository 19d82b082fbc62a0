//! What a service keeps of its messaging, and for how long: the inbox's keys longer
//! than the streams keep messages (a message still in a stream can be redelivered, and
//! its key must still be there to drop the copy), published outbox rows for a week
//! (to trace what went out), replayed dead letters as long as the inbox. Every hour
//! each service deletes what is older, in chunks, so no statement holds many locks;
//! rejected inbox rows and dead letters still waiting are kept until someone acts.

use std::time::Duration;

use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

/// How long JetStream keeps a message (`crate::bus`): the inbox must outlast it.
pub const STREAM_MAX_AGE: Duration = Duration::from_secs(30 * 24 * 3600);
/// Rows deleted per statement.
const CHUNK: i64 = 10_000;
/// Between two prunings.
const EVERY: Duration = Duration::from_secs(3600);

/// How long a service keeps its inbox keys and published outbox rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    pub inbox: Duration,
    pub outbox: Duration,
}

impl Default for Retention {
    fn default() -> Self {
        Retention {
            inbox: Duration::from_secs(35 * 24 * 3600),
            outbox: Duration::from_secs(7 * 24 * 3600),
        }
    }
}

/// What one pruning deleted.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Pruned {
    pub inbox: u64,
    pub outbox: u64,
    pub dead_letters: u64,
}

/// Deletes, in chunks, what `schema` keeps no longer.
pub async fn prune_once(
    pool: &PgPool,
    schema: &'static str,
    retention: Retention,
) -> Result<Pruned, sqlx::Error> {
    let inbox_secs = retention.inbox.as_secs_f64();
    let outbox_secs = retention.outbox.as_secs_f64();
    Ok(Pruned {
        inbox: chunked(
            pool,
            format!(
                "DELETE FROM {schema}.inbox WHERE message_id IN (
                     SELECT message_id FROM {schema}.inbox
                     WHERE received_at < now() - make_interval(secs => $1) AND rejected_reason IS NULL
                     LIMIT $2)"
            ),
            inbox_secs,
        )
        .await?,
        outbox: chunked(
            pool,
            format!(
                "DELETE FROM {schema}.outbox WHERE seq IN (
                     SELECT seq FROM {schema}.outbox
                     WHERE created_at < now() - make_interval(secs => $1) AND published_at IS NOT NULL
                     LIMIT $2)"
            ),
            outbox_secs,
        )
        .await?,
        dead_letters: chunked(
            pool,
            format!(
                "DELETE FROM {schema}.dead_letters WHERE id IN (
                     SELECT id FROM {schema}.dead_letters
                     WHERE replayed_at < now() - make_interval(secs => $1)
                     LIMIT $2)"
            ),
            inbox_secs,
        )
        .await?,
    })
}

async fn chunked(pool: &PgPool, sql: String, age_secs: f64) -> Result<u64, sqlx::Error> {
    let mut total = 0;
    loop {
        let deleted = sqlx::query(sqlx::AssertSqlSafe(sql.clone()))
            .bind(age_secs)
            .bind(CHUNK)
            .execute(pool)
            .await?
            .rows_affected();
        total += deleted;
        if deleted < CHUNK as u64 {
            return Ok(total);
        }
    }
}

/// Prunes every hour until `cancel` fires (the first a minute after start).
pub async fn prune(
    pool: PgPool,
    schema: &'static str,
    retention: Retention,
    cancel: CancellationToken,
) {
    let mut wait = Duration::from_secs(60);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
        wait = EVERY;
        match prune_once(&pool, schema, retention).await {
            Ok(pruned) => {
                metrics::counter!("pruned_rows_total", "service" => schema, "table" => "inbox")
                    .increment(pruned.inbox);
                metrics::counter!("pruned_rows_total", "service" => schema, "table" => "outbox")
                    .increment(pruned.outbox);
                metrics::counter!("pruned_rows_total", "service" => schema, "table" => "dead_letters")
                    .increment(pruned.dead_letters);
            }
            Err(e) => {
                tracing::warn!(service = schema, error = %e, "pruning the inbox and outbox failed; trying again in an hour")
            }
        }
    }
}
