//! After the faults heal and the system settles, the checker reads every service's
//! tables, the vendor's log and the load's ledger, and counts what broke a rule:
//!
//! - **lost**: a published policy without its case; a due timer neither fired,
//!   cancelled nor skipped; a fired SMS or call timer without its message or task; an
//!   SMS left queued and due, sending or in doubt, or given up (dead); an SMS the
//!   service calls sent that the vendor never took; a receipt the vendor holds or the
//!   service did not apply; a renewal that never closed its case; an opt-out reply
//!   acknowledged but not kept; a call outcome the scheduler never applied; a dead
//!   letter or an event set aside; a run that never settled.
//! - **duplicates**: a message the vendor took twice (same `OutId`: the SMS id is its
//!   timer's, and a case has one timer per stage, so this is also one SMS per case and
//!   stage); a task whose completion was accepted twice (by the agents' answers, and
//!   by the completion events dispatch wrote against the tasks completed).
//! - **contacts after stop**: an SMS taken by the vendor, or a task leased (by
//!   dispatch's clock), more than a second after the case's renewal (or the number's
//!   opt-out) reached dispatch: when its transaction committed, by Postgres's commit
//!   timestamps where the cluster keeps them (`track_commit_timestamp`, which
//!   `deploy/local/chaos` turns on), else when it began.
//! - **SMS at night**: an SMS the vendor took outside the run's SMS hours (Shanghai).

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use chrono::{DateTime, NaiveTime, Utc};
use sqlx::PgPool;
use uuid::Uuid;

use serde_json::json;

use super::load::Shared;
use super::nemesis::{Fault, Injected};
use super::{ChaosError, History};

