//! `GET /v1/reports/renewal-rate`: the review's renewal rate (DOMAIN.md, step 8) by
//! customer category, city, branch, originating agent, sales channel or expiry month,
//! against the six category targets, with the reasons renewals were lost. JSON by
//! default, CSV on request. The monthly analysis (`crate::reviews`) is built from the
//! same tallies.

use std::collections::BTreeMap;

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use chrono::{Days, NaiveDate};
use serde::{Deserialize, Serialize};
use sqlx::postgres::PgRow;
use sqlx::{PgPool, Row};

use renewal_platform::{Caller, Problem};

use crate::categories;

#[derive(Clone)]
struct KpiState {
    pool: PgPool,
    clock: renewal_platform::Clock,
    time_zone: chrono_tz::Tz,
}

pub fn routes(
    pool: PgPool,
    clock: renewal_platform::Clock,
    time_zone: chrono_tz::Tz,
) -> renewal_platform::http::Routes {
    let state = KpiState {
        pool,
        clock,
        time_zone,
    };
    renewal_platform::http::Routes::new()
        .route("/v1/reports/renewal-rate", get(renewal_rate))
        .finish(|router| router.with_state(state))
}

/// Why a report was not given (the renewal-rate report and the monthly analysis).
#[derive(Debug, thiserror::Error)]
pub(crate) enum KpiError {
    #[error("invalid query: {0}")]
    InvalidQuery(String),
    #[error("{0}")]
    Refused(#[from] Problem),
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
}

impl IntoResponse for KpiError {
    fn into_response(self) -> Response {
        match self {
            KpiError::InvalidQuery(detail) => {
                Problem::new(StatusCode::BAD_REQUEST, "invalid_query", detail)
            }
            KpiError::Refused(p) => p,
            // The error names the failing statement, never a customer's data.
            KpiError::Database(e) => Problem::database(&e),
        }
        .into_response()
    }
}

#[derive(Debug, Default, Deserialize)]
struct RawQuery {
    city: Option<String>,
    branch: Option<String>,
    agent: Option<String>,
    category: Option<String>,
    channel: Option<String>,
    from: Option<String>,
    to: Option<String>,
    group_by: Option<String>,
    format: Option<String>,
}

/// The groupings, the first the default; the SQL maps each name to its column.
pub(crate) const GROUP_BYS: [&str; 7] = [
    "category", "city", "branch", "agent", "channel", "month", "week",
];

#[derive(Debug, PartialEq)]
pub struct ReportQuery {
    pub from: NaiveDate,
    pub to: NaiveDate,
    pub group_by: &'static str,
    pub csv: bool,
    /// Only the filters given, by parameter name.
    pub filters: BTreeMap<&'static str, String>,
}

fn invalid(detail: String) -> KpiError {
    KpiError::InvalidQuery(detail)
}

/// An empty parameter (`?city=`) counts as not given.
fn given(value: Option<String>) -> Option<String> {
    value.filter(|v| !v.is_empty())
}

fn parse_date(name: &str, value: Option<String>) -> Result<Option<NaiveDate>, KpiError> {
    let Some(value) = given(value) else {
        return Ok(None);
    };
    match NaiveDate::parse_from_str(&value, "%Y-%m-%d") {
        Ok(date) if value.len() == 10 => Ok(Some(date)),
        _ => Err(invalid(format!(
            "{name}: expected a date as YYYY-MM-DD, got {value:?}"
        ))),
    }
}

/// Validates the parameters; `to` defaults to `today`, `from` to 364 days before `to`.
fn parse_query(
    raw: RawQuery,
    accept: Option<&str>,
    today: NaiveDate,
) -> Result<ReportQuery, KpiError> {
    let to = parse_date("to", raw.to)?.unwrap_or(today);
    let from = match parse_date("from", raw.from)? {
        Some(from) => from,
        None => to
            .checked_sub_days(Days::new(364))
            .ok_or_else(|| invalid(format!("to: {to} is out of range")))?,
    };
    if from > to {
        return Err(invalid(format!("from: {from} is after to ({to})")));
    }
    let group_by = match given(raw.group_by) {
        None => GROUP_BYS[0],
        Some(g) => GROUP_BYS
            .into_iter()
            .find(|known| *known == g)
            .ok_or_else(|| {
                invalid(format!(
                    "group_by: expected one of {}, got {g:?}",
                    GROUP_BYS.join(", ")
                ))
            })?,
    };
    let csv = match given(raw.format).as_deref() {
        None => accept.is_some_and(|a| a.to_ascii_lowercase().contains("text/csv")),
        Some("json") => false,
        Some("csv") => true,
        Some(other) => {
            return Err(invalid(format!(
                "format: expected json or csv, got {other:?}"
            )));
        }
    };
    let filters = [
        ("city", raw.city),
        ("branch", raw.branch),
        ("agent", raw.agent),
        ("category", raw.category),
        ("channel", raw.channel),
    ];
    let filters = filters
        .into_iter()
        .filter_map(|(name, v)| Some((name, given(v)?)))
        .collect();
    Ok(ReportQuery {
        from,
        to,
        group_by,
        csv,
        filters,
    })
}

/// One group's figures (the total's have no key), and what its target is weighted from.
#[derive(Debug, Default, Clone, PartialEq, Serialize)]
pub struct Tally {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    pub due: i64,
    pub renewed: i64,
    pub rescued: i64,
    pub lapsed: i64,
    pub open: i64,
    /// Renewed on time or rescued after lapsing, per due case.
    pub renewal_rate: Option<f64>,
    /// The due-weighted average of the category targets; none without a category that
    /// has one.
    pub target_rate: Option<f64>,
    pub gap: Option<f64>,
    pub lost_reasons: BTreeMap<String, i64>,
    /// Σ target percent × due, over the due cases of a known category.
    #[serde(skip)]
    target_points: i64,
    /// The due cases of a known category.
    #[serde(skip)]
    target_due: i64,
}

fn round4(x: f64) -> f64 {
    (x * 10_000.0).round() / 10_000.0 + 0.0 // + 0.0: no -0
}

fn ratio(numerator: i64, denominator: i64) -> Option<f64> {
    (denominator > 0).then(|| round4(numerator as f64 / denominator as f64))
}

impl Tally {
    /// Adds one category's `[due, renewed, rescued, lapsed, open]`.
    fn add(&mut self, category: &str, [due, renewed, rescued, lapsed, open]: [i64; 5]) {
        self.due += due;
        self.renewed += renewed;
        self.rescued += rescued;
        self.lapsed += lapsed;
        self.open += open;
        if let Some(target) = categories::target_percent(category) {
            self.target_points += i64::from(target) * due;
            self.target_due += due;
        }
        self.renewal_rate = ratio(self.renewed + self.rescued, self.due);
        self.target_rate = ratio(self.target_points, self.target_due * 100);
        let rates = self.renewal_rate.zip(self.target_rate);
        self.gap = rates.map(|(rate, target)| round4(rate - target));
    }

