//! The daily run, shortly after local midnight in each time zone the portfolio has:
//! reopen the cases whose renewal was reported on the phone and never confirmed,
//! lapse the cases whose expiry day has ended, open cases for policies entering the
//! window, move cases between buckets, and on the issue day of the month issue every
//! branch's renewal and lapse lists. One replica does each (zone, day): the row in
//! `daily_runs` is written in the run's own transaction, with all its events. A zone
//! whose run did not happen on the issue day (the service was away all day) issues the
//! month's lists with its first run after it; lapses and openings catch up by
//! themselves (they take everything due by the run's day).

use std::time::Duration;

use chrono::{DateTime, Datelike, NaiveDate, NaiveTime, Utc};
use renewal_platform::pii::PiiCipher;
use renewal_platform::{Clock, Outbox, local_date, local_instant};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::cases::{self, CaseError, OpenScope};
use crate::issued_lists::{self, Scope};
use crate::portfolio::Zones;

fn run_time() -> NaiveTime {
    NaiveTime::from_hms_opt(0, 5, 0).unwrap_or(NaiveTime::MIN)
}

/// What the daily run needs.
#[derive(Clone)]
pub struct DailyRun {
    pub pool: PgPool,
    pub outbox: Outbox,
    pub clock: Clock,
    pub zones: Zones,
    pub pii: std::sync::Arc<PiiCipher>,
    pub list_issue_day: u32,
    pub renewal_confirm_within: chrono::Duration,
    pub vehicle_window: i32,
}

/// Whether the zone's run on `today` issues the month's lists: it is the first run of
/// the month on or after the issue day.
async fn lists_due(
    tx: &mut sqlx::PgConnection,
    zone: chrono_tz::Tz,
    today: NaiveDate,
    issue_day: u32,
) -> Result<bool, sqlx::Error> {
    let Some(issue_date) = today.with_day(issue_day).filter(|d| *d <= today) else {
        return Ok(false);
    };
    let ran_since: bool = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM lists.daily_runs
                        WHERE time_zone = $1 AND run_date >= $2 AND run_date < $3)",
    )
    .bind(zone.name())
    .bind(issue_date)
    .bind(today)
    .fetch_one(&mut *tx)
    .await?;
    if !ran_since && today != issue_date {
        tracing::warn!(zone = zone.name(), %issue_date, %today, "no run on the issue day; issuing the month's lists now");
    }
    Ok(!ran_since)
}

/// What one (zone, day) run did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct DayDone {
    pub lapsed: usize,
    /// Reported renewals the core system did not confirm in time.
    pub reopened: usize,
    pub opened: usize,
    pub moved: usize,
    pub lists_issued: usize,
    pub list_items: usize,
    /// Cases at T-65 with no quote (a city task each).
    pub quotes_missing: usize,
}

