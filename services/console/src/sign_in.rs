//! Sign-in with the identity provider: the OIDC authorization code flow with PKCE
//! (RFC 7636, S256), by the `oauth2` crate. `/console/sign-in` keeps a fresh verifier
//! under a random `state` (also set in a short cookie, so a code cannot be injected
//! into someone else's browser) and sends the browser to the provider;
//! `/console/signed-in` takes the code back, exchanges it with the verifier at the
//! provider's token endpoint (server to server), verifies the access token against the
//! provider's keys as every service does, and opens a session. The person's role and
//! scope are the token's; nothing the browser says changes them.

use std::time::Duration;

use axum::Form;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use oauth2::basic::BasicClient;
use oauth2::{
    AuthUrl, AuthorizationCode, ClientId, ClientSecret, CsrfToken, PkceCodeChallenge,
    PkceCodeVerifier, RedirectUrl, Scope, TokenResponse, TokenUrl,
};
use renewal_platform::Role;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

use crate::i18n::Lang;
use crate::pages::{self, Frame};
use crate::sessions::{self, SignedIn};
use crate::{Console, ConsoleError, Provider};

/// How long a session lasts when the provider does not say how long its token does.
const DEFAULT_TTL: Duration = Duration::from_secs(8 * 3600);

pub fn routes() -> axum::Router<Console> {
    axum::Router::new()
        .route("/console/", get(front))
        .route("/console/sign-in", get(start))
        .route("/console/signed-in", get(finish))
        .route("/console/sign-out", post(sign_out))
        .route("/console/lang/{lang}", get(choose_lang))
}

/// Where each role starts.
pub fn home(roles: &[Role]) -> &'static str {
    let first = roles.first().copied();
    match first {
        Some(Role::Agent | Role::CallCenter) => "/console/workbench",
        Some(Role::BranchAdmin) => "/console/claims",
        Some(Role::Supervisor) => "/console/supervisor",
        Some(Role::CityAdmin) => "/console/pool",
        Some(Role::HqAdmin | Role::Importer) => "/console/operations",
        _ => "/console/season",
    }
}

/// The sign-in page (or the person's start page, when signed in).
async fn front(
    State(console): State<Console>,
    headers: HeaderMap,
) -> Result<Response, ConsoleError> {
    if let Some(id) = sessions::cookie_value(&headers, sessions::SESSION_COOKIE)
        && let Some(session) = console.sessions.get(&id)
    {
        return Ok(Redirect::to(home(&session.caller.roles)).into_response());
    }
    let lang = sessions::chosen_lang(&headers);
    pages::render_bare(&console, "sign_in.html", lang, crate::page! {})
}

type Client = BasicClient<
    oauth2::EndpointSet,
    oauth2::EndpointNotSet,
    oauth2::EndpointNotSet,
    oauth2::EndpointNotSet,
    oauth2::EndpointSet,
>;

fn client(console: &Console) -> Result<Client, ConsoleError> {
    let config = &console.config;
    let (authorize, token, id, secret) = match &config.provider {
        Provider::Oidc {
            authorize_url,
            token_url,
            client_id,
            client_secret,
        } => (
            authorize_url.clone(),
            token_url.clone(),
            client_id.clone(),
            client_secret.clone(),
        ),
        Provider::Development => (
            format!("{}/console/dev-issuer/authorize", config.public_url),
            format!("{}/console/dev-issuer/token", config.internal_url),
            "renewal-console".to_owned(),
            None,
        ),
    };
    let bad = |e: oauth2::url::ParseError| ConsoleError::SignIn(format!("provider address: {e}"));
    let mut client = BasicClient::new(ClientId::new(id))
        .set_auth_uri(AuthUrl::new(authorize).map_err(bad)?)
        .set_token_uri(TokenUrl::new(token).map_err(bad)?)
        .set_redirect_uri(
            RedirectUrl::new(format!("{}/console/signed-in", config.public_url)).map_err(bad)?,
        );
    if let Some(secret) = secret {
        client = client.set_client_secret(ClientSecret::new(secret.expose_secret().to_owned()));
    }
    Ok(client)
}

/// Sends the browser to the provider with a fresh PKCE challenge.
async fn start(
    State(console): State<Console>,
    headers: HeaderMap,
) -> Result<Response, ConsoleError> {
    let client = client(&console)?;
    let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
    let (url, state) = client
        .authorize_url(CsrfToken::new_random)
        .add_scope(Scope::new("openid".into()))
        .set_pkce_challenge(challenge)
        .url();
    let lang = sessions::chosen_lang(&headers);
    console
        .sessions
        .wait_for(state.secret(), verifier.secret().to_owned(), lang);
    let cookie = sessions::set_cookie(
        sessions::SIGN_IN_COOKIE,
        state.secret(),
        console.config.secure_cookies(),
        Some(Duration::from_secs(600)),
    );
    Ok(([(header::SET_COOKIE, cookie)], Redirect::to(url.as_str())).into_response())
}

#[derive(Deserialize)]
struct Callback {
    code: Option<String>,
    state: Option<String>,
    error: Option<String>,
}

