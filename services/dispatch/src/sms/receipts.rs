//! The vendor's webhook for delivery receipts (`SmsReport`; replies, `SmsUp`, are in
//! `replies.rs` on the same token): a JSON array, answered
//! with `{"code":0,"msg":"成功"}`. The vendor does not sign its pushes, so the path
//! carries a secret token, checked before the body is read, in constant time
//! (`subtle`), against the current token and the one being rotated out (wrong token:
//! 401); an optional allow-list of source networks refuses others (403). Receipts
//! are idempotent (the vendor
//! repeats them) and monotonic (a delivered message stays delivered); a receipt for a
//! message we do not know is kept for reconciliation. Bodies over 1 MiB or malformed:
//! 4xx, nothing written.

use axum::Json;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use renewal_contract::dispatch::{SmsStatus, SmsStatusChanged};
use renewal_contract::subject;
use renewal_platform::{Clock, Outbox};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use sqlx::{PgPool, Row};
use uuid::Uuid;

pub const MAX_BODY: usize = 1024 * 1024;

#[derive(Clone)]
pub struct Webhook {
    pub pool: PgPool,
    /// Seals the replies and opt-outs, and indexes their numbers.
    pub pii: std::sync::Arc<renewal_platform::pii::PiiCipher>,
    pub outbox: Outbox,
    pub clock: Clock,
    /// The tokens a push may carry: the current one and, while rotating, the last.
    pub tokens: Vec<SecretString>,
    /// Source networks allowed to push (empty: any).
    pub allow: Vec<ipnet::IpNet>,
    /// Proxies whose `X-Forwarded-For` is believed.
    pub trusted_proxies: Vec<ipnet::IpNet>,
}

pub fn routes(webhook: Webhook) -> renewal_platform::http::Routes {
    renewal_platform::http::Routes::new()
        .route("/v1/webhooks/sms/{token}/report", post(report))
        .route("/v1/webhooks/sms/{token}/up", post(super::replies::up))
        .finish(|router| {
            router
                .route_layer(axum::middleware::from_fn_with_state(webhook.clone(), guard))
                .layer(DefaultBodyLimit::max(MAX_BODY))
                .with_state(webhook)
        })
}

/// Runs before the body is read: the source must be allowed and the path token one
/// of ours.
async fn guard(
    State(hook): State<Webhook>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    if !hook.allow.is_empty() {
        let peer = request
            .extensions()
            .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
            .map(|c| c.0.ip());
        let forwarded = request
            .headers()
            .get("x-forwarded-for")
            .and_then(|v| v.to_str().ok());
        let source = peer.and_then(|p| source(p, forwarded, &hook.trusted_proxies));
        if !source.is_some_and(|ip| hook.allow.iter().any(|net| net.contains(&ip))) {
            return WebhookError::Forbidden.into_response();
        }
    }
    // /v1/webhooks/sms/{token}/...
    let token = request.uri().path().split('/').nth(4).unwrap_or_default();
    if !hook.accepts(token) {
        return WebhookError::Unauthorized.into_response();
    }
    next.run(request).await
}

/// Who sent a push: the peer, or, when the peer is a trusted proxy, the last address
/// in `X-Forwarded-For` that is not a trusted proxy (the one the first proxy saw;
/// anything left of it the sender could have written). `None` if it cannot be told.
fn source(
    peer: std::net::IpAddr,
    forwarded: Option<&str>,
    trusted: &[ipnet::IpNet],
) -> Option<std::net::IpAddr> {
    let is_trusted = |ip: &std::net::IpAddr| trusted.iter().any(|n| n.contains(ip));
    if !is_trusted(&peer) {
        return Some(peer);
    }
    for hop in forwarded?.rsplit(',') {
        let ip: std::net::IpAddr = hop.trim().parse().ok()?;
        if !is_trusted(&ip) {
            return Some(ip);
        }
    }
    None
}

impl Webhook {
    pub(crate) fn accepts(&self, given: &str) -> bool {
        accepts(&self.tokens, given)
    }
}

/// Whether `given` is one of `tokens`, compared in constant time with each (every
/// token is compared, so the time says nothing of which matched).
fn accepts(tokens: &[SecretString], given: &str) -> bool {
    use subtle::ConstantTimeEq;
    let mut ok = subtle::Choice::from(0);
    for token in tokens {
        ok |= given.as_bytes().ct_eq(token.expose_secret().as_bytes());
    }
    bool::from(ok)
}

