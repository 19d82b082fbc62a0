//! Dead letters: what a service gave up on, kept with the reason, announced, counted,
//! and replayed by an `hq_admin` once the cause is fixed.
//!
//! - A consumer's message that failed `MAX_DELIVERIES` times (a constraint its handler
//!   trips on, say) is kept here and terminated, and the consumer goes on with the next.
//!   A replay runs it through the same handler, in a transaction with the inbox, in the
//!   service that failed it, so no other consumer of the subject sees it twice.
//! - An outbox row JetStream refused as often is set aside in the outbox and kept here,
//!   and the relay goes on; a replay puts it back in line.
//!
//! Each letter publishes `<service>.dead_letter.recorded` and counts
//! `dead_letters_total{service, source}` (an alert fires on it).
//!
//! A letter may name a customer (a case's opening, a command with its contact). A
//! service that holds a key (lists, the scheduler, dispatch) keeps the payload sealed
//! with it, bound to the letter's table and key (`sealed_payload`; a key rotation
//! re-seals it); the others keep only what their handler's `redact` leaves (assignment:
//! an opening without its customer, which it never reads).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use futures::future::BoxFuture;
use renewal_contract::platform::DeadLettered;
use serde::{Deserialize, Serialize};
use sqlx::{PgConnection, PgPool, Row};

use crate::http::Routes;
use crate::identity::{Caller, Role};
use crate::inbox::{Delivery, HandleError};
use crate::outbox::Outbox;
use crate::pii::{PiiCipher, PiiError, Place};
use crate::problem::Problem;
use crate::resealing::SealedColumn;

/// Where a letter came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    /// A message one of the service's consumers could not handle.
    Consumer,
    /// An event of the service's own that JetStream would not take.
    Outbox,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Consumer => "consumer",
            Source::Outbox => "outbox",
        }
    }

    fn parse(s: &str) -> Option<Source> {
        match s {
            "consumer" => Some(Source::Consumer),
            "outbox" => Some(Source::Outbox),
            _ => None,
        }
    }
}

/// How a service's dead letters are sealed: its key, and the table (`schema.dead_letters`)
/// each sealed payload is bound to.
#[derive(Clone, Debug)]
pub struct LetterSeal {
    pub(crate) pii: Arc<PiiCipher>,
    pub(crate) table: &'static str,
}

/// The row key a letter's sealed payload is bound to, as SQL (for a key rotation).
const ROW_KEY: &str = "source || '/' || consumer || '/' || message_id";

/// Where a service keeps its sealed letters (`table` is `<schema>.dead_letters`), for its
/// list of sealed columns and [`Outbox::sealing_letters`].
pub const fn sealed_column(table: &'static str) -> SealedColumn {
    SealedColumn {
        table,
        column: "sealed_payload",
        row_key: ROW_KEY,
        index: None,
    }
}

impl LetterSeal {
    fn seal(&self, payload: &[u8], row: &str) -> Result<Vec<u8>, sqlx::Error> {
        self.pii
            .seal_bytes(payload, Place::new(self.table, "sealed_payload", row))
            .map_err(sealing_failed)
    }

    fn open(&self, sealed: &[u8], row: &str) -> Result<Vec<u8>, PiiError> {
        self.pii
            .open_bytes(sealed, Place::new(self.table, "sealed_payload", row))
    }
}

/// The row key of a letter, as [`ROW_KEY`] computes it.
fn row_key(source: &str, consumer: &str, message_id: &str) -> String {
    format!("{source}/{consumer}/{message_id}")
}

/// Sealing fails only when the system's random source does: the letter is not kept
/// (the message is delivered again, the outbox row tried again).
fn sealing_failed(e: PiiError) -> sqlx::Error {
    sqlx::Error::Encode(Box::new(e))
}

/// A message given up on.
pub struct Letter<'a> {
    pub source: Source,
    /// The consumer's filter (consumer letters); empty for outbox letters.
    pub consumer: &'a str,
    pub message_id: &'a str,
    pub subject: &'a str,
    pub payload: &'a [u8],
    pub traceparent: Option<&'a str>,
    pub reason: &'a str,
    pub deliveries: i32,
}

