//! The Postgres pool and per-service schema migrations. Each service owns one schema,
//! and its migrations table lives inside it (`<schema>._sqlx_migrations`).

use std::time::Duration;

use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use secrecy::{ExposeSecret, SecretString};
use sqlx::migrate::Migrator;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions, PgSslMode};
use sqlx::{ConnectOptions, PgPool};
use tokio_util::sync::CancellationToken;

use crate::retry::Backoff;

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("DATABASE_URL is not a valid Postgres URL: {0}")]
    Url(String),
    #[error("postgres: {0}")]
    Sql(#[from] sqlx::Error),
    #[error("migrating schema {schema}: {source}")]
    Migrate {
        schema: &'static str,
        source: sqlx::migrate::MigrateError,
    },
    #[error("stopped before Postgres answered")]
    Cancelled,
}

fn options(url: &SecretString) -> Result<PgConnectOptions, DbError> {
    let options: PgConnectOptions = url
        .expose_secret()
        .parse()
        .map_err(|e: sqlx::Error| DbError::Url(e.to_string()))?;
    check_tls(&options)?;
    Ok(options
        .application_name("renewal")
        .log_slow_statements(tracing::log::LevelFilter::Warn, Duration::from_secs(2)))
}

/// TLS settings that cannot work, or would not do what they seem to, stop start-up
/// with a message saying so (`sslmode`, `sslrootcert` in the URL, or `PGSSLMODE`,
/// `PGSSLROOTCERT`): a CA file that cannot be read or holds no certificate, and a CA
/// given beside an `sslmode` that would never check the server against it (`require`
/// and `prefer` accept any certificate here, unlike libpq, which verifies the CA when
/// a root file is given). `verify-full` checks the chain up to `sslrootcert` (or the
/// public roots, without one) and that the URL's host is in the server's certificate;
/// a failed check is an error, never a fallback to plain text.
fn check_tls(options: &PgConnectOptions) -> Result<(), DbError> {
    let root = options
        .to_url_lossy()
        .query_pairs()
        .find(|(key, _)| key == "sslrootcert")
        .map(|(_, value)| value.into_owned());
    let Some(root) = root else { return Ok(()) };
    let mode = options.get_ssl_mode();
    if !matches!(mode, PgSslMode::VerifyCa | PgSslMode::VerifyFull) {
        return Err(DbError::Url(format!(
            "sslrootcert is given but sslmode={} does not verify the server against it; \
             use sslmode=verify-full",
            ssl_mode_name(mode)
        )));
    }
    // A file (an inline PEM needs no reading).
    let Some(path) = root.strip_prefix("file: ") else {
        return Ok(());
    };
    let pem = std::fs::read(path)
        .map_err(|e| DbError::Url(format!("sslrootcert {path} cannot be read: {e}")))?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| DbError::Url(format!("sslrootcert {path} is not PEM: {e}")))?;
    if certs.is_empty() {
        return Err(DbError::Url(format!(
            "sslrootcert {path} holds no PEM certificate"
        )));
    }
    Ok(())
}

fn ssl_mode_name(mode: PgSslMode) -> &'static str {
    match mode {
        PgSslMode::Disable => "disable",
        PgSslMode::Allow => "allow",
        PgSslMode::Prefer => "prefer",
        PgSslMode::Require => "require",
        PgSslMode::VerifyCa => "verify-ca",
        PgSslMode::VerifyFull => "verify-full",
    }
}

/// An error reaching Postgres, said so that an operator knows what to fix: a TLS
/// failure names the settings it depends on (a certificate from another CA, or one
/// that does not name the URL's host, is refused under `verify-full`).
pub fn explain(e: &sqlx::Error) -> String {
    match tls_failure(e) {
        Some(cause) => format!(
            "TLS to Postgres failed: {cause} (check DATABASE_URL's sslrootcert: the CA \
             that signed the server's certificate; and its host: a name in that certificate)"
        ),
        None => e.to_string(),
    }
}

/// The TLS failure behind a connection error: the handshake's own (no server
/// certificate, a bad CA file) or the certificate check's, which rustls raises from
/// inside the handshake's I/O.
fn tls_failure(e: &sqlx::Error) -> Option<String> {
    match e {
        sqlx::Error::Tls(cause) => Some(cause.to_string()),
        sqlx::Error::Io(io) => io
            .get_ref()
            .and_then(|inner| inner.downcast_ref::<rustls::Error>())
            .map(ToString::to_string),
        _ => None,
    }
}

