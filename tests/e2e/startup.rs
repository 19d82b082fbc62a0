//! The `renewal` process as ops meet it: a bad environment stops start-up naming the
//! variable; with Postgres away it stays up, reports not-ready and says why; with
//! everything there it becomes ready; SIGTERM stops it cleanly.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use renewal_e2e::{database_url, nats_url, renewal_binary, unique};
use secrecy::ExposeSecret;

fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
    listener.local_addr().expect("addr").port()
}

fn renewal(envs: &[(&str, &str)]) -> Command {
    let mut cmd = Command::new(renewal_binary());
    cmd.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("NATS_URL", nats_url())
        .env("LOG_FORMAT", "json")
        .envs(envs.iter().copied())
        .stdin(Stdio::null());
    cmd
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

    let out = renewal(&[
        ("SMS_WEBHOOK_TOKEN", "0123456789abcdef"),
        ("DATABASE_URL", "mysql://x"),
    ])
    .args(["run"])
    .output()
    .expect("renewal runs");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("DATABASE_URL"));
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
        ("HTTP_ADDR", addr.as_str()),
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
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let mut child = renewal(&[
        ("HTTP_ADDR", addr.as_str()),
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
    terminate(child.id());
    let status = child.wait().expect("it stops");
    assert!(status.success());
    let subjects = renewal_contract::Subjects::new(&name).expect("prefix");
    let cancel = tokio_util::sync::CancellationToken::new();
    if let Ok(bus) = renewal_platform::Bus::connect(&nats_url(), subjects, 1, "test", &cancel).await
    {
        bus.delete_streams().await;
    }
    let _ = renewal_platform::postgres::drop_database(&db).await;
}
