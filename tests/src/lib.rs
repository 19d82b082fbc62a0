//! Harness for the end-to-end tests: each test gets its own database and its own NATS
//! subject prefix on the real loopback servers, so tests run in parallel, and drops
//! both when it finishes. Set `TEST_LOG=1` to see the services' logs. Everything that
//! reaches NATS here (the in-process system, the processes the tests start, their
//! clean-up) goes as [`nats_access`] says: over TLS as the local stack's `admin` when
//! `deploy/local/stack.sh` exported it, else in plain text.

use chrono::{DateTime, NaiveDate, NaiveTime, Utc};
use renewal::simulation::{SimAccess, SimOptions, Simulation};
use renewal_contract::core::Policy;
use renewal_platform::Bus;
pub use renewal_platform::Role;
use renewal_platform::bus::NatsAccess;
pub use renewal_platform::dev_issuer::Grant;
use secrecy::SecretString;

pub const TZ: chrono_tz::Tz = chrono_tz::Asia::Shanghai;

/// Where the tests reach Postgres: the server part of the URL (no database) and the
/// query each database's URL ends with.
struct Postgres {
    base: String,
    query: String,
}

/// Postgres for the tests. `TEST_DATABASE_BASE` (a server URL, optionally with a query)
/// when set; else, when the local CA exists (`deploy/local/stack.sh` makes it and gives
/// the local Postgres its certificate), the `renewal` role over TLS, checked with
/// `sslmode=verify-full` against the local CA (the role is refused in plain text, so
/// every test's services, their child processes and `pg_dump` go over TLS); else the
/// `postgres` user in plain text. `RENEWAL_POSTGRES_TLS=off` (what the script exports
/// when it could not configure Postgres) keeps plain text beside a CA.
fn postgres() -> &'static Postgres {
    static POSTGRES: std::sync::OnceLock<Postgres> = std::sync::OnceLock::new();
    POSTGRES.get_or_init(|| {
        if let Ok(url) = std::env::var("TEST_DATABASE_BASE") {
            let (base, query) = match url.split_once('?') {
                Some((base, query)) => (base.to_owned(), format!("?{query}")),
                None => (url, String::new()),
            };
            return Postgres { base, query };
        }
        let tls = std::env::var("RENEWAL_POSTGRES_TLS").unwrap_or_default();
        match local_ca() {
            Some(ca) if tls != "off" => Postgres {
                base: "postgres://renewal@127.0.0.1:5432".into(),
                query: format!("?sslmode=verify-full&sslrootcert={}", url_path(&ca)),
            },
            _ => {
                assert_ne!(
                    tls,
                    "on",
                    "RENEWAL_POSTGRES_TLS=on but the local CA is missing in {}",
                    local_tls_dir().display()
                );
                Postgres {
                    base: "postgres://postgres@127.0.0.1:5432".into(),
                    query: String::new(),
                }
            }
        }
    })
}

/// The local CA's folder: `RENEWAL_TLS_DIR` (exported by `deploy/local/stack.sh`), else
/// `tls` in the state folder, as the script makes it.
pub fn local_tls_dir() -> std::path::PathBuf {
    if let Some(dir) = std::env::var_os("RENEWAL_TLS_DIR") {
        return dir.into();
    }
    let state = match std::env::var_os("RENEWAL_STATE_DIR") {
        Some(dir) => std::path::PathBuf::from(dir),
        None => match std::env::var_os("XDG_STATE_HOME") {
            Some(dir) => std::path::PathBuf::from(dir).join("renewal"),
            None => std::path::PathBuf::from(std::env::var_os("HOME").unwrap_or_default())
                .join(".local/state/renewal"),
        },
    };
    state.join("tls")
}

/// The local CA's certificate, if the local stack made one.
pub fn local_ca() -> Option<std::path::PathBuf> {
    let ca = local_tls_dir().join("ca.crt");
    ca.is_file().then_some(ca)
}