/// A lazy pool: it connects on first use, so a service can start (and report
/// not-ready) while Postgres is still away.
pub fn pool(url: &SecretString, max_connections: u32) -> Result<PgPool, DbError> {
    Ok(pool_options(max_connections)
        // Our statements are short or set-based over indexes; JIT compiling a batch's
        // query costs more than it saves (tens of ms per statement measured).
        .connect_lazy_with(options(url)?.options([("jit", "off")])))
}

/// A second pool to the same database with its own connections, for work that must
/// not wait behind the API's callers (dispatch's vendor webhook and SMS sender): a
/// burst of requests can hold every connection of the main pool, never these.
pub fn pool_beside(pool: &PgPool, max_connections: u32) -> PgPool {
    pool_options(max_connections).connect_lazy_with((*pool.connect_options()).clone())
}

/// A connection idle for longer than this is pinged before it is handed out; one
/// used more recently is handed out as it is.
const PING_AFTER_IDLE: Duration = Duration::from_secs(1);

/// Both pools' settings. sqlx pings every connection it takes from the idle queue
/// (`test_before_acquire`): a round trip before each transaction, one in five of a
/// vendor receipt batch's and, over TLS, both ends' encryption work for it. A
/// connection returned to the pool a moment ago is known to be alive, so only one
/// that has sat idle (a quiet night, a Postgres restart since) is pinged, as
/// HikariCP and pgx's pools do; a connection that still turns out to be broken fails
/// its one transaction, which the caller retries (a NATS redelivery, the relay's
/// next poll, the vendor's or an agent's retry), and sqlx closes it.
fn pool_options(max_connections: u32) -> PgPoolOptions {
    PgPoolOptions::new()
        .max_connections(max_connections)
        .min_connections(0)
        .acquire_timeout(Duration::from_secs(5))
        .test_before_acquire(false)
        .before_acquire(|conn, meta| {
            Box::pin(async move {
                if meta.idle_for > PING_AFTER_IDLE {
                    sqlx::Connection::ping(conn).await?;
                }
                Ok(true)
            })
        })
}

/// Begins a transaction that claims from a queue table (the outbox, queued SMS):
/// its claim reads the queue's partial index by index scan, never by bitmap scan.
/// Rows leaving a queue leave dead entries in its index until autovacuum comes, and
/// after a bulk insert the planner's estimate is stale; a bitmap scan then reads every
/// queued row and sorts them all (on disk past `work_mem`) to take the first 500, on
/// every poll: 14 ms a claim with 20,000 SMS queued, where an index scan reads 500
/// entries in order and marks the dead ones it passes, so the next poll skips them.
///
/// Its statements are planned for their values each time, never from a plan cached
/// on the connection: a generic plan made while the queue was nearly empty (a new
/// database, a quiet night) reads the whole table by sequential scan for ever after,
/// and marking a batch by `seq = ANY($1)` that way took 23 ms with 20,000 published
/// rows (the primary key reads the batch's 50 rows). Planning costs microseconds a
/// batch.
pub async fn begin_claim(
    pool: &PgPool,
) -> Result<sqlx::Transaction<'static, sqlx::Postgres>, sqlx::Error> {
    pool.begin_with(
        "BEGIN; SET LOCAL enable_bitmapscan = off; SET LOCAL plan_cache_mode = force_custom_plan",
    )
    .await
}

/// Waits until Postgres answers, logging each failure with its cause, with backoff,
/// and handing the cause to `report` (readiness shows it). If the server answers that
/// the database does not exist, it tries to create it.
pub async fn wait_until_reachable(
    pool: &PgPool,
    url: &SecretString,
    cancel: &CancellationToken,
    report: &(dyn Fn(String) + Sync),
) -> Result<(), DbError> {
    let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(10));
    loop {
        match sqlx::query("SELECT 1").execute(pool).await {
            Ok(_) => return Ok(()),
            Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("3D000") => {
                if let Err(create) = ensure_database(url).await {
                    let wait = backoff.next_delay();
                    let why = match &create {
                        DbError::Sql(e) => explain(e),
                        other => other.to_string(),
                    };
                    report(format!(
                        "the database does not exist and cannot be created: {why}"
                    ));
                    tracing::warn!(error = %why, retry_in_ms = wait.as_millis() as u64, "the database does not exist and cannot be created");
                    tokio::select! {
                        _ = cancel.cancelled() => return Err(DbError::Cancelled),
                        _ = tokio::time::sleep(wait) => {}
                    }
                }
            }
            Err(e) => {
                let wait = backoff.next_delay();
                let why = explain(&e);
                if tls_failure(&e).is_some() {
                    // Not a server still starting: a CA or host that needs fixing.
                    tracing::error!(error = %why, retry_in_ms = wait.as_millis() as u64, "postgres is not reachable");
                } else {
                    tracing::warn!(error = %why, retry_in_ms = wait.as_millis() as u64, "postgres is not reachable yet");
                }
                report(why);
                tokio::select! {
                    _ = cancel.cancelled() => return Err(DbError::Cancelled),
                    _ = tokio::time::sleep(wait) => {}
                }
            }
        }
    }
}

