//! Firing due timers: claimed in batches with `FOR UPDATE SKIP LOCKED` (replicas share
//! the work without double-firing) and published straight to JetStream while the claim
//! is held. The timers table is its own outbox: each command's `Nats-Msg-Id` is its
//! timer's id, and the timer is marked fired in the claiming transaction only after
//! JetStream acknowledged every command of the batch. A crash before that commit leaves
//! the batch pending and it fires again with the same ids: JetStream's duplicate window
//! and each consumer's inbox drop the copies, so nothing is lost and nothing doubles.
//! After downtime it catches up in due order. Marketing SMS respect the frequency cap:
//! one per customer per 3 days, four per renewal. Each SMS and phone task opens its
//! case's sealed contact once, as it is built.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, NaiveDate, NaiveTime, Utc};
use renewal_contract::scheduler::{
    ConfirmOwner, CreatePhoneTask, SendSms, SupervisorAlert, TaskQueue,
};
use renewal_contract::subject;
use renewal_platform::pii::{PiiCipher, PiiError};
use renewal_platform::{Bus, Clock};
use sqlx::postgres::PgRow;
use sqlx::{PgConnection, PgPool, Row};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::config::Window;
use crate::contact::Contact;
use crate::plan::{Hours, Placed};

pub const BATCH: i64 = 5000;
/// Commands published and not yet acknowledged, per firing loop.
const IN_FLIGHT: usize = 1024;
/// The frequency cap.
const CAP_GAP: chrono::Duration = chrono::Duration::days(3);
const CAP_PER_RENEWAL: i64 = 4;
/// Woken by messages, the loop looks at most this often: messages come in floods
/// (every outcome and case event wakes it), and one look serves them all.
const WAKE_GAP: Duration = Duration::from_millis(20);

/// Why a batch did not fire; it stays pending and is tried again.
#[derive(Debug, thiserror::Error)]
pub enum FireError {
    #[error("postgres: {0}")]
    Db(#[from] sqlx::Error),
    #[error(transparent)]
    Publish(#[from] renewal_platform::bus::BusError),
    #[error("jetstream did not acknowledge a command: {0}")]
    Ack(String),
    /// A contact that does not open: its timer is held (see `Batch::hold`), the batch
    /// fires.
    #[error("a case's contact: {0}")]
    Pii(#[from] PiiError),
}

pub async fn run(
    pool: PgPool,
    bus: Bus,
    clock: Clock,
    hours: Hours,
    timers_changed: Arc<Notify>,
    pii: Arc<PiiCipher>,
    cancel: CancellationToken,
) {
    let mut backlog_counted = std::time::Instant::now();
    let mut pace = renewal_platform::wakeups::Pace::new(WAKE_GAP);
    loop {
        if cancel.is_cancelled() {
            return;
        }
        let now = clock.now();
        match fire_due(&pool, &bus, now, clock.is_simulated(), &hours, &pii).await {
            Ok(n) if n as i64 == BATCH => {
                // Catching up: how many are due and not yet fired, every few seconds.
                if backlog_counted.elapsed() >= Duration::from_secs(5) {
                    backlog_counted = std::time::Instant::now();
                    if let Ok(due) = due_count(&pool, now).await {
                        metrics::gauge!("timers_due").set(due as f64);
                    }
                }
                continue;
            }
            Ok(n) => {
                // Caught up: whatever was due has fired.
                metrics::gauge!("timers_due").set(0.0);
                if n > 0 {
                    renewal_platform::activity::record();
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "firing timers failed; retrying");
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                }
            }
        }
        let next = match next_wakeup(&pool).await {
            Ok(Some(t)) => t,
            Ok(None) => now + chrono::Duration::days(1),
            Err(_) => now + chrono::Duration::seconds(1),
        };
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = timers_changed.notified() => {
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = pace.look() => {}
                }
            }
            _ = clock.sleep_until(next, Duration::from_secs(1)) => {}
        }
    }
}

