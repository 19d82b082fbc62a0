//! `renewal bench lists`: the lists service's figures on a synthetic portfolio, against
//! the loopback Postgres and NATS, printed as `name value` lines.
//!
//! 1. A CSV file of N policies (expiring over the next year) is imported: the time from
//!    the first byte to the committed portfolio is `import_seconds`.
//! 2. The import opens the cases already inside the window and the relay publishes
//!    them to JetStream (setup, reported, not the figure under test).
//! 3. November is lived through day by day, so the portfolio is in its steady state.
//! 4. The daily run of 1 December (the monthly list issue day) is timed in every time
//!    zone, until JetStream has acknowledged every event it wrote: `daily_run_seconds`.

use std::io::Write;
use std::process::ExitCode;
use std::time::Instant;

use chrono::{NaiveDate, NaiveTime};
use renewal_contract::Subjects;
use renewal_lists::daily_run::{DailyRun, DayDone};
use renewal_lists::import::Encoding;
use renewal_platform::config::Env;
use renewal_platform::{Bus, Clock, Outbox};
use secrecy::{ExposeSecret, SecretString};

use crate::simulation::SimAccess;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

/// Where a benchmark runs: its own database (from `var`, else `default`; refused unless
/// it names a bench database, since it is dropped), the NATS URL, and how to reach it
/// (`NATS_CA`, `NATS_USER`, ... as the simulation reads them: in the shell
/// `deploy/local/test` sets up, over TLS as `admin`; plain text when unset).
pub(crate) fn bench_target(
    var: &str,
    default: &str,
) -> Result<(SecretString, String, SimAccess), String> {
    let env = Env::process();
    let database_url = env.secret_or(var, default);
    if !database_url.expose_secret().contains("bench") {
        return Err(format!(
            "{var} must name a database with \"bench\" in it (it is dropped)"
        ));
    }
    let nats_url: String = env
        .or(
            "NATS_URL",
            renewal_platform::config::DEFAULT_NATS_URL.to_owned(),
        )
        .map_err(|e| e.to_string())?;
    let access = SimAccess::from_env(&env).map_err(|e| e.to_string())?;
    Ok((database_url, nats_url, access))
}

/// Fresh streams under `prefix` and a fresh database for a benchmark that runs the
/// services' parts itself.
pub(crate) async fn fresh_bench(
    database_url: &SecretString,
    nats_url: &str,
    access: &SimAccess,
    prefix: &str,
    cancel: &CancellationToken,
) -> Result<(Bus, PgPool), String> {
    let subjects = Subjects::new(prefix).map_err(|e| e.to_string())?;
    let nats = access.admin.as_ref().unwrap_or(&access.services);
    let bus = Bus::connect_with(nats_url, nats, subjects, 1, "renewal-bench", cancel)
        .await
        .map_err(|e| e.to_string())?
        // A million policies' events.
        .with_stream_max_bytes(2 << 30);
    bus.delete_streams().await;
    bus.ensure_all_streams().await.map_err(|e| e.to_string())?;
    renewal_platform::postgres::drop_database(database_url)
        .await
        .map_err(|e| e.to_string())?;
    renewal_platform::postgres::ensure_database(database_url)
        .await
        .map_err(|e| e.to_string())?;
    let pool = renewal_platform::postgres::pool(database_url, 8).map_err(|e| e.to_string())?;
    Ok((bus, pool))
}

/// How many messages a stream holds (what JetStream acknowledged, duplicates dropped).
pub(crate) async fn stream_messages(
    bus: &Bus,
    stream: renewal_contract::Stream,
) -> Result<u64, String> {
    let mut stream = bus
        .js
        .get_stream(bus.subjects.stream(stream))
        .await
        .map_err(|e| e.to_string())?;
    Ok(stream
        .info()
        .await
        .map_err(|e| e.to_string())?
        .state
        .messages)
}

fn line(name: &str, value: impl std::fmt::Display) {
    println!("{name} {value}");
}

