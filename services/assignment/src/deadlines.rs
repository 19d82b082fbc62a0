//! The deadline sweep: claims not taken by their deadline (and research not done by
//! the 15th) open to the city's pool; pool cases past the pool deadline, and any case
//! at its last moment without an owner, are assigned automatically; the second
//! assignment's steps time out. Runs when business time reaches the next deadline, and
//! whenever a handler or request may have made an earlier one.

use std::sync::Arc;

use futures::StreamExt;
use std::time::Duration;

use chrono::{DateTime, Utc};
use renewal_platform::{Clock, Outbox};
use sqlx::{PgPool, Row};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::routing::{self, Step};

const BATCH: i64 = 50_000;
/// Automatic assignments written per transaction, and how many such transactions run
/// side by side.
const PART: usize = 1_000;
const PARTS_AT_ONCE: usize = 3;

#[derive(Clone)]
pub struct Sweeper {
    pub pool: PgPool,
    pub outbox: Outbox,
    pub clock: Clock,
    pub wake: Arc<Notify>,
}

/// What one sweep did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Swept {
    pub to_pool: usize,
    pub auto_assigned: usize,
    pub second_assignment_steps: usize,
}

impl Sweeper {
    pub async fn run(self, cancel: CancellationToken) {
        loop {
            let now = self.clock.now();
            let mut retry = false;
            match self.sweep(now).await {
                Ok(swept) if swept != Swept::default() => {
                    renewal_platform::activity::record();
                    self.outbox.wake();
                    tracing::info!(
                        to_pool = swept.to_pool,
                        auto_assigned = swept.auto_assigned,
                        second_assignment = swept.second_assignment_steps,
                        "deadlines swept"
                    );
                }
                Ok(_) => {}
                Err(e) => {
                    retry = true;
                    tracing::warn!(error = %e, "the deadline sweep failed; retrying");
                }
            }
            let next = if retry {
                Ok(Some(now + chrono::Duration::seconds(2)))
            } else {
                next_wakeup(&self.pool).await
            };
            let next = match next {
                Ok(Some(at)) => at,
                Ok(None) => now + chrono::Duration::hours(1),
                Err(e) => {
                    tracing::warn!(error = %e, "reading the next deadline failed");
                    now + chrono::Duration::seconds(2)
                }
            };
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = self.wake.notified() => {}
                _ = self.clock.sleep_until(next, Duration::from_secs(30)) => {}
            }
        }
    }

    /// Does everything due at `now`.
    pub async fn sweep(&self, now: DateTime<Utc>) -> Result<Swept, sqlx::Error> {
        let mut swept = Swept::default();
        loop {
            let mut tx = self.pool.begin().await?;
            let to_pool = open_pool(&mut tx, &self.outbox, now).await?;
            let steps =
                crate::second_assignment::step_due(&mut tx, &self.outbox, now, BATCH).await?;
            tx.commit().await?;
            let assigned = self.assign_due(now).await?;
            swept.to_pool += to_pool;
            swept.auto_assigned += assigned;
            swept.second_assignment_steps += steps;
            if to_pool == 0 && assigned == 0 && steps == 0 {
                return Ok(swept);
            }
        }
    }

    /// Automatic assignment: planned in one go (city by city, under an advisory lock so
    /// that no other sweeper spends the same spare capacity), then written in parts of
    /// `PART` cases, `PARTS_AT_ONCE` transactions side by side. A part that fails leaves
    /// its cases due: the next sweep plans them again from what was committed.
    async fn assign_due(&self, now: DateTime<Utc>) -> Result<usize, sqlx::Error> {
        let mut planner = self.pool.begin().await?;
        sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended('assignment.auto_assign', 0))")
            .execute(&mut *planner)
            .await?;
        let planned = crate::auto_assign::plan(&mut planner, now, BATCH).await?;
        let planned = &planned;
        // Parts by their first index (a stream of slices would not be Send here).
        let results: Vec<Result<usize, sqlx::Error>> =
            futures::stream::iter((0..planned.len()).step_by(PART))
                .map(|start| async move {
                    let part = &planned[start..planned.len().min(start + PART)];
                    let mut tx = self.pool.begin().await?;
                    let n = crate::auto_assign::apply(&mut tx, &self.outbox, part, now).await?;
                    tx.commit().await?;
                    Ok(n)
                })
                .buffer_unordered(PARTS_AT_ONCE)
                .collect()
                .await;
        // Releases the lock once every part is committed (or failed).
        planner.commit().await?;
        results.into_iter().sum()
    }
}

/// Branch claims and research past their deadline open to the city's pool.
async fn open_pool(
    tx: &mut sqlx::PgConnection,
    outbox: &Outbox,
    now: DateTime<Utc>,
) -> Result<usize, sqlx::Error> {
    let rows = sqlx::query(
        "WITH due AS (
             SELECT c.case_id, c.phase AS was, COALESCE(s.pool_days, 3) AS pool_days
             FROM assignment.cases c LEFT JOIN assignment.city_settings s ON s.city_code = c.city_code
             WHERE c.state = 'open' AND c.phase IN ('branch', 'research') AND c.phase_due_at <= $1
             LIMIT $2 FOR UPDATE OF c SKIP LOCKED)
         UPDATE assignment.cases c
         SET phase = 'pool', phase_due_at = $1::timestamptz + make_interval(days => due.pool_days)
         FROM due WHERE c.case_id = due.case_id
         RETURNING c.case_id, due.was, c.phase_due_at",
    )
    .bind(now)
    .bind(BATCH)
    .fetch_all(&mut *tx)
    .await?;
    let steps = rows
        .iter()
        .map(|r| {
            let was: String = r.try_get("was")?;
            Ok(Step {
                case_id: r.try_get("case_id")?,
                step: "pool",
                reason: if was == "research" {
                    "research_deadline".into()
                } else {
                    "claim_deadline".into()
                },
                deadline: r.try_get("phase_due_at")?,
            })
        })
        .collect::<Result<Vec<_>, sqlx::Error>>()?;
    routing::record_many(tx, outbox, &steps, "system", now).await?;
    Ok(rows.len())
}

/// When this service next has work of its own: the earliest deadline of an open case.
pub async fn next_wakeup(pool: &PgPool) -> Result<Option<DateTime<Utc>>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT least(
             (SELECT min(phase_due_at) FROM assignment.cases
              WHERE state = 'open' AND phase_due_at IS NOT NULL),
             (SELECT min(owner_by) FROM assignment.cases
              WHERE state = 'open' AND phase IN ('awaiting_list', 'research', 'branch', 'pool')))",
    )
    .fetch_one(pool)
    .await
}
