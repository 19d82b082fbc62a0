//! NATS in transit, as production runs it: each test starts a nats-server of its own on
//! a free loopback port, with TLS (the local CA of `deploy/local/stack.sh` in
//! `$RENEWAL_TLS_DIR`, or one made here with openssl) and the users `renewal
//! nats-config` generates from proto/SUBJECTS.md. It shows that the server takes no
//! plain text and no wrong password, that a service's credential publishes exactly its
//! own subjects (the scheduler's `dispatch.cmd.send_sms` lands in the stream; the same
//! publish with dispatch's credential is refused and lands nowhere), and that the
//! `renewal` process runs a policy through lists, assignment and the scheduler under
//! its credential over TLS; and that only the operators' `admin` drops streams.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::jetstream;
use renewal_contract::{Stream, Subjects, subject};
use renewal_e2e::{database_url, renewal_binary, unique};
use renewal_platform::bus::{self, BusError, NatsAccess, NatsUser};
use secrecy::{ExposeSecret, SecretString};

/// A nats-server of this test's own, killed (and its store removed) when dropped.
struct PrivateNats {
    child: Child,
    dir: PathBuf,
    port: u16,
    ca: PathBuf,
    prefix: String,
}

impl Drop for PrivateNats {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl PrivateNats {
    /// Starts the server with TLS and the generated users for a fresh prefix.
    fn start(tag: &str) -> PrivateNats {
        let prefix = unique(tag);
        let dir = std::env::temp_dir().join(format!("renewal-nats-{prefix}"));
        std::fs::create_dir_all(&dir).expect("a folder for the server");
        let (ca, cert, key) = tls_material(&dir);
        let port = free_port();
        let generated = Command::new(renewal_binary())
            .args(["nats-config", "--prefix", &prefix, "--passwords"])
            .arg(dir.join("users"))
            .arg("--tls-cert")
            .arg(&cert)
            .arg("--tls-key")
            .arg(&key)
            .output()
            .expect("renewal nats-config runs");
        assert!(
            generated.status.success(),
            "renewal nats-config: {}",
            String::from_utf8_lossy(&generated.stderr)
        );
        let conf = dir.join("nats.conf");
        let text = format!(
            "listen: 127.0.0.1:{port}\nlog_file: \"{log}\"\njetstream {{\n  store_dir: \"{store}\"\n}}\n{users}",
            log = dir.join("nats.log").display(),
            store = dir.join("js").display(),
            users = String::from_utf8_lossy(&generated.stdout),
        );
        std::fs::write(&conf, text).expect("the server's configuration");
        let child = Command::new(nats_server())
            .arg("-c")
            .arg(&conf)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nats-server starts");
        let mut server = PrivateNats {
            child,
            dir,
            port,
            ca,
            prefix,
        };
        let started = Instant::now();
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Ok(Some(status)) = server.child.try_wait() {
                panic!("nats-server exited with {status}: {}", server.log());
            }
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "nats-server listens within 10 s: {}",
                server.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        server
    }

    fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("nats.log")).unwrap_or_default()
    }

    fn password(&self, user: &str) -> String {
        std::fs::read_to_string(self.dir.join("users").join(user))
            .expect("the generated password")
            .trim()
            .to_owned()
    }

    fn access(&self, user: &str) -> NatsAccess {
        self.access_with(user, &self.password(user))
    }

    fn access_with(&self, user: &str, password: &str) -> NatsAccess {
        NatsAccess {
            ca: Some(self.ca.clone()),
            user: Some(NatsUser {
                name: user.to_owned(),
                password: SecretString::from(password.to_owned()),
            }),
        }
    }

    fn subjects(&self) -> Subjects {
        Subjects::new(&self.prefix).expect("prefix")
    }

    /// The bus as `user` would have it in a service.
    async fn bus(&self, user: &str) -> bus::Bus {
        let cancel = tokio_util::sync::CancellationToken::new();
        let stop = cancel.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(15)).await;
            stop.cancel();
        });
        bus::Bus::connect_with(
            &self.url(),
            &self.access(user),
            self.subjects(),
            1,
            user,
            &cancel,
        )
        .await
        .unwrap_or_else(|e| panic!("{user} connects over TLS: {e}"))
    }

    /// A client as `user`, and the errors the server sends it (permission violations).
    async fn client_seeing_errors(
        &self,
        user: &str,
    ) -> (async_nats::Client, Arc<Mutex<Vec<String>>>) {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let sink = seen.clone();
        let client = self
            .access(user)
            .options(user)
            .event_callback(move |event| {
                let sink = sink.clone();
                async move {
                    if let async_nats::Event::ServerError(e) = event {
                        sink.lock().expect("lock").push(e.to_string());
                    }
                }
            })
            .connect(self.url())
            .await
            .unwrap_or_else(|e| panic!("{user} connects over TLS: {e}"));
        (client, seen)
    }
}

