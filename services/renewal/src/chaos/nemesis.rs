//! The nemesis: every 20-60 s (seeded), one fault, held a while, then healed. The
//! faults are those production meets: a service process killed (`kill -9`, and
//! restarted as Kubernetes would), frozen (SIGSTOP, then SIGCONT) or told to stop under
//! load (SIGTERM, then restarted); Postgres stopped immediately for 5-60 s; a NATS node
//! killed, sometimes the one leading the dispatch stream; the vendor hanging after it
//! took a message, resetting the connection, answering 503, or answering slowly.

use std::time::Duration;

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use serde_json::json;
use tokio_util::sync::CancellationToken;

use super::cluster;
use super::{Cluster, History, Readiness};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Fault {
    ServiceKilled,
    ServicePaused,
    ServiceTerminated,
    PostgresDown,
    NatsNodeKilled,
    NatsLeaderKilled,
    VendorMisbehaves,
}

impl Fault {
    pub const ALL: [Fault; 7] = [
        Fault::ServiceKilled,
        Fault::ServicePaused,
        Fault::ServiceTerminated,
        Fault::PostgresDown,
        Fault::NatsNodeKilled,
        Fault::NatsLeaderKilled,
        Fault::VendorMisbehaves,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Fault::ServiceKilled => "service_killed",
            Fault::ServicePaused => "service_paused",
            Fault::ServiceTerminated => "service_terminated",
            Fault::PostgresDown => "postgres_down",
            Fault::NatsNodeKilled => "nats_node_killed",
            Fault::NatsLeaderKilled => "nats_leader_killed",
            Fault::VendorMisbehaves => "vendor_fault",
        }
    }
}

/// How long between faults, and the longest Postgres stays down.
#[derive(Debug, Clone, Copy)]
pub struct Pace {
    pub gap: (u64, u64),
    pub postgres_down: (u64, u64),
}

/// One fault as it happened.
pub struct Injected {
    pub fault: Fault,
    /// Seconds from the heal until every process answered ready again.
    pub recovered_s: Option<f64>,
    /// Whether the processes that must notice went unready within 10 s (None: none had to).
    pub noticed: Option<bool>,
    /// For SIGTERM: whether the process was gone within its grace (10 s) and a second.
    pub drained: Option<bool>,
}

/// Runs faults until `cancel`, then heals the last one.
pub async fn run(
    cluster: &Cluster,
    pace: Pace,
    seed: u64,
    history: History,
    readiness: Readiness,
    cancel: CancellationToken,
) -> Vec<Injected> {
    let mut rng = SmallRng::seed_from_u64(seed);
    let mut done = Vec::new();
    loop {
        let gap = Duration::from_secs(rng.random_range(pace.gap.0..=pace.gap.1));
        tokio::select! {
            _ = cancel.cancelled() => return done,
            _ = tokio::time::sleep(gap) => {}
        }
        let fault = Fault::ALL[rng.random_range(0..Fault::ALL.len())];
        let injected = inject(cluster, fault, pace, &mut rng, &history, &readiness).await;
        done.push(injected);
    }
}

async fn inject(
    cluster: &Cluster,
    fault: Fault,
    pace: Pace,
    rng: &mut SmallRng,
    history: &History,
    readiness: &Readiness,
) -> Injected {
    let layout = &cluster.layout;
    let mut noticed = None;
    let mut drained = None;
    let target = match fault {
        Fault::ServiceKilled | Fault::ServicePaused | Fault::ServiceTerminated => {
            let i = rng.random_range(0..cluster.services.lock().await.len());
            let name = cluster.services.lock().await[i].name.clone();
            history.write(json!({"event": "fault", "fault": fault.name(), "target": name}));
            let hold = Duration::from_secs(rng.random_range(3..=15));
            let outcome = service_fault(cluster, fault, i, &name, hold, readiness).await;
            (noticed, drained) = (outcome.noticed, outcome.drained);
            name
        }
        Fault::PostgresDown => {
            let hold =
                Duration::from_secs(rng.random_range(pace.postgres_down.0..=pace.postgres_down.1));
            history.write(json!({"event": "fault", "fault": fault.name(), "target": "postgres", "seconds": hold.as_secs()}));
            noticed = postgres_down(cluster, hold, history, readiness).await;
            "postgres".to_owned()
        }
        Fault::NatsNodeKilled | Fault::NatsLeaderKilled => {
            let node = if fault == Fault::NatsLeaderKilled {
                cluster.stream_leader().await.unwrap_or(0)
            } else {
                rng.random_range(0..3)
            };
            let hold = Duration::from_secs(rng.random_range(5..=20));
            history.write(json!({"event": "fault", "fault": fault.name(), "target": format!("nats-{node}"), "seconds": hold.as_secs()}));
            let mut nats = cluster.nats.lock().await;
            nats[node].signal("KILL");
            let _ = nats[node].wait_exit(Duration::from_secs(5)).await;
            drop(nats);
            tokio::time::sleep(hold).await;
            if let Err(e) = cluster.nats.lock().await[node].start(layout) {
                history.write(json!({"event": "nemesis_error", "error": e.to_string()}));
            }
            format!("nats-{node}")
        }
        Fault::VendorMisbehaves => {
            let mode = [
                "accept_then_hang",
                "accept_then_reset",
                "unavailable",
                "slow",
            ][rng.random_range(0..4)];
            let seconds = rng.random_range(10..=40);
            history.write(json!({"event": "fault", "fault": fault.name(), "target": mode, "seconds": seconds}));
            cluster.vendor_mode(mode, seconds).await;
            tokio::time::sleep(Duration::from_secs(seconds)).await;
            mode.to_owned()
        }
    };
    history.write(json!({"event": "heal", "fault": fault.name(), "target": target}));
    let recovered = readiness.all_ready_within(Duration::from_secs(120)).await;
    let recovered_s = recovered.map(|d| d.as_secs_f64());
    history.write(json!({"event": "recovered", "fault": fault.name(), "target": target, "seconds": recovered_s}));
    Injected {
        fault,
        recovered_s,
        noticed,
        drained,
    }
}