/// The figures of a run, in the order they are printed.
#[derive(Debug, Default)]
pub struct Figures {
    pub faults_injected: usize,
    pub faults_by_kind: Vec<(&'static str, usize)>,
    pub sms_sent: i64,
    pub lost: i64,
    pub lost_by_reason: Vec<(&'static str, i64)>,
    pub duplicates: i64,
    pub contacts_after_stop: i64,
    pub sms_at_night: i64,
    pub readiness_late: i64,
    /// 1 when the system had not settled within the limit after the heal.
    pub unsettled: i64,
    /// Processes told to stop (SIGTERM) under load that were not gone within their grace.
    pub drains_late: i64,
    pub readiness_recovery_p99_s: f64,
    pub renewal_to_last_contact_p99_ms: f64,
    /// From a renewal's acknowledgement by JetStream to dispatch noting its case closed.
    pub renewal_noted_p99_ms: f64,
    pub policies: usize,
    pub renewals: usize,
    pub opt_outs: usize,
    pub leases: usize,
    pub zombie_refused: u32,
    pub zombie_accepted: u32,
}

impl Figures {
    pub fn lines(&self) -> Vec<String> {
        let mut lines = vec![
            format!("faults_injected {}", self.faults_injected),
            format!("sms_sent {}", self.sms_sent),
            format!("lost {}", self.lost),
            format!("duplicates {}", self.duplicates),
            format!("contacts_after_stop {}", self.contacts_after_stop),
            format!("sms_at_night {}", self.sms_at_night),
            format!("readiness_late {}", self.readiness_late),
            format!("unsettled {}", self.unsettled),
            format!("drains_late {}", self.drains_late),
            format!(
                "readiness_recovery_p99_s {:.1}",
                self.readiness_recovery_p99_s
            ),
            format!(
                "renewal_to_last_contact_p99_ms {:.0}",
                self.renewal_to_last_contact_p99_ms
            ),
            format!("renewal_noted_p99_ms {:.0}", self.renewal_noted_p99_ms),
            format!("policies {}", self.policies),
            format!("renewals {}", self.renewals),
            format!("opt_outs {}", self.opt_outs),
            format!("tasks_leased {}", self.leases),
            format!("zombie_completions_refused {}", self.zombie_refused),
            format!("zombie_completions_accepted {}", self.zombie_accepted),
        ];
        lines.extend(
            self.faults_by_kind
                .iter()
                .map(|(k, n)| format!("faults_{k} {n}")),
        );
        lines.extend(
            self.lost_by_reason
                .iter()
                .map(|(k, n)| format!("lost_{k} {n}")),
        );
        lines
    }

    /// Whether a rule that must never break broke.
    pub fn broken(&self) -> bool {
        self.lost > 0
            || self.duplicates > 0
            || self.contacts_after_stop > 0
            || self.sms_at_night > 0
            || self.readiness_late > 0
            || self.drains_late > 0
            || self.unsettled > 0
    }
}

/// The catch-up contacts of the last policies published fall due a minute after their
/// case opened: the checker waits for them too.
const LAST_CATCH_UP: Duration = Duration::from_secs(80);

/// Waits (up to `limit`) until nothing is under way: every published policy a case,
/// no due timer pending, no SMS queued and due, sending or in doubt, no receipt owed.
pub async fn settle(pool: &PgPool, vendor: &PgPool, ledger: &Shared, limit: Duration) -> bool {
    tokio::time::sleep(LAST_CATCH_UP).await;
    let published = ledger
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .published
        .len() as i64;
    let started = std::time::Instant::now();
    while started.elapsed() < limit {
        let busy: Result<(i64, i64, i64), sqlx::Error> = sqlx::query_as(
            "SELECT (SELECT count(*) FROM lists.cases),
                    (SELECT count(*) FROM scheduler.timers WHERE state = 'pending' AND due_at < now()),
                    (SELECT count(*) FROM dispatch.sms_messages
                     WHERE state IN ('sending', 'unknown') OR (state = 'queued' AND next_attempt_at < now()))
                    + (SELECT count(*) FROM lists.outbox WHERE published_at IS NULL AND set_aside_at IS NULL)
                    + (SELECT count(*) FROM assignment.outbox WHERE published_at IS NULL AND set_aside_at IS NULL)
                    + (SELECT count(*) FROM scheduler.outbox WHERE published_at IS NULL AND set_aside_at IS NULL)
                    + (SELECT count(*) FROM dispatch.outbox WHERE published_at IS NULL AND set_aside_at IS NULL)",
        )
        .fetch_one(pool)
        .await;
        let owed: Result<i64, sqlx::Error> =
            sqlx::query_scalar("SELECT count(*) FROM demo.vendor_messages WHERE pushed_at IS NULL")
                .fetch_one(vendor)
                .await;
        if let (Ok((cases, 0, 0)), Ok(0)) = (busy, owed)
            && cases >= published
        {
            return true;
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    false
}

struct Sms {
    case_id: Uuid,
    marketing: bool,
    state: String,
    next_attempt_at: DateTime<Utc>,
}

struct Taken {
    out_id: String,
    phone: String,
    received_at: DateTime<Utc>,
    pushed: bool,
}

/// Everything the checker reads.
struct Tables {
    cases: HashMap<String, Uuid>,
    timers: Vec<(Uuid, String, String, DateTime<Utc>)>,
    sms: HashMap<Uuid, Sms>,
    tasks: HashSet<Uuid>,
    closed: HashMap<Uuid, DateTime<Utc>>,
    opt_outs: HashMap<String, DateTime<Utc>>,
    taken: Vec<Taken>,
    counts: Counts,
}

/// What the checker counts in the database rather than reads row by row.
#[derive(sqlx::FromRow)]
struct Counts {
    /// Dead letters and events set aside, in every schema.
    dead_letters: i64,
    /// Completion events dispatch wrote, tasks it completed, and the events the
    /// scheduler never applied.
    completion_events: i64,
    tasks_completed: i64,
    outcomes_not_applied: i64,
}

async fn read(pool: &PgPool, vendor: &PgPool) -> Result<Tables, sqlx::Error> {
    let cases = sqlx::query_as::<_, (String, Uuid)>("SELECT policy_no, case_id FROM lists.cases")
        .fetch_all(pool)
        .await?
        .into_iter()
        .collect();
    let timers = sqlx::query_as("SELECT id, action, state, due_at FROM scheduler.timers")
        .fetch_all(pool)
        .await?;
    let sms = sqlx::query_as::<_, (Uuid, Uuid, bool, String, DateTime<Utc>)>(
        "SELECT id, case_id, marketing, state, next_attempt_at FROM dispatch.sms_messages",
    )
    .fetch_all(pool)
    .await?
    .into_iter()
    .map(|(id, case_id, marketing, state, next_attempt_at)| {
        let m = Sms {
            case_id,
            marketing,
            state,
            next_attempt_at,
        };
        (id, m)
    })
    .collect();
    let tasks = sqlx::query_scalar::<_, Uuid>("SELECT id FROM dispatch.phone_tasks")
        .fetch_all(pool)
        .await?
        .into_iter()
        .collect();
    let (closed, opt_outs) = read_stops(pool).await?;
    Ok(Tables {
        cases,
        timers,
        sms,
        tasks,
        closed,
        opt_outs,
        taken: read_taken(vendor).await?,
        counts: read_counts(pool).await?,
    })
}

type Stops<K> = HashMap<K, DateTime<Utc>>;

/// When each renewal and opt-out became visible to the senders: its commit, where
/// Postgres keeps commit timestamps.
async fn read_stops(pool: &PgPool) -> Result<(Stops<Uuid>, Stops<String>), sqlx::Error> {
    let commits: bool =
        sqlx::query_scalar("SELECT current_setting('track_commit_timestamp') = 'on'")
            .fetch_one(pool)
            .await?;
    let noted = if commits {
        "coalesce(pg_xact_commit_timestamp(xmin), noted_at)"
    } else {
        "noted_at"
    };
    let closed = sqlx::query_as::<_, (Uuid, DateTime<Utc>)>(sqlx::AssertSqlSafe(format!(
        "SELECT case_id, {noted} FROM dispatch.closed_cases"
    )))
    .fetch_all(pool)
    .await?
    .into_iter()
    .collect();
    // Numbers are sealed (the cluster runs with the demo's key): opened to compare
    // with the vendor's log.
    let rows = sqlx::query_as::<_, (Uuid, Vec<u8>, DateTime<Utc>)>(sqlx::AssertSqlSafe(format!(
        "SELECT id, mobile_enc, {noted} FROM dispatch.opt_outs"
    )))
    .fetch_all(pool)
    .await?;
    let pii = renewal_platform::pii::PiiCipher::for_service(
        &secrecy::SecretString::from(crate::simulation::DEMO_PII_KEY),
        "dispatch",
    )
    .map_err(|e| sqlx::Error::Decode(Box::new(e)))?;
    let mut opt_outs = HashMap::with_capacity(rows.len());
    for (id, sealed, at) in rows {
        let mobile = renewal_dispatch::sealed::open_opt_out(&pii, &id.to_string(), &sealed)
            .map_err(|e| sqlx::Error::Decode(Box::new(e)))?;
        opt_outs.insert(mobile, at);
    }
    Ok((closed, opt_outs))
}

/// The vendor's log: every message it took.
async fn read_taken(vendor: &PgPool) -> Result<Vec<Taken>, sqlx::Error> {
    let rows = sqlx::query_as::<_, (String, String, DateTime<Utc>, bool)>(
        "SELECT out_id, phone, coalesce(received_at, accepted_at), pushed_at IS NOT NULL
         FROM demo.vendor_messages",
    )
    .fetch_all(vendor)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(out_id, phone, received_at, pushed)| Taken {
            out_id,
            phone,
            received_at,
            pushed,
        })
        .collect())
}

async fn read_counts(pool: &PgPool) -> Result<Counts, sqlx::Error> {
    let aside = |schema: &str| {
        format!(
            "(SELECT count(*) FROM {schema}.dead_letters) \
             + (SELECT count(*) FROM {schema}.outbox WHERE set_aside_at IS NOT NULL)"
        )
    };
    let dead_letters = ["lists", "assignment", "scheduler", "dispatch"]
        .map(aside)
        .join(" + ");
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {dead_letters} AS dead_letters,
                (SELECT count(*) FROM dispatch.outbox WHERE subject = 'dispatch.task.completed') AS completion_events,
                (SELECT count(*) FROM dispatch.phone_tasks WHERE state = 'completed') AS tasks_completed,
                (SELECT count(*) FROM dispatch.outbox o WHERE o.subject = 'dispatch.task.completed'
                   AND NOT EXISTS (SELECT 1 FROM scheduler.inbox i WHERE i.message_id = o.id::text))
                  AS outcomes_not_applied"
    )))
    .fetch_one(pool)
    .await
}

