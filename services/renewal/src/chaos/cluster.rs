//! The system as production runs it, on this machine: a three-node NATS JetStream
//! cluster, a Postgres cluster of its own (stopped and started with `pg_ctlcluster`),
//! two processes of every service, and the mock SMS vendor as a process of its own.
//! Every process is a child of the chaos run, on fixed loopback ports (so a restarted
//! one is found where it was), logging to a file of its own.
//!
//! Signals go through `kill(1)`: the workspace keeps no crate for raw signals, and the
//! nemesis needs only a handful of them.

use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::ChaosError;

pub const SERVICES: [&str; 4] = ["lists", "assignment", "scheduler", "dispatch"];
pub const WEBHOOK_TOKEN: &str = "chaos0webhook0token0123456";

/// Where everything of one run lives and listens.
#[derive(Debug, Clone)]
pub struct Layout {
    pub dir: PathBuf,
    pub bin_dir: PathBuf,
    pub nats_server: PathBuf,
    /// `pg_ctlcluster` version and name, e.g. `15` and `chaos`.
    pub pg_version: String,
    pub pg_name: String,
    pub pg_port: u16,
    pub base_port: u16,
    pub vendor_database_url: String,
    pub sms_hours: String,
}

impl Layout {
    pub fn database_url(&self) -> String {
        format!(
            "postgres://postgres@127.0.0.1:{}/renewal_chaos",
            self.pg_port
        )
    }
    pub fn nats_port(&self, node: usize) -> u16 {
        self.base_port + 1 + node as u16
    }
    fn route_port(&self, node: usize) -> u16 {
        self.base_port + 11 + node as u16
    }
    pub fn nats_urls(&self) -> String {
        (0..3)
            .map(|n| format!("nats://127.0.0.1:{}", self.nats_port(n)))
            .collect::<Vec<_>>()
            .join(",")
    }
    pub fn vendor_addr(&self) -> String {
        format!("127.0.0.1:{}", self.base_port + 20)
    }
    /// The API port of replica `r` of the `s`-th service, and its admin port beside.
    fn api_port(&self, s: usize, r: usize) -> u16 {
        self.base_port + 30 + (s * 2 + r) as u16
    }
    fn admin_port(&self, s: usize, r: usize) -> u16 {
        self.base_port + 50 + (s * 2 + r) as u16
    }
    pub fn state_dir(&self) -> PathBuf {
        self.dir.join("state")
    }
    fn log(&self, name: &str) -> Result<Stdio, ChaosError> {
        let path = self.dir.join("logs").join(format!("{name}.log"));
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|e| ChaosError::Io(path.display().to_string(), e))?;
        Ok(Stdio::from(file))
    }
}

/// One child process the nemesis may hurt: a NATS node, a service replica, the vendor.
pub struct Proc {
    pub name: String,
    pub api: Option<String>,
    pub admin: Option<String>,
    command: Vec<String>,
    env: Vec<(String, String)>,
    child: Option<Child>,
    pub paused: bool,
}

impl Proc {
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn start(&mut self, layout: &Layout) -> Result<(), ChaosError> {
        let mut cmd = Command::new(&self.command[0]);
        cmd.args(&self.command[1..])
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .stdout(layout.log(&self.name)?)
            .stderr(layout.log(&self.name)?);
        let child = cmd
            .spawn()
            .map_err(|e| ChaosError::Io(format!("starting {}", self.command[0]), e))?;
        self.child = Some(child);
        self.paused = false;
        Ok(())
    }

    /// Sends `signal` (KILL, TERM, STOP, CONT) to the process, if it runs.
    pub fn signal(&mut self, signal: &str) {
        if let Some(pid) = self.pid() {
            let _ = Command::new("kill")
                .args([format!("-{signal}"), pid.to_string()])
                .status();
        }
        match signal {
            "STOP" => self.paused = true,
            "CONT" => self.paused = false,
            _ => {}
        }
    }

    /// Whether the process has exited (reaping it).
    pub fn exited(&mut self) -> bool {
        match self.child.as_mut().map(Child::try_wait) {
            Some(Ok(Some(_))) | None => true,
            Some(Ok(None)) => false,
            Some(Err(_)) => true,
        }
    }

    /// Kills it and waits for it to go.
    pub fn kill(&mut self) {
        if self.paused {
            self.signal("CONT");
        }
        if let Some(child) = self.child.as_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
        self.child = None;
    }

