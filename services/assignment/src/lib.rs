//! The assignment service: every renewal case gets an owner in time, and the credit
//! stays with the agent who sold the policy. Lists issue renewal lists; each item
//! becomes a claim for its branch (`claims`), unclaimed cases open to the city's pool
//! and are then assigned automatically (`deadlines`, `auto_assign`), untraceable ones
//! are researched first, and the scheduler's T-5 command starts the second assignment.

mod access;
pub mod auto_assign;
mod case_changes;
mod case_history;
mod cases;
pub mod claims;
pub mod deadlines;
pub mod discounts;
mod erasure;
mod escalations;
pub mod openapi;
pub mod org;
mod ownership;
pub mod progress;
mod refusals;
pub mod report;
mod routing;
mod season;
mod second_assignment;
mod supervision;

use std::sync::Arc;

use renewal_contract::Stream;
use renewal_platform::{ConsumerSpec, Deps, Outbox, Service};
use tokio_util::sync::CancellationToken;

pub use case_history::{CaseView, Credit};
pub use ownership::{HQ_OWNER, city_company_owner};

pub const SCHEMA: &str = "assignment";

/// Renewal cases opened and closed by lists.
pub const LISTS_CASES: ConsumerSpec = ConsumerSpec {
    stream: Stream::Lists,
    durable: "assignment",
    filter: "lists.case.>",
    parallel: 1,
    batch: 1,
};

/// Lists issued by lists (renewal lists become claims).
pub const LISTS_ISSUED: ConsumerSpec = ConsumerSpec {
    stream: Stream::Lists,
    durable: "assignment-lists",
    filter: "lists.list.issued",
    parallel: 4,
    batch: 1,
};

/// Commands for assignment (the scheduler's T-5 second assignment). Its filter takes
/// lists' erasures too (it predates them, and an existing durable keeps its filter);
/// it handles them as [`ERASURES`] does, and the inbox, shared by both consumers,
/// lets whichever comes first erase and answer.
pub const COMMANDS: ConsumerSpec = ConsumerSpec {
    stream: Stream::Assignment,
    durable: "assignment-commands",
    filter: "assignment.cmd.>",
    parallel: 1,
    batch: 1,
};

/// Erasures of personal data asked by lists (`assignment.cmd.erase_personal_data`).
pub const ERASURES: ConsumerSpec = ConsumerSpec {
    stream: Stream::Assignment,
    durable: "assignment-erasures",
    filter: renewal_contract::subject::ASSIGNMENT_CMD_ERASE_PERSONAL_DATA,
    parallel: 1,
    batch: 1,
};

/// Call outcomes from dispatch: an owner's "cannot renew in time" or "high risk of
/// loss" escalates the case at once.
pub const CALL_OUTCOMES: ConsumerSpec = ConsumerSpec {
    stream: Stream::Dispatch,
    durable: "assignment-outcomes",
    filter: renewal_contract::subject::DISPATCH_TASK_COMPLETED,
    parallel: 1,
    batch: 256,
};

/// T-10 alerts from the scheduler: the branch supervisors' queue.
pub const SUPERVISOR_ALERTS: ConsumerSpec = ConsumerSpec {
    stream: Stream::Scheduler,
    durable: "assignment-alerts",
    filter: renewal_contract::subject::SCHEDULER_CASE_SUPERVISOR_ALERT,
    parallel: 1,
    batch: 1,
};

pub const CONSUMERS: &[ConsumerSpec] = &[
    LISTS_CASES,
    LISTS_ISSUED,
    COMMANDS,
    ERASURES,
    CALL_OUTCOMES,
    SUPERVISOR_ALERTS,
];

pub fn outbox() -> Outbox {
    Outbox::new(SCHEMA)
}

pub async fn migrate(pool: sqlx::PgPool) -> Result<(), renewal_platform::postgres::DbError> {
    renewal_platform::postgres::migrate(&pool, SCHEMA, sqlx::migrate!("./migrations")).await
}

