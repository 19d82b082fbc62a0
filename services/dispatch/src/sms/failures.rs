//! The SMS that did not reach their customer, as operations see them, and a resend:
//! `GET /v1/sms?state=failed|dead` (the vendor refused one or its receipt said it was not
//! delivered: failed; the vendor could not be reached in five attempts: dead), and
//! `POST /v1/sms/{id}:resend` (HQ).
//!
//! A resend is a new message, queued now, with an id of its own (the vendor's OutId):
//! the first one's late receipts, its sender's late answer and the vendor's record of it
//! never touch the new one, which the sender treats as any queued message (a closed case
//! withdraws it, an opted-out number suppresses a reminder, the night holds it until the
//! morning, the vendor gets it at most once per attempt). It goes to the case's current
//! number (a corrected mobile replaces the one the first was sent to), with the first's
//! template and parameters. The failed or dead message names it and leaves the list.
//!
//! The list shows the number masked (138****5678), opened from the message's sealed
//! contact; never the name, plate or template parameters.

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use chrono::{DateTime, Utc};
use renewal_platform::Role;
use renewal_platform::paging::{Page, PageQuery};
use serde::{Deserialize, Serialize};
use sqlx::{PgConnection, Row};
use uuid::Uuid;

use super::sending::SmsState;
use super::{SmsDesk, SmsError};
use crate::commands::CaseStops;
use crate::sealed::{self, SmsContact};

/// Who lists the failed and dead SMS, resends them and reads the opt-outs.
pub const SMS_OPERATORS: &[Role] = &[Role::HqAdmin];

#[derive(Debug, Deserialize)]
pub struct SmsQuery {
    /// failed or dead.
    pub state: Option<String>,
    #[serde(flatten)]
    pub page: PageQuery,
}

/// A message that did not reach its customer.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct FailedSms {
    pub id: Uuid,
    pub case_id: Uuid,
    pub policy_no: String,
    pub stage: String,
    pub template: String,
    /// failed or dead.
    pub state: String,
    pub marketing: bool,
    /// The number, masked (138****5678); `[erased]` once the customer was erased.
    pub mobile_masked: String,
    pub attempts: i32,
    /// The vendor's code of the refusal or the receipt, or `dead_letter`.
    pub vendor_code: Option<String>,
    /// Why, in the vendor's or the sender's words.
    pub last_error: Option<String>,
    pub created_at: DateTime<Utc>,
    pub sent_at: Option<DateTime<Utc>>,
    pub receipt_at: Option<DateTime<Utc>>,
}

/// Where a page continues: after this message (oldest first).
type FailedKey = (DateTime<Utc>, Uuid);

/// `GET /v1/sms?state=failed|dead`: oldest first, paged (HQ).
pub(super) async fn listed(
    State(desk): State<SmsDesk>,
    caller: renewal_platform::Caller,
    query: Result<Query<SmsQuery>, QueryRejection>,
) -> Result<Json<Page<FailedSms>>, SmsError> {
    caller.require(SMS_OPERATORS)?;
    let Query(query) = query.map_err(|e| SmsError::Invalid(e.body_text()))?;
    let state = match query.state.as_deref().map(str::trim) {
        Some("failed") => SmsState::Failed,
        Some("dead") => SmsState::Dead,
        other => {
            return Err(SmsError::Invalid(format!(
                "state {}: failed or dead SMS are listed (state=failed or state=dead)",
                other.map_or_else(|| "missing".to_owned(), |s| format!("{s:?}"))
            )));
        }
    };
    let after: Option<FailedKey> = query.page.after()?;
    let (after_at, after_id) = after.unzip();
    let size = query.page.size();
    let rows = sqlx::query(
        "SELECT id, case_id, policy_no, stage, template, state, marketing, contact_enc,
                attempts, vendor_code, last_error, created_at, sent_at, receipt_at
         FROM dispatch.sms_messages
         WHERE state = $1 AND state IN ('failed', 'dead') AND resent_as IS NULL
           AND (created_at, id) > (coalesce($2, '-infinity'::timestamptz),
                                   coalesce($3, '00000000-0000-0000-0000-000000000000'::uuid))
         ORDER BY created_at, id
         LIMIT $4",
    )
    .bind(state.as_str())
    .bind(after_at)
    .bind(after_id)
    .bind(size + 1)
    .fetch_all(&desk.pool)
    .await?;
    let items = rows
        .iter()
        .map(|r| failed(&desk, r))
        .collect::<Result<Vec<_>, SmsError>>()?;
    Ok(Json(Page::of(items, size, |m| (m.created_at, m.id))))
}

