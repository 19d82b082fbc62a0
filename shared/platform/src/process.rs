//! The life of a service process, shared by every thin binary and the all-in-one:
//! read the environment, start logging, serve health and readiness at once, connect
//! to Postgres and NATS with backoff (reporting not-ready meanwhile), migrate, run the
//! services until SIGTERM, drain within the grace period, flush telemetry last.

use std::future::Future;
use std::pin::Pin;
use std::process::ExitCode;
use std::time::Duration;

use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::config::Settings;
use crate::{Bus, Clock, Deps, HttpHost};

pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// How a process runs its service(s): migrations first, then the run loop.
pub struct Program {
    pub name: &'static str,
    /// The services it runs (their schemas): the process is ready once each has
    /// mounted its routes.
    pub serves: &'static [&'static str],
    pub migrate: fn(PgPool) -> BoxFuture<Result<(), crate::postgres::DbError>>,
    pub run: fn(Deps, CancellationToken) -> BoxFuture<Result<(), String>>,
}

/// Runs `program` as a process; the exit code says how it ended.
pub async fn main(program: Program, migrate_only: bool) -> ExitCode {
    install_crypto_provider_and_metrics();
    let settings = match Settings::from_env() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("{}: configuration error: {e}", program.name);
            return ExitCode::from(2);
        }
    };
    let telemetry = match crate::telemetry::init(program.name, "info,sqlx=warn,async_nats=warn") {
        Ok(t) => t,
        Err(e) => {
            eprintln!("{}: configuration error: {e}", program.name);
            return ExitCode::from(2);
        }
    };
    let auth = match crate::identity::AuthConfig::from_env(&crate::config::Env::process()) {
        Ok(a) => a,
        Err(e) if migrate_only => {
            tracing::debug!(error = %e, "no identity configuration (not needed to migrate)");
            crate::identity::AuthConfig::Development {
                dir: std::path::PathBuf::new(),
            }
        }
        Err(e) => {
            eprintln!("{}: configuration error: {e}", program.name);
            telemetry.shutdown();
            return ExitCode::from(2);
        }
    };
    let code = run_process(&program, settings, auth, migrate_only).await;
    telemetry.shutdown();
    code
}

fn install_crypto_provider_and_metrics() {
    crate::install_crypto_provider();
    let _ = crate::http::metrics_handle();
}

async fn run_process(
    program: &Program,
    settings: Settings,
    auth: crate::identity::AuthConfig,
    migrate_only: bool,
) -> ExitCode {
    let root = CancellationToken::new();
    crate::shutdown::cancel_on_signal(root.clone());

    let pool =
        match crate::postgres::pool(&settings.database_url, settings.database_max_connections) {
            Ok(p) => p,
            Err(e) => {
                tracing::error!(error = %e, "configuration error");
                return ExitCode::from(2);
            }
        };
    if migrate_only {
        return migrate_only_run(program, &settings, pool).await;
    }

    let http = HttpHost::new();
    http.set_ready("postgres", Err("connecting".into()));
    http.set_ready("nats", Err("connecting".into()));
    http.set_ready(program.name, Err("starting".into()));
    match crate::identity::Authenticator::from_config(&auth).await {
        Ok((authenticator, dev)) => http.set_identity(authenticator, dev.map(std::sync::Arc::new)),
        Err(e) => {
            tracing::error!(error = %e, "identity configuration cannot be used");
            return ExitCode::from(2);
        }
    }
    let Some((admin, api)) = listen(&settings).await else {
        return ExitCode::FAILURE;
    };
    let http_stop = CancellationToken::new();
    let admin_server = tokio::spawn(http.clone().serve_admin(admin, http_stop.clone()));
    let api_server = tokio::spawn(http.clone().serve(api, http_stop.clone()));
    let server = async move {
        let _ = api_server.await;
        let _ = admin_server.await;
    };

    let started = connect(program, &settings, &pool, &http, &root);
    let bus = match started.await {
        Ok(bus) => bus,
        Err(e) => {
            if !root.is_cancelled() {
                tracing::error!(error = %e, "start-up failed");
            }
            http_stop.cancel();
            let _ = server.await;
            return if root.is_cancelled() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            };
        }
    };
    let watch = tokio::spawn(watch_dependencies(
        pool.clone(),
        bus.clone(),
        http.clone(),
        root.clone(),
    ));

    let deps = Deps {
        pool,
        bus,
        clock: Clock::wall(),
        http: http.clone(),
        time_zone: settings.time_zone,
        max_deliveries: settings.max_deliveries,
        retention: settings.retention,
    };
    let service_stop = CancellationToken::new();
    let service = tokio::spawn((program.run)(deps, service_stop.clone()));
    tokio::spawn(ready_once_mounted(
        http.clone(),
        program.name,
        program.serves,
    ));

    let code = run_until_stopped(program, &settings, &http, &root, service, service_stop).await;
    watch.abort();
    http_stop.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(5), server).await;
    code
}

/// `migrate`: the database (created if missing and allowed), then the migrations.
async fn migrate_only_run(program: &Program, settings: &Settings, pool: PgPool) -> ExitCode {
    if let Err(e) = crate::postgres::ensure_database(&settings.database_url).await {
        tracing::error!(error = %e, "cannot create the database");
        return ExitCode::FAILURE;
    }
    match (program.migrate)(pool).await {
        Ok(()) => {
            tracing::info!("migrations applied");
            ExitCode::SUCCESS
        }
        Err(e) => {
            tracing::error!(error = %e, "migration failed");
            ExitCode::FAILURE
        }
    }
}

