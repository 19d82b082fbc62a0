//! *Season*: the funnel (due, owned, contacted, open, renewed, rescued, lapsed), the
//! renewal rate against its target by branch and by customer category, and the weekly
//! trend, from the lists service's renewal-rate report and, for the owned and contacted
//! steps, the assignment service's ownership report (a branch's or city's people see
//! their own; the services set the filter). No customer data is on this page.

use axum::extract::{Query, State};
use axum::response::Response;
use axum::routing::get;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::i18n::{Lang, text};
use crate::pages::{self, require};
use crate::services::Service;
use crate::sessions::SignedIn;
use crate::sign_in::frame;
use crate::{Console, ConsoleError};

/// How far past today the season's default range reaches.
const SEASON_AHEAD_DAYS: u64 = 120;

pub fn routes() -> axum::Router<Console> {
    axum::Router::new().route("/console/season", get(season))
}

#[derive(Deserialize)]
struct Range {
    from: Option<String>,
    to: Option<String>,
}

/// A date as the report takes it (YYYY-MM-DD), or nothing.
fn date(value: Option<String>) -> Result<Option<String>, ConsoleError> {
    match value.filter(|v| !v.is_empty()) {
        None => Ok(None),
        Some(v) => chrono::NaiveDate::parse_from_str(&v, "%Y-%m-%d")
            .map(|d| Some(d.to_string()))
            .map_err(|_| ConsoleError::BadInput(format!("{v:?} is not a date (YYYY-MM-DD)"))),
    }
}

async fn season(
    State(console): State<Console>,
    signed: SignedIn,
    Query(range): Query<Range>,
) -> Result<Response, ConsoleError> {
    require(&signed, "season")?;
    // By default the season: the year of expiries up to four months ahead (the open
    // window and the month after it), so the cases still being worked are in it.
    let to = date(range.to)?.unwrap_or_else(|| {
        (chrono::Utc::now().date_naive() + chrono::Days::new(SEASON_AHEAD_DAYS)).to_string()
    });
    let from = date(range.from)?;
    let mut query = format!("&to={to}");
    if let Some(f) = &from {
        query.push_str(&format!("&from={f}"));
    }
    let session = &signed.session;
    // The report depends only on the role and scope (the service filters by them), so
    // everyone of the same role and scope shares what is kept.
    let caller = &session.caller;
    let who = &format!(
        "{}|{}|{}|{}",
        caller.main_role(),
        caller.city_code.as_deref().unwrap_or(""),
        caller.branch_code.as_deref().unwrap_or(""),
        caller.agent_code.as_deref().unwrap_or("")
    );
    let report = |service: Service, path: String| {
        let console = console.clone();
        let token = session.token.clone();
        async move { console.services.report(service, &path, &token, who).await }
    };
    let rate = |group: &str| {
        report(
            Service::Lists,
            format!("/v1/reports/renewal-rate?group_by={group}{query}"),
        )
    };
    let (branches, categories, weeks, ownership) = futures::try_join!(
        rate("branch"),
        rate("category"),
        rate("week"),
        report(
            Service::Assignment,
            format!("/v1/reports/ownership?{}", &query[1..])
        ),
    )?;
    let mut total = branches["total"].clone();
    for step in ["owned", "contacted"] {
        total[step] = ownership[step].clone();
    }
    let total = &total;
    let page = crate::page! {
        total => total.clone(),
        branches => branches["groups"].clone(),
        categories => categories["groups"].clone(),
        funnel => funnel_chart(total, session.lang),
        by_branch => rate_chart(&branches["groups"], session.lang),
        trend => trend_chart(&weeks["groups"], session.lang),
        from, to => Some(to),
    };
    pages::render(&console, "season.html", frame(&signed, "season"), page)
}

/// The funnel as horizontal bars, top to bottom: due, owned, contacted, open, renewed,
/// rescued, lapsed (owned and contacted from assignment, the rest from lists). Charts
/// are drawn at once (no animation): a page read at a glance, and a screenshot of it,
/// shows the figures.
fn funnel_chart(total: &Value, lang: Lang) -> Value {
    let steps = [
        "due",
        "owned",
        "contacted",
        "open",
        "renewed",
        "rescued",
        "lapsed",
    ];
    let words: Vec<String> = steps
        .iter()
        .map(|s| text(lang, &format!("col.{s}")).to_owned())
        .collect();
    json!({
        "animation": false,
        "tooltip": {},
        "grid": { "containLabel": true, "left": 8, "right": 16 },
        "xAxis": { "type": "value" },
        "yAxis": { "type": "category", "data": words, "inverse": true, "axisLabel": { "interval": 0 } },
        "series": [{ "type": "bar", "data": steps.iter().map(|s| total[*s].as_i64().unwrap_or(0)).collect::<Vec<_>>() }],
    })
}

/// Each group's rate beside its target.
fn rate_chart(groups: &Value, lang: Lang) -> Value {
    let groups = groups.as_array().cloned().unwrap_or_default();
    let keys: Vec<Value> = groups.iter().map(|g| g["key"].clone()).collect();
    let pct = |v: &Value| v.as_f64().map(|r| (r * 1000.0).round() / 10.0);
    json!({
        "animation": false,
        "tooltip": { "trigger": "axis" },
        "legend": {},
        "xAxis": { "type": "category", "data": keys },
        "yAxis": { "type": "value", "max": 100 },
        "series": [
            { "name": text(lang, "col.rate"), "type": "bar", "data": groups.iter().map(|g| pct(&g["renewal_rate"])).collect::<Vec<_>>() },
            { "name": text(lang, "col.target"), "type": "line", "data": groups.iter().map(|g| pct(&g["target_rate"])).collect::<Vec<_>>() },
        ],
    })
}

/// Renewed and lapsed by the week the policies expire.
fn trend_chart(groups: &Value, lang: Lang) -> Value {
    let groups = groups.as_array().cloned().unwrap_or_default();
    let series = |name: &str| {
        let data: Vec<i64> = groups
            .iter()
            .map(|g| g[name].as_i64().unwrap_or(0))
            .collect();
        json!({ "name": text(lang, &format!("col.{name}")), "type": "line", "data": data })
    };
    json!({
        "animation": false,
        "tooltip": { "trigger": "axis" },
        "legend": {},
        "xAxis": { "type": "category", "data": groups.iter().map(|g| g["key"].clone()).collect::<Vec<_>>() },
        "yAxis": { "type": "value" },
        "series": [series("due"), series("renewed"), series("lapsed"), series("open")],
    })
}
