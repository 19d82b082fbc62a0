//! The lists service: the portfolio as the rest of the system sees it, and *which*
//! policies need work *when*. It takes policies from the core policy system (NATS and
//! CSV files), keeps their personal data encrypted, opens a renewal case when a policy
//! enters the 90-day window (earlier when it expires in a long holiday), moves cases
//! between buckets, issues each branch's monthly renewal and lapse lists, lapses cases
//! not renewed by the end of their expiry day, closes a case the moment its policy is
//! renewed, and reports renewal rates.

mod call_outcomes;
mod case_changes;
pub mod cases;
pub mod categories;
mod config;
pub mod daily_run;
pub mod erasures;
pub mod import;
mod intake;
pub mod issued_lists;
pub mod kpis;
pub mod losses;
pub mod openapi;
mod policies;
pub mod policy_checks;
pub mod portfolio;
mod quote_import;
pub mod quotes;
pub mod report;
mod rescues;
pub mod reviews;

use renewal_contract::Stream;
use renewal_platform::{ConsumerSpec, Deps, Outbox, Service};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

pub use cases::WINDOW_DAYS;
pub use config::ListsConfig;
/// The holiday calendar (shared: assignment and the scheduler count working days by it).
pub use renewal_platform::holidays;

/// The schema this service owns; it touches no other.
pub const SCHEMA: &str = "lists";

/// Policy facts from the core policy system.
pub const CORE_POLICIES: ConsumerSpec = ConsumerSpec {
    stream: Stream::Core,
    durable: "lists",
    filter: "core.policy.>",
    parallel: 1,
    batch: 1,
};

/// Quotes from the core policy system.
pub const CORE_QUOTES: ConsumerSpec = ConsumerSpec {
    stream: Stream::Core,
    durable: "lists-quotes",
    filter: "core.quote.>",
    parallel: 1,
    batch: 1,
};

/// Discounts approved in assignment, applied to the cases' quotes.
pub const DISCOUNTS: ConsumerSpec = ConsumerSpec {
    stream: Stream::Assignment,
    durable: "lists-discounts",
    filter: "assignment.discount.>",
    parallel: 1,
    batch: 1,
};

/// Call outcomes from dispatch: the lapse register's calls, renewals reported on the
/// phone, customers lost.
pub const CALL_OUTCOMES: ConsumerSpec = ConsumerSpec {
    stream: Stream::Dispatch,
    durable: "lists-outcomes",
    filter: "dispatch.task.completed",
    parallel: 1,
    batch: 256,
};

/// What assignment, scheduler and dispatch say they erased (one consumer per stream:
/// each answer lives in its service's namespace).
pub const ERASURE_ANSWERS: [ConsumerSpec; 3] = [
    ConsumerSpec {
        stream: Stream::Assignment,
        durable: "lists-erasures",
        filter: "assignment.erasure.>",
        parallel: 1,
        batch: 1,
    },
    ConsumerSpec {
        stream: Stream::Scheduler,
        durable: "lists-erasures",
        filter: "scheduler.erasure.>",
        parallel: 1,
        batch: 1,
    },
    ConsumerSpec {
        stream: Stream::Dispatch,
        durable: "lists-erasures",
        filter: "dispatch.erasure.>",
        parallel: 1,
        batch: 1,
    },
];

/// The readiness condition set once the service's routes are mounted.
pub const API_READY: &str = "lists_api";

/// Every durable consumer this service reads from.
pub const CONSUMERS: &[ConsumerSpec] = &[
    CORE_POLICIES,
    CORE_QUOTES,
    DISCOUNTS,
    CALL_OUTCOMES,
    ERASURE_ANSWERS[0],
    ERASURE_ANSWERS[1],
    ERASURE_ANSWERS[2],
];

pub fn outbox() -> Outbox {
    Outbox::new(SCHEMA)
}

pub async fn migrate(pool: PgPool) -> Result<(), renewal_platform::postgres::DbError> {
    renewal_platform::postgres::migrate(&pool, SCHEMA, sqlx::migrate!("./migrations")).await
}

