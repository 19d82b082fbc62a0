//! Who is signed in: a session per browser, kept in the console's memory and named by
//! a random id in the `renewal_console` cookie (HttpOnly, SameSite=Lax, path
//! `/console`, Secure behind https). The session holds the person's token (the
//! services are called with it), who the token says they are, their language and the
//! CSRF token every form and htmx request must echo. A session ends with its token.
//! Sign-ins under way (the PKCE verifier and the `state` the browser must bring back)
//! wait here for ten minutes at most.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::FromRequestParts;
use axum::http::HeaderMap;
use axum::http::request::Parts;
use cookie::{Cookie, SameSite};
use renewal_platform::identity::Caller;
use ring::rand::{SecureRandom, SystemRandom};
use secrecy::SecretString;

use crate::i18n::Lang;
use crate::{Console, ConsoleError};

pub const SESSION_COOKIE: &str = "renewal_console";
pub const SIGN_IN_COOKIE: &str = "renewal_console_sign_in";
pub const LANG_COOKIE: &str = "renewal_console_lang";
/// How long a sign-in may take at the identity provider.
const SIGN_IN_TTL: Duration = Duration::from_secs(600);
/// Sessions at most, so a flood of sign-ins cannot fill the memory.
const MAX_SESSIONS: usize = 100_000;

/// A signed-in person.
#[derive(Clone)]
pub struct Session {
    pub caller: Arc<Caller>,
    pub token: SecretString,
    pub csrf: String,
    pub lang: Lang,
    expires: Instant,
}

/// A sign-in waiting for the identity provider's answer.
pub struct Pending {
    pub verifier: String,
    pub lang: Lang,
    created: Instant,
}

#[derive(Clone, Default)]
pub struct Sessions {
    open: Arc<Mutex<HashMap<String, Session>>>,
    pending: Arc<Mutex<HashMap<String, Pending>>>,
}

/// 32 random bytes, hex.
pub fn random_id() -> String {
    let mut bytes = [0u8; 32];
    // The system's generator does not fail on Linux; a zeroed id would be refused
    // as unknown anyway.
    let _ = SystemRandom::new().fill(&mut bytes);
    hex::encode(bytes)
}

impl Sessions {
    /// Opens a session for `caller` until `ttl` runs out; its id.
    pub fn open(
        &self,
        caller: Arc<Caller>,
        token: SecretString,
        lang: Lang,
        ttl: Duration,
    ) -> String {
        let id = random_id();
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        if open.len() >= MAX_SESSIONS {
            open.retain(|_, s| s.expires > now);
        }
        open.insert(
            id.clone(),
            Session {
                caller,
                token,
                csrf: random_id(),
                lang,
                expires: now + ttl,
            },
        );
        id
    }

    pub fn get(&self, id: &str) -> Option<Session> {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        match open.get(id) {
            Some(s) if s.expires > Instant::now() => Some(s.clone()),
            Some(_) => {
                open.remove(id);
                None
            }
            None => None,
        }
    }

    pub fn set_lang(&self, id: &str, lang: Lang) {
        if let Some(s) = self
            .open
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get_mut(id)
        {
            s.lang = lang;
        }
    }

    pub fn close(&self, id: &str) {
        self.open
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(id);
    }

    /// Keeps a sign-in's verifier under its `state`.
    pub fn wait_for(&self, state: &str, verifier: String, lang: Lang) {
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        pending.retain(|_, p| now.duration_since(p.created) < SIGN_IN_TTL);
        if pending.len() < MAX_SESSIONS {
            pending.insert(
                state.to_owned(),
                Pending {
                    verifier,
                    lang,
                    created: now,
                },
            );
        }
    }

    /// The sign-in `state` names, once.
    pub fn take_pending(&self, state: &str) -> Option<Pending> {
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        pending
            .remove(state)
            .filter(|p| p.created.elapsed() < SIGN_IN_TTL)
    }
}

/// A cookie's value in the request.
pub fn cookie_value(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(axum::http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(Cookie::split_parse)
        .filter_map(Result::ok)
        .find(|c| c.name() == name)
        .map(|c| c.value().to_owned())
}

/// A `Set-Cookie` value for the console's path.
pub fn set_cookie(name: &str, value: &str, secure: bool, max_age: Option<Duration>) -> String {
    let mut cookie = Cookie::build((name.to_owned(), value.to_owned()))
        .path("/console")
        .http_only(true)
        .same_site(SameSite::Lax)
        .secure(secure);
    if let Some(age) = max_age {
        cookie = cookie.max_age(cookie::time::Duration::seconds(age.as_secs() as i64));
    }
    cookie.build().to_string()
}

/// The language the browser chose (its cookie), Chinese otherwise.
pub fn chosen_lang(headers: &HeaderMap) -> Lang {
    cookie_value(headers, LANG_COOKIE)
        .and_then(|l| Lang::parse(&l))
        .unwrap_or_default()
}

/// The signed-in person of a request (a page without one goes to the sign-in page).
pub struct SignedIn {
    pub id: String,
    pub session: Session,
}

impl FromRequestParts<Console> for SignedIn {
    type Rejection = ConsoleError;

    async fn from_request_parts(
        parts: &mut Parts,
        console: &Console,
    ) -> Result<Self, Self::Rejection> {
        let id = cookie_value(&parts.headers, SESSION_COOKIE).ok_or(ConsoleError::SignedOut)?;
        let session = console.sessions.get(&id).ok_or(ConsoleError::SignedOut)?;
        Ok(SignedIn { id, session })
    }
}

impl SignedIn {
    /// Checks the CSRF token a form or an htmx request carries (the `x-csrf-token`
    /// header, else the form's `csrf` field), in constant time.
    pub fn check_csrf(&self, headers: &HeaderMap, field: Option<&str>) -> Result<(), ConsoleError> {
        use subtle::ConstantTimeEq;
        let given = headers
            .get("x-csrf-token")
            .and_then(|v| v.to_str().ok())
            .or(field)
            .unwrap_or("");
        if given.len() == self.session.csrf.len()
            && bool::from(given.as_bytes().ct_eq(self.session.csrf.as_bytes()))
        {
            Ok(())
        } else {
            Err(ConsoleError::Forgery)
        }
    }
}