/// The provider's answer: the code exchanged, the token verified, a session opened.
async fn finish(
    State(console): State<Console>,
    headers: HeaderMap,
    Query(back): Query<Callback>,
) -> Result<Response, ConsoleError> {
    if let Some(error) = back.error {
        return Err(ConsoleError::SignIn(error));
    }
    let (Some(code), Some(state)) = (back.code, back.state) else {
        return Err(ConsoleError::SignIn("the provider sent no code".into()));
    };
    let ours = sessions::cookie_value(&headers, sessions::SIGN_IN_COOKIE);
    if ours.as_deref() != Some(state.as_str()) {
        return Err(ConsoleError::SignIn(
            "this sign-in was not started in this browser".into(),
        ));
    }
    let pending = console
        .sessions
        .take_pending(&state)
        .ok_or_else(|| ConsoleError::SignIn("the sign-in took too long; start again".into()))?;
    let answer = client(&console)?
        .exchange_code(AuthorizationCode::new(code))
        .set_pkce_verifier(PkceCodeVerifier::new(pending.verifier))
        .request_async(&exchange(&console))
        .await
        .map_err(|e| ConsoleError::SignIn(format!("the code was not exchanged: {e}")))?;
    let token = answer.access_token().secret().to_owned();
    let caller = console
        .auth
        .verify(&token)
        .await
        .map_err(|e| ConsoleError::SignIn(format!("the token was refused: {e}")))?;
    let ttl = answer.expires_in().unwrap_or(DEFAULT_TTL);
    let home = home(&caller.roles);
    tracing::info!(subject = %caller.subject, role = caller.main_role(), "signed in to the console");
    let id = console
        .sessions
        .open(caller, SecretString::from(token), pending.lang, ttl);
    let secure = console.config.secure_cookies();
    let session = sessions::set_cookie(sessions::SESSION_COOKIE, &id, secure, Some(ttl));
    let cleared = sessions::set_cookie(sessions::SIGN_IN_COOKIE, "", secure, Some(Duration::ZERO));
    // Two cookies: appended, not the second in the first's place.
    let cookies = axum::response::AppendHeaders([
        (header::SET_COOKIE, session),
        (header::SET_COOKIE, cleared),
    ]);
    Ok((cookies, Redirect::to(home)).into_response())
}

/// The token endpoint reached with the console's own HTTP client.
fn exchange(
    console: &Console,
) -> impl Fn(
    oauth2::HttpRequest,
) -> std::pin::Pin<Box<dyn Future<Output = Result<oauth2::HttpResponse, Exchange>> + Send>>
+ use<> {
    let http = console.services.http();
    move |request: oauth2::HttpRequest| {
        let http = http.clone();
        Box::pin(async move {
            let (parts, body) = request.into_parts();
            let answer = http
                .request(parts.method, parts.uri.to_string())
                .headers(parts.headers)
                .body(body)
                .send()
                .await?;
            let mut response = axum::http::Response::builder().status(answer.status());
            for (name, value) in answer.headers() {
                response = response.header(name, value);
            }
            Ok(response.body(answer.bytes().await?.to_vec())?)
        })
    }
}

/// Why the token endpoint could not be asked.
#[derive(Debug, thiserror::Error)]
pub enum Exchange {
    #[error(transparent)]
    Transport(#[from] reqwest::Error),
    #[error(transparent)]
    Http(#[from] axum::http::Error),
}

#[derive(Deserialize)]
struct CsrfForm {
    csrf: Option<String>,
}

async fn sign_out(
    State(console): State<Console>,
    signed: SignedIn,
    headers: HeaderMap,
    Form(form): Form<CsrfForm>,
) -> Result<Response, ConsoleError> {
    signed.check_csrf(&headers, form.csrf.as_deref())?;
    console.sessions.close(&signed.id);
    let cleared = sessions::set_cookie(
        sessions::SESSION_COOKIE,
        "",
        console.config.secure_cookies(),
        Some(Duration::ZERO),
    );
    Ok(([(header::SET_COOKIE, cleared)], Redirect::to("/console/")).into_response())
}

#[derive(Deserialize)]
struct Back {
    back: Option<String>,
}

/// Chinese or English, kept in a cookie (and the session).
async fn choose_lang(
    State(console): State<Console>,
    Path(lang): Path<String>,
    headers: HeaderMap,
    Query(back): Query<Back>,
) -> Response {
    let lang = Lang::parse(&lang).unwrap_or_default();
    if let Some(id) = sessions::cookie_value(&headers, sessions::SESSION_COOKIE) {
        console.sessions.set_lang(&id, lang);
    }
    let cookie = sessions::set_cookie(
        sessions::LANG_COOKIE,
        lang.code(),
        console.config.secure_cookies(),
        Some(Duration::from_secs(365 * 86_400)),
    );
    // Only back into the console, never to another site.
    let back = back
        .back
        .filter(|b| b.starts_with("/console/") && !b.starts_with("//"))
        .unwrap_or_else(|| "/console/".into());
    ([(header::SET_COOKIE, cookie)], Redirect::to(&back)).into_response()
}

/// What every page's frame needs of the signed-in person.
pub fn frame(signed: &SignedIn, page: &'static str) -> Frame {
    Frame::of(&signed.session, page)
}
