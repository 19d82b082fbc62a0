//! Postgres in transit: the services reach Postgres over TLS, verify its certificate
//! against the CA they are given and the host they name, and the role they use is
//! refused in plain text. Against the local Postgres that `deploy/local/stack.sh`
//! configures (its server certificate from the local CA, the TLS-only `renewal` role).

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use renewal_e2e::{local_ca, local_tls_dir, url_path};
use renewal_platform::postgres::{self, DbError};
use secrecy::SecretString;
use tokio_util::sync::CancellationToken;

/// The local CA, or `None` (the test is skipped, saying why) only where the local
/// stack has not made one and nobody asked for TLS; in CI, never skipped.
fn ca_or_skip(test: &str) -> Option<PathBuf> {
    let ca = local_ca();
    let asked = std::env::var_os("RENEWAL_TLS_DIR").is_some() || std::env::var_os("CI").is_some();
    let off = std::env::var("RENEWAL_POSTGRES_TLS").as_deref() == Ok("off");
    match ca {
        Some(ca) if !off => Some(ca),
        _ if asked => panic!(
            "{test}: the local CA ({}) is missing or Postgres was not given its certificate \
             (RENEWAL_POSTGRES_TLS=off): run `. deploy/local/stack.sh; ensure_stack` as root",
            local_tls_dir().display()
        ),
        _ => {
            eprintln!(
                "SKIPPED {test}: no local CA in {} (deploy/local/stack.sh makes it and gives \
                 Postgres its certificate); not checking Postgres over TLS",
                local_tls_dir().display()
            );
            None
        }
    }
}

fn url(host: &str, port: u16, query: &str) -> SecretString {
    SecretString::from(format!("postgres://renewal@{host}:{port}/postgres?{query}"))
}

fn verify_full(ca: &Path) -> String {
    format!("sslmode=verify-full&sslrootcert={}", url_path(ca))
}

/// Whether this connection is encrypted, as the server sees it.
async fn over_tls(pool: &sqlx::PgPool) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
        .fetch_one(pool)
        .await
}

/// What a service would say on `/readyz` about Postgres at `url`: the first reason
/// `wait_until_reachable` reports (it keeps retrying; stopped here after that).
async fn readiness_reason(url: &SecretString) -> String {
    let pool = postgres::pool(url, 2).expect("the URL is well formed");
    let cancel = CancellationToken::new();
    let reasons = Arc::new(Mutex::new(Vec::<String>::new()));
    let report = {
        let reasons = reasons.clone();
        let cancel = cancel.clone();
        move |why: String| {
            reasons.lock().expect("reasons").push(why);
            cancel.cancel();
        }
    };
    let waited = tokio::time::timeout(
        Duration::from_secs(30),
        postgres::wait_until_reachable(&pool, url, &cancel, &report),
    )
    .await
    .expect("a refused certificate is reported within 30 s");
    assert!(
        matches!(waited, Err(DbError::Cancelled)),
        "Postgres must not be reachable here: {waited:?}"
    );
    let first = reasons.lock().expect("reasons").first().cloned();
    first.expect("a reason was reported")
}

/// A CA of our own that signed nothing the server holds.
fn throwaway_ca() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("renewal-other-ca-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let made = std::process::Command::new("openssl")
        .current_dir(&dir)
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=renewal local CA",
            "-keyout",
            "ca.key",
            "-out",
            "ca.crt",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ])
        .output()
        .expect("openssl runs (the local stack needs it too)");
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );
    dir.join("ca.crt")
}

#[tokio::test]
async fn a_service_pool_reaches_postgres_over_verified_tls() {
    let Some(ca) = ca_or_skip("a_service_pool_reaches_postgres_over_verified_tls") else {
        return;
    };
    let pool = postgres::pool(&url("127.0.0.1", 5432, &verify_full(&ca)), 2).expect("pool");
    assert!(
        over_tls(&pool)
            .await
            .expect("verify-full against the local CA connects")
    );
    // The pool beside it (dispatch's reserved connections) keeps the TLS settings.
    let beside = postgres::pool_beside(&pool, 1);
    assert!(over_tls(&beside).await.expect("the pool beside connects"));
    // And so does reaching the server's `postgres` database to create one.
    let name = renewal_e2e::unique("tls");
    let db = SecretString::from(format!(
        "postgres://renewal@127.0.0.1:5432/renewal_{name}?{}",
        verify_full(&ca)
    ));
    postgres::ensure_database(&db)
        .await
        .expect("created over TLS");
    let created = postgres::pool(&db, 1).expect("pool");
    assert!(over_tls(&created).await.expect("the new database over TLS"));
    created.close().await;
    postgres::drop_database(&db)
        .await
        .expect("dropped over TLS");
}

#[tokio::test]
async fn the_services_role_is_refused_in_plain_text() {
    if ca_or_skip("the_services_role_is_refused_in_plain_text").is_none() {
        return;
    }
    let pool = postgres::pool(&url("127.0.0.1", 5432, "sslmode=disable"), 1).expect("pool");
    match over_tls(&pool).await {
        Err(sqlx::Error::Database(e)) => {
            // invalid_authorization_specification: pg_hba's `hostnossl ... reject`.
            assert_eq!(e.code().as_deref(), Some("28000"), "{e}");
            assert!(e.message().contains("no encryption"), "{e}");
        }
        other => panic!("a plain-text connection as the services' role must be refused: {other:?}"),
    }
}

