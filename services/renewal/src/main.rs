//! The `renewal` binary: every service in one process.

use std::path::PathBuf;
use std::process::ExitCode;

use chrono::NaiveDate;
use clap::{Parser, Subcommand};
use renewal_platform::process::{Program, main as run_main};

#[derive(Parser)]
#[command(
    name = "renewal",
    version,
    about = "Motor insurance renewal: lists, assignment, scheduler and dispatch in one process"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run every service on the real clock until SIGTERM (configuration from the environment).
    Run,
    /// Apply every service's migrations and exit.
    Migrate,
    /// Simulate a renewal season on a synthetic portfolio and print the funnel.
    Demo {
        /// How many policies the synthetic portfolio has.
        #[arg(long, default_value_t = 2000)]
        policies: usize,
        /// How many days of the season to simulate.
        #[arg(long, default_value_t = 100)]
        days: u32,
        /// Seed for the portfolio and customer behaviour.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// First day of the season (YYYY-MM-DD).
        #[arg(long, default_value = "2026-12-01")]
        start: NaiveDate,
        /// Also write the figures as JSON to this file.
        #[arg(long)]
        json: Option<PathBuf>,
        /// Continue a run that was stopped, instead of starting afresh.
        #[arg(long)]
        resume: bool,
        /// Keep the console serving the season when the report is done, until Ctrl-C
        /// (the default at a terminal).
        #[arg(long, overrides_with = "no_serve")]
        serve: bool,
        /// Exit when the report is done.
        #[arg(long)]
        no_serve: bool,
    },
    /// Load data from the core policy system into the database of DATABASE_URL.
    Import {
        #[command(subcommand)]
        what: ImportWhat,
    },
    /// Print a token of the development issuer (AUTH_DEV=on; the key in the local
    /// state folder) for a role and scope, for curl on a laptop.
    Token {
        /// agent, supervisor, branch_admin, city_admin, hq_admin, importer, analyst,
        /// call_center or auditor (repeat for several).
        #[arg(long = "role", required = true)]
        roles: Vec<String>,
        #[arg(long)]
        agent: Option<String>,
        #[arg(long)]
        branch: Option<String>,
        #[arg(long)]
        city: Option<String>,
        /// How long it is valid (30m, 8h, ...).
        #[arg(long, default_value = "8h")]
        ttl: String,
    },
    /// Print the nats-server configuration for this deployment: one user per service
    /// (and `renewal`, `core`) whose rights are its rows of proto/SUBJECTS.md, and `admin`
    /// (publish and subscribe `>`, for operators and the local tests), passwords
    /// made once into --passwords; with --tls-cert and --tls-key, TLS required.
    NatsConfig {
        /// The deployment's subject prefix (NATS_PREFIX).
        #[arg(long, env = "NATS_PREFIX", default_value = "")]
        prefix: String,
        /// Folder of the users' passwords, one file per user (made where missing, 0600);
        /// default: `nats-users` in the local state folder.
        #[arg(long)]
        passwords: Option<PathBuf>,
        /// The server's certificate (PEM), for a `tls {}` block.
        #[arg(long, requires = "tls_key")]
        tls_cert: Option<PathBuf>,
        /// The server's private key (PEM).
        #[arg(long, requires = "tls_cert")]
        tls_key: Option<PathBuf>,
    },
    /// Personal data at rest (DATABASE_URL, PII_KEYS).
    Pii {
        #[command(subcommand)]
        what: PiiWhat,
    },
    /// Release-mode benchmarks; each prints `name value` lines.
    Bench {
        #[command(subcommand)]
        what: BenchWhat,
    },
    /// Run the mock SMS vendor on loopback, for fault-injection suites, until SIGTERM.
    ///
    /// The Alibaba Cloud SMS wire format, a test double. From the environment:
    /// DATABASE_URL (its store, created if missing), VENDOR_WEBHOOKS (comma-separated
    /// receipt webhook URLs, tried in turn), VENDOR_ADDR (default 127.0.0.1:4390),
    /// VENDOR_SEED (default 7), VENDOR_ANSWER_MS (min-max, e.g. 2000-5000),
    /// VENDOR_OPT_OUT_PCT (default 0). `POST /faults` with {"mode":
    /// "accept_then_hang"|"accept_then_reset"|"unavailable"|"slow"|"none", "seconds": N}
    /// switches a fault on for every SendSms; `GET /faults` shows it.
    Vendor,
    /// The fault suite: the whole system as production runs it (three NATS nodes, its
    /// own Postgres cluster, two processes of every service, the vendor as a process),
    /// an open-loop load and a seeded nemesis; then the checker. Prints the seed and
    /// one `name value` line per figure; exit status 1 when a rule broke. Run it with
    /// `deploy/local/chaos` (CHAOS_MINUTES, CHAOS_SEED, ...).
    Chaos,
}

