//! The audit log, one table per service (`<schema>.audit_log`): every call to a
//! service's API, who made it (the token's subject and role), what (method, route and
//! the path it named, so the case, policy or task), when, its request id and its
//! result, refusals included. `GET /v1/audit` shows it to the `auditor`.
//!
//! Cheap on the hot paths: a request hands its entry to a channel and goes on; one
//! writer per service gathers entries for 200 ms and inserts them in one statement
//! whose commit does not wait for the disk. Entries still queued when the process is
//! killed are lost (a drain on SIGTERM writes them); the alternative, a row in each
//! request's own transaction, would cost the phone-task and claim paths a write each.

use axum::Json;
use axum::extract::{MatchedPath, Query, Request, State};
use axum::middleware::Next;
use axum::response::Response;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::{PgPool, Row};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::http::{RequestId, Routes};
use crate::identity::{Caller, Identified, Role};
use crate::problem::Problem;

/// Entries a writer takes at once.
const BATCH: usize = 1000;
/// Entries that may wait for the writer before requests stop waiting for room.
const QUEUE: usize = 50_000;
/// How long the writer gathers entries before it writes them.
const GATHER: std::time::Duration = std::time::Duration::from_millis(200);

#[derive(Debug, Clone, Serialize)]
pub struct Entry {
    pub at: DateTime<Utc>,
    pub subject: String,
    pub role: String,
    pub method: String,
    pub route: String,
    pub target: String,
    pub request_id: String,
    pub status: u16,
}

/// One service's audit log.
#[derive(Clone)]
pub struct AuditLog {
    schema: &'static str,
    pool: PgPool,
    queue: mpsc::Sender<Entry>,
}

impl AuditLog {
    /// Starts the writer; it writes what is queued and stops once `cancel` fires.
    pub fn start(pool: &PgPool, schema: &'static str, cancel: &CancellationToken) -> AuditLog {
        let (queue, entries) = mpsc::channel(QUEUE);
        tokio::spawn(write(pool.clone(), schema, entries, cancel.clone()));
        AuditLog {
            schema,
            pool: pool.clone(),
            queue,
        }
    }

    /// Records an entry (waits only if the writer is far behind).
    pub async fn record(&self, entry: Entry) {
        if self.queue.send(entry).await.is_err() {
            tracing::warn!(schema = self.schema, "audit writer stopped; entry dropped");
        }
    }

    /// Wraps a service's routes so every call to them is recorded.
    pub fn around(&self, routes: Routes) -> Routes {
        let layer = axum::middleware::from_fn_with_state(self.clone(), audited);
        routes.map(|router| router.route_layer(layer))
    }

    /// `GET /v1/audit` for this service's log (mounted by each service).
    pub fn routes(&self) -> Routes {
        let state = self.clone();
        Routes::new()
            .route(
                &format!("/v1/audit/{}", self.schema),
                axum::routing::get(list),
            )
            .finish(|router| router.with_state(state))
    }
}

async fn audited(State(log): State<AuditLog>, request: Request, next: Next) -> Response {
    let method = request.method().as_str().to_owned();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(String::new, |m| m.as_str().to_owned());
    let target = request.uri().path().to_owned();
    let request_id = request
        .extensions()
        .get::<RequestId>()
        .map_or_else(String::new, |r| r.0.clone());
    let (subject, role) = match request.extensions().get::<Identified>() {
        Some(Identified(Ok(caller))) => (caller.subject.clone(), caller.main_role().to_owned()),
        _ => ("anonymous".to_owned(), "none".to_owned()),
    };
    let response = next.run(request).await;
    log.record(Entry {
        at: Utc::now(),
        subject,
        role,
        method,
        route,
        target,
        request_id,
        status: response.status().as_u16(),
    })
    .await;
    response
}

async fn write(
    pool: PgPool,
    schema: &'static str,
    mut entries: mpsc::Receiver<Entry>,
    cancel: CancellationToken,
) {
    let sql = format!(
        "INSERT INTO {schema}.audit_log (at, subject, role, method, route, target, request_id, status)
         SELECT * FROM unnest($1::timestamptz[], $2::text[], $3::text[], $4::text[], $5::text[],
                              $6::text[], $7::text[], $8::smallint[])"
    );
    let mut batch = Vec::with_capacity(BATCH);
    loop {
        let open = gather(&mut entries, &mut batch, &cancel).await;
        if !batch.is_empty() {
            insert(&pool, schema, &sql, &batch, &cancel).await;
            batch.clear();
        }
        if !open {
            return;
        }
    }
}

/// Waits for entries, then for more until the batch is full or [`GATHER`] has passed
/// since the first: a busy API writes a few statements a second, not one per call.
/// False once the log is closing (everything queued has been taken).
async fn gather(
    entries: &mut mpsc::Receiver<Entry>,
    batch: &mut Vec<Entry>,
    cancel: &CancellationToken,
) -> bool {
    tokio::select! {
        n = entries.recv_many(batch, BATCH) => if n == 0 { return false },
        _ = cancel.cancelled() => {
            entries.close();
            entries.recv_many(batch, QUEUE).await;
            return false;
        }
    }
    let until = tokio::time::Instant::now() + GATHER;
    while batch.len() < BATCH {
        let room = BATCH - batch.len();
        tokio::select! {
            n = entries.recv_many(batch, room) => if n == 0 { return false },
            _ = tokio::time::sleep_until(until) => break,
            _ = cancel.cancelled() => break,
        }
    }
    true
}

