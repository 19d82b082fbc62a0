//! Erasure (`dispatch.cmd.erase_personal_data`, from lists: a customer's request, or
//! the retention of cases closed long ago). In the transaction of its inbox row,
//! dispatch:
//!
//! 1. notes each case closed and erased (`closed_cases.erased_at`): the senders' stops
//!    see it within a second, so a message claimed before is not handed over, and a
//!    command for the case that arrives later is kept withdrawn without its contact;
//! 2. withdraws the case's queued SMS and open or leased phone tasks, as a close does
//!    (a holder of a lease may still report the call's outcome);
//! 3. stops asking the vendor about the case's SMS in doubt (a lost answer): that needs
//!    the number. They stay `unknown` for good (a sender still in its call records the
//!    answer it gets);
//! 4. blanks the sealed contacts and blind indexes of the case's SMS and phone tasks,
//!    the replies from the case's numbers (the numbers are read from the case's SMS
//!    before they are blanked; see [`blank_replies`]) and the case's own contact
//!    (`crate::contacts`);
//! 5. clears the contact from dead letters of the case's commands and opening;
//!
//! and answers `dispatch.erasure.done` through its outbox. Rows stay, for the figures.
//! Opt-outs are kept: a number that opted out must stay opted out.

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, Utc};
use renewal_contract::lists::CaseOpened;
use renewal_contract::scheduler::{CreatePhoneTask, SendSms};
use renewal_contract::subject;
use renewal_platform::erasure::ErasureCommand;
use renewal_platform::pii::PiiCipher;
use renewal_platform::{Clock, Delivery, HandleError, Handler, Outbox};
use sqlx::{PgConnection, Row};
use std::sync::Arc;
use uuid::Uuid;

use crate::sealed;

/// What dispatch keeps of an erased case, on purpose.
const KEPT: &[&str] = &[
    "opt_outs: a number that opted out stays opted out (its blind index and sealed number), so no marketing SMS reaches it after the erasure",
    "sms_messages and phone_tasks: each row (case, policy number, stage, template, state, times, vendor ids and codes; a task's outcome with the reason or date the agent recorded) for the figures; their sealed contacts and blind indexes are blanked",
    "sms_replies: each reply's time and whether it opted out, for the figures; its number's index, text and digest are blanked",
    "sms_receipts (the vendor's status codes by message id), contact_corrections (which task's number was wrong: no number of its own), closed_cases, case_owners and case_scopes (case ids, policy numbers, staff, branches, cities): no personal data",
    "the outbox keeps an event's payload until it is published (then none); dispatch.sms.opted_out carries a number and its reply until then",
    "commands already in the DISPATCH stream (dispatch.cmd.send_sms and dispatch.cmd.create_phone_task carry the contact) stay there until it drops them (at most 30 days)",
];

/// When an SMS in doubt of an erased case is asked about: never (9999-12-31; a date
/// rather than Postgres' infinity, which chrono does not read).
pub(crate) fn never() -> DateTime<Utc> {
    DateTime::from_timestamp(253_402_214_400, 0).unwrap_or(DateTime::<Utc>::MAX_UTC)
}

/// Why such an SMS stays in doubt.
pub(crate) const CANNOT_ASK: &str = "personal data erased: the vendor cannot be asked about it";

pub struct Erasures {
    pub clock: Clock,
    pub outbox: Outbox,
    /// Opens the cases' SMS contacts, for their numbers under every key.
    pub pii: Arc<PiiCipher>,
}

impl Handler for Erasures {
    async fn handle(&self, tx: &mut PgConnection, delivery: &Delivery) -> Result<(), HandleError> {
        if delivery.subject != subject::DISPATCH_CMD_ERASE_PERSONAL_DATA {
            return Err(HandleError::Malformed(format!(
                "unexpected subject {}",
                delivery.subject
            )));
        }
        erase(tx, &self.outbox, &self.pii, self.clock.now(), delivery).await
    }

    /// The command names cases, never a customer: a refused one is kept whole.
    fn redact(&self, delivery: &Delivery) -> Option<Vec<u8>> {
        Some(delivery.payload.to_vec())
    }
}

/// Erases what dispatch keeps of the command's cases and answers it (the commands
/// consumer, whose `dispatch.cmd.>` also takes erasures, comes here too).
pub async fn erase(
    tx: &mut PgConnection,
    outbox: &Outbox,
    pii: &PiiCipher,
    now: DateTime<Utc>,
    delivery: &Delivery,
) -> Result<(), HandleError> {
    let command = ErasureCommand::decode(delivery)?;
    let counts = erase_cases(tx, outbox, pii, &command.case_ids, now).await?;
    let mut kept: Vec<String> = KEPT.iter().map(|k| (*k).to_owned()).collect();
    if counts.in_doubt > 0 {
        kept.push(format!(
            "sms_messages: {} SMS whose vendor answer was lost stay 'unknown' for good: the vendor cannot be asked about them without the number",
            counts.in_doubt
        ));
    }
    let done = subject::DISPATCH_ERASURE_DONE;
    command
        .answer(
            tx,
            outbox,
            crate::SCHEMA,
            done,
            counts.by_table(),
            kept,
            now,
        )
        .await?;
    Ok(())
}

