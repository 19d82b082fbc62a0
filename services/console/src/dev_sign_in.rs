//! The development issuer's sign-in, for a laptop, the demo and the tests (served only
//! when the process runs the development issuer, `AUTH_DEV=on`, which production
//! refuses): an authorization endpoint whose page picks a role and a scope, and a
//! token endpoint that checks the PKCE verifier (S256, by the `oauth2` crate) before
//! it signs a token with the development key. Codes live a minute and are used once.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Form, Json};
use oauth2::{PkceCodeChallenge, PkceCodeVerifier};
use renewal_platform::Role;
use renewal_platform::dev_issuer::Grant;
use serde::Deserialize;

use crate::sessions::{self, random_id};
use crate::{Console, ConsoleError, pages};

const CODE_TTL: Duration = Duration::from_secs(60);
const FORM_TTL: Duration = Duration::from_secs(600);
/// The development tokens' life: a working day.
const TOKEN_TTL: Duration = Duration::from_secs(12 * 3600);

struct Issued {
    grant: Grant,
    challenge: String,
    redirect_uri: String,
    at: Instant,
}

/// Codes given and not yet exchanged; sign-in forms shown and not yet sent.
#[derive(Clone, Default)]
pub struct Codes {
    codes: Arc<Mutex<HashMap<String, Issued>>>,
    forms: Arc<Mutex<HashMap<String, Instant>>>,
}

pub fn routes() -> axum::Router<Console> {
    axum::Router::new()
        .route("/console/dev-issuer/authorize", get(page).post(authorize))
        .route("/console/dev-issuer/token", post(token))
}

#[derive(Deserialize)]
struct AuthorizeQuery {
    response_type: Option<String>,
    client_id: Option<String>,
    redirect_uri: Option<String>,
    state: Option<String>,
    code_challenge: Option<String>,
    code_challenge_method: Option<String>,
}

/// The request as a client sent it, checked: only the console's own redirect.
fn checked(console: &Console, q: &AuthorizeQuery) -> Result<(), ConsoleError> {
    let expected = format!("{}/console/signed-in", console.config.public_url);
    let bad = |what: &str| {
        Err(ConsoleError::BadInput(format!(
            "authorization request: {what}"
        )))
    };
    if q.response_type.as_deref() != Some("code") {
        return bad("response_type must be code");
    }
    if q.code_challenge_method.as_deref() != Some("S256") || q.code_challenge.is_none() {
        return bad("a PKCE challenge with S256 is required");
    }
    if q.redirect_uri.as_deref() != Some(expected.as_str()) {
        return bad("unknown redirect_uri");
    }
    if q.state.as_deref().is_none_or(str::is_empty) || q.client_id.is_none() {
        return bad("state and client_id are required");
    }
    Ok(())
}

/// The page that picks a role and a scope.
async fn page(
    State(console): State<Console>,
    headers: axum::http::HeaderMap,
    Query(q): Query<AuthorizeQuery>,
) -> Result<Response, ConsoleError> {
    checked(&console, &q)?;
    let form = random_id();
    {
        let mut forms = console
            .dev_codes
            .forms
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        forms.retain(|_, at| at.elapsed() < FORM_TTL);
        forms.insert(form.clone(), Instant::now());
    }
    let roles: Vec<&str> = Role::ALL.iter().map(|r| r.as_str()).collect();
    pages::render_bare(
        &console,
        "dev_sign_in.html",
        sessions::chosen_lang(&headers),
        crate::page! {
            form, roles,
            client_id => q.client_id, redirect_uri => q.redirect_uri, state => q.state,
            code_challenge => q.code_challenge,
        },
    )
}

#[derive(Deserialize)]
struct Chosen {
    form: String,
    role: String,
    #[serde(default)]
    agent_code: String,
    #[serde(default)]
    branch_code: String,
    #[serde(default)]
    city_code: String,
    client_id: String,
    redirect_uri: String,
    state: String,
    code_challenge: String,
}

