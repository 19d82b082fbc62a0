//! `GET /v1/reports/ownership`: two steps of the season's funnel that only assignment
//! knows, for the cases expiring in a range (not cancelled, as the lists service's
//! report counts them): how many have an owner, and how many had a call completed on
//! them (any outcome: the customer was called and the call recorded).
//! Scoped as the lists service's renewal-rate report (`Caller::scope_report`): analysts
//! and HQ any city or branch, a city's admin their city, a branch's people their branch.
//! Counts only; no customer data.

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use chrono::{Days, NaiveDate};
use renewal_platform::Caller;
use serde::{Deserialize, Serialize};
use sqlx::Row;

use crate::progress::ProgressApi;
use crate::refusals::Refusal;

#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct OwnershipQuery {
    /// YYYY-MM-DD, the first expiry counted (default: 364 days before `to`).
    from: Option<String>,
    /// YYYY-MM-DD, the last expiry counted (default: today).
    to: Option<String>,
    /// Only this city's cases (a city's admin: their own, set for them).
    city: Option<String>,
    /// Only this branch's cases (a branch's people: their own, set for them).
    branch: Option<String>,
}

/// The cases expiring in the range, and how many of them are owned and were called.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Ownership {
    pub from: NaiveDate,
    pub to: NaiveDate,
    pub city_code: Option<String>,
    pub branch_code: Option<String>,
    /// Cases expiring in the range.
    pub cases: i64,
    /// Of them, those with an owner (an agent, HQ's team or the city company's).
    pub owned: i64,
    /// Of them, those with at least one call completed (any outcome).
    pub contacted: i64,
}

fn date(name: &str, raw: Option<&str>) -> Result<Option<NaiveDate>, Refusal> {
    match raw.filter(|v| !v.is_empty()) {
        None => Ok(None),
        Some(v) => NaiveDate::parse_from_str(v, "%Y-%m-%d")
            .map(Some)
            .map_err(|_| Refusal::Invalid(format!("{name}: expected YYYY-MM-DD, got {v:?}"))),
    }
}

/// `GET /v1/reports/ownership?from=&to=&city=&branch=`.
#[utoipa::path(get, path = "/v1/reports/ownership", tag = "reports", params(OwnershipQuery),
    responses((status = 200, body = Ownership),
              (status = 400, content_type = "application/problem+json", body = renewal_platform::openapi::ProblemDocument),
              renewal_platform::openapi::Refusals))]
pub(crate) async fn ownership(
    State(api): State<ProgressApi>,
    caller: Caller,
    query: Result<Query<OwnershipQuery>, QueryRejection>,
) -> Result<Json<Ownership>, Refusal> {
    let Query(mut q) = query.map_err(|e| Refusal::Invalid(e.body_text()))?;
    q.city = q.city.filter(|c| !c.is_empty());
    q.branch = q.branch.filter(|b| !b.is_empty());
    caller.scope_report(&mut q.city, &mut q.branch)?;
    let today = renewal_platform::local_date(api.clock.now(), api.time_zone);
    let to = date("to", q.to.as_deref())?.unwrap_or(today);
    let from = match date("from", q.from.as_deref())? {
        Some(from) => from,
        None => to
            .checked_sub_days(Days::new(364))
            .ok_or_else(|| Refusal::Invalid(format!("to: {to} is out of range")))?,
    };
    if from > to {
        return Err(Refusal::Invalid(format!("from: {from} is after to ({to})")));
    }
    let row = sqlx::query(
        "SELECT count(*) AS cases,
                count(*) FILTER (WHERE owner_agent IS NOT NULL) AS owned,
                count(*) FILTER (WHERE last_outcome_at IS NOT NULL) AS contacted
         FROM assignment.cases
         WHERE expiry_date BETWEEN $1 AND $2 AND outcome IS DISTINCT FROM 'cancelled'
           AND ($3::text IS NULL OR city_code = $3::text)
           AND ($4::text IS NULL OR branch_code = $4::text)",
    )
    .bind(from)
    .bind(to)
    .bind(q.city.as_deref())
    .bind(q.branch.as_deref())
    .fetch_one(&api.pool)
    .await?;
    Ok(Json(Ownership {
        from,
        to,
        cases: row.try_get("cases")?,
        owned: row.try_get("owned")?,
        contacted: row.try_get("contacted")?,
        city_code: q.city,
        branch_code: q.branch,
    }))
}
