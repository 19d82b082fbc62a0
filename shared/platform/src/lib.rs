//! Plumbing every renewal service shares and no service owns: configuration,
//! telemetry, the Postgres pool and migrations, JetStream wiring, the transactional
//! outbox and its relay, the inbox, the HTTP scaffold, the clock and shutdown.

pub mod activity;
pub mod audit;
pub mod bus;
pub mod clock;
pub mod completed_calls;
pub mod config;
pub mod dead_letters;
pub mod dev_issuer;
pub mod erasure;
pub mod holidays;
pub mod http;
pub mod identity;
pub mod inbox;
pub mod names;
pub mod openapi;
pub mod outbox;
pub mod paging;
pub mod pii;
pub mod postgres;
pub mod problem;
pub mod process;
pub mod quotas;
pub mod resealing;
pub mod retention;
pub mod retry;
pub mod service;
pub mod shutdown;
pub mod telemetry;
pub mod wakeups;

pub use bus::{Bus, ConsumerSpec};
pub use clock::Clock;
pub use http::HttpHost;
pub use identity::{Caller, Role, Scope};
pub use inbox::{Consuming, Delivery, HandleError, Handler};
pub use outbox::Outbox;
pub use problem::Problem;
pub use service::Service;

use sqlx::PgPool;

/// Every renewal process (the services' binaries, the all-in-one binary and the tests)
/// allocates with mimalloc rather than glibc's malloc: under load glibc spent about a
/// quarter of a busy process's CPU in its own locking and free-list consolidation, and
/// mimalloc gave the dispatch benchmark 16-19% more tasks and sends per second.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// What a service's `run` is given: connections, the clock and the HTTP host it
/// mounts its routes on. The all-in-one binary and the tests build one and hand it to
/// all four services; a service's own binary builds it for that service alone.
#[derive(Clone)]
pub struct Deps {
    pub pool: PgPool,
    pub bus: Bus,
    pub clock: Clock,
    pub http: HttpHost,
    /// Business time zone for cities without their own.
    pub time_zone: chrono_tz::Tz,
    /// Deliveries a message gets (attempts an event gets) before it is a dead letter.
    pub max_deliveries: i64,
    /// How long the inbox keys and the published outbox rows are kept.
    pub retention: crate::retention::Retention,
}

/// Installs rustls's ring provider once per process (reqwest and async-nats both use
/// rustls; without one chosen explicitly, two providers make rustls panic at start).
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// The local calendar date of an instant in a time zone.
pub fn local_date(at: chrono::DateTime<chrono::Utc>, tz: chrono_tz::Tz) -> chrono::NaiveDate {
    at.with_timezone(&tz).date_naive()
}

/// The instant a local wall-clock time happens on a date (the earlier one if the local
/// time is ambiguous, the first valid one after it if it is skipped).
pub fn local_instant(
    date: chrono::NaiveDate,
    time: chrono::NaiveTime,
    tz: chrono_tz::Tz,
) -> chrono::DateTime<chrono::Utc> {
    use chrono::TimeZone;
    let naive = date.and_time(time);
    match tz.from_local_datetime(&naive) {
        chrono::LocalResult::Single(t) => t.with_timezone(&chrono::Utc),
        chrono::LocalResult::Ambiguous(a, _) => a.with_timezone(&chrono::Utc),
        chrono::LocalResult::None => {
            let later = naive + chrono::Duration::hours(1);
            tz.from_local_datetime(&later)
                .earliest()
                .map(|t| t.with_timezone(&chrono::Utc))
                .unwrap_or_else(|| chrono::Utc.from_utc_datetime(&naive))
        }
    }
}