/// Creates the database named in `url` if it does not exist (connecting to the
/// server's `postgres` database to do so). A laptop and the demo need this; a managed
/// database in production already exists and this is a no-op there.
pub async fn ensure_database(url: &SecretString) -> Result<(), DbError> {
    let target = options(url)?;
    let Some(name) = target.get_database().map(str::to_owned) else {
        return Ok(());
    };
    // Most often it exists: a role allowed only its own database needs nothing more.
    match target.connect().await {
        Ok(conn) => {
            let _ = sqlx::Connection::close(conn).await;
            return Ok(());
        }
        Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("3D000") => {}
        Err(e) => return Err(e.into()),
    }
    let mut admin = target.clone().database("postgres").connect().await?;
    let exists: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
            .bind(&name)
            .fetch_one(&mut admin)
            .await?;
    if !exists {
        let sql = format!("CREATE DATABASE \"{}\"", name.replace('"', "\"\""));
        match sqlx::query(sqlx::AssertSqlSafe(sql))
            .execute(&mut admin)
            .await
        {
            Ok(_) => tracing::info!(database = %name, "created database"),
            // Another process created it between our check and our create.
            Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("42P04") => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// Drops a database (tests and the demo's reset use it).
pub async fn drop_database(url: &SecretString) -> Result<(), DbError> {
    let target = options(url)?;
    let Some(name) = target.get_database().map(str::to_owned) else {
        return Ok(());
    };
    let mut admin = target.database("postgres").connect().await?;
    let sql = format!(
        "DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)",
        name.replace('"', "\"\"")
    );
    sqlx::query(sqlx::AssertSqlSafe(sql))
        .execute(&mut admin)
        .await?;
    Ok(())
}

/// Runs a service's migrations into its own schema, tracking them in a table inside
/// that schema so services never share migration history.
pub async fn migrate(
    pool: &PgPool,
    schema: &'static str,
    migrator: Migrator,
) -> Result<(), DbError> {
    let mut migrator = migrator;
    // Replicas starting together migrate one at a time: the first holds a lock named
    // after the schema on a connection of its own, the others wait and then find
    // nothing left to do. That connection's search path is the schema, for the
    // platform's own tables (outbox, inbox), and it is closed afterwards so the pool
    // never hands out a changed path.
    let mut conn = pool.acquire().await?.detach();
    sqlx::query("SELECT pg_advisory_lock(hashtext('renewal migrate ' || $1))")
        .bind(schema)
        .execute(&mut conn)
        .await?;
    let exists: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1)")
            .bind(schema)
            .fetch_one(&mut conn)
            .await?;
    // Only a missing schema needs the right to create one in the database.
    if !exists {
        let create = format!("CREATE SCHEMA IF NOT EXISTS {schema}");
        sqlx::query(sqlx::AssertSqlSafe(create))
            .execute(&mut conn)
            .await?;
    }
    let path = format!("SET search_path TO {schema}");
    sqlx::query(sqlx::AssertSqlSafe(path))
        .execute(&mut conn)
        .await?;
    let mut platform = sqlx::migrate!("./migrations");
    platform.dangerous_set_table_name(format!("{schema}._platform_migrations"));
    let applied = async {
        platform
            .run_direct(None, &mut conn, false)
            .await
            .map_err(|source| DbError::Migrate { schema, source })?;
        migrator.dangerous_set_table_name(format!("{schema}._sqlx_migrations"));
        migrator
            .run(pool)
            .await
            .map_err(|source| DbError::Migrate { schema, source })
    }
    .await;
    // Closing the connection releases the lock.
    let _ = sqlx::Connection::close(conn).await;
    applied
}
