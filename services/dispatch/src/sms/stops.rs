//! What stops an SMS after it was claimed: its case closed (a renewal) or its number
//! opted out. The claim checks both in the database; a batch's messages then go to the
//! vendor one by one over seconds (a slow vendor answers in 2-5 s), so each is checked
//! again right before its call against this set of the stops noted since.
//!
//! Every process polls the stops noted in the database (`closed_cases` and `opt_outs`,
//! by `noted_at`) every [`POLL`], wherever they were noted (any replica's consumer or
//! webhook), and the sender hands nothing to the vendor while the set is older than
//! [`FRESH`]: a stop reaches every sender within a second. A check is a hash lookup,
//! so it costs the sending path nothing measurable; asking the database before each
//! call would cost a query per SMS.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use renewal_platform::pii::BlindIndex;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// How often the stops are read.
pub const POLL: Duration = Duration::from_millis(100);
/// How old the set may be for the sender to trust it.
pub const FRESH: Duration = Duration::from_millis(800);
/// Stops are read again this far back, for transactions that committed after a
/// later one (`noted_at` is when a transaction began, not when it committed).
const OVERLAP: chrono::TimeDelta = chrono::TimeDelta::seconds(30);
/// Stops are kept this long: longer than any claimed batch takes to hand over.
const KEPT: chrono::TimeDelta = chrono::TimeDelta::hours(1);

#[derive(Default)]
struct Noted {
    cases: HashMap<Uuid, DateTime<Utc>>,
    /// Opted-out numbers by blind index (as `opt_outs` keeps them).
    mobiles: HashMap<BlindIndex, DateTime<Utc>>,
    /// When the set last matched the database (None before the first read).
    read_at: Option<Instant>,
    /// The latest `noted_at` read, in the database's time.
    latest: Option<DateTime<Utc>>,
}

/// A stop as read: a closed case or an opted-out number's blind index, and when it
/// was noted.
type StopRow = (Option<Uuid>, Option<Vec<u8>>, DateTime<Utc>);

/// What a claimed message must be checked against before its vendor call.
#[derive(Clone, Default)]
pub struct Stops {
    noted: Arc<RwLock<Noted>>,
}

/// Why a claimed message is not sent after all.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    CaseClosed,
    OptedOut,
}

impl Stops {
    /// Whether the set is recent enough to decide on.
    pub fn fresh(&self) -> bool {
        let noted = self.noted.read().unwrap_or_else(|e| e.into_inner());
        noted.read_at.is_some_and(|at| at.elapsed() < FRESH)
    }

    /// Waits up to `limit` for the set to be fresh; whether it is.
    pub async fn wait_fresh(&self, limit: Duration) -> bool {
        let started = Instant::now();
        while !self.fresh() {
            if started.elapsed() >= limit {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        true
    }

    /// Whether a message for `case_id` to the number with these blind indexes (under
    /// every key of the keyring) must not go out now. An opt-out stops marketing only
    /// (a transactional notice still goes).
    pub fn stop_for(&self, case_id: Uuid, mobile: &[BlindIndex], marketing: bool) -> Option<Stop> {
        let noted = self.noted.read().unwrap_or_else(|e| e.into_inner());
        if noted.cases.contains_key(&case_id) {
            Some(Stop::CaseClosed)
        } else if marketing && mobile.iter().any(|i| noted.mobiles.contains_key(i)) {
            Some(Stop::OptedOut)
        } else {
            None
        }
    }

    /// Reads the stops noted since the last read (with an overlap), and forgets old ones.
    pub async fn refresh(&self, pool: &PgPool) -> Result<(), sqlx::Error> {
        let started = Instant::now();
        let since = {
            let noted = self.noted.read().unwrap_or_else(|e| e.into_inner());
            noted.latest.map(|l| l - OVERLAP)
        };
        let rows: Vec<StopRow> = sqlx::query_as(
            "SELECT case_id, NULL::bytea, noted_at FROM dispatch.closed_cases
             WHERE noted_at > coalesce($1, now() - $2::interval)
             UNION ALL
             SELECT NULL::uuid, mobile_index, noted_at FROM dispatch.opt_outs
             WHERE noted_at > coalesce($1, now() - $2::interval)",
        )
        .bind(since)
        .bind(format!("{} seconds", KEPT.num_seconds()))
        .fetch_all(pool)
        .await?;
        let mut noted = self.noted.write().unwrap_or_else(|e| e.into_inner());
        for (case_id, mobile, at) in rows {
            noted.latest = Some(noted.latest.map_or(at, |l| l.max(at)));
            if let Some(case_id) = case_id {
                noted.cases.insert(case_id, at);
            } else if let Some(index) = mobile.and_then(|m| BlindIndex::try_from(m).ok()) {
                noted.mobiles.insert(index, at);
            }
        }
        if let Some(latest) = noted.latest {
            let horizon = latest - KEPT;
            noted.cases.retain(|_, at| *at > horizon);
            noted.mobiles.retain(|_, at| *at > horizon);
        }
        noted.read_at = Some(started);
        Ok(())
    }

    /// Polls the database until `cancel` fires.
    pub async fn watch(self, pool: PgPool, cancel: CancellationToken) {
        let mut failing = false;
        loop {
            match self.refresh(&pool).await {
                Ok(()) => failing = false,
                Err(e) if !failing => {
                    failing = true;
                    tracing::warn!(error = %e, "cannot read the SMS stops; sending waits");
                }
                Err(_) => {}
            }
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(POLL) => {}
            }
        }
    }
}
