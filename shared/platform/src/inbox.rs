//! The consuming side: a durable pull consumer whose every message is handled inside
//! one Postgres transaction together with a row in the service's `inbox` table, so a
//! redelivered message has no second effect. Acknowledged only after the commit.
//!
//! Errors map to JetStream in this one place: a malformed message is terminated and kept
//! in the inbox with its reason (nothing is silently dropped); anything else is
//! negatively acknowledged with a growing delay and retried, until its `max_deliveries`th
//! delivery fails too: then it is kept as a dead letter ([`crate::dead_letters`]) and
//! terminated, and the consumer goes on.

use std::future::Future;
use std::time::{Duration, Instant};

use async_nats::jetstream::AckKind;
use bytes::Bytes;
use futures::StreamExt;
use sqlx::{PgConnection, PgPool};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::bus::{Bus, ConsumerSpec};
use crate::outbox::Outbox;
use crate::retry::{Backoff, redelivery_delay};

/// One message as a handler sees it.
#[derive(Debug)]
pub struct Delivery {
    /// The subject without the deployment prefix, e.g. `lists.case.opened`.
    pub subject: String,
    pub message_id: String,
    pub payload: Bytes,
    /// How many times it has been delivered (1 the first time).
    pub delivered: i64,
}

impl Delivery {
    pub fn decode<M: prost::Message + Default>(&self) -> Result<M, HandleError> {
        M::decode(self.payload.as_ref())
            .map_err(|e| HandleError::Malformed(format!("{} payload: {e}", self.subject)))
    }
}

/// Field decoders for message payloads: a bad value is a malformed message that names
/// its field.
pub mod field {
    use super::HandleError;
    use chrono::{DateTime, NaiveDate, TimeZone, Utc};

    pub fn uuid(name: &str, raw: &str) -> Result<uuid::Uuid, HandleError> {
        uuid::Uuid::parse_str(raw)
            .map_err(|_| HandleError::Malformed(format!("{name} {raw:?} is not a UUID")))
    }

    pub fn instant_ms(name: &str, ms: i64) -> Result<DateTime<Utc>, HandleError> {
        Utc.timestamp_millis_opt(ms)
            .single()
            .ok_or_else(|| HandleError::Malformed(format!("{name} {ms} is not a timestamp")))
    }

    pub fn date(name: &str, raw: &str) -> Result<NaiveDate, HandleError> {
        NaiveDate::parse_from_str(raw, "%Y-%m-%d")
            .map_err(|_| HandleError::Malformed(format!("{name} {raw:?} is not a YYYY-MM-DD date")))
    }

    pub fn time_zone(name: &str, raw: &str) -> Result<chrono_tz::Tz, HandleError> {
        raw.parse()
            .map_err(|_| HandleError::Malformed(format!("{name} {raw:?} is not a known time zone")))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum HandleError {
    /// The message can never be handled (bad payload, unknown subject): kept, not retried.
    #[error("malformed message: {0}")]
    Malformed(String),
    /// Try again later (the database is away, something it depends on has not arrived).
    #[error("retry later: {0}")]
    Retry(String),
    #[error("postgres: {0}")]
    Db(#[from] sqlx::Error),
    /// Personal data could not be sealed (the system's random source failed): retried.
    #[error("sealing personal data: {0}")]
    Pii(#[from] crate::pii::PiiError),
}

pub trait Handler: Send + Sync + 'static {
    /// Applies the message's effect inside `tx`; the inbox row is already written.
    fn handle<'a>(
        &'a self,
        tx: &'a mut PgConnection,
        delivery: &'a Delivery,
    ) -> impl Future<Output = Result<(), HandleError>> + Send + 'a;

    /// Called after a new message's transaction committed (wake loops here).
    fn committed(&self) {}

    /// What of a message refused as malformed is kept for inspection: its payload with
    /// every personal field cleared, or nothing. Nothing by default, since most
    /// messages carry a customer's contact; a handler that can clear them (or whose
    /// messages carry none) keeps the rest.
    fn redact(&self, _delivery: &Delivery) -> Option<Vec<u8>> {
        None
    }
}

/// Records the message id; false if it was already processed.
pub async fn claim(
    tx: &mut PgConnection,
    schema: &'static str,
    message_id: &str,
    subject: &str,
) -> Result<bool, sqlx::Error> {
    let sql = format!(
        "INSERT INTO {schema}.inbox (message_id, subject) VALUES ($1, $2) ON CONFLICT (message_id) DO NOTHING"
    );
    let done = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(message_id)
        .bind(subject)
        .execute(&mut *tx)
        .await?;
    Ok(done.rows_affected() == 1)
}

async fn reject(
    pool: &PgPool,
    schema: &'static str,
    delivery: &Delivery,
    reason: &str,
    kept: Option<Vec<u8>>,
) -> Result<(), sqlx::Error> {
    let sql = format!(
        "INSERT INTO {schema}.inbox (message_id, subject, rejected_reason, rejected_payload) \
         VALUES ($1, $2, $3, $4) ON CONFLICT (message_id) DO NOTHING"
    );
    sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(&delivery.message_id)
        .bind(&delivery.subject)
        .bind(reason)
        .bind(kept)
        .execute(pool)
        .await?;
    Ok(())
}

/// Messages a service refused as malformed (kept for inspection).
pub async fn rejected_count(pool: &PgPool, schema: &'static str) -> Result<i64, sqlx::Error> {
    let sql = format!("SELECT count(*) FROM {schema}.inbox WHERE rejected_reason IS NOT NULL");
    sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
        .fetch_one(pool)
        .await
}

/// Everything a consumer loop needs.
#[derive(Clone)]
pub struct Consuming {
    pub pool: PgPool,
    pub bus: Bus,
    pub schema: &'static str,
    pub outbox: Outbox,
    /// Deliveries a message gets before it is given up as a dead letter.
    pub max_deliveries: i64,
}

impl<H: Handler> Handler for std::sync::Arc<H> {
    fn handle<'a>(
        &'a self,
        tx: &'a mut PgConnection,
        delivery: &'a Delivery,
    ) -> impl Future<Output = Result<(), HandleError>> + Send + 'a {
        (**self).handle(tx, delivery)
    }

