//! Killing the all-in-one process in the middle of the demo and starting it again
//! loses no outbox event and applies none twice: the season ends with exactly the
//! figures of a run that was never interrupted, and no rule broken.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use renewal_e2e::{database_url, nats_bus, nats_env, renewal_binary, unique};
use secrecy::ExposeSecret;

const ARGS: [&str; 7] = ["demo", "--policies", "300", "--days", "60", "--seed", "5"];

fn demo(name: &str, json: &std::path::Path, resume: bool) -> Command {
    let mut cmd = Command::new(renewal_binary());
    cmd.args(ARGS)
        .arg("--json")
        .arg(json)
        .env("DEMO_DATABASE_URL", database_url(name).expose_secret())
        .env("DEMO_NATS_PREFIX", name)
        .envs(nats_env())
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    if resume {
        cmd.arg("--resume");
    }
    cmd
}

fn report(path: &std::path::Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(path).expect("the demo wrote its JSON")).expect("JSON")
}

async fn cleanup(name: &str) {
    let _ = renewal_platform::postgres::drop_database(&database_url(name)).await;
    nats_bus(name).await.delete_streams().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_demo_resumes_with_nothing_lost_and_nothing_doubled() {
    let dir = std::env::temp_dir();
    let whole = unique("wh");
    let cut = unique("ct");
    let whole_json = dir.join(format!("{whole}.json"));
    let cut_json = dir.join(format!("{cut}.json"));

    // The reference: the same season, never interrupted.
    let out = demo(&whole, &whole_json, false)
        .output()
        .expect("demo runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // The same season, killed (SIGKILL: no drain, no goodbye) a third of the way in.
    let mut child = demo(&cut, &cut_json, false).spawn().expect("demo starts");
    let pool = loop {
        match sqlx::PgPool::connect(database_url(&cut).expose_secret()).await {
            Ok(p) => break p,
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    };
    let started = Instant::now();
    let kill_after = chrono::NaiveDate::from_ymd_opt(2026, 12, 21).expect("date");
    loop {
        let day: Option<chrono::NaiveDate> = sqlx::query_scalar(
            "SELECT (sim_now AT TIME ZONE 'Asia/Shanghai')::date FROM demo.progress WHERE id = 1",
        )
        .fetch_optional(&pool)
        .await
        .unwrap_or(None);
        if day.is_some_and(|d| d >= kill_after) {
            break;
        }
        assert!(
            child.try_wait().expect("wait").is_none(),
            "the demo ended before it could be killed"
        );
        assert!(
            started.elapsed() < Duration::from_secs(300),
            "the demo did not get to 21 December"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    child.kill().expect("SIGKILL");
    let _ = child.wait();
    let killed_at: chrono::DateTime<chrono::Utc> =
        sqlx::query_scalar("SELECT sim_now FROM demo.progress")
            .fetch_one(&pool)
            .await
            .expect("progress");
    let finished: bool = sqlx::query_scalar("SELECT finished FROM demo.progress")
        .fetch_one(&pool)
        .await
        .expect("progress");
    assert!(!finished, "killed mid-season (at {killed_at})");
    pool.close().await;

    let out = demo(&cut, &cut_json, true).output().expect("demo resumes");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let (whole_report, cut_report) = (report(&whole_json), report(&cut_json));
    assert_eq!(
        cut_report["funnel"], whole_report["funnel"],
        "same figures as the uninterrupted season"
    );
    assert!(
        whole_report["funnel"]["sms_delivered"]
            .as_i64()
            .unwrap_or(0)
            > 0
    );
    // Some customers answered with an opt-out, in both seasons the same ones.
    let opted_out = |r: &serde_json::Value| r["details"]["sms_opted_out"].as_i64().unwrap_or(0);
    assert!(opted_out(&whole_report) > 0, "customers opted out by reply");
    assert_eq!(opted_out(&cut_report), opted_out(&whole_report));
    for (name, count) in cut_report["violations"].as_object().expect("violations") {
        assert_eq!(count, 0, "violation {name} after the restart");
    }
    let _ = std::fs::remove_file(&whole_json);
    let _ = std::fs::remove_file(&cut_json);
    cleanup(&whole).await;
    cleanup(&cut).await;
}
