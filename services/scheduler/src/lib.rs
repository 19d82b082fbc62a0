//! The scheduler: decides *when* each contact happens and never forgets one. Timers
//! live in Postgres, are claimed in batches with `FOR UPDATE SKIP LOCKED` and fire
//! through the outbox, so a crash, a restart or a redelivery neither loses a timer nor
//! fires it twice. The walking skeleton plans the T-60 renewal SMS.

mod cases;
mod plan;
pub mod report;
mod timers;

use std::sync::Arc;

use renewal_contract::Stream;
use renewal_platform::{ConsumerSpec, Consuming, Deps, Outbox};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

pub use timers::next_wakeup;

pub const SCHEMA: &str = "scheduler";

/// Cases opened and closed by lists.
pub const LISTS_CASES: ConsumerSpec = ConsumerSpec {
    stream: Stream::Lists,
    durable: "scheduler",
    filter: "lists.case.>",
};

/// Owners named by assignment.
pub const OWNERS: ConsumerSpec = ConsumerSpec {
    stream: Stream::Assignment,
    durable: "scheduler",
    filter: "assignment.owner.>",
};

pub const CONSUMERS: &[ConsumerSpec] = &[LISTS_CASES, OWNERS];

pub fn outbox() -> Outbox {
    Outbox::new(SCHEMA)
}

pub async fn migrate(pool: sqlx::PgPool) -> Result<(), renewal_platform::postgres::DbError> {
    renewal_platform::postgres::migrate(&pool, SCHEMA, sqlx::migrate!("./migrations")).await
}

/// Runs the service until `cancel` fires, then finishes the work in hand.
pub async fn run(deps: Deps, cancel: CancellationToken) -> Result<(), String> {
    for stream in [Stream::Scheduler, Stream::Dispatch] {
        deps.bus
            .ensure_stream(stream)
            .await
            .map_err(|e| e.to_string())?;
    }
    let outbox = outbox();
    let timers_changed = Arc::new(Notify::new());
    let consuming = Consuming {
        pool: deps.pool.clone(),
        bus: deps.bus.clone(),
        schema: SCHEMA,
        outbox: outbox.clone(),
    };
    let case_events = cases::CaseEvents {
        clock: deps.clock.clone(),
        timers_changed: timers_changed.clone(),
    };
    let mut tasks = tokio::task::JoinSet::new();
    tasks.spawn(renewal_platform::inbox::consume(
        consuming.clone(),
        LISTS_CASES,
        case_events,
        cancel.clone(),
    ));
    tasks.spawn(renewal_platform::inbox::consume(
        consuming,
        OWNERS,
        cases::OwnerEvents,
        cancel.clone(),
    ));
    tasks.spawn(timers::run(
        deps.pool.clone(),
        outbox.clone(),
        deps.clock.clone(),
        timers_changed,
        cancel.clone(),
    ));
    tasks.spawn(outbox.relay(deps.pool.clone(), deps.bus.clone(), cancel.clone()));
    while let Some(done) = tasks.join_next().await {
        if let Err(e) = done {
            cancel.cancel();
            return Err(format!("scheduler task failed: {e}"));
        }
    }
    Ok(())
}