    fn committed(&self) {
        (**self).committed()
    }

    fn redact(&self, delivery: &Delivery) -> Option<Vec<u8>> {
        (**self).redact(delivery)
    }
}

/// A consumer's handler as a dead letter's replay runs it: in a transaction with the
/// inbox, as a delivery would be.
pub struct Replaying<H> {
    pub ctx: Consuming,
    pub handler: std::sync::Arc<H>,
}

impl<H: Handler> crate::dead_letters::Replay for Replaying<H> {
    fn replay(
        &self,
        delivery: Delivery,
    ) -> futures::future::BoxFuture<'_, Result<bool, HandleError>> {
        Box::pin(async move {
            let fresh = apply(&self.ctx, &*self.handler, &delivery).await?;
            if fresh {
                crate::activity::record();
                self.ctx.outbox.wake();
                self.handler.committed();
            }
            Ok(fresh)
        })
    }
}

/// Runs one durable consumer until `cancel` fires. The message in hand is finished
/// (committed and acknowledged) before it returns.
pub async fn consume<H: Handler>(
    ctx: Consuming,
    spec: ConsumerSpec,
    handler: H,
    cancel: CancellationToken,
) {
    let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(10));
    while !cancel.is_cancelled() {
        let messages = match ctx.bus.pull_consumer(spec).await {
            Ok(consumer) => consumer.messages().await.map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        let mut messages = match messages {
            Ok(m) => m,
            Err(reason) => {
                let wait = backoff.next_delay();
                tracing::warn!(consumer = spec.durable, filter = spec.filter, %reason, retry_in_ms = wait.as_millis() as u64, "consumer is not available yet");
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = tokio::time::sleep(wait) => continue,
                }
            }
        };
        // Messages in hand (at most `spec.parallel`); on cancel they are finished first.
        let mut in_hand = futures::stream::FuturesUnordered::new();
        let parallel = spec.parallel.max(1);
        loop {
            let next = tokio::select! {
                _ = cancel.cancelled() => {
                    while in_hand.next().await.is_some() {}
                    return;
                }
                Some(()) = in_hand.next(), if !in_hand.is_empty() => continue,
                next = messages.next(), if in_hand.len() < parallel => next,
            };
            match next {
                Some(Ok(message)) => {
                    backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(10));
                    in_hand.push(process(&ctx, spec.filter, &handler, message));
                }
                Some(Err(e)) => {
                    tracing::warn!(consumer = spec.durable, error = %e, "pull stream failed; re-creating it");
                    while in_hand.next().await.is_some() {}
                    tokio::time::sleep(backoff.next_delay()).await;
                    break;
                }
                None => {
                    while in_hand.next().await.is_some() {}
                    break;
                }
            }
        }
    }
}

async fn process<H: Handler>(
    ctx: &Consuming,
    filter: &'static str,
    handler: &H,
    message: async_nats::jetstream::Message,
) {
    let Some(subject) = ctx
        .bus
        .subjects
        .strip(message.subject.as_str())
        .map(str::to_owned)
    else {
        // Not ours (cannot happen with a prefixed filter); acknowledge so it does not loop.
        let _ = message.ack().await;
        return;
    };
    let (delivered, fallback_id) = match message.info() {
        Ok(info) => (
            info.delivered,
            format!("{}:{}", info.stream, info.stream_sequence),
        ),
        Err(_) => (1, format!("{subject}:{}", uuid::Uuid::new_v4())),
    };
    let message_id = message
        .headers
        .as_ref()
        .and_then(|h| h.get(async_nats::header::NATS_MESSAGE_ID))
        .map(|v| v.as_str().to_owned())
        .unwrap_or(fallback_id);
    let delivery = Delivery {
        subject,
        message_id,
        payload: message.payload.clone(),
        delivered,
    };
    let span = tracing::info_span!(
        "handle",
        service = ctx.schema,
        subject = %delivery.subject,
        message_id = %delivery.message_id,
        delivered
    );
    crate::telemetry::adopt_parent(&span, message.headers.as_ref());
    let started = Instant::now();
    let result = apply(ctx, handler, &delivery)
        .instrument(span.clone())
        .await;
    let outcome = match &result {
        Ok(true) => "handled",
        Ok(false) => "duplicate",
        Err(HandleError::Malformed(_)) => "rejected",
        Err(_) => "retry",
    };
    metrics::counter!("messages_in_total", "service" => ctx.schema, "subject" => delivery.subject.clone(), "outcome" => outcome).increment(1);
    metrics::histogram!("handler_seconds", "service" => ctx.schema, "subject" => delivery.subject.clone())
        .record(started.elapsed().as_secs_f64());
    // The span is attached to the future, never entered across an await: with several
    // deliveries in flight on one task an entered span would outlive its turn.
    settle_delivery(ctx, filter, handler, &message, &delivery, result)
        .instrument(span)
        .await
}

