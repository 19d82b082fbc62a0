//! `renewal demo`: a synthetic portfolio, every service in one process on a simulated
//! clock, the mock SMS vendor on loopback, the renewal season day by day, and a funnel
//! report. Progress is kept in the database, so `--resume` continues a killed run.

pub mod badges;
pub mod branch_staff;
pub mod call_center;
pub mod clear_at_rest;
mod core_system;
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
    let sim = start_simulation(&args, start).await?;
    let pool = sim.pool().clone();
    let state = saved(&pool, &args)
        .await?
        .ok_or_else(|| SimError::Other("demo progress missing".into()))?;
    let customers = portfolio::generate(args.policies, args.seed, args.start, args.days, tz);
    if !state.portfolio_published {
        publish_portfolio(&sim, &args, &customers, start).await?;
    }
    let mut core = core_system::CoreSystem::new(&customers, args.seed, start, end, tz);
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
    let mut people = People::new(&sim, &args, &customers, &state)?;
    loop {
        let opens = people.work(&sim, &core, &customers, end).await?;
        core.publish_due(&sim).await?;
        let now = sim.now();
        if now >= end {
            break;
        }
        // Until the next thing that happens: midnight, the call center opening, or the
        // core system's next renewal or quote.
        let tomorrow = renewal_platform::local_instant(
            renewal_platform::local_date(now, tz) + chrono::Days::new(1),
            NaiveTime::MIN,
            tz,
        );
        let target = [
            Some(tomorrow),
            Some(end),
            (now < opens).then_some(opens),
            core.next_moment(),
        ]
        .into_iter()
        .flatten()
        .min()
        .unwrap_or(end);
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

/// The whole system on the simulated clock, fresh or resumed at the saved time, with
/// the season's settings saved when it is new.
async fn start_simulation(args: &DemoArgs, start: DateTime<Utc>) -> Result<Simulation, SimError> {
    let resume_at = if args.resume {
        resume_point(args).await?
    } else {
        None
    };
    if args.resume && resume_at.is_none() {
        eprintln!("demo: nothing to resume; starting a new season");
    }
    let fresh = resume_at.is_none();
    if fresh {
        refuse_foreign_database(args).await?;
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
            time_zone: args.time_zone,
            max_deliveries: crate::simulation::MAX_DELIVERIES,
        },
        resume_at,
        &args.nats_access,
    )
    .await?;
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
        .execute(sim.pool())
        .await?;
    }
    Ok(sim)
}

/// The organisation, the portfolio and the quotes given before the season, once.
async fn publish_portfolio(
    sim: &Simulation,
    args: &DemoArgs,
    customers: &[portfolio::Customer],
    start: DateTime<Utc>,
) -> Result<(), SimError> {
    let pool = sim.pool();
    let org = portfolio::org(args.policies);
    renewal_assignment::org::load(pool, &renewal_assignment::outbox(), &org, sim.now())
        .await
        .map_err(|e| SimError::Other(format!("loading the organisation: {e}")))?;
    let policies: Vec<_> = customers.iter().map(|c| c.policy.clone()).collect();
    sim.publish_policies(&policies).await?;
    let given = core_system::CoreSystem::given_before(customers, args.seed, start, args.time_zone);
    sim.publish_quotes(&given).await?;
    sqlx::query("UPDATE demo.progress SET portfolio_published = true WHERE id = 1")
        .execute(pool)
        .await?;
    Ok(())
}

/// The branches' staff and the call center, each working through the API with a token
/// of their own, and the last local day each did its day's work.
struct People {
    staff: branch_staff::BranchStaff,
    calls: call_center::CallCenter,
    worked_on: Option<NaiveDate>,
    called_on: Option<NaiveDate>,
    tz: chrono_tz::Tz,
}

impl People {
    fn new(
        sim: &Simulation,
        args: &DemoArgs,
        customers: &[portfolio::Customer],
        state: &Saved,
    ) -> Result<Self, SimError> {
        let badges = std::sync::Arc::new(badges::Badges::new(sim.issuer.clone()));
        let api = format!("http://{}", sim.http_addr);
        Ok(People {
            staff: branch_staff::BranchStaff::new(api.clone(), args.seed, badges.clone())?,
            calls: call_center::CallCenter::new(
                api,
                args.seed,
                sim.pool().clone(),
                customers,
                &badges,
            )?,
            worked_on: state.staff_worked_on,
            called_on: state.calls_made_on,
            tz: args.time_zone,
        })
    }

    /// The day's work not done yet: the branches' once per local day, the calls once
    /// the call center opens (a day's work done before a kill is not done again on
    /// resume; one cut short is). When the call center opens today.
    async fn work(
        &mut self,
        sim: &Simulation,
        core: &core_system::CoreSystem<'_>,
        customers: &[portfolio::Customer],
        end: DateTime<Utc>,
    ) -> Result<DateTime<Utc>, SimError> {
        let today = renewal_platform::local_date(sim.now(), self.tz);
        if self.worked_on != Some(today) {
            sim.settle().await?;
            self.staff.work_day(today).await?;
            self.worked_on = Some(today);
            sqlx::query("UPDATE demo.progress SET staff_worked_on = $1 WHERE id = 1")
                .bind(today)
                .execute(sim.pool())
                .await?;
        }
        let opens = renewal_platform::local_instant(today, call_center::OPENS, self.tz);
        if self.called_on != Some(today) && sim.now() >= opens && sim.now() < end {
            sim.settle().await?;
            let chased = self.calls.work_day(sim.now()).await?;
            core.issue_chased(sim, &chased).await?;
            correct_wrong_numbers(sim, customers).await?;
            self.called_on = Some(today);
            sqlx::query("UPDATE demo.progress SET calls_made_on = $1 WHERE id = 1")
                .bind(today)
                .execute(sim.pool())
                .await?;
        }
        Ok(opens)
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
