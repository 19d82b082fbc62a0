//! `renewal demo`: a synthetic portfolio, every service in one process on a simulated
//! clock, the mock SMS vendor on loopback, the renewal season day by day, and a funnel
//! report. Progress is kept in the database, so `--resume` continues a killed run.

pub mod badges;
pub mod branch_staff;
pub mod call_center;
pub mod clear_at_rest;
pub mod funnel;
pub mod portfolio;

use std::path::PathBuf;

use chrono::{DateTime, NaiveDate, NaiveTime, Utc};
use secrecy::SecretString;
use sqlx::Row;

use crate::simulation::{SimError, SimOptions, Simulation};

/// Customers (in percent) who reply to their first delivered SMS with an opt-out.
const OPT_OUT_PCT: u64 = 3;

#[derive(Debug, Clone)]
pub struct DemoArgs {
    pub policies: usize,
    pub days: u32,
    pub seed: u64,
    pub start: NaiveDate,
    pub json: Option<PathBuf>,
    pub resume: bool,
    pub database_url: SecretString,
    pub nats_url: String,
    /// TLS and users (`SimAccess::from_env`); plain text without.
    pub nats_access: crate::simulation::SimAccess,
    pub prefix: String,
    pub time_zone: chrono_tz::Tz,
    pub progress: bool,
}

struct Saved {
    sim_now: DateTime<Utc>,
    portfolio_published: bool,
    /// The last local day the branch staff and the call center did their day's work.
    staff_worked_on: Option<NaiveDate>,
    calls_made_on: Option<NaiveDate>,
}

async fn saved(pool: &sqlx::PgPool, args: &DemoArgs) -> Result<Option<Saved>, SimError> {
    let row = sqlx::query("SELECT seed, policies, days, start_date, sim_now, portfolio_published, staff_worked_on, calls_made_on FROM demo.progress WHERE id = 1")
        .fetch_optional(pool)
        .await?;
    let Some(row) = row else { return Ok(None) };
    let same = row.try_get::<i64, _>("seed")? == args.seed as i64
        && row.try_get::<i32, _>("policies")? == args.policies as i32
        && row.try_get::<i32, _>("days")? == args.days as i32
        && row.try_get::<NaiveDate, _>("start_date")? == args.start;
    if !same {
        return Err(SimError::Other(
            "--resume needs the same --policies, --days, --seed and --start as the run it continues".into(),
        ));
    }
    Ok(Some(Saved {
        sim_now: row.try_get("sim_now")?,
        portfolio_published: row.try_get("portfolio_published")?,
        staff_worked_on: row.try_get("staff_worked_on")?,
        calls_made_on: row.try_get("calls_made_on")?,
    }))
}

/// Refuses to start afresh (which drops the database) on a database that holds tables
/// but is not a demo's: `DEMO_DATABASE_URL` pointed at real data by mistake.
async fn refuse_foreign_database(args: &DemoArgs) -> Result<(), SimError> {
    let options: sqlx::postgres::PgConnectOptions =
        secrecy::ExposeSecret::expose_secret(&args.database_url)
            .parse()
            .map_err(|e: sqlx::Error| SimError::Other(format!("DEMO_DATABASE_URL: {e}")))?;
    let Ok(pool) = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .connect_with(options)
        .await
    else {
        return Ok(()); // no such database yet
    };
    let (tables, demo): (i64, bool) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM pg_tables WHERE schemaname NOT IN ('pg_catalog', 'information_schema')),
                to_regclass('demo.progress') IS NOT NULL",
    )
    .fetch_one(&pool)
    .await?;
    pool.close().await;
    if tables > 0 && !demo {
        return Err(SimError::Other(
            "DEMO_DATABASE_URL names a database with tables that is not a demo database; \
             the demo starts by dropping its database, so it will not touch this one"
                .into(),
        ));
    }
    Ok(())
}

