//! `GET /v1/policies/{policy_no}`: a policy's status and its renewal case, with the
//! customer's personal data masked; `GET /v1/policies?mobile=...`: the policies of a
//! mobile number, found through its blind index (the table holds no plaintext).

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use chrono::{DateTime, NaiveDate, Utc};
use renewal_platform::pii::{PiiCipher, Place};
use renewal_platform::{Caller, Problem, Role, Scope};
use serde::Serialize;
use sqlx::{PgPool, Row};

#[derive(Clone)]
pub struct PolicyApi {
    pub pool: PgPool,
    pub pii: Arc<PiiCipher>,
    /// Lookups per caller: a person looks up a customer at a time, not the portfolio.
    pub lookups: renewal_platform::quotas::Quota,
}

impl PolicyApi {
    pub fn new(pool: PgPool, pii: Arc<PiiCipher>) -> PolicyApi {
        PolicyApi {
            pool,
            pii,
            lookups: renewal_platform::quotas::Quota::per_second("policy lookup", 10, 50),
        }
    }
}

pub fn routes(api: PolicyApi) -> renewal_platform::http::Routes {
    renewal_platform::http::Routes::new()
        .route("/v1/policies/{policy_no}", get(show))
        .route("/v1/policies", get(find_by_mobile))
        .finish(|router| router.with_state(api))
}

const SELECT: &str = "SELECT p.policy_no, p.status, p.city_code, p.branch_code, p.agent_code,
        p.end_date, p.mobile_enc, c.case_id, c.state, c.opened_at, c.closed_at, c.bucket,
        c.effective_expiry_date, c.holiday, i.list_id,
        q.quote_id, q.premium_fen AS quote_premium_fen, q.last_premium_fen, q.claim_free_years,
        q.ncd_level, q.compulsory_fen, q.commercial_fen, q.valid_until, q.promotion,
        q.discount_percent, q.discount_extra, q.issued_at AS quote_issued_at,
        c.policy_no AS case_policy_no,
        ARRAY(SELECT v.policy_no FROM lists.vehicle_policies v WHERE v.case_id = c.case_id
              ORDER BY v.policy_no) AS joined_policies
     FROM lists.policies p
          LEFT JOIN lists.vehicle_policies vp ON vp.policy_no = p.policy_no
          LEFT JOIN lists.cases c ON c.policy_no = p.policy_no OR c.case_id = vp.case_id
          LEFT JOIN lists.list_items i ON i.case_id = c.case_id
          LEFT JOIN lists.quotes q ON q.policy_no = p.policy_no";

#[derive(serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct MobileQuery {
    /// A mainland mobile, any common spelling (`13812345678`, `+86 138 1234 5678`).
    mobile: Option<String>,
}

/// Who may look a policy up (its mobile masked): its originating agent, its branch,
/// its city, HQ, and the call center.
const READERS: &[Role] = &[
    Role::Agent,
    Role::Supervisor,
    Role::BranchAdmin,
    Role::CityAdmin,
    Role::HqAdmin,
    Role::CallCenter,
];

/// `GET /v1/policies?mobile=`: the caller's policies of that mobile (others are left
/// out, not refused: the answer says nothing of policies out of scope).
#[utoipa::path(get, path = "/v1/policies", tag = "policies", params(MobileQuery),
    responses((status = 200, body = Found, description = "The caller's policies of that mobile"),
              (status = 400, content_type = "application/problem+json", body = renewal_platform::openapi::ProblemDocument), renewal_platform::openapi::Refusals,
              (status = 429, description = "Too many lookups", content_type = "application/problem+json", body = renewal_platform::openapi::ProblemDocument)))]