/// A file path as a URL query value (sqlx and libpq decode it).
pub fn url_path(path: &std::path::Path) -> String {
    let mut out = String::new();
    for b in path.to_string_lossy().bytes() {
        if b.is_ascii_alphanumeric() || b"/-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The server part of the tests' Postgres URL (no database, no query).
pub fn postgres_base() -> String {
    postgres().base.clone()
}

/// Whether the tests reach Postgres over TLS (as the TLS-only `renewal` role).
pub fn postgres_over_tls() -> bool {
    postgres().query.contains("sslmode=verify")
}

/// The tests' NATS: `NATS_URL`, else the loopback server in plain text.
/// `deploy/local/stack.sh` (`ensure_nats_tls`) points it at the local stack's TLS
/// server (`tls://127.0.0.1:4223`) and exports [`nats_access`]'s variables beside it.
pub fn nats_url() -> String {
    std::env::var("NATS_URL")
        .ok()
        .filter(|u| !u.trim().is_empty())
        .unwrap_or_else(|| renewal_platform::config::DEFAULT_NATS_URL.into())
}

/// How the tests reach NATS, read from the environment as the services read it:
/// `NATS_CA` (TLS verified against it) and `NATS_USER`, `NATS_PASSWORD` (the local
/// stack's `admin`, which may use any subject prefix and drop streams); plain text
/// without a user when they are unset. `RENEWAL_NATS_TLS=on` (what the script exports
/// when its TLS server is up) with no `NATS_CA` is a mistake, and said so.
pub fn nats_access() -> NatsAccess {
    static ACCESS: std::sync::OnceLock<NatsAccess> = std::sync::OnceLock::new();
    ACCESS
        .get_or_init(|| {
            let access =
                renewal_platform::config::nats_access(&renewal_platform::config::Env::process())
                    .unwrap_or_else(|e| panic!("the tests' NATS access: {e}"));
            assert!(
                access.ca.is_some()
                    || std::env::var("RENEWAL_NATS_TLS").unwrap_or_default() != "on",
                "RENEWAL_NATS_TLS=on but NATS_CA is not set"
            );
            access
        })
        .clone()
}

/// The variables a child process (`renewal`, `renewal-<service>`) needs to reach the
/// tests' NATS as the tests do: `NATS_URL`, and `NATS_CA`, `NATS_USER`,
/// `NATS_PASSWORD` where set. For `Command::envs`, after `env_clear`.
pub fn nats_env() -> Vec<(&'static str, String)> {
    use secrecy::ExposeSecret;
    let access = nats_access();
    let mut env = vec![("NATS_URL", nats_url())];
    if let Some(ca) = &access.ca {
        env.push(("NATS_CA", ca.display().to_string()));
    }
    if let Some(user) = &access.user {
        env.push(("NATS_USER", user.name.clone()));
        env.push(("NATS_PASSWORD", user.password.expose_secret().to_owned()));
    }
    env
}

/// A bus for subject prefix `prefix` on the tests' NATS (waiting for it, as a service
/// does, until it answers).
pub async fn nats_bus(prefix: &str) -> Bus {
    let subjects = renewal_contract::Subjects::new(prefix).expect("a valid prefix");
    let cancel = tokio_util::sync::CancellationToken::new();
    let stop = cancel.clone();
    let timer = tokio::spawn(async move {
        tokio::time::sleep(std::time::Duration::from_secs(30)).await;
        stop.cancel();
    });
    let bus = Bus::connect_with(&nats_url(), &nats_access(), subjects, 1, "test", &cancel)
        .await
        .unwrap_or_else(|e| panic!("the tests' NATS answers within 30 s: {e}"));
    timer.abort();
    bus
}

/// How the in-process system reaches NATS: the tests' access for everything (their
/// user plays the core policy system and drops the streams too).
pub fn sim_access() -> SimAccess {
    SimAccess {
        services: nats_access(),
        core: None,
        admin: None,
    }
}

/// [`Simulation::start_with`] on the tests' NATS.
pub async fn start_simulation(
    options: SimOptions,
    resume_at: Option<DateTime<Utc>>,
) -> Result<Simulation, renewal::simulation::SimError> {
    Simulation::start_with(options, resume_at, &sim_access()).await
}

/// A unique name for this test's database and subject prefix.
pub fn unique(tag: &str) -> String {
    format!(
        "t{}{}",
        tag,
        &uuid::Uuid::new_v4().simple().to_string()[..10]
    )
}

pub fn database_url(name: &str) -> SecretString {
    let pg = postgres();
    SecretString::from(format!("{}/renewal_{name}{}", pg.base, pg.query))
}

pub fn local(date: &str, hour: u32) -> DateTime<Utc> {
    let date = NaiveDate::parse_from_str(date, "%Y-%m-%d").expect("YYYY-MM-DD");
    renewal_platform::local_instant(date, NaiveTime::from_hms_opt(hour, 0, 0).expect("hour"), TZ)
}

/// Tracing for the test process: traces always (they are asserted on), logs only with
/// `TEST_LOG`.
pub fn init_logs() {
    let filter = if std::env::var("TEST_LOG").is_ok() {
        "info,sqlx=warn"
    } else {
        "off"
    };
    let _ = renewal_platform::telemetry::init("renewal-test", filter);
}

/// The whole system on a simulated clock, in a database and subject prefix of its own.
pub struct TestSystem {
    pub sim: Simulation,
    pub name: String,
    /// A client carrying HQ's token (every route admits `hq_admin`); tests of who may
    /// call what use [`TestSystem::client`] with the role they need.
    pub http: reqwest::Client,
}

impl TestSystem {
    pub async fn start(tag: &str, at: DateTime<Utc>) -> TestSystem {
        Self::start_with_deliveries(tag, at, renewal::simulation::MAX_DELIVERIES).await
    }

    /// A system whose consumers give a message up after `max_deliveries` (a poison
    /// test waits 1 + 2 + 4 + 8 s for 5, where the default 10 takes four minutes).
    pub async fn start_with_deliveries(
        tag: &str,
        at: DateTime<Utc>,
        max_deliveries: i64,
    ) -> TestSystem {
        init_logs();
        let name = unique(tag);
        let sim = start_simulation(
            SimOptions {
                database_url: database_url(&name),
                pii_keys: secrecy::SecretString::from(renewal::simulation::DEMO_PII_KEY),
                nats_url: nats_url(),
                prefix: name.clone(),
                fresh: true,
                start: at,
                seed: 7,
                time_zone: TZ,
                max_deliveries,
            },
            None,
        )
        .await
        .expect("the system starts against the loopback Postgres and NATS");
        let hq = Grant::role(Role::HqAdmin);
        let http = client_with(&sim.token(&hq).expect("the development issuer signs"));
        TestSystem { sim, name, http }
    }

    /// A client whose requests carry a token for `grant`.
    pub fn client(&self, grant: &Grant) -> reqwest::Client {
        client_with(&self.sim.token(grant).expect("the development issuer signs"))
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.sim.http_addr)
    }

    pub async fn get_json(&self, path: &str) -> (u16, serde_json::Value) {
        let response = self
            .http
            .get(self.url(path))
            .send()
            .await
            .expect("HTTP answers");
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or_default())
    }

    /// The items of a paged list (every page of it), as a JSON array.
    pub async fn get_items(&self, path: &str) -> serde_json::Value {
        let mut items = Vec::new();
        let mut next: Option<String> = None;
        let sep = if path.contains('?') { '&' } else { '?' };
        loop {
            let url = match &next {
                Some(token) => format!("{path}{sep}page_size=2&page_token={token}"),
                None => format!("{path}{sep}page_size=2"),
            };
            let (status, page) = self.get_json(&url).await;
            assert_eq!(status, 200, "{url}: {page}");
            items.extend(page["items"].as_array().cloned().unwrap_or_default());
            match page["next_page_token"].as_str() {
                Some(token) => next = Some(token.to_owned()),
                None => return serde_json::Value::Array(items),
            }
        }
    }

    pub async fn post_json(&self, path: &str, body: serde_json::Value) -> (u16, serde_json::Value) {
        post_json_to(&self.http, &self.url(path), body).await
    }

    /// Loads an organisation CSV through `POST /v1/org:import`.
    pub async fn load_org(&self, csv: &str) -> serde_json::Value {
        let response = self
            .http
            .post(self.url("/v1/org:import"))
            .body(csv.to_owned())
            .send()
            .await
            .expect("HTTP answers");
        let status = response.status().as_u16();
        let body: serde_json::Value = response.json().await.unwrap_or_default();
        assert_eq!(status, 200, "organisation loads: {body}");
        body
    }

    /// Stops the services and drops the database and streams.
    pub async fn finish(self) {
        let bus = self.sim.deps.bus.clone();
        self.sim.stop().await.expect("services stop cleanly");
        bus.delete_streams().await;
        let _ = renewal_platform::postgres::drop_database(&database_url(&self.name)).await;
    }
}

