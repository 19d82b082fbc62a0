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
use renewal_platform::{ConsumerSpec, Deps, Outbox, Service};
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
    let mut service = Service::new(SCHEMA, &deps, &outbox, &cancel);
    service.consume(
        LISTS_CASES,
        cases::CaseEvents {
            clock: deps.clock.clone(),
            timers_changed: timers_changed.clone(),
        },
    );
    service.consume(OWNERS, cases::OwnerEvents);
    service.spawn(timers::run(
        deps.pool.clone(),
        outbox,
        deps.clock.clone(),
        timers_changed,
        cancel,
    ));
    service.run().await
}