async fn find_by_mobile(
    State(api): State<PolicyApi>,
    caller: Caller,
    Query(query): Query<MobileQuery>,
) -> Result<Json<Found>, ViewError> {
    caller.require(READERS)?;
    api.lookups.take(&caller.subject)?;
    let mobile = query
        .mobile
        .ok_or_else(|| Problem::bad_request("mobile is required"))?;
    let e164 = crate::policy_checks::mobile_e164(&mobile)
        .map_err(|reason| Problem::bad_request(format!("mobile {reason}")))?;
    // Under every key of the keyring: rows sealed before a rotation finished match too.
    let indexes = api.pii.blind_indexes_bytes(&e164);
    let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
        "{SELECT} WHERE p.mobile_index = ANY($1) ORDER BY p.end_date, p.policy_no"
    )))
    .bind(&indexes)
    .fetch_all(&api.pool)
    .await?;
    let mut views = Vec::with_capacity(rows.len());
    for row in &rows {
        let view = read(row, &api.pii)?;
        if caller.authorize(READERS, view.scope()).is_ok() {
            views.push(view);
        }
    }
    Ok(Json(Found { policies: views }))
}

/// The policies of a mobile.
#[derive(Serialize, utoipa::ToSchema)]
struct Found {
    policies: Vec<PolicyView>,
}

#[derive(Debug, thiserror::Error)]
enum ViewError {
    #[error("{0}")]
    Refused(#[from] Problem),
    #[error("postgres: {0}")]
    Db(#[from] sqlx::Error),
    #[error("personal data cannot be opened: {0}")]
    Pii(#[from] renewal_platform::pii::PiiError),
}

impl IntoResponse for ViewError {
    fn into_response(self) -> Response {
        match self {
            ViewError::Refused(p) => p,
            ViewError::Db(e) => Problem::database(&e),
            other => Problem::internal(&other),
        }
        .into_response()
    }
}

/// A policy as staff see it: the mobile masked, no name or ID number.
#[derive(Serialize, utoipa::ToSchema)]
struct PolicyView {
    policy_no: String,
    status: String,
    city_code: String,
    branch_code: String,
    agent_code: String,
    end_date: NaiveDate,
    mobile_masked: String,
    case: Option<CaseView>,
    /// The current renewal quote, with any discount approved on it.
    quote: Option<QuoteView>,
}

/// A policy's renewal terms (money in fen).
#[derive(Serialize, utoipa::ToSchema)]
struct QuoteView {
    quote_id: String,
    /// What the customer is offered: the quote less the approved discount.
    premium_fen: i64,
    quoted_premium_fen: i64,
    last_premium_fen: i64,
    /// Against last year: negative when the renewal is cheaper.
    change_fen: i64,
    claim_free_years: i32,
    ncd_level: i32,
    compulsory_fen: i64,
    commercial_fen: i64,
    valid_until: NaiveDate,
    promotion: String,
    discount_percent: i32,
    discount_extra: String,
    issued_at: DateTime<Utc>,
}

#[derive(Serialize, utoipa::ToSchema)]
#[schema(as = PolicyCase)]
struct CaseView {
    case_id: uuid::Uuid,
    state: String,
    opened_at: DateTime<Utc>,
    closed_at: Option<DateTime<Utc>>,
    bucket: Option<&'static str>,
    effective_expiry_date: NaiveDate,
    holiday: Option<String>,
    list_id: Option<uuid::Uuid>,
    /// The vehicle's policies this case renews (its lead first): a vehicle's
    /// compulsory and commercial policies are one case.
    policies: Vec<String>,
}

#[utoipa::path(get, path = "/v1/policies/{policy_no}", tag = "policies",
    params(("policy_no" = String, Path)),
    responses((status = 200, body = PolicyView), (status = 404, content_type = "application/problem+json", body = renewal_platform::openapi::ProblemDocument),
              renewal_platform::openapi::Refusals, (status = 429, content_type = "application/problem+json", body = renewal_platform::openapi::ProblemDocument)))]
async fn show(
    State(api): State<PolicyApi>,
    caller: Caller,
    Path(policy_no): Path<String>,
) -> Result<Json<PolicyView>, ViewError> {
    caller.require(READERS)?;
    api.lookups.take(&caller.subject)?;
    let row = sqlx::query(sqlx::AssertSqlSafe(format!(
        "{SELECT} WHERE p.policy_no = $1"
    )))
    .bind(&policy_no)
    .fetch_optional(&api.pool)
    .await?
    .ok_or_else(|| {
        Problem::new(
            StatusCode::NOT_FOUND,
            "unknown_policy",
            "no policy with that number",
        )
    })?;
    let view = read(&row, &api.pii)?;
    caller.authorize(READERS, view.scope())?;
    Ok(Json(view))
}

impl PolicyView {
    fn scope(&self) -> Scope<'_> {
        Scope {
            agent: Some(&self.agent_code),
            branch: Some(&self.branch_code),
            city: Some(&self.city_code),
        }
    }
}

