//! `GET /v1/cases/{policy_no}`: the current owner, the credited (originating) agent,
//! where the case is worked and its whole history; `GET /v1/reports/attribution`:
//! renewals credited to the agents who sold the policies, whoever renewed them.

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::routing::get;
use chrono::{DateTime, NaiveDate, Utc};
use serde::{Deserialize, Serialize};
use sqlx::{PgPool, Row};
use uuid::Uuid;

use renewal_platform::Caller;
use renewal_platform::paging::{Page, PageQuery};

use crate::access::{self, CaseScope};
use crate::claims::ClaimApi;
use crate::refusals::Refusal;

pub fn routes(api: ClaimApi) -> renewal_platform::http::Routes {
    renewal_platform::http::Routes::new()
        .route(
            "/v1/cases/{policy_no}",
            get(show).post(crate::second_assignment::owner_answers),
        )
        .route("/v1/reports/attribution", get(attribution))
        .route(
            "/v1/branches/{branch_code}/alerts",
            get(crate::supervision::branch_alerts),
        )
        .finish(|router| router.with_state(api))
}

/// A case's owner, credit, routing and history.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct CaseView {
    pub case_id: Uuid,
    pub policy_no: String,
    pub city_code: String,
    pub branch_code: String,
    pub state: String,
    pub phase: String,
    pub phase_deadline: Option<DateTime<Utc>>,
    pub owner_agent: Option<String>,
    pub owner_branch: Option<String>,
    /// Who the renewal is credited to: the originating agent where they left the
    /// customer's real data at sale, else the owner who renews it.
    pub credited_agent: String,
    /// The agent who sold the policy.
    pub originating_agent: String,
    pub originator_keeps_credit: bool,
    pub expiry_date: NaiveDate,
    pub effective_expiry_date: Option<NaiveDate>,
    pub outcome: Option<String>,
    pub renewed_by: Option<String>,
    pub history: Vec<OwnerChange>,
    pub routing: Vec<RoutingStep>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct OwnerChange {
    pub owner_agent: Option<String>,
    pub previous_owner: Option<String>,
    pub reason: String,
    pub assigned_by: String,
    pub assigned_at: DateTime<Utc>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct RoutingStep {
    pub step: String,
    pub reason: String,
    pub routed_by: String,
    pub routed_at: DateTime<Utc>,
    pub deadline: Option<DateTime<Utc>>,
}

#[utoipa::path(get, path = "/v1/cases/{policy_no}", tag = "cases",
    params(("policy_no" = String, Path)),
    responses((status = 200, body = CaseView), (status = 404, content_type = "application/problem+json", body = renewal_platform::openapi::ProblemDocument), renewal_platform::openapi::Refusals))]
async fn show(
    State(api): State<ClaimApi>,
    caller: Caller,
    Path(policy_no): Path<String>,
) -> Result<Json<CaseView>, Refusal> {
    let mut conn = api.pool.acquire().await?;
    let scope = CaseScope::of(&mut conn, &policy_no).await?;
    drop(conn);
    match scope {
        Some(scope) => scope.authorize(&caller, access::READ_CASE)?,
        None => caller.require(access::READ_CASE)?,
    };
    load(&api.pool, &policy_no)
        .await?
        .map(Json)
        .ok_or(Refusal::UnknownCase(policy_no))
}

pub async fn load(pool: &PgPool, policy_no: &str) -> Result<Option<CaseView>, sqlx::Error> {
    let Some(case) = sqlx::query("SELECT * FROM assignment.cases WHERE policy_no = $1")
        .bind(policy_no)
        .fetch_optional(pool)
        .await?
    else {
        return Ok(None);
    };
    let case_id: Uuid = case.try_get("case_id")?;
    let history = sqlx::query(
        "SELECT owner_agent, previous_owner, reason, assigned_by, assigned_at FROM assignment.owner_history
         WHERE case_id = $1 ORDER BY id",
    )
    .bind(case_id)
    .fetch_all(pool)
    .await?
    .iter()
    .map(|r| {
        Ok(OwnerChange {
            owner_agent: r.try_get("owner_agent")?,
            previous_owner: r.try_get("previous_owner")?,
            reason: r.try_get("reason")?,
            assigned_by: r.try_get("assigned_by")?,
            assigned_at: r.try_get("assigned_at")?,
        })
    })
    .collect::<Result<Vec<_>, sqlx::Error>>()?;
    let routing = sqlx::query(
        "SELECT step, reason, routed_by, routed_at, deadline FROM assignment.routing_history
         WHERE case_id = $1 ORDER BY id",
    )
    .bind(case_id)
    .fetch_all(pool)
    .await?
    .iter()
    .map(|r| {
        Ok(RoutingStep {
            step: r.try_get("step")?,
            reason: r.try_get("reason")?,
            routed_by: r.try_get("routed_by")?,
            routed_at: r.try_get("routed_at")?,
            deadline: r.try_get("deadline")?,
        })
    })
    .collect::<Result<Vec<_>, sqlx::Error>>()?;
    let originating_agent: String = case.try_get("credited_agent")?;
    let keeps: bool = case.try_get("originator_keeps_credit")?;
    let owner_agent: Option<String> = case.try_get("owner_agent")?;
    let renewed_by: Option<String> = case.try_get("renewed_by")?;
    let credited_agent = match (keeps, &renewed_by, &owner_agent) {
        (false, Some(by), _) | (false, None, Some(by)) => by.clone(),
        _ => originating_agent.clone(),
    };
    Ok(Some(CaseView {
        case_id,
        policy_no: case.try_get("policy_no")?,
        city_code: case.try_get("city_code")?,
        branch_code: case.try_get("branch_code")?,
        state: case.try_get("state")?,
        phase: case.try_get("phase")?,
        phase_deadline: case.try_get("phase_due_at")?,
        owner_agent,
        owner_branch: case.try_get("owner_branch")?,
        credited_agent,
        originating_agent,
        originator_keeps_credit: keeps,
        expiry_date: case.try_get("expiry_date")?,
        effective_expiry_date: case.try_get("effective_expiry_date")?,
        outcome: case.try_get("outcome")?,
        renewed_by,
        history,
        routing,
    }))
}