/// Pending timers already due (counted up to a million: the gauge is for alerting).
async fn due_count(pool: &PgPool, now: DateTime<Utc>) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT count(*) FROM (SELECT 1 FROM scheduler.timers
                               WHERE state = 'pending' AND due_at <= $1 LIMIT 1000000) due",
    )
    .bind(now)
    .fetch_one(pool)
    .await
}

/// When this service next has work of its own: the earliest pending timer.
pub async fn next_wakeup(pool: &PgPool) -> Result<Option<DateTime<Utc>>, sqlx::Error> {
    sqlx::query_scalar("SELECT min(due_at) FROM scheduler.timers WHERE state = 'pending'")
        .fetch_one(pool)
        .await
}

/// Writes a case's placed stages (a stage already there is left as it is).
pub async fn insert(
    tx: &mut PgConnection,
    case_id: Uuid,
    placed: &[Placed],
) -> Result<(), sqlx::Error> {
    let ids: Vec<Uuid> = placed.iter().map(|_| Uuid::now_v7()).collect();
    let stages: Vec<&str> = placed.iter().map(|p| p.stage.stage.as_str()).collect();
    let actions: Vec<&str> = placed.iter().map(|p| p.stage.action.as_str()).collect();
    let templates: Vec<&str> = placed.iter().map(|p| p.stage.template.as_str()).collect();
    let dues: Vec<DateTime<Utc>> = placed.iter().map(|p| p.due).collect();
    let nominals: Vec<DateTime<Utc>> = placed.iter().map(|p| p.nominal).collect();
    let states: Vec<&str> = placed
        .iter()
        .map(|p| {
            if p.skipped.is_some() {
                "skipped"
            } else {
                "pending"
            }
        })
        .collect();
    let notes: Vec<Option<String>> = placed
        .iter()
        .map(|p| {
            p.skipped
                .map(str::to_owned)
                .or_else(|| (p.due != p.nominal).then(|| "moved into the allowed hours".to_owned()))
        })
        .collect();
    let queues: Vec<Option<&str>> = placed
        .iter()
        .map(|p| p.stage.queue.map(|q| q.as_str()))
        .collect();
    let marketing: Vec<bool> = placed.iter().map(|p| p.stage.is_marketing()).collect();
    let promotions: Vec<&str> = placed.iter().map(|p| p.stage.promotion.as_str()).collect();
    let keep: Vec<bool> = placed.iter().map(|p| p.stage.keep_after_refusal).collect();
    sqlx::query(
        "INSERT INTO scheduler.timers (id, case_id, stage, action, template, due_at, nominal_at, state, note,
             queue, marketing, promotion, keep_after_refusal, traceparent)
         SELECT u.id, c.case_id, u.stage, u.action, u.template, u.due_at, u.nominal_at,
                CASE WHEN c.state = 'closed' OR c.erased_at IS NOT NULL THEN 'cancelled' ELSE u.state END,
                CASE WHEN c.erased_at IS NOT NULL THEN 'case erased'
                     WHEN c.state = 'closed' THEN 'case closed' ELSE u.note END,
                u.queue, u.marketing, u.promotion, u.keep, $14
         FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::text[], $5::timestamptz[], $6::timestamptz[],
                     $7::text[], $8::text[], $9::text[], $10::bool[], $11::text[], $12::bool[])
              AS u(id, stage, action, template, due_at, nominal_at, state, note, queue, marketing, promotion, keep)
         JOIN scheduler.cases c ON c.case_id = $13
         ON CONFLICT (case_id, stage) DO NOTHING",
    )
    .bind(&ids)
    .bind(&stages)
    .bind(&actions)
    .bind(&templates)
    .bind(&dues)
    .bind(&nominals)
    .bind(&states)
    .bind(&notes)
    .bind(&queues)
    .bind(&marketing)
    .bind(&promotions)
    .bind(&keep)
    .bind(case_id)
    .bind(renewal_platform::telemetry::current_traceparent())
    .execute(&mut *tx)
    .await?;
    Ok(())
}

fn queue_of(raw: Option<&str>, owner: Option<&str>) -> TaskQueue {
    match raw {
        Some("owner") if owner.is_some_and(|o| !o.is_empty()) => TaskQueue::Owner,
        Some("owner") | Some("branch") => TaskQueue::Branch,
        Some("hq") => TaskQueue::Hq,
        _ => TaskQueue::Campaign,
    }
}

