//! `renewal bench scheduler`: the scheduler's figures against the loopback Postgres and
//! NATS, printed as `name value` lines.
//!
//! Setup (not timed): 1,000,000 pending timers (real cases, the SMS command each fires),
//! 200,000 of them due at the same moment.
//! 1. Two scheduler instances fire the 200,000 (marketing SMS, so the frequency cap is
//!    checked for each), publishing every command to JetStream; timed until the last
//!    batch committed, which is after JetStream acknowledged its last command:
//!    `timers_fired_per_s`.
//!    (`BENCH_FIRING_INSTANCES` sets how many instances fire; 2 by default.)
//! 2. On the wall clock, timers come due at a steady 5,000/s for 10 s; the lateness of
//!    each (fired minus due) gives `lateness_p50_ms`, `lateness_p99_ms`.
//! 3. `peak_rss_mb`: the process's resident-memory high-water mark.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use chrono::{NaiveDate, NaiveTime, Utc};
use renewal_platform::Clock;
use tokio_util::sync::CancellationToken;

const TIMERS: i64 = 1_000_000;
const DUE_AT_ONCE: i64 = 200_000;
const STEADY_PER_S: i64 = 5_000;
const STEADY_SECONDS: i64 = 10;

fn line(name: &str, value: impl std::fmt::Display) {
    println!("{name} {value}");
}

pub async fn scheduler() -> ExitCode {
    match run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("renewal bench scheduler: {e}");
            ExitCode::FAILURE
        }
    }
}

fn peak_rss_mb() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

async fn run() -> Result<(), String> {
    renewal_platform::install_crypto_provider();
    let (database_url, nats_url, access) = crate::bench::bench_target(
        "BENCH_SCHEDULER_DATABASE_URL",
        "postgres://postgres@127.0.0.1:5432/renewal_bench_scheduler",
    )?;
    let cancel = CancellationToken::new();
    let (bus, pool) =
        crate::bench::fresh_bench(&database_url, &nats_url, &access, "benchsc", &cancel).await?;
    crate::system::migrate_all(pool.clone())
        .await
        .map_err(|e| e.to_string())?;

    let tz = chrono_tz::Asia::Shanghai;
    let day = NaiveDate::from_ymd_opt(2026, 12, 1).ok_or("date")?;
    let due = renewal_platform::local_instant(
        day,
        NaiveTime::from_hms_opt(10, 0, 0).unwrap_or_default(),
        tz,
    );
    let setup = Instant::now();
    let pii = renewal_scheduler::config::SchedulerConfig::with_key(crate::simulation::DEMO_PII_KEY)
        .map_err(|e| e.to_string())?
        .pii;
    insert_cases(&pool, &pii).await.map_err(|e| e.to_string())?;
    // 200,000 due at 10:00; the rest spread over the following weeks.
    sqlx::query(
        "INSERT INTO scheduler.timers (id, case_id, stage, action, template, due_at, nominal_at, marketing)
         SELECT gen_random_uuid(), case_id, 'T-60', 'sms', 'renewal_friendly', d, d, true
         FROM (SELECT case_id, row_number() OVER () AS n FROM scheduler.cases) c,
              LATERAL (SELECT CASE WHEN n <= $2 THEN $1::timestamptz
                                   ELSE $1::timestamptz + make_interval(mins => (n % 40000)::int + 60) END AS d) due",
    )
    .bind(due)
    .bind(DUE_AT_ONCE)
    .execute(&pool)
    .await
    .map_err(|e| e.to_string())?;
    sqlx::query("VACUUM ANALYZE scheduler.timers")
        .execute(&pool)
        .await
        .map_err(|e| e.to_string())?;
    sqlx::query("ANALYZE scheduler.cases")
        .execute(&pool)
        .await
        .map_err(|e| e.to_string())?;
    eprintln!(
        "bench: {TIMERS} timers set up in {:.1} s",
        setup.elapsed().as_secs_f64()
    );
    line("timers_pending", TIMERS);
    line("timers_due_at_once", DUE_AT_ONCE);

    // 1. Two instances fire, each publishing its batches to JetStream.
    let hours = renewal_scheduler::config::default_hours();
    let clock = Clock::simulated(due);
    let started = Instant::now();
    let mut instances = tokio::task::JoinSet::new();
    let firing: usize = std::env::var("BENCH_FIRING_INSTANCES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2);
    for _ in 0..firing {
        let (pool, bus, clock, pii) = (pool.clone(), bus.clone(), clock.clone(), pii.clone());
        instances.spawn(async move {
            let mut n = 0;
            loop {
                let fired = renewal_scheduler::timers::fire_due(
                    &pool,
                    &bus,
                    clock.now(),
                    true,
                    &hours,
                    &pii,
                )
                .await
                .map_err(|e| e.to_string())?;
                if fired == 0 {
                    return Ok::<usize, String>(n);
                }
                n += fired;
            }
        });
    }
    let mut fired = 0;
    while let Some(done) = instances.join_next().await {
        fired += done.map_err(|e| e.to_string())??;
    }
    // Every batch commits only after JetStream acknowledged each of its commands.
    let published_seconds = started.elapsed().as_secs_f64();
    let in_stream = crate::bench::stream_messages(&bus, renewal_contract::Stream::Dispatch).await?;
    line("timers_fired", fired);
    line("commands_in_stream", in_stream);
    line("publish_seconds", format!("{published_seconds:.3}"));
    line(
        "timers_fired_per_s",
        format!("{:.0}", fired as f64 / published_seconds),
    );

    // 2. Steady load on the wall clock.
    let wall = Clock::wall();
    let start = Utc::now() + chrono::Duration::seconds(2);
    sqlx::query(
        "WITH c AS (SELECT case_id, row_number() OVER () AS n FROM scheduler.cases
                    WHERE case_id NOT IN (SELECT case_id FROM scheduler.timers WHERE state = 'fired') LIMIT $3)
         UPDATE scheduler.timers t
         SET due_at = $1::timestamptz + make_interval(secs => (c.n::float8 / $2::float8))
         FROM c WHERE t.case_id = c.case_id AND t.state = 'pending'",
    )
    .bind(start)
    .bind(STEADY_PER_S as f64)
    .bind(STEADY_PER_S * STEADY_SECONDS)
    .execute(&pool)
    .await
    .map_err(|e| e.to_string())?;
    let steady_cancel = CancellationToken::new();
    let mut loops = tokio::task::JoinSet::new();
    for _ in 0..2 {
        loops.spawn(renewal_scheduler::timers::run(
            pool.clone(),
            bus.clone(),
            wall.clone(),
            hours,
            std::sync::Arc::new(tokio::sync::Notify::new()),
            pii.clone(),
            steady_cancel.clone(),
        ));
    }
    tokio::time::sleep(Duration::from_secs((STEADY_SECONDS + 4) as u64)).await;
    steady_cancel.cancel();
    while loops.join_next().await.is_some() {}
    let (p50, p99, n): (Option<f64>, Option<f64>, i64) = sqlx::query_as(
        "SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY ms), percentile_cont(0.99) WITHIN GROUP (ORDER BY ms), count(*)
         FROM (SELECT extract(epoch FROM fired_at - due_at) * 1000 AS ms FROM scheduler.timers
               WHERE state = 'fired' AND due_at >= $1 AND due_at < $1 + make_interval(secs => $2)) l",
    )
    .bind(start)
    .bind(STEADY_SECONDS as f64 + 1.0)
    .fetch_one(&pool)
    .await
    .map_err(|e| e.to_string())?;
    line("steady_timers_fired", n);
    line("lateness_p50_ms", format!("{:.0}", p50.unwrap_or(0.0)));
    line("lateness_p99_ms", format!("{:.0}", p99.unwrap_or(0.0)));
    line("peak_rss_mb", format!("{:.0}", peak_rss_mb()));
    crate::bench::print_postgres_tls(&pool).await;
    cancel.cancel();
    Ok(())
}