fn nats_server() -> PathBuf {
    if let Ok(bin) = std::env::var("NATS_SERVER_BIN") {
        return bin.into();
    }
    let on_path = std::env::var_os("PATH")
        .map(|p| {
            std::env::split_paths(&p)
                .map(|d| d.join("nats-server"))
                .find(|b| b.exists())
        })
        .unwrap_or_default();
    let bin = on_path.unwrap_or_else(|| PathBuf::from("/usr/sbin/nats-server"));
    assert!(
        bin.exists(),
        "nats-server is missing: deploy/local/test installs it (apt-get install nats-server), or set NATS_SERVER_BIN"
    );
    bin
}

/// The local CA and server certificate: `$RENEWAL_TLS_DIR` (deploy/local/stack.sh makes
/// it) when it has them, else a CA and certificate for 127.0.0.1 made here.
fn tls_material(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    if let Ok(tls) = std::env::var("RENEWAL_TLS_DIR") {
        let tls = PathBuf::from(tls);
        let files = ["ca.crt", "server.crt", "server.key"].map(|f| tls.join(f));
        if files.iter().all(|f| f.exists()) {
            let [ca, cert, key] = files;
            return (ca, cert, key);
        }
    }
    let run = |args: &[&str]| {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .expect("openssl runs (apt-get install openssl)");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    run(&[
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-days",
        "2",
        "-subj",
        "/CN=renewal test CA",
        "-keyout",
        "ca.key",
        "-out",
        "ca.crt",
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign",
    ]);
    run(&[
        "req",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-subj",
        "/CN=localhost",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
    ]);
    std::fs::write(
        dir.join("server.ext"),
        "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n",
    )
    .expect("extensions");
    run(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.crt",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "2",
        "-extfile",
        "server.ext",
        "-out",
        "server.crt",
    ]);
    (
        dir.join("ca.crt"),
        dir.join("server.crt"),
        dir.join("server.key"),
    )
}

fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
    listener.local_addr().expect("addr").port()
}

#[tokio::test]
async fn a_plain_text_connection_is_refused() {
    let nats = PrivateNats::start("pt");
    // A client speaking the protocol in plain text, with a valid user and password.
    let mut socket = TcpStream::connect(("127.0.0.1", nats.port)).expect("the port answers");
    socket
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let mut info = String::new();
    BufReader::new(socket.try_clone().expect("clone"))
        .read_line(&mut info)
        .expect("INFO");
    assert!(info.starts_with("INFO "), "{info}");
    assert!(
        info.contains("\"tls_required\":true"),
        "the server demands TLS: {info}"
    );
    let connect = format!(
        "CONNECT {{\"verbose\":false,\"pedantic\":false,\"tls_required\":false,\"user\":\"lists\",\"pass\":\"{}\"}}\r\nPING\r\n",
        nats.password("lists")
    );
    let _ = socket.write_all(connect.as_bytes());
    let mut answer = Vec::new();
    let _ = socket.read_to_end(&mut answer);
    let answer = String::from_utf8_lossy(&answer);
    assert!(
        !answer.contains("PONG"),
        "no plain-text session: {answer:?}"
    );

    // The client without the CA: the server's certificate is not trusted.
    let without_ca = NatsAccess {
        ca: None,
        ..nats.access("lists")
    };
    match bus::connect_once(&nats.url(), &without_ca, "no-ca").await {
        Err(BusError::Refused { source, .. }) => assert!(
            source.to_string().contains("invalid peer certificate"),
            "{source}"
        ),
        Err(e) => panic!("refused for TLS, not {e}"),
        Ok(_) => panic!("a client that cannot verify the server must not connect"),
    }
    // With the CA it connects: the refusals above are about TLS, not the server.
    bus::connect_once(&nats.url(), &nats.access("lists"), "ok")
        .await
        .expect("lists connects over TLS");
}