    fn add_lost(&mut self, reason: &str, n: i64) {
        *self.lost_reasons.entry(reason.to_owned()).or_default() += n;
    }
}

/// The report's cases: expiring in the range, not cancelled, through the filters, keyed
/// by the column `$7` names (a CASE, so that the SQL stays static).
macro_rules! cases {
    () => {
        "CASE $7::text WHEN 'city' THEN c.city_code WHEN 'branch' THEN c.branch_code
                WHEN 'agent' THEN c.agent_code WHEN 'channel' THEN p.channel
                WHEN 'month' THEN to_char(c.expiry_date, 'YYYY-MM')
                WHEN 'week' THEN to_char(c.expiry_date, 'IYYY-\"W\"IW') ELSE c.category END AS key
         FROM lists.cases c JOIN lists.policies p ON p.policy_no = c.policy_no
              LEFT JOIN lists.lost_reasons l ON l.policy_no = c.policy_no
         WHERE c.expiry_date BETWEEN $1 AND $2 AND c.state <> 'cancelled'
           AND ($3::text IS NULL OR c.city_code = $3::text)
           AND ($4::text IS NULL OR c.branch_code = $4::text)
           AND ($5::text IS NULL OR c.agent_code = $5::text)
           AND ($6::text IS NULL OR c.category = $6::text)
           AND ($8::text IS NULL OR p.channel = $8::text)"
    };
}

const COUNTS_SQL: &str = concat!(
    "SELECT c.category, count(*) AS due,
            count(*) FILTER (WHERE c.state = 'renewed') AS renewed,
            count(*) FILTER (WHERE c.state = 'rescued') AS rescued,
            count(*) FILTER (WHERE c.state IN ('lapsed', 'insured_elsewhere', 'vehicle_sold')) AS lapsed,
            count(*) FILTER (WHERE c.state IN ('open', 'renewal_reported')) AS open, ",
    cases!(),
    " GROUP BY key, c.category"
);

/// The lost reasons of the lapsed, not rescued cases (a case with none is not counted).
const LOST_SQL: &str = concat!(
    "SELECT l.reason, count(*) AS n, ",
    cases!(),
    " AND c.state IN ('lapsed', 'insured_elsewhere', 'vehicle_sold')
      AND l.policy_no IS NOT NULL GROUP BY key, l.reason"
);

async fn fetch(
    conn: &mut sqlx::PgConnection,
    sql: &'static str,
    q: &ReportQuery,
) -> Result<Vec<PgRow>, sqlx::Error> {
    sqlx::query(sql)
        .bind(q.from)
        .bind(q.to)
        .bind(q.filters.get("city"))
        .bind(q.filters.get("branch"))
        .bind(q.filters.get("agent"))
        .bind(q.filters.get("category"))
        .bind(q.group_by)
        .bind(q.filters.get("channel"))
        .fetch_all(&mut *conn)
        .await
}

/// Every group's tally in key order, and the total, from two GROUP BY queries.
pub async fn tallies(
    conn: &mut sqlx::PgConnection,
    q: &ReportQuery,
) -> Result<(Vec<Tally>, Tally), sqlx::Error> {
    let (mut groups, mut total) = (BTreeMap::<String, Tally>::new(), Tally::default());
    for row in fetch(conn, COUNTS_SQL, q).await? {
        let category: String = row.try_get("category")?;
        let mut counts = [0; 5];
        for (count, column) in counts
            .iter_mut()
            .zip(["due", "renewed", "rescued", "lapsed", "open"])
        {
            *count = row.try_get(column)?;
        }
        groups
            .entry(row.try_get("key")?)
            .or_default()
            .add(&category, counts);
        total.add(&category, counts);
    }
    for row in fetch(conn, LOST_SQL, q).await? {
        let (reason, n): (String, i64) = (row.try_get("reason")?, row.try_get("n")?);
        groups
            .entry(row.try_get("key")?)
            .or_default()
            .add_lost(&reason, n);
        total.add_lost(&reason, n);
    }
    let groups = groups.into_iter().map(|(key, tally)| Tally {
        key: Some(key),
        ..tally
    });
    Ok((groups.collect(), total))
}

/// One CSV cell: quoted when it holds a comma, quote or line break (RFC 4180).
pub(crate) fn csv_cell(value: &str) -> String {
    if value.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", value.replace('"', "\"\""))
    } else {
        value.to_owned()
    }
}

