//! The monthly analysis of the review (DOMAIN.md, "The review runs on a rhythm"): for
//! the cases expiring in a month, the renewal rate against target by branch, customer
//! category and channel, why renewals were lost, and what the lapse rescue won back.
//! `GET /v1/reports/monthly-analysis` answers it as JSON or CSV; on the lists issue day
//! the daily run issues each city's analysis of the month before, keeps it in
//! `lists.reviews` and publishes it (`lists.review.issued`).

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use chrono::{DateTime, Datelike, Months, NaiveDate, Utc};
use renewal_contract::lists::ReviewIssued;
use renewal_contract::subject;
use renewal_platform::{Caller, Outbox};
use serde::{Deserialize, Serialize};
use sqlx::{PgConnection, PgPool};
use std::collections::BTreeMap;
use tracing::Instrument;

use crate::kpis::{self, KpiError, ReportQuery, Tally};

/// What the lapse rescue won back among the month's cases.
#[derive(Debug, Serialize, PartialEq)]
pub struct LapseRescue {
    /// Cases that lapsed (rescued or not).
    pub lapsed: i64,
    pub rescued: i64,
    pub rescue_rate: Option<f64>,
}

#[derive(Debug, Serialize)]
pub struct MonthlyAnalysis {
    pub month: String,
    pub from: NaiveDate,
    pub to: NaiveDate,
    pub filters: BTreeMap<&'static str, String>,
    pub by_branch: Vec<Tally>,
    pub by_category: Vec<Tally>,
    pub by_channel: Vec<Tally>,
    pub total: Tally,
    /// Why the month's lost cases were lost, by reason.
    pub loss_reasons: BTreeMap<String, i64>,
    pub lapse_rescue: LapseRescue,
}

/// The first and last day of a `YYYY-MM` month.
pub fn month_bounds(month: &str) -> Option<(NaiveDate, NaiveDate)> {
    if month.len() != 7 {
        return None;
    }
    let first = NaiveDate::parse_from_str(&format!("{month}-01"), "%Y-%m-%d").ok()?;
    let last = first.checked_add_months(Months::new(1))?.pred_opt()?;
    Some((first, last))
}

/// The analysis of the cases expiring in `month` through the filters (`city`, `branch`).
pub async fn analyse(
    conn: &mut PgConnection,
    month: &str,
    filters: BTreeMap<&'static str, String>,
) -> Result<Option<MonthlyAnalysis>, sqlx::Error> {
    let Some((from, to)) = month_bounds(month) else {
        return Ok(None);
    };
    let mut query = ReportQuery {
        from,
        to,
        group_by: "branch",
        csv: false,
        filters,
    };
    let (by_branch, total) = kpis::tallies(conn, &query).await?;
    query.group_by = "category";
    let (by_category, _) = kpis::tallies(conn, &query).await?;
    query.group_by = "channel";
    let (by_channel, _) = kpis::tallies(conn, &query).await?;
    let lapsed = total.lapsed + total.rescued;
    Ok(Some(MonthlyAnalysis {
        month: month.to_owned(),
        from,
        to,
        filters: query.filters,
        by_branch,
        by_category,
        by_channel,
        loss_reasons: total.lost_reasons.clone(),
        lapse_rescue: LapseRescue {
            lapsed,
            rescued: total.rescued,
            rescue_rate: (lapsed > 0)
                .then(|| (total.rescued as f64 / lapsed as f64 * 10_000.0).round() / 10_000.0),
        },
        total,
    }))
}

/// The analysis as CSV: one line per dimension and group, the total, then one line per
/// loss reason.
pub fn render_csv(a: &MonthlyAnalysis) -> String {
    let mut out = format!("dimension,group,{}\r\n", kpis::CSV_COLUMNS);
    let dimensions = [
        ("branch", &a.by_branch),
        ("category", &a.by_category),
        ("channel", &a.by_channel),
    ];
    for (dimension, groups) in dimensions {
        for t in groups {
            let key = kpis::csv_cell(t.key.as_deref().unwrap_or(""));
            out.push_str(&format!("{dimension},{key},{}\r\n", t.csv_cells()));
        }
    }
    out.push_str(&format!("total,total,{}\r\n", a.total.csv_cells()));
    out.push_str("\r\nloss_reason,cases\r\n");
    for (reason, n) in &a.loss_reasons {
        out.push_str(&format!("{reason},{n}\r\n"));
    }
    out
}

#[derive(Debug, Default, Deserialize)]
struct RawQuery {
    month: Option<String>,
    city: Option<String>,
    branch: Option<String>,
    format: Option<String>,
}

#[derive(Clone)]
struct ReviewState {
    pool: PgPool,
}

pub fn routes(pool: PgPool) -> renewal_platform::http::Routes {
    renewal_platform::http::Routes::new()
        .route("/v1/reports/monthly-analysis", get(monthly_analysis))
        .finish(|router| router.with_state(ReviewState { pool }))
}

