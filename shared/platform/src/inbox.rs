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

    /// Applies a batch of new messages, in the stream's order, inside `tx` (a consumer
    /// with `batch` > 1; the inbox rows are already written). One after another by
    /// default; a handler whose common case is one small write makes it one statement
    /// for the batch. An error fails the whole batch, whose messages are then handled
    /// one by one.
    fn handle_batch<'a>(
        &'a self,
        tx: &'a mut PgConnection,
        deliveries: &'a [&'a Delivery],
    ) -> impl Future<Output = Result<(), HandleError>> + Send + 'a {
        async move {
            for delivery in deliveries {
                self.handle(tx, delivery).await?;
            }
            Ok(())
        }
    }

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

    fn handle_batch<'a>(
        &'a self,
        tx: &'a mut PgConnection,
        deliveries: &'a [&'a Delivery],
    ) -> impl Future<Output = Result<(), HandleError>> + Send + 'a {
        (**self).handle_batch(tx, deliveries)
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

/// Runs one durable consumer until `cancel` fires. The messages in hand are finished
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
        let messages = match messages {
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
        let ended = if spec.batch > 1 {
            in_batches(&ctx, spec, &handler, messages, &cancel).await
        } else {
            in_parallel(&ctx, spec, &handler, messages, &cancel).await
        };
        if ended.took_messages {
            backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(10));
        }
        match ended.why {
            Leaving::Cancelled => return,
            Leaving::StreamClosed => {}
            Leaving::StreamFailed(e) => {
                tracing::warn!(consumer = spec.durable, error = %e, "pull stream failed; re-creating it");
                tokio::time::sleep(backoff.next_delay()).await;
            }
        }
    }
}

type Messages = async_nats::jetstream::consumer::pull::Stream;

/// Why a pull stream was left (the messages taken from it are finished first), and
/// whether it gave any (a stream that fails at once backs off longer each time).
struct Ended {
    why: Leaving,
    took_messages: bool,
}

enum Leaving {
    Cancelled,
    StreamClosed,
    StreamFailed(String),
}

/// Each message in its own transaction, at most `spec.parallel` at once.
async fn in_parallel<H: Handler>(
    ctx: &Consuming,
    spec: ConsumerSpec,
    handler: &H,
    mut messages: Messages,
    cancel: &CancellationToken,
) -> Ended {
    let mut in_hand = futures::stream::FuturesUnordered::new();
    let parallel = spec.parallel.max(1);
    let mut took_messages = false;
    let why = loop {
        let next = tokio::select! {
            _ = cancel.cancelled() => break Leaving::Cancelled,
            Some(()) = in_hand.next(), if !in_hand.is_empty() => continue,
            next = messages.next(), if in_hand.len() < parallel => next,
        };
        match next {
            Some(Ok(message)) => {
                took_messages = true;
                in_hand.push(process(ctx, spec.filter, handler, message));
            }
            Some(Err(e)) => break Leaving::StreamFailed(e.to_string()),
            None => break Leaving::StreamClosed,
        }
    };
    while in_hand.next().await.is_some() {}
    Ended { why, took_messages }
}

/// How long a busy stream's batch waits to fill: a commit per message or two is what
/// batching saves, and a call outcome is not worse for 50 ms.
const BATCH_LINGER: Duration = Duration::from_millis(50);

/// Up to `spec.batch` messages in one transaction, in the stream's order; a batch
/// that fails is handled again message by message, so a malformed or failing message
/// is settled on its own and the others go through. A quiet stream's message is
/// handled at once; while messages keep coming (the last batch had more than one, or
/// ended a moment ago) a batch waits up to [`BATCH_LINGER`] to fill.
async fn in_batches<H: Handler>(
    ctx: &Consuming,
    spec: ConsumerSpec,
    handler: &H,
    mut messages: Messages,
    cancel: &CancellationToken,
) -> Ended {
    let mut took_messages = false;
    let mut busy = false;
    let mut last_done = Instant::now();
    loop {
        let first = tokio::select! {
            _ = cancel.cancelled() => break Ended { why: Leaving::Cancelled, took_messages },
            next = messages.next() => next,
        };
        let mut batch = match first {
            Some(Ok(message)) => vec![message],
            Some(Err(e)) => {
                break Ended {
                    why: Leaving::StreamFailed(e.to_string()),
                    took_messages,
                };
            }
            None => {
                break Ended {
                    why: Leaving::StreamClosed,
                    took_messages,
                };
            }
        };
        busy = busy || last_done.elapsed() < BATCH_LINGER;
        let linger = if busy { BATCH_LINGER } else { Duration::ZERO };
        let stopped = fill(&mut messages, &mut batch, spec.batch, linger, cancel).await;
        took_messages = true;
        busy = batch.len() > 1;
        process_batch(ctx, spec.filter, handler, batch).await;
        last_done = Instant::now();
        match stopped {
            Some(why) => break Ended { why, took_messages },
            None if cancel.is_cancelled() => {
                break Ended {
                    why: Leaving::Cancelled,
                    took_messages,
                };
            }
            None => {}
        }
    }
}

/// Adds to `batch` what is ready now and, for `linger`, what comes, up to `max`; a
/// cancel ends the wait (what was taken is still handled). Why the stream ended, if
/// it did.
async fn fill(
    messages: &mut Messages,
    batch: &mut Vec<async_nats::jetstream::Message>,
    max: usize,
    linger: Duration,
    cancel: &CancellationToken,
) -> Option<Leaving> {
    let deadline = tokio::time::Instant::now() + linger;
    while batch.len() < max {
        // Polled first, so what is ready is taken even when the wait is over.
        let next = tokio::select! {
            biased;
            next = messages.next() => next,
            _ = tokio::time::sleep_until(deadline) => return None,
            _ = cancel.cancelled() => return None,
        };
        match next {
            Some(Ok(message)) => batch.push(message),
            Some(Err(e)) => return Some(Leaving::StreamFailed(e.to_string())),
            None => return Some(Leaving::StreamClosed),
        }
    }
    None
}

