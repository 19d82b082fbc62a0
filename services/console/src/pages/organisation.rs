//! *Organisation* (a branch's, a city's or HQ's administrators): a branch's agents
//! with their capacity, open cases and whether they are active; an agent made
//! inactive hands their cases back (assignment does it and says how many).

use axum::Form;
use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::response::Response;
use axum::routing::get;
use serde::Deserialize;
use serde_json::json;

use crate::pages::claims::{code, urlencode};
use crate::pages::{self, require};
use crate::services::Service;
use crate::sessions::SignedIn;
use crate::sign_in::frame;
use crate::{Console, ConsoleError};

pub fn routes() -> axum::Router<Console> {
    axum::Router::new().route("/console/organisation", get(organisation).post(edit))
}

#[derive(Deserialize)]
struct Which {
    branch: Option<String>,
}

async fn organisation(
    State(console): State<Console>,
    signed: SignedIn,
    Query(which): Query<Which>,
) -> Result<Response, ConsoleError> {
    require(&signed, "organisation")?;
    let branch = code(which.branch)?.or_else(|| signed.session.caller.branch_code.clone());
    let agents = match &branch {
        Some(b) => {
            let path = format!("/v1/branches/{b}/agents?page_size=1000");
            console
                .services
                .get(Service::Assignment, &path, &signed.session.token)
                .await?["items"]
                .clone()
        }
        None => json!([]),
    };
    let page = crate::page! { branch, agents };
    pages::render(
        &console,
        "organisation.html",
        frame(&signed, "organisation"),
        page,
    )
}

#[derive(Deserialize)]
struct Edit {
    csrf: Option<String>,
    agent: String,
    active: Option<bool>,
    capacity: Option<i32>,
}

async fn edit(
    State(console): State<Console>,
    signed: SignedIn,
    headers: HeaderMap,
    Form(form): Form<Edit>,
) -> Result<Response, ConsoleError> {
    require(&signed, "organisation")?;
    signed.check_csrf(&headers, form.csrf.as_deref())?;
    let agent = code(Some(form.agent))?.ok_or_else(|| ConsoleError::BadInput("no agent".into()))?;
    let mut body = serde_json::Map::new();
    if let Some(active) = form.active {
        body.insert("active".into(), json!(active));
    }
    if let Some(capacity) = form.capacity {
        body.insert("capacity".into(), json!(capacity));
    }
    let path = format!("/v1/agents/{}", urlencode(&agent));
    let answer = console
        .services
        .patch(
            Service::Assignment,
            &path,
            &signed.session.token,
            &body.into(),
        )
        .await?;
    let said = format!(
        "{agent}: {}",
        serde_json::to_string(&answer["agent"]).unwrap_or_default()
    );
    pages::notice(&console, &signed, true, &said)
}