/// The monthly analysis of the cases expiring in `month` (the same readers and scopes as
/// the renewal-rate report).
#[utoipa::path(get, path = "/v1/reports/monthly-analysis", tag = "reports",
    params(("month" = String, Query, description = "YYYY-MM: the month the cases expire in"),
           ("city" = Option<String>, Query), ("branch" = Option<String>, Query),
           ("format" = Option<String>, Query, description = "json or csv")),
    responses((status = 200, body = serde_json::Value, description = "Rate against target by branch, category and channel, loss reasons, lapse rescue (or CSV)"),
              (status = 400, content_type = "application/problem+json", body = renewal_platform::openapi::ProblemDocument), renewal_platform::openapi::Refusals))]
async fn monthly_analysis(
    State(state): State<ReviewState>,
    caller: Caller,
    headers: HeaderMap,
    raw: Result<Query<RawQuery>, QueryRejection>,
) -> Result<Response, KpiError> {
    let Query(mut raw) = raw.map_err(|e| KpiError::InvalidQuery(e.body_text()))?;
    kpis::scope_filters(&caller, &mut raw.city, &mut raw.branch)?;
    let month = raw.month.unwrap_or_default();
    let csv = match raw.format.as_deref() {
        None | Some("") => headers
            .get(header::ACCEPT)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|a| a.to_ascii_lowercase().contains("text/csv")),
        Some("json") => false,
        Some("csv") => true,
        Some(other) => {
            return Err(KpiError::InvalidQuery(format!(
                "format: expected json or csv, got {other:?}"
            )));
        }
    };
    let filters = [("city", raw.city), ("branch", raw.branch)]
        .into_iter()
        .filter_map(|(name, v)| Some((name, v.filter(|v| !v.is_empty())?)))
        .collect();
    let mut conn = state.pool.acquire().await?;
    let Some(analysis) = analyse(&mut conn, &month, filters).await? else {
        return Err(KpiError::InvalidQuery(format!(
            "month: expected YYYY-MM, got {month:?}"
        )));
    };
    if csv {
        let content_type = [(header::CONTENT_TYPE, "text/csv; charset=utf-8")];
        return Ok((content_type, render_csv(&analysis)).into_response());
    }
    Ok(Json(analysis).into_response())
}

/// Issues the analysis of the month before `today` for every city of the zone with cases
/// expiring in it (once per city and month), keeps it and publishes it. Returns how many.
pub async fn issue_monthly(
    tx: &mut PgConnection,
    outbox: &Outbox,
    zone: chrono_tz::Tz,
    today: NaiveDate,
    now: DateTime<Utc>,
) -> Result<usize, sqlx::Error> {
    let Some(previous) = today.with_day(1).and_then(|d| d.pred_opt()) else {
        return Ok(0);
    };
    let month = format!("{:04}-{:02}", previous.year(), previous.month());
    let first = previous.with_day(1).unwrap_or(previous);
    let cities: Vec<String> = sqlx::query_scalar(
        "SELECT DISTINCT c.city_code FROM lists.cases c
         WHERE c.time_zone = $1 AND c.expiry_date BETWEEN $2 AND $3
           AND NOT EXISTS (SELECT 1 FROM lists.reviews r
                           WHERE r.kind = 'monthly' AND r.period = $4 AND r.city_code = c.city_code)
         ORDER BY 1",
    )
    .bind(zone.name())
    .bind(first)
    .bind(previous)
    .bind(&month)
    .fetch_all(&mut *tx)
    .await?;
    for city in &cities {
        let filters = BTreeMap::from([("city", city.clone())]);
        let Some(analysis) = analyse(tx, &month, filters).await? else {
            continue;
        };
        let body = serde_json::to_value(&analysis).unwrap_or_default();
        let review_id = uuid::Uuid::now_v7();
        sqlx::query(
            "INSERT INTO lists.reviews (review_id, kind, period, city_code, issued_at, body)
             VALUES ($1, 'monthly', $2, $3, $4, $5)",
        )
        .bind(review_id)
        .bind(&month)
        .bind(city)
        .bind(now)
        .bind(&body)
        .execute(&mut *tx)
        .await?;
        let event = ReviewIssued {
            review_id: review_id.to_string(),
            kind: "monthly".into(),
            period: month.clone(),
            city_code: city.clone(),
            issued_at_ms: now.timestamp_millis(),
            body_json: body.to_string(),
        };
        outbox
            .enqueue(tx, subject::LISTS_REVIEW_ISSUED, &event)
            .instrument(tracing::info_span!(parent: None, "review_issued"))
            .await?;
    }
    Ok(cities.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn months_have_their_bounds() {
        let d = |s: &str| NaiveDate::parse_from_str(s, "%Y-%m-%d").expect("date");
        assert_eq!(
            month_bounds("2027-02"),
            Some((d("2027-02-01"), d("2027-02-28")))
        );
        assert_eq!(
            month_bounds("2026-12"),
            Some((d("2026-12-01"), d("2026-12-31")))
        );
        for bad in ["2027-13", "2027-2", "", "2027-02-01", "feb"] {
            assert_eq!(month_bounds(bad), None, "{bad}");
        }
    }
}