/// One row of the list, its number opened and masked (a number that does not open,
/// which the sender fails for that reason, shows as `[unreadable]`).
fn failed(desk: &SmsDesk, r: &sqlx::postgres::PgRow) -> Result<FailedSms, SmsError> {
    let id: Uuid = r.try_get("id")?;
    let sealed: Vec<u8> = r.try_get("contact_enc")?;
    let mobile_masked = if sealed.is_empty() {
        "[erased]".to_owned()
    } else {
        match sealed::open_sms(&desk.pii, &id.to_string(), &sealed) {
            Ok(contact) => renewal_platform::pii::mask_mobile(&contact.mobile),
            Err(e) => {
                tracing::warn!(message_id = %id, error = %e, "a failed SMS's number does not open");
                "[unreadable]".to_owned()
            }
        }
    };
    Ok(FailedSms {
        id,
        case_id: r.try_get("case_id")?,
        policy_no: r.try_get("policy_no")?,
        stage: r.try_get("stage")?,
        template: r.try_get("template")?,
        state: r.try_get("state")?,
        marketing: r.try_get("marketing")?,
        mobile_masked,
        attempts: r.try_get("attempts")?,
        vendor_code: r.try_get("vendor_code")?,
        last_error: r.try_get("last_error")?,
        created_at: r.try_get("created_at")?,
        sent_at: r.try_get("sent_at")?,
        receipt_at: r.try_get("receipt_at")?,
    })
}

/// What a resend did: the new message and where it has got to.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Resent {
    /// The failed or dead message.
    pub id: Uuid,
    /// The new message sent in its place (its id is the vendor's OutId).
    pub message_id: Uuid,
    /// The new message's state: queued, then sending, sent, delivered, ... as the
    /// sender takes it.
    pub state: String,
    pub attempts: i32,
    /// When it is next tried (the sender holds it until the morning at night).
    pub next_attempt_at: DateTime<Utc>,
    pub resent_at: DateTime<Utc>,
}

/// What a resend found of the message (read under its case's lock).
struct Found {
    id: Uuid,
    case_id: Uuid,
    state: String,
    marketing: bool,
    contact: Vec<u8>,
    resent_as: Option<Uuid>,
    resent_at: Option<DateTime<Utc>>,
    /// Why the case wants no more contacts, if it does not.
    stopped: Option<&'static str>,
}

/// `POST /v1/sms/{id}:resend` (HQ): a failed or dead message sent again as a new
/// message, queued now, to the case's current number. A message resent already is not
/// sent again: the answer says where its resend has got to (a retried request gets its
/// 200). 409 for a message in any other state, one whose case wants no more contacts
/// (closed, erased, renewed or lost on a call, a wrong number not corrected), and a
/// reminder to a number that opted out. The case is locked as a close locks it.
pub async fn resend(desk: &SmsDesk, id: Uuid) -> Result<Resent, SmsError> {
    let now = desk.clock.now();
    let mut tx = desk.pool.begin().await?;
    let found = found(&mut tx, id).await?;
    if let (Some(message_id), Some(resent_at)) = (found.resent_as, found.resent_at) {
        return answered(&mut tx, id, message_id, resent_at).await;
    }
    refuse_unless_resendable(&found)?;
    let contact = addressed(desk, &mut tx, &found).await?;
    if found.marketing && opted_out(desk, &mut tx, &contact.mobile).await? {
        return Err(SmsError::OptedOut(
            "the customer opted out of reminders; a reminder is not sent again".into(),
        ));
    }
    let message_id = Uuid::now_v7();
    let contact_enc = sealed::seal_sms(&desk.pii, &message_id.to_string(), &contact)
        .map_err(|source| SmsError::Pii { id, source })?;
    let index = desk.pii.blind_index(&sealed::e164(&contact.mobile));
    sqlx::query(
        "WITH resent AS (
             INSERT INTO dispatch.sms_messages (id, case_id, policy_no, stage, template, contact_enc,
                 mobile_index, time_zone, marketing, state, next_attempt_at, created_at, traceparent)
             SELECT $2, case_id, policy_no, stage, template, $3, $4, time_zone, marketing,
                    'queued', $5, $5, $6
             FROM dispatch.sms_messages WHERE id = $1
         )
         UPDATE dispatch.sms_messages SET resent_as = $2, resent_at = $5 WHERE id = $1",
    )
    .bind(id)
    .bind(message_id)
    .bind(contact_enc)
    .bind(&index[..])
    .bind(now)
    .bind(renewal_platform::telemetry::current_traceparent())
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    desk.queued.notify_one();
    renewal_platform::activity::record();
    metrics::counter!("sms_total", "status" => "resent").increment(1);
    tracing::info!(message_id = %id, resent_as = %message_id, "a failed or dead SMS was sent again");
    Ok(Resent {
        id,
        message_id,
        state: SmsState::Queued.as_str().to_owned(),
        attempts: 0,
        next_attempt_at: now,
        resent_at: now,
    })
}