/// Waits for Postgres (then migrates) and NATS, reporting each on `/readyz`.
async fn connect(
    program: &Program,
    settings: &Settings,
    pool: &PgPool,
    http: &HttpHost,
    root: &CancellationToken,
) -> Result<Bus, String> {
    let report = |why: String| http.set_ready("postgres", Err(why));
    crate::postgres::wait_until_reachable(pool, &settings.database_url, root, &report)
        .await
        .map_err(|e| e.to_string())?;
    http.set_ready("postgres", Ok(()));
    (program.migrate)(pool.clone())
        .await
        .map_err(|e| e.to_string())?;
    let subjects =
        renewal_contract::Subjects::new(&settings.nats_prefix).map_err(|e| e.to_string())?;
    let bus = Bus::connect_with(
        &settings.nats_url,
        &settings.nats_access,
        subjects,
        settings.stream_replicas,
        program.name,
        root,
    )
    .await
    .map_err(|e| e.to_string())?
    .with_stream_max_bytes(settings.stream_max_bytes);
    http.set_ready("nats", Ok(()));
    Ok(bus)
}

/// Marks the process ready once every service it runs has mounted its routes (before,
/// a request would find no route).
async fn ready_once_mounted(http: HttpHost, name: &'static str, serves: &'static [&'static str]) {
    while !http.documented(serves) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    http.set_ready(name, Ok(()));
    tracing::info!(service = name, "started");
}

/// Runs the service until it ends or the process is told to stop; then drains it
/// within `SHUTDOWN_GRACE`.
async fn run_until_stopped(
    program: &Program,
    settings: &Settings,
    http: &HttpHost,
    root: &CancellationToken,
    mut service: tokio::task::JoinHandle<Result<(), String>>,
    service_stop: CancellationToken,
) -> ExitCode {
    let outcome = tokio::select! {
        _ = root.cancelled() => None,
        done = &mut service => Some(done),
    };
    match outcome {
        Some(Ok(Ok(()))) => ExitCode::SUCCESS,
        Some(Ok(Err(e))) => {
            tracing::error!(error = %e, "service stopped with an error");
            ExitCode::FAILURE
        }
        Some(Err(e)) => {
            tracing::error!(error = %e, "service task failed");
            ExitCode::FAILURE
        }
        None => {
            // Draining: not ready any more, stop intake, let in-flight work finish.
            http.set_ready(program.name, Err("shutting down".into()));
            service_stop.cancel();
            match tokio::time::timeout(settings.shutdown_grace, &mut service).await {
                Ok(_) => tracing::info!("drained; stopped"),
                Err(_) => {
                    tracing::warn!(
                        grace_s = settings.shutdown_grace.as_secs(),
                        "did not drain within SHUTDOWN_GRACE; stopping anyway"
                    );
                    service.abort();
                }
            }
            ExitCode::SUCCESS
        }
    }
}

/// Binds the admin and API listeners, logging the addresses as bound (either may name
/// port 0: the system picks one).
async fn listen(settings: &Settings) -> Option<(tokio::net::TcpListener, tokio::net::TcpListener)> {
    let mut bound = Vec::with_capacity(2);
    for (addr, var) in [
        (settings.admin_addr, "ADMIN_ADDR"),
        (settings.http_addr, "HTTP_ADDR"),
    ] {
        match crate::http::bind(addr).await {
            Ok(l) => bound.push(l),
            Err(e) => {
                tracing::error!(%addr, error = %e, "cannot listen ({var})");
                return None;
            }
        }
    }
    let api = bound.pop()?;
    let admin = bound.pop()?;
    let admin_at = admin.local_addr().unwrap_or(settings.admin_addr);
    let api_at = api.local_addr().unwrap_or(settings.http_addr);
    tracing::info!(addr = %admin_at, "serving /healthz, /readyz, /metrics");
    tracing::info!(addr = %api_at, "serving the API");
    Some((admin, api))
}

/// Keeps `/readyz` honest after start: Postgres and NATS are re-checked every few seconds.
async fn watch_dependencies(pool: PgPool, bus: Bus, http: HttpHost, cancel: CancellationToken) {
    let mut round: u64 = 0;
    loop {
        // How full the streams are, every 30 s (an alert fires before one is full).
        if round.is_multiple_of(6) && bus.is_connected() {
            let _ = tokio::time::timeout(Duration::from_secs(3), bus.report_fill()).await;
        }
        round += 1;
        let pg = tokio::time::timeout(
            Duration::from_secs(3),
            sqlx::query("SELECT 1").execute(&pool),
        )
        .await;
        let pg_state = match pg {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(crate::postgres::explain(&e)),
            Err(_) => Err("no answer within 3s".to_owned()),
        };
        if let Err(reason) = &pg_state {
            tracing::warn!(%reason, "postgres is not reachable");
        }
        http.set_ready("postgres", pg_state);
        let nats_state = if bus.is_connected() {
            Ok(())
        } else {
            tracing::warn!("nats connection is down; reconnecting");
            Err("disconnected".to_owned())
        };
        http.set_ready("nats", nats_state);
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_secs(5)) => {}
        }
    }
}