/// What one firing looks at.
struct Firing<'a> {
    now: DateTime<Utc>,
    simulated: bool,
    hours: &'a Hours,
    pii: &'a PiiCipher,
}

/// A command to publish: its id, subject, payload and trace.
type Command = (Uuid, &'static str, Vec<u8>, Option<String>);

/// What a batch does with the timers it claimed. The claim marked them all fired; every
/// list but `commands` is put right before the commit.
#[derive(Default)]
struct Batch {
    commands: Vec<Command>,
    /// Their cases closed.
    dropped: Vec<String>,
    /// Their cases' personal data was erased: nothing is sent for them again.
    erased: Vec<String>,
    capped: Vec<String>,
    capped_notes: Vec<&'static str>,
    postponed: Vec<String>,
    postponed_to: Vec<DateTime<Utc>>,
    /// Their contact does not open; the first case and why, for the log.
    held: Vec<String>,
    held_to: Vec<DateTime<Utc>>,
    held_first: Option<(Uuid, PiiError)>,
}

/// Fires one batch of due timers; returns how many it claimed.
pub async fn fire_due(
    pool: &PgPool,
    bus: &Bus,
    now: DateTime<Utc>,
    simulated: bool,
    hours: &Hours,
    pii: &PiiCipher,
) -> Result<usize, FireError> {
    let mut tx = pool.begin().await?;
    let due = claim(&mut tx, now).await?;
    if due.is_empty() {
        return Ok(0);
    }
    let firing = Firing {
        now,
        simulated,
        hours,
        pii,
    };
    let mut cap = Cap::of(&due)?;
    let mut batch = Batch::default();
    for row in &due {
        fire_one(&firing, row, &mut cap, &mut batch)?;
    }
    let fired = batch.commands.len();
    publish(bus, std::mem::take(&mut batch.commands)).await?;
    put_right(&mut tx, &batch).await?;
    tx.commit().await?;
    if let Some((case_id, error)) = &batch.held_first {
        tracing::error!(held = batch.held.len(), first_case_id = %case_id, error = %error,
            "contacts do not open: their timers are held an hour (is every key they were sealed under in PII_KEYS?)");
        metrics::counter!("timers_held_total").increment(batch.held.len() as u64);
    }
    metrics::counter!("timers_fired_total").increment(fired as u64);
    metrics::counter!("messages_out_total", "service" => crate::SCHEMA).increment(fired as u64);
    metrics::counter!("timers_capped_total").increment(batch.capped.len() as u64);
    Ok(due.len())
}

/// Claims a batch and marks it fired in one statement (a crash before the commit undoes
/// both), reading what the commands and the frequency cap need. Its subqueries see the
/// table as it was before this statement, so the counts are of SMS fired earlier; each
/// is one index lookup per customer and per case, whatever the planner thinks of the
/// fast-growing set of fired SMS.
///
/// A customer's cases are those with the same `mobile_index`. While a key rotation is
/// under way (`renewal pii rotate`, or a new key listed and the rotation not yet run),
/// a customer's cases re-sealed under the new key and those not yet re-sealed carry
/// different indexes, so the cap may briefly take them for two customers (one extra
/// marketing SMS within 3 days at worst); the per-renewal cap, by case, is exact
/// throughout. Matching every key's index would need the mobile before this query,
/// that is, opening every contact of the batch first.
async fn claim(tx: &mut PgConnection, now: DateTime<Utc>) -> Result<Vec<PgRow>, sqlx::Error> {
    sqlx::query(
        "WITH claimed AS (
             SELECT ctid FROM scheduler.timers
             WHERE state = 'pending' AND due_at <= $1
             ORDER BY due_at
             LIMIT $2
             FOR UPDATE SKIP LOCKED
         ), fired AS (
             UPDATE scheduler.timers SET state = 'fired', fired_at = $1
             WHERE ctid = ANY(ARRAY(SELECT ctid FROM claimed))
             RETURNING ctid::text AS tid, id, case_id, stage, action, template, due_at, nominal_at,
                       traceparent, queue, marketing, promotion
         )
         SELECT f.tid, f.id, f.case_id, f.stage, f.action, f.template, f.due_at, f.traceparent, f.queue,
                f.marketing, f.promotion, c.policy_no,
                CASE WHEN c.erased_at IS NOT NULL OR length(c.contact_enc) = 0 THEN 'erased'
                     WHEN c.state = 'open' OR (c.closed_reason = 'lapsed' AND f.nominal_at > c.closed_at)
                     THEN 'open' ELSE 'closed' END AS case_state, c.contact_enc, c.mobile_index,
                c.expiry_date, c.effective_expiry_date, c.time_zone, c.city_code, c.branch_code,
                o.owner_agent, l.last_marketing_sms,
                -- No marketing SMS to this customer yet means none to this case either.
                CASE WHEN l.last_marketing_sms IS NOT NULL THEN
                    (SELECT count(*) FROM scheduler.timers t
                     WHERE t.case_id = f.case_id AND t.action = 'sms' AND t.marketing AND t.state = 'fired')
                END AS marketing_sms_sent
         FROM fired f JOIN scheduler.cases c USING (case_id)
         LEFT JOIN scheduler.owners o USING (case_id)
         LEFT JOIN LATERAL (
             SELECT max(t.fired_at) AS last_marketing_sms FROM scheduler.timers t
             WHERE f.marketing
               AND t.case_id = ANY(ARRAY(SELECT m.case_id FROM scheduler.cases m
                                         WHERE m.mobile_index = c.mobile_index))
               AND t.action = 'sms' AND t.marketing AND t.state = 'fired'
         ) l ON true
         ORDER BY f.due_at",
    )
    .bind(now)
    .bind(BATCH)
    .fetch_all(&mut *tx)
    .await
}