pub(crate) const CSV_COLUMNS: &str = "due,renewed,rescued,lapsed,open,renewal_rate,target_rate,gap";

fn render_csv(groups: &[Tally], total: &Tally) -> String {
    let mut out = format!("group,{CSV_COLUMNS}\r\n");
    for t in groups.iter().chain([total]) {
        out.push_str(&csv_cell(t.key.as_deref().unwrap_or("total")));
        out.push(',');
        out.push_str(&t.csv_cells());
        out.push_str("\r\n");
    }
    out
}

impl Tally {
    /// The figures of [`CSV_COLUMNS`], comma-separated.
    pub(crate) fn csv_cells(&self) -> String {
        let rate = |r: Option<f64>| r.map(|r| r.to_string()).unwrap_or_default();
        let counts = [self.due, self.renewed, self.rescued, self.lapsed, self.open];
        let rates = [self.renewal_rate, self.target_rate, self.gap].map(rate);
        let counts = counts.map(|n| n.to_string());
        [counts.as_slice(), &rates].concat().join(",")
    }
}

#[derive(Serialize)]
struct Report<'a> {
    from: NaiveDate,
    to: NaiveDate,
    group_by: &'static str,
    filters: &'a BTreeMap<&'static str, String>,
    groups: &'a [Tally],
    total: &'a Tally,
    /// The six customer categories and their targets (DOMAIN.md).
    targets: Vec<CategoryTarget>,
}

