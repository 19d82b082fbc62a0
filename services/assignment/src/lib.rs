//! The assignment service: every renewal case gets an owner in time, and the credit
//! stays with the agent who sold the policy. The walking skeleton names the
//! originating agent as owner; branch claims, the city-wide pool, auto-assignment and
//! second assignment build on this.

mod cases;
mod ownership;
pub mod report;

use renewal_contract::Stream;
use renewal_platform::{ConsumerSpec, Deps, Outbox, Service};
use tokio_util::sync::CancellationToken;

pub const SCHEMA: &str = "assignment";

/// Renewal cases opened and closed by lists.
pub const LISTS_CASES: ConsumerSpec = ConsumerSpec {
    stream: Stream::Lists,
    durable: "assignment",
    filter: "lists.case.>",
};

pub const CONSUMERS: &[ConsumerSpec] = &[LISTS_CASES];

pub fn outbox() -> Outbox {
    Outbox::new(SCHEMA)
}

pub async fn migrate(pool: sqlx::PgPool) -> Result<(), renewal_platform::postgres::DbError> {
    renewal_platform::postgres::migrate(&pool, SCHEMA, sqlx::migrate!("./migrations")).await
}

/// Runs the service until `cancel` fires, then finishes the work in hand.
pub async fn run(deps: Deps, cancel: CancellationToken) -> Result<(), String> {
    deps.bus
        .ensure_stream(Stream::Assignment)
        .await
        .map_err(|e| e.to_string())?;
    let outbox = outbox();
    deps.http.mount(ownership::routes(deps.pool.clone()));
    let mut service = Service::new(SCHEMA, &deps, &outbox, &cancel);
    service.consume(
        LISTS_CASES,
        cases::CaseEvents {
            outbox: outbox.clone(),
            clock: deps.clock.clone(),
        },
    );
    service.run().await
}