/// Writes a batch, retrying a few times. The commit does not wait for the disk: a
/// crash loses at most the last moments of the log, as it loses what is queued.
async fn insert(
    pool: &PgPool,
    schema: &'static str,
    sql: &str,
    batch: &[Entry],
    cancel: &CancellationToken,
) {
    let columns = Columns::of(batch);
    let mut backoff = crate::retry::Backoff::new(
        std::time::Duration::from_millis(100),
        std::time::Duration::from_secs(5),
    );
    for attempt in 1.. {
        let written = async {
            let mut tx = pool.begin().await?;
            sqlx::query("SET LOCAL synchronous_commit = off")
                .execute(&mut *tx)
                .await?;
            sqlx::query(sqlx::AssertSqlSafe(sql))
                .bind(&columns.at)
                .bind(&columns.subject)
                .bind(&columns.role)
                .bind(&columns.method)
                .bind(&columns.route)
                .bind(&columns.target)
                .bind(&columns.request_id)
                .bind(&columns.status)
                .execute(&mut *tx)
                .await?;
            tx.commit().await
        }
        .await;
        match written {
            Ok(()) => return,
            Err(e) if attempt >= 5 || cancel.is_cancelled() => {
                tracing::error!(error = %e, schema, entries = batch.len(), "audit entries not written");
                return;
            }
            Err(e) => {
                tracing::warn!(error = %e, schema, "audit entries not written yet; retrying");
                tokio::time::sleep(backoff.next_delay()).await;
            }
        }
    }
}

#[derive(Default)]
struct Columns {
    at: Vec<DateTime<Utc>>,
    subject: Vec<String>,
    role: Vec<String>,
    method: Vec<String>,
    route: Vec<String>,
    target: Vec<String>,
    request_id: Vec<String>,
    status: Vec<i16>,
}

impl Columns {
    fn of(batch: &[Entry]) -> Columns {
        let mut c = Columns::default();
        for e in batch {
            c.at.push(e.at);
            c.subject.push(e.subject.clone());
            c.role.push(e.role.clone());
            c.method.push(e.method.clone());
            c.route.push(e.route.clone());
            c.target.push(e.target.clone());
            c.request_id.push(e.request_id.clone());
            c.status.push(e.status as i16);
        }
        c
    }
}

/// What the auditor asks of the log.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct AuditQuery {
    subject: Option<String>,
    target: Option<String>,
    from: Option<DateTime<Utc>>,
    to: Option<DateTime<Utc>>,
    page_size: Option<i64>,
    page_token: Option<String>,
}

/// `GET /v1/audit/{service}?subject=&target=&from=&to=&page_size=&page_token=`: newest
/// first, for the `auditor` (and `hq_admin`).
async fn list(
    State(log): State<AuditLog>,
    caller: Caller,
    Query(q): Query<AuditQuery>,
) -> Result<Json<serde_json::Value>, Problem> {
    caller.require(&[Role::Auditor, Role::HqAdmin])?;
    let page_size = q.page_size.unwrap_or(100).clamp(1, 1000);
    let before: i64 = match q.page_token.as_deref() {
        None => i64::MAX,
        Some(t) => t
            .parse()
            .map_err(|_| Problem::bad_request("page_token is not one we gave"))?,
    };
    let sql = format!(
        "SELECT seq, at, subject, role, method, route, target, request_id, status
         FROM {}.audit_log
         WHERE seq < $1 AND ($2::text IS NULL OR subject = $2) AND ($3::text IS NULL OR target = $3)
           AND ($4::timestamptz IS NULL OR at >= $4) AND ($5::timestamptz IS NULL OR at < $5)
         ORDER BY seq DESC LIMIT $6",
        log.schema
    );
    let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(before)
        .bind(&q.subject)
        .bind(&q.target)
        .bind(q.from)
        .bind(q.to)
        .bind(page_size)
        .fetch_all(&log.pool)
        .await
        .map_err(|e| Problem::database(&e))?;
    let mut entries = Vec::with_capacity(rows.len());
    let mut last = None;
    for row in &rows {
        let read = || -> Result<_, sqlx::Error> {
            Ok((
                row.try_get::<i64, _>("seq")?,
                Entry {
                    at: row.try_get("at")?,
                    subject: row.try_get("subject")?,
                    role: row.try_get("role")?,
                    method: row.try_get("method")?,
                    route: row.try_get("route")?,
                    target: row.try_get("target")?,
                    request_id: row.try_get("request_id")?,
                    status: row.try_get::<i16, _>("status")? as u16,
                },
            ))
        };
        let (seq, entry) = read().map_err(|e| Problem::internal(&e))?;
        last = Some(seq);
        entries.push(entry);
    }
    let next = (rows.len() as i64 == page_size)
        .then(|| last.map(|s| s.to_string()))
        .flatten();
    Ok(Json(
        serde_json::json!({ "entries": entries, "next_page_token": next }),
    ))
}
