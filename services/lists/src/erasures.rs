//! Erasure of a customer's personal data, on request and after retention (PIPL: the
//! right to deletion, and keeping personal data no longer than the purpose needs).
//!
//! `POST /v1/erasures {"mobile": ...}` or `{"id_number": ...}` (an `hq_admin`, audited)
//! finds the customer's policies by blind index and, in one transaction: closes their
//! open cases (cancelled: nobody may contact the customer any more), empties every
//! sealed column of the policies and their blind indexes (the rows stay, so the figures
//! do), records the erasure with lists' own answer, and puts one command per other
//! service in the outbox (`<service>.cmd.erase_personal_data`, naming the cases, never
//! the customer). Each service erases its copy and answers `<service>.erasure.done`;
//! `GET /v1/erasures/{id}` shows what was erased where, and who has not answered yet.
//!
//! The retention job erases, the same way, the policies whose cases closed longer ago
//! than `PII_RETENTION_DAYS`, a batch at a time, every hour of the service's clock. It
//! also gives policies written before ID numbers were indexed their index.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use chrono::{DateTime, Utc};
use renewal_contract::core::PolicyUpserted;
use renewal_contract::lists::{CaseOutcome, ErasePersonalData, ErasureReason};
use renewal_contract::platform::ErasureDone;
use renewal_contract::subject;
use renewal_platform::pii::{PiiCipher, PiiError, Place};
use renewal_platform::{Caller, Clock, Delivery, HandleError, Handler, Outbox, Problem, Role};
use serde::{Deserialize, Serialize};
use sqlx::{PgConnection, PgPool, Row};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::portfolio::POLICIES;

/// Why an erasure was made; `lists.erasures.reason`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    Request,
    Retention,
}

impl Reason {
    fn as_db(self) -> &'static str {
        match self {
            Reason::Request => "request",
            Reason::Retention => "retention",
        }
    }

    fn from_db(text: &str) -> Reason {
        if text == "retention" {
            Reason::Retention
        } else {
            Reason::Request
        }
    }

    fn wire(self) -> ErasureReason {
        match self {
            Reason::Request => ErasureReason::Request,
            Reason::Retention => ErasureReason::Retention,
        }
    }
}

/// The services that keep a copy, and the subject each is told on.
const OTHERS: [(&str, &str); 3] = [
    ("assignment", subject::ASSIGNMENT_CMD_ERASE_PERSONAL_DATA),
    ("scheduler", subject::SCHEDULER_CMD_ERASE_PERSONAL_DATA),
    ("dispatch", subject::DISPATCH_CMD_ERASE_PERSONAL_DATA),
];

/// What lists keeps of an erased customer, on purpose.
const KEPT: &[&str] = &[
    "policies: number, dates, codes and premium, for the renewal figures; no name, mobile, ID number, plate or VIN",
    "cases: dates, states and outcomes, for the renewal figures",
    "erasures: this record, which names cases, not the customer",
];

/// One erasure as made.
#[derive(Debug, Clone)]
pub struct Erasure {
    pub erasure_id: Uuid,
    pub policies: u64,
    pub cases: Vec<Uuid>,
    pub cases_closed: u64,
    /// Dead letters of the policies' upserts the customer was cleared from.
    pub letters: u64,
}

/// Erases lists' copy of `policy_nos` and tells the other services, in `tx`.
pub async fn erase(
    tx: &mut PgConnection,
    outbox: &Outbox,
    policy_nos: &[String],
    reason: Reason,
    by: &str,
    now: DateTime<Utc>,
) -> Result<Erasure, sqlx::Error> {
    let mut cases_closed = 0;
    for policy_no in policy_nos {
        if crate::cases::close(tx, outbox, policy_no, CaseOutcome::Cancelled, "", now)
            .await?
            .is_some()
        {
            cases_closed += 1;
        }
    }
    let policies = sqlx::query(
        "UPDATE lists.policies SET name_enc = '\\x', mobile_enc = '\\x', id_number_enc = '\\x',
                plate_enc = '\\x', vin_enc = '\\x', vin_index = NULL, mobile_index = '\\x', id_number_index = '\\x',
                content_digest = '\\x', erased_at = $2
         WHERE policy_no = ANY($1)",
    )
    .bind(policy_nos)
    .bind(now)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    let letters = redact_letters(tx, outbox, policy_nos).await?;
    let cases: Vec<Uuid> =
        sqlx::query_scalar("SELECT case_id FROM lists.cases WHERE policy_no = ANY($1)")
            .bind(policy_nos)
            .fetch_all(&mut *tx)
            .await?;
    let erasure = Erasure {
        erasure_id: Uuid::now_v7(),
        policies,
        cases,
        cases_closed,
        letters,
    };
    record(tx, &erasure, reason, by, now).await?;
    tell_the_others(tx, outbox, &erasure, reason, now).await?;
    metrics::counter!("lists_erasures_total", "reason" => reason.as_db()).increment(1);
    Ok(erasure)
}