fn read(row: &sqlx::postgres::PgRow, pii: &PiiCipher) -> Result<PolicyView, ViewError> {
    let case_id: Option<uuid::Uuid> = row.try_get("case_id")?;
    let case = match case_id {
        Some(case_id) => Some(CaseView {
            case_id,
            state: row.try_get("state")?,
            opened_at: row.try_get("opened_at")?,
            closed_at: row.try_get("closed_at")?,
            bucket: row.try_get::<Option<i16>, _>("bucket")?.map(bucket_label),
            effective_expiry_date: row.try_get("effective_expiry_date")?,
            holiday: row.try_get("holiday")?,
            list_id: row.try_get("list_id")?,
            policies: std::iter::once(row.try_get::<String, _>("case_policy_no")?)
                .chain(row.try_get::<Vec<String>, _>("joined_policies")?)
                .collect(),
        }),
        None => None,
    };
    let quote = match row.try_get::<Option<String>, _>("quote_id")? {
        Some(quote_id) => Some(quote_of(row, quote_id)?),
        None => None,
    };
    let policy_no: String = row.try_get("policy_no")?;
    let place = Place::new(crate::portfolio::POLICIES, "mobile_enc", &policy_no);
    let sealed: Vec<u8> = row.try_get("mobile_enc")?;
    // An erased policy keeps no mobile: shown as "" (erased), not as an error.
    let mobile = if sealed.is_empty() {
        String::new()
    } else {
        pii.open(&sealed, place)?
    };
    Ok(PolicyView {
        policy_no,
        status: row.try_get("status")?,
        city_code: row.try_get("city_code")?,
        branch_code: row.try_get("branch_code")?,
        agent_code: row.try_get("agent_code")?,
        end_date: row.try_get("end_date")?,
        mobile_masked: renewal_platform::pii::mask_mobile(&mobile),
        case,
        quote,
    })
}

fn quote_of(row: &sqlx::postgres::PgRow, quote_id: String) -> Result<QuoteView, sqlx::Error> {
    let quoted: i64 = row.try_get("quote_premium_fen")?;
    let commercial: i64 = row.try_get("commercial_fen")?;
    let discount: i32 = row.try_get("discount_percent")?;
    let last: i64 = row.try_get("last_premium_fen")?;
    let premium = crate::quotes::offered_fen(quoted, commercial, discount);
    Ok(QuoteView {
        quote_id,
        premium_fen: premium,
        quoted_premium_fen: quoted,
        last_premium_fen: last,
        change_fen: premium - last,
        claim_free_years: row.try_get("claim_free_years")?,
        ncd_level: row.try_get("ncd_level")?,
        compulsory_fen: row.try_get("compulsory_fen")?,
        commercial_fen: commercial,
        valid_until: row.try_get("valid_until")?,
        promotion: row.try_get("promotion")?,
        discount_percent: discount,
        discount_extra: row.try_get("discount_extra")?,
        issued_at: row.try_get("quote_issued_at")?,
    })
}

fn bucket_label(bucket: i16) -> &'static str {
    match bucket {
        30 => "0-30",
        60 => "31-60",
        _ => "61-90",
    }
}
