//! `GET /v1/cases/{policy_no}/contacts`: what dispatch did for a case, for the
//! operations console: its SMS (stage, template, state, times, and each delivery
//! receipt the vendor pushed) and its phone tasks (queue, stage, state, outcome, leases,
//! times). Never the customer's name, mobile or plate, nor what an agent wrote about
//! the call.
//!
//! Dispatch finds the case, and the caller's scope, in `dispatch.case_scopes` (the
//! case's policy number, branch and city as lists opened it, [`keep_scope`]) and
//! `dispatch.case_owners` (its owner and branch as assignment last announced them): the
//! owner, the staff of its branch, its city's admin and HQ may read it.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use chrono::{DateTime, Utc};
use renewal_platform::{Caller, Problem, Role, Scope};
use serde::Serialize;
use sqlx::{PgConnection, PgPool, Row};
use uuid::Uuid;

/// The case's owner, its branch's staff, its city and HQ (as the case's timeline).
const READERS: &[Role] = &[
    Role::Agent,
    Role::Supervisor,
    Role::BranchAdmin,
    Role::CityAdmin,
    Role::HqAdmin,
];

/// What the route can refuse, mapped to HTTP in one place.
#[derive(Debug, thiserror::Error)]
pub enum HistoryError {
    #[error("no case for policy {0}")]
    UnknownCase(String),
    #[error("postgres: {0}")]
    Db(#[from] sqlx::Error),
    /// The caller may not read it (401, 403).
    #[error("{0}")]
    Refused(#[from] Problem),
}

impl IntoResponse for HistoryError {
    fn into_response(self) -> Response {
        match self {
            e @ HistoryError::UnknownCase(_) => {
                Problem::new(StatusCode::NOT_FOUND, "unknown_case", e.to_string())
            }
            HistoryError::Db(e) => Problem::database(&e),
            HistoryError::Refused(p) => p,
        }
        .into_response()
    }
}

/// A case's contacts as the console shows them.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct CaseContacts {
    pub policy_no: String,
    pub case_id: Uuid,
    /// Oldest first.
    pub sms: Vec<SmsView>,
    /// Oldest first.
    pub phone_tasks: Vec<PhoneTaskView>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct SmsView {
    pub id: Uuid,
    pub stage: String,
    /// The template's key (the vendor's code follows from it).
    pub template: String,
    /// queued, sending, unknown, sent, delivered, failed, dead, withdrawn or suppressed.
    pub state: String,
    pub attempts: i32,
    /// The vendor's status code of the last receipt or refusal, if any.
    pub vendor_code: Option<String>,
    pub created_at: DateTime<Utc>,
    pub sent_at: Option<DateTime<Utc>>,
    pub receipt_at: Option<DateTime<Utc>>,
    /// Every receipt the vendor pushed for it, in the order they came.
    pub receipts: Vec<ReceiptView>,
}

#[derive(Debug, Serialize, Clone, serde::Deserialize, utoipa::ToSchema)]
pub struct ReceiptView {
    /// delivered or failed.
    pub status: String,
    /// The vendor's code (`DELIVERED`, or why not).
    pub code: String,
    /// The vendor's report time, as it sent it (China's time).
    pub reported_at: String,
    pub received_at: DateTime<Utc>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct PhoneTaskView {
    pub id: Uuid,
    /// owner, branch, campaign, hq or city.
    pub queue: String,
    pub stage: String,
    /// open, leased, completed, withdrawn or dead.
    pub state: String,
    /// The call's outcome, once completed.
    pub outcome: Option<String>,
    /// Leases taken (a task goes to dead letter after 5 without an outcome).
    pub leases: i32,
    pub created_at: DateTime<Utc>,
    pub completed_at: Option<DateTime<Utc>>,
}

pub fn routes(pool: PgPool) -> renewal_platform::http::Routes {
    renewal_platform::http::Routes::new()
        .route("/v1/cases/{policy_no}/contacts", get(contacts))
        .finish(|router| router.with_state(pool))
}

/// A case as its readers' scope is checked: its id, city, branch and owner (each
/// unknown as none).
type CaseScope = (Uuid, Option<String>, Option<String>, Option<String>);

async fn contacts(
    State(pool): State<PgPool>,
    caller: Caller,
    Path(policy_no): Path<String>,
) -> Result<Json<CaseContacts>, HistoryError> {
    caller.require(READERS)?;
    let scope: Option<CaseScope> = sqlx::query_as(
        "SELECT s.case_id, s.city_code, coalesce(o.branch_code, s.branch_code), o.owner_agent
         FROM dispatch.case_scopes s LEFT JOIN dispatch.case_owners o USING (case_id)
         WHERE s.policy_no = $1 ORDER BY s.opened_at DESC LIMIT 1",
    )
    .bind(&policy_no)
    .fetch_optional(&pool)
    .await?;
    let Some((case_id, city, branch, owner)) = scope else {
        return Err(HistoryError::UnknownCase(policy_no));
    };
    caller.authorize(
        READERS,
        Scope {
            // An owner handed back (none) is no one's.
            agent: owner.as_deref().filter(|o| !o.is_empty()),
            branch: branch.as_deref(),
            city: city.as_deref(),
        },
    )?;
    let mut conn = pool.acquire().await?;
    Ok(Json(CaseContacts {
        sms: messages(&mut conn, case_id).await?,
        phone_tasks: tasks(&mut conn, case_id).await?,
        policy_no,
        case_id,
    }))
}

/// The case's messages with their receipts, oldest first. Each part of the union is
/// read through its own partial index (see migration 0010).
async fn messages(conn: &mut PgConnection, case_id: Uuid) -> Result<Vec<SmsView>, sqlx::Error> {
    let rows = sqlx::query(
        "WITH m AS (
             SELECT id, stage, template, state, attempts, vendor_code, created_at, sent_at, receipt_at
             FROM dispatch.sms_messages WHERE case_id = $1 AND state = 'queued'
             UNION ALL
             SELECT id, stage, template, state, attempts, vendor_code, created_at, sent_at, receipt_at
             FROM dispatch.sms_messages WHERE case_id = $1 AND state IN ('sending', 'unknown')
             UNION ALL
             SELECT id, stage, template, state, attempts, vendor_code, created_at, sent_at, receipt_at
             FROM dispatch.sms_messages
             WHERE case_id = $1 AND state NOT IN ('queued', 'sending', 'unknown')
         )
         SELECT m.*,
                (SELECT coalesce(jsonb_agg(jsonb_build_object(
                             'status', CASE WHEN r.success THEN 'delivered' ELSE 'failed' END,
                             'code', r.err_code, 'reported_at', r.report_time,
                             'received_at', r.received_at) ORDER BY r.received_at, r.id), '[]'::jsonb)
                 FROM dispatch.sms_receipts r WHERE r.message_id = m.id) AS receipts
         FROM m ORDER BY m.created_at, m.id",
    )
    .bind(case_id)
    .fetch_all(&mut *conn)
    .await?;
    rows.iter()
        .map(|r| {
            let receipts: sqlx::types::Json<Vec<ReceiptView>> = r.try_get("receipts")?;
            Ok(SmsView {
                id: r.try_get("id")?,
                stage: r.try_get("stage")?,
                template: r.try_get("template")?,
                state: r.try_get("state")?,
                attempts: r.try_get("attempts")?,
                vendor_code: r.try_get("vendor_code")?,
                created_at: r.try_get("created_at")?,
                sent_at: r.try_get("sent_at")?,
                receipt_at: r.try_get("receipt_at")?,
                receipts: receipts.0,
            })
        })
        .collect()
}

/// The case's phone tasks, oldest first.
async fn tasks(conn: &mut PgConnection, case_id: Uuid) -> Result<Vec<PhoneTaskView>, sqlx::Error> {
    let rows = sqlx::query(
        "SELECT id, queue, stage, state, outcome, leases, created_at, completed_at
         FROM dispatch.phone_tasks WHERE case_id = $1 ORDER BY created_at, id",
    )
    .bind(case_id)
    .fetch_all(&mut *conn)
    .await?;
    rows.iter()
        .map(|r| {
            Ok(PhoneTaskView {
                id: r.try_get("id")?,
                queue: r.try_get("queue")?,
                stage: r.try_get("stage")?,
                state: r.try_get("state")?,
                outcome: r.try_get("outcome")?,
                leases: r.try_get("leases")?,
                created_at: r.try_get("created_at")?,
                completed_at: r.try_get("completed_at")?,
            })
        })
        .collect()
}

/// Keeps a case's policy number, branch and city as lists opened it (a later opening
/// changes nothing) or, `changed`, as it changed them (an empty branch or city is no
/// change).
pub(crate) async fn keep_scope(
    tx: &mut PgConnection,
    case_id: Uuid,
    policy_no: &str,
    [branch, city]: [&str; 2],
    at_ms: i64,
    changed: bool,
) -> Result<(), sqlx::Error> {
    let at = DateTime::<Utc>::from_timestamp_millis(at_ms).filter(|_| at_ms > 0);
    let on_conflict = if changed {
        "DO UPDATE SET branch_code = coalesce(excluded.branch_code, dispatch.case_scopes.branch_code),
                       city_code = coalesce(excluded.city_code, dispatch.case_scopes.city_code)"
    } else {
        "DO NOTHING"
    };
    let sql = format!(
        "INSERT INTO dispatch.case_scopes (case_id, policy_no, branch_code, city_code, opened_at)
         VALUES ($1, $2, nullif($3, ''), nullif($4, ''), coalesce($5, now()))
         ON CONFLICT (case_id) {on_conflict}"
    );
    sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(case_id)
        .bind(policy_no)
        .bind(branch.trim())
        .bind(city.trim())
        .bind(at)
        .execute(&mut *tx)
        .await?;
    Ok(())
}