fn grant_of(chosen: &Chosen) -> Result<Grant, ConsoleError> {
    let role = Role::parse(&chosen.role)
        .ok_or_else(|| ConsoleError::BadInput(format!("unknown role {:?}", chosen.role)))?;
    let mut grant = Grant::role(role);
    let code = |c: &str| c.len() <= 32 && c.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
    for (value, name) in [
        (&chosen.agent_code, "agent code"),
        (&chosen.branch_code, "branch code"),
        (&chosen.city_code, "city code"),
    ] {
        if !code(value.trim()) {
            return Err(ConsoleError::BadInput(format!(
                "{name}: letters and digits only"
            )));
        }
    }
    if !chosen.agent_code.trim().is_empty() {
        grant = grant.agent(chosen.agent_code.trim());
    }
    if !chosen.branch_code.trim().is_empty() {
        grant = grant.branch(chosen.branch_code.trim());
    }
    if !chosen.city_code.trim().is_empty() {
        grant = grant.city(chosen.city_code.trim());
    }
    Ok(grant)
}

/// The chosen role and scope become a code, sent back to the client.
async fn authorize(
    State(console): State<Console>,
    Form(chosen): Form<Chosen>,
) -> Result<Response, ConsoleError> {
    let shown = console
        .dev_codes
        .forms
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .remove(&chosen.form);
    if shown.is_none_or(|at| at.elapsed() >= FORM_TTL) {
        return Err(ConsoleError::Forgery);
    }
    let q = AuthorizeQuery {
        response_type: Some("code".into()),
        client_id: Some(chosen.client_id.clone()),
        redirect_uri: Some(chosen.redirect_uri.clone()),
        state: Some(chosen.state.clone()),
        code_challenge: Some(chosen.code_challenge.clone()),
        code_challenge_method: Some("S256".into()),
    };
    checked(&console, &q)?;
    let grant = grant_of(&chosen)?;
    let code = random_id();
    {
        let mut codes = console
            .dev_codes
            .codes
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        codes.retain(|_, i| i.at.elapsed() < CODE_TTL);
        codes.insert(
            code.clone(),
            Issued {
                grant,
                challenge: chosen.code_challenge,
                redirect_uri: chosen.redirect_uri.clone(),
                at: Instant::now(),
            },
        );
    }
    let mut back = url::Url::parse(&chosen.redirect_uri)
        .map_err(|e| ConsoleError::BadInput(format!("redirect_uri: {e}")))?;
    back.query_pairs_mut()
        .append_pair("code", &code)
        .append_pair("state", &chosen.state);
    Ok(Redirect::to(back.as_str()).into_response())
}

#[derive(Deserialize)]
struct Exchange {
    grant_type: String,
    code: String,
    redirect_uri: String,
    code_verifier: String,
}

/// RFC 6749's error answer.
fn refused(error: &str, description: &str) -> Response {
    (
        StatusCode::BAD_REQUEST,
        Json(serde_json::json!({ "error": error, "error_description": description })),
    )
        .into_response()
}

/// The code and its verifier for a signed token.
async fn token(State(console): State<Console>, Form(ask): Form<Exchange>) -> Response {
    if ask.grant_type != "authorization_code" {
        return refused("unsupported_grant_type", "authorization_code only");
    }
    let issued = console
        .dev_codes
        .codes
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .remove(&ask.code);
    let Some(issued) = issued.filter(|i| i.at.elapsed() < CODE_TTL) else {
        return refused("invalid_grant", "unknown, used or expired code");
    };
    let proof =
        PkceCodeChallenge::from_code_verifier_sha256(&PkceCodeVerifier::new(ask.code_verifier));
    if proof.as_str() != issued.challenge || ask.redirect_uri != issued.redirect_uri {
        return refused(
            "invalid_grant",
            "the verifier or redirect_uri does not match",
        );
    }
    let Some(dev) = &console.dev else {
        return refused("server_error", "no development issuer");
    };
    match dev.token(&issued.grant, TOKEN_TTL) {
        Ok(token) => Json(serde_json::json!({
            "access_token": token,
            "token_type": "Bearer",
            "expires_in": TOKEN_TTL.as_secs(),
        }))
        .into_response(),
        Err(e) => refused("server_error", &e.to_string()),
    }
}