/// When this service next has work of its own (a claim, pool or step deadline).
pub async fn next_wakeup(
    pool: &sqlx::PgPool,
) -> Result<Option<chrono::DateTime<chrono::Utc>>, sqlx::Error> {
    deadlines::next_wakeup(pool).await
}

/// Runs the service until `cancel` fires, then finishes the work in hand.
pub async fn run(deps: Deps, cancel: CancellationToken) -> Result<(), String> {
    for stream in [Stream::Assignment, Stream::Dispatch, Stream::Scheduler] {
        deps.bus
            .ensure_stream(stream)
            .await
            .map_err(|e| e.to_string())?;
    }
    let outbox = outbox();
    let wake = Arc::new(tokio::sync::Notify::new());
    let audit = renewal_platform::audit::AuditLog::start(&deps.pool, SCHEMA, &cancel);
    mount_api(&deps, &outbox, &wake, &audit);
    let mut service = Service::new(SCHEMA, &deps, &outbox, &cancel);
    consume(&mut service, &deps, &outbox, &wake);
    service.spawn(
        deadlines::Sweeper {
            pool: deps.pool.clone(),
            outbox: outbox.clone(),
            clock: deps.clock.clone(),
            wake,
        }
        .run(cancel.clone()),
    );
    service.spawn(
        progress::Issuer {
            pool: deps.pool.clone(),
            outbox: outbox.clone(),
            clock: deps.clock.clone(),
            time_zone: deps.time_zone,
        }
        .run(cancel.clone()),
    );
    deps.http.mount(audit.around(service.dead_letter_routes()));
    // Last: the process is ready once every service it serves has its document.
    deps.http.document(SCHEMA, openapi::document());
    service.run().await
}

/// Assignment's routes: claims, discounts, reports, case history, the organisation and
/// the audit log, each call audited.
fn mount_api(
    deps: &Deps,
    outbox: &Outbox,
    wake: &Arc<tokio::sync::Notify>,
    audit: &renewal_platform::audit::AuditLog,
) {
    let api = claims::ClaimApi {
        pool: deps.pool.clone(),
        outbox: outbox.clone(),
        clock: deps.clock.clone(),
        wake: wake.clone(),
    };
    deps.http.mount(audit.around(claims::routes(api.clone())));
    deps.http
        .mount(audit.around(discounts::routes(api.clone())));
    deps.http
        .mount(audit.around(progress::routes(progress::ProgressApi {
            pool: deps.pool.clone(),
            clock: deps.clock.clone(),
            time_zone: deps.time_zone,
        })));
    deps.http.mount(audit.around(case_history::routes(api)));
    deps.http.mount(audit.around(org::routes(org::OrgApi {
        pool: deps.pool.clone(),
        outbox: outbox.clone(),
        clock: deps.clock.clone(),
    })));
    deps.http.mount(audit.around(audit.routes()));
}

/// Assignment's consumers: cases, issued lists, second-assignment commands, call
/// outcomes, supervisor alerts, erasures.
fn consume(service: &mut Service, deps: &Deps, outbox: &Outbox, wake: &Arc<tokio::sync::Notify>) {
    service.consume(
        LISTS_CASES,
        cases::CaseEvents {
            wake: wake.clone(),
            outbox: outbox.clone(),
            clock: deps.clock.clone(),
        },
    );
    service.consume(LISTS_ISSUED, claims::ListEvents { wake: wake.clone() });
    service.consume(
        COMMANDS,
        second_assignment::Commands {
            outbox: outbox.clone(),
            clock: deps.clock.clone(),
            wake: wake.clone(),
        },
    );
    service.consume(
        CALL_OUTCOMES,
        escalations::CallOutcomes {
            outbox: outbox.clone(),
            wake: wake.clone(),
        },
    );
    service.consume(SUPERVISOR_ALERTS, supervision::Alerts);
    service.consume(
        ERASURES,
        erasure::Erasures {
            outbox: outbox.clone(),
            clock: deps.clock.clone(),
        },
    );
}