/// Clears the customer from lists' dead letters of the policies' upserts (sealed, a
/// replay of one would bring the customer back). How many it changed.
async fn redact_letters(
    tx: &mut PgConnection,
    outbox: &Outbox,
    policy_nos: &[String],
) -> Result<u64, sqlx::Error> {
    let subjects = [subject::CORE_POLICY_UPSERTED];
    renewal_platform::dead_letters::rewrite(tx, outbox, &subjects, |_, payload| {
        let mut event = <PolicyUpserted as prost::Message>::decode(payload).ok()?;
        let ours = event
            .policy
            .as_ref()
            .is_some_and(|p| policy_nos.iter().any(|n| *n == p.policy_no.trim()));
        (ours && crate::intake::redact_customer(&mut event))
            .then(|| prost::Message::encode_to_vec(&event))
    })
    .await
}

/// The erasure and lists' own answer.
async fn record(
    tx: &mut PgConnection,
    e: &Erasure,
    reason: Reason,
    by: &str,
    now: DateTime<Utc>,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO lists.erasures (erasure_id, reason, requested_by, requested_at, policies, case_ids)
         VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(e.erasure_id)
    .bind(reason.as_db())
    .bind(by)
    .bind(now)
    .bind(e.policies as i32)
    .bind(&e.cases)
    .execute(&mut *tx)
    .await?;
    let erased = serde_json::json!({
        "policies": e.policies,
        "cases_closed": e.cases_closed,
        "dead_letters": e.letters,
    });
    answer(
        tx,
        e.erasure_id,
        "lists",
        &erased,
        &serde_json::json!(KEPT),
        now,
    )
    .await
}

async fn answer(
    tx: &mut PgConnection,
    erasure_id: Uuid,
    service: &str,
    erased: &serde_json::Value,
    kept: &serde_json::Value,
    at: DateTime<Utc>,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO lists.erasure_answers (erasure_id, service, erased, kept, done_at)
         SELECT $1, $2, $3, $4, $5 WHERE EXISTS (SELECT 1 FROM lists.erasures WHERE erasure_id = $1)
         ON CONFLICT (erasure_id, service) DO NOTHING",
    )
    .bind(erasure_id)
    .bind(service)
    .bind(erased)
    .bind(kept)
    .bind(at)
    .execute(&mut *tx)
    .await?;
    Ok(())
}

async fn tell_the_others(
    tx: &mut PgConnection,
    outbox: &Outbox,
    e: &Erasure,
    reason: Reason,
    now: DateTime<Utc>,
) -> Result<(), sqlx::Error> {
    let command = ErasePersonalData {
        erasure_id: e.erasure_id.to_string(),
        case_ids: e.cases.iter().map(Uuid::to_string).collect(),
        reason: reason.wire() as i32,
        requested_at_ms: now.timestamp_millis(),
    };
    for (_, subject) in OTHERS {
        outbox.enqueue(tx, subject, &command).await?;
    }
    Ok(())
}

// ---------------------------------------------------------------------------------
// The answers of the other services.

/// `<service>.erasure.done` from assignment, scheduler and dispatch.
pub struct Answers;