/// Stops Postgres immediately for `hold`; for an outage of 10 s or more, whether every
/// process answered not ready within 10 s.
async fn postgres_down(
    cluster: &Cluster,
    hold: Duration,
    history: &History,
    readiness: &Readiness,
) -> Option<bool> {
    let layout = &cluster.layout;
    if let Err(e) = cluster::postgres(layout, &["stop", "-m", "immediate"]).await {
        history.write(json!({"event": "nemesis_error", "error": e.to_string()}));
    }
    let down = tokio::time::Instant::now();
    let mut noticed = None;
    if hold >= Duration::from_secs(10) {
        noticed = Some(readiness.all_unready_within(Duration::from_secs(10)).await);
    }
    tokio::time::sleep(hold.saturating_sub(down.elapsed())).await;
    if let Err(e) = cluster::postgres(layout, &["start"]).await {
        history.write(json!({"event": "nemesis_error", "error": e.to_string()}));
    }
    noticed
}

/// What a fault of one replica showed.
struct ReplicaFault {
    /// Its `/readyz` off within 10 s, or within the fault if shorter (not judged for a
    /// pause under 5 s: a poll waits 1.5 s for a frozen process, polls are 0.5 s apart).
    noticed: Option<bool>,
    /// For SIGTERM: whether it was gone within its grace.
    drained: Option<bool>,
}

/// Kills, freezes or stops one service replica (`name`), and brings it back after
/// `hold`. (The replicas' lock is held only for a moment at a time: the readiness watch
/// reads them meanwhile.)
async fn service_fault(
    cluster: &Cluster,
    fault: Fault,
    i: usize,
    name: &str,
    hold: Duration,
    readiness: &Readiness,
) -> ReplicaFault {
    let layout = &cluster.layout;
    let signal = |name: &'static str| async move { cluster.services.lock().await[i].signal(name) };
    let notice = Duration::from_secs(10);
    let outcome = match fault {
        Fault::ServiceKilled => {
            signal("KILL").await;
            gone_within(cluster, i, Duration::from_secs(5)).await;
            // Kubernetes restarts a killed pod within seconds.
            let down = hold.min(Duration::from_secs(5));
            let (noticed, ()) = tokio::join!(
                readiness.unready_within(name, down),
                tokio::time::sleep(down)
            );
            ReplicaFault {
                noticed: Some(noticed),
                drained: None,
            }
        }
        Fault::ServicePaused => {
            signal("STOP").await;
            let (noticed, ()) = tokio::join!(
                readiness.unready_within(name, hold.min(notice)),
                tokio::time::sleep(hold)
            );
            signal("CONT").await;
            return ReplicaFault {
                noticed: (hold >= Duration::from_secs(5)).then_some(noticed),
                drained: None,
            };
        }
        _ => {
            signal("TERM").await;
            // Not ready at once, and gone within its grace (SHUTDOWN_GRACE, 10 s) and a
            // second.
            let (noticed, drained) = tokio::join!(
                readiness.unready_within(name, notice),
                gone_within(cluster, i, Duration::from_secs(11))
            );
            tokio::time::sleep(Duration::from_secs(2)).await;
            ReplicaFault {
                noticed: Some(noticed),
                drained: Some(drained),
            }
        }
    };
    if let Err(e) = cluster.services.lock().await[i].start(layout) {
        tracing::warn!(error = %e, "a replica did not start again; the heal will retry");
    }
    outcome
}

/// Whether replica `i` exited within `limit`; killed if not.
async fn gone_within(cluster: &Cluster, i: usize, limit: Duration) -> bool {
    let started = tokio::time::Instant::now();
    while started.elapsed() < limit {
        if cluster.services.lock().await[i].exited() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    cluster.services.lock().await[i].kill();
    false
}