/// The delivery a message carries, or None for a subject outside the deployment
/// (cannot happen with a prefixed filter; acknowledged so it does not loop).
async fn delivery_of(
    ctx: &Consuming,
    message: &async_nats::jetstream::Message,
) -> Option<Delivery> {
    let Some(subject) = ctx
        .bus
        .subjects
        .strip(message.subject.as_str())
        .map(str::to_owned)
    else {
        let _ = message.ack().await;
        return None;
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
    Some(Delivery {
        subject,
        message_id,
        payload: message.payload.clone(),
        delivered,
    })
}

/// The span a delivery is handled in, continuing the publisher's trace.
fn handle_span(
    ctx: &Consuming,
    message: &async_nats::jetstream::Message,
    delivery: &Delivery,
) -> tracing::Span {
    let span = tracing::info_span!(
        "handle",
        service = ctx.schema,
        subject = %delivery.subject,
        message_id = %delivery.message_id,
        delivered = delivery.delivered
    );
    crate::telemetry::adopt_parent(&span, message.headers.as_ref());
    span
}

fn record_outcome(ctx: &Consuming, delivery: &Delivery, outcome: &'static str, took: Duration) {
    metrics::counter!("messages_in_total", "service" => ctx.schema, "subject" => delivery.subject.clone(), "outcome" => outcome).increment(1);
    metrics::histogram!("handler_seconds", "service" => ctx.schema, "subject" => delivery.subject.clone())
        .record(took.as_secs_f64());
}

async fn process<H: Handler>(
    ctx: &Consuming,
    filter: &'static str,
    handler: &H,
    message: async_nats::jetstream::Message,
) {
    let Some(delivery) = delivery_of(ctx, &message).await else {
        return;
    };
    let span = handle_span(ctx, &message, &delivery);
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
    record_outcome(ctx, &delivery, outcome, started.elapsed());
    // The span is attached to the future, never entered across an await: with several
    // deliveries in flight on one task an entered span would outlive its turn.
    settle_delivery(ctx, filter, handler, &message, &delivery, result)
        .instrument(span)
        .await
}

/// A batch of messages in one transaction; if it fails, each goes again on its own.
async fn process_batch<H: Handler>(
    ctx: &Consuming,
    filter: &'static str,
    handler: &H,
    messages: Vec<async_nats::jetstream::Message>,
) {
    let mut batch = Vec::with_capacity(messages.len());
    for message in messages {
        if let Some(delivery) = delivery_of(ctx, &message).await {
            batch.push((message, delivery));
        }
    }
    if batch.len() <= 1 {
        for (message, _) in batch {
            process(ctx, filter, handler, message).await;
        }
        return;
    }
    let started = Instant::now();
    let fresh = match apply_batch(ctx, handler, &batch).await {
        Ok(fresh) => fresh,
        Err(e) => {
            tracing::warn!(consumer = filter, messages = batch.len(), error = %e, "a batch failed; handling its messages one by one");
            for (message, _) in batch {
                process(ctx, filter, handler, message).await;
            }
            return;
        }
    };
    let took = started.elapsed() / batch.len() as u32;
    if fresh.iter().any(|f| *f) {
        crate::activity::record();
        ctx.outbox.wake();
        handler.committed();
    }
    for ((message, delivery), fresh) in batch.iter().zip(fresh) {
        record_outcome(
            ctx,
            delivery,
            if fresh { "handled" } else { "duplicate" },
            took,
        );
        if let Err(e) = message.ack().await {
            tracing::warn!(error = %e, message_id = %delivery.message_id, "ack failed after commit; the redelivery will be skipped as a duplicate");
        }
    }
}

/// Claims every message of the batch in the inbox and handles the new ones, in order,
/// in one transaction. Which of them were new (a message delivered twice in one batch
/// is new once).
async fn apply_batch<H: Handler>(
    ctx: &Consuming,
    handler: &H,
    batch: &[(async_nats::jetstream::Message, Delivery)],
) -> Result<Vec<bool>, HandleError> {
    let mut tx = ctx.pool.begin().await?;
    let sql = format!(
        "INSERT INTO {schema}.inbox (message_id, subject)
         SELECT * FROM unnest($1::text[], $2::text[])
         ON CONFLICT (message_id) DO NOTHING RETURNING message_id",
        schema = ctx.schema
    );
    let ids: Vec<&str> = batch.iter().map(|(_, d)| d.message_id.as_str()).collect();
    let subjects: Vec<&str> = batch.iter().map(|(_, d)| d.subject.as_str()).collect();
    let mut new: std::collections::HashSet<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
        .bind(&ids)
        .bind(&subjects)
        .fetch_all(&mut *tx)
        .await?
        .into_iter()
        .collect();
    let fresh: Vec<bool> = batch
        .iter()
        .map(|(_, d)| new.remove(&d.message_id))
        .collect();
    let deliveries: Vec<&Delivery> = batch
        .iter()
        .zip(&fresh)
        .filter(|(_, fresh)| **fresh)
        .map(|((_, d), _)| d)
        .collect();
    // One span for the batch: its messages came from many traces.
    let span = tracing::info_span!(
        "handle_batch",
        service = ctx.schema,
        messages = deliveries.len()
    );
    handler
        .handle_batch(&mut tx, &deliveries)
        .instrument(span)
        .await?;
    tx.commit().await?;
    Ok(fresh)
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