#[derive(Serialize)]
struct CategoryTarget {
    category: &'static str,
    description: &'static str,
    target_rate: Option<f64>,
}

fn category_targets() -> Vec<CategoryTarget> {
    categories::CATEGORIES
        .iter()
        .map(|c| CategoryTarget {
            category: c.code,
            description: c.description,
            target_rate: c.target_percent.map(|p| f64::from(p) / 100.0),
        })
        .collect()
}

/// Analysts and HQ see every figure; a city admin their city, a branch's supervisor
/// or admin their branch (the filter is set for them; naming another is refused).
fn scoped(caller: &Caller, raw: &mut RawQuery) -> Result<(), Problem> {
    scope_filters(caller, &mut raw.city, &mut raw.branch)
}

/// Sets the city or branch filter of a caller who sees only their own (see [`scoped`]).
pub(crate) fn scope_filters(
    caller: &Caller,
    city: &mut Option<String>,
    branch: &mut Option<String>,
) -> Result<(), Problem> {
    caller.scope_report(city, branch).map(|_| ())
}

#[utoipa::path(get, path = "/v1/reports/renewal-rate", tag = "reports",
    params(("city" = Option<String>, Query), ("branch" = Option<String>, Query),
           ("agent" = Option<String>, Query), ("category" = Option<String>, Query),
           ("channel" = Option<String>, Query, description = "dealer, direct or agent"),
           ("from" = Option<String>, Query, description = "YYYY-MM-DD"),
           ("to" = Option<String>, Query, description = "YYYY-MM-DD"),
           ("group_by" = Option<String>, Query, description = "category, city, branch, agent, channel, month or week (ISO, of the expiry date)"),
           ("format" = Option<String>, Query, description = "json or csv")),
    responses((status = 200, body = serde_json::Value, description = "Renewal rates by group against the category targets (or CSV)"),
              (status = 400, content_type = "application/problem+json", body = renewal_platform::openapi::ProblemDocument), renewal_platform::openapi::Refusals))]
