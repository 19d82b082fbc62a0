//! The transactional outbox. A service writes its event into its own `outbox` table in
//! the same transaction as the state change; the relay publishes each row with
//! `Nats-Msg-Id` = the row's id and marks it published only after JetStream acknowledged
//! it. A crash in between republishes the row, and the consumer's inbox drops the copy.

use std::sync::Arc;
use std::time::Duration;

use sqlx::{PgConnection, PgPool, Row};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::bus::Bus;
use crate::retry::Backoff;

/// One service's outbox: where to write, and how to wake its relay.
#[derive(Clone, Debug)]
pub struct Outbox {
    schema: &'static str,
    wake: Arc<Notify>,
    /// How the service's dead letters are sealed (none: kept with personal fields
    /// cleared).
    letters: Option<crate::dead_letters::LetterSeal>,
}

const BATCH: i64 = 500;
const POLL: Duration = Duration::from_millis(500);
/// Polls woken by commits come at most this often.
const WAKE_GAP: Duration = Duration::from_millis(5);

impl Outbox {
    pub fn new(schema: &'static str) -> Self {
        Outbox {
            schema,
            wake: Arc::new(Notify::new()),
            letters: None,
        }
    }

    /// The service's dead letters are kept sealed with its key, in `letters` (its
    /// `sealed_payload` column, listed with the service's other sealed columns so a key
    /// rotation re-seals them).
    pub fn sealing_letters(
        mut self,
        pii: Arc<crate::pii::PiiCipher>,
        letters: crate::resealing::SealedColumn,
    ) -> Self {
        self.letters = Some(crate::dead_letters::LetterSeal {
            pii,
            table: letters.table,
        });
        self
    }

