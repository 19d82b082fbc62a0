//! Commands in: `dispatch.cmd.send_sms` queues a message (one per command id),
//! `dispatch.cmd.create_phone_task` makes a phone task, `dispatch.cmd.erase_personal_data`
//! erases cases (`crate::erasure`; this consumer's filter takes it too); a closed case
//! withdraws what is still queued for it; an owner change moves the case's owner tasks.
//! A command for an erased case is kept withdrawn without its contact. A command that
//! names only its case goes with the case's contact (`crate::contacts`).

use std::sync::Arc;

use chrono::{TimeZone, Utc};
use renewal_contract::lists::CaseClosed;
use renewal_contract::scheduler::SendSms;
use renewal_contract::subject;
use renewal_platform::inbox::field;
use renewal_platform::pii::PiiCipher;
use renewal_platform::{Clock, Delivery, HandleError, Handler};
use sqlx::PgConnection;
use tokio::sync::Notify;

use crate::sealed::{self, SmsContact};
use crate::sms::templates;

pub struct Commands {
    pub clock: Clock,
    /// Where an erasure's answer goes.
    pub outbox: renewal_platform::Outbox,
    pub queued: Arc<Notify>,
    /// Seals the contacts of messages and tasks.
    pub pii: Arc<PiiCipher>,
}

impl Handler for Commands {
    async fn handle(&self, tx: &mut PgConnection, delivery: &Delivery) -> Result<(), HandleError> {
        if delivery.subject == subject::DISPATCH_CMD_CREATE_PHONE_TASK {
            return crate::phone::intake::create(tx, &self.clock, &self.pii, delivery).await;
        }
        if delivery.subject == subject::DISPATCH_CMD_ERASE_PERSONAL_DATA {
            let now = self.clock.now();
            return crate::erasure::erase(tx, &self.outbox, &self.pii, now, delivery).await;
        }
        if delivery.subject != subject::DISPATCH_CMD_SEND_SMS {
            return Err(HandleError::Malformed(format!(
                "unexpected subject {}",
                delivery.subject
            )));
        }
        let mut command: SendSms = delivery.decode()?;
        let id = field::uuid("command_id", &command.command_id)?;
        let case_id = field::uuid("case_id", &command.case_id)?;
        let tz = field::time_zone("time_zone", &command.time_zone)?;
        let c = &mut command;
        let contact = [&mut c.customer_name, &mut c.mobile, &mut c.plate];
        crate::contacts::fill(tx, &self.pii, case_id, contact).await?;
        let terms = crate::terms::of_case(tx, case_id).await?;
        let params = templates::params(&command, terms.as_ref()).map_err(HandleError::Malformed)?;
        let mobile_index = self.pii.blind_index(&sealed::e164(&command.mobile));
        let contact = SmsContact {
            mobile: command.mobile.clone(),
            template_params: params,
        };
        let contact_enc = sealed::seal_sms(&self.pii, &id.to_string(), &contact)?;
        lock_case(tx, case_id).await?;
        let now = self.clock.now();
        let due = Utc
            .timestamp_millis_opt(command.due_at_ms)
            .single()
            .unwrap_or(now)
            .max(now);
        // A command for a closed case is dropped here, and counted; for an erased one, its
        // contact is not kept; one overtaken by a renewal reported on a call likewise.
        let sql = format!(
            "INSERT INTO dispatch.sms_messages (id, case_id, policy_no, stage, template, contact_enc, mobile_index,
                 time_zone, marketing, state, next_attempt_at, created_at, last_error, traceparent)
             SELECT $1, $2, $3, $4, $5,
                    CASE WHEN closed.erased_at IS NULL THEN $6 ELSE '\\x'::bytea END,
                    CASE WHEN closed.erased_at IS NULL THEN $7 ELSE '\\x'::bytea END, $8, $9,
                    CASE WHEN closed.case_id IS NOT NULL OR {overtaken} THEN 'withdrawn' ELSE 'queued' END,
                    $10, $11,
                    CASE WHEN closed.case_id IS NOT NULL THEN 'case closed before sending'
                         WHEN {overtaken} THEN 'the customer said on a call the policy was renewed' END,
                    $12
             FROM (SELECT 1) one LEFT JOIN dispatch.closed_cases closed ON closed.case_id = $2
             {ENDED_ON_A_CALL}
             ON CONFLICT (id) DO NOTHING
             RETURNING state",
            overtaken = overtaken("$13")
        );
        let row = sqlx::query_scalar::<_, String>(sqlx::AssertSqlSafe(sql))
            .bind(id)
            .bind(case_id)
            .bind(&command.policy_no)
            .bind(&command.stage)
            .bind(&command.template)
            .bind(&contact_enc)
            .bind(&mobile_index[..])
            .bind(tz.name())
            // The template says whether it is marketing, whatever the command claims.
            .bind(renewal_contract::sms_templates::is_marketing(
                &command.template,
            ))
            .bind(due)
            .bind(now)
            .bind(renewal_platform::telemetry::current_traceparent())
            .bind(command_due(command.due_at_ms, now))
            .fetch_optional(&mut *tx)
            .await?;
        if row.as_deref() == Some("withdrawn") {
            metrics::counter!("sms_total", "status" => "withdrawn").increment(1);
        }
        Ok(())
    }

    fn committed(&self) {
        self.queued.notify_one();
    }
}