#[derive(Subcommand)]
enum ImportWhat {
    /// A CSV file of policies (UTF-8 or GBK, with or without BOM). Good rows load, bad
    /// rows are reported with line, column and reason; exit status 0 when the file was
    /// read, 3 when rows were rejected, 1 when nothing could be written.
    Policies {
        file: PathBuf,
        /// utf-8, gbk or auto (detect).
        #[arg(long, default_value = "auto")]
        encoding: String,
        /// Write every rejected row (line, column, reason) to this CSV file.
        #[arg(long)]
        rejections: Option<PathBuf>,
    },
    /// A CSV file of the organisation: columns city_code, branch_code, branch_name,
    /// agent_code, agent_name, role (agent|supervisor), capacity, active. Branches and
    /// agents are upserted; an agent made inactive hands their open cases back to
    /// their branch. Exit status 3 when rows are wrong (nothing is loaded).
    Org { file: PathBuf },
}

#[derive(Subcommand)]
enum PiiWhat {
    /// Re-seal every service's personal data under the newest key of PII_KEYS, in
    /// batches, while the services run; prints progress; run it again to resume.
    Rotate {
        /// Rows per transaction.
        #[arg(long, default_value_t = renewal::cli_pii::BATCH)]
        batch: i64,
    },
}

#[derive(Subcommand)]
enum BenchWhat {
    /// Lists: CSV import throughput and the daily run with the monthly list issue.
    Lists {
        /// Portfolio size.
        #[arg(long, default_value_t = 1_000_000)]
        policies: usize,
    },
    /// Assignment: claims opened from one list issue, one auto-assignment sweep, and
    /// the claim API's latency under 32 concurrent clients.
    Assignment,
    /// Scheduler: 200,000 of 1,000,000 timers due at once, fired and published; lateness
    /// under a steady 5,000 timers/s; peak memory.
    Scheduler,
    /// Dispatch: 32 pullers leasing and completing phone tasks, vendor receipts in
    /// arrays of 100 through the webhook, and SMS sends to the local mock vendor.
    Dispatch,
    /// Console: every page's p50 and p95 as its people open it, with the portfolio
    /// loaded into the whole system.
    Console {
        /// Portfolio size.
        #[arg(long, default_value_t = 1_000_000)]
        policies: usize,
    },
}

fn program() -> Program {
    Program {
        name: "renewal",
        serves: &["lists", "assignment", "scheduler", "dispatch"],
        migrate: |pool| Box::pin(renewal::system::migrate_all(pool)),
        run: |deps, cancel| {
            Box::pin(async move {
                let configs = renewal::system::Configs::from_env().map_err(|e| e.to_string())?;
                renewal::system::run_all(deps, configs, cancel).await
            })
        },
    }
}

/// `renewal import policies|org`.
async fn import(what: ImportWhat) -> ExitCode {
    match what {
        ImportWhat::Policies {
            file,
            encoding,
            rejections,
        } => renewal::cli_import::policies(file, &encoding, rejections).await,
        ImportWhat::Org { file } => renewal::cli_import::org(file).await,
    }
}

/// `renewal bench lists|assignment|scheduler|dispatch|console`.
async fn bench(what: BenchWhat) -> ExitCode {
    match what {
        BenchWhat::Lists { policies } => renewal::bench::lists(policies).await,
        BenchWhat::Assignment => renewal::bench_assignment::assignment().await,
        BenchWhat::Scheduler => renewal::bench_scheduler::scheduler().await,
        BenchWhat::Dispatch => renewal::bench_dispatch::dispatch().await,
        BenchWhat::Console { policies } => renewal::bench_console::console(policies).await,
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Run => {
            if let Err(e) = renewal::system::Configs::from_env() {
                eprintln!("renewal: configuration error: {e}");
                return ExitCode::from(2);
            }
            run_main(program(), false).await
        }
        Command::Migrate => run_main(program(), true).await,
        Command::Demo {
            policies,
            days,
            seed,
            start,
            json,
            resume,
            serve,
            no_serve,
        } => {
            let serve = match (serve, no_serve) {
                (true, _) => Some(true),
                (_, true) => Some(false),
                _ => None,
            };
            demo(DemoRun {
                policies,
                days,
                seed,
                start,
                json,
                resume,
                serve,
            })
            .await
        }
        Command::Import { what } => import(what).await,
        Command::Token {
            roles,
            agent,
            branch,
            city,
            ttl,
        } => token(&roles, agent, branch, city, &ttl),
        Command::Bench { what } => bench(what).await,
        Command::Pii {
            what: PiiWhat::Rotate { batch },
        } => renewal::cli_pii::rotate(batch.max(1)).await,
        Command::NatsConfig {
            prefix,
            passwords,
            tls_cert,
            tls_key,
        } => nats_config(&prefix, passwords, tls_cert.zip(tls_key)),
        Command::Vendor => renewal::vendor_sim::run_process().await,
        Command::Chaos => chaos().await,
    }
}