/// The frequency cap: each customer's (mobile index's) last marketing SMS, each case's
/// count, as stored before the batch and as the batch fires.
struct Cap {
    last_sms: HashMap<Vec<u8>, DateTime<Utc>>,
    per_case: HashMap<Uuid, i64>,
}

enum Verdict {
    Send,
    Skip(&'static str),
    Postpone(DateTime<Utc>),
}

impl Cap {
    fn of(due: &[PgRow]) -> Result<Self, sqlx::Error> {
        let mut cap = Cap {
            last_sms: HashMap::new(),
            per_case: HashMap::new(),
        };
        for row in due {
            if let Some(last) = row.try_get::<Option<DateTime<Utc>>, _>("last_marketing_sms")?
                && let Some(index) = row.try_get::<Option<Vec<u8>>, _>("mobile_index")?
            {
                cap.last_sms.insert(index, last);
            }
            if let Some(n) = row.try_get::<Option<i64>, _>("marketing_sms_sent")? {
                cap.per_case.insert(row.try_get("case_id")?, n);
            }
        }
        Ok(cap)
    }

    /// Whether a marketing SMS may go now, or later, or not at all.
    fn judge(
        &self,
        f: &Firing<'_>,
        row: &PgRow,
        c: &Claimed,
        index: Option<&[u8]>,
    ) -> Result<Verdict, sqlx::Error> {
        if self.per_case.get(&c.case_id).copied().unwrap_or(0) >= CAP_PER_RENEWAL {
            return Ok(Verdict::Skip("frequency cap: 4 marketing SMS per renewal"));
        }
        let Some(last) = index.and_then(|i| self.last_sms.get(i)) else {
            return Ok(Verdict::Send);
        };
        if f.now - *last >= CAP_GAP {
            return Ok(Verdict::Send);
        }
        let tz = c.tz();
        let effective: Option<NaiveDate> = row.try_get("effective_expiry_date")?;
        let limit = effective.map(|d| renewal_platform::local_instant(d, NaiveTime::MIN, tz));
        Ok(
            match crate::plan::allowed(*last + CAP_GAP, f.hours.sms, None, tz) {
                Some(at) if limit.is_none_or(|l| at < l) => Verdict::Postpone(at),
                _ => Verdict::Skip("frequency cap: one marketing SMS per customer per 3 days"),
            },
        )
    }

