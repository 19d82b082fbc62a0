//! The dispatch service: turns commands into contacts and brings back what happened.
//! The walking skeleton has the SMS gateway: commands queue messages, a sender hands
//! them to the vendor over HTTP, and the vendor's delivery receipts come back through
//! the webhook. The phone-task gateway comes with dispatch's own issue.

mod commands;
pub mod config;
pub mod report;
pub mod sms;

use std::sync::Arc;

use renewal_contract::Stream;
use renewal_platform::{ConsumerSpec, Deps, Outbox, Service};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

pub use config::DispatchConfig;
pub use sms::sending::next_wakeup;

pub const SCHEMA: &str = "dispatch";

/// Commands for dispatch (produced by the scheduler).
pub const COMMANDS: ConsumerSpec = ConsumerSpec {
    stream: Stream::Dispatch,
    durable: "dispatch",
    filter: "dispatch.cmd.>",
};

/// Closed cases: never send for one.
pub const CLOSED_CASES: ConsumerSpec = ConsumerSpec {
    stream: Stream::Lists,
    durable: "dispatch",
    filter: "lists.case.closed",
};

pub const CONSUMERS: &[ConsumerSpec] = &[COMMANDS, CLOSED_CASES];

pub fn outbox() -> Outbox {
    Outbox::new(SCHEMA)
}

pub async fn migrate(pool: sqlx::PgPool) -> Result<(), renewal_platform::postgres::DbError> {
    renewal_platform::postgres::migrate(&pool, SCHEMA, sqlx::migrate!("./migrations")).await
}

/// Runs the service with its configuration from the environment.
pub async fn run(deps: Deps, cancel: CancellationToken) -> Result<(), String> {
    let config = DispatchConfig::from_env().map_err(|e| e.to_string())?;
    run_with(deps, config, cancel).await
}

/// Runs the service until `cancel` fires, then finishes the work in hand.
pub async fn run_with(
    deps: Deps,
    config: DispatchConfig,
    cancel: CancellationToken,
) -> Result<(), String> {
    deps.bus
        .ensure_stream(Stream::Dispatch)
        .await
        .map_err(|e| e.to_string())?;
    let outbox = outbox();
    let queued = Arc::new(Notify::new());
    let vendor = sms::vendor::AliyunSms::new(&config).map_err(|e| e.to_string())?;
    deps.http
        .mount(sms::receipts::routes(sms::receipts::Webhook {
            pool: deps.pool.clone(),
            outbox: outbox.clone(),
            clock: deps.clock.clone(),
            token: config.webhook_token.clone(),
        }));
    let mut service = Service::new(SCHEMA, &deps, &outbox, &cancel);
    service.consume(
        COMMANDS,
        commands::Commands {
            clock: deps.clock.clone(),
            queued: queued.clone(),
        },
    );
    service.consume(CLOSED_CASES, commands::ClosedCases);
    service.spawn(sms::sending::run(
        sms::sending::Sender {
            pool: deps.pool.clone(),
            outbox,
            clock: deps.clock.clone(),
            vendor,
            hours: config.sms_hours,
        },
        queued,
        cancel,
    ));
    service.run().await
}
