//! The scheduler: decides *when* each contact happens and never forgets one. Timers
//! live in Postgres, are claimed in batches with `FOR UPDATE SKIP LOCKED` and are their
//! own outbox (published with the timer id as `Nats-Msg-Id` before the claim commits),
//! so a crash, a restart or a redelivery neither loses a timer nor
//! fires it twice. The walking skeleton plans the T-60 renewal SMS.

mod cases;
pub mod config;
pub mod contact;
mod erasure;
pub mod openapi;
mod outcomes;
pub mod plan;
mod plan_versions;
mod replanning;
pub mod report;
mod timeline;
pub mod timers;

use std::sync::Arc;

use renewal_contract::Stream;
use renewal_platform::{ConsumerSpec, Deps, Outbox, Service};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

pub use contact::SEALED;
pub use timers::next_wakeup;

pub const SCHEMA: &str = "scheduler";

/// Cases opened and closed by lists.
pub const LISTS_CASES: ConsumerSpec = ConsumerSpec {
    stream: Stream::Lists,
    durable: "scheduler",
    filter: "lists.case.>",
    parallel: 1,
    batch: 1,
};

/// Owners named by assignment.
pub const OWNERS: ConsumerSpec = ConsumerSpec {
    stream: Stream::Assignment,
    durable: "scheduler",
    filter: "assignment.owner.>",
    parallel: 1,
    batch: 1,
};

/// Call outcomes from dispatch (they reschedule contacts).
pub const OUTCOMES: ConsumerSpec = ConsumerSpec {
    stream: Stream::Dispatch,
    durable: "scheduler-outcomes",
    filter: "dispatch.task.>",
    parallel: 1,
    batch: 256,
};

/// Erasures of personal data asked by lists (`scheduler.cmd.erase_personal_data`).
pub const ERASURES: ConsumerSpec = ConsumerSpec {
    stream: Stream::Scheduler,
    durable: "scheduler-erasures",
    filter: renewal_contract::subject::SCHEDULER_CMD_ERASE_PERSONAL_DATA,
    parallel: 1,
    batch: 1,
};

pub const CONSUMERS: &[ConsumerSpec] = &[LISTS_CASES, OWNERS, OUTCOMES, ERASURES];

pub fn outbox() -> Outbox {
    Outbox::new(SCHEMA)
}

pub async fn migrate(pool: sqlx::PgPool) -> Result<(), renewal_platform::postgres::DbError> {
    renewal_platform::postgres::migrate(&pool, SCHEMA, sqlx::migrate!("./migrations")).await
}

/// Runs the service with the settings from the environment.
pub async fn run(deps: Deps, cancel: CancellationToken) -> Result<(), String> {
    let config = config::SchedulerConfig::from_env().map_err(|e| e.to_string())?;
    run_with(deps, config, cancel).await
}

/// Runs the service until `cancel` fires, then finishes the work in hand.
pub async fn run_with(
    deps: Deps,
    config: config::SchedulerConfig,
    cancel: CancellationToken,
) -> Result<(), String> {
    plan_versions::seed_default(&deps.pool).await?;
    let audit = renewal_platform::audit::AuditLog::start(&deps.pool, SCHEMA, &cancel);
    deps.http
        .mount(audit.around(plan_versions::routes(deps.pool.clone())));
    deps.http
        .mount(audit.around(timeline::routes(deps.pool.clone())));
    deps.http.mount(audit.around(audit.routes()));
    for stream in [Stream::Scheduler, Stream::Dispatch] {
        deps.bus
            .ensure_stream(stream)
            .await
            .map_err(|e| e.to_string())?;
    }
    let outbox = outbox().sealing_letters(config.pii.clone(), contact::LETTERS);
    let timers_changed = Arc::new(Notify::new());
    let mut service = Service::new(SCHEMA, &deps, &outbox, &cancel);
    service.consume(
        LISTS_CASES,
        cases::CaseEvents {
            clock: deps.clock.clone(),
            hours: config.hours,
            timers_changed: timers_changed.clone(),
            pii: config.pii.clone(),
        },
    );
    service.consume(
        OUTCOMES,
        outcomes::OutcomeEvents {
            hours: config.hours,
            timers_changed: timers_changed.clone(),
        },
    );
    service.consume(OWNERS, cases::OwnerEvents);
    service.consume(
        ERASURES,
        erasure::Erasures {
            clock: deps.clock.clone(),
            outbox: outbox.clone(),
            timers_changed: timers_changed.clone(),
        },
    );
    service.spawn(timers::run(
        deps.pool.clone(),
        deps.bus.clone(),
        deps.clock.clone(),
        config.hours,
        timers_changed,
        config.pii,
        cancel,
    ));
    deps.http.mount(audit.around(service.dead_letter_routes()));
    // Last: the process is ready once every service it serves has its document.
    deps.http.document(SCHEMA, openapi::document());
    service.run().await
}
