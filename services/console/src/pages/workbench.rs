//! *Workbench* (an owner, or a call-center agent): "next call" leases the most urgent
//! task of the person's queue from dispatch and shows the customer card (the full
//! mobile: this person must call), the renewal terms and the earlier calls; the
//! outcome is recorded with the fields it needs. While the card is open the page
//! heartbeats the lease; leaving the page puts the task back.

use axum::Form;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use chrono::{NaiveDateTime, TimeZone};
use renewal_platform::Role;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::i18n::text;
use crate::pages::{self, require};
use crate::services::Service;
use crate::sessions::SignedIn;
use crate::sign_in::frame;
use crate::{Console, ConsoleError};

/// How long a lease from the workbench lasts between heartbeats.
const LEASE_SECONDS: i64 = 300;
pub const OUTCOMES: [&str; 10] = [
    "promised",
    "renewed",
    "call_back",
    "refused",
    "unreachable",
    "wrong_number",
    "insured_elsewhere",
    "vehicle_sold",
    "cannot_renew_in_time",
    "high_risk_of_loss",
];

pub fn routes() -> axum::Router<Console> {
    axum::Router::new()
        .route("/console/workbench", get(workbench))
        .route("/console/workbench/next", post(next))
        .route("/console/workbench/outcome", post(outcome))
        .route("/console/workbench/heartbeat", post(heartbeat))
        .route("/console/workbench/release", post(release))
}

/// The queues the person works.
fn queues(signed: &SignedIn) -> &'static [&'static str] {
    if signed.session.caller.has(Role::CallCenter) {
        &["campaign", "hq"]
    } else {
        &["owner", "branch"]
    }
}

async fn workbench(
    State(console): State<Console>,
    signed: SignedIn,
) -> Result<Response, ConsoleError> {
    require(&signed, "workbench")?;
    let page = crate::page! { queues => queues(&signed), outcomes => OUTCOMES };
    pages::render(
        &console,
        "workbench.html",
        frame(&signed, "workbench"),
        page,
    )
}

#[derive(Deserialize)]
struct Next {
    csrf: Option<String>,
    queue: Option<String>,
    /// The call center's human agent (its token names the machine client).
    agent: Option<String>,
}

/// Leases the next task of the chosen queue.
async fn next(
    State(console): State<Console>,
    signed: SignedIn,
    headers: HeaderMap,
    Form(form): Form<Next>,
) -> Result<Response, ConsoleError> {
    require(&signed, "workbench")?;
    signed.check_csrf(&headers, form.csrf.as_deref())?;
    let queues = queues(&signed);
    let queue = form
        .queue
        .filter(|q| queues.contains(&q.as_str()))
        .unwrap_or_else(|| queues[0].to_owned());
    let caller = &signed.session.caller;
    let agent = caller
        .agent_code
        .clone()
        .or_else(|| form.agent.filter(|a| !a.trim().is_empty()))
        .ok_or_else(|| ConsoleError::BadInput("name the agent who calls".into()))?;
    let body =
        json!({ "agent_id": agent, "queue": queue, "max": 1, "lease_seconds": LEASE_SECONDS });
    let leased = console
        .services
        .post(
            Service::Dispatch,
            "/v1/phone-tasks:lease",
            &signed.session.token,
            &body,
        )
        .await?;
    let task = leased["tasks"].get(0).cloned();
    if task.is_none() {
        return pages::notice(
            &console,
            &signed,
            true,
            text(signed.session.lang, "workbench.empty"),
        );
    }
    pages::part(
        &console,
        &signed,
        "workbench_task.html",
        crate::page! { task, outcomes => OUTCOMES },
    )
}

#[derive(Deserialize)]
struct Recorded {
    csrf: Option<String>,
    task_id: uuid::Uuid,
    lease_token: uuid::Uuid,
    outcome: String,
    #[serde(default)]
    promised_date: String,
    #[serde(default)]
    call_back_at: String,
    #[serde(default)]
    new_policy_no: String,
    #[serde(default)]
    reason: String,
}

/// A `datetime-local` field (the business's time) as RFC 3339.
fn instant(local: &str) -> Result<Option<String>, ConsoleError> {
    if local.trim().is_empty() {
        return Ok(None);
    }
    let naive = NaiveDateTime::parse_from_str(local.trim(), "%Y-%m-%dT%H:%M")
        .map_err(|_| ConsoleError::BadInput(format!("{local:?} is not a date and time")))?;
    let at = chrono_tz::Asia::Shanghai
        .from_local_datetime(&naive)
        .earliest()
        .ok_or_else(|| ConsoleError::BadInput(format!("{local:?} does not exist")))?;
    Ok(Some(at.to_rfc3339()))
}

fn filled(text: String) -> Value {
    if text.trim().is_empty() {
        Value::Null
    } else {
        Value::String(text.trim().to_owned())
    }
}

/// The outcome, completed at dispatch.
async fn outcome(
    State(console): State<Console>,
    signed: SignedIn,
    headers: HeaderMap,
    Form(form): Form<Recorded>,
) -> Result<Response, ConsoleError> {
    require(&signed, "workbench")?;
    signed.check_csrf(&headers, form.csrf.as_deref())?;
    if !OUTCOMES.contains(&form.outcome.as_str()) {
        return Err(ConsoleError::BadInput(format!(
            "unknown outcome {:?}",
            form.outcome
        )));
    }
    let body = json!({
        "lease_token": form.lease_token,
        "outcome": form.outcome,
        "promised_date": filled(form.promised_date),
        "call_back_at": instant(&form.call_back_at)?,
        "new_policy_no": filled(form.new_policy_no),
        "reason": filled(form.reason),
    });
    let path = format!("/v1/phone-tasks/{}:complete", form.task_id);
    console
        .services
        .post(Service::Dispatch, &path, &signed.session.token, &body)
        .await?;
    let said = format!(
        "{}: {}",
        text(signed.session.lang, "workbench.recorded"),
        text(signed.session.lang, &format!("outcome.{}", form.outcome))
    );
    pages::notice(&console, &signed, true, &said)
}

#[derive(Deserialize)]
struct Held {
    csrf: Option<String>,
    task_id: uuid::Uuid,
    lease_token: uuid::Uuid,
}

/// Keeps the lease while the card is open.
async fn heartbeat(
    State(console): State<Console>,
    signed: SignedIn,
    headers: HeaderMap,
    Form(form): Form<Held>,
) -> Result<Response, ConsoleError> {
    signed.check_csrf(&headers, form.csrf.as_deref())?;
    let path = format!("/v1/phone-tasks/{}:heartbeat", form.task_id);
    let body = json!({ "lease_token": form.lease_token, "lease_seconds": LEASE_SECONDS });
    let held = console
        .services
        .post(Service::Dispatch, &path, &signed.session.token, &body)
        .await?;
    let until = pages::escape(held["lease_expires_at"].as_str().unwrap_or_default());
    Ok(axum::response::Html(until).into_response())
}

/// Puts the task back (the page was left, or the person chose to).
async fn release(
    State(console): State<Console>,
    signed: SignedIn,
    headers: HeaderMap,
    Form(form): Form<Held>,
) -> Result<Response, ConsoleError> {
    signed.check_csrf(&headers, form.csrf.as_deref())?;
    let path = format!("/v1/phone-tasks/{}:release", form.task_id);
    let body = json!({ "lease_token": form.lease_token });
    console
        .services
        .post(Service::Dispatch, &path, &signed.session.token, &body)
        .await?;
    pages::notice(
        &console,
        &signed,
        true,
        text(signed.session.lang, "app.done"),
    )
}
