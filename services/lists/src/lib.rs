//! The lists service: the portfolio as the rest of the system sees it, and *which*
//! policies need work *when*. It takes policies from the core policy system, opens a
//! renewal case when a policy enters the 90-day window, lapses cases not renewed by
//! the end of their expiry day, and closes a case the moment its policy is renewed.

mod cases;
mod daily_run;
mod intake;
mod policies;
pub mod report;

use renewal_contract::Stream;
use renewal_platform::{ConsumerSpec, Deps, Outbox, Service};
use tokio_util::sync::CancellationToken;

pub use cases::WINDOW_DAYS;
pub use daily_run::next_wakeup;

/// The schema this service owns; it touches no other.
pub const SCHEMA: &str = "lists";

/// Policy facts from the core policy system.
pub const CORE_POLICIES: ConsumerSpec = ConsumerSpec {
    stream: Stream::Core,
    durable: "lists",
    filter: "core.policy.>",
};

/// Every durable consumer this service reads from.
pub const CONSUMERS: &[ConsumerSpec] = &[CORE_POLICIES];

pub fn outbox() -> Outbox {
    Outbox::new(SCHEMA)
}

pub async fn migrate(pool: sqlx::PgPool) -> Result<(), renewal_platform::postgres::DbError> {
    renewal_platform::postgres::migrate(&pool, SCHEMA, sqlx::migrate!("./migrations")).await
}

/// Runs the service until `cancel` fires, then finishes the work in hand.
pub async fn run(deps: Deps, cancel: CancellationToken) -> Result<(), String> {
    deps.bus
        .ensure_stream(Stream::Lists)
        .await
        .map_err(|e| e.to_string())?;
    let outbox = outbox();
    deps.http.mount(policies::routes(deps.pool.clone()));
    let mut service = Service::new(SCHEMA, &deps, &outbox, &cancel);
    service.consume(
        CORE_POLICIES,
        intake::Intake {
            outbox: outbox.clone(),
            clock: deps.clock.clone(),
            time_zone: deps.time_zone,
        },
    );
    service.spawn(daily_run::run(
        deps.pool.clone(),
        outbox,
        deps.clock.clone(),
        deps.time_zone,
        cancel,
    ));
    service.run().await
}
