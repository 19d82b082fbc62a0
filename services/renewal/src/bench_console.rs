//! `renewal bench console`: every page of the console timed as people open it, with a
//! portfolio of N policies (1,000,000 by default) loaded into the whole system, against
//! the loopback Postgres and NATS; printed as `name value` lines.
//!
//! 1. The organisation is loaded, the portfolio imported as `renewal import policies`
//!    imports it (the lists service's importer) on 1 December, the month's lists issued, and the
//!    system left to settle: every case opened, listed, claimed-to-be, timed (setup).
//! 2. Each page's person signs in through the development issuer (the OIDC code flow
//!    with PKCE, over HTTP as a browser would), opens the page once (`_first_ms`: the
//!    reports are not yet kept) and then [`ROUNDS`] times in a row; the page's p50
//!    and p95 are printed, and `pages_p95_max_ms` is the slowest page's p95.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use chrono::{NaiveDate, NaiveTime};

use crate::simulation::{SimOptions, Simulation};

/// Times each page is opened after its first.
pub const ROUNDS: usize = 60;
/// One opening of a page every so often: a person does not open ten pages a second
/// (and the services' per-caller quotas would answer 429 to a loop that did).
const PACE: Duration = Duration::from_millis(125);

fn line(name: &str, value: impl std::fmt::Display) {
    println!("{name} {value}");
}

pub async fn console(policies: usize) -> ExitCode {
    match run(policies).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("renewal bench console: {e}");
            ExitCode::FAILURE
        }
    }
}

/// A page and the person who opens it: role, agent, branch, city.
struct Visit {
    name: &'static str,
    path: String,
    who: (&'static str, &'static str, &'static str, &'static str),
}

fn visits(policy_no: &str) -> Vec<Visit> {
    let v = |name, path: &str, who| Visit {
        name,
        path: path.to_owned(),
        who,
    };
    vec![
        v("season", "/console/season", ("analyst", "", "", "")),
        v(
            "claims",
            "/console/claims",
            ("branch_admin", "", "SH01", "310000"),
        ),
        v("pool", "/console/pool", ("city_admin", "", "", "310000")),
        v(
            "research",
            "/console/research",
            ("city_admin", "", "", "310000"),
        ),
        v(
            "case",
            &format!("/console/cases/{policy_no}"),
            ("branch_admin", "", "SH01", "310000"),
        ),
        v(
            "workbench",
            "/console/workbench",
            ("agent", "SH01-A01", "SH01", "310000"),
        ),
        v(
            "supervisor",
            "/console/supervisor",
            ("supervisor", "SH01-S01", "SH01", "310000"),
        ),
        v(
            "operations",
            "/console/operations",
            ("hq_admin", "", "", ""),
        ),
        v("plans", "/console/plans", ("city_admin", "", "", "310000")),
        v(
            "organisation",
            "/console/organisation",
            ("branch_admin", "", "SH01", "310000"),
        ),
    ]
}

async fn run(policies: usize) -> Result<(), String> {
    let (database_url, nats_url, access) = crate::bench::bench_target(
        "BENCH_CONSOLE_DATABASE_URL",
        "postgres://postgres@127.0.0.1:5432/renewal_bench_console",
    )?;
    let tz = chrono_tz::Asia::Shanghai;
    let day = NaiveDate::from_ymd_opt(2026, 12, 1).ok_or("date")?;
    let at = |h: u32| {
        renewal_platform::local_instant(
            day,
            NaiveTime::from_hms_opt(h, 0, 0).unwrap_or_default(),
            tz,
        )
    };
    // BENCH_CONSOLE_REUSE=1: the portfolio a previous run loaded (half an hour on two
    // cores) is used again, only the pages are timed.
    let reuse = std::env::var("BENCH_CONSOLE_REUSE").is_ok_and(|v| v == "1");
    let sim = Simulation::start_with(
        SimOptions {
            database_url,
            pii_keys: secrecy::SecretString::from(crate::simulation::DEMO_PII_KEY),
            nats_url,
            prefix: "benchconsole".into(),
            fresh: !reuse,
            start: if reuse { at(9) } else { at(7) },
            seed: 1,
            time_zone: tz,
            max_deliveries: crate::simulation::MAX_DELIVERIES,
        },
        None,
        &access,
    )
    .await
    .map_err(|e| e.to_string())?;
    let result = load_and_visit(&sim, policies, day, tz, reuse).await;
    let _ = sim.stop().await;
    result
}