/// Keeps `letter` and announces it, in the caller's transaction. A letter replayed and
/// given up on again comes back with its new reason.
pub async fn keep(
    tx: &mut PgConnection,
    outbox: &Outbox,
    letter: &Letter<'_>,
) -> Result<i64, sqlx::Error> {
    let schema = outbox.schema();
    let (payload, sealed) = match outbox.letter_seal() {
        Some(seal) => {
            let row = row_key(letter.source.as_str(), letter.consumer, letter.message_id);
            (Vec::new(), seal.seal(letter.payload, &row)?)
        }
        None => (letter.payload.to_vec(), Vec::new()),
    };
    let sql = format!(
        "INSERT INTO {schema}.dead_letters
             (source, consumer, message_id, subject, payload, sealed_payload, traceparent,
              reason, deliveries)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
         ON CONFLICT (source, consumer, message_id) DO UPDATE
             SET reason = EXCLUDED.reason, deliveries = EXCLUDED.deliveries, dead_at = now(),
                 replayed_at = NULL, replayed_by = NULL
         RETURNING id"
    );
    let id: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
        .bind(letter.source.as_str())
        .bind(letter.consumer)
        .bind(letter.message_id)
        .bind(letter.subject)
        .bind(payload)
        .bind(sealed)
        .bind(letter.traceparent)
        .bind(letter.reason)
        .bind(letter.deliveries)
        .fetch_one(&mut *tx)
        .await?;
    let event = DeadLettered {
        service: schema.to_owned(),
        source: letter.source.as_str().to_owned(),
        consumer: letter.consumer.to_owned(),
        message_id: letter.message_id.to_owned(),
        subject: letter.subject.to_owned(),
        reason: letter.reason.to_owned(),
        deliveries: letter.deliveries,
        dead_at_ms: Utc::now().timestamp_millis(),
        dead_letter_id: id,
    };
    outbox
        .enqueue(tx, &format!("{schema}.dead_letter.recorded"), &event)
        .await?;
    metrics::counter!("dead_letters_total", "service" => schema, "source" => letter.source.as_str())
        .increment(1);
    Ok(id)
}

/// Runs a consumer's dead letter through the consumer's handler again: whether it had
/// an effect (false: the inbox had it already).
pub trait Replay: Send + Sync + 'static {
    fn replay(&self, delivery: Delivery) -> BoxFuture<'_, Result<bool, HandleError>>;
}

/// The service's consumers by filter, for replays (filled as they start).
#[derive(Clone, Default)]
pub struct Replayers(Arc<Mutex<HashMap<&'static str, Arc<dyn Replay>>>>);

impl Replayers {
    pub fn add(&self, filter: &'static str, replay: Arc<dyn Replay>) {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(filter, replay);
    }

    fn get(&self, filter: &str) -> Option<Arc<dyn Replay>> {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(filter)
            .cloned()
    }
}

#[derive(Clone)]
struct DeadLetters {
    pool: PgPool,
    outbox: Outbox,
    replayers: Replayers,
}

/// `GET /v1/dead-letters/{service}` and `POST /v1/dead-letters/{service}/{id}:replay`,
/// for `hq_admin` (mounted by each service for its own).
pub fn routes(pool: PgPool, outbox: Outbox, replayers: Replayers) -> Routes {
    let schema = outbox.schema();
    let state = DeadLetters {
        pool,
        outbox,
        replayers,
    };
    Routes::new()
        .route(
            &format!("/v1/dead-letters/{schema}"),
            axum::routing::get(list),
        )
        .route(
            &format!("/v1/dead-letters/{schema}/{{action}}"),
            axum::routing::post(replay),
        )
        .finish(|router| router.with_state(state))
}

/// One letter as `hq_admin` reads it (never its payload: it may name a customer).
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct DeadLetter {
    pub id: i64,
    pub source: Source,
    /// The consumer's filter (consumer letters).
    pub consumer: String,
    pub message_id: String,
    pub subject: String,
    pub reason: String,
    pub deliveries: i32,
    pub dead_at: DateTime<Utc>,
    pub replayed_at: Option<DateTime<Utc>>,
    pub replayed_by: Option<String>,
}

/// What `hq_admin` asks of the dead letters.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct DeadLetterQuery {
    /// Only those not replayed yet (default true).
    waiting: Option<bool>,
    page_size: Option<i64>,
    page_token: Option<String>,
}