/// What the run did besides the load: its faults, its SMS hours, whether it settled.
pub struct Run<'a> {
    pub injected: &'a [Injected],
    pub sms_hours: &'a str,
    pub settled: bool,
    pub history: &'a History,
}

pub async fn check(
    pool: &PgPool,
    vendor: &PgPool,
    ledger: &Shared,
    run: Run<'_>,
) -> Result<Figures, ChaosError> {
    let Run {
        injected,
        sms_hours,
        settled,
        history,
    } = run;
    let t = read(pool, vendor).await?;
    let ledger = ledger.lock().unwrap_or_else(|e| e.into_inner());
    let mut f = Figures {
        faults_injected: injected.len(),
        faults_by_kind: Fault::ALL
            .iter()
            .map(|k| (k.name(), injected.iter().filter(|i| i.fault == *k).count()))
            .collect(),
        sms_sent: t.taken.len() as i64,
        policies: ledger.published.len(),
        renewals: ledger.renewed.len(),
        opt_outs: ledger.opted_out.len(),
        leases: ledger.leases.len(),
        zombie_refused: ledger.zombie_refused,
        zombie_accepted: ledger.zombie_accepted,
        ..Figures::default()
    };
    f.lost_by_reason = lost(&t, &ledger);
    f.lost = f.lost_by_reason.iter().map(|(_, n)| n).sum();
    f.unsettled = i64::from(!settled);
    f.duplicates = duplicates(&t)
        + ledger
            .completions
            .values()
            .map(|n| i64::from(*n) - 1)
            .filter(|n| *n > 0)
            .sum::<i64>();
    let after = after_stop(&t, &ledger.leases);
    f.contacts_after_stop = after.len() as i64;
    for contact in after {
        history.write(json!({"event": "contact_after_stop", "contact": contact}));
    }
    f.sms_at_night = at_night(&t, sms_hours);
    f.renewal_to_last_contact_p99_ms = renewal_to_last_contact(&t, &ledger.renewed, &ledger.leases);
    let mut noted: Vec<f64> = ledger
        .renewed
        .iter()
        .filter_map(|(policy, at)| {
            let noted = t.closed.get(t.cases.get(policy)?)?;
            Some((*noted - *at).num_milliseconds().max(0) as f64)
        })
        .collect();
    f.renewal_noted_p99_ms = p99(&mut noted);
    let late = injected
        .iter()
        .filter(|i| i.recovered_s.is_none_or(|s| s > 30.0) || i.noticed == Some(false))
        .count();
    f.readiness_late = late as i64;
    f.drains_late = injected.iter().filter(|i| i.drained == Some(false)).count() as i64;
    let mut recovered: Vec<f64> = injected.iter().filter_map(|i| i.recovered_s).collect();
    f.readiness_recovery_p99_s = p99(&mut recovered);
    Ok(f)
}

