//! The `renewal` process as ops meet it: a bad environment stops start-up naming the
//! variable; with Postgres away it stays up, reports not-ready and says why; with
//! everything there it becomes ready; SIGTERM stops it cleanly.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use renewal_e2e::{database_url, nats_bus, nats_env, renewal_binary, unique};
use secrecy::ExposeSecret;

fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
    listener.local_addr().expect("addr").port()
}

fn renewal(envs: &[(&str, &str)]) -> Command {
    let mut cmd = Command::new(renewal_binary());
    cmd.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .envs(nats_env())
        .env("NATS_STREAM_MAX_BYTES", "268435456")
        .env("LOG_FORMAT", "json")
        .env("PII_KEY", renewal::simulation::DEMO_PII_KEY)
        .env("AUTH_DEV", "on")
        .env("RENEWAL_STATE_DIR", state_dir())
        .env("HTTP_ADDR", "127.0.0.1:0")
        .env("ADMIN_ADDR", "127.0.0.1:0")
        .envs(envs.iter().copied())
        .stdin(Stdio::null());
    cmd
}

/// The local state folder these processes share (the development issuer's key).
fn state_dir() -> std::path::PathBuf {
    std::env::temp_dir().join("renewal-startup-tests")
}

fn terminate(pid: u32) {
    let status = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .expect("kill runs");
    assert!(status.success());
}

async fn get(url: &str) -> Option<(u16, serde_json::Value)> {
    renewal_platform::install_crypto_provider();
    let response = reqwest::get(url).await.ok()?;
    let status = response.status().as_u16();
    Some((status, response.json().await.unwrap_or_default()))
}

#[test]
fn a_malformed_or_missing_variable_stops_start_up_and_is_named() {
    let out = renewal(&[
        ("HTTP_ADDR", "not-an-address"),
        ("SMS_WEBHOOK_TOKEN", "0123456789abcdef"),
    ])
    .args(["run"])
    .output()
    .expect("renewal runs");
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("HTTP_ADDR"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let out = renewal(&[]).args(["run"]).output().expect("renewal runs");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("SMS_WEBHOOK_TOKEN"));

    for bad_key in ["", "abcd"] {
        let out = renewal(&[
            ("SMS_WEBHOOK_TOKEN", "0123456789abcdef"),
            ("PII_KEY", bad_key),
        ])
        .args(["run"])
        .output()
        .expect("renewal runs");
        assert_eq!(out.status.code(), Some(2));
        assert!(String::from_utf8_lossy(&out.stderr).contains("PII_KEY"));
    }

    let out = renewal(&[
        ("SMS_WEBHOOK_TOKEN", "0123456789abcdef"),
        ("DATABASE_URL", "mysql://x"),
    ])
    .args(["run"])
    .output()
    .expect("renewal runs");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("DATABASE_URL"));

    // No identity provider and no development issuer: refused, saying what to set.
    let out = renewal(&[("SMS_WEBHOOK_TOKEN", "0123456789abcdef"), ("AUTH_DEV", "")])
        .args(["run"])
        .output()
        .expect("renewal runs");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("AUTH_ISSUER"));
    // The development issuer under a production setting: refused.
    let out = renewal(&[
        ("SMS_WEBHOOK_TOKEN", "0123456789abcdef"),
        ("RENEWAL_ENV", "production"),
    ])
    .args(["run"])
    .output()
    .expect("renewal runs");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("AUTH_DEV"));
    let out = renewal(&[("RENEWAL_ENV", "production")])
        .args(["token", "--role", "hq_admin"])
        .output()
        .expect("renewal runs");
    assert_eq!(
        out.status.code(),
        Some(2),
        "no development tokens in production"
    );
}

#[tokio::test]
async fn without_postgres_it_stays_up_not_ready_and_says_why() {
    stays_up_not_ready(
        ("DATABASE_URL", "postgres://postgres@127.0.0.1:1/nowhere"),
        "postgres",
        "postgres is not reachable yet",
    )
    .await;
}

#[tokio::test]
async fn without_nats_it_stays_up_not_ready_and_says_why() {
    stays_up_not_ready(
        ("NATS_URL", "nats://127.0.0.1:1"),
        "nats",
        "nats is not reachable yet",
    )
    .await;
}