/// Writes the holiday calendar into the service's tables (at every start, so a new
/// data file takes effect on deploy).
pub async fn store_calendar(
    pool: &PgPool,
    calendar: &holidays::Calendar,
) -> Result<(), sqlx::Error> {
    let mut tx = pool.begin().await?;
    // Replicas starting together write it one after the other.
    sqlx::query("LOCK TABLE lists.holiday_periods, lists.calendar_years IN EXCLUSIVE MODE")
        .execute(&mut *tx)
        .await?;
    sqlx::query("DELETE FROM lists.holiday_periods")
        .execute(&mut *tx)
        .await?;
    sqlx::query("DELETE FROM lists.calendar_years")
        .execute(&mut *tx)
        .await?;
    for period in calendar.periods() {
        sqlx::query(
            "INSERT INTO lists.holiday_periods (name, first_day, last_day, worked_before) VALUES ($1, $2, $3, $4)",
        )
        .bind(&period.name)
        .bind(period.first_day)
        .bind(period.last_day)
        .bind(period.worked_before)
        .execute(&mut *tx)
        .await?;
    }
    for (year, provisional) in calendar.years() {
        if provisional {
            tracing::warn!(
                year,
                "the holiday calendar for this year is provisional; replace it with the State Council notice"
            );
        }
        sqlx::query("INSERT INTO lists.calendar_years (year, provisional) VALUES ($1, $2)")
            .bind(year)
            .bind(provisional)
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await
}

/// Everything the service's parts share, built once at start.
pub struct Lists {
    pub importer: import::Importer,
    pub daily_run: daily_run::DailyRun,
}

impl Lists {
    pub async fn new(deps: &Deps, config: &ListsConfig) -> Result<Self, String> {
        let calendar =
            holidays::Calendar::embedded().map_err(|e| format!("holiday calendar: {e}"))?;
        store_calendar(&deps.pool, &calendar)
            .await
            .map_err(|e| format!("storing the holiday calendar: {e}"))?;
        let zones = portfolio::Zones::load(&deps.pool, deps.time_zone)
            .await
            .map_err(|e| format!("loading city time zones: {e}"))?;
        let outbox = outbox().sealing_letters(config.pii.clone(), portfolio::LETTERS);
        Ok(Lists {
            importer: import::Importer {
                pool: deps.pool.clone(),
                pii: config.pii.clone(),
                zones: zones.clone(),
                outbox: outbox.clone(),
                vehicle_window: config.vehicle_window,
            },
            daily_run: daily_run::DailyRun {
                pool: deps.pool.clone(),
                outbox,
                clock: deps.clock.clone(),
                zones,
                pii: config.pii.clone(),
                list_issue_day: config.list_issue_day,
                renewal_confirm_within: config.renewal_confirm_within,
                vehicle_window: config.vehicle_window,
            },
        })
    }
}

/// Runs the service with configuration from the environment.
pub async fn run(deps: Deps, cancel: CancellationToken) -> Result<(), String> {
    let config = ListsConfig::from_env().map_err(|e| e.to_string())?;
    run_with(deps, config, cancel).await
}

/// Runs the service until `cancel` fires, then finishes the work in hand.
pub async fn run_with(
    deps: Deps,
    config: ListsConfig,
    cancel: CancellationToken,
) -> Result<(), String> {
    deps.http.set_ready(API_READY, Err("starting".into()));
    for stream in [Stream::Lists, Stream::Dispatch] {
        deps.bus
            .ensure_stream(stream)
            .await
            .map_err(|e| e.to_string())?;
    }
    let lists = Lists::new(&deps, &config).await?;
    let outbox = lists.daily_run.outbox.clone();
    let zones = lists.daily_run.zones.clone();
    let audit = renewal_platform::audit::AuditLog::start(&deps.pool, SCHEMA, &cancel);
    mount_routes(&deps, &config, &lists, &audit);
    deps.http.mount(audit.around(audit.routes()));
    if let Err(e) = lists.daily_run.open_after_imports().await {
        tracing::warn!(error = %e, "opening the cases of unfinished imports failed; the daily run will");
    }
    let mut service = Service::new(SCHEMA, &deps, &outbox, &cancel);
    service.consume(
        CORE_POLICIES,
        intake::Intake {
            outbox: outbox.clone(),
            clock: deps.clock.clone(),
            pii: config.pii.clone(),
            zones,
            vehicle_window: config.vehicle_window,
        },
    );
    service.consume(
        CORE_QUOTES,
        quotes::QuoteIntake {
            outbox: outbox.clone(),
            clock: deps.clock.clone(),
        },
    );
    service.consume(
        DISCOUNTS,
        quotes::Discounts {
            outbox: outbox.clone(),
            clock: deps.clock.clone(),
        },
    );
    service.consume(
        CALL_OUTCOMES,
        call_outcomes::CallOutcomes {
            outbox: outbox.clone(),
        },
    );
    for spec in ERASURE_ANSWERS {
        service.consume(spec, erasures::Answers);
    }
    service.spawn(lists.daily_run.run(cancel.clone()));
    service.spawn(
        erasures::RetentionJob {
            pool: deps.pool.clone(),
            outbox: outbox.clone(),
            clock: deps.clock.clone(),
            pii: config.pii.clone(),
            keep: config.pii_retention,
        }
        .run(cancel.clone()),
    );
    deps.http.set_ready(API_READY, Ok(()));
    deps.http.mount(audit.around(service.dead_letter_routes()));
    // Last: the process is ready once every service it serves has its document.
    deps.http.document(SCHEMA, openapi::document());
    service.run().await
}

/// Mounts the service's API, every route behind the audit log.
fn mount_routes(
    deps: &Deps,
    config: &ListsConfig,
    lists: &Lists,
    audit: &renewal_platform::audit::AuditLog,
) {
    let outbox = &lists.daily_run.outbox;
    let zones = &lists.daily_run.zones;
    deps.http
        .mount(audit.around(policies::routes(policies::PolicyApi::new(
            deps.pool.clone(),
            config.pii.clone(),
        ))));
    deps.http
        .mount(audit.around(import::routes(import::ImportApi {
            importer: lists.importer.clone(),
            clock: deps.clock.clone(),
            max_bytes: config.import_max_bytes,
            running: renewal_platform::quotas::Gate::new("imports", 2),
        })));
    deps.http
        .mount(audit.around(issued_lists::routes(issued_lists::IssueApi {
            pool: deps.pool.clone(),
            outbox: outbox.clone(),
            clock: deps.clock.clone(),
            zones: zones.clone(),
        })));
    deps.http.mount(audit.around(kpis::routes(
        deps.pool.clone(),
        deps.clock.clone(),
        deps.time_zone,
    )));
    deps.http
        .mount(audit.around(reviews::routes(deps.pool.clone())));
    deps.http.mount(
        audit.around(quote_import::routes(quote_import::QuoteImportApi {
            pool: deps.pool.clone(),
            outbox: outbox.clone(),
            clock: deps.clock.clone(),
            max_bytes: config.import_max_bytes,
        })),
    );
    deps.http
        .mount(audit.around(erasures::routes(erasures::ErasureApi {
            pool: deps.pool.clone(),
            outbox: outbox.clone(),
            clock: deps.clock.clone(),
            pii: config.pii.clone(),
        })));
}

/// When this service next has work of its own (the simulated clock's next stop).
pub async fn next_wakeup(
    pool: &PgPool,
    now: chrono::DateTime<chrono::Utc>,
    default_zone: chrono_tz::Tz,
) -> Result<chrono::DateTime<chrono::Utc>, sqlx::Error> {
    let zones = portfolio::Zones::load(pool, default_zone).await?;
    daily_run::next_wakeup(pool, now, &zones.all()).await
}