impl DailyRun {
    pub async fn run(self, cancel: CancellationToken) {
        loop {
            let now = self.clock.now();
            let mut failed = false;
            for zone in self.zones.all() {
                let today = local_date(now, zone);
                if now < local_instant(today, run_time(), zone) {
                    continue;
                }
                let ran = self.run_day(zone, today, now).await;
                if ran.is_ok()
                    && let Err(e) = self.issue_reviews(zone, today, now).await
                {
                    failed = true;
                    tracing::warn!(error = %e, zone = zone.name(), %today, "issuing the monthly analyses failed; retrying");
                }
                match ran {
                    Ok(Some(done)) => {
                        renewal_platform::activity::record();
                        self.outbox.wake();
                        tracing::info!(zone = zone.name(), %today, opened = done.opened, lapsed = done.lapsed,
                            reopened = done.reopened, moved = done.moved, lists = done.lists_issued, "daily run done");
                    }
                    Ok(None) => {}
                    Err(e) => {
                        failed = true;
                        tracing::warn!(error = %e, zone = zone.name(), %today, "daily run failed; retrying");
                    }
                }
            }
            let next = if failed {
                now + chrono::Duration::seconds(2)
            } else {
                self.next_due(now)
            };
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = self.clock.sleep_until(next, Duration::from_secs(30)) => {}
            }
        }
    }

    /// The next (zone, day) run after `now`.
    fn next_due(&self, now: DateTime<Utc>) -> DateTime<Utc> {
        self.zones
            .all()
            .into_iter()
            .map(|zone| {
                let today = local_date(now, zone);
                let at = local_instant(today, run_time(), zone);
                if now >= at {
                    local_instant(today + chrono::Days::new(1), run_time(), zone)
                } else {
                    at
                }
            })
            .min()
            .unwrap_or(now + chrono::Duration::hours(1))
    }

    /// The month's renewal and lapse lists of the zone: (lists, items).
    async fn issue_monthly(
        &self,
        tx: &mut sqlx::PgConnection,
        zone: chrono_tz::Tz,
        today: NaiveDate,
        now: DateTime<Utc>,
    ) -> Result<(usize, usize), sqlx::Error> {
        let scope = Scope {
            zone: Some(zone),
            city: None,
            monthly: true,
        };
        let renewal =
            issued_lists::issue_renewal_lists(tx, &self.outbox, &scope, today, now).await?;
        let lapse =
            issued_lists::issue_lapse_lists(tx, &self.outbox, Some(zone), None, true, today, now)
                .await?;
        Ok((renewal.lists + lapse.lists, renewal.items + lapse.items))
    }

    /// Does the zone's run for `today` unless it was done; returns what it did.
    pub async fn run_day(
        &self,
        zone: chrono_tz::Tz,
        today: NaiveDate,
        now: DateTime<Utc>,
    ) -> Result<Option<DayDone>, CaseError> {
        let mut tx = self.pool.begin().await?;
        let claimed = sqlx::query(
            "INSERT INTO lists.daily_runs (time_zone, run_date, ran_at) VALUES ($1, $2, $3)
             ON CONFLICT DO NOTHING",
        )
        .bind(zone.name())
        .bind(today)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        if claimed.rows_affected() == 0 {
            return Ok(None);
        }
        // The run's statements touch a few thousand rows each, but the planner cannot
        // tell how few policies in the window lack a case and overestimates them by
        // orders of magnitude: JIT compiling the plans took longer (~0.5 s per zone)
        // than running them.
        sqlx::query("SET LOCAL jit = off").execute(&mut *tx).await?;
        let mut done = DayDone {
            // Before the lapses: a reopened case whose expiry passed meanwhile goes
            // straight back to lapse rescue.
            reopened: cases::reopen_unconfirmed(
                &mut tx,
                &self.outbox,
                &self.pii,
                zone,
                today,
                now,
                self.renewal_confirm_within,
            )
            .await?,
            ..DayDone::default()
        };
        done.lapsed = cases::lapse_due(&mut tx, &self.outbox, &self.pii, zone, today, now).await?;
        let scope = OpenScope {
            only_policy: None,
            only_zone: Some(zone),
            vehicle_window: self.vehicle_window,
        };
        done.opened =
            cases::open_due(&mut tx, &self.outbox, &self.pii, &self.zones, now, scope).await?;
        // T-65 finds the unquoted (the quoted cases opened today took their terms along).
        done.quotes_missing =
            crate::quotes::raise_missing(&mut tx, &self.outbox, zone, today, now).await?;
        done.moved = cases::move_buckets(&mut tx, &self.outbox, zone, today).await?;
        if lists_due(&mut tx, zone, today, self.list_issue_day).await? {
            (done.lists_issued, done.list_items) =
                self.issue_monthly(&mut tx, zone, today, now).await?;
        }
        sqlx::query(
            "UPDATE lists.daily_runs SET cases_opened = $3, cases_lapsed = $4, bucket_moves = $5,
                 lists_issued = $6
             WHERE time_zone = $1 AND run_date = $2",
        )
        .bind(zone.name())
        .bind(today)
        .bind(done.opened as i32)
        .bind(done.lapsed as i32)
        .bind(done.moved as i32)
        .bind(done.lists_issued as i32)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(Some(done))
    }

    /// From the lists issue day on, each city's analysis of the month before, once
    /// (`crate::reviews`); a transaction of its own after the day's run, so a report never
    /// holds up the lapses and lists. Returns how many were issued.
    pub async fn issue_reviews(
        &self,
        zone: chrono_tz::Tz,
        today: NaiveDate,
        now: DateTime<Utc>,
    ) -> Result<usize, sqlx::Error> {
        if today.day() < self.list_issue_day {
            return Ok(0);
        }
        let mut tx = self.pool.begin().await?;
        let issued = crate::reviews::issue_monthly(&mut tx, &self.outbox, zone, today, now).await?;
        tx.commit().await?;
        if issued > 0 {
            self.outbox.wake();
            tracing::info!(zone = zone.name(), %today, reviews = issued, "monthly analyses issued");
        }
        Ok(issued)
    }

    /// Opens the cases a CSV import made due (the import does this itself; this picks
    /// up an import whose process stopped before it could).
    pub async fn open_after_imports(&self) -> Result<usize, CaseError> {
        let mut tx = self.pool.begin().await?;
        let pending: Vec<uuid::Uuid> = sqlx::query_scalar(
            "SELECT import_id FROM lists.imports WHERE cases_opened_at IS NULL FOR UPDATE SKIP LOCKED",
        )
        .fetch_all(&mut *tx)
        .await?;
        if pending.is_empty() {
            return Ok(0);
        }
        let now = self.clock.now();
        let scope = OpenScope {
            only_policy: None,
            only_zone: None,
            vehicle_window: self.vehicle_window,
        };
        let opened =
            cases::open_due(&mut tx, &self.outbox, &self.pii, &self.zones, now, scope).await?;
        sqlx::query("UPDATE lists.imports SET cases_opened_at = $2 WHERE import_id = ANY($1)")
            .bind(&pending)
            .bind(now)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        self.outbox.wake();
        Ok(opened)
    }
}

/// When this service next has work of its own: the earliest (zone, day) run not done.
pub async fn next_wakeup(
    pool: &PgPool,
    now: DateTime<Utc>,
    zones: &[chrono_tz::Tz],
) -> Result<DateTime<Utc>, sqlx::Error> {
    let mut next: Option<DateTime<Utc>> = None;
    for zone in zones {
        let today = local_date(now, *zone);
        let done: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM lists.daily_runs WHERE time_zone = $1 AND run_date = $2)",
        )
        .bind(zone.name())
        .bind(today)
        .fetch_one(pool)
        .await?;
        let at = if done {
            local_instant(today + chrono::Days::new(1), run_time(), *zone)
        } else {
            local_instant(today, run_time(), *zone)
        };
        next = Some(next.map_or(at, |n| n.min(at)));
    }
    Ok(next.unwrap_or(now + chrono::Duration::hours(1)))
}