/// Where a run saved its progress, without starting anything (for `--resume`).
async fn resume_point(args: &DemoArgs) -> Result<Option<DateTime<Utc>>, SimError> {
    let options: sqlx::postgres::PgConnectOptions =
        secrecy::ExposeSecret::expose_secret(&args.database_url)
            .parse()
            .map_err(|e: sqlx::Error| SimError::Other(format!("DATABASE_URL: {e}")))?;
    let pool = match sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .connect_with(options)
        .await
    {
        Ok(p) => p,
        Err(_) => return Ok(None),
    };
    let exists: bool = sqlx::query_scalar("SELECT to_regclass('demo.progress') IS NOT NULL")
        .fetch_one(&pool)
        .await?;
    if !exists {
        return Ok(None);
    }
    Ok(saved(&pool, args).await?.map(|s| s.sim_now))
}

/// A season simulated: its report, and the system as the season left it (its console
/// still serving until it is stopped).
pub struct Season {
    pub report: funnel::Report,
    pub sim: Simulation,
}

pub async fn run(args: DemoArgs) -> Result<Season, SimError> {
    let tz = args.time_zone;
    let start = renewal_platform::local_instant(args.start, NaiveTime::MIN, tz);
    let end = renewal_platform::local_instant(
        args.start + chrono::Days::new(args.days as u64),
        NaiveTime::MIN,
        tz,
    );
    let resume_at = if args.resume {
        resume_point(&args).await?
    } else {
        None
    };
    if args.resume && resume_at.is_none() {
        eprintln!("demo: nothing to resume; starting a new season");
    }
    let fresh = resume_at.is_none();
    if fresh {
        refuse_foreign_database(&args).await?;
    }
    let sim = Simulation::start_with(
        SimOptions {
            database_url: args.database_url.clone(),
            pii_keys: SecretString::from(crate::simulation::DEMO_PII_KEY),
            nats_url: args.nats_url.clone(),
            prefix: args.prefix.clone(),
            fresh,
            start,
            seed: args.seed,
            time_zone: tz,
            max_deliveries: crate::simulation::MAX_DELIVERIES,
        },
        resume_at,
        &args.nats_access,
    )
    .await?;
    let pool = sim.pool().clone();
    // Some customers answer their first SMS with TD (or a variant): they get no more
    // marketing SMS, which the funnel checks.
    sim.vendor.reply_opt_out(OPT_OUT_PCT);
    if fresh {
        sqlx::query(
            "INSERT INTO demo.progress (id, seed, policies, days, start_date, sim_now) VALUES (1, $1, $2, $3, $4, $5)",
        )
        .bind(args.seed as i64)
        .bind(args.policies as i32)
        .bind(args.days as i32)
        .bind(args.start)
        .bind(start)
        .execute(&pool)
        .await?;
    }
    let state = saved(&pool, &args)
        .await?
        .ok_or_else(|| SimError::Other("demo progress missing".into()))?;

    let customers = portfolio::generate(args.policies, args.seed, args.start, args.days, tz);
    if !state.portfolio_published {
        let org = portfolio::org(args.policies);
        renewal_assignment::org::load(&pool, &renewal_assignment::outbox(), &org, sim.now())
            .await
            .map_err(|e| SimError::Other(format!("loading the organisation: {e}")))?;
        let policies: Vec<_> = customers.iter().map(|c| c.policy.clone()).collect();
        sim.publish_policies(&policies).await?;
        // The quotes the core system had given before the season started come with
        // the portfolio (before the first daily run opens the cases).
        let given: Vec<_> = portfolio::quotes(&customers, args.seed, start, tz)
            .into_iter()
            .filter(|(t, _)| *t <= start)
            .map(|(_, q)| q)
            .collect();
        sim.publish_quotes(&given).await?;
        sqlx::query("UPDATE demo.progress SET portfolio_published = true WHERE id = 1")
            .execute(&pool)
            .await?;
    }
    // The core system reports most renewals at once, some two days late (the customer
    // may meanwhile tell a caller they renewed: the case waits for the confirmation).
    let mut renewals: Vec<(DateTime<Utc>, &str)> = customers
        .iter()
        .filter_map(|c| {
            let no = c.policy.policy_no.as_str();
            c.renews_at.map(|t| (t + core_lag(args.seed, no), no))
        })
        .filter(|(t, _)| *t < end)
        .collect();
    renewals.sort();
    // The core system quotes each policy two months before its expiry (some late).
    let quotes: Vec<_> = portfolio::quotes(&customers, args.seed, start, tz)
        .into_iter()
        .filter(|(t, _)| *t < end)
        .collect();
    let mut next_quote = 0;

    if args.progress {
        eprintln!(
            "renewal demo: the console serves the season as it runs at http://{}/console/",
            sim.http_addr
        );
    }
    let bar = progress_bar(args.days as u64, args.progress);
    let day_of = |t: DateTime<Utc>| {
        (renewal_platform::local_date(t, tz) - args.start)
            .num_days()
            .clamp(0, args.days as i64) as u64
    };
    bar.set_position(day_of(sim.now()));
    let mut next_renewal = 0;
    // Everyone works through the API with a token of their own.
    let badges = std::sync::Arc::new(badges::Badges::new(sim.issuer.clone()));
    let staff = branch_staff::BranchStaff::new(
        format!("http://{}", sim.http_addr),
        args.seed,
        badges.clone(),
    )?;
    let calls = call_center::CallCenter::new(
        format!("http://{}", sim.http_addr),
        args.seed,
        pool.clone(),
        &customers,
        &badges,
    )?;
    let (mut worked_on, mut called_on) = (state.staff_worked_on, state.calls_made_on);
    loop {
        // The branches' working day, once per local day (a day's work done before a
        // kill is not done again on resume; one cut short is).
        let today = renewal_platform::local_date(sim.now(), tz);
        if worked_on != Some(today) {
            sim.settle().await?;
            staff.work_day(today).await?;
            worked_on = Some(today);
            sqlx::query("UPDATE demo.progress SET staff_worked_on = $1 WHERE id = 1")
                .bind(today)
                .execute(&pool)
                .await?;
        }
        // The calls of the day, from the time the call center opens.
        let opens = renewal_platform::local_instant(today, call_center::OPENS, tz);
        if called_on != Some(today) && sim.now() >= opens && sim.now() < end {
            sim.settle().await?;
            let chased = calls.work_day(sim.now()).await?;
            // The city company chases the missing quotes: the core system issues them.
            let now = sim.now();
            let issued: Vec<_> = quotes
                .iter()
                .filter(|(t, q)| *t > now && chased.binary_search(&q.policy_no).is_ok())
                .map(|(_, q)| renewal_contract::core::QuoteIssued {
                    issued_at_ms: now.timestamp_millis(),
                    ..q.clone()
                })
                .collect();
            sim.publish_quotes(&issued).await?;
            correct_wrong_numbers(&sim, &customers).await?;
            called_on = Some(today);
            sqlx::query("UPDATE demo.progress SET calls_made_on = $1 WHERE id = 1")
                .bind(today)
                .execute(&pool)
                .await?;
        }
        // Renewals whose moment has come (on resume, those before the saved time are
        // published again: lists applies each once).
        while next_renewal < renewals.len() && renewals[next_renewal].0 <= sim.now() {
            let policy_no = renewals[next_renewal].1;
            sim.publish_renewal(policy_no, &format!("R{}", &policy_no[1..]))
                .await?;
            next_renewal += 1;
        }
        // Quotes whose moment has come (again on resume: a quote is kept once).
        let due = quotes[next_quote..].partition_point(|(t, _)| *t <= sim.now());
        if due > 0 {
            let batch: Vec<_> = quotes[next_quote..next_quote + due]
                .iter()
                .map(|(_, q)| q.clone())
                .collect();
            sim.publish_quotes(&batch).await?;
            next_quote += due;
        }
        let now = sim.now();
        if now >= end {
            break;
        }
        let tomorrow = renewal_platform::local_instant(
            renewal_platform::local_date(now, tz) + chrono::Days::new(1),
            NaiveTime::MIN,
            tz,
        );
        let mut target = tomorrow.min(end);
        if now < opens {
            target = target.min(opens);
        }
        if let Some((t, _)) = renewals.get(next_renewal) {
            target = target.min(*t);
        }
        if let Some((t, _)) = quotes.get(next_quote) {
            target = target.min(*t);
        }
        sim.advance_to(target).await?;
        sqlx::query("UPDATE demo.progress SET sim_now = $1 WHERE id = 1")
            .bind(sim.now())
            .execute(&pool)
            .await?;
        bar.set_position(day_of(sim.now()));
    }
    sim.settle().await?;
    bar.finish_and_clear();
    sqlx::query("UPDATE demo.progress SET finished = true WHERE id = 1")
        .execute(&pool)
        .await?;
    let mut report = funnel::measure(&sim, args.seed, args.days, &args.start.to_string()).await?;
    report.clear_at_rest(
        clear_at_rest::of_demo(&args.database_url, &customers, args.policies).await?,
    );
    Ok(Season { report, sim })
}

