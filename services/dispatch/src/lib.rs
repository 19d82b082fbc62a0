//! The dispatch service: turns commands into contacts and brings back what happened.
//! The SMS gateway: commands queue messages, a sender hands them to the vendor over
//! HTTP, and the vendor's delivery receipts and replies come back through the webhook.
//! The phone-task gateway: commands become tasks that agents pull with a lease and
//! complete with an outcome.

mod commands;
pub mod config;
mod contacts;
mod erasure;
mod escalations;
pub mod history;
pub mod openapi;
pub mod phone;
pub mod report;
pub mod sealed;
pub mod sms;
pub mod terms;

use std::sync::Arc;

use renewal_contract::Stream;
use renewal_platform::{ConsumerSpec, Deps, Outbox, Service};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

pub use config::DispatchConfig;
pub use sealed::SEALED;
pub use sms::sending::next_wakeup;

pub const SCHEMA: &str = "dispatch";

/// Commands for dispatch (produced by the scheduler). Its filter takes lists' erasures
/// too (it predates them, and an existing durable keeps its filter); it handles them as
/// [`ERASURES`] does, and the inbox, shared by both consumers, lets whichever comes
/// first erase and answer.
pub const COMMANDS: ConsumerSpec = ConsumerSpec {
    stream: Stream::Dispatch,
    durable: "dispatch",
    filter: "dispatch.cmd.>",
    parallel: 1,
    batch: 1,
};

/// Closed cases: never send for one. Each close stands alone (a case closes once, and
/// noting it twice changes nothing), so many are applied at once: a burst of renewals
/// must not queue behind one another while their SMS wait to go out.
pub const CLOSED_CASES: ConsumerSpec = ConsumerSpec {
    stream: Stream::Lists,
    durable: "dispatch",
    filter: "lists.case.closed",
    parallel: 16,
    batch: 1,
};

/// Cases opened: their contacts, which the commands for them go with (`contacts`).
/// Each opening stands alone, so many are applied at once.
pub const CASE_CONTACTS: ConsumerSpec = ConsumerSpec {
    stream: Stream::Lists,
    durable: "dispatch-contacts",
    filter: "lists.case.opened",
    parallel: 16,
    batch: 1,
};

/// Changed cases: a new mobile replaces the case's contact (`contacts::CaseChanges`).
pub const CASE_CHANGES: ConsumerSpec = ConsumerSpec {
    stream: Stream::Lists,
    durable: "dispatch-changes",
    filter: "lists.case.changed",
    parallel: 1,
    batch: 1,
};

/// Owner changes: a case's owner tasks follow the case.
pub const OWNER_CHANGES: ConsumerSpec = ConsumerSpec {
    stream: Stream::Assignment,
    durable: "dispatch",
    filter: "assignment.owner.assigned",
    parallel: 1,
    batch: 1,
};

/// Erasures of personal data asked by lists (`dispatch.cmd.erase_personal_data`).
pub const ERASURES: ConsumerSpec = ConsumerSpec {
    stream: Stream::Dispatch,
    durable: "dispatch-erasures",
    filter: renewal_contract::subject::DISPATCH_CMD_ERASE_PERSONAL_DATA,
    parallel: 1,
    batch: 1,
};

/// Assignment's steps that make work: HQ's outbound calling and the city company's
/// support each get a phone task (`escalations`).
pub const ESCALATIONS: ConsumerSpec = ConsumerSpec {
    stream: Stream::Assignment,
    durable: "dispatch-escalations",
    filter: "assignment.case.routed",
    parallel: 1,
    batch: 1,
};

/// Each case's renewal terms, and the cases that reached T-65 with no quote.
pub const QUOTES: ConsumerSpec = ConsumerSpec {
    stream: Stream::Lists,
    durable: "dispatch-quotes",
    filter: "lists.quote.>",
    parallel: 1,
    batch: 1,
};