#[tokio::test]
async fn a_wrong_password_or_an_unknown_user_is_refused() {
    let nats = PrivateNats::start("pw");
    for access in [
        nats.access_with("scheduler", "not-the-password"),
        nats.access_with("scheduler", &nats.password("dispatch")),
        nats.access_with("mallory", &nats.password("scheduler")),
    ] {
        let who = access
            .user
            .as_ref()
            .map(|u| u.name.clone())
            .unwrap_or_default();
        match bus::connect_once(&nats.url(), &access, "wrong").await {
            Err(BusError::Refused { source, .. }) => assert_eq!(
                source.kind(),
                async_nats::ConnectErrorKind::AuthorizationViolation,
                "{who}: {source}"
            ),
            Err(e) => panic!("{who}: refused as unauthorized, not {e}"),
            Ok(_) => panic!("{who} with a wrong password must not connect"),
        }
    }
}

#[tokio::test]
async fn the_admin_user_drops_streams_a_service_may_not() {
    let nats = PrivateNats::start("adm");
    let admin = nats.bus("admin").await;
    admin
        .ensure_all_streams()
        .await
        .expect("admin declares every stream");
    admin
        .publish(
            subject::CORE_POLICY_UPSERTED,
            "P1:1",
            None,
            b"policy".to_vec(),
        )
        .await
        .expect("admin publishes any subject");
    let core = nats.subjects().stream(Stream::Core);
    // A service may not delete a stream: the request is refused, the stream stays.
    let mut lists = nats.bus("lists").await.js;
    lists.set_timeout(Duration::from_secs(2));
    assert!(
        lists.delete_stream(&core).await.is_err(),
        "lists may not delete CORE"
    );
    assert!(
        admin.js.get_stream(&core).await.is_ok(),
        "CORE is still there"
    );
    admin.delete_streams().await;
    assert!(
        admin.js.get_stream(&core).await.is_err(),
        "admin deleted CORE"
    );
}