impl Handler for Answers {
    async fn handle(&self, tx: &mut PgConnection, delivery: &Delivery) -> Result<(), HandleError> {
        let done: ErasureDone = delivery.decode()?;
        let service = OTHERS
            .iter()
            .map(|(s, _)| *s)
            .find(|s| *s == done.service)
            .ok_or_else(|| {
                HandleError::Malformed(format!("erasure answer from {:?}", done.service))
            })?;
        let erasure_id = Uuid::parse_str(&done.erasure_id)
            .map_err(|e| HandleError::Malformed(format!("erasure id: {e}")))?;
        let erased: BTreeMap<&String, &u64> = done.erased.iter().collect();
        let at = DateTime::from_timestamp_millis(done.done_at_ms).unwrap_or_else(Utc::now);
        let erased = serde_json::to_value(erased).unwrap_or_default();
        answer(
            tx,
            erasure_id,
            service,
            &erased,
            &serde_json::json!(done.kept),
            at,
        )
        .await?;
        Ok(())
    }

    /// An answer carries no personal data: kept whole when refused.
    fn redact(&self, delivery: &Delivery) -> Option<Vec<u8>> {
        Some(delivery.payload.to_vec())
    }
}

// ---------------------------------------------------------------------------------
// The API.

#[derive(Clone)]
pub struct ErasureApi {
    pub pool: PgPool,
    pub outbox: Outbox,
    pub clock: Clock,
    pub pii: Arc<PiiCipher>,
}

pub fn routes(api: ErasureApi) -> renewal_platform::http::Routes {
    renewal_platform::http::Routes::new()
        .route("/v1/erasures", post(request_erasure))
        .route("/v1/erasures/{erasure_id}", get(show_erasure))
        .finish(|router| router.with_state(api))
}

/// A customer to erase, by mobile or by ID number (exactly one).
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ErasureRequest {
    /// A mainland mobile, any common spelling.
    #[serde(default)]
    mobile: Option<String>,
    /// A resident ID number (18 characters).
    #[serde(default)]
    id_number: Option<String>,
}

/// An erasure and what each service says it erased.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ErasureView {
    erasure_id: Uuid,
    reason: Reason,
    requested_at: DateTime<Utc>,
    policies: i32,
    cases: usize,
    /// By service: what it erased (counts by table) and what it kept and why.
    answers: BTreeMap<String, ServiceAnswer>,
    /// The services that have not answered yet.
    waiting_for: Vec<String>,
    complete: bool,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ServiceAnswer {
    #[schema(value_type = Object)]
    erased: serde_json::Value,
    kept: Vec<String>,
    done_at: DateTime<Utc>,
}

#[derive(Debug, thiserror::Error)]
enum ErasureError {
    #[error("{0}")]
    Refused(#[from] Problem),
    #[error("postgres: {0}")]
    Db(#[from] sqlx::Error),
}

impl IntoResponse for ErasureError {
    fn into_response(self) -> Response {
        match self {
            ErasureError::Refused(p) => p,
            ErasureError::Db(e) => Problem::database(&e),
        }
        .into_response()
    }
}

/// `POST /v1/erasures`: erases a customer everywhere (`hq_admin`). 202 with the
/// erasure as it stands (lists has erased its copy; the others answer within seconds:
/// follow `Location`); 404 when no policy holds that mobile or ID number (or it was
/// erased before).
#[utoipa::path(post, path = "/v1/erasures", tag = "erasures", request_body = ErasureRequest,
    responses((status = 202, body = ErasureView, description = "Erased in lists; the other services were told"),
              (status = 400, content_type = "application/problem+json", body = renewal_platform::openapi::ProblemDocument),
              (status = 404, content_type = "application/problem+json", body = renewal_platform::openapi::ProblemDocument),
              renewal_platform::openapi::Refusals))]
async fn request_erasure(
    State(api): State<ErasureApi>,
    caller: Caller,
    body: Result<Json<ErasureRequest>, axum::extract::rejection::JsonRejection>,
) -> Result<Response, ErasureError> {
    caller.require(&[Role::HqAdmin])?;
    let Json(body) = body.map_err(|e| Problem::bad_request(e.body_text()))?;
    let indexes = lookup(&api.pii, &body)?;
    let mut tx = api.pool.begin().await?;
    let policy_nos: Vec<String> = sqlx::query_scalar(
        "SELECT policy_no FROM lists.policies
         WHERE (mobile_index = ANY($1) OR id_number_index = ANY($1)) AND erased_at IS NULL
         ORDER BY policy_no FOR UPDATE",
    )
    .bind(&indexes)
    .fetch_all(&mut *tx)
    .await?;
    if policy_nos.is_empty() {
        return Err(Problem::new(
            StatusCode::NOT_FOUND,
            "unknown_customer",
            "no policy holds that mobile or ID number (or it was erased before)",
        )
        .into());
    }
    let now = api.clock.now();
    let erased = erase(
        &mut tx,
        &api.outbox,
        &policy_nos,
        Reason::Request,
        &caller.subject,
        now,
    )
    .await?;
    tx.commit().await?;
    api.outbox.wake();
    tracing::info!(erasure_id = %erased.erasure_id, policies = erased.policies, cases = erased.cases.len(), "customer erased in lists; the other services told");
    let view = view(&api.pool, erased.erasure_id).await?;
    let location = format!("/v1/erasures/{}", erased.erasure_id);
    Ok((
        StatusCode::ACCEPTED,
        [(header::LOCATION, location)],
        Json(view),
    )
        .into_response())
}