/// A resend asked for again: where the new message has got to.
async fn answered(
    tx: &mut PgConnection,
    id: Uuid,
    message_id: Uuid,
    resent_at: DateTime<Utc>,
) -> Result<Resent, SmsError> {
    let (state, attempts, next_attempt_at): (String, i32, DateTime<Utc>) = sqlx::query_as(
        "SELECT state, attempts, next_attempt_at FROM dispatch.sms_messages WHERE id = $1",
    )
    .bind(message_id)
    .fetch_optional(&mut *tx)
    .await?
    .ok_or(SmsError::NotFound(message_id))?;
    Ok(Resent {
        id,
        message_id,
        state,
        attempts,
        next_attempt_at,
        resent_at,
    })
}

/// The message, its case locked first (as a close locks it), then its row, with
/// whether its case still wants contacts.
async fn found(tx: &mut PgConnection, id: Uuid) -> Result<Found, SmsError> {
    let case_id: Option<Uuid> =
        sqlx::query_scalar("SELECT case_id FROM dispatch.sms_messages WHERE id = $1")
            .bind(id)
            .fetch_optional(&mut *tx)
            .await?;
    let case_id = case_id.ok_or(SmsError::NotFound(id))?;
    crate::commands::lock_case(tx, case_id).await?;
    let sql = format!(
        "SELECT m.state, m.marketing, m.contact_enc, m.resent_as, m.resent_at, {stops}
         FROM dispatch.sms_messages m {joins}
         WHERE m.id = $1
         FOR UPDATE OF m",
        stops = CaseStops::columns("m.created_at"),
        joins = CaseStops::joins(),
    );
    let row = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(id)
        .bind(case_id)
        .fetch_optional(&mut *tx)
        .await?
        .ok_or(SmsError::NotFound(id))?;
    let contact: Vec<u8> = row.try_get("contact_enc")?;
    let erased = contact
        .is_empty()
        .then_some("the customer's data was erased");
    let stopped = CaseStops::read(&row)?.why().or(erased);
    Ok(Found {
        id,
        case_id,
        state: row.try_get("state")?,
        marketing: row.try_get("marketing")?,
        contact,
        resent_as: row.try_get("resent_as")?,
        resent_at: row.try_get("resent_at")?,
        stopped,
    })
}

/// Refuses (409) a message that is not failed or dead, and one whose case wants no
/// more contacts.
fn refuse_unless_resendable(found: &Found) -> Result<(), SmsError> {
    if found.state != SmsState::Failed.as_str() && found.state != SmsState::Dead.as_str() {
        return Err(SmsError::NotResendable(format!(
            "the message is {}; only a failed or dead SMS is sent again",
            found.state
        )));
    }
    match found.stopped {
        Some(why) => Err(SmsError::CaseStopped(why.into())),
        None => Ok(()),
    }
}

/// The first message's contact, to the case's current number if dispatch holds one
/// (a corrected mobile replaces the one the first was sent to).
async fn addressed(
    desk: &SmsDesk,
    tx: &mut PgConnection,
    found: &Found,
) -> Result<SmsContact, SmsError> {
    let unreadable = |id| move |source| SmsError::Unreadable { id, source };
    let mut contact = sealed::open_sms(&desk.pii, &found.id.to_string(), &found.contact)
        .map_err(unreadable(found.id))?;
    let current: Option<Vec<u8>> =
        sqlx::query_scalar("SELECT contact_enc FROM dispatch.case_contacts WHERE case_id = $1")
            .bind(found.case_id)
            .fetch_optional(&mut *tx)
            .await?;
    if let Some(sealed) = current.filter(|s| !s.is_empty()) {
        let case = crate::contacts::open(&desk.pii, found.case_id, &sealed)
            .map_err(unreadable(found.case_id))?;
        if !case.mobile.trim().is_empty() {
            contact.mobile = case.mobile;
        }
    }
    Ok(contact)
}

/// Whether a number opted out (under any key of the keyring, as the sender checks it).
async fn opted_out(desk: &SmsDesk, tx: &mut PgConnection, mobile: &str) -> Result<bool, SmsError> {
    Ok(sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM dispatch.opt_outs WHERE mobile_index = ANY($1))",
    )
    .bind(desk.pii.blind_indexes_bytes(&sealed::e164(mobile)))
    .fetch_one(&mut *tx)
    .await?)
}