    fn record(&mut self, case_id: Uuid, index: Option<Vec<u8>>, now: DateTime<Utc>) {
        if let Some(index) = index {
            self.last_sms.insert(index, now);
        }
        *self.per_case.entry(case_id).or_default() += 1;
    }
}

/// A claimed timer's fields the commands share.
struct Claimed {
    id: Uuid,
    case_id: Uuid,
    policy_no: String,
    stage: String,
    due_at: DateTime<Utc>,
    expiry: Option<NaiveDate>,
    tz_name: String,
    owner: Option<String>,
}

impl Claimed {
    fn of(row: &PgRow) -> Result<Self, sqlx::Error> {
        Ok(Claimed {
            id: row.try_get("id")?,
            case_id: row.try_get("case_id")?,
            policy_no: row.try_get("policy_no")?,
            stage: row.try_get("stage")?,
            due_at: row.try_get("due_at")?,
            expiry: row.try_get("expiry_date")?,
            tz_name: row
                .try_get::<Option<String>, _>("time_zone")?
                .unwrap_or_default(),
            owner: row.try_get("owner_agent")?,
        })
    }

    fn tz(&self) -> chrono_tz::Tz {
        self.tz_name.parse().unwrap_or(chrono_tz::Asia::Shanghai)
    }

    fn expiry_text(&self) -> String {
        self.expiry.map(|d| d.to_string()).unwrap_or_default()
    }
}

/// Decides one claimed timer: its command, or why it does not fire now.
fn fire_one(
    f: &Firing<'_>,
    row: &PgRow,
    cap: &mut Cap,
    batch: &mut Batch,
) -> Result<(), FireError> {
    // The locked row's address: what the updates after publishing find it by.
    let tid: String = row.try_get("tid")?;
    if batch.set_aside(&tid, &row.try_get::<String, _>("case_state")?) {
        return Ok(());
    }
    let c = Claimed::of(row)?;
    let action: String = row.try_get("action")?;
    let marketing: bool = row.try_get("marketing")?;
    let is_sms = action == "sms";
    let index: Option<Vec<u8>> = if is_sms && marketing {
        row.try_get("mobile_index")?
    } else {
        None
    };
    if is_sms && marketing {
        match cap.judge(f, row, &c, index.as_deref())? {
            Verdict::Send => {}
            Verdict::Skip(note) => {
                batch.capped.push(tid);
                batch.capped_notes.push(note);
                return Ok(());
            }
            Verdict::Postpone(at) => {
                batch.postponed.push(tid);
                batch.postponed_to.push(at);
                return Ok(());
            }
        }
    }
    let (id, case_id, due_at) = (c.id, c.case_id, c.due_at);
    let traceparent: Option<String> = row.try_get("traceparent")?;
    let (subject_name, payload) = match action.as_str() {
        "sms" | "phone_task" => {
            // The one open of the contact for this command.
            let contact = match open_contact(f.pii, case_id, row) {
                Ok(contact) => contact,
                Err(FireError::Pii(e)) => {
                    batch.hold(
                        tid,
                        &c,
                        f,
                        if is_sms { f.hours.sms } else { f.hours.calls },
                        e,
                    );
                    return Ok(());
                }
                Err(e) => return Err(e),
            };
            if is_sms {
                if marketing {
                    cap.record(case_id, index, f.now);
                }
                sms(c, row, contact, marketing)?
            } else {
                phone_task(c, row, contact, f.now)?
            }
        }
        "supervisor_alert" => supervisor_alert(c, row)?,
        _ => confirm_owner(c),
    };
    if !f.simulated {
        let late = (f.now - due_at).num_milliseconds().max(0) as f64 / 1000.0;
        metrics::histogram!("timer_lateness_seconds").record(late);
    }
    batch
        .commands
        .push((id, subject_name, payload, traceparent));
    Ok(())
}

/// How long a timer whose contact does not open waits before it is tried again.
const HOLD: chrono::Duration = chrono::Duration::hours(1);

impl Batch {
    /// Sets aside a timer whose case is closed or erased (cancelled after the claim,
    /// with why); true when it was.
    fn set_aside(&mut self, tid: &str, case_state: &str) -> bool {
        match case_state {
            "open" => false,
            "erased" => {
                self.erased.push(tid.to_owned());
                true
            }
            _ => {
                self.dropped.push(tid.to_owned());
                true
            }
        }
    }

