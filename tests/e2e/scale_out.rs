//! The services as Kubernetes runs them: each its own process (`renewal-lists`,
//! `renewal-assignment`, `renewal-scheduler`, `renewal-dispatch`) on the wall clock,
//! sharing one Postgres and one NATS.
//!
//! - Two replicas of every service share the work (each replica takes in messages of
//!   its own) with no duplicate effect and nothing lost: one case per policy, one claim
//!   winner per case, each due timer fired once, each SMS sent to the vendor once and
//!   given its receipt, each phone task leased by one agent.
//! - One trace follows a policy from the core system's message to the SMS receipt,
//!   through all four services, exported over OTLP.

use std::collections::{HashMap, HashSet};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use renewal_contract::core::{Policy, PolicyUpserted};
use renewal_contract::subject;
use renewal_e2e::{
    Grant, ORG_CSV, Role, TZ, database_url, nats_bus, nats_env, policy, post_json_to, unique,
};
use renewal_platform::{Bus, Clock};
use secrecy::{ExposeSecret, SecretString};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

const SERVICES: [&str; 4] = ["lists", "assignment", "scheduler", "dispatch"];
const WEBHOOK_TOKEN: &str = "scale0ut0token0123456789";

/// Reads the process's log until it says where it serves its admin routes and its API
/// (in that order), then keeps draining the log in the background (shown with
/// `TEST_LOG`).
fn serving_addresses(child: &mut Child, service: &str, show: bool) -> (String, String) {
    use std::io::BufRead;
    let stderr = child.stderr.take().expect("piped stderr");
    let mut lines = std::io::BufReader::new(stderr).lines();
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    let service = service.to_owned();
    std::thread::spawn(move || {
        for line in lines.by_ref().map_while(Result::ok) {
            if show {
                eprintln!("[{service}] {line}");
            }
            if let Ok(event) = serde_json::from_str::<Value>(&line)
                && (event["message"] == "serving /healthz, /readyz, /metrics"
                    || event["message"] == "serving the API")
                && let Some(addr) = event["addr"].as_str()
            {
                let _ = tx.send(format!("http://{addr}"));
            }
        }
    });
    let next = || {
        rx.recv_timeout(Duration::from_secs(30))
            .expect("the process logs the addresses it serves on")
    };
    let admin = next();
    (admin, next())
}

/// One running service process.
struct Replica {
    service: &'static str,
    child: Child,
    base: String,
    /// Health, readiness, metrics.
    admin: String,
}

/// Every replica of every service, against one database and subject prefix, with the
/// mock SMS vendor on loopback pushing its receipts to the first dispatch replica.
struct Deployment {
    name: String,
    db: SecretString,
    pool: sqlx::PgPool,
    bus: Bus,
    replicas: Vec<Replica>,
    vendor_stop: CancellationToken,
    http: reqwest::Client,
    /// The processes' local state folder (the development issuer's key).
    state: std::path::PathBuf,
}