/// One delivery receipt as the vendor pushes it.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
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
    #[error("this source may not push")]
    Forbidden,
    #[error("malformed body: {0}")]
    Malformed(String),
    #[error("postgres: {0}")]
    Db(#[from] sqlx::Error),
    /// A reply or an opt-out could not be sealed (the random source failed).
    #[error("sealing failed: {0}")]
    Pii(#[from] renewal_platform::pii::PiiError),
}

impl IntoResponse for WebhookError {
    fn into_response(self) -> Response {
        let (status, code) = match &self {
            WebhookError::Unauthorized => (StatusCode::UNAUTHORIZED, 401),
            WebhookError::Forbidden => (StatusCode::FORBIDDEN, 403),
            WebhookError::Malformed(_) => (StatusCode::BAD_REQUEST, 400),
            WebhookError::Db(e) => {
                tracing::error!(error = %e, "recording receipts failed; the vendor will retry");
                (StatusCode::SERVICE_UNAVAILABLE, 503)
            }
            WebhookError::Pii(e) => {
                tracing::error!(error = %e, "sealing replies failed; the vendor will retry");
                (StatusCode::SERVICE_UNAVAILABLE, 503)
            }
        };
        metrics::counter!("webhook_rejects_total", "status" => status.as_str().to_owned())
            .increment(1);
        let msg = match self {
            WebhookError::Db(_) | WebhookError::Pii(_) => "temporarily unavailable".to_owned(),
            other => other.to_string(),
        };
        (
            status,
            Json(serde_json::json!({ "code": code, "msg": msg })),
        )
            .into_response()
    }
}

async fn report(
    State(hook): State<Webhook>,
    body: Bytes,
) -> Result<Json<serde_json::Value>, WebhookError> {
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

/// Records a batch in one transaction of two statements, whatever its size: every
/// receipt is kept once (a repeat is ignored by its natural key; one for a message we do
/// not know is kept with no message, for reconciliation), and each message the batch
/// moves out of `queued`, `sending`, `unknown` or `sent` (a receipt proves the vendor
/// took it, whatever its sender recorded so far) takes the first final receipt it got; a message already
/// delivered or failed stays so (monotonic). The events of the messages that moved are
/// written to the outbox with one insert. Returns how many messages changed state.
async fn record(hook: &Webhook, reports: &[SmsReport]) -> Result<usize, sqlx::Error> {
    let mut attempt = 0;
    loop {
        match record_once(hook, reports).await {
            // Two vendor connections repeating overlapping receipts can lock the same
            // rows; the loser is rolled back and tried again.
            Err(sqlx::Error::Database(e))
                if attempt < 3 && matches!(e.code().as_deref(), Some("40P01" | "40001")) =>
            {
                attempt += 1;
            }
            other => return other,
        }
    }
}

async fn record_once(hook: &Webhook, reports: &[SmsReport]) -> Result<usize, sqlx::Error> {
    let now = hook.clock.now();
    let n = reports.len();
    let (mut out_ids, mut out_uuids, mut biz_ids, mut successes, mut codes, mut times) = (
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
    );
    for r in reports {
        out_ids.push(r.out_id.as_str());
        out_uuids.push(Uuid::parse_str(&r.out_id).ok());
        biz_ids.push(r.biz_id.as_str());
        successes.push(r.success);
        codes.push(r.err_code.as_str());
        times.push(r.report_time.as_str());
    }
    let mut tx = hook.pool.begin().await?;
    // Rows are written and locked in key order, so concurrent batches queue rather
    // than deadlock.
    let rows = sqlx::query(
        "WITH input AS (
             SELECT * FROM unnest($1::text[], $2::uuid[], $3::text[], $4::bool[], $5::text[], $6::text[])
                 WITH ORDINALITY AS r(out_id, out_uuid, biz_id, success, err_code, report_time, n)
         ),
         matched AS (
             SELECT i.*, coalesce(
                        (SELECT m.id FROM dispatch.sms_messages m WHERE m.id = i.out_uuid),
                        (SELECT m.id FROM dispatch.sms_messages m
                         WHERE i.biz_id <> '' AND m.vendor_message_id = i.biz_id LIMIT 1)) AS message_id
             FROM input i
         ),
         fresh AS (
             INSERT INTO dispatch.sms_receipts (out_id, biz_id, success, err_code, report_time, received_at, message_id)
             SELECT out_id, biz_id, success, err_code, report_time, $7, message_id FROM matched
             ORDER BY out_id, biz_id, err_code, report_time
             ON CONFLICT (out_id, biz_id, err_code, report_time) DO NOTHING
             RETURNING id, message_id, success, err_code, report_time
         ),
         first_final AS (
             SELECT DISTINCT ON (message_id) message_id, success, err_code
             FROM fresh WHERE message_id IS NOT NULL
             ORDER BY message_id, report_time, id
         ),
         locked AS MATERIALIZED (
             SELECT m.id, f.success, f.err_code
             FROM dispatch.sms_messages m JOIN first_final f ON f.message_id = m.id
             WHERE m.state IN ('queued', 'sending', 'unknown', 'sent')
             ORDER BY m.id
             FOR UPDATE OF m
         ),
         moved AS (
             UPDATE dispatch.sms_messages m
             SET state = CASE WHEN l.success THEN 'delivered' ELSE 'failed' END,
                 vendor_code = l.err_code, receipt_at = $7
             FROM locked l
             WHERE m.id = l.id AND m.state IN ('queued', 'sending', 'unknown', 'sent')
             RETURNING m.id, m.case_id, m.policy_no, m.stage, m.vendor_message_id, m.traceparent,
                       l.success, l.err_code
         )
         SELECT 'moved' AS kind, id, case_id, policy_no, stage, vendor_message_id, traceparent, success, err_code
         FROM moved
         UNION ALL
         SELECT 'unmatched', NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL
         FROM fresh WHERE message_id IS NULL",
    )
    .bind(&out_ids)
    .bind(&out_uuids)
    .bind(&biz_ids)
    .bind(&successes)
    .bind(&codes)
    .bind(&times)
    .bind(now)
    .fetch_all(&mut *tx)
    .await?;
    let fallback_trace = renewal_platform::telemetry::current_traceparent();
    let mut events = Vec::with_capacity(rows.len());
    let (mut unmatched, mut delivered, mut failed) = (0_u64, 0_u64, 0_u64);
    for row in &rows {
        if row.try_get::<&str, _>("kind")? == "unmatched" {
            unmatched += 1;
            continue;
        }
        let message_id: Uuid = row.try_get("id")?;
        let success: bool = row.try_get("success")?;
        let event = SmsStatusChanged {
            message_id: message_id.to_string(),
            case_id: row.try_get::<Uuid, _>("case_id")?.to_string(),
            policy_no: row.try_get("policy_no")?,
            stage: row.try_get("stage")?,
            status: if success {
                SmsStatus::Delivered
            } else {
                SmsStatus::Failed
            } as i32,
            vendor_message_id: row
                .try_get::<Option<String>, _>("vendor_message_id")?
                .unwrap_or_default(),
            vendor_code: row.try_get("err_code")?,
            at_ms: now.timestamp_millis(),
        };
        let subject = if success {
            delivered += 1;
            subject::DISPATCH_SMS_DELIVERED
        } else {
            failed += 1;
            subject::DISPATCH_SMS_FAILED
        };
        // The receipt and its event stay in the trace of the message they report on: the
        // trace that began with the policy ends here.
        let traceparent = row
            .try_get::<Option<String>, _>("traceparent")?
            .or_else(|| fallback_trace.clone());
        let span = tracing::info_span!(
            "sms_receipt",
            stage = %event.stage,
            status = if success { "delivered" } else { "failed" }
        );
        renewal_platform::telemetry::adopt_traceparent(&span, traceparent.as_deref());
        drop(span);
        events.push((
            Uuid::now_v7(),
            subject,
            prost::Message::encode_to_vec(&event),
            traceparent,
        ));
    }
    if !events.is_empty() {
        hook.outbox.enqueue_commands(&mut tx, events).await?;
    }
    tx.commit().await?;
    if unmatched > 0 {
        tracing::warn!(
            receipts = unmatched,
            "receipts for unknown messages kept for reconciliation"
        );
        metrics::counter!("sms_receipts_unmatched_total").increment(unmatched);
    }
    metrics::counter!("sms_total", "status" => "delivered").increment(delivered);
    metrics::counter!("sms_total", "status" => "failed").increment(failed);
    Ok((delivered + failed) as usize)
}

#[cfg(test)]
mod tests {
    use secrecy::SecretString;

    #[test]
    fn the_source_behind_a_trusted_proxy_is_the_last_address_it_did_not_add() {
        let proxies: Vec<ipnet::IpNet> = vec!["10.0.0.0/8".parse().expect("cidr")];
        let ip = |s: &str| s.parse::<std::net::IpAddr>().expect("ip");
        // Straight from the internet: the peer, whatever the header says.
        assert_eq!(
            super::source(ip("106.11.1.1"), Some("1.2.3.4"), &proxies),
            Some(ip("106.11.1.1"))
        );
        // Through the ingress: the address the ingress saw, not what the sender wrote.
        assert_eq!(
            super::source(ip("10.1.2.3"), Some("6.6.6.6, 106.11.1.1"), &proxies),
            Some(ip("106.11.1.1"))
        );
        assert_eq!(super::source(ip("10.1.2.3"), None, &proxies), None);
        assert_eq!(super::source(ip("10.1.2.3"), Some("junk"), &proxies), None);
    }

    #[test]
    fn token_comparison_needs_every_byte() {
        let tokens = [
            SecretString::from("abcdef0123456789"),
            SecretString::from("previous-token-0001"),
        ];
        assert!(super::accepts(&tokens, "abcdef0123456789"));
        assert!(
            super::accepts(&tokens, "previous-token-0001"),
            "the old one while rotating"
        );
        assert!(!super::accepts(&tokens, "abcdef0123456788"));
        assert!(!super::accepts(&tokens, "abcdef012345678"));
        assert!(!super::accepts(&tokens, ""));
        assert!(
            !super::accepts(&tokens[..1], "previous-token-0001"),
            "rotated out"
        );
    }
}