#[derive(Debug, thiserror::Error)]
enum SetupError {
    #[error("postgres: {0}")]
    Db(#[from] sqlx::Error),
    #[error("sealing a mobile: {0}")]
    Pii(#[from] renewal_platform::pii::PiiError),
}

/// The cases as the scheduler keeps them: each mobile sealed and its blind index, no
/// contact (that is dispatch's; the commands name the case).
async fn insert_cases(
    pool: &sqlx::PgPool,
    pii: &renewal_platform::pii::PiiCipher,
) -> Result<(), SetupError> {
    const CHUNK: i64 = 50_000;
    let mut start = 1;
    while start <= TIMERS {
        let end = (start + CHUNK).min(TIMERS + 1);
        let (mut ids, mut ns, mut mobiles, mut indexes) = (vec![], vec![], vec![], vec![]);
        for n in start..end {
            let id = uuid::Uuid::new_v4();
            let mobile = format!("+86139{n:08}");
            let (sealed, index) =
                renewal_scheduler::contact::seal_mobile(pii, id, &mobile)?.unzip();
            ids.push(id);
            ns.push(n);
            mobiles.push(sealed);
            indexes.push(index.map(|i| i.to_vec()));
        }
        sqlx::query(
            "INSERT INTO scheduler.cases (case_id, policy_no, expiry_date, effective_expiry_date, time_zone,
                 mobile_enc, mobile_index, city_code, branch_code)
             SELECT u.id, 'S' || lpad(u.n::text, 8, '0'), '2027-01-30', '2027-01-30', 'Asia/Shanghai',
                    u.mobile, u.idx, '310000', 'SH01'
             FROM UNNEST($1::uuid[], $2::bigint[], $3::bytea[], $4::bytea[]) AS u(id, n, mobile, idx)",
        )
        .bind(&ids)
        .bind(&ns)
        .bind(&mobiles)
        .bind(&indexes)
        .execute(pool)
        .await?;
        start = end;
    }
    Ok(())
}