async fn load_and_visit(
    sim: &Simulation,
    policies: usize,
    day: NaiveDate,
    tz: chrono_tz::Tz,
    reuse: bool,
) -> Result<(), String> {
    if !reuse {
        load(sim, policies, day, tz).await?;
    }
    counts(sim).await?;
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(60))
        .build()
        .map_err(|e| e.to_string())?;
    let base = format!("http://{}", sim.http_addr);
    let policy_no: String = sqlx::query_scalar(
        "SELECT policy_no FROM lists.cases WHERE branch_code = 'SH01' ORDER BY policy_no LIMIT 1",
    )
    .fetch_one(sim.pool())
    .await
    .map_err(|e| e.to_string())?;
    let mut worst = 0.0f64;
    for visit in visits(&policy_no) {
        let (role, agent, branch, city) = visit.who;
        let cookie = sign_in(&http, &base, role, agent, branch, city).await?;
        let (first, p50, p95) = time_page(&http, &base, &visit.path, &cookie).await?;
        line(
            &format!("page_{}_first_ms", visit.name),
            format!("{first:.1}"),
        );
        line(&format!("page_{}_p50_ms", visit.name), format!("{p50:.1}"));
        line(&format!("page_{}_p95_ms", visit.name), format!("{p95:.1}"));
        worst = worst.max(p95);
    }
    line("pages_p95_max_ms", format!("{worst:.1}"));
    Ok(())
}

/// The organisation and the portfolio, as the core system's nightly file is loaded
/// (`renewal import policies`: a million rows take longer than the API's 30 s request
/// limit), then the month's lists issued and every case through every service.
async fn load(
    sim: &Simulation,
    policies: usize,
    day: NaiveDate,
    tz: chrono_tz::Tz,
) -> Result<(), String> {
    let org = crate::demo::portfolio::org(policies);
    renewal_assignment::org::load(sim.pool(), &renewal_assignment::outbox(), &org, sim.now())
        .await
        .map_err(|e| format!("organisation: {e}"))?;
    let path = std::env::temp_dir().join(format!("renewal-bench-console-{policies}.csv"));
    crate::bench::write_portfolio(&path, policies, day, tz)?;
    let config = renewal_lists::ListsConfig::with_key(crate::simulation::DEMO_PII_KEY)
        .map_err(|e| e.to_string())?;
    let importer = crate::cli_import::importer(sim.pool(), tz, &config).await?;
    let file = std::fs::File::open(&path).map_err(|e| e.to_string())?;
    let loaded = Instant::now();
    let report = importer
        .import(
            std::io::BufReader::with_capacity(1 << 20, file),
            "bench.csv",
            renewal_lists::import::Encoding::Detect,
            sim.now(),
        )
        .await
        .map_err(|e| e.to_string())?;
    let _ = std::fs::remove_file(&path);
    line("policies", report.rows);
    line(
        "import_seconds",
        format!("{:.1}", loaded.elapsed().as_secs_f64()),
    );
    let nine = NaiveTime::from_hms_opt(9, 0, 0).unwrap_or_default();
    settle(sim, renewal_platform::local_instant(day, nine, tz)).await?;
    line(
        "setup_seconds",
        format!("{:.1}", loaded.elapsed().as_secs_f64()),
    );
    Ok(())
}

/// What the system holds: cases in lists and assignment, timers in the scheduler. The
/// tables are analysed first, as after any bulk load (autovacuum may not have come by
/// yet, and the reports' plans need the tables' sizes).
async fn counts(sim: &Simulation) -> Result<(), String> {
    sqlx::query("ANALYZE")
        .execute(sim.pool())
        .await
        .map_err(|e| e.to_string())?;
    for (name, table) in [
        ("cases", "lists.cases"),
        ("claims", "assignment.cases"),
        ("timers", "scheduler.timers"),
    ] {
        let n: i64 =
            sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SELECT count(*) FROM {table}")))
                .fetch_one(sim.pool())
                .await
                .map_err(|e| e.to_string())?;
        line(name, n);
    }
    Ok(())
}

