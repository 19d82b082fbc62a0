//! *Plans* (HQ, a city company for its city): the city's reminder plan as the
//! scheduler keeps it, edited as JSON; "preview" shows the difference against the plan
//! in force (line by line, by the `similar` crate) before anything is saved, and the
//! scheduler checks the plan when it is saved (its refusal is shown as it gave it).

use axum::Form;
use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::response::Response;
use axum::routing::{get, post};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::i18n::text;
use crate::pages::claims::code;
use crate::pages::{self, require};
use crate::services::Service;
use crate::sessions::SignedIn;
use crate::sign_in::frame;
use crate::{Console, ConsoleError};

/// The largest plan taken from the form.
const MAX_PLAN: usize = 256 * 1024;

pub fn routes() -> axum::Router<Console> {
    axum::Router::new()
        .route("/console/plans", get(plans).post(save))
        .route("/console/plans/preview", post(preview))
}

#[derive(Deserialize)]
struct Which {
    city: Option<String>,
}

/// The plan in force for `city` (`*`: every city's default).
async fn current(console: &Console, signed: &SignedIn, city: &str) -> Result<Value, ConsoleError> {
    let city = if city == "*" {
        "%2A".to_owned()
    } else {
        city.to_owned()
    };
    console
        .services
        .get(
            Service::Scheduler,
            &format!("/v1/plans/{city}"),
            &signed.session.token,
        )
        .await
}

/// The city the page is about: the one asked for (`*`: the default), else the person's.
fn city_of(signed: &SignedIn, given: Option<String>) -> Result<String, ConsoleError> {
    match given.filter(|c| !c.is_empty()) {
        Some(c) if c == "*" => Ok(c),
        Some(c) => Ok(code(Some(c))?.unwrap_or_default()),
        None => Ok(signed
            .session
            .caller
            .city_code
            .clone()
            .unwrap_or_else(|| "*".into())),
    }
}

async fn plans(
    State(console): State<Console>,
    signed: SignedIn,
    Query(which): Query<Which>,
) -> Result<Response, ConsoleError> {
    require(&signed, "plans")?;
    let city = city_of(&signed, which.city)?;
    let plan = current(&console, &signed, &city).await?;
    let text = serde_json::to_string_pretty(&plan).unwrap_or_default();
    let page = crate::page! { city, text };
    pages::render(&console, "plans.html", frame(&signed, "plans"), page)
}

#[derive(Deserialize)]
struct Edited {
    csrf: Option<String>,
    city: String,
    plan: String,
}

#[derive(Serialize)]
struct Line {
    sign: &'static str,
    text: String,
}

/// The edited plan, parsed, and its lines against the plan in force.
async fn difference(
    console: &Console,
    signed: &SignedIn,
    form: &Edited,
) -> Result<(Value, Vec<Line>), ConsoleError> {
    if form.plan.len() > MAX_PLAN {
        return Err(ConsoleError::BadInput("the plan is too long".into()));
    }
    let edited: Value = serde_json::from_str(&form.plan)
        .map_err(|e| ConsoleError::BadInput(format!("the plan is not JSON: {e}")))?;
    let city = city_of(signed, Some(form.city.clone()))?;
    let before =
        serde_json::to_string_pretty(&current(console, signed, &city).await?).unwrap_or_default();
    let after = serde_json::to_string_pretty(&edited).unwrap_or_default();
    let diff = similar::TextDiff::from_lines(&before, &after);
    let lines = diff
        .iter_all_changes()
        .filter(|c| c.tag() != similar::ChangeTag::Equal)
        .map(|c| Line {
            sign: match c.tag() {
                similar::ChangeTag::Delete => "-",
                _ => "+",
            },
            text: c.value().trim_end().to_owned(),
        })
        .collect();
    Ok((edited, lines))
}

async fn preview(
    State(console): State<Console>,
    signed: SignedIn,
    headers: HeaderMap,
    Form(form): Form<Edited>,
) -> Result<Response, ConsoleError> {
    require(&signed, "plans")?;
    signed.check_csrf(&headers, form.csrf.as_deref())?;
    let (_, lines) = difference(&console, &signed, &form).await?;
    let unchanged = lines.is_empty();
    pages::part(
        &console,
        &signed,
        "plans_diff.html",
        crate::page! { lines, unchanged },
    )
}

async fn save(
    State(console): State<Console>,
    signed: SignedIn,
    headers: HeaderMap,
    Form(form): Form<Edited>,
) -> Result<Response, ConsoleError> {
    require(&signed, "plans")?;
    signed.check_csrf(&headers, form.csrf.as_deref())?;
    let (edited, lines) = difference(&console, &signed, &form).await?;
    if lines.is_empty() {
        return pages::notice(
            &console,
            &signed,
            true,
            text(signed.session.lang, "plans.unchanged"),
        );
    }
    let city = match city_of(&signed, Some(form.city.clone()))?.as_str() {
        "*" => "%2A".to_owned(),
        c => c.to_owned(),
    };
    console
        .services
        .put(
            Service::Scheduler,
            &format!("/v1/plans/{city}"),
            &signed.session.token,
            &edited,
        )
        .await?;
    pages::notice(
        &console,
        &signed,
        true,
        text(signed.session.lang, "plans.saved"),
    )
}
