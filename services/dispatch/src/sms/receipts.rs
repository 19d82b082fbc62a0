//! The vendor's webhook for delivery receipts (`SmsReport`; replies, `SmsUp`, are in
//! `replies.rs` on the same token): a JSON array, answered
//! with `{"code":0,"msg":"成功"}`. The vendor does not sign its pushes, so the path
//! carries a secret token (wrong token: 401). Receipts are idempotent (the vendor
//! repeats them) and monotonic (a delivered message stays delivered); a receipt for a
//! message we do not know is kept for reconciliation. Bodies over 1 MiB or malformed:
//! 4xx, nothing written.

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use renewal_contract::dispatch::{SmsStatus, SmsStatusChanged};
use renewal_contract::subject;
use renewal_platform::{Clock, Outbox};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use sqlx::{PgPool, Row};
use tracing::Instrument;
use uuid::Uuid;

pub const MAX_BODY: usize = 1024 * 1024;

#[derive(Clone)]
pub struct Webhook {
    pub pool: PgPool,
    pub outbox: Outbox,
    pub clock: Clock,
    pub token: SecretString,
}

pub fn routes(webhook: Webhook) -> Router {
    Router::new()
        .route("/v1/webhooks/sms/{token}/report", post(report))
        .route("/v1/webhooks/sms/{token}/up", post(super::replies::up))
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(webhook)
}