impl Deployment {
    async fn start(tag: &str, replicas: usize, otlp: Option<&str>) -> Deployment {
        renewal_platform::install_crypto_provider();
        let name = unique(tag);
        let db = database_url(&name);
        renewal_platform::postgres::ensure_database(&db)
            .await
            .expect("database");
        let pool = renewal_platform::postgres::pool(&db, 8).expect("pool");
        renewal_platform::postgres::migrate(
            &pool,
            "demo",
            sqlx::migrate!("../services/renewal/migrations"),
        )
        .await
        .expect("the mock vendor's tables");
        let bus = nats_bus(&name).await;
        bus.ensure_all_streams().await.expect("streams");

        // Dispatch first: the mock vendor pushes its receipts to the first replica.
        let log = std::env::var("TEST_LOG").is_ok();
        let state = std::env::temp_dir().join(format!("renewal-{name}"));
        let issuer =
            renewal_platform::dev_issuer::DevIssuer::load_or_create(&state.join("dev-issuer"))
                .expect("the development issuer's key");
        let hq = issuer
            .token(&Grant::role(Role::HqAdmin), Duration::from_secs(3600))
            .expect("signs");
        let mut running: Vec<Replica> = Vec::new();
        let vendor_stop = CancellationToken::new();
        let vendor_listener = renewal_platform::http::bind(renewal::vendor_sim::bind_addr())
            .await
            .expect("vendor listens");
        let vendor_url = format!(
            "http://{}",
            vendor_listener.local_addr().expect("vendor addr")
        );
        for service in ["dispatch", "lists", "assignment", "scheduler"] {
            for _ in 0..replicas {
                let mut cmd = Command::new(
                    renewal_e2e::renewal_binary().with_file_name(format!("renewal-{service}")),
                );
                cmd.env_clear()
                    .env("PATH", std::env::var("PATH").unwrap_or_default())
                    .env("DATABASE_URL", db.expose_secret())
                    .env("DATABASE_MAX_CONNECTIONS", "6")
                    .envs(nats_env())
                    .env("NATS_STREAM_MAX_BYTES", "268435456")
                    .env("NATS_PREFIX", &name)
                    // Port 0: each process tells the port it got in its first log lines.
                    .env("HTTP_ADDR", "127.0.0.1:0")
                    .env("ADMIN_ADDR", "127.0.0.1:0")
                    // The development issuer, its key shared through the state folder.
                    .env("AUTH_DEV", "on")
                    .env("RENEWAL_STATE_DIR", &state)
                    .env("SHUTDOWN_GRACE", "10s")
                    .env("SMS_VENDOR_TIMEOUT", "5s")
                    .env(
                        "RUST_LOG",
                        if log {
                            "info,sqlx=warn"
                        } else {
                            "warn,renewal_platform::process=info"
                        },
                    )
                    .env("LOG_FORMAT", "json")
                    .env("PII_KEY", renewal::simulation::DEMO_PII_KEY)
                    // Contacts allowed all day, so the test does not depend on the hour.
                    .env("SMS_HOURS", "00:00-23:59")
                    .env("CALL_HOURS", "00:00-23:59")
                    .env("SMS_WEBHOOK_TOKEN", WEBHOOK_TOKEN)
                    .env("SMS_VENDOR_URL", &vendor_url)
                    .env("SMS_ACCESS_KEY_ID", "demo")
                    .env(
                        "SMS_ACCESS_KEY_SECRET",
                        renewal::vendor_sim::ACCESS_KEY_SECRET,
                    )
                    .env("SMS_VENDOR_QPS", "5000")
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(Stdio::piped());
                if let Some(endpoint) = otlp {
                    cmd.env("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint)
                        .env("OTEL_BSP_SCHEDULE_DELAY", "200");
                }
                let mut child = cmd
                    .spawn()
                    .expect("the service binary starts (deploy/local/test builds it)");
                let (admin, base) = serving_addresses(&mut child, service, log);
                running.push(Replica {
                    service,
                    child,
                    base,
                    admin,
                });
            }
        }
        renewal::vendor_sim::VendorSim::new(pool.clone(), Clock::wall(), 7).start(
            vendor_listener,
            format!("{}/v1/webhooks/sms/{WEBHOOK_TOKEN}/report", running[0].base),
            vendor_stop.clone(),
        );
        let deployment = Deployment {
            name,
            db,
            pool,
            bus,
            replicas: running,
            vendor_stop,
            http: renewal_e2e::client_with(&hq),
            state,
        };
        for replica in &deployment.replicas {
            let ready = format!("{}/readyz", replica.admin);
            let last = Arc::new(Mutex::new(String::new()));
            let started = Instant::now();
            loop {
                let answer = deployment.http.get(&ready).send().await;
                match answer {
                    Ok(r) if r.status().as_u16() == 200 => break,
                    Ok(r) => *last.lock().expect("lock") = r.text().await.unwrap_or_default(),
                    Err(e) => *last.lock().expect("lock") = e.to_string(),
                }
                assert!(
                    started.elapsed() < Duration::from_secs(60),
                    "{} at {} not ready within 60 s: {}",
                    replica.service,
                    replica.base,
                    last.lock().expect("lock")
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
        deployment
    }

    fn of(&self, service: &str) -> Vec<&Replica> {
        self.replicas
            .iter()
            .filter(|r| r.service == service)
            .collect()
    }

    async fn post(&self, base: &str, path: &str, body: Value) -> (u16, Value) {
        post_json_to(&self.http, &format!("{base}{path}"), body).await
    }

    /// Publishes policies as the core policy system does, with its trace.
    async fn publish(&self, policies: &[Policy], traceparent: Option<&str>) {
        let mut acks = Vec::new();
        for p in policies {
            let event = PolicyUpserted {
                policy: Some(p.clone()),
            };
            acks.push(
                self.bus
                    .send(
                        subject::CORE_POLICY_UPSERTED,
                        &format!("{}:{}", p.policy_no, p.version),
                        traceparent,
                        prost::Message::encode_to_vec(&event),
                    )
                    .await
                    .expect("published"),
            );
        }
        for ack in acks {
            ack.await.expect("acknowledged");
        }
    }

    async fn count(&self, sql: &'static str) -> i64 {
        sqlx::query_scalar(sql)
            .fetch_one(&self.pool)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"))
    }

    /// Messages this replica took in, from its own `/metrics`.
    async fn messages_in(&self, replica: &Replica) -> f64 {
        self.metric(replica, "messages_in_total").await
    }

    /// A metric of this replica's `/metrics`, summed over its labels.
    async fn metric(&self, replica: &Replica, name: &str) -> f64 {
        let text = self
            .http
            .get(format!("{}/metrics", replica.admin))
            .send()
            .await
            .expect("metrics answer")
            .text()
            .await
            .expect("metrics text");
        text.lines()
            .filter(|l| {
                l.strip_prefix(name)
                    .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    /// SIGTERM to every replica; each must drain and exit 0.
    async fn stop(&mut self) {
        for replica in &self.replicas {
            let _ = Command::new("kill")
                .args(["-TERM", &replica.child.id().to_string()])
                .status();
        }
        for replica in &mut self.replicas {
            let started = Instant::now();
            loop {
                match replica.child.try_wait() {
                    Ok(Some(status)) => {
                        assert!(
                            status.success(),
                            "{} stopped with {status}",
                            replica.service
                        );
                        break;
                    }
                    _ if started.elapsed() > Duration::from_secs(30) => {
                        let _ = replica.child.kill();
                        panic!("{} did not stop within 30 s of SIGTERM", replica.service);
                    }
                    _ => tokio::time::sleep(Duration::from_millis(50)).await,
                }
            }
        }
        self.vendor_stop.cancel();
    }

    async fn finish(mut self) {
        self.stop().await;
        self.bus.delete_streams().await;
        self.pool.close().await;
        let _ = renewal_platform::postgres::drop_database(&self.db).await;
        let _ = std::fs::remove_dir_all(&self.state);
        let _ = &self.name;
    }
}

impl Drop for Deployment {
    fn drop(&mut self) {
        for replica in &mut self.replicas {
            let _ = replica.child.kill();
            let _ = replica.child.wait();
        }
    }
}

async fn eventually<F, Fut>(what: &str, seconds: u64, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let started = Instant::now();
    while !check().await {
        assert!(
            started.elapsed() < Duration::from_secs(seconds),
            "{what}: not within {seconds} s"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A Shanghai policy expiring `days` from today, with a mobile of its own (the
/// frequency cap counts per customer).
fn expiring(no: &str, n: usize, days: i64) -> Policy {
    let today = renewal_platform::local_date(chrono::Utc::now(), TZ);
    let end = today + chrono::Duration::days(days);
    let mut p = policy(no, &end.to_string());
    p.mobile = format!("+86139{n:08}");
    p
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_of_every_service_share_the_work_with_no_duplicate_effect() {
    const LISTED: usize = 60;
    const LATE: usize = 120;
    let system = Deployment::start("so", 2, None).await;
    let lists = system.of("lists");
    let assignment = system.of("assignment");
    let dispatch = system.of("dispatch");
    let response = system
        .http
        .post(format!("{}/v1/org:import", assignment[0].base))
        .body(ORG_CSV)
        .send()
        .await
        .expect("org import answers");
    assert_eq!(response.status().as_u16(), 200);

    // Policies 75 days from expiry go on their branch's list; policies two days from
    // expiry get the plan's catch-up contacts (a call and an SMS) a minute after opening.
    let mut policies: Vec<Policy> = (0..LISTED)
        .map(|i| expiring(&format!("PL{i:04}"), i, 75))
        .collect();
    policies.extend((0..LATE).map(|i| expiring(&format!("PC{i:04}"), LISTED + i, 2)));
    // The core system quoted the late policies already: their cases open inside T-65
    // with their terms, and no city task to get a quote.
    for i in 0..LATE {
        let quote = renewal_contract::core::QuoteIssued {
            quote_id: format!("QC{i:04}"),
            policy_no: format!("PC{i:04}"),
            premium_fen: 400_000,
            last_premium_fen: 420_000,
            claim_free_years: 1,
            ncd_level: -1,
            compulsory_fen: 95_000,
            commercial_fen: 305_000,
            valid_until: "2030-01-01".into(),
            promotion: String::new(),
            issued_at_ms: 1_000,
        };
        system
            .bus
            .send(
                subject::CORE_QUOTE_ISSUED,
                &format!("quote:QC{i:04}"),
                None,
                prost::Message::encode_to_vec(&quote),
            )
            .await
            .expect("published")
            .await
            .expect("acknowledged");
    }
    eventually("every late policy quoted", 60, || async {
        system.count("SELECT count(*) FROM lists.quotes").await == LATE as i64
    })
    .await;
    system.publish(&policies, None).await;
    let all = (LISTED + LATE) as i64;
    eventually("every policy a case in lists", 60, || async {
        system.count("SELECT count(*) FROM lists.cases").await == all
    })
    .await;
    eventually(
        "every case known to assignment and scheduler",
        60,
        || async {
            system.count("SELECT count(*) FROM assignment.cases").await == all
                && system.count("SELECT count(*) FROM scheduler.cases").await == all
        },
    )
    .await;

    // The list issued through one lists replica; the claims opened by the two
    // assignment replicas; each case claimed through both at once: one winner.
    let (status, body) = system
        .post(
            &lists[1].base,
            "/v1/lists:issue",
            json!({"city_code": "310000"}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    eventually("every listed case a claim of its branch", 60, || async {
        system
            .count("SELECT count(*) FROM assignment.cases WHERE phase = 'branch'")
            .await
            == LISTED as i64
    })
    .await;
    let mut claims = tokio::task::JoinSet::new();
    for i in 0..LISTED {
        for (r, owner) in [(0, "SH01-A01"), (1, "SH01-A02")] {
            let (http, base) = (system.http.clone(), assignment[r].base.clone());
            claims.spawn(async move {
                let response = http
                    .post(format!("{base}/v1/claims/PL{i:04}:claim"))
                    .json(&json!({"branch_code": "SH01", "owner_agent": owner}))
                    .send()
                    .await
                    .expect("claim answers");
                (i, response.status().as_u16())
            });
        }
    }
    let mut wins: HashMap<usize, usize> = HashMap::new();
    while let Some(joined) = claims.join_next().await {
        let (i, status) = joined.expect("claim task");
        assert!(matches!(status, 200 | 409), "claim answered {status}");
        if status == 200 {
            *wins.entry(i).or_default() += 1;
        }
    }
    assert!(
        wins.len() == LISTED && wins.values().all(|w| *w == 1),
        "one winner per case: {wins:?}"
    );
    assert_eq!(
        system
            .count(
                "SELECT count(*) FROM assignment.owner_history h JOIN assignment.cases c USING (case_id)
                 WHERE c.policy_no LIKE 'PL%'"
            )
            .await,
        LISTED as i64,
        "one owner change per claimed case"
    );

    // The late cases' catch-ups: each timer fired once, each SMS sent to the vendor once
    // and given its receipt, each call a phone task.
    eventually("every catch-up fired", 150, || async {
        system
            .count("SELECT count(*) FROM scheduler.timers WHERE stage LIKE 'catch-up%' AND state = 'fired'")
            .await
            == 2 * LATE as i64
    })
    .await;
    eventually("every SMS delivered or failed by its receipt", 60, || async {
        system
            .count("SELECT count(*) FROM dispatch.sms_messages WHERE state IN ('delivered', 'failed')")
            .await
            == LATE as i64
    })
    .await;
    assert_eq!(
        system
            .count("SELECT count(*) FROM demo.vendor_messages")
            .await,
        LATE as i64,
        "each SMS reached the vendor once"
    );
    assert_eq!(
        system
            .count("SELECT count(*) - count(DISTINCT out_id) FROM demo.vendor_messages")
            .await,
        0
    );
    eventually("every catch-up call a phone task", 60, || async {
        system
            .count("SELECT count(*) FROM dispatch.phone_tasks")
            .await
            == LATE as i64
    })
    .await;

    // Sixteen agents pull the tasks through both dispatch replicas at once: each task
    // leased by one of them only, then completed.
    let queues: Vec<(String, Option<String>)> =
        sqlx::query_as("SELECT DISTINCT queue, owner_agent FROM dispatch.phone_tasks")
            .fetch_all(&system.pool)
            .await
            .expect("queues");
    let leased = Arc::new(Mutex::new(Vec::<String>::new()));
    let mut agents = tokio::task::JoinSet::new();
    for a in 0..16 {
        let (http, base) = (system.http.clone(), dispatch[a % 2].base.clone());
        let (queues, leased) = (queues.clone(), leased.clone());
        agents.spawn(async move {
            loop {
                let mut got = 0;
                for (queue, owner) in &queues {
                    let agent = owner.clone().unwrap_or_else(|| format!("CC-{a:03}"));
                    let agent = if agent.is_empty() {
                        format!("CC-{a:03}")
                    } else {
                        agent
                    };
                    let response = http
                        .post(format!("{base}/v1/phone-tasks:lease"))
                        .json(&json!({"agent_id": agent, "queue": queue, "max": 5, "lease_seconds": 300}))
                        .send()
                        .await
                        .expect("lease answers");
                    assert_eq!(response.status().as_u16(), 200);
                    let body: Value = response.json().await.expect("lease body");
                    for task in body["tasks"].as_array().cloned().unwrap_or_default() {
                        got += 1;
                        let id = task["id"].as_str().expect("task id").to_owned();
                        leased.lock().expect("lock").push(id.clone());
                        let done = http
                            .post(format!("{base}/v1/phone-tasks/{id}:complete"))
                            .json(&json!({"lease_token": task["lease_token"], "outcome": "unreachable"}))
                            .send()
                            .await
                            .expect("complete answers");
                        assert_eq!(done.status().as_u16(), 200);
                    }
                }
                if got == 0 {
                    return;
                }
            }
        });
    }
    while let Some(done) = agents.join_next().await {
        done.expect("agent");
    }
    let leased = leased.lock().expect("lock").clone();
    let distinct: HashSet<&String> = leased.iter().collect();
    assert_eq!(
        (leased.len(), distinct.len()),
        (LATE, LATE),
        "every task leased, none twice"
    );
    assert_eq!(
        system
            .count(
                "SELECT count(*) FROM dispatch.phone_tasks WHERE state = 'completed' AND leases = 1"
            )
            .await,
        LATE as i64
    );

    // The work was shared: every replica took in messages of its own.
    for replica in &system.replicas {
        let taken = system.messages_in(replica).await;
        eprintln!(
            "{} at {}: {taken} messages in",
            replica.service, replica.base
        );
        assert!(
            taken > 0.0,
            "{} at {} took in no message",
            replica.service,
            replica.base
        );
    }
    // Each timer counted once between the two schedulers, and none left due.
    let mut fired = 0.0;
    for replica in system.of("scheduler") {
        fired += system.metric(replica, "timers_fired_total").await;
        assert_eq!(system.metric(replica, "timers_due").await, 0.0);
    }
    assert_eq!(
        fired,
        (2 * LATE) as f64,
        "timers fired, by the schedulers' metrics"
    );
    system.finish().await;
}

/// A minimal OTLP/HTTP collector keeping every span it is sent: (service, trace id, name).
async fn collector() -> (String, Arc<Mutex<Vec<(String, String, String)>>>) {
    use axum::routing::post;
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use prost::Message;
    let spans = Arc::new(Mutex::new(Vec::new()));
    let kept = spans.clone();
    let app = axum::Router::new().route(
        "/v1/traces",
        post(move |body: axum::body::Bytes| {
            let kept = kept.clone();
            async move {
                let request = ExportTraceServiceRequest::decode(body.as_ref())
                    .expect("an OTLP protobuf export");
                let mut kept = kept.lock().expect("lock");
                for resource in request.resource_spans {
                    let service = resource
                        .resource
                        .iter()
                        .flat_map(|r| r.attributes.iter())
                        .find(|a| a.key == "service.name")
                        .and_then(|a| a.value.as_ref())
                        .and_then(|v| match &v.value {
                            Some(opentelemetry_proto::tonic::common::v1::any_value::Value::StringValue(s)) => Some(s.clone()),
                            _ => None,
                        })
                        .unwrap_or_default();
                    for scope in resource.scope_spans {
                        for span in scope.spans {
                            let trace: String =
                                span.trace_id.iter().map(|b| format!("{b:02x}")).collect();
                            kept.push((service.clone(), trace, span.name));
                        }
                    }
                }
                ""
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (format!("http://{addr}"), spans)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_trace_follows_a_policy_through_all_four_services_to_its_sms_receipt() {
    let (endpoint, spans) = collector().await;
    let mut system = Deployment::start("tr", 1, Some(&endpoint)).await;
    let trace_id = uuid::Uuid::new_v4().simple().to_string();
    let traceparent = format!(
        "00-{trace_id}-{}-01",
        &uuid::Uuid::new_v4().simple().to_string()[..16]
    );
    system
        .publish(&[expiring("PT0001", 1, 2)], Some(&traceparent))
        .await;
    eventually("the catch-up SMS has its receipt", 150, || async {
        system
            .count(
                "SELECT count(*) FROM dispatch.sms_messages WHERE state IN ('delivered', 'failed')",
            )
            .await
            == 1
    })
    .await;
    // Stopped, each process flushes its spans.
    system.stop().await;
    let in_trace: Vec<(String, String, String)> = spans
        .lock()
        .expect("lock")
        .iter()
        .filter(|(_, trace, _)| *trace == trace_id)
        .cloned()
        .collect();
    let services: HashSet<&str> = in_trace.iter().map(|(s, _, _)| s.as_str()).collect();
    for service in SERVICES {
        assert!(
            services.contains(service),
            "{service} has no span in trace {trace_id}: {in_trace:?}"
        );
    }
    assert!(
        in_trace
            .iter()
            .any(|(s, _, name)| s == "dispatch" && name == "sms_receipt"),
        "the SMS receipt is in the trace: {in_trace:?}"
    );
    system.finish().await;
}