    pub fn schema(&self) -> &'static str {
        self.schema
    }

    /// How the service's dead letters are sealed, if they are.
    pub(crate) fn letter_seal(&self) -> Option<&crate::dead_letters::LetterSeal> {
        self.letters.as_ref()
    }

    /// Writes an event inside the caller's transaction; its id is a fresh UUID.
    pub async fn enqueue(
        &self,
        tx: &mut PgConnection,
        subject: &str,
        message: &impl prost::Message,
    ) -> Result<Uuid, sqlx::Error> {
        self.enqueue_with_id(tx, Uuid::now_v7(), subject, message)
            .await
    }

    /// Writes an event with a chosen id (a command id, say), which becomes its
    /// `Nats-Msg-Id`; a second write of the same id is ignored.
    pub async fn enqueue_with_id(
        &self,
        tx: &mut PgConnection,
        id: Uuid,
        subject: &str,
        message: &impl prost::Message,
    ) -> Result<Uuid, sqlx::Error> {
        let sql = format!(
            "INSERT INTO {}.outbox (id, subject, payload, traceparent) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (id) DO NOTHING",
            self.schema
        );
        sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(id)
            .bind(subject)
            .bind(message.encode_to_vec())
            .bind(crate::telemetry::current_traceparent())
            .execute(&mut *tx)
            .await?;
        Ok(id)
    }

    /// Writes many events in one statement inside the caller's transaction (a daily
    /// run's thousands of moves, say), each with a fresh id, in the given order.
    pub async fn enqueue_many<M: prost::Message>(
        &self,
        tx: &mut PgConnection,
        events: impl IntoIterator<Item = (&str, M)>,
    ) -> Result<usize, sqlx::Error> {
        let traceparent = crate::telemetry::current_traceparent();
        let (mut ids, mut subjects, mut payloads) = (Vec::new(), Vec::new(), Vec::new());
        for (subject, message) in events {
            ids.push(Uuid::now_v7());
            subjects.push(subject.to_owned());
            payloads.push(message.encode_to_vec());
        }
        let sql = format!(
            "INSERT INTO {}.outbox (id, subject, payload, traceparent) \
             SELECT id, subject, payload, $4 FROM unnest($1::uuid[], $2::text[], $3::bytea[]) \
             WITH ORDINALITY AS e(id, subject, payload, n) ORDER BY n",
            self.schema
        );
        for ((ids, subjects), payloads) in ids
            .chunks(10_000)
            .zip(subjects.chunks(10_000))
            .zip(payloads.chunks(10_000))
        {
            sqlx::query(sqlx::AssertSqlSafe(sql.clone()))
                .bind(ids)
                .bind(subjects)
                .bind(payloads)
                .bind(traceparent.as_deref())
                .execute(&mut *tx)
                .await?;
        }
        Ok(ids.len())
    }

    /// Writes many commands in one statement, each with its own id (its `Nats-Msg-Id`)
    /// and the trace it continues; an id written before is ignored.
    pub async fn enqueue_commands(
        &self,
        tx: &mut PgConnection,
        commands: Vec<(Uuid, &'static str, Vec<u8>, Option<String>)>,
    ) -> Result<u64, sqlx::Error> {
        let sql = format!(
            "INSERT INTO {}.outbox (id, subject, payload, traceparent) \
             SELECT id, subject, payload, tp FROM unnest($1::uuid[], $2::text[], $3::bytea[], $4::text[]) \
             WITH ORDINALITY AS e(id, subject, payload, tp, n) ORDER BY n \
             ON CONFLICT (id) DO NOTHING",
            self.schema
        );
        let mut written = 0;
        for chunk in commands.chunks(10_000) {
            let ids: Vec<Uuid> = chunk.iter().map(|c| c.0).collect();
            let subjects: Vec<&str> = chunk.iter().map(|c| c.1).collect();
            let payloads: Vec<&[u8]> = chunk.iter().map(|c| c.2.as_slice()).collect();
            let traces: Vec<Option<&str>> = chunk.iter().map(|c| c.3.as_deref()).collect();
            written += sqlx::query(sqlx::AssertSqlSafe(sql.clone()))
                .bind(&ids)
                .bind(&subjects)
                .bind(&payloads)
                .bind(&traces)
                .execute(&mut *tx)
                .await?
                .rows_affected();
        }
        Ok(written)
    }

    /// Tells the relay there is something to publish (call after the commit).
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// Rows written but not yet acknowledged by JetStream.
    pub async fn backlog(&self, pool: &PgPool) -> Result<i64, sqlx::Error> {
        let sql = format!(
            "SELECT count(*) FROM {}.outbox WHERE published_at IS NULL AND set_aside_at IS NULL",
            self.schema
        );
        sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
            .fetch_one(pool)
            .await
    }

    /// Publishes until cancelled. Several replicas may run it: each batch is claimed
    /// with `FOR UPDATE SKIP LOCKED`. A row JetStream refuses `max_attempts` times for
    /// what it is (no stream takes its subject, it is too big; not a timeout, a lost
    /// connection or a full stream) is set aside as a dead letter and the relay goes on.
    pub async fn relay(self, pool: PgPool, bus: Bus, max_attempts: i32, cancel: CancellationToken) {
        let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(10));
        // Every commit with an event wakes the relay; under a flood one poll per gap
        // serves them all.
        let mut pace = crate::wakeups::Pace::new(WAKE_GAP);
        loop {
            if cancel.is_cancelled() {
                return;
            }
            match self.publish_batch(&pool, &bus, max_attempts).await {
                Ok(n) if n as i64 == BATCH => continue,
                Ok(_) => {
                    backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(10));
                    tokio::select! {
                        _ = cancel.cancelled() => return,
                        _ = self.wake.notified() => {
                            tokio::select! {
                                _ = cancel.cancelled() => return,
                                _ = pace.look() => {}
                            }
                        }
                        _ = tokio::time::sleep(POLL) => {}
                    }
                }
                Err(e) => {
                    let wait = backoff.next_delay();
                    tracing::warn!(service = self.schema, error = %e, retry_in_ms = wait.as_millis() as u64, "outbox relay could not publish; retrying");
                    // The lag keeps rising while nothing goes out.
                    if let Ok(Some(oldest)) = self.oldest_waiting(&pool).await {
                        self.report_lag(Some(oldest));
                    }
                    tokio::select! {
                        _ = cancel.cancelled() => return,
                        _ = tokio::time::sleep(wait) => {}
                    }
                }
            }
        }
    }

    /// When the oldest row still to publish was written.
    async fn oldest_waiting(
        &self,
        pool: &PgPool,
    ) -> Result<Option<chrono::DateTime<chrono::Utc>>, sqlx::Error> {
        let sql = format!(
            "SELECT min(created_at) FROM {}.outbox WHERE published_at IS NULL AND set_aside_at IS NULL",
            self.schema
        );
        sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
            .fetch_one(pool)
            .await
    }

    fn report_lag(&self, oldest: Option<chrono::DateTime<chrono::Utc>>) {
        let lag = oldest.map_or(0.0, |o| {
            (chrono::Utc::now() - o).num_milliseconds().max(0) as f64 / 1000.0
        });
        metrics::gauge!("outbox_lag_seconds", "service" => self.schema).set(lag);
    }

    /// Publishes one batch in order and marks what JetStream took; returns how many
    /// rows it published. Rows refused for what they are count an attempt, and are set
    /// aside as dead letters after `max_attempts`.
    pub async fn publish_batch(
        &self,
        pool: &PgPool,
        bus: &Bus,
        max_attempts: i32,
    ) -> Result<usize, RelayError> {
        let mut tx = crate::postgres::begin_claim(pool).await?;
        let select = format!(
            "SELECT seq, id, subject, payload, traceparent, created_at, attempts FROM {}.outbox \
             WHERE published_at IS NULL AND set_aside_at IS NULL ORDER BY seq LIMIT {BATCH} \
             FOR UPDATE SKIP LOCKED",
            self.schema
        );
        let rows = sqlx::query(sqlx::AssertSqlSafe(select))
            .fetch_all(&mut *tx)
            .await?;
        if rows.is_empty() {
            self.report_lag(None);
            return Ok(0);
        }
        let rows = rows
            .iter()
            .map(Pending::read)
            .collect::<Result<Vec<_>, _>>()?;
        let oldest = rows.iter().map(|r| r.created_at).min();
        let (published, refused) = self.send_all(bus, &rows).await;
        self.mark_published(&mut tx, &published).await?;
        let set_aside = self
            .count_refusals(&mut tx, &rows, &refused, bus.is_connected(), max_attempts)
            .await?;
        tx.commit().await?;
        if set_aside > 0 {
            self.wake();
        }
        if !published.is_empty() {
            crate::activity::record();
            metrics::counter!("messages_out_total", "service" => self.schema)
                .increment(published.len() as u64);
        }
        self.report_lag(oldest);
        match refused.first() {
            Some((_, reason, _)) if published.is_empty() => Err(RelayError::Ack(reason.clone())),
            _ => Ok(published.len()),
        }
    }

    /// Sends every row and waits for JetStream's answers: the seqs it took, and the
    /// rows it refused (index, reason, whether for what the row is).
    async fn send_all(
        &self,
        bus: &Bus,
        rows: &[Pending],
    ) -> (Vec<i64>, Vec<(usize, String, bool)>) {
        use async_nats::jetstream::context::PublishErrorKind;
        let mut acks = Vec::with_capacity(rows.len());
        let mut refused = Vec::new();
        for (i, row) in rows.iter().enumerate() {
            match bus
                .send(
                    &row.subject,
                    &row.id.to_string(),
                    row.traceparent.as_deref(),
                    row.payload.clone(),
                )
                .await
            {
                Ok(ack) => acks.push((i, ack)),
                // Only an event too big for NATS is its own fault here.
                Err(e) => {
                    let reason = e.to_string();
                    let own = reason.contains("payload");
                    refused.push((i, reason, own));
                }
            }
        }
        let mut published = Vec::with_capacity(acks.len());
        for (i, ack) in acks {
            match ack.await {
                Ok(_) => published.push(rows[i].seq),
                // Too big, or no stream for its subject: the event's fault. A timeout,
                // a lost connection or a full stream (`discard: new`) is not: it waits.
                Err(e) => {
                    let own = match e.kind() {
                        PublishErrorKind::MaxPayloadExceeded => true,
                        PublishErrorKind::StreamNotFound => {
                            no_stream_takes(bus, &rows[i].subject).await
                        }
                        _ => false,
                    };
                    refused.push((i, e.to_string(), own));
                }
            }
        }
        refused.sort_by_key(|(i, ..)| *i);
        (published, refused)
    }

    async fn mark_published(&self, tx: &mut PgConnection, seqs: &[i64]) -> Result<(), sqlx::Error> {
        if seqs.is_empty() {
            return Ok(());
        }
        let mark = format!(
            // The payload goes once published: it may hold a customer's contact, and
            // the stream keeps the message as long as anyone may need it again.
            "UPDATE {}.outbox SET published_at = now(), payload = '\\x' WHERE seq = ANY($1)",
            self.schema
        );
        sqlx::query(sqlx::AssertSqlSafe(mark))
            .bind(seqs)
            .execute(&mut *tx)
            .await?;
        Ok(())
    }

    /// Counts an attempt on each row refused for what it is (while connected: an
    /// outage is nobody's fault), and sets aside those out of attempts. Returns how many
    /// it set aside.
    async fn count_refusals(
        &self,
        tx: &mut PgConnection,
        rows: &[Pending],
        refused: &[(usize, String, bool)],
        connected: bool,
        max_attempts: i32,
    ) -> Result<usize, sqlx::Error> {
        let mut set_aside = 0;
        for (i, reason, own_fault) in refused {
            if !(connected && *own_fault) {
                continue;
            }
            let row = &rows[*i];
            let attempts = row.attempts + 1;
            let give_up = attempts >= max_attempts;
            let sql = format!(
                "UPDATE {}.outbox SET attempts = $2, last_error = $3,
                     set_aside_at = CASE WHEN $4 THEN now() END
                 WHERE seq = $1",
                self.schema
            );
            sqlx::query(sqlx::AssertSqlSafe(sql))
                .bind(row.seq)
                .bind(attempts)
                .bind(reason)
                .bind(give_up)
                .execute(&mut *tx)
                .await?;
            if give_up {
                tracing::error!(service = self.schema, subject = %row.subject, %reason, "JetStream refused an event {attempts} times; set aside as a dead letter");
                let letter = crate::dead_letters::Letter {
                    source: crate::dead_letters::Source::Outbox,
                    consumer: "",
                    message_id: &row.id.to_string(),
                    subject: &row.subject,
                    payload: &row.payload,
                    traceparent: row.traceparent.as_deref(),
                    reason,
                    deliveries: attempts,
                };
                crate::dead_letters::keep(tx, self, &letter).await?;
                set_aside += 1;
            }
        }
        Ok(set_aside)
    }
}