/// Everything lost, by reason.
fn lost(t: &Tables, ledger: &super::load::Ledger) -> Vec<(&'static str, i64)> {
    let now = Utc::now();
    let mut lost = lost_work(t, &ledger.published, now);
    lost.extend(lost_sms(t, now));
    lost.extend(lost_effects(t, ledger));
    lost
}

fn count(n: usize) -> i64 {
    n as i64
}

/// Policies without their case, timers not fired, fired timers without their work.
fn lost_work(t: &Tables, published: &[String], now: DateTime<Utc>) -> Vec<(&'static str, i64)> {
    vec![
        (
            "policy_without_case",
            count(
                published
                    .iter()
                    .filter(|p| !t.cases.contains_key(*p))
                    .count(),
            ),
        ),
        (
            "timer_not_fired",
            count(
                t.timers
                    .iter()
                    .filter(|(_, _, state, due)| {
                        state == "pending" && *due < now - chrono::Duration::seconds(30)
                    })
                    .count(),
            ),
        ),
        (
            "fired_timer_without_message",
            count(
                t.timers
                    .iter()
                    .filter(|(id, action, state, _)| {
                        state == "fired"
                            && ((action == "sms" && !t.sms.contains_key(id))
                                || (action == "phone_task" && !t.tasks.contains(id)))
                    })
                    .count(),
            ),
        ),
    ]
}

