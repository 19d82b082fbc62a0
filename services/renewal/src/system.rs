//! All four services in one process: the embedded default for a laptop, the demo and
//! the end-to-end tests. Each service still owns its schema and talks to the others
//! only over NATS.

use chrono::{DateTime, Utc};
use renewal_dispatch::DispatchConfig;
use renewal_lists::ListsConfig;
use renewal_platform::postgres::DbError;
use renewal_platform::{ConsumerSpec, Deps, Outbox};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

pub async fn migrate_all(pool: PgPool) -> Result<(), DbError> {
    renewal_lists::migrate(pool.clone()).await?;
    renewal_assignment::migrate(pool.clone()).await?;
    renewal_scheduler::migrate(pool.clone()).await?;
    renewal_dispatch::migrate(pool).await
}

/// The services' own settings (the ones beyond what every process shares).
#[derive(Debug, Clone)]
pub struct Configs {
    pub lists: ListsConfig,
    pub scheduler: renewal_scheduler::config::SchedulerConfig,
    pub dispatch: DispatchConfig,
    /// The console (None when no sign-in is configured).
    pub console: Option<renewal_console::ConsoleConfig>,
}

impl Configs {
    pub fn from_env() -> Result<Self, renewal_platform::config::ConfigError> {
        Ok(Configs {
            lists: ListsConfig::from_env()?,
            scheduler: renewal_scheduler::config::SchedulerConfig::from_env()?,
            dispatch: DispatchConfig::from_env()?,
            console: console_from_env()?,
        })
    }
}

/// The console's settings, its services this process's own API (`HTTP_ADDR`).
fn console_from_env()
-> Result<Option<renewal_console::ConsoleConfig>, renewal_platform::config::ConfigError> {
    let settings = renewal_platform::config::Settings::from_env()?;
    let local = format!("http://127.0.0.1:{}", settings.http_addr.port());
    renewal_console::ConsoleConfig::from_env(&renewal_platform::config::Env::process(), &local)
}

/// Runs every service until `cancel` fires; if one fails, the others are stopped.
pub async fn run_all(
    deps: Deps,
    configs: Configs,
    cancel: CancellationToken,
) -> Result<(), String> {
    deps.bus
        .ensure_all_streams()
        .await
        .map_err(|e| e.to_string())?;
    if let Some(console) = configs.console {
        renewal_console::Console::mount(&deps.http, console).map_err(|e| e.to_string())?;
        tracing::info!("serving the console at /console/");
    }
    let mut services = tokio::task::JoinSet::new();
    services.spawn(renewal_lists::run_with(
        deps.clone(),
        configs.lists,
        cancel.clone(),
    ));
    services.spawn(renewal_assignment::run(deps.clone(), cancel.clone()));
    services.spawn(renewal_scheduler::run_with(
        deps.clone(),
        configs.scheduler,
        cancel.clone(),
    ));
    services.spawn(renewal_dispatch::run_with(
        deps,
        configs.dispatch,
        cancel.clone(),
    ));
    let mut result = Ok(());
    while let Some(done) = services.join_next().await {
        let failure = match done {
            Ok(Ok(())) => continue,
            Ok(Err(e)) => e,
            Err(e) => e.to_string(),
        };
        tracing::error!(error = %failure, "a service stopped; stopping the others");
        cancel.cancel();
        if result.is_ok() {
            result = Err(failure);
        }
    }
    result
}

/// Every durable consumer of every service, with the service's name.
pub fn consumers() -> Vec<(&'static str, ConsumerSpec)> {
    let mut all = Vec::new();
    for (service, specs) in [
        ("lists", renewal_lists::CONSUMERS),
        ("assignment", renewal_assignment::CONSUMERS),
        ("scheduler", renewal_scheduler::CONSUMERS),
        ("dispatch", renewal_dispatch::CONSUMERS),
    ] {
        all.extend(specs.iter().map(|s| (service, *s)));
    }
    all
}

pub fn outboxes() -> [Outbox; 4] {
    [
        renewal_lists::outbox(),
        renewal_assignment::outbox(),
        renewal_scheduler::outbox(),
        renewal_dispatch::outbox(),
    ]
}

/// The earliest instant any service has work of its own (a daily run, a timer, a
/// message to send).
pub async fn next_wakeup(
    pool: &PgPool,
    now: DateTime<Utc>,
    tz: chrono_tz::Tz,
) -> Result<DateTime<Utc>, sqlx::Error> {
    let mut next = renewal_lists::next_wakeup(pool, now, tz).await?;
    for candidate in [
        renewal_assignment::next_wakeup(pool).await?,
        renewal_scheduler::next_wakeup(pool).await?,
        renewal_dispatch::next_wakeup(pool).await?,
    ]
    .into_iter()
    .flatten()
    {
        next = next.min(candidate);
    }
    Ok(next)
}