async fn renewal_rate(
    State(state): State<KpiState>,
    caller: Caller,
    headers: HeaderMap,
    raw: Result<Query<RawQuery>, QueryRejection>,
) -> Result<Response, KpiError> {
    let Query(mut raw) = raw.map_err(|e| invalid(e.body_text()))?;
    scoped(&caller, &mut raw)?;
    let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok());
    let today = renewal_platform::local_date(state.clock.now(), state.time_zone);
    let q = parse_query(raw, accept, today)?;
    let (groups, total) = tallies(&mut *state.pool.acquire().await?, &q).await?;
    if q.csv {
        let content_type = [(header::CONTENT_TYPE, "text/csv; charset=utf-8")];
        return Ok((content_type, render_csv(&groups, &total)).into_response());
    }
    let report = Report {
        from: q.from,
        to: q.to,
        group_by: q.group_by,
        filters: &q.filters,
        groups: &groups,
        total: &total,
        targets: category_targets(),
    };
    Ok(Json(report).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn date(s: &str) -> NaiveDate {
        NaiveDate::parse_from_str(s, "%Y-%m-%d").expect("test date")
    }

    /// Parses `query` as the handler does, on 2025-06-30.
    fn parse(query: &str, accept: Option<&str>) -> Result<ReportQuery, KpiError> {
        let uri: axum::http::Uri = format!("/?{query}").parse().expect("uri");
        let Query(raw) = Query::<RawQuery>::try_from_uri(&uri).expect("query string");
        parse_query(raw, accept, date("2025-06-30"))
    }

    /// The detail of an invalid query, up to the colon: the parameter at fault.
    fn fault(query: &str) -> String {
        match parse(query, None) {
            Err(KpiError::InvalidQuery(detail)) => detail.split(':').next().unwrap_or("").into(),
            other => panic!("expected invalid_query, got {other:?}"),
        }
    }

    fn tally(rows: &[(&str, [i64; 5])]) -> Tally {
        let mut t = Tally::default();
        rows.iter()
            .for_each(|(category, counts)| t.add(category, *counts));
        t
    }

    #[test]
    fn defaults_to_the_year_up_to_today_by_category_as_json() {
        let q = parse("", None).expect("valid");
        assert_eq!((q.from, q.to), (date("2024-07-01"), date("2025-06-30")));
        assert_eq!((q.group_by, q.csv, q.filters.len()), ("category", false, 0));
        assert_eq!(
            parse("to=2024-03-01", None).expect("valid").from,
            date("2023-03-03")
        );
        let q = parse("from=2025-06-30", None).expect("valid");
        assert_eq!((q.from, q.to), (date("2025-06-30"), date("2025-06-30")));
    }

    #[test]
    fn rejects_bad_parameters_naming_them() {
        assert_eq!(fault("from=2025-13-01"), "from");
        assert_eq!(fault("to=2025-6-1"), "to");
        assert_eq!(fault("to=yesterday"), "to");
        assert_eq!(fault("from=2025-05-02&to=2025-05-01"), "from");
        assert_eq!(fault("from=2025-07-01"), "from"); // after the default `to`, today
        assert_eq!(fault("group_by=region"), "group_by");
        assert_eq!(fault("format=xlsx"), "format");
    }

    #[test]
    fn parses_grouping_format_and_only_the_filters_given() {
        let q = parse("group_by=agent&city=440100&branch=&format=csv", None).expect("valid");
        assert_eq!((q.group_by, q.csv), ("agent", true));
        assert_eq!(q.filters, BTreeMap::from([("city", "440100".to_owned())]));
        let q = parse("group_by=channel&channel=dealer", None).expect("valid");
        assert_eq!(q.group_by, "channel");
        assert_eq!(
            q.filters,
            BTreeMap::from([("channel", "dealer".to_owned())])
        );
        assert_eq!(
            parse("group_by=month", None).expect("valid").group_by,
            "month"
        );
        assert_eq!(
            parse("group_by=week", None).expect("valid").group_by,
            "week"
        );
        let accept = Some("text/html, Text/CSV;q=0.9");
        assert!(parse("", accept).expect("valid").csv);
        assert!(!parse("format=json", accept).expect("valid").csv);
        assert!(!parse("", Some("application/json")).expect("valid").csv);
    }

    #[test]
    fn rates_targets_and_gaps() {
        let t = tally(&[("insured_last_year", [4, 2, 1, 1, 0])]);
        assert_eq!(
            (t.renewal_rate, t.target_rate, t.gap),
            (Some(0.75), Some(0.75), Some(0.0))
        );
        // Due-weighted: (75 × 4 + 10 × 1) / 5 = 62%; 3 of 5 renewed or rescued is 60%.
        let mut t = tally(&[
            ("insured_last_year", [4, 2, 1, 1, 0]),
            ("local_not_back_2y", [1, 0, 0, 1, 0]),
        ]);
        assert_eq!(
            (t.renewal_rate, t.target_rate, t.gap),
            (Some(0.6), Some(0.62), Some(-0.02))
        );
        // An unknown category, or other_city (no target), counts as due but weighs
        // nothing into the target.
        t.add("vip", [1, 1, 0, 0, 0]);
        assert_eq!(
            (t.due, t.renewal_rate, t.target_rate, t.gap),
            (6, Some(0.6667), Some(0.62), Some(0.0467))
        );
        let t = tally(&[("vip", [3, 1, 0, 0, 2]), ("other_city", [1, 0, 0, 1, 0])]);
        assert_eq!(
            (t.renewal_rate, t.target_rate, t.gap),
            (Some(0.25), None, None)
        );
        let t = tally(&[("phone_only", [0, 0, 0, 0, 0])]);
        assert_eq!((t.renewal_rate, t.target_rate, t.gap), (None, None, None));
    }

    #[test]
    fn json_carries_the_key_lost_reasons_and_nulls() {
        let mut t = Tally {
            key: Some("phone_only".into()),
            ..tally(&[("phone_only", [2, 0, 0, 2, 0])])
        };
        t.add_lost("unreachable", 1);
        t.add_lost("unreachable", 1);
        let group = serde_json::to_value(&t).expect("json");
        assert_eq!(
            (&group["key"], &group["renewal_rate"], &group["target_rate"]),
            (&"phone_only".into(), &0.0.into(), &0.2.into())
        );
        assert_eq!(group["lost_reasons"], serde_json::json!({"unreachable": 2}));
        assert!(group.get("target_points").is_none());
        let total = serde_json::to_value(Tally::default()).expect("json");
        assert!(
            total.get("key").is_none() && total["renewal_rate"].is_null() && total["gap"].is_null()
        );
    }

    #[test]
    fn csv_has_a_header_a_line_per_group_and_the_total() {
        let a = Tally {
            key: Some("A1".into()),
            ..tally(&[("insured_last_year", [4, 3, 0, 1, 0])])
        };
        let b = Tally {
            key: Some("say \"hi\", bye".into()),
            ..Tally::default()
        };
        let csv = render_csv(&[a.clone(), b], &Tally { key: None, ..a });
        let lines: Vec<&str> = csv.split("\r\n").collect();
        assert_eq!(
            lines[0],
            "group,due,renewed,rescued,lapsed,open,renewal_rate,target_rate,gap"
        );
        assert_eq!(lines[1], "A1,4,3,0,1,0,0.75,0.75,0");
        assert_eq!(lines[2], "\"say \"\"hi\"\", bye\",0,0,0,0,0,,,");
        assert_eq!(&lines[3..], ["total,4,3,0,1,0,0.75,0.75,0", ""]);
        assert_eq!(csv_cell("line\nbreak"), "\"line\nbreak\"");
    }

    #[test]
    fn the_report_lists_the_six_categories_and_their_targets() {
        let got: Vec<(&str, Option<f64>)> = category_targets()
            .iter()
            .map(|t| (t.category, t.target_rate))
            .collect();
        assert_eq!(
            got,
            [
                ("insured_last_year", Some(0.75)),
                ("full_policy_data", Some(0.3)),
                ("phone_only", Some(0.2)),
                ("local_recent_workshop", Some(0.2)),
                ("local_not_back_2y", Some(0.1)),
                ("other_city", None),
            ]
        );
    }

    #[test]
    fn errors_map_to_their_statuses() {
        let bad = KpiError::InvalidQuery("to: nope".into()).into_response();
        assert_eq!(bad.status(), StatusCode::BAD_REQUEST);
        let busy = KpiError::Database(sqlx::Error::PoolTimedOut).into_response();
        assert_eq!(busy.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert!(busy.headers().contains_key("retry-after"));
        let ours = KpiError::Database(sqlx::Error::RowNotFound).into_response();
        assert_eq!(ours.status(), StatusCode::INTERNAL_SERVER_ERROR);
    }
}