/// SMS left under way or given up, claimed sent but never taken, or their receipt
/// never applied.
fn lost_sms(t: &Tables, now: DateTime<Utc>) -> Vec<(&'static str, i64)> {
    let taken: HashSet<&str> = t.taken.iter().map(|v| v.out_id.as_str()).collect();
    vec![
        (
            "sms_unsettled",
            count(
                t.sms
                    .values()
                    .filter(|m| {
                        matches!(m.state.as_str(), "sending" | "unknown")
                            || (m.state == "queued"
                                && m.next_attempt_at < now - chrono::Duration::seconds(30))
                    })
                    .count(),
            ),
        ),
        (
            "sms_dead",
            count(t.sms.values().filter(|m| m.state == "dead").count()),
        ),
        (
            "sms_sent_never_taken",
            count(
                t.sms
                    .iter()
                    .filter(|(id, m)| {
                        matches!(m.state.as_str(), "sent" | "delivered")
                            && !taken.contains(id.to_string().as_str())
                    })
                    .count(),
            ),
        ),
        (
            "receipt_not_applied",
            count(
                t.taken
                    .iter()
                    .filter(|v| {
                        !v.pushed
                            || Uuid::parse_str(&v.out_id)
                                .ok()
                                .and_then(|id| t.sms.get(&id))
                                .is_none_or(|m| !matches!(m.state.as_str(), "delivered" | "failed"))
                    })
                    .count(),
            ),
        ),
    ]
}

/// Renewals, opt-outs and call outcomes not applied; dead letters and events set aside.
fn lost_effects(t: &Tables, ledger: &super::load::Ledger) -> Vec<(&'static str, i64)> {
    let renewed = ledger.renewed.keys();
    vec![
        (
            "renewal_not_applied",
            count(
                renewed
                    .filter(|p| {
                        t.cases
                            .get(*p)
                            .is_none_or(|case| !t.closed.contains_key(case))
                    })
                    .count(),
            ),
        ),
        (
            "opt_out_not_applied",
            count(
                ledger
                    .opted_out
                    .iter()
                    .filter(|m| !t.opt_outs.contains_key(*m))
                    .count(),
            ),
        ),
        ("outcome_not_applied", t.counts.outcomes_not_applied),
        ("dead_letters", t.counts.dead_letters),
    ]
}

fn duplicates(t: &Tables) -> i64 {
    let distinct: HashSet<&str> = t.taken.iter().map(|v| v.out_id.as_str()).collect();
    let twice = t.taken.len() as i64 - distinct.len() as i64;
    twice + (t.counts.completion_events - t.counts.tasks_completed).max(0)
}