/// The blind indexes to look the customer up by, under every key of the keyring.
fn lookup(pii: &PiiCipher, body: &ErasureRequest) -> Result<Vec<Vec<u8>>, Problem> {
    fn given(v: &Option<String>) -> Option<&str> {
        v.as_deref().map(str::trim).filter(|v| !v.is_empty())
    }
    match (given(&body.mobile), given(&body.id_number)) {
        (Some(mobile), None) => {
            let e164 = crate::policy_checks::mobile_e164(mobile)
                .map_err(|reason| Problem::bad_request(format!("mobile {reason}")))?;
            Ok(pii.blind_indexes_bytes(&e164))
        }
        (None, Some(id)) => {
            let id = id.to_ascii_uppercase();
            if id.len() != 18 || !id.chars().all(|c| c.is_ascii_digit() || c == 'X') {
                return Err(Problem::bad_request(
                    "id_number must be an 18-character resident ID number",
                ));
            }
            Ok(pii.blind_indexes_bytes(&id))
        }
        _ => Err(Problem::bad_request(
            "give exactly one of mobile or id_number",
        )),
    }
}

/// `GET /v1/erasures/{erasure_id}`: what each service erased (`hq_admin`, `auditor`).
#[utoipa::path(get, path = "/v1/erasures/{erasure_id}", tag = "erasures",
    params(("erasure_id" = Uuid, Path)),
    responses((status = 200, body = ErasureView),
              (status = 404, content_type = "application/problem+json", body = renewal_platform::openapi::ProblemDocument),
              renewal_platform::openapi::Refusals))]
async fn show_erasure(
    State(api): State<ErasureApi>,
    caller: Caller,
    Path(erasure_id): Path<Uuid>,
) -> Result<Json<ErasureView>, ErasureError> {
    caller.require(&[Role::HqAdmin, Role::Auditor])?;
    Ok(Json(view(&api.pool, erasure_id).await?))
}

async fn view(pool: &PgPool, erasure_id: Uuid) -> Result<ErasureView, ErasureError> {
    let row = sqlx::query(
        "SELECT reason, requested_at, policies, cardinality(case_ids) AS cases
         FROM lists.erasures WHERE erasure_id = $1",
    )
    .bind(erasure_id)
    .fetch_optional(pool)
    .await?
    .ok_or_else(|| Problem::new(StatusCode::NOT_FOUND, "unknown_erasure", "no such erasure"))?;
    let mut answers = BTreeMap::new();
    for a in sqlx::query(
        "SELECT service, erased, kept, done_at FROM lists.erasure_answers WHERE erasure_id = $1",
    )
    .bind(erasure_id)
    .fetch_all(pool)
    .await?
    {
        let kept: serde_json::Value = a.try_get("kept")?;
        let kept = serde_json::from_value(kept).unwrap_or_default();
        let answer = ServiceAnswer {
            erased: a.try_get("erased")?,
            kept,
            done_at: a.try_get("done_at")?,
        };
        answers.insert(a.try_get::<String, _>("service")?, answer);
    }
    let waiting_for: Vec<String> = OTHERS
        .iter()
        .map(|(s, _)| s.to_string())
        .filter(|s| !answers.contains_key(s))
        .collect();
    Ok(ErasureView {
        erasure_id,
        reason: Reason::from_db(row.try_get("reason")?),
        requested_at: row.try_get("requested_at")?,
        policies: row.try_get("policies")?,
        cases: row.try_get::<i32, _>("cases")? as usize,
        complete: waiting_for.is_empty(),
        answers,
        waiting_for,
    })
}