/// The organisation the test policies belong to: Shanghai (310000) branches SH01 and
/// SH02, Beijing (110000) branch BJ01.
pub const ORG_CSV: &str =
    "city_code,branch_code,branch_name,agent_code,agent_name,role,capacity,active
310000,SH01,上海一支,SH01-A01,张伟,agent,10,true
310000,SH01,上海一支,SH01-A02,李娜,agent,10,true
310000,SH01,上海一支,SH01-A03,王强,agent,10,true
310000,SH01,上海一支,SH01-S01,赵敏,supervisor,0,true
310000,SH02,上海二支,SH02-A01,陈静,agent,10,true
310000,SH02,上海二支,SH02-A02,刘洋,agent,10,true
110000,BJ01,北京一支,BJ01-A01,杨光,agent,10,true
";

/// A valid VIN of its own for a policy number (a test's policies are separate
/// vehicles unless it gives two the same VIN).
pub fn vin_for(policy_no: &str) -> String {
    // FNV-1a: a fixed, well-spread serial per number.
    let hash = policy_no.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    let mut vin = *b"LSVAU2180N2000000";
    vin[11..].copy_from_slice(format!("{:06}", hash % 1_000_000).as_bytes());
    vin[8] = renewal_lists::policy_checks::vin_check_digit(&vin);
    String::from_utf8_lossy(&vin).into_owned()
}