/// Newest first.
async fn list(
    State(letters): State<DeadLetters>,
    caller: Caller,
    Query(q): Query<DeadLetterQuery>,
) -> Result<Json<serde_json::Value>, Problem> {
    caller.require(&[Role::HqAdmin])?;
    let page_size = q.page_size.unwrap_or(100).clamp(1, 1000);
    let before: i64 = match q.page_token.as_deref() {
        None => i64::MAX,
        Some(t) => t
            .parse()
            .map_err(|_| Problem::bad_request("page_token is not one we gave"))?,
    };
    let sql = format!(
        "SELECT id, source, consumer, message_id, subject, reason, deliveries, dead_at, replayed_at, replayed_by
         FROM {}.dead_letters
         WHERE id < $1 AND (NOT $2 OR replayed_at IS NULL)
         ORDER BY id DESC LIMIT $3",
        letters.outbox.schema()
    );
    let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(before)
        .bind(q.waiting.unwrap_or(true))
        .bind(page_size)
        .fetch_all(&letters.pool)
        .await
        .map_err(|e| Problem::database(&e))?;
    let items = rows
        .iter()
        .map(read)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| Problem::internal(&e))?;
    let next = (items.len() as i64 == page_size)
        .then(|| items.last().map(|l| l.id.to_string()))
        .flatten();
    Ok(Json(
        serde_json::json!({ "items": items, "next_page_token": next }),
    ))
}

fn read(row: &sqlx::postgres::PgRow) -> Result<DeadLetter, sqlx::Error> {
    let source: String = row.try_get("source")?;
    Ok(DeadLetter {
        id: row.try_get("id")?,
        source: Source::parse(&source).ok_or_else(|| sqlx::Error::ColumnDecode {
            index: "source".into(),
            source: format!("unknown source {source:?}").into(),
        })?,
        consumer: row.try_get("consumer")?,
        message_id: row.try_get("message_id")?,
        subject: row.try_get("subject")?,
        reason: row.try_get("reason")?,
        deliveries: row.try_get("deliveries")?,
        dead_at: row.try_get("dead_at")?,
        replayed_at: row.try_get("replayed_at")?,
        replayed_by: row.try_get("replayed_by")?,
    })
}

/// Replays one letter: a consumer's through its handler (200 applied or already
/// applied; 409 failed again, kept waiting with the new reason), an outbox row back in
/// the relay's line (202).
async fn replay(
    State(letters): State<DeadLetters>,
    caller: Caller,
    Path(action): Path<String>,
) -> Result<(StatusCode, Json<serde_json::Value>), Problem> {
    caller.require(&[Role::HqAdmin])?;
    let unknown = || {
        Problem::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no dead letter {action}"),
        )
    };
    let id: i64 = match action.split_once(':') {
        Some((id, "replay")) => id.parse().map_err(|_| unknown())?,
        _ => return Err(unknown()),
    };
    let schema = letters.outbox.schema();
    let sql = format!(
        "SELECT source, consumer, message_id, subject, payload, sealed_payload, deliveries,
                replayed_at
         FROM {schema}.dead_letters WHERE id = $1"
    );
    let row = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(id)
        .fetch_optional(&letters.pool)
        .await
        .map_err(|e| Problem::database(&e))?
        .ok_or_else(unknown)?;
    let get = |e: sqlx::Error| Problem::internal(&e);
    if row
        .try_get::<Option<DateTime<Utc>>, _>("replayed_at")
        .map_err(get)?
        .is_some()
    {
        return Err(Problem::new(
            StatusCode::CONFLICT,
            "already_replayed",
            format!("dead letter {id} was replayed already"),
        ));
    }
    let source: String = row.try_get("source").map_err(get)?;
    let result = if source == Source::Outbox.as_str() {
        requeue(
            &letters,
            &row.try_get::<String, _>("message_id").map_err(get)?,
        )
        .await?;
        (StatusCode::ACCEPTED, "requeued")
    } else {
        replay_consumed(&letters, &row).await?
    };
    let mark = format!(
        "UPDATE {schema}.dead_letters SET replayed_at = now(), replayed_by = $2 WHERE id = $1"
    );
    sqlx::query(sqlx::AssertSqlSafe(mark))
        .bind(id)
        .bind(&caller.subject)
        .execute(&letters.pool)
        .await
        .map_err(|e| Problem::database(&e))?;
    Ok((
        result.0,
        Json(serde_json::json!({ "id": id, "result": result.1 })),
    ))
}

