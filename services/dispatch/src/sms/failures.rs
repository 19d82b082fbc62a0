//! The SMS that did not reach their customer, as operations see them, and a resend:
//! `GET /v1/sms?state=failed|dead` (the vendor refused one or its receipt said it was not
//! delivered: failed; the vendor could not be reached in five attempts: dead), and
//! `POST /v1/sms/{id}:resend` (HQ): a failed or dead message is queued again, due now,
//! with its attempts again. The sender then treats it as any queued message: a closed
//! case withdraws it, an opted-out number suppresses a marketing one, the night holds it
//! until the morning, and the vendor gets it at most once per attempt.
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
use crate::sealed;

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
    /// When HQ last sent it again, if it did.
    pub resent_at: Option<DateTime<Utc>>,
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
                attempts, vendor_code, last_error, created_at, sent_at, receipt_at, resent_at
         FROM dispatch.sms_messages
         WHERE state = $1 AND state IN ('failed', 'dead')
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

/// One row of the list, its number opened and masked.
fn failed(desk: &SmsDesk, r: &sqlx::postgres::PgRow) -> Result<FailedSms, SmsError> {
    let id: Uuid = r.try_get("id")?;
    let sealed: Vec<u8> = r.try_get("contact_enc")?;
    let mobile_masked = if sealed.is_empty() {
        "[erased]".to_owned()
    } else {
        let contact = sealed::open_sms(&desk.pii, &id.to_string(), &sealed)
            .map_err(|source| SmsError::Pii { id, source })?;
        renewal_platform::pii::mask_mobile(&contact.mobile)
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
        resent_at: r.try_get("resent_at")?,
    })
}

/// What a resend did: the message queued again; asked again before it failed anew,
/// where the resend has got to.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Resent {
    pub id: Uuid,
    /// queued (then sending, sent, delivered, ... as the sender takes it).
    pub state: String,
    /// Attempts since the resend (0: it has its 5 attempts again).
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
    attempts: i32,
    marketing: bool,
    contact: Vec<u8>,
    closed: bool,
    resent_at: Option<DateTime<Utc>>,
    next_attempt_at: DateTime<Utc>,
}

/// `POST /v1/sms/{id}:resend` (HQ): a failed or dead message queued again, due now,
/// with its attempts again. A message resent already and not failed since is not sent
/// again: the answer says where the resend has got to (a retried request gets its 200).
/// 409 for a message in any other state, one whose case is closed or whose customer
/// was erased, and a marketing message to a number that opted out. The case is locked
/// as a close locks it.
pub async fn resend(desk: &SmsDesk, id: Uuid) -> Result<Resent, SmsError> {
    let now = desk.clock.now();
    let mut tx = desk.pool.begin().await?;
    let found = found(&mut tx, id).await?;
    let troubled = [SmsState::Failed.as_str(), SmsState::Dead.as_str()];
    if let Some(resent_at) = found.resent_at
        && !troubled.contains(&found.state.as_str())
    {
        // Resent already and not failed since: the resend is done; say where it is.
        return Ok(Resent {
            id,
            state: found.state,
            attempts: found.attempts,
            next_attempt_at: found.next_attempt_at,
            resent_at,
        });
    }
    refuse_unless_resendable(desk, &mut tx, &found).await?;
    sqlx::query(
        "UPDATE dispatch.sms_messages
         SET state = 'queued', attempts = 0, next_attempt_at = $2, resent_at = $2,
             vendor_message_id = NULL, vendor_code = NULL, last_error = NULL,
             sent_at = NULL, receipt_at = NULL, sending_on = NULL
         WHERE id = $1",
    )
    .bind(id)
    .bind(now)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    desk.queued.notify_one();
    renewal_platform::activity::record();
    metrics::counter!("sms_total", "status" => "resent").increment(1);
    tracing::info!(message_id = %id, "a failed or dead SMS was queued again");
    Ok(Resent {
        id,
        state: SmsState::Queued.as_str().to_owned(),
        attempts: 0,
        next_attempt_at: now,
        resent_at: now,
    })
}

/// The message, its case locked first (as a close locks it), then its row.
async fn found(tx: &mut PgConnection, id: Uuid) -> Result<Found, SmsError> {
    let case_id: Option<Uuid> =
        sqlx::query_scalar("SELECT case_id FROM dispatch.sms_messages WHERE id = $1")
            .bind(id)
            .fetch_optional(&mut *tx)
            .await?;
    let case_id = case_id.ok_or(SmsError::NotFound(id))?;
    crate::commands::lock_case(tx, case_id).await?;
    let row = sqlx::query(
        "SELECT m.state, m.attempts, m.marketing, m.contact_enc, m.resent_at, m.next_attempt_at,
                closed.case_id IS NOT NULL AS closed
         FROM dispatch.sms_messages m
         LEFT JOIN dispatch.closed_cases closed ON closed.case_id = m.case_id
         WHERE m.id = $1
         FOR UPDATE OF m",
    )
    .bind(id)
    .fetch_optional(&mut *tx)
    .await?
    .ok_or(SmsError::NotFound(id))?;
    Ok(Found {
        id,
        case_id,
        state: row.try_get("state")?,
        attempts: row.try_get("attempts")?,
        marketing: row.try_get("marketing")?,
        contact: row.try_get("contact_enc")?,
        closed: row.try_get("closed")?,
        resent_at: row.try_get("resent_at")?,
        next_attempt_at: row.try_get("next_attempt_at")?,
    })
}

/// Refuses (409) a message that is not failed or dead, one whose case is closed or
/// whose customer was erased, and a marketing message to a number that opted out.
async fn refuse_unless_resendable(
    desk: &SmsDesk,
    tx: &mut PgConnection,
    found: &Found,
) -> Result<(), SmsError> {
    if found.state != SmsState::Failed.as_str() && found.state != SmsState::Dead.as_str() {
        return Err(SmsError::NotResendable(format!(
            "the message is {}; only a failed or dead SMS is sent again",
            found.state
        )));
    }
    if found.closed {
        return Err(SmsError::CaseStopped(format!(
            "case {} is closed: it wants no more contacts",
            found.case_id
        )));
    }
    if found.contact.is_empty() {
        return Err(SmsError::CaseStopped(
            "the customer's data was erased".into(),
        ));
    }
    if found.marketing && opted_out(desk, tx, found).await? {
        return Err(SmsError::OptedOut(
            "the customer opted out of reminders; a reminder is not sent again".into(),
        ));
    }
    Ok(())
}

/// Whether a marketing message's number opted out (under any key of the keyring, as
/// the sender checks it).
async fn opted_out(desk: &SmsDesk, tx: &mut PgConnection, found: &Found) -> Result<bool, SmsError> {
    let contact =
        sealed::open_sms(&desk.pii, &found.id.to_string(), &found.contact).map_err(|source| {
            SmsError::Pii {
                id: found.id,
                source,
            }
        })?;
    let indexes = desk.pii.blind_indexes_bytes(&sealed::e164(&contact.mobile));
    Ok(sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM dispatch.opt_outs WHERE mobile_index = ANY($1))",
    )
    .bind(indexes)
    .fetch_one(&mut *tx)
    .await?)
}