/// A policy with plausible data, expiring on `end`.
pub fn policy(no: &str, end: &str) -> Policy {
    let end_date = NaiveDate::parse_from_str(end, "%Y-%m-%d").expect("YYYY-MM-DD");
    Policy {
        policy_no: no.to_owned(),
        version: 1,
        customer_name: "王芳".into(),
        mobile: "+8613812345678".into(),
        id_number: "11010519491231002X".into(),
        plate: "沪AD12345".into(),
        vin: vin_for(no),
        city_code: "310000".into(),
        branch_code: "SH01".into(),
        agent_code: "SH01-A03".into(),
        channel: "dealer".into(),
        category: "insured_last_year".into(),
        start_date: (end_date - chrono::Months::new(12)).to_string(),
        end_date: end.into(),
        premium_fen: 456_700,
        important: false,
        group_policy: false,
        real_data_at_sale: true,
    }
}

/// Renewal-binary path, next to the test executable (`cargo build` puts it there).
pub fn renewal_binary() -> std::path::PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let dir = exe
        .parent()
        .and_then(|p| p.parent())
        .expect("target/<profile>");
    let bin = dir.join("renewal");
    assert!(
        bin.exists(),
        "{} is missing: build it first with `cargo build --bin renewal` (deploy/local/test does)",
        bin.display()
    );
    bin
}

/// Every message published on `subject` so far (read with an ephemeral consumer).
pub async fn events<M: prost::Message + Default>(system: &TestSystem, subject: &str) -> Vec<M> {
    use futures::StreamExt;
    let bus = &system.sim.deps.bus;
    let wire = bus.subjects.subject(subject);
    let stream_name = bus.subjects.stream(
        renewal_contract::Stream::ALL
            .into_iter()
            .find(|s| subject.starts_with(s.namespace()))
            .expect("a known namespace"),
    );
    let stream = bus.js.get_stream(stream_name).await.expect("stream exists");
    let consumer = stream
        .create_consumer(async_nats::jetstream::consumer::pull::Config {
            filter_subject: wire,
            // Read, not consumed: nothing to acknowledge, so no cap on what is in flight.
            ack_policy: async_nats::jetstream::consumer::AckPolicy::None,
            ..Default::default()
        })
        .await
        .expect("ephemeral consumer");
    let mut out = Vec::new();
    loop {
        let before = out.len();
        let mut batch = consumer
            .fetch()
            .max_messages(10_000)
            .expires(std::time::Duration::from_millis(500))
            .messages()
            .await
            .expect("fetch");
        while let Some(Ok(message)) = batch.next().await {
            out.push(M::decode(message.payload.as_ref()).expect("decodes"));
        }
        if out.len() == before {
            return out;
        }
    }
}