async fn stays_up_not_ready(broken: (&str, &str), check: &str, logged: &str) {
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let name = unique("nr");
    let db = database_url(&name);
    let mut child = renewal(&[
        ("ADMIN_ADDR", addr.as_str()),
        ("SMS_WEBHOOK_TOKEN", "0123456789abcdef"),
        ("DATABASE_URL", db.expose_secret()),
        ("NATS_PREFIX", name.as_str()),
        broken,
    ])
    .arg("run")
    .stderr(Stdio::piped())
    .spawn()
    .expect("renewal starts");
    let started = Instant::now();
    let mut seen = None;
    while started.elapsed() < Duration::from_secs(20) {
        if let Some(r) = get(&format!("http://{addr}/readyz")).await {
            seen = Some(r);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (status, body) = seen.expect("/readyz answers while a dependency is away");
    assert_eq!(status, 503, "{body}");
    assert_ne!(body["checks"][check], "ok", "{body}");
    assert_eq!(
        get(&format!("http://{addr}/healthz")).await.map(|r| r.0),
        Some(200)
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(
        child.try_wait().expect("wait").is_none(),
        "it keeps retrying instead of exiting"
    );
    terminate(child.id());
    let out = child.wait_with_output().expect("it stops");
    assert!(out.status.success(), "SIGTERM is a clean stop");
    let logs = String::from_utf8_lossy(&out.stderr);
    assert!(logs.contains(logged), "{logs}");
    let _ = renewal_platform::postgres::drop_database(&db).await;
}

#[tokio::test]
async fn with_postgres_and_nats_it_becomes_ready_and_stops_on_sigterm() {
    let name = unique("up");
    let db = database_url(&name);
    let (admin, api) = (free_port(), free_port());
    let addr = format!("127.0.0.1:{admin}");
    let api = format!("127.0.0.1:{api}");
    let mut child = renewal(&[
        ("ADMIN_ADDR", addr.as_str()),
        ("HTTP_ADDR", api.as_str()),
        ("SMS_WEBHOOK_TOKEN", "0123456789abcdef"),
        ("DATABASE_URL", db.expose_secret()),
        ("NATS_PREFIX", name.as_str()),
    ])
    .arg("run")
    .stderr(Stdio::null())
    .spawn()
    .expect("renewal starts");
    let started = Instant::now();
    let mut ready = false;
    while started.elapsed() < Duration::from_secs(60) {
        if let Some((200, body)) = get(&format!("http://{addr}/readyz")).await {
            assert_eq!(body["checks"]["renewal"], "ok");
            ready = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(ready, "/readyz turns 200 once Postgres and NATS answer");
    assert_eq!(
        get(&format!("http://{addr}/metrics")).await.map(|r| r.0),
        Some(200)
    );
    // The API port serves no health or metrics, and answers no one without a token.
    assert_eq!(
        get(&format!("http://{api}/metrics")).await.map(|r| r.0),
        Some(404)
    );
    let (status, body) = get(&format!("http://{api}/v1/policies/P404"))
        .await
        .expect("the API answers");
    assert_eq!(
        (status, body["code"].as_str()),
        (401, Some("unauthenticated")),
        "{body}"
    );
    // `renewal token` prints a token of the same development issuer, and it is taken.
    let out = renewal(&[])
        .args(["token", "--role", "hq_admin"])
        .output()
        .expect("renewal token runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let token = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let response = reqwest::Client::new()
        .get(format!("http://{api}/v1/policies/P404"))
        .bearer_auth(&token)
        .send()
        .await
        .expect("answers");
    assert_eq!(
        response.status().as_u16(),
        404,
        "a known caller learns the policy is unknown"
    );
    assert_eq!(
        response.headers()["content-type"],
        "application/problem+json"
    );
    terminate(child.id());
    let status = child.wait().expect("it stops");
    assert!(status.success());
    nats_bus(&name).await.delete_streams().await;
    let _ = renewal_platform::postgres::drop_database(&db).await;
}

/// A minimal OTLP/HTTP collector: counts the POSTs to `/v1/traces` and their bytes.
async fn otlp_sink() -> (String, std::sync::Arc<std::sync::Mutex<(usize, usize)>>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let seen = std::sync::Arc::new(std::sync::Mutex::new((0usize, 0usize)));
    let counter = seen.clone();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let counter = counter.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 8192];
                loop {
                    let n = match socket.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => n,
                    };
                    buf.extend_from_slice(&chunk[..n]);
                    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
                        continue;
                    };
                    let head = String::from_utf8_lossy(&buf[..end]).to_lowercase();
                    let length: usize = head
                        .lines()
                        .find_map(|l| {
                            l.strip_prefix("content-length:")
                                .map(|v| v.trim().parse().unwrap_or(0))
                        })
                        .unwrap_or(0);
                    if buf.len() < end + 4 + length {
                        continue;
                    }
                    if head.starts_with("post /v1/traces") {
                        let mut c = counter.lock().expect("lock");
                        c.0 += 1;
                        c.1 += length;
                    }
                    let _ = socket
                        .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
                        .await;
                    buf.drain(..end + 4 + length);
                }
            });
        }
    });
    (format!("http://{addr}"), seen)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traces_are_exported_over_otlp_when_an_endpoint_is_set() {
    let (endpoint, seen) = otlp_sink().await;
    let name = unique("ot");
    let db = database_url(&name);
    let (prefix, url) = (name.clone(), db.clone());
    let out = tokio::task::spawn_blocking(move || {
        renewal(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
            ("DEMO_DATABASE_URL", url.expose_secret()),
            ("DEMO_NATS_PREFIX", prefix.as_str()),
        ])
        .args(["demo", "--policies", "30", "--days", "20", "--seed", "2"])
        .output()
        .expect("demo runs")
    })
    .await
    .expect("joined");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (posts, bytes) = *seen.lock().expect("lock");
    assert!(
        posts >= 1 && bytes > 1000,
        "spans reached the collector: {posts} posts, {bytes} bytes"
    );
    nats_bus(&name).await.delete_streams().await;
    let _ = renewal_platform::postgres::drop_database(&db).await;
}