/// One second of grace, as the rule allows.
fn late(at: DateTime<Utc>, stop: Option<&DateTime<Utc>>) -> bool {
    stop.is_some_and(|s| at > *s + chrono::Duration::seconds(1))
}

/// Every contact more than a second after its stop, described for the history.
fn after_stop(t: &Tables, leases: &[(String, String, DateTime<Utc>)]) -> Vec<serde_json::Value> {
    let gap = |at: DateTime<Utc>, stop: &DateTime<Utc>| (at - *stop).num_milliseconds();
    let mut found = Vec::new();
    for v in &t.taken {
        let Some(m) = Uuid::parse_str(&v.out_id)
            .ok()
            .and_then(|id| t.sms.get(&id))
        else {
            continue;
        };
        if let Some(stop) = t
            .closed
            .get(&m.case_id)
            .filter(|s| late(v.received_at, Some(s)))
        {
            found.push(json!({"contact": "sms", "out_id": v.out_id, "case_id": m.case_id, "after": "renewal", "late_ms": gap(v.received_at, stop)}));
        } else if let Some(stop) = t
            .opt_outs
            .get(&renewal_dispatch::sealed::e164(&v.phone))
            .filter(|s| m.marketing && late(v.received_at, Some(s)))
        {
            found.push(json!({"contact": "sms", "out_id": v.out_id, "case_id": m.case_id, "after": "opt_out", "late_ms": gap(v.received_at, stop)}));
        }
    }
    for (task, case, at) in leases {
        if let Some(stop) = Uuid::parse_str(case)
            .ok()
            .and_then(|c| t.closed.get(&c))
            .filter(|s| late(*at, Some(s)))
        {
            found.push(json!({"contact": "lease", "task": task, "case_id": case, "after": "renewal", "late_ms": gap(*at, stop)}));
        }
    }
    found
}

fn at_night(t: &Tables, sms_hours: &str) -> i64 {
    let parse = |s: &str| NaiveTime::parse_from_str(s, "%H:%M").ok();
    let Some((Some(open), Some(close))) =
        sms_hours.split_once('-').map(|(a, b)| (parse(a), parse(b)))
    else {
        return 0;
    };
    t.taken
        .iter()
        .filter(|v| {
            let local = v
                .received_at
                .with_timezone(&chrono_tz::Asia::Shanghai)
                .time();
            local < open || local >= close
        })
        .count() as i64
}

/// For each renewed case contacted after its renewal was published: how long after.
fn renewal_to_last_contact(
    t: &Tables,
    renewed: &HashMap<String, DateTime<Utc>>,
    leases: &[(String, String, DateTime<Utc>)],
) -> f64 {
    let mut last: HashMap<Uuid, DateTime<Utc>> = HashMap::new();
    let contacts = t
        .taken
        .iter()
        .filter_map(|v| {
            Some((
                Uuid::parse_str(&v.out_id)
                    .ok()
                    .and_then(|id| t.sms.get(&id))?
                    .case_id,
                v.received_at,
            ))
        })
        .chain(
            leases
                .iter()
                .filter_map(|(_, case, at)| Some((Uuid::parse_str(case).ok()?, *at))),
        );
    for (case, at) in contacts {
        let e = last.entry(case).or_insert(at);
        *e = (*e).max(at);
    }
    let mut gaps: Vec<f64> = renewed
        .iter()
        .filter_map(|(policy, at)| {
            let contact = last.get(t.cases.get(policy)?)?;
            (contact > at).then(|| (*contact - *at).num_milliseconds() as f64)
        })
        .collect();
    p99(&mut gaps)
}

fn p99(values: &mut [f64]) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    values.sort_by(f64::total_cmp);
    let i = ((values.len() as f64 * 0.99).ceil() as usize).clamp(1, values.len()) - 1;
    values[i]
}