#[tokio::test]
async fn a_service_cannot_publish_a_command_it_does_not_own() {
    let nats = PrivateNats::start("own");
    let scheduler = nats.bus("scheduler").await;
    scheduler
        .ensure_stream(Stream::Dispatch)
        .await
        .expect("the scheduler declares the stream it commands into");
    let dispatch_stream = nats.subjects().stream(Stream::Dispatch);
    let count = || async {
        let mut stream = scheduler
            .js
            .get_stream(&dispatch_stream)
            .await
            .expect("the stream");
        stream.info().await.expect("stream info").state.messages
    };

    // The scheduler produces dispatch.cmd.send_sms: JetStream acknowledges it.
    scheduler
        .publish(
            subject::DISPATCH_CMD_SEND_SMS,
            "timer-1",
            None,
            b"sms".to_vec(),
        )
        .await
        .expect("the scheduler's command is acknowledged");
    assert_eq!(count().await, 1);

    // Dispatch executes it but does not produce it: the server refuses the publish.
    let wire = nats.subjects().subject(subject::DISPATCH_CMD_SEND_SMS);
    let (client, errors) = nats.client_seeing_errors("dispatch").await;
    let mut js = jetstream::new(client.clone());
    js.set_timeout(Duration::from_secs(2));
    let refused = async {
        js.publish(wire.clone(), "forged".into()).await?.await?;
        Ok::<_, async_nats::Error>(())
    }
    .await;
    assert!(
        refused.is_err(),
        "dispatch's forged command is not acknowledged"
    );
    let violation = format!("Permissions Violation for Publish to \"{wire}\"");
    let started = Instant::now();
    while !errors
        .lock()
        .expect("lock")
        .iter()
        .any(|e| e.contains(&violation))
    {
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "the server says why: {:?}",
            errors.lock().expect("lock")
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        count().await,
        1,
        "nothing more landed in the DISPATCH stream"
    );
    // Nor can dispatch widen its own consumer to what it does not read (the lists issued).
    let lists_stream = nats.subjects().stream(Stream::Lists);
    scheduler.ensure_stream(Stream::Lists).await.expect("LISTS");
    let widened = async {
        js.get_stream(&lists_stream)
            .await?
            .create_consumer(jetstream::consumer::pull::Config {
                durable_name: Some("dispatch".into()),
                filter_subject: nats.subjects().subject(subject::LISTS_LIST_ISSUED),
                ..Default::default()
            })
            .await?;
        Ok::<_, async_nats::Error>(())
    }
    .await;
    assert!(widened.is_err(), "dispatch may not read lists.list.issued");
    drop(client);

    // Lists does not speak for the core policy system; core does.
    let core_subject = nats.subjects().subject(subject::CORE_POLICY_UPSERTED);
    let lists = nats.bus("lists").await;
    lists
        .ensure_stream(Stream::Core)
        .await
        .expect("lists declares CORE, which it reads");
    let (client, errors) = nats.client_seeing_errors("lists").await;
    let mut js = jetstream::new(client);
    js.set_timeout(Duration::from_secs(2));
    let forged = async {
        js.publish(core_subject.clone(), "forged".into())
            .await?
            .await?;
        Ok::<_, async_nats::Error>(())
    }
    .await;
    assert!(forged.is_err(), "lists cannot publish core.policy.upserted");
    let started = Instant::now();
    while !errors
        .lock()
        .expect("lock")
        .iter()
        .any(|e| e.contains("Permissions Violation"))
    {
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "the server says why"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let core = nats.bus("core").await;
    core.publish(
        subject::CORE_POLICY_UPSERTED,
        "P1:1",
        None,
        b"policy".to_vec(),
    )
    .await
    .expect("the core policy system publishes its facts");
    let mut stream = lists
        .js
        .get_stream(nats.subjects().stream(Stream::Core))
        .await
        .expect("CORE");
    assert_eq!(stream.info().await.expect("info").state.messages, 1);
}

/// Stops the child with SIGTERM (then SIGKILL after 10 s) when dropped.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.0.id().to_string()])
            .status();
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(10) {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test]
async fn the_renewal_process_runs_a_policy_through_under_its_own_credential() {
    renewal_platform::install_crypto_provider();
    let nats = PrivateNats::start("run");
    let name = nats.prefix.clone();
    let db = database_url(&name);
    let admin = format!("127.0.0.1:{}", free_port());
    let log = nats.dir.join("renewal.log");
    let child = Command::new(renewal_binary())
        .arg("run")
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("DATABASE_URL", db.expose_secret())
        .env("NATS_URL", nats.url())
        .env("NATS_CA", &nats.ca)
        .env("NATS_USER", "renewal")
        .env("NATS_PASSWORD", nats.password("renewal"))
        .env("NATS_PREFIX", &name)
        .env("NATS_STREAM_MAX_BYTES", "268435456")
        .env("PII_KEY", renewal::simulation::DEMO_PII_KEY)
        .env("AUTH_DEV", "on")
        .env("RENEWAL_STATE_DIR", nats.dir.join("state"))
        .env("SMS_WEBHOOK_TOKEN", "0123456789abcdef")
        .env("HTTP_ADDR", "127.0.0.1:0")
        .env("ADMIN_ADDR", &admin)
        .env("LOG_FORMAT", "text")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).expect("log file"))
        .spawn()
        .expect("renewal starts");
    let process = Running(child);
    let started = Instant::now();
    loop {
        let ready = reqwest::get(format!("http://{admin}/readyz")).await;
        if let Ok(r) = ready
            && r.status().as_u16() == 200
        {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "renewal becomes ready over TLS as user renewal: {}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // The core policy system (its own credential) sends a policy expiring in 40 days.
    let end = (chrono::Utc::now() + chrono::Duration::days(40))
        .date_naive()
        .to_string();
    let policy = renewal_e2e::policy("TLS1", &end);
    let core = nats.bus("core").await;
    core.publish(
        subject::CORE_POLICY_UPSERTED,
        "TLS1:1",
        None,
        prost::Message::encode_to_vec(&renewal_contract::core::PolicyUpserted {
            policy: Some(policy),
        }),
    )
    .await
    .expect("the policy is published");

    // Lists opens its case; assignment and the scheduler take it from lists' event.
    let pool = renewal_platform::postgres::pool(&db, 2).expect("pool");
    let started = Instant::now();
    loop {
        let mut seen = Vec::new();
        for (table, sql) in [
            (
                "lists",
                "SELECT count(*) FROM lists.cases WHERE policy_no = 'TLS1'",
            ),
            (
                "assignment",
                "SELECT count(*) FROM assignment.cases WHERE policy_no = 'TLS1'",
            ),
            (
                "scheduler",
                "SELECT count(*) FROM scheduler.cases WHERE policy_no = 'TLS1'",
            ),
        ] {
            let n: i64 = sqlx::query_scalar(sql).fetch_one(&pool).await.unwrap_or(0);
            seen.push((table, n));
        }
        if seen.iter().all(|(_, n)| *n == 1) {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the case reaches every service: {seen:?}\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    drop(process);
    pool.close().await;
    // The process never stepped outside its rights (the server logs every violation).
    let server_log = nats.log();
    let refused: Vec<&str> = server_log
        .lines()
        .filter(|l| {
            l.contains("User \"renewal\"") && (l.contains("Violation") || l.contains("Error"))
        })
        .collect();
    assert!(
        refused.is_empty(),
        "the renewal user was refused: {refused:#?}"
    );
    let _ = renewal_platform::postgres::drop_database(&db).await;
}