/// An outbox row waiting to be published.
struct Pending {
    seq: i64,
    id: Uuid,
    subject: String,
    payload: Vec<u8>,
    traceparent: Option<String>,
    created_at: chrono::DateTime<chrono::Utc>,
    attempts: i32,
}

impl Pending {
    fn read(row: &sqlx::postgres::PgRow) -> Result<Pending, sqlx::Error> {
        Ok(Pending {
            seq: row.try_get("seq")?,
            id: row.try_get("id")?,
            subject: row.try_get("subject")?,
            payload: row.try_get("payload")?,
            traceparent: row.try_get("traceparent")?,
            created_at: row.try_get("created_at")?,
            attempts: row.try_get("attempts")?,
        })
    }
}

/// Whether JetStream says for certain that no stream captures `subject`. A cluster
/// electing a stream's leader (a node just died) also answers a publish with "no
/// stream": then the streams' list still names it, or the question goes unanswered,
/// and the event waits rather than count that against it.
async fn no_stream_takes(bus: &Bus, subject: &str) -> bool {
    use async_nats::jetstream::context::GetStreamByNameErrorKind;
    let full = bus.subjects.subject(subject);
    match bus.js.stream_by_subject(full).await {
        Err(e) => matches!(e.kind(), GetStreamByNameErrorKind::NotFound),
        Ok(_) => false,
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error("postgres: {0}")]
    Db(#[from] sqlx::Error),
    #[error(transparent)]
    Bus(#[from] crate::bus::BusError),
    #[error("jetstream did not acknowledge: {0}")]
    Ack(String),
}
