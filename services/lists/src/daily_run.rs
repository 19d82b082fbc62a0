//! The daily run, shortly after local midnight: open cases for policies entering the
//! window, lapse cases whose expiry day has ended. One replica does each day's run: the
//! row in `daily_runs` is written in the run's own transaction.

use std::time::Duration;

use chrono::{DateTime, NaiveDate, NaiveTime, Utc};
use renewal_platform::{Clock, Outbox, local_date, local_instant};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::cases;

fn run_time() -> NaiveTime {
    NaiveTime::from_hms_opt(0, 5, 0).unwrap_or(NaiveTime::MIN)
}

pub async fn run(
    pool: PgPool,
    outbox: Outbox,
    clock: Clock,
    time_zone: chrono_tz::Tz,
    cancel: CancellationToken,
) {
    loop {
        let now = clock.now();
        let today = local_date(now, time_zone);
        let today_at = local_instant(today, run_time(), time_zone);
        let outcome = if now >= today_at {
            run_day(&pool, &outbox, today, now, time_zone).await
        } else {
            Ok(None)
        };
        match outcome {
            Ok(Some((opened, lapsed))) => {
                renewal_platform::activity::record();
                outbox.wake();
                tracing::info!(%today, opened, lapsed, "daily run done");
            }
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(error = %e, %today, "daily run failed; retrying");
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_secs(2)) => continue,
                }
            }
        }
        let next = if now >= today_at {
            local_instant(today + chrono::Days::new(1), run_time(), time_zone)
        } else {
            today_at
        };
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = clock.sleep_until(next, Duration::from_secs(30)) => {}
        }
    }
}

/// Does `today`'s run unless it was done; returns (opened, lapsed) when it ran.
async fn run_day(
    pool: &PgPool,
    outbox: &Outbox,
    today: NaiveDate,
    now: DateTime<Utc>,
    time_zone: chrono_tz::Tz,
) -> Result<Option<(usize, usize)>, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let claimed = sqlx::query(
        "INSERT INTO lists.daily_runs (run_date, ran_at) VALUES ($1, $2) ON CONFLICT DO NOTHING",
    )
    .bind(today)
    .bind(now)
    .execute(&mut *tx)
    .await?;
    if claimed.rows_affected() == 0 {
        return Ok(None);
    }
    let lapsed = cases::lapse_due(&mut tx, outbox, today, now).await?;
    let opened = cases::open_due(&mut tx, outbox, today, now, time_zone, None).await?;
    sqlx::query(
        "UPDATE lists.daily_runs SET cases_opened = $2, cases_lapsed = $3 WHERE run_date = $1",
    )
    .bind(today)
    .bind(opened as i32)
    .bind(lapsed as i32)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(Some((opened, lapsed)))
}

/// When this service next has work of its own. The run for day D is due at D 00:05
/// local: today's if it is not done, else tomorrow's.
pub async fn next_wakeup(
    pool: &PgPool,
    now: DateTime<Utc>,
    time_zone: chrono_tz::Tz,
) -> Result<DateTime<Utc>, sqlx::Error> {
    let today = local_date(now, time_zone);
    let done: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM lists.daily_runs WHERE run_date = $1)")
            .bind(today)
            .fetch_one(pool)
            .await?;
    Ok(if done {
        local_instant(today + chrono::Days::new(1), run_time(), time_zone)
    } else {
        local_instant(today, run_time(), time_zone)
    })
}