/// `renewal chaos`: runs the fault suite; exit 1 when a rule broke, 2 when it could not run.
async fn chaos() -> ExitCode {
    renewal_platform::install_crypto_provider();
    let bin_dir = std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(std::path::Path::to_path_buf))
        .unwrap_or_default();
    let options = match renewal::chaos::ChaosOptions::from_env(bin_dir) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("renewal chaos: {e}");
            return ExitCode::from(2);
        }
    };
    match renewal::chaos::run(options).await {
        Ok(figures) => {
            for line in figures.lines() {
                println!("{line}");
            }
            if figures.broken() {
                eprintln!(
                    "renewal chaos: a rule that must never break broke (see the figures and the history)"
                );
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            }
        }
        Err(e) => {
            eprintln!("renewal chaos: {e}");
            ExitCode::from(2)
        }
    }
}

/// `renewal nats-config`: prints the server's users (and TLS) for a deployment.
fn nats_config(
    prefix: &str,
    passwords: Option<PathBuf>,
    tls: Option<(PathBuf, PathBuf)>,
) -> ExitCode {
    let env = renewal_platform::config::Env::process();
    let dir = passwords
        .unwrap_or_else(|| renewal_platform::dev_issuer::state_dir(&env).join("nats-users"));
    let tls = tls.map(|(cert, key)| renewal::nats_config::ServerTls { cert, key });
    match renewal::nats_config::generate(prefix, &dir, tls.as_ref()) {
        Ok(text) => {
            print!("{text}");
            eprintln!("renewal nats-config: passwords in {}", dir.display());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("renewal nats-config: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `renewal token --role branch_admin --branch SH01`: prints a development token.
fn token(
    roles: &[String],
    agent: Option<String>,
    branch: Option<String>,
    city: Option<String>,
    ttl: &str,
) -> ExitCode {
    use renewal_platform::config::Env;
    use renewal_platform::dev_issuer::{DevIssuer, Grant};
    use renewal_platform::identity::AuthConfig;
    let env = Env::process();
    if env.or("RENEWAL_ENV", String::new()).unwrap_or_default() == "production" {
        eprintln!("renewal token: the development issuer is off under RENEWAL_ENV=production");
        return ExitCode::from(2);
    }
    let mut parsed = Vec::new();
    for r in roles {
        match renewal_platform::Role::parse(r) {
            Some(role) => parsed.push(role),
            None => {
                eprintln!("renewal token: unknown role {r:?}");
                return ExitCode::from(2);
            }
        }
    }
    let ttl = match renewal_platform::config::parse_duration(ttl) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("renewal token: --ttl {e}");
            return ExitCode::from(2);
        }
    };
    let dir = match AuthConfig::from_env(&Env::from_fn(|v| {
        if v == "AUTH_DEV" {
            Some("on".into())
        } else {
            std::env::var(v).ok()
        }
    })) {
        Ok(AuthConfig::Development { dir }) => dir,
        Ok(_) | Err(_) => {
            eprintln!("renewal token: the development issuer cannot be used with AUTH_ISSUER set");
            return ExitCode::from(2);
        }
    };
    let issuer = match DevIssuer::load_or_create(&dir) {
        Ok(i) => i,
        Err(e) => {
            eprintln!("renewal token: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut grant = Grant::role(parsed[0]);
    grant.roles = parsed;
    if let Some(a) = &agent {
        grant = grant.agent(a);
    }
    grant.branch_code = branch;
    grant.city_code = city;
    match issuer.token(&grant, ttl) {
        Ok(t) => {
            println!("{t}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("renewal token: {e}");
            ExitCode::FAILURE
        }
    }
}

/// What `renewal demo` was asked for.
struct DemoRun {
    policies: usize,
    days: u32,
    seed: u64,
    start: NaiveDate,
    json: Option<PathBuf>,
    resume: bool,
    /// Keep the console serving afterwards (None: when at a terminal).
    serve: Option<bool>,
}

/// Where the demo keeps its season: database, NATS and its access, prefix, time zone.
type DemoSettings = (
    secrecy::SecretString,
    String,
    String,
    chrono_tz::Tz,
    renewal::simulation::SimAccess,
);

fn demo_settings() -> Result<DemoSettings, renewal_platform::config::ConfigError> {
    let env = renewal_platform::config::Env::process();
    Ok((
        env.secret_or(
            "DEMO_DATABASE_URL",
            "postgres://postgres@127.0.0.1:5432/renewal_demo",
        ),
        env.or(
            "NATS_URL",
            renewal_platform::config::DEFAULT_NATS_URL.to_owned(),
        )?,
        env.or("DEMO_NATS_PREFIX", "demo".to_owned())?,
        env.or("TIME_ZONE", chrono_tz::Asia::Shanghai)?,
        renewal::simulation::SimAccess::from_env(&env)?,
    ))
}

async fn demo(run: DemoRun) -> ExitCode {
    let DemoRun {
        policies,
        days,
        seed,
        start,
        json,
        resume,
        serve,
    } = run;
    let settings = demo_settings();
    let (database_url, nats_url, prefix, time_zone, nats_access) = match settings {
        Ok(s) => s,
        Err(e) => {
            eprintln!("renewal demo: configuration error: {e}");
            return ExitCode::from(2);
        }
    };
    if policies == 0 || days == 0 {
        eprintln!("renewal demo: --policies and --days must be at least 1");
        return ExitCode::from(2);
    }
    // Text a newcomer reads, above the progress bar; only warnings worth acting on (a
    // message redelivered while its case is on its way is the system working).
    renewal_platform::telemetry::write_lines_through(renewal::demo::print_above_bar);
    let telemetry = match renewal_platform::telemetry::init_with(
        "renewal-demo",
        "warn,renewal_platform::inbox=error,async_nats=error",
        "text",
    ) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("renewal demo: configuration error: {e}");
            return ExitCode::from(2);
        }
    };
    let args = renewal::demo::DemoArgs {
        policies,
        days,
        seed,
        start,
        json: json.clone(),
        resume,
        database_url,
        nats_url,
        nats_access,
        prefix,
        time_zone,
        progress: true,
    };
    eprintln!("renewal demo: {policies} policies, {days} days from {start}, seed {seed}");
    let began = std::time::Instant::now();
    let result = renewal::demo::run(args).await;
    let season = match result {
        Ok(s) => s,
        Err(e) => {
            telemetry.shutdown();
            eprintln!("renewal demo failed: {e}");
            return ExitCode::FAILURE;
        }
    };
    let code = report_season(&season.report, began, json);
    serve_console(&season.sim, serve).await;
    if let Err(e) = season.sim.stop().await {
        eprintln!("renewal demo: stopping: {e}");
    }
    telemetry.shutdown();
    code
}

/// Leaves the console serving the season just simulated until Ctrl-C (at a terminal,
/// or with `--serve`; `--no-serve` or no terminal: not at all).
async fn serve_console(sim: &renewal::simulation::Simulation, serve: Option<bool>) {
    use std::io::IsTerminal;
    if !serve.unwrap_or_else(|| std::io::stdin().is_terminal() && std::io::stdout().is_terminal()) {
        return;
    }
    println!();
    println!("  console: http://{}/console/", sim.http_addr);
    println!(
        "  sign in with any role and scope (the development issuer), e.g. branch_admin of SH01"
    );
    println!("  in city 310000, agent SH01-A01, analyst; Ctrl-C stops it");
    let _ = tokio::signal::ctrl_c().await;
}

/// Prints the report (and writes its JSON); the exit code the figures call for.
fn report_season(
    report: &renewal::demo::funnel::Report,
    began: std::time::Instant,
    json: Option<PathBuf>,
) -> ExitCode {
    println!("{}", report.render());
    println!("  simulated in {:.1} s", began.elapsed().as_secs_f64());
    if let Some(path) = json {
        let body = match serde_json::to_string_pretty(&report) {
            Ok(b) => b,
            Err(e) => {
                eprintln!("renewal demo: cannot encode the report: {e}");
                return ExitCode::FAILURE;
            }
        };
        if let Err(e) = std::fs::write(&path, body + "\n") {
            eprintln!("renewal demo: cannot write {}: {e}", path.display());
            return ExitCode::FAILURE;
        }
        println!("  figures written to {}", path.display());
    }
    if report.violations.total() > 0 {
        eprintln!(
            "renewal demo: {} violations of the rules that must never be broken",
            report.violations.total()
        );
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}