/// Prints whether the benchmark's connections to Postgres are TLS (`DATABASE_URL`
/// without `sslmode` prefers it, as libpq does): a figure says what it measured.
pub async fn print_postgres_tls(pool: &PgPool) {
    let tls: Option<bool> =
        sqlx::query_scalar("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
            .fetch_optional(pool)
            .await
            .ok()
            .flatten();
    line("postgres_tls", u8::from(tls.unwrap_or(false)));
}

pub async fn lists(policies: usize) -> ExitCode {
    match run_lists(policies).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("renewal bench lists: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn drain(outbox: &Outbox, pool: &PgPool, bus: &Bus) -> Result<usize, String> {
    let mut total = 0;
    loop {
        let n = outbox
            .publish_batch(pool, bus, 10)
            .await
            .map_err(|e| e.to_string())?;
        if n == 0 {
            return Ok(total);
        }
        total += n;
    }
}

async fn run_lists(policies: usize) -> Result<(), String> {
    renewal_platform::install_crypto_provider();
    let (database_url, nats_url, access) = bench_target(
        "BENCH_DATABASE_URL",
        "postgres://postgres@127.0.0.1:5432/renewal_bench",
    )?;
    let tz = chrono_tz::Asia::Shanghai;
    let cancel = CancellationToken::new();
    let (bus, pool) = fresh_bench(&database_url, &nats_url, &access, "bench", &cancel).await?;
    let config = renewal_lists::ListsConfig::with_key(crate::simulation::DEMO_PII_KEY)
        .map_err(|e| e.to_string())?;
    let importer = crate::cli_import::importer(&pool, tz, &config).await?;
    let zones = importer.zones.clone();
    let outbox = importer.outbox.clone();

    // The file: N policies expiring from 1 November 2026 over a year.
    let import_day = NaiveDate::from_ymd_opt(2026, 10, 31).ok_or("date")?;
    let path = std::env::temp_dir().join(format!("renewal-bench-lists-{policies}.csv"));
    let generated = Instant::now();
    write_portfolio(&path, policies, import_day, tz)?;
    let bytes = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
    line("policies", policies);
    line("csv_bytes", bytes);
    eprintln!(
        "bench: wrote {} in {:.1} s",
        path.display(),
        generated.elapsed().as_secs_f64()
    );

    let file = std::fs::File::open(&path).map_err(|e| e.to_string())?;
    let at = |day: NaiveDate, h: u32, m: u32| {
        renewal_platform::local_instant(
            day,
            NaiveTime::from_hms_opt(h, m, 0).unwrap_or_default(),
            tz,
        )
    };
    let report = importer
        .import(
            std::io::BufReader::with_capacity(1 << 20, file),
            "bench.csv",
            Encoding::Detect,
            at(import_day, 12, 0),
        )
        .await
        .map_err(|e| e.to_string())?;
    if report.rejected > 0 {
        return Err(format!(
            "{} rows rejected: {:?}",
            report.rejected,
            report.rejections.first()
        ));
    }
    line("import_seconds", format!("{:.2}", report.load_seconds));
    line(
        "import_policies_per_s",
        format!("{:.0}", report.rows as f64 / report.load_seconds.max(1e-9)),
    );
    line("import_copy_seconds", format!("{:.2}", report.copy_seconds));
    line(
        "import_merge_seconds",
        format!("{:.2}", report.merge_seconds),
    );
    line("import_cases_opened", report.cases_opened);
    line(
        "import_open_cases_seconds",
        format!("{:.2}", report.seconds - report.load_seconds),
    );
    line(
        "quotes_kept",
        core_quotes(&pool, at(import_day, 13, 0)).await?,
    );
    let began = Instant::now();
    let published = drain(&outbox, &pool, &bus).await?;
    line("catch_up_events_published", published);
    line(
        "catch_up_publish_seconds",
        format!("{:.2}", began.elapsed().as_secs_f64()),
    );

    let daily = DailyRun {
        pool: pool.clone(),
        outbox: outbox.clone(),
        clock: Clock::simulated(at(import_day, 12, 0)),
        zones: zones.clone(),
        pii: config.pii.clone(),
        list_issue_day: config.list_issue_day,
        renewal_confirm_within: config.renewal_confirm_within,
        vehicle_window: config.vehicle_window,
    };
    let run_day = async |day: NaiveDate| -> Result<(DayDone, usize), String> {
        let mut done = DayDone::default();
        for zone in zones.all() {
            let now = renewal_platform::local_instant(
                day,
                NaiveTime::from_hms_opt(0, 5, 0).unwrap_or_default(),
                zone,
            );
            if let Some(d) = daily
                .run_day(zone, day, now)
                .await
                .map_err(|e| e.to_string())?
            {
                done.lapsed += d.lapsed;
                done.opened += d.opened;
                done.moved += d.moved;
                done.lists_issued += d.lists_issued;
                done.list_items += d.list_items;
            }
        }
        let published = drain(&outbox, &pool, &bus).await?;
        Ok((done, published))
    };
    let warm = Instant::now();
    let mut day = import_day + chrono::Days::new(1);
    let first_of_december = NaiveDate::from_ymd_opt(2026, 12, 1).ok_or("date")?;
    while day < first_of_december {
        run_day(day).await?;
        day = day + chrono::Days::new(1);
    }
    line("warm_up_days", 30);
    line(
        "warm_up_seconds",
        format!("{:.2}", warm.elapsed().as_secs_f64()),
    );
    sqlx::query("VACUUM ANALYZE lists.cases")
        .execute(&pool)
        .await
        .map_err(|e| e.to_string())?;
    sqlx::query("VACUUM ANALYZE lists.outbox")
        .execute(&pool)
        .await
        .map_err(|e| e.to_string())?;

    let timed = Instant::now();
    let (done, published) = run_day(first_of_december).await?;
    let seconds = timed.elapsed().as_secs_f64();
    line("daily_run_seconds", format!("{seconds:.2}"));
    line("daily_run_cases_opened", done.opened);
    line("daily_run_cases_lapsed", done.lapsed);
    line("daily_run_bucket_moves", done.moved);
    line("daily_run_lists_issued", done.lists_issued);
    line("daily_run_list_items", done.list_items);
    line("daily_run_events_published", published);
    // The month's analyses, issued after the day's run in a transaction of their own.
    let timed = Instant::now();
    let mut reviews = 0;
    for zone in zones.all() {
        let now = at(first_of_december, 0, 6);
        reviews += daily
            .issue_reviews(zone, first_of_december, now)
            .await
            .map_err(|e| e.to_string())?;
    }
    drain(&outbox, &pool, &bus).await?;
    line("monthly_reviews_issued", reviews);
    line(
        "monthly_reviews_seconds",
        format!("{:.2}", timed.elapsed().as_secs_f64()),
    );
    let _ = std::fs::remove_file(&path);
    cancel.cancel();
    Ok(())
}

/// The core system's quotes (setup, not a figure under test): seven policies in eight
/// are quoted, as the core system quotes two months before expiry; the rest reach T-65
/// unquoted and raise the city company's task. The terms of the cases the import opened
/// go out now (published with the catch-up), later cases' with their opening.
async fn core_quotes(pool: &PgPool, at: chrono::DateTime<chrono::Utc>) -> Result<u64, String> {
    let kept = sqlx::query(
        "INSERT INTO lists.quotes (policy_no, quote_id, premium_fen, last_premium_fen, claim_free_years,
             ncd_level, compulsory_fen, commercial_fen, valid_until, promotion, issued_at, received_at, source)
         SELECT policy_no, 'Q' || policy_no, premium_fen * 9 / 10, premium_fen, 1, -1,
                least(95000, premium_fen * 9 / 20), premium_fen * 9 / 10 - least(95000, premium_fen * 9 / 20),
                end_date, '', $1, $1, 'csv'
         FROM lists.policies WHERE abs(hashtext(policy_no)) % 8 <> 0 AND premium_fen >= 10",
    )
    .bind(at)
    .execute(pool)
    .await
    .map_err(|e| e.to_string())?;
    // The cases opened by the import take their terms now.
    let mut tx = pool.begin().await.map_err(|e| e.to_string())?;
    renewal_lists::quotes::announce(&mut tx, &renewal_lists::outbox(), None, at)
        .await
        .map_err(|e| e.to_string())?;
    tx.commit().await.map_err(|e| e.to_string())?;
    Ok(kept.rows_affected())
}

pub(crate) fn write_portfolio(
    path: &std::path::Path,
    n: usize,
    from: NaiveDate,
    tz: chrono_tz::Tz,
) -> Result<(), String> {
    let file = std::fs::File::create(path).map_err(|e| e.to_string())?;
    let mut out = std::io::BufWriter::with_capacity(1 << 20, file);
    let header = renewal_lists::import::COLUMNS.join(",");
    writeln!(out, "{header}").map_err(|e| e.to_string())?;
    for chunk_start in (0..n).step_by(100_000) {
        let count = (n - chunk_start).min(100_000);
        let customers =
            crate::demo::portfolio::generate(count, chunk_start as u64 + 1, from, 305, tz);
        for (i, c) in customers.iter().enumerate() {
            let p = &c.policy;
            writeln!(
                out,
                "B{:08},{},{},{},{},{},{},{},{},{},{},{},{},{}.{:02},{},{}",
                chunk_start + i + 1,
                p.customer_name,
                p.mobile,
                p.id_number,
                p.plate,
                p.vin,
                p.city_code,
                p.branch_code,
                p.agent_code,
                p.channel,
                p.category,
                p.start_date,
                p.end_date,
                p.premium_fen / 100,
                p.premium_fen % 100,
                u8::from(p.important),
                u8::from(p.group_policy),
            )
            .map_err(|e| e.to_string())?;
        }
    }
    out.flush().map_err(|e| e.to_string())
}