    /// Puts a timer back, an hour on (within its channel's hours), rather than fire it
    /// without a contact or forget it: a key missing from the keyring is put right by
    /// listing it again, and the timer then fires.
    fn hold(&mut self, tid: String, c: &Claimed, f: &Firing<'_>, window: Window, e: PiiError) {
        let later = f.now + HOLD;
        self.held.push(tid);
        self.held_to
            .push(crate::plan::allowed(later, window, None, c.tz()).unwrap_or(later));
        self.held_first.get_or_insert((c.case_id, e));
    }
}

/// The case's contact, opened; an empty one for a case recorded without it.
fn open_contact(pii: &PiiCipher, case_id: Uuid, row: &PgRow) -> Result<Contact, FireError> {
    match row.try_get::<Option<&[u8]>, _>("contact_enc")? {
        Some(sealed) => Ok(crate::contact::open(pii, case_id, sealed)?),
        None => Ok(Contact::default()),
    }
}

fn sms(
    c: Claimed,
    row: &PgRow,
    contact: Contact,
    marketing: bool,
) -> Result<(&'static str, Vec<u8>), sqlx::Error> {
    let command = SendSms {
        command_id: c.id.to_string(),
        case_id: c.case_id.to_string(),
        expiry_date: c.expiry_text(),
        policy_no: c.policy_no,
        stage: c.stage,
        template: row.try_get("template")?,
        mobile: contact.mobile,
        customer_name: contact.name,
        plate: contact.plate,
        time_zone: c.tz_name,
        marketing,
        due_at_ms: c.due_at.timestamp_millis(),
    };
    Ok((
        subject::DISPATCH_CMD_SEND_SMS,
        prost::Message::encode_to_vec(&command),
    ))
}

fn phone_task(
    c: Claimed,
    row: &PgRow,
    contact: Contact,
    now: DateTime<Utc>,
) -> Result<(&'static str, Vec<u8>), sqlx::Error> {
    let (branch_code, city_code) = org_codes(row)?;
    let queue_raw: Option<String> = row.try_get("queue")?;
    let queue = queue_of(queue_raw.as_deref(), c.owner.as_deref());
    let days = c.expiry.map_or(0, |e| {
        (e - renewal_platform::local_date(now, c.tz())).num_days() as i32
    });
    let command = CreatePhoneTask {
        command_id: c.id.to_string(),
        case_id: c.case_id.to_string(),
        expiry_date: c.expiry_text(),
        policy_no: c.policy_no,
        stage: c.stage,
        queue: queue as i32,
        owner_agent: c.owner.unwrap_or_default(),
        branch_code,
        city_code,
        promotion: row.try_get("promotion")?,
        customer_name: contact.name,
        mobile: contact.mobile,
        plate: contact.plate,
        time_zone: c.tz_name,
        days_to_expiry: days,
        due_at_ms: c.due_at.timestamp_millis(),
    };
    Ok((
        subject::DISPATCH_CMD_CREATE_PHONE_TASK,
        prost::Message::encode_to_vec(&command),
    ))
}

/// The case's branch and city (empty for a case recorded without them).
fn org_codes(row: &PgRow) -> Result<(String, String), sqlx::Error> {
    let code = |column| {
        row.try_get::<Option<String>, _>(column)
            .map(Option::unwrap_or_default)
    };
    Ok((code("branch_code")?, code("city_code")?))
}

fn supervisor_alert(c: Claimed, row: &PgRow) -> Result<(&'static str, Vec<u8>), sqlx::Error> {
    let (branch_code, city_code) = org_codes(row)?;
    let alert = SupervisorAlert {
        alert_id: c.id.to_string(),
        case_id: c.case_id.to_string(),
        expiry_date: c.expiry_text(),
        policy_no: c.policy_no,
        stage: c.stage,
        owner_agent: c.owner.unwrap_or_default(),
        branch_code,
        city_code,
        due_at_ms: c.due_at.timestamp_millis(),
    };
    Ok((
        subject::SCHEDULER_CASE_SUPERVISOR_ALERT,
        prost::Message::encode_to_vec(&alert),
    ))
}

fn confirm_owner(c: Claimed) -> (&'static str, Vec<u8>) {
    let command = ConfirmOwner {
        command_id: c.id.to_string(),
        case_id: c.case_id.to_string(),
        policy_no: c.policy_no,
        stage: c.stage,
        due_at_ms: c.due_at.timestamp_millis(),
    };
    (
        subject::ASSIGNMENT_CMD_CONFIRM_OWNER,
        prost::Message::encode_to_vec(&command),
    )
}

/// Publishes while the claim is held, a window of acknowledgements in flight (each holds
/// one of the connection's permits, shared with every other publisher in the process).
async fn publish(bus: &Bus, commands: Vec<Command>) -> Result<(), FireError> {
    let mut acks: std::collections::VecDeque<async_nats::jetstream::context::PublishAckFuture> =
        std::collections::VecDeque::with_capacity(IN_FLIGHT);
    for (id, subject_name, payload, traceparent) in commands {
        if acks.len() == IN_FLIGHT
            && let Some(ack) = acks.pop_front()
        {
            ack.await.map_err(|e| FireError::Ack(e.to_string()))?;
        }
        acks.push_back(
            bus.send(
                subject_name,
                &id.to_string(),
                traceparent.as_deref(),
                payload,
            )
            .await?,
        );
    }
    for ack in acks {
        ack.await.map_err(|e| FireError::Ack(e.to_string()))?;
    }
    Ok(())
}

/// The claim marked the whole batch fired; puts right what did not fire.
async fn put_right(tx: &mut PgConnection, batch: &Batch) -> Result<(), sqlx::Error> {
    cancel(tx, &batch.dropped, "case closed").await?;
    cancel(tx, &batch.erased, "case erased").await?;
    if !batch.capped.is_empty() {
        sqlx::query(
            "UPDATE scheduler.timers t SET state = 'skipped', fired_at = NULL, note = u.note
             FROM UNNEST($1::text[]::tid[], $2::text[]) AS u(tid, note) WHERE t.ctid = u.tid",
        )
        .bind(&batch.capped)
        .bind(&batch.capped_notes)
        .execute(&mut *tx)
        .await?;
    }
    back_to_pending(
        tx,
        &batch.postponed,
        &batch.postponed_to,
        "postponed by the frequency cap",
    )
    .await?;
    back_to_pending(
        tx,
        &batch.held,
        &batch.held_to,
        "held: the contact does not open (damaged, or sealed under a key not in PII_KEYS)",
    )
    .await
}

/// Cancels claimed timers that must not fire, with why.
async fn cancel(tx: &mut PgConnection, tids: &[String], note: &str) -> Result<(), sqlx::Error> {
    if tids.is_empty() {
        return Ok(());
    }
    sqlx::query(
        "UPDATE scheduler.timers SET state = 'cancelled', fired_at = NULL, note = $2
         WHERE ctid = ANY($1::text[]::tid[])",
    )
    .bind(tids)
    .bind(note)
    .execute(&mut *tx)
    .await?;
    Ok(())
}

/// Puts timers back to pending, due again at the given times.
async fn back_to_pending(
    tx: &mut PgConnection,
    tids: &[String],
    due: &[DateTime<Utc>],
    note: &str,
) -> Result<(), sqlx::Error> {
    if tids.is_empty() {
        return Ok(());
    }
    sqlx::query(
        "UPDATE scheduler.timers t SET state = 'pending', fired_at = NULL, due_at = u.due_at, note = $3
         FROM UNNEST($1::text[]::tid[], $2::timestamptz[]) AS u(tid, due_at) WHERE t.ctid = u.tid",
    )
    .bind(tids)
    .bind(due)
    .bind(note)
    .execute(&mut *tx)
    .await?;
    Ok(())
}