/// One delivery receipt as the vendor pushes it.
#[derive(Debug, Deserialize)]
pub struct SmsReport {
    pub phone_number: String,
    #[serde(default)]
    pub send_time: String,
    pub report_time: String,
    pub success: bool,
    pub err_code: String,
    #[serde(default)]
    pub err_msg: String,
    #[serde(default)]
    pub sms_size: String,
    pub biz_id: String,
    #[serde(default)]
    pub out_id: String,
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum WebhookError {
    #[error("unauthorized")]
    Unauthorized,
    #[error("malformed body: {0}")]
    Malformed(String),
    #[error("postgres: {0}")]
    Db(#[from] sqlx::Error),
}

impl IntoResponse for WebhookError {
    fn into_response(self) -> Response {
        let (status, code) = match &self {
            WebhookError::Unauthorized => (StatusCode::UNAUTHORIZED, 401),
            WebhookError::Malformed(_) => (StatusCode::BAD_REQUEST, 400),
            WebhookError::Db(e) => {
                tracing::error!(error = %e, "recording receipts failed; the vendor will retry");
                (StatusCode::SERVICE_UNAVAILABLE, 503)
            }
        };
        metrics::counter!("webhook_rejects_total", "status" => status.as_str().to_owned())
            .increment(1);
        let msg = match self {
            WebhookError::Db(_) => "temporarily unavailable".to_owned(),
            other => other.to_string(),
        };
        (
            status,
            Json(serde_json::json!({ "code": code, "msg": msg })),
        )
            .into_response()
    }
}

/// Constant-time comparison, so the token cannot be guessed byte by byte.
pub(crate) fn same_token(given: &str, expected: &str) -> bool {
    let (a, b) = (given.as_bytes(), expected.as_bytes());
    let mut diff = a.len() ^ b.len();
    for i in 0..a.len().max(b.len()) {
        diff |= (a.get(i).copied().unwrap_or(0) ^ b.get(i).copied().unwrap_or(0)) as usize;
    }
    diff == 0
}

async fn report(
    State(hook): State<Webhook>,
    Path(token): Path<String>,
    body: Bytes,
) -> Result<Json<serde_json::Value>, WebhookError> {
    if !same_token(&token, hook.token.expose_secret()) {
        return Err(WebhookError::Unauthorized);
    }
    let reports: Vec<SmsReport> =
        serde_json::from_slice(&body).map_err(|e| WebhookError::Malformed(e.to_string()))?;
    for r in &reports {
        if r.biz_id.is_empty() && r.out_id.is_empty() {
            return Err(WebhookError::Malformed(
                "a receipt has neither biz_id nor out_id".into(),
            ));
        }
    }
    let changed = record(&hook, &reports).await?;
    renewal_platform::activity::record();
    if changed > 0 {
        hook.outbox.wake();
    }
    metrics::counter!("sms_receipts_total").increment(reports.len() as u64);
    Ok(Json(serde_json::json!({ "code": 0, "msg": "成功" })))
}

/// Records a batch in one transaction; returns how many messages changed state.
async fn record(hook: &Webhook, reports: &[SmsReport]) -> Result<usize, sqlx::Error> {
    let now = hook.clock.now();
    let mut tx = hook.pool.begin().await?;
    let mut changed = 0;
    for r in reports {
        let out_id = Uuid::parse_str(&r.out_id).ok();
        let fresh = sqlx::query(
            "INSERT INTO dispatch.sms_receipts (out_id, biz_id, success, err_code, report_time, received_at, message_id)
             VALUES ($1, $2, $3, $4, $5, $6,
                     (SELECT id FROM dispatch.sms_messages WHERE id = $7 OR vendor_message_id = $2 LIMIT 1))
             ON CONFLICT (out_id, biz_id, err_code, report_time) DO NOTHING
             RETURNING message_id",
        )
        .bind(&r.out_id)
        .bind(&r.biz_id)
        .bind(r.success)
        .bind(&r.err_code)
        .bind(&r.report_time)
        .bind(now)
        .bind(out_id)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(row) = fresh else { continue }; // a repeat
        let Some(message_id) = row.try_get::<Option<Uuid>, _>("message_id")? else {
            tracing::warn!(biz_id = %r.biz_id, "receipt for an unknown message kept for reconciliation");
            metrics::counter!("sms_receipts_unmatched_total").increment(1);
            continue;
        };
        let state = if r.success { "delivered" } else { "failed" };
        // Monotonic: only a message not yet final moves; a late receipt changes nothing.
        let moved = sqlx::query(
            "UPDATE dispatch.sms_messages SET state = $2, vendor_code = $3, receipt_at = $4
             WHERE id = $1 AND state IN ('queued', 'sent')
             RETURNING case_id, policy_no, stage, vendor_message_id, traceparent",
        )
        .bind(message_id)
        .bind(state)
        .bind(&r.err_code)
        .bind(now)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(m) = moved else { continue };
        let status = if r.success {
            SmsStatus::Delivered
        } else {
            SmsStatus::Failed
        };
        let event = SmsStatusChanged {
            message_id: message_id.to_string(),
            case_id: m.try_get::<Uuid, _>("case_id")?.to_string(),
            policy_no: m.try_get("policy_no")?,
            stage: m.try_get("stage")?,
            status: status as i32,
            vendor_message_id: m
                .try_get::<Option<String>, _>("vendor_message_id")?
                .unwrap_or_default(),
            vendor_code: r.err_code.clone(),
            at_ms: now.timestamp_millis(),
        };
        let subject = if r.success {
            subject::DISPATCH_SMS_DELIVERED
        } else {
            subject::DISPATCH_SMS_FAILED
        };
        let traceparent: Option<String> = m.try_get("traceparent")?;
        hook.outbox
            .enqueue(&mut tx, subject, &event)
            .instrument(renewal_platform::telemetry::continue_trace(
                traceparent.as_deref(),
            ))
            .await?;
        metrics::counter!("sms_total", "status" => state).increment(1);
        changed += 1;
    }
    tx.commit().await?;
    Ok(changed)
}

#[cfg(test)]
mod tests {
    #[test]
    fn token_comparison_needs_every_byte() {
        assert!(super::same_token("abcdef0123456789", "abcdef0123456789"));
        assert!(!super::same_token("abcdef0123456788", "abcdef0123456789"));
        assert!(!super::same_token("abcdef012345678", "abcdef0123456789"));
        assert!(!super::same_token("", "abcdef0123456789"));
    }
}