pub const CONSUMERS: &[ConsumerSpec] = &[
    COMMANDS,
    CLOSED_CASES,
    CASE_CONTACTS,
    CASE_CHANGES,
    OWNER_CHANGES,
    ERASURES,
    ESCALATIONS,
    QUOTES,
];

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
    for stream in [Stream::Dispatch, Stream::Assignment] {
        deps.bus
            .ensure_stream(stream)
            .await
            .map_err(|e| e.to_string())?;
    }
    let outbox = outbox().sealing_letters(config.pii.clone(), sealed::LETTERS);
    let queued = Arc::new(Notify::new());
    let vendor = sms::vendor::AliyunSms::new(&config).map_err(|e| e.to_string())?;
    // The vendor's pushes and the sender work on connections of their own.
    let reserved = renewal_platform::postgres::pool_beside(&deps.pool, config.reserved_connections);
    deps.http
        .mount(sms::receipts::routes(sms::receipts::Webhook {
            pool: reserved.clone(),
            pii: config.pii.clone(),
            outbox: outbox.clone(),
            clock: deps.clock.clone(),
            tokens: std::iter::once(config.webhook_token.clone())
                .chain(config.webhook_previous_token.clone())
                .collect(),
            allow: config.webhook_allow.clone(),
            trusted_proxies: config.trusted_proxies.clone(),
        }));
    let audit = renewal_platform::audit::AuditLog::start(&deps.pool, SCHEMA, &cancel);
    deps.http
        .mount(audit.around(phone::routes(phone::PhoneTasks::new(
            deps.pool.clone(),
            outbox.clone(),
            deps.clock.clone(),
            config.call_hours,
            config.pii.clone(),
        ))));
    deps.http
        .mount(audit.around(history::routes(deps.pool.clone())));
    deps.http.mount(audit.around(sms::routes(sms::SmsDesk {
        pool: deps.pool.clone(),
        pii: config.pii.clone(),
        clock: deps.clock.clone(),
        queued: queued.clone(),
    })));
    deps.http.mount(audit.around(audit.routes()));
    let mut service = Service::new(SCHEMA, &deps, &outbox, &cancel);
    consume(&mut service, &deps, &config, &outbox, &queued);
    let stops = sms::stops::Stops::default();
    service.spawn(stops.clone().watch(reserved.clone(), cancel.clone()));
    service.spawn(sms::sending::run(
        sms::sending::Sender {
            pool: reserved,
            outbox,
            clock: deps.clock.clone(),
            vendor,
            hours: config.sms_hours,
            pii: config.pii.clone(),
            stops,
            vendor_timeout: config.vendor_timeout,
            ask_after: config.reconcile_after,
            in_flight: Default::default(),
            stopping: cancel.clone(),
        },
        queued,
        cancel,
    ));
    deps.http.mount(audit.around(service.dead_letter_routes()));
    // Last: the process is ready once every service it serves has its document.
    deps.http.document(SCHEMA, openapi::document());
    service.run().await
}

/// Dispatch's consumers: commands, closed and opened cases, erasures, owner changes,
/// escalation steps.
fn consume(
    service: &mut Service,
    deps: &Deps,
    config: &DispatchConfig,
    outbox: &Outbox,
    queued: &Arc<Notify>,
) {
    service.consume(
        COMMANDS,
        commands::Commands {
            clock: deps.clock.clone(),
            outbox: outbox.clone(),
            queued: queued.clone(),
            pii: config.pii.clone(),
        },
    );
    service.consume(CLOSED_CASES, commands::ClosedCases);
    service.consume(
        CASE_CONTACTS,
        contacts::CaseOpenings {
            pii: config.pii.clone(),
        },
    );
    service.consume(
        CASE_CHANGES,
        contacts::CaseChanges {
            pii: config.pii.clone(),
        },
    );
    service.consume(
        ERASURES,
        erasure::Erasures {
            clock: deps.clock.clone(),
            outbox: outbox.clone(),
            pii: config.pii.clone(),
        },
    );
    service.consume(OWNER_CHANGES, commands::OwnerChanges);
    service.consume(
        QUOTES,
        terms::Quotes {
            clock: deps.clock.clone(),
            pii: config.pii.clone(),
        },
    );
    service.consume(
        ESCALATIONS,
        escalations::Steps {
            clock: deps.clock.clone(),
            pii: config.pii.clone(),
        },
    );
}