async fn settle_delivery<H: Handler>(
    ctx: &Consuming,
    filter: &'static str,
    handler: &H,
    message: &async_nats::jetstream::Message,
    delivery: &Delivery,
    result: Result<bool, HandleError>,
) {
    let delivered = delivery.delivered;
    match result {
        Ok(fresh) => {
            if fresh {
                crate::activity::record();
                ctx.outbox.wake();
                handler.committed();
            }
            if let Err(e) = message.ack().await {
                // The effect is committed; a redelivery will find the inbox row.
                tracing::warn!(error = %e, "ack failed after commit; the redelivery will be skipped as a duplicate");
            }
        }
        Err(HandleError::Malformed(reason)) => {
            tracing::error!(%reason, "message rejected as malformed; kept in the inbox for inspection");
            let kept = handler.redact(delivery);
            match reject(&ctx.pool, ctx.schema, delivery, &reason, kept).await {
                Ok(()) => {
                    crate::activity::record();
                    let _ = message.ack_with(AckKind::Term).await;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "could not keep the rejected message; retrying it");
                    let _ = message
                        .ack_with(AckKind::Nak(Some(redelivery_delay(delivered as u64))))
                        .await;
                }
            }
        }
        Err(e) if delivered >= ctx.max_deliveries => {
            // Kept whole where the service seals its letters; else as for a rejection.
            let kept = match ctx.outbox.letter_seal() {
                Some(_) => Some(delivery.payload.to_vec()),
                None => handler.redact(delivery),
            };
            give_up(ctx, filter, message, delivery, kept, &e.to_string()).await;
        }
        Err(e) => {
            let delay = redelivery_delay(delivered as u64);
            tracing::warn!(error = %e, retry_in_ms = delay.as_millis() as u64, "message not handled; it will be redelivered");
            let _ = message.ack_with(AckKind::Nak(Some(delay))).await;
        }
    }
}

/// Keeps a message that failed its last delivery as a dead letter (`kept`: its payload,
/// or what the handler's `redact` left of it; nothing: a letter that cannot be
/// replayed) and terminates it, so the consumer goes on; if it cannot be kept, it is
/// delivered again.
async fn give_up(
    ctx: &Consuming,
    filter: &'static str,
    message: &async_nats::jetstream::Message,
    delivery: &Delivery,
    kept: Option<Vec<u8>>,
    reason: &str,
) {
    tracing::error!(%reason, deliveries = delivery.delivered, "message failed every delivery; kept as a dead letter");
    let traceparent = message
        .headers
        .as_ref()
        .and_then(|h| h.get("traceparent"))
        .map(|v| v.as_str().to_owned());
    let letter = crate::dead_letters::Letter {
        source: crate::dead_letters::Source::Consumer,
        consumer: filter,
        message_id: &delivery.message_id,
        subject: &delivery.subject,
        payload: kept.as_deref().unwrap_or_default(),
        traceparent: traceparent.as_deref(),
        reason,
        deliveries: delivery.delivered as i32,
    };
    let kept = async {
        let mut tx = ctx.pool.begin().await?;
        crate::dead_letters::keep(&mut tx, &ctx.outbox, &letter).await?;
        tx.commit().await
    }
    .await;
    match kept {
        Ok(()) => {
            crate::activity::record();
            ctx.outbox.wake();
            let _ = message.ack_with(AckKind::Term).await;
        }
        Err(e) => {
            tracing::warn!(error = %e, "could not keep the dead letter; delivering the message again");
            let delay = redelivery_delay(delivery.delivered as u64);
            let _ = message.ack_with(AckKind::Nak(Some(delay))).await;
        }
    }
}

async fn apply<H: Handler>(
    ctx: &Consuming,
    handler: &H,
    delivery: &Delivery,
) -> Result<bool, HandleError> {
    let mut tx = ctx.pool.begin().await?;
    let fresh = claim(&mut tx, ctx.schema, &delivery.message_id, &delivery.subject).await?;
    if fresh {
        handler.handle(&mut tx, delivery).await?;
    }
    tx.commit().await?;
    Ok(fresh)
}