/// POSTs `body` as JSON to `url`: the status and the JSON answer (null if none).
pub async fn post_json_to(
    http: &reqwest::Client,
    url: &str,
    body: serde_json::Value,
) -> (u16, serde_json::Value) {
    let response = http
        .post(url)
        .json(&body)
        .send()
        .await
        .expect("HTTP answers");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or_default())
}

/// A client that sends `token` as its bearer token with every request.
pub fn client_with(token: &str) -> reqwest::Client {
    let mut headers = reqwest::header::HeaderMap::new();
    let value = reqwest::header::HeaderValue::from_str(&format!("Bearer {token}"))
        .expect("a token is a header value");
    headers.insert(reqwest::header::AUTHORIZATION, value);
    reqwest::Client::builder()
        .default_headers(headers)
        .build()
        .expect("an HTTP client")
}

/// GETs `url` with `http`: the status and the JSON answer (null if none).
pub async fn get_json_with(http: &reqwest::Client, url: &str) -> (u16, serde_json::Value) {
    let response = http.get(url).send().await.expect("HTTP answers");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or_default())
}

/// Puts `policy_nos.len()` open campaign tasks (T-15, branch SH01) in dispatch's queue
/// directly, each with its contact sealed as dispatch seals it.
pub async fn insert_campaign_tasks(pool: &sqlx::PgPool, policy_nos: &[String], at: DateTime<Utc>) {
    let pii = renewal_platform::pii::PiiCipher::for_service(
        &SecretString::from(renewal::simulation::DEMO_PII_KEY),
        "dispatch",
    )
    .expect("the demo key");
    let contact = renewal_dispatch::sealed::TaskContact {
        customer_name: "王芳".into(),
        mobile: "+8613812345678".into(),
        plate: "沪AD12345".into(),
    };
    let ids: Vec<uuid::Uuid> = policy_nos.iter().map(|_| uuid::Uuid::new_v4()).collect();
    let sealed: Vec<Vec<u8>> = ids
        .iter()
        .map(|id| renewal_dispatch::sealed::seal_task(&pii, &id.to_string(), &contact))
        .collect::<Result<_, _>>()
        .expect("seals");
    sqlx::query(
        "INSERT INTO dispatch.phone_tasks (id, case_id, policy_no, stage, queue, branch_code, city_code,
             contact_enc, expiry_date, time_zone, days_to_expiry, available_at, created_at)
         SELECT u.id, gen_random_uuid(), u.policy_no, 'T-15', 'campaign', 'SH01', '310000',
                u.contact_enc, '2027-02-15', 'Asia/Shanghai', 15, $4, $4
         FROM unnest($1::uuid[], $2::text[], $3::bytea[]) AS u(id, policy_no, contact_enc)",
    )
    .bind(&ids)
    .bind(policy_nos)
    .bind(&sealed)
    .bind(at)
    .execute(pool)
    .await
    .expect("campaign tasks");
}
pub mod browser;

/// A marketing SMS command for `mobile` (empty: dispatch fills in the case's), due now,
/// for a case of its own.
pub fn send_sms(mobile: &str) -> renewal_contract::scheduler::SendSms {
    renewal_contract::scheduler::SendSms {
        command_id: uuid::Uuid::new_v4().to_string(),
        case_id: uuid::Uuid::new_v4().to_string(),
        policy_no: format!("P{}", &uuid::Uuid::new_v4().simple().to_string()[..10]),
        stage: "T-60".into(),
        template: "renewal_friendly".into(),
        mobile: mobile.into(),
        customer_name: "王芳".into(),
        plate: "沪AD12345".into(),
        expiry_date: "2027-01-31".into(),
        time_zone: "Asia/Shanghai".into(),
        marketing: true,
        due_at_ms: 0,
    }
}

/// Publishes an SMS command as the scheduler would, and lets the system settle.
pub async fn queue_sms(system: &TestSystem, command: &renewal_contract::scheduler::SendSms) {
    system
        .sim
        .deps
        .bus
        .publish(
            renewal_contract::subject::DISPATCH_CMD_SEND_SMS,
            &command.command_id,
            None,
            prost::Message::encode_to_vec(command),
        )
        .await
        .expect("published");
    system.sim.settle().await.expect("settles");
}