    /// Waits up to `grace` for a process told to stop; kills it after that.
    pub async fn wait_exit(&mut self, grace: Duration) -> bool {
        let started = tokio::time::Instant::now();
        while started.elapsed() < grace {
            if self.exited() {
                self.child = None;
                return true;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        self.kill();
        false
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The three NATS nodes, as processes, with fresh stores.
pub fn nats_nodes(layout: &Layout) -> Result<Vec<Proc>, ChaosError> {
    let routes: Vec<String> = (0..3)
        .map(|n| format!("nats-route://127.0.0.1:{}", layout.route_port(n)))
        .collect();
    (0..3)
        .map(|n| {
            let store = layout.dir.join(format!("nats-{n}"));
            let _ = std::fs::remove_dir_all(&store);
            let conf = layout.dir.join(format!("nats-{n}.conf"));
            let text = format!(
                "server_name: n{n}\nlisten: 127.0.0.1:{port}\n\
                 jetstream {{\n  store_dir: \"{store}\"\n  sync_interval: always\n}}\n\
                 cluster {{\n  name: chaos\n  listen: 127.0.0.1:{route}\n  routes: [{routes}]\n}}\n",
                port = layout.nats_port(n),
                store = store.display(),
                route = layout.route_port(n),
                routes = routes.join(", "),
            );
            std::fs::write(&conf, text)
                .map_err(|e| ChaosError::Io(conf.display().to_string(), e))?;
            Ok(Proc {
                name: format!("nats-{n}"),
                api: None,
                admin: None,
                command: vec![
                    layout.nats_server.display().to_string(),
                    "-c".into(),
                    conf.display().to_string(),
                ],
                env: Vec::new(),
                child: None,
                paused: false,
            })
        })
        .collect()
}

/// The settings every service replica shares.
fn service_env(layout: &Layout) -> Vec<(String, String)> {
    let state = layout.state_dir().display().to_string();
    [
        ("DATABASE_URL", layout.database_url()),
        ("DATABASE_MAX_CONNECTIONS", "8".into()),
        ("DATABASE_RESERVED_CONNECTIONS", "4".into()),
        ("NATS_URL", layout.nats_urls()),
        ("NATS_STREAM_REPLICAS", "3".into()),
        ("NATS_STREAM_MAX_BYTES", "268435456".into()),
        ("NATS_PREFIX", "chaos".into()),
        ("AUTH_DEV", "on".into()),
        ("RENEWAL_STATE_DIR", state),
        ("SHUTDOWN_GRACE", "10s".into()),
        ("SMS_VENDOR_TIMEOUT", "5s".into()),
        ("SMS_RECONCILE_AFTER", "5s".into()),
        ("RUST_LOG", "warn,renewal_platform::process=info".into()),
        ("LOG_FORMAT", "json".into()),
        ("PII_KEY", crate::simulation::DEMO_PII_KEY.into()),
        ("SMS_HOURS", layout.sms_hours.clone()),
        ("CALL_HOURS", "00:00-23:59".into()),
        ("SMS_WEBHOOK_TOKEN", WEBHOOK_TOKEN.into()),
        ("SMS_VENDOR_URL", format!("http://{}", layout.vendor_addr())),
        ("SMS_ACCESS_KEY_ID", "demo".into()),
        (
            "SMS_ACCESS_KEY_SECRET",
            crate::vendor_sim::ACCESS_KEY_SECRET.into(),
        ),
        ("SMS_VENDOR_QPS", "2000".into()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect()
}

/// Two replicas of every service.
pub fn service_replicas(layout: &Layout) -> Vec<Proc> {
    let mut procs = Vec::new();
    for (s, service) in SERVICES.iter().enumerate() {
        for r in 0..2 {
            let mut env = service_env(layout);
            let (api, admin) = (layout.api_port(s, r), layout.admin_port(s, r));
            env.push(("HTTP_ADDR".into(), format!("127.0.0.1:{api}")));
            env.push(("ADMIN_ADDR".into(), format!("127.0.0.1:{admin}")));
            procs.push(Proc {
                name: format!("{service}-{r}"),
                api: Some(format!("http://127.0.0.1:{api}")),
                admin: Some(format!("http://127.0.0.1:{admin}")),
                command: vec![
                    layout
                        .bin_dir
                        .join(format!("renewal-{service}"))
                        .display()
                        .to_string(),
                ],
                env,
                child: None,
                paused: false,
            });
        }
    }
    procs
}

/// The mock vendor, pushing its receipts to either dispatch replica.
pub fn vendor(layout: &Layout, dispatch_apis: &[String]) -> Proc {
    let webhooks: Vec<String> = dispatch_apis
        .iter()
        .map(|base| format!("{base}/v1/webhooks/sms/{WEBHOOK_TOKEN}/report"))
        .collect();
    Proc {
        name: "vendor".into(),
        api: Some(format!("http://{}", layout.vendor_addr())),
        admin: None,
        command: vec![
            layout.bin_dir.join("renewal").display().to_string(),
            "vendor".into(),
        ],
        env: [
            ("DATABASE_URL", layout.vendor_database_url.clone()),
            ("VENDOR_ADDR", layout.vendor_addr()),
            ("VENDOR_WEBHOOKS", webhooks.join(",")),
            ("VENDOR_OPT_OUT_PCT", "5".into()),
            ("VENDOR_ANSWER_MS", "50-400".into()),
            ("RUST_LOG", "warn".into()),
            ("LOG_FORMAT", "json".into()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect(),
        child: None,
        paused: false,
    }
}

/// The run's own Postgres cluster: `pg_ctlcluster <version> <name> <action>` (on a
/// blocking thread: stopping and starting take seconds).
pub async fn postgres(layout: &Layout, action: &[&str]) -> Result<(), ChaosError> {
    let (version, name) = (layout.pg_version.clone(), layout.pg_name.clone());
    let action: Vec<String> = action.iter().map(|a| (*a).to_owned()).collect();
    let shown = format!("pg_ctlcluster {version} {name} {}", action.join(" "));
    let status = tokio::task::spawn_blocking(move || {
        Command::new("pg_ctlcluster")
            .arg("--skip-systemctl-redirect")
            .args([&version, &name])
            .args(&action)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
    })
    .await
    .map_err(|e| ChaosError::Postgres(format!("{shown}: {e}")))?
    .map_err(|e| ChaosError::Io("pg_ctlcluster".into(), e))?;
    if status.success() {
        Ok(())
    } else {
        Err(ChaosError::Postgres(format!(
            "{shown} exited with {status}"
        )))
    }
}

/// Creates the folders of a run, emptied of the last one's state.
pub fn prepare(layout: &Layout) -> Result<(), ChaosError> {
    for dir in [layout.dir.join("logs"), layout.state_dir()] {
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).map_err(|e| ChaosError::Io(dir.display().to_string(), e))?;
    }
    Ok(())
}

pub fn path_exists(path: &Path) -> Result<(), ChaosError> {
    if path.exists() {
        Ok(())
    } else {
        Err(ChaosError::Missing(path.display().to_string()))
    }
}