#[tokio::test]
async fn a_server_certificate_from_another_ca_is_refused() {
    let Some(ca) = ca_or_skip("a_server_certificate_from_another_ca_is_refused") else {
        return;
    };
    // The same name as the local CA, another key: only the signature tells them apart.
    let other = throwaway_ca();
    let bad = url("127.0.0.1", 5432, &verify_full(&other));
    let pool = postgres::pool(&bad, 1).expect("pool");
    let e = over_tls(&pool)
        .await
        .expect_err("a server certificate from another CA");
    let said = postgres::explain(&e);
    assert!(said.contains("TLS to Postgres failed"), "{said}");
    // Issued by a CA of that name, but not signed by this one.
    assert!(
        said.contains("invalid peer certificate: BadSignature"),
        "{said}"
    );
    // Readiness says why while the service keeps trying.
    let why = readiness_reason(&bad).await;
    assert!(
        why.contains("TLS to Postgres failed") && why.contains("sslrootcert"),
        "{why}"
    );
    std::fs::remove_dir_all(other.parent().expect("dir")).ok();

    // A CA file that cannot be used, or a CA beside an sslmode that would not check
    // it, stops start-up (a configuration error), before any connection.
    let missing = ca.with_file_name("no-such-ca.crt");
    match postgres::pool(&url("127.0.0.1", 5432, &verify_full(&missing)), 1) {
        Err(DbError::Url(why)) => assert!(why.contains("cannot be read"), "{why}"),
        other => panic!("a missing sslrootcert must be refused at start: {other:?}"),
    }
    let query = format!("sslmode=require&sslrootcert={}", url_path(&ca));
    match postgres::pool(&url("127.0.0.1", 5432, &query), 1) {
        Err(DbError::Url(why)) => assert!(why.contains("sslmode=require"), "{why}"),
        other => panic!("sslrootcert with sslmode=require must be refused at start: {other:?}"),
    }
}

#[tokio::test]
async fn a_server_certificate_for_another_host_is_refused() {
    let Some(ca) = ca_or_skip("a_server_certificate_for_another_host_is_refused") else {
        return;
    };
    // The local Postgres reached at 127.0.0.2 (a loopback address its certificate does
    // not name), through a forwarder.
    let listener = tokio::net::TcpListener::bind("127.0.0.2:0")
        .await
        .expect("bind 127.0.0.2");
    let port = listener.local_addr().expect("addr").port();
    let forward = tokio::spawn(async move {
        while let Ok((mut inbound, _)) = listener.accept().await {
            tokio::spawn(async move {
                if let Ok(mut server) = tokio::net::TcpStream::connect("127.0.0.1:5432").await {
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut server).await;
                }
            });
        }
    });

    let pool = postgres::pool(&url("127.0.0.2", port, &verify_full(&ca)), 1).expect("pool");
    let e = over_tls(&pool)
        .await
        .expect_err("a certificate not naming 127.0.0.2");
    let said = postgres::explain(&e);
    assert!(said.contains("TLS to Postgres failed"), "{said}");
    assert!(said.contains("not valid for name \"127.0.0.2\""), "{said}");

    // The same path with the name left unchecked connects: the name was the refusal.
    let query = format!("sslmode=verify-ca&sslrootcert={}", url_path(&ca));
    let pool = postgres::pool(&url("127.0.0.2", port, &query), 1).expect("pool");
    assert!(
        over_tls(&pool)
            .await
            .expect("verify-ca through the forwarder")
    );
    pool.close().await;
    forward.abort();
}

/// A statement too big for one TLS record (a batch of 100 receipts, the outbox rows of
/// a batch of events) goes out in several writes. With Nagle's algorithm on the
/// client's socket the second write waits for the server to acknowledge the first,
/// and Linux delays that ACK by 40 ms: every such statement took 40 ms more (sqlx
/// 0.9.0 left `TCP_NODELAY` off; the webhook's p50 was 52 ms). Each of these round
/// trips carries 48 kB; on loopback it takes about a millisecond.
#[tokio::test]
async fn a_statement_spanning_tls_records_does_not_wait_for_a_delayed_ack() {
    let Some(ca) = ca_or_skip("a_statement_spanning_tls_records_does_not_wait_for_a_delayed_ack")
    else {
        return;
    };
    let pool = postgres::pool(&url("127.0.0.1", 5432, &verify_full(&ca)), 1).expect("pool");
    assert!(over_tls(&pool).await.expect("over TLS"));
    let payload = vec![7_u8; 48 * 1024];
    let mut took = Vec::new();
    for _ in 0..21 {
        let started = std::time::Instant::now();
        let length: i32 = sqlx::query_scalar("SELECT length($1::bytea)")
            .bind(&payload)
            .fetch_one(&pool)
            .await
            .expect("round trip");
        took.push(started.elapsed());
        assert_eq!(length, 48 * 1024);
    }
    took.sort();
    let median = took[took.len() / 2];
    assert!(
        median < Duration::from_millis(25),
        "a 48 kB statement over TLS took {median:?} (median of 21; sorted: {took:?}): \
         is TCP_NODELAY off on the pool's sockets?"
    );
    pool.close().await;
}
