//! Every service in one process on a simulated clock, against real Postgres and NATS,
//! with the mock SMS vendor on loopback: the demo's engine and the end-to-end tests'
//! harness. It moves business time from one moment of work to the next and, between
//! moves, waits until the system is quiet: no outbox row unpublished, no message
//! unacknowledged, no work due, no receipt owed, and nothing committed meanwhile.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream::consumer::PullConsumer;
use chrono::{DateTime, Utc};
use renewal_contract::core::{PolicyRenewed, PolicyUpserted};
use renewal_contract::permissions;
use renewal_contract::{Subjects, subject};
use renewal_dispatch::DispatchConfig;
use renewal_dispatch::config::Hours;
use renewal_platform::bus::{NatsAccess, NatsUser};
use renewal_platform::config::{ConfigError, Env};
use renewal_platform::dev_issuer::Grant;
use renewal_platform::identity::{Authenticator, DevIssuer};
use renewal_platform::{Bus, Clock, Deps, HttpHost};
use secrecy::{ExposeSecret, SecretString};
use sqlx::PgPool;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::vendor_sim::VendorSim;

#[derive(Debug, thiserror::Error)]
pub enum SimError {
    #[error(transparent)]
    Db(#[from] renewal_platform::postgres::DbError),
    #[error("postgres: {0}")]
    Sql(#[from] sqlx::Error),
    #[error(transparent)]
    Bus(#[from] renewal_platform::bus::BusError),
    #[error("{0}")]
    Other(String),
}

pub struct SimOptions {
    pub database_url: SecretString,
    /// The keyring every service seals personal data with (`PII_KEYS` syntax);
    /// [`DEMO_PII_KEY`] unless a test rotates keys.
    pub pii_keys: SecretString,
    pub nats_url: String,
    pub prefix: String,
    /// Drop the database and the streams first.
    pub fresh: bool,
    /// Where business time starts (ignored by `resume_at` when set).
    pub start: DateTime<Utc>,
    pub seed: u64,
    pub time_zone: chrono_tz::Tz,
    /// Deliveries a message gets before it is a dead letter (10, as in production: a
    /// list may wait minutes for its cases on a loaded machine).
    pub max_deliveries: i64,
}

/// The services' default `MAX_DELIVERIES`.
pub const MAX_DELIVERIES: i64 = 10;

/// How the simulation reaches NATS: the services' connection, and those of the parts it
/// plays that the services' user may not play. By default (`Default`) plain text, no
/// user, one connection for everything, as on a laptop's loopback server.
#[derive(Debug, Clone, Default)]
pub struct SimAccess {
    /// The in-process services' TLS and user (the all-in-one's `renewal`, or `admin`).
    pub services: NatsAccess,
    /// The core policy system's publisher (`core`); the services' connection when None.
    pub core: Option<NatsAccess>,
    /// Drops the streams of a fresh start (`admin`); the services' connection when None.
    pub admin: Option<NatsAccess>,
}

impl SimAccess {
    /// From the environment: `NATS_CA`, `NATS_USER`, `NATS_PASSWORD` for the services;
    /// `NATS_CORE_PASSWORD` (user `core`) and `NATS_ADMIN_PASSWORD` (user `admin`) for
    /// the core policy system's events and the fresh start's reset. A generated user that
    /// may not do those (`renewal`: the demo under the all-in-one's exact rights) needs
    /// both, or its publishes and deletions would be refused (and time out); `admin`
    /// needs neither.
    pub fn from_env<F: Fn(&str) -> Option<String>>(env: &Env<F>) -> Result<Self, ConfigError> {
        let services = renewal_platform::config::nats_access(env)?;
        let as_user = |name: &str, var: &str| {
            env.secret(var).map(|password| NatsAccess {
                ca: services.ca.clone(),
                user: Some(NatsUser {
                    name: name.to_owned(),
                    password,
                }),
            })
        };
        let core = as_user("core", "NATS_CORE_PASSWORD");
        let admin = as_user(permissions::ADMIN, "NATS_ADMIN_PASSWORD");
        if let Some(name) = services.user.as_ref().map(|u| u.name.as_str())
            && let Some(user) = permissions::user(name)
        {
            let missing: Vec<&str> = [
                (!user.plays_core() && core.is_none()).then_some("NATS_CORE_PASSWORD"),
                (!user.everything && admin.is_none()).then_some("NATS_ADMIN_PASSWORD"),
            ]
            .into_iter()
            .flatten()
            .collect();
            if !missing.is_empty() {
                return Err(ConfigError::Invalid {
                    var: "NATS_USER".into(),
                    reason: format!(
                        "user {name:?} may not publish the core policy system's events or drop \
                         the streams of a fresh start, which the simulation does: set {} (the \
                         passwords of users core and admin from `renewal nats-config`), or \
                         connect as admin",
                        missing.join(" and ")
                    ),
                });
            }
        }
        Ok(SimAccess {
            services,
            core,
            admin,
        })
    }
}

pub struct Simulation {
    pub deps: Deps,
    pub clock: Clock,
    pub vendor: VendorSim,
    pub http_addr: SocketAddr,
    /// Health, readiness and metrics.
    pub admin_addr: SocketAddr,
    /// The development issuer the simulation's people get their tokens from.
    pub issuer: Arc<DevIssuer>,
    /// Where the vendor pushes receipts (with the secret path token).
    pub webhook_url: String,
    pub time_zone: chrono_tz::Tz,
    /// Connections of the simulation's own (`pool()`); the services use `deps.pool`.
    outside: PgPool,
    /// The core policy system's connection (the services' own unless told otherwise).
    core: Bus,
    consumers: Vec<(&'static str, &'static str, PullConsumer)>,
    cancel: CancellationToken,
    services: JoinHandle<Result<(), String>>,
}

/// The key the demo and the tests seal their synthetic customers' personal data with.
pub const DEMO_PII_KEY: &str = "64656d6f2d6f6e6c792d6b65792d6e6f742d666f722d70726f64756374696f6e";

/// Dispatch as the simulation runs it: the mock vendor on loopback, the demo's hours.
fn dispatch_config(
    vendor_addr: SocketAddr,
    token: SecretString,
    pii_keys: &SecretString,
) -> Result<DispatchConfig, SimError> {
    let pii = renewal_platform::pii::PiiCipher::for_service(pii_keys, "dispatch")
        .map_err(|e| SimError::Other(e.to_string()))?;
    Ok(DispatchConfig {
        pii: std::sync::Arc::new(pii),
        vendor_url: format!("http://{vendor_addr}"),
        sign_name: "车险续保".into(),
        access_key_id: "demo".into(),
        access_key_secret: SecretString::from(crate::vendor_sim::ACCESS_KEY_SECRET),
        // Longer than the slowest answer the mock plays (5 s).
        vendor_timeout: Duration::from_secs(8),
        webhook_token: token,
        webhook_previous_token: None,
        webhook_allow: Vec::new(),
        trusted_proxies: Vec::new(),
        sms_hours: sms_hours(),
        call_hours: call_hours(),
        // The mock vendor on loopback has no rate limit of its own.
        vendor_qps: 50_000,
        reserved_connections: renewal_dispatch::config::RESERVED_CONNECTIONS,
        // The mock vendor's records are written before it answers.
        reconcile_after: Duration::from_secs(5),
    })
}

/// Start-up is done when the services' routes answer.
async fn wait_until_ready(
    http: &HttpHost,
    services: &JoinHandle<Result<(), String>>,
) -> Result<(), SimError> {
    let waited = std::time::Instant::now();
    while !http.readiness().0 {
        if services.is_finished() || waited.elapsed() > Duration::from_secs(60) {
            return Err(SimError::Other(format!(
                "the services did not become ready: {:?}",
                http.readiness().1
            )));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok(())
}

/// Serves the mock vendor on a loopback port, pushing to `webhook`; its address.
async fn start_vendor(
    vendor: &VendorSim,
    webhook: &str,
    cancel: &CancellationToken,
) -> Result<SocketAddr, SimError> {
    let listener = renewal_platform::http::bind(crate::vendor_sim::bind_addr())
        .await
        .map_err(|e| SimError::Other(format!("cannot listen on loopback: {e}")))?;
    let addr = listener
        .local_addr()
        .map_err(|e| SimError::Other(e.to_string()))?;
    vendor
        .clone()
        .start(listener, webhook.to_owned(), cancel.clone());
    Ok(addr)
}

/// Serves the API (or the admin routes) on a loopback port of the system's choosing.
async fn serve_on_loopback(
    http: &HttpHost,
    admin: bool,
    cancel: &CancellationToken,
) -> Result<SocketAddr, SimError> {
    let listener = renewal_platform::http::bind(SocketAddr::from(([127, 0, 0, 1], 0)))
        .await
        .map_err(|e| SimError::Other(format!("cannot listen on loopback: {e}")))?;
    let addr = listener
        .local_addr()
        .map_err(|e| SimError::Other(e.to_string()))?;
    if admin {
        tokio::spawn(http.clone().serve_admin(listener, cancel.clone()));
    } else {
        tokio::spawn(http.clone().serve(listener, cancel.clone()));
    }
    Ok(addr)
}

pub fn webhook_token() -> SecretString {
    SecretString::from(format!("{}", uuid::Uuid::new_v4().simple()))
}

/// The services' bus and the core system's (the same one unless `access` names a user
/// for it). A fresh season first drops the last one's database and streams (as
/// `access.admin` where the services' user may not).
async fn connect(
    options: &SimOptions,
    access: &SimAccess,
    subjects: Subjects,
    cancel: &CancellationToken,
) -> Result<(Bus, Bus), SimError> {
    let url = &options.nats_url;
    let bus = Bus::connect_with(
        url,
        &access.services,
        subjects.clone(),
        1,
        "renewal-sim",
        cancel,
    )
    .await?;
    let core = match &access.core {
        Some(core) => {
            Bus::connect_with(url, core, subjects.clone(), 1, "renewal-sim-core", cancel).await?
        }
        None => bus.clone(),
    };
    if options.fresh {
        renewal_platform::postgres::drop_database(&options.database_url).await?;
        match &access.admin {
            Some(admin) => {
                let admin =
                    Bus::connect_with(url, admin, subjects, 1, "renewal-sim-reset", cancel).await?;
                admin.delete_streams().await;
                let _ = admin.client.drain().await;
            }
            None => bus.delete_streams().await,
        }
    }
    Ok((bus, core))
}

/// The database (made where missing, migrated) and the streams, as the season needs them.
async fn prepare(options: &SimOptions, bus: &Bus) -> Result<PgPool, SimError> {
    renewal_platform::postgres::ensure_database(&options.database_url).await?;
    let pool = renewal_platform::postgres::pool(&options.database_url, 20)?;
    crate::system::migrate_all(pool.clone()).await?;
    renewal_platform::postgres::migrate(&pool, "demo", sqlx::migrate!("./migrations")).await?;
    bus.ensure_all_streams().await?;
    Ok(pool)
}

/// Every service's settings: the keyring for those that seal, the mock vendor for dispatch.
fn configs(
    options: &SimOptions,
    vendor_addr: SocketAddr,
    token: SecretString,
) -> Result<crate::system::Configs, SimError> {
    let dispatch = dispatch_config(vendor_addr, token, &options.pii_keys)?;
    let lists = renewal_lists::ListsConfig::with_key(options.pii_keys.expose_secret())
        .map_err(|e| SimError::Other(e.to_string()))?;
    Ok(crate::system::Configs {
        lists,
        scheduler: renewal_scheduler::config::SchedulerConfig::with_key(
            options.pii_keys.expose_secret(),
        )
        .map_err(|e| SimError::Other(e.to_string()))?,
        dispatch,
        // Mounted at start, on the simulation's own address.
        console: None,
    })
}

impl Simulation {
    /// Prepares the database and streams (fresh or as left), then starts everything,
    /// reaching NATS as `access` says (TLS and users; plain text without a user when
    /// it is the default).
    pub async fn start_with(
        options: SimOptions,
        resume_at: Option<DateTime<Utc>>,
        access: &SimAccess,
    ) -> Result<Self, SimError> {
        renewal_platform::install_crypto_provider();
        let subjects =
            Subjects::new(&options.prefix).map_err(|e| SimError::Other(e.to_string()))?;
        let cancel = CancellationToken::new();
        let (bus, core) = connect(&options, access, subjects, &cancel).await?;
        let pool = prepare(&options, &bus).await?;

        let clock = Clock::simulated(resume_at.unwrap_or(options.start));
        let http = HttpHost::new();
        let http_addr = serve_on_loopback(&http, false, &cancel).await?;
        let admin_addr = serve_on_loopback(&http, true, &cancel).await?;
        let issuer = Arc::new(
            DevIssuer::ephemeral(renewal_platform::dev_issuer::ISSUER)
                .map_err(|e| SimError::Other(e.to_string()))?,
        );
        http.set_identity(Authenticator::development(&issuer), Some(issuer.clone()));
        // The console, signing people in through the development issuer.
        renewal_console::Console::mount(
            &http,
            renewal_console::ConsoleConfig::all_in_one(&format!("http://{http_addr}")),
        )
        .map_err(|e| SimError::Other(format!("the console: {e}")))?;

        // The world outside the services (the mock vendor, the simulation's own
        // bookkeeping, the tests' checks) has connections of its own, so it is not
        // slowed or stopped by the services' use of theirs.
        let outside = renewal_platform::postgres::pool_beside(&pool, 8);
        let token = webhook_token();
        let vendor = VendorSim::new(outside.clone(), clock.clone(), options.seed);
        let webhook = format!(
            "http://{http_addr}/v1/webhooks/sms/{}/report",
            token.expose_secret()
        );
        let vendor_addr = start_vendor(&vendor, &webhook, &cancel).await?;

        let deps = Deps {
            pool,
            bus: bus.clone(),
            clock: clock.clone(),
            http,
            time_zone: options.time_zone,
            max_deliveries: options.max_deliveries,
            retention: renewal_platform::retention::Retention::default(),
        };
        let configs = configs(&options, vendor_addr, token)?;
        let services = tokio::spawn(crate::system::run_all(
            deps.clone(),
            configs,
            cancel.clone(),
        ));
        wait_until_ready(&deps.http, &services).await?;
        let mut consumers = Vec::new();
        for (service, spec) in crate::system::consumers() {
            consumers.push((service, spec.filter, bus.pull_consumer(spec).await?));
        }
        Ok(Simulation {
            deps,
            clock,
            vendor,
            http_addr,
            admin_addr,
            issuer,
            webhook_url: webhook,
            time_zone: options.time_zone,
            outside,
            core,
            consumers,
            cancel,
            services,
        })
    }

    /// A token for `grant`, valid for a working day.
    pub fn token(&self, grant: &Grant) -> Result<String, SimError> {
        self.issuer
            .token(grant, Duration::from_secs(12 * 3600))
            .map_err(|e| SimError::Other(e.to_string()))
    }

    /// Connections to the services' database for the simulation, its people and the
    /// tests (apart from the services' own, `deps.pool`).
    pub fn pool(&self) -> &PgPool {
        &self.outside
    }

    pub fn now(&self) -> DateTime<Utc> {
        self.clock.now()
    }

    /// Publishes policies as the core policy system would (idempotent by number and version).
    pub async fn publish_policies(
        &self,
        policies: &[renewal_contract::core::Policy],
    ) -> Result<(), SimError> {
        for chunk in policies.chunks(500) {
            let mut acks = Vec::with_capacity(chunk.len());
            for p in chunk {
                let id = format!("{}:{}", p.policy_no, p.version);
                let event = PolicyUpserted {
                    policy: Some(p.clone()),
                };
                acks.push(
                    self.core
                        .send(
                            subject::CORE_POLICY_UPSERTED,
                            &id,
                            None,
                            prost::Message::encode_to_vec(&event),
                        )
                        .await?,
                );
            }
            for ack in acks {
                ack.await
                    .map_err(|e| SimError::Other(format!("publish not acknowledged: {e}")))?;
            }
        }
        Ok(())
    }

    /// Publishes quotes as the core policy system would (idempotent by quote id).
    pub async fn publish_quotes(
        &self,
        quotes: &[renewal_contract::core::QuoteIssued],
    ) -> Result<(), SimError> {
        for chunk in quotes.chunks(500) {
            let mut acks = Vec::with_capacity(chunk.len());
            for q in chunk {
                let id = format!("quote:{}", q.quote_id);
                acks.push(
                    self.core
                        .send(
                            subject::CORE_QUOTE_ISSUED,
                            &id,
                            None,
                            prost::Message::encode_to_vec(q),
                        )
                        .await?,
                );
            }
            for ack in acks {
                ack.await
                    .map_err(|e| SimError::Other(format!("publish not acknowledged: {e}")))?;
            }
        }
        Ok(())
    }

    /// Publishes a renewal as the core policy system would.
    pub async fn publish_renewal(
        &self,
        policy_no: &str,
        new_policy_no: &str,
    ) -> Result<(), SimError> {
        let event = PolicyRenewed {
            policy_no: policy_no.to_owned(),
            new_policy_no: new_policy_no.to_owned(),
            renewed_at_ms: self.now().timestamp_millis(),
        };
        let id = format!("renewed:{policy_no}");
        self.core
            .publish(
                subject::CORE_POLICY_RENEWED,
                &id,
                None,
                prost::Message::encode_to_vec(&event),
            )
            .await?;
        Ok(())
    }

    /// What is still moving, or None when quiet.
    async fn busy(&self) -> Result<Option<String>, SimError> {
        let now = self.now();
        for outbox in crate::system::outboxes() {
            let n = outbox.backlog(self.pool()).await?;
            if n > 0 {
                return Ok(Some(format!(
                    "{} outbox has {n} unpublished",
                    outbox.schema()
                )));
            }
        }
        for (service, filter, consumer) in &self.consumers {
            let info = consumer
                .get_info()
                .await
                .map_err(|e| SimError::Other(e.to_string()))?;
            if info.num_pending > 0 || info.num_ack_pending > 0 {
                return Ok(Some(format!(
                    "{service} consumer of {filter}: {} pending, {} unacknowledged",
                    info.num_pending, info.num_ack_pending
                )));
            }
        }
        let next = crate::system::next_wakeup(self.pool(), now, self.time_zone).await?;
        if next <= now {
            return Ok(Some(format!("work due at {next}")));
        }
        // Receipts held back are not waited for (a test or a benchmark holds them).
        let owed = if self.vendor.receipts_held() {
            0
        } else {
            self.vendor.owed_receipts().await?
        };
        if owed > 0 {
            return Ok(Some(format!("vendor owes {owed} receipts")));
        }
        Ok(None)
    }

    /// Waits until the system is quiet (two quiet checks in a row with nothing
    /// committed in between).
    pub async fn settle(&self) -> Result<(), SimError> {
        let started = Instant::now();
        let mut quiet = 0;
        loop {
            if self.services.is_finished() {
                return Err(SimError::Other("the services stopped".into()));
            }
            let before = renewal_platform::activity::count();
            let busy = self.busy().await?;
            let after = renewal_platform::activity::count();
            if busy.is_none() && before == after {
                quiet += 1;
                if quiet >= 2 {
                    return Ok(());
                }
            } else {
                quiet = 0;
            }
            if started.elapsed() > Duration::from_secs(120) {
                return Err(SimError::Other(format!(
                    "the system did not settle within 120 s: {}",
                    busy.unwrap_or_else(|| "still committing".into())
                )));
            }
            tokio::time::sleep(Duration::from_millis(if busy.is_some() { 2 } else { 4 })).await;
        }
    }

    /// Moves business time to `until`, stopping at every moment a service has work.
    pub async fn advance_to(&self, until: DateTime<Utc>) -> Result<(), SimError> {
        loop {
            self.settle().await?;
            let now = self.now();
            if now >= until {
                return Ok(());
            }
            let next = crate::system::next_wakeup(self.pool(), now, self.time_zone).await?;
            let to = if next > now && next < until {
                next
            } else {
                until
            };
            self.clock
                .advance_to(to)
                .map_err(|e| SimError::Other(e.to_string()))?;
        }
    }

    /// Stops every service gracefully (work in hand is finished).
    pub async fn stop(self) -> Result<(), SimError> {
        self.cancel.cancel();
        match tokio::time::timeout(Duration::from_secs(30), self.services).await {
            Ok(Ok(result)) => result.map_err(SimError::Other),
            Ok(Err(e)) => Err(SimError::Other(e.to_string())),
            Err(_) => Err(SimError::Other("services did not stop within 30 s".into())),
        }
    }
}

/// The SMS window the demo and tests run with (the dispatch default).
pub fn sms_hours() -> Hours {
    Hours::daytime()
}

/// The call window the demo and tests run with (the dispatch and scheduler default).
pub fn call_hours() -> Hours {
    Hours::calls()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn access(vars: &[(&str, &str)]) -> Result<SimAccess, ConfigError> {
        let vars: Vec<(String, String)> = vars
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        SimAccess::from_env(&Env::from_fn(move |name| {
            vars.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone())
        }))
    }

    #[test]
    fn the_all_in_one_user_needs_the_core_and_admin_passwords_beside_it() {
        let plain = access(&[]).expect("plain text, no user");
        assert!(plain.services.user.is_none() && plain.core.is_none() && plain.admin.is_none());
        let admin = access(&[("NATS_USER", "admin"), ("NATS_PASSWORD", "a")]).expect("admin");
        assert!(admin.core.is_none() && admin.admin.is_none());
        let err = access(&[("NATS_USER", "renewal"), ("NATS_PASSWORD", "r")])
            .expect_err("renewal may not play the core system");
        let text = err.to_string();
        assert!(
            text.contains("NATS_CORE_PASSWORD") && text.contains("NATS_ADMIN_PASSWORD"),
            "{text}"
        );
        let both = access(&[
            ("NATS_USER", "renewal"),
            ("NATS_PASSWORD", "r"),
            ("NATS_CORE_PASSWORD", "c"),
            ("NATS_ADMIN_PASSWORD", "a"),
        ])
        .expect("renewal with core and admin beside it");
        let name = |a: &Option<NatsAccess>| {
            a.as_ref()
                .and_then(|a| a.user.as_ref())
                .map(|u| u.name.clone())
        };
        assert_eq!(name(&both.core).as_deref(), Some("core"));
        assert_eq!(name(&both.admin).as_deref(), Some("admin"));
        // A user the generator does not know is taken as it is (its rights are the
        // server's business).
        access(&[("NATS_USER", "ops"), ("NATS_PASSWORD", "o")]).expect("an unknown user");
    }
}