/// Moves to `until` and waits, as long as it takes, for every case to reach every
/// service (the simulation's own settle gives up after two minutes).
async fn settle(sim: &Simulation, until: chrono::DateTime<chrono::Utc>) -> Result<(), String> {
    let started = Instant::now();
    loop {
        match sim.advance_to(until).await {
            Ok(()) => return Ok(()),
            Err(e)
                if e.to_string().contains("did not settle")
                    && started.elapsed() < Duration::from_secs(3600) =>
            {
                eprintln!(
                    "bench: settling ({:.0} s): {e}",
                    started.elapsed().as_secs_f64()
                );
            }
            Err(e) => return Err(e.to_string()),
        }
    }
}

/// The first time, the median and the 95th percentile (ms) of opening `path`.
async fn time_page(
    http: &reqwest::Client,
    base: &str,
    path: &str,
    cookie: &str,
) -> Result<(f64, f64, f64), String> {
    let mut times = Vec::with_capacity(ROUNDS);
    let mut first = 0.0;
    for round in 0..=ROUNDS {
        let began = Instant::now();
        let paced = tokio::time::sleep(PACE);
        let response = http
            .get(format!("{base}{path}"))
            .header("cookie", cookie)
            .send()
            .await
            .map_err(|e| e.to_string())?;
        let status = response.status();
        let body = response.text().await.map_err(|e| e.to_string())?;
        let ms = began.elapsed().as_secs_f64() * 1000.0;
        if !status.is_success() || body.contains("id=\"refusal\"") {
            return Err(format!(
                "{path}: {status}: {}",
                body.chars().take(300).collect::<String>()
            ));
        }
        if round == 0 {
            first = ms;
        } else {
            times.push(ms);
        }
        paced.await;
    }
    times.sort_by(f64::total_cmp);
    let at = |q: f64| times[((times.len() as f64 * q).ceil() as usize).clamp(1, times.len()) - 1];
    Ok((first, at(0.5), at(0.95)))
}

/// The cookies a response sets, as `name=value`.
fn set_cookies(response: &reqwest::Response) -> Vec<String> {
    response
        .headers()
        .get_all(reqwest::header::SET_COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .filter_map(|v| v.split(';').next())
        .map(str::to_owned)
        .collect()
}

fn location(response: &reqwest::Response) -> Result<String, String> {
    response
        .headers()
        .get(reqwest::header::LOCATION)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
        .ok_or_else(|| format!("no redirect from {}", response.url()))
}

/// Signs in as a browser does (the development issuer's page); the session cookie.
pub async fn sign_in(
    http: &reqwest::Client,
    base: &str,
    role: &str,
    agent: &str,
    branch: &str,
    city: &str,
) -> Result<String, String> {
    let e = |e: reqwest::Error| e.to_string();
    let start = http
        .get(format!("{base}/console/sign-in"))
        .send()
        .await
        .map_err(e)?;
    let state_cookie = set_cookies(&start).join("; ");
    let authorize = location(&start)?;
    let page = http
        .get(&authorize)
        .send()
        .await
        .map_err(e)?
        .text()
        .await
        .map_err(e)?;
    let field = |name: &str| -> Result<String, String> {
        let marker = format!("name=\"{name}\" value=\"");
        let from = page
            .find(&marker)
            .ok_or_else(|| format!("no {name} on the sign-in page"))?
            + marker.len();
        let value = &page[from..];
        let value = &value[..value.find('"').unwrap_or(value.len())];
        Ok(value
            .replace("&#x2f;", "/")
            .replace("&#x3d;", "=")
            .replace("&amp;", "&")
            .replace("&#x3a;", ":"))
    };
    let form = [
        ("form", field("form")?),
        ("client_id", field("client_id")?),
        ("redirect_uri", field("redirect_uri")?),
        ("state", field("state")?),
        ("code_challenge", field("code_challenge")?),
        ("role", role.to_owned()),
        ("agent_code", agent.to_owned()),
        ("branch_code", branch.to_owned()),
        ("city_code", city.to_owned()),
    ];
    let chosen = http
        .post(format!("{base}/console/dev-issuer/authorize"))
        .form(&form)
        .send()
        .await
        .map_err(e)?;
    let back = location(&chosen)?;
    let signed = http
        .get(&back)
        .header("cookie", state_cookie)
        .send()
        .await
        .map_err(e)?;
    set_cookies(&signed)
        .into_iter()
        .find(|c| c.starts_with("renewal_console="))
        .ok_or_else(|| format!("signing in as {role} gave no session ({})", signed.status()))
}