/// What one erasure changed.
#[derive(Debug, Default)]
struct Counts {
    sms_messages: u64,
    sms_withdrawn: u64,
    in_doubt: u64,
    phone_tasks: u64,
    phone_tasks_withdrawn: u64,
    sms_replies: u64,
    case_contacts: u64,
    dead_letters: u64,
}

impl Counts {
    fn by_table(&self) -> HashMap<String, u64> {
        [
            ("sms_messages", self.sms_messages),
            ("sms_withdrawn", self.sms_withdrawn),
            ("phone_tasks", self.phone_tasks),
            ("phone_tasks_withdrawn", self.phone_tasks_withdrawn),
            ("sms_replies", self.sms_replies),
            ("case_contacts", self.case_contacts),
            ("dead_letters", self.dead_letters),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect()
    }
}

async fn erase_cases(
    tx: &mut PgConnection,
    outbox: &Outbox,
    pii: &PiiCipher,
    case_ids: &[Uuid],
    now: DateTime<Utc>,
) -> Result<Counts, sqlx::Error> {
    let mut counts = Counts::default();
    if case_ids.is_empty() {
        return Ok(counts);
    }
    // In key order, as each close and each new message or task takes its case's lock.
    for case_id in case_ids {
        crate::commands::lock_case(tx, *case_id).await?;
    }
    sqlx::query(
        "INSERT INTO dispatch.closed_cases (case_id, closed_at, erased_at)
         SELECT id, $2, $2 FROM unnest($1::uuid[]) AS id
         ON CONFLICT (case_id) DO UPDATE
             SET erased_at = coalesce(dispatch.closed_cases.erased_at, EXCLUDED.erased_at)",
    )
    .bind(case_ids)
    .bind(now)
    .execute(&mut *tx)
    .await?;
    counts.sms_withdrawn = sqlx::query(
        "UPDATE dispatch.sms_messages SET state = 'withdrawn', last_error = 'personal data erased before sending'
         WHERE case_id = ANY($1) AND state = 'queued'",
    )
    .bind(case_ids)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    metrics::counter!("sms_total", "status" => "withdrawn").increment(counts.sms_withdrawn);
    counts.in_doubt = sqlx::query(
        "UPDATE dispatch.sms_messages SET next_attempt_at = $2, last_error = $3
         WHERE case_id = ANY($1) AND state IN ('sending', 'unknown') AND next_attempt_at < $2",
    )
    .bind(case_ids)
    .bind(never())
    .bind(CANNOT_ASK)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    counts.phone_tasks_withdrawn =
        crate::phone::intake::withdraw_all(tx, case_ids, "personal data erased").await?;
    let numbers = blank_messages(tx, pii, case_ids, &mut counts).await?;
    counts.phone_tasks = sqlx::query(
        "UPDATE dispatch.phone_tasks SET contact_enc = '\\x'
         WHERE case_id = ANY($1) AND length(contact_enc) > 0",
    )
    .bind(case_ids)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    counts.sms_replies = blank_replies(tx, &numbers).await?;
    counts.case_contacts = sqlx::query(
        "UPDATE dispatch.case_contacts SET contact_enc = '\\x'
         WHERE case_id = ANY($1) AND length(contact_enc) > 0",
    )
    .bind(case_ids)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    counts.dead_letters = redact_dead_letters(tx, outbox, case_ids).await?;
    Ok(counts)
}

/// Blanks the cases' SMS contacts and blind indexes; returns the cases' numbers as
/// blind indexes, read before: the stored ones, and each number under every key of the
/// keyring (a reply indexed under another key than its message, during a rotation,
/// is found too).
async fn blank_messages(
    tx: &mut PgConnection,
    pii: &PiiCipher,
    case_ids: &[Uuid],
    counts: &mut Counts,
) -> Result<Vec<Vec<u8>>, sqlx::Error> {
    // One pass over the messages: only queued ones are indexed by case (an index by
    // case would be written at every step of every message; erasures are rare).
    let rows = sqlx::query(
        "SELECT id, contact_enc, mobile_index FROM dispatch.sms_messages
         WHERE case_id = ANY($1) AND (length(contact_enc) > 0 OR length(mobile_index) > 0)
         ORDER BY id FOR UPDATE",
    )
    .bind(case_ids)
    .fetch_all(&mut *tx)
    .await?;
    let mut numbers: HashSet<Vec<u8>> = HashSet::new();
    let mut ids = Vec::with_capacity(rows.len());
    for row in &rows {
        let id: Uuid = row.try_get("id")?;
        let index: Vec<u8> = row.try_get("mobile_index")?;
        let contact: Vec<u8> = row.try_get("contact_enc")?;
        // A contact that does not open still has its stored index.
        if let Ok(opened) = sealed::open_sms(pii, &id.to_string(), &contact) {
            numbers.extend(pii.blind_indexes_bytes(&sealed::e164(&opened.mobile)));
        }
        if !index.is_empty() {
            numbers.insert(index);
        }
        ids.push(id);
    }
    counts.sms_messages = sqlx::query(
        "UPDATE dispatch.sms_messages SET contact_enc = '\\x', mobile_index = '\\x' WHERE id = ANY($1)",
    )
    .bind(&ids)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    Ok(numbers.into_iter().collect())
}

/// Blanks the replies from these numbers: text and number (`reply_enc`) and the
/// number's index. The row stays (when it came, whether it opted out). A blank index
/// alone would break `UNIQUE (mobile_index, send_time, sequence_id, content_digest)`
/// for two replies of different numbers at the same time and sequence, so the digest
/// becomes the row's own id (16 bytes, unique, and never a keyed digest, which is 32):
/// blanked rows never collide with each other nor with a reply still to come. A
/// repeated push of a blanked reply is then kept again as new (with its number);
/// the vendor repeats a push only until we answer it, so only a reply pushed anew
/// right after the erasure could come back.
async fn blank_replies(tx: &mut PgConnection, numbers: &[Vec<u8>]) -> Result<u64, sqlx::Error> {
    if numbers.is_empty() {
        return Ok(0);
    }
    Ok(sqlx::query(
        "UPDATE dispatch.sms_replies
         SET reply_enc = '\\x', mobile_index = '\\x', content_digest = uuid_send(id)
         WHERE mobile_index = ANY($1)",
    )
    .bind(numbers)
    .execute(&mut *tx)
    .await?
    .rows_affected())
}

/// Clears the contact from the dead letters of the cases' commands, sealed or not (a
/// replay of one then makes a withdrawn message or task without it: its case is
/// erased). Returns how many letters it changed.
async fn redact_dead_letters(
    tx: &mut PgConnection,
    outbox: &Outbox,
    case_ids: &[Uuid],
) -> Result<u64, sqlx::Error> {
    let wanted: HashSet<Uuid> = case_ids.iter().copied().collect();
    let subjects = [
        subject::DISPATCH_CMD_SEND_SMS,
        subject::DISPATCH_CMD_CREATE_PHONE_TASK,
        subject::LISTS_CASE_OPENED,
    ];
    renewal_platform::dead_letters::rewrite(tx, outbox, &subjects, |subject_name, payload| {
        redacted(subject_name, payload, &wanted)
    })
    .await
}

/// A command or opening of one of the cases with its contact cleared; None for another
/// case's, one already cleared, or one that does not decode (it names no case it could
/// be found by).
fn redacted(subject_name: &str, payload: &[u8], cases: &HashSet<Uuid>) -> Option<Vec<u8>> {
    let ours = |case_id: &str| Uuid::parse_str(case_id.trim()).is_ok_and(|id| cases.contains(&id));
    let clear = |fields: [&mut String; 3]| {
        let had = fields.iter().any(|f| !f.is_empty());
        fields.into_iter().for_each(String::clear);
        had
    };
    if subject_name == subject::LISTS_CASE_OPENED {
        let mut c = <CaseOpened as prost::Message>::decode(payload).ok()?;
        let had = c.customer.take().is_some();
        (ours(&c.case_id) && had).then(|| prost::Message::encode_to_vec(&c))
    } else if subject_name == subject::DISPATCH_CMD_SEND_SMS {
        let mut c = <SendSms as prost::Message>::decode(payload).ok()?;
        let had = clear([&mut c.mobile, &mut c.customer_name, &mut c.plate]);
        (ours(&c.case_id) && had).then(|| prost::Message::encode_to_vec(&c))
    } else {
        let mut c = <CreatePhoneTask as prost::Message>::decode(payload).ok()?;
        let had = clear([&mut c.mobile, &mut c.customer_name, &mut c.plate]);
        (ours(&c.case_id) && had).then(|| prost::Message::encode_to_vec(&c))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn never_is_the_last_day_postgres_and_chrono_both_read() {
        assert_eq!(never().to_rfc3339(), "9999-12-31T00:00:00+00:00");
    }

    #[test]
    fn a_dead_letter_is_cleared_only_for_the_erased_cases() {
        let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
        let sms = |case: Uuid| SendSms {
            case_id: case.to_string(),
            mobile: "+8613812345678".into(),
            customer_name: "王芳".into(),
            plate: "沪A1".into(),
            ..SendSms::default()
        };
        let cases = HashSet::from([a]);
        let encoded = prost::Message::encode_to_vec(&sms(a));
        let cleared = redacted(subject::DISPATCH_CMD_SEND_SMS, &encoded, &cases).expect("ours");
        let back = <SendSms as prost::Message>::decode(cleared.as_slice()).expect("decodes");
        assert_eq!(
            (back.mobile.as_str(), back.customer_name.as_str()),
            ("", "")
        );
        assert_eq!(back.case_id, a.to_string());
        assert!(redacted(subject::DISPATCH_CMD_SEND_SMS, &cleared, &cases).is_none());
        let other = prost::Message::encode_to_vec(&sms(b));
        assert!(redacted(subject::DISPATCH_CMD_SEND_SMS, &other, &cases).is_none());
        assert!(redacted(subject::DISPATCH_CMD_CREATE_PHONE_TASK, b"\xff", &cases).is_none());
    }
}