/// The case's last call that ended it for us: the customer said they renewed (or were
/// lost). `$2` is the case.
pub(crate) const ENDED_ON_A_CALL: &str = "LEFT JOIN LATERAL (
         SELECT max(t.completed_at) AS at FROM dispatch.phone_tasks t
         WHERE t.case_id = $2 AND t.state = 'completed'
           AND t.outcome IN ('renewed', 'insured_elsewhere', 'vehicle_sold')) ended ON true";

/// Whether a case still wants contacts, read beside a task or message of it (`$2` is
/// the case) by operations before they put it back: its columns (`closed`,
/// `overtaken`, `wrong_number`) and the joins they need.
pub(crate) struct CaseStops {
    closed: bool,
    overtaken: bool,
    wrong_number: bool,
}

impl CaseStops {
    /// The columns, for a task or message made at `made` (a SQL expression).
    pub(crate) fn columns(made: &str) -> String {
        format!(
            "closed.case_id IS NOT NULL AS closed, {} AS overtaken,
             EXISTS (SELECT 1 FROM dispatch.contact_corrections cc
                     WHERE cc.case_id = $2 AND cc.corrected_at IS NULL) AS wrong_number",
            overtaken(made)
        )
    }

    /// The joins the columns read.
    pub(crate) fn joins() -> String {
        format!("LEFT JOIN dispatch.closed_cases closed ON closed.case_id = $2 {ENDED_ON_A_CALL}")
    }

    pub(crate) fn read(row: &sqlx::postgres::PgRow) -> Result<Self, sqlx::Error> {
        use sqlx::Row;
        Ok(CaseStops {
            closed: row.try_get("closed")?,
            overtaken: row.try_get("overtaken")?,
            wrong_number: row.try_get("wrong_number")?,
        })
    }

    /// Why the case wants no more contacts, if it does not: closed, renewed or lost on
    /// a call after the task or message was made, or a wrong number not corrected yet.
    pub(crate) fn why(&self) -> Option<&'static str> {
        if self.closed {
            Some("the case is closed")
        } else if self.overtaken {
            Some("the customer said on a later call that the policy was renewed or lost")
        } else if self.wrong_number {
            Some("the case's number was reported wrong and is not corrected yet")
        } else {
            None
        }
    }
}

/// Whether a command due at `due` (a SQL parameter) was overtaken by that call: the
/// scheduler fired it before it held the case's timers (due before the call ended, or
/// within the hour after, the time the outcome takes to reach it). What it sends after
/// a reopen is due days later and goes ahead.
pub(crate) fn overtaken(due: &str) -> String {
    format!("(ended.at IS NOT NULL AND {due}::timestamptz < ended.at + interval '1 hour')")
}

/// The command's own due time (its timer's), `now` when it carries none.
pub(crate) fn command_due(due_at_ms: i64, now: chrono::DateTime<Utc>) -> chrono::DateTime<Utc> {
    Utc.timestamp_millis_opt(due_at_ms).single().unwrap_or(now)
}

pub struct ClosedCases;

impl Handler for ClosedCases {
    async fn handle(&self, tx: &mut PgConnection, delivery: &Delivery) -> Result<(), HandleError> {
        let event: CaseClosed = delivery.decode()?;
        let case_id = field::uuid("case_id", &event.case_id)?;
        let closed_at = field::instant_ms("closed_at_ms", event.closed_at_ms)?;
        lock_case(tx, case_id).await?;
        sqlx::query("INSERT INTO dispatch.closed_cases (case_id, closed_at) VALUES ($1, $2) ON CONFLICT DO NOTHING")
            .bind(case_id)
            .bind(closed_at)
            .execute(&mut *tx)
            .await?;
        let withdrawn = sqlx::query(
            "UPDATE dispatch.sms_messages SET state = 'withdrawn', last_error = 'case closed before sending'
             WHERE case_id = $1 AND state = 'queued'",
        )
        .bind(case_id)
        .execute(&mut *tx)
        .await?;
        metrics::counter!("sms_total", "status" => "withdrawn")
            .increment(withdrawn.rows_affected());
        crate::phone::intake::withdraw(tx, case_id).await?;
        Ok(())
    }
}

/// Owner changes: a case's owner tasks follow it.
pub struct OwnerChanges;

impl Handler for OwnerChanges {
    async fn handle(&self, tx: &mut PgConnection, delivery: &Delivery) -> Result<(), HandleError> {
        crate::phone::intake::owner_assigned(tx, delivery).await
    }
}

/// Takes the case's lock until the transaction ends. A close and a new message or task
/// for the same case each read what the other writes (the close withdraws what is
/// queued; the new one checks for a close): without the lock, applied at the same
/// moment, neither sees the other and a task of a closed case stays open. With it, the
/// second waits and then sees the first.
pub(crate) async fn lock_case(
    tx: &mut PgConnection,
    case_id: uuid::Uuid,
) -> Result<(), sqlx::Error> {
    // Advisory locks of dispatch's cases: a class of their own, keyed by the id's first
    // bytes (two cases sharing a key only wait for each other a moment).
    const CASES: i32 = 0x6469_7370;
    let [a, b, c, d, ..] = case_id.into_bytes();
    sqlx::query("SELECT pg_advisory_xact_lock($1, $2)")
        .bind(CASES)
        .bind(i32::from_be_bytes([a, b, c, d]))
        .execute(&mut *tx)
        .await?;
    Ok(())
}