/// Runs a consumer's letter through the consumer that failed it.
async fn replay_consumed(
    letters: &DeadLetters,
    row: &sqlx::postgres::PgRow,
) -> Result<(StatusCode, &'static str), Problem> {
    let get = |e: sqlx::Error| Problem::internal(&e);
    let consumer: String = row.try_get("consumer").map_err(get)?;
    let replayer = letters.replayers.get(&consumer).ok_or_else(|| {
        Problem::new(
            StatusCode::CONFLICT,
            "consumer_gone",
            format!("this process runs no consumer of {consumer}"),
        )
    })?;
    let message_id: String = row.try_get("message_id").map_err(get)?;
    let payload = match letters.outbox.letter_seal() {
        Some(seal)
            if !row
                .try_get::<Vec<u8>, _>("sealed_payload")
                .map_err(get)?
                .is_empty() =>
        {
            let sealed: Vec<u8> = row.try_get("sealed_payload").map_err(get)?;
            let key = row_key(Source::Consumer.as_str(), &consumer, &message_id);
            seal.open(&sealed, &key).map_err(|e| {
                Problem::new(
                    StatusCode::CONFLICT,
                    "unreadable",
                    format!("the letter does not open under any listed key: {e}"),
                )
            })?
        }
        _ => row.try_get("payload").map_err(get)?,
    };
    if payload.is_empty() {
        return Err(Problem::new(
            StatusCode::CONFLICT,
            "payload_not_kept",
            "this letter was kept without its message (it named a customer); it cannot be replayed",
        ));
    }
    let delivery = Delivery {
        subject: row.try_get("subject").map_err(get)?,
        message_id,
        payload: payload.into(),
        delivered: row.try_get::<i32, _>("deliveries").map_err(get)? as i64 + 1,
    };
    match replayer.replay(delivery).await {
        Ok(true) => Ok((StatusCode::OK, "applied")),
        Ok(false) => Ok((StatusCode::OK, "already_applied")),
        Err(e) => Err(Problem::new(
            StatusCode::CONFLICT,
            "replay_failed",
            format!("the handler failed again: {e}"),
        )),
    }
}

/// Puts a set-aside outbox row back in the relay's line.
async fn requeue(letters: &DeadLetters, message_id: &str) -> Result<(), Problem> {
    let id = uuid::Uuid::parse_str(message_id).map_err(|_| {
        Problem::internal(&format!("outbox letter id {message_id:?} is not a UUID"))
    })?;
    let sql = format!(
        "UPDATE {}.outbox SET set_aside_at = NULL, attempts = 0, last_error = NULL WHERE id = $1",
        letters.outbox.schema()
    );
    sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(id)
        .execute(&letters.pool)
        .await
        .map_err(|e| Problem::database(&e))?;
    letters.outbox.wake();
    Ok(())
}

/// Rewrites the service's letters of `subjects` that `change` gives a new payload for (an
/// erasure clearing a customer from them), sealed again where they were sealed. How many
/// it changed. A sealed letter no listed key opens is passed over: nobody can read it.
pub async fn rewrite(
    tx: &mut PgConnection,
    outbox: &Outbox,
    subjects: &[&str],
    change: impl Fn(&str, &[u8]) -> Option<Vec<u8>>,
) -> Result<u64, sqlx::Error> {
    let schema = outbox.schema();
    let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT id, source, consumer, message_id, subject, payload, sealed_payload
         FROM {schema}.dead_letters WHERE subject = ANY($1) ORDER BY id FOR UPDATE"
    )))
    .bind(subjects)
    .fetch_all(&mut *tx)
    .await?;
    let mut changed = 0;
    for row in rows {
        let sealed: Vec<u8> = row.try_get("sealed_payload")?;
        let key = row_key(
            &row.try_get::<String, _>("source")?,
            &row.try_get::<String, _>("consumer")?,
            &row.try_get::<String, _>("message_id")?,
        );
        let seal = outbox.letter_seal().filter(|_| !sealed.is_empty());
        let plain = match seal {
            Some(seal) => match seal.open(&sealed, &key) {
                Ok(plain) => plain,
                Err(_) => continue,
            },
            None => row.try_get("payload")?,
        };
        let subject: String = row.try_get("subject")?;
        let Some(new) = change(&subject, &plain) else {
            continue;
        };
        let (payload, sealed) = match seal {
            Some(seal) => (Vec::new(), seal.seal(&new, &key)?),
            None => (new, Vec::new()),
        };
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "UPDATE {schema}.dead_letters SET payload = $2, sealed_payload = $3 WHERE id = $1"
        )))
        .bind(row.try_get::<i64, _>("id")?)
        .bind(payload)
        .bind(sealed)
        .execute(&mut *tx)
        .await?;
        changed += 1;
    }
    Ok(changed)
}