// ---------------------------------------------------------------------------------
// Retention.

/// Policies erased per retention erasure (one command per service each).
const RETENTION_BATCH: i64 = 1000;
/// Between two retention passes, on the service's clock.
const RETENTION_EVERY: chrono::Duration = chrono::Duration::hours(1);

/// The hourly job: erases what has been kept long enough, and indexes old ID numbers.
pub struct RetentionJob {
    pub pool: PgPool,
    pub outbox: Outbox,
    pub clock: Clock,
    pub pii: Arc<PiiCipher>,
    /// How long a closed case's personal data is kept (`PII_RETENTION_DAYS`).
    pub keep: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum RetentionError {
    #[error("postgres: {0}")]
    Db(#[from] sqlx::Error),
    #[error("an ID number does not open: {0}")]
    Pii(#[from] PiiError),
}

impl RetentionJob {
    pub async fn run(self, cancel: CancellationToken) {
        loop {
            let now = self.clock.now();
            match self.pass(now).await {
                Ok(0) => {}
                Ok(erased) => {
                    self.outbox.wake();
                    tracing::info!(
                        policies = erased,
                        "retention erased the personal data of long-closed cases"
                    );
                }
                Err(e) => {
                    tracing::warn!(error = %e, "retention pass failed; trying again next pass")
                }
            }
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = self.clock.sleep_until(now + RETENTION_EVERY, Duration::from_secs(30)) => {}
            }
        }
    }

    /// One pass: every batch due at `now`; how many policies were erased.
    pub async fn pass(&self, now: DateTime<Utc>) -> Result<u64, RetentionError> {
        self.index_id_numbers().await?;
        let keep = chrono::Duration::from_std(self.keep).unwrap_or(chrono::Duration::MAX);
        let before = now
            .checked_sub_signed(keep)
            .unwrap_or(DateTime::<Utc>::MIN_UTC);
        let mut erased = 0;
        loop {
            let mut tx = self.pool.begin().await?;
            let due: Vec<String> = sqlx::query_scalar(
                "SELECT c.policy_no FROM lists.cases c JOIN lists.policies p USING (policy_no)
                 WHERE (c.closed_at < $1 OR (c.state = 'lapsed' AND c.lapsed_at < $1))
                   AND p.erased_at IS NULL
                 ORDER BY COALESCE(c.closed_at, c.lapsed_at) LIMIT $2 FOR UPDATE OF p SKIP LOCKED",
            )
            .bind(before)
            .bind(RETENTION_BATCH)
            .fetch_all(&mut *tx)
            .await?;
            if due.is_empty() {
                return Ok(erased);
            }
            let e = erase(
                &mut tx,
                &self.outbox,
                &due,
                Reason::Retention,
                "retention",
                now,
            )
            .await?;
            tx.commit().await?;
            erased += e.policies;
        }
    }

    /// Gives policies written before ID numbers were indexed their index, a batch per pass.
    async fn index_id_numbers(&self) -> Result<(), RetentionError> {
        let mut tx = self.pool.begin().await?;
        let rows = sqlx::query(
            "SELECT policy_no, id_number_enc FROM lists.policies WHERE id_number_index IS NULL
             LIMIT 10000 FOR UPDATE SKIP LOCKED",
        )
        .fetch_all(&mut *tx)
        .await?;
        let (mut keys, mut indexes) = (Vec::new(), Vec::new());
        for row in &rows {
            let policy_no: String = row.try_get("policy_no")?;
            let sealed: Vec<u8> = row.try_get("id_number_enc")?;
            let index = if sealed.is_empty() {
                Vec::new()
            } else {
                let id = self
                    .pii
                    .open(&sealed, Place::new(POLICIES, "id_number_enc", &policy_no))?;
                if id.is_empty() {
                    Vec::new()
                } else {
                    self.pii.blind_index(&id).to_vec()
                }
            };
            keys.push(policy_no);
            indexes.push(index);
        }
        sqlx::query(
            "UPDATE lists.policies p SET id_number_index = u.idx
             FROM unnest($1::text[], $2::bytea[]) AS u(policy_no, idx) WHERE p.policy_no = u.policy_no",
        )
        .bind(&keys)
        .bind(&indexes)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }
}