/// How late the core system reports a policy's renewal: two days for three in ten.
fn core_lag(seed: u64, policy_no: &str) -> chrono::Duration {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    (seed, policy_no, "core lag").hash(&mut h);
    if h.finish() % 10 < 3 {
        chrono::Duration::days(2)
    } else {
        chrono::Duration::zero()
    }
}

/// The core system corrects the mobiles agents reported wrong a day or more ago: a new
/// version of the policy with the right number (the contacts held for it resume).
async fn correct_wrong_numbers(
    sim: &Simulation,
    customers: &[portfolio::Customer],
) -> Result<(), SimError> {
    let due: Vec<(String, i64)> = sqlx::query_as(
        "SELECT policy_no, (SELECT count(*) FROM dispatch.contact_corrections a
                            WHERE a.policy_no = c.policy_no) AS reported
         FROM dispatch.contact_corrections c
         WHERE corrected_at IS NULL AND reported_at <= $1
         GROUP BY policy_no ORDER BY policy_no",
    )
    .bind(sim.now() - chrono::Duration::days(1))
    .fetch_all(sim.pool())
    .await?;
    let by_no: std::collections::HashMap<&str, &portfolio::Customer> = customers
        .iter()
        .map(|c| (c.policy.policy_no.as_str(), c))
        .collect();
    let mut corrected = Vec::new();
    for (policy_no, reported) in due {
        let Some(customer) = by_no.get(policy_no.as_str()) else {
            continue;
        };
        let mut policy = customer.policy.clone();
        // One version per correction; the right number differs from the wrong one.
        policy.version = 1 + reported;
        let tail: u32 = policy_no.bytes().map(u32::from).sum::<u32>() * 7919 + reported as u32;
        policy.mobile = format!("+86139{:08}", tail % 100_000_000);
        corrected.push(policy);
    }
    if !corrected.is_empty() {
        sim.publish_policies(&corrected).await?;
    }
    Ok(())
}

/// The bar the season's days are counted on; log lines are printed above it.
static BAR: std::sync::OnceLock<indicatif::ProgressBar> = std::sync::OnceLock::new();

/// A log line, above the progress bar (which is drawn again below it).
pub fn print_above_bar(line: &[u8]) {
    use std::io::Write;
    let write = || {
        let _ = std::io::stderr().write_all(line);
    };
    match BAR.get() {
        Some(bar) => bar.suspend(write),
        None => write(),
    }
}

fn progress_bar(days: u64, visible: bool) -> indicatif::ProgressBar {
    if !visible {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(days);
    let _ = BAR.set(bar.clone());
    let style = indicatif::ProgressStyle::with_template(
        "renewal season {bar:40.cyan/blue} day {pos}/{len} [{elapsed_precise}]",
    )
    .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar());
    bar.set_style(style);
    bar
}
