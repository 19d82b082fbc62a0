//! `GET /v1/opt-outs` (HQ): the numbers that opted out of reminders (a `TD`, `退订`,
//! `STOP`, ... reply, [`super::replies`]), newest first, each masked (138****5678) and
//! with when it opted out. An opted-out number gets no marketing SMS; transactional
//! notices still go.

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use chrono::{DateTime, Utc};
use renewal_platform::paging::{Page, PageQuery};
use serde::Serialize;
use sqlx::Row;
use uuid::Uuid;

use super::failures::SMS_OPERATORS;
use super::{SmsDesk, SmsError};
use crate::sealed;

/// A number that opted out.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct OptOut {
    pub id: Uuid,
    /// The number, masked (138****5678).
    pub mobile_masked: String,
    pub opted_out_at: DateTime<Utc>,
}

/// Where a page continues: before this opt-out (newest first).
type OptOutKey = (DateTime<Utc>, Uuid);

/// `GET /v1/opt-outs`: newest first, paged (HQ).
pub(super) async fn listed(
    State(desk): State<SmsDesk>,
    caller: renewal_platform::Caller,
    query: Result<Query<PageQuery>, QueryRejection>,
) -> Result<Json<Page<OptOut>>, SmsError> {
    caller.require(SMS_OPERATORS)?;
    let Query(page) = query.map_err(|e| SmsError::Invalid(e.body_text()))?;
    let before: Option<OptOutKey> = page.after()?;
    let (before_at, before_id) = before.unzip();
    let size = page.size();
    let rows = sqlx::query(
        "SELECT id, mobile_enc, opted_out_at FROM dispatch.opt_outs
         WHERE (opted_out_at, id) < (coalesce($1, 'infinity'::timestamptz),
                                     coalesce($2, 'ffffffff-ffff-ffff-ffff-ffffffffffff'::uuid))
         ORDER BY opted_out_at DESC, id DESC
         LIMIT $3",
    )
    .bind(before_at)
    .bind(before_id)
    .bind(size + 1)
    .fetch_all(&desk.pool)
    .await?;
    let items = rows
        .iter()
        .map(|r| {
            let id: Uuid = r.try_get("id")?;
            let sealed: Vec<u8> = r.try_get("mobile_enc")?;
            let mobile = sealed::open_opt_out(&desk.pii, &id.to_string(), &sealed)
                .map_err(|source| SmsError::Pii { id, source })?;
            Ok(OptOut {
                id,
                mobile_masked: renewal_platform::pii::mask_mobile(&mobile),
                opted_out_at: r.try_get("opted_out_at")?,
            })
        })
        .collect::<Result<Vec<_>, SmsError>>()?;
    Ok(Json(Page::of(items, size, |o| (o.opted_out_at, o.id))))
}
