//! *Case*: a policy (its mobile masked, as the lists service shows staff), its owner
//! and routing history (assignment), the timeline of planned, fired and cancelled
//! contacts (scheduler), and its SMS with their receipts and its phone tasks with
//! their outcomes (dispatch). The policy decides whether the page opens at all: a
//! person its scope does not reach is refused, and told why; a section another
//! service refuses says so in its place.

use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::pages::claims::urlencode;
use crate::pages::{self, require};
use crate::services::Service;
use crate::sessions::SignedIn;
use crate::sign_in::frame;
use crate::{Console, ConsoleError};

pub fn routes() -> axum::Router<Console> {
    axum::Router::new()
        .route("/console/cases", get(search))
        .route("/console/cases/{policy_no}", get(case))
}

#[derive(Deserialize)]
struct Search {
    policy_no: Option<String>,
}

/// The search box: straight to the case.
async fn search(signed: SignedIn, Query(q): Query<Search>) -> Result<Response, ConsoleError> {
    require(&signed, "cases")?;
    let no = q.policy_no.unwrap_or_default();
    let no = no.trim();
    if no.is_empty() || no.len() > 64 {
        return Err(ConsoleError::BadInput("a policy number, please".into()));
    }
    Ok(Redirect::to(&format!("/console/cases/{}", urlencode(no))).into_response())
}

/// A section's answer, or the service's refusal in its place.
fn section(answer: Result<Value, ConsoleError>) -> Result<Value, ConsoleError> {
    match answer {
        Ok(v) => Ok(v),
        Err(ConsoleError::Refused { detail, status, .. }) => {
            Ok(json!({ "refused": detail, "status": status }))
        }
        Err(e) => Err(e),
    }
}

async fn case(
    State(console): State<Console>,
    signed: SignedIn,
    Path(policy_no): Path<String>,
) -> Result<Response, ConsoleError> {
    require(&signed, "cases")?;
    let no = urlencode(&policy_no);
    let token = &signed.session.token;
    let services = &console.services;
    let (policy, owner, timeline, contacts) = futures::join!(
        services.get(Service::Lists, &format!("/v1/policies/{no}"), token),
        services.get(Service::Assignment, &format!("/v1/cases/{no}"), token),
        services.get(
            Service::Scheduler,
            &format!("/v1/cases/{no}/timeline"),
            token
        ),
        services.get(
            Service::Dispatch,
            &format!("/v1/cases/{no}/contacts"),
            token
        ),
    );
    // The policy is the page: refused there, refused here.
    let policy = policy?;
    let page = crate::page! {
        policy_no, policy,
        owner => section(owner)?,
        timeline => section(timeline)?,
        contacts => section(contacts)?,
    };
    pages::render(&console, "case.html", frame(&signed, "cases"), page)
}