#[derive(Debug, Deserialize)]
struct AttributionQuery {
    city: Option<String>,
    #[serde(flatten)]
    page: PageQuery,
}

#[derive(Debug, Serialize, Deserialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct Credit {
    pub credited_agent: String,
    pub cases: i64,
    pub renewed: i64,
    /// Renewals of this agent's policies worked by someone else: still credited here.
    pub renewed_by_others: i64,
    pub lapsed: i64,
    pub open: i64,
}

/// `GET /v1/reports/attribution[?city=]`: per credited agent: the originating agent
/// where they left the customer's real data at sale (for life, whoever renews it), else
/// the owner who renewed it (the current owner while it is worked). A rescue counts as a
/// renewal.
#[utoipa::path(get, path = "/v1/reports/attribution", tag = "reports",
    params(("city" = Option<String>, Query), PageQuery),
    responses((status = 200, body = Page<Credit>), renewal_platform::openapi::Refusals))]
async fn attribution(
    State(api): State<ClaimApi>,
    caller: Caller,
    Query(mut q): Query<AttributionQuery>,
) -> Result<Json<Page<Credit>>, Refusal> {
    // A city admin sees their own city; naming another is refused.
    if !caller.has(renewal_platform::Role::Analyst) && !caller.has(renewal_platform::Role::HqAdmin)
    {
        let own = caller.city_code.clone().unwrap_or_default();
        let city = q.city.get_or_insert(own).clone();
        access::for_city(&caller, access::REPORTS, &city)?;
    }
    caller.require(access::REPORTS)?;
    let rows = sqlx::query(
        "WITH credited AS (
             SELECT c.*, CASE WHEN originator_keeps_credit THEN credited_agent
                              ELSE COALESCE(renewed_by, owner_agent, credited_agent) END AS credit
             FROM assignment.cases c WHERE (city_code = $1 OR $1 IS NULL)
         )
         SELECT credit AS credited_agent, count(*) AS cases,
                count(*) FILTER (WHERE outcome IN ('renewed', 'rescued')) AS renewed,
                count(*) FILTER (WHERE outcome IN ('renewed', 'rescued') AND renewed_by IS DISTINCT FROM credit) AS renewed_by_others,
                count(*) FILTER (WHERE outcome IN ('lapsed', 'insured_elsewhere', 'vehicle_sold')) AS lapsed,
                count(*) FILTER (WHERE state = 'open' AND outcome IS NULL) AS open
         FROM credited WHERE credit > $2
         GROUP BY credit ORDER BY credit LIMIT $3",
    )
    .bind(&q.city)
    .bind(q.page.after::<String>()?.unwrap_or_default())
    .bind(q.page.size() + 1)
    .fetch_all(&api.pool)
    .await?;
    let credits = rows
        .iter()
        .map(|r| {
            Ok(Credit {
                credited_agent: r.try_get("credited_agent")?,
                cases: r.try_get("cases")?,
                renewed: r.try_get("renewed")?,
                renewed_by_others: r.try_get("renewed_by_others")?,
                lapsed: r.try_get("lapsed")?,
                open: r.try_get("open")?,
            })
        })
        .collect::<Result<Vec<_>, sqlx::Error>>()?;
    Ok(Json(Page::of(credits, q.page.size(), |c| {
        c.credited_agent.clone()
    })))
}
