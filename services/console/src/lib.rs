//! The renewal console: server-rendered pages for the people who run the season
//! (branch staff, owners, the call center, supervisors, the city companies, HQ and the
//! analysts), in Chinese by default and in English. It owns no business tables: every
//! page reads and acts through the four services' APIs with the signed-in person's
//! own token, so what a page shows and what a button may do is exactly what that
//! person's role and scope allow in the services; the console only hides what the
//! person cannot use.
//!
//! - Sign-in: the OIDC authorization code flow with PKCE ([`sign_in`], the `oauth2`
//!   crate) at the insurer's identity provider; locally the development issuer's own
//!   sign-in page ([`dev_sign_in`]) picks a role and a scope.
//! - Sessions in memory, named by a random id in an HttpOnly, SameSite=Lax cookie
//!   (Secure behind https); every form and every htmx request carries the session's
//!   CSRF token ([`sessions`]). A restarted console signs everyone out.
//! - Pages ([`pages`]) are minijinja templates compiled into the binary, with htmx
//!   for partial updates and Apache ECharts for the charts, both vendored from their
//!   npm packages into `assets/vendor` (no Node step in the build).

pub mod dev_sign_in;
pub mod i18n;
pub mod openapi;
pub mod pages;
pub mod services;
pub mod sessions;
pub mod sign_in;

use std::sync::Arc;

use axum::Router;
use axum::http::{StatusCode, header};
use axum::response::{Html, IntoResponse, Redirect, Response};
use renewal_platform::config::{ConfigError, Env};
use renewal_platform::identity::{Authenticator, DevIssuer};
use secrecy::SecretString;

/// Where the console is mounted, in the all-in-one and on its own.
pub const BASE: &str = "/console";

/// How the console reaches the identity provider.
#[derive(Debug, Clone)]
pub enum Provider {
    /// The insurer's identity provider (OIDC), the console a client of it.
    Oidc {
        authorize_url: String,
        token_url: String,
        client_id: String,
        client_secret: Option<SecretString>,
    },
    /// The development issuer's sign-in page, served by the console itself.
    Development,
}

/// The console's settings.
#[derive(Debug, Clone)]
pub struct ConsoleConfig {
    /// Each service's API (the same address for the all-in-one).
    pub lists_url: String,
    pub assignment_url: String,
    pub scheduler_url: String,
    pub dispatch_url: String,
    /// The console as browsers reach it (`https://renewal.example.com`): the sign-in's
    /// redirect address is `{public_url}/console/signed-in`.
    pub public_url: String,
    /// Where the console itself is reached from the server (the development issuer's
    /// token endpoint); `public_url` unless set.
    pub internal_url: String,
    pub provider: Provider,
}

impl ConsoleConfig {
    /// Every service at `url` (the all-in-one), browsers at the same address, the
    /// development issuer for sign-in.
    pub fn all_in_one(url: &str) -> ConsoleConfig {
        ConsoleConfig {
            lists_url: url.to_owned(),
            assignment_url: url.to_owned(),
            scheduler_url: url.to_owned(),
            dispatch_url: url.to_owned(),
            public_url: url.to_owned(),
            internal_url: url.to_owned(),
            provider: Provider::Development,
        }
    }

    /// From the environment: `CONSOLE_SERVICES_URL` (or one URL per service,
    /// `CONSOLE_LISTS_URL` ...), `CONSOLE_PUBLIC_URL`, and the identity provider's
    /// `CONSOLE_OIDC_AUTHORIZE_URL`, `CONSOLE_OIDC_TOKEN_URL`, `CONSOLE_OIDC_CLIENT_ID`,
    /// `CONSOLE_OIDC_CLIENT_SECRET`; with `AUTH_DEV=on`, the development issuer.
    /// `local` is the process's own API address (the all-in-one's default). None when
    /// neither the development issuer nor a provider is configured (the all-in-one then
    /// serves no console).
    pub fn from_env<F: Fn(&str) -> Option<String>>(
        env: &Env<F>,
        local: &str,
    ) -> Result<Option<ConsoleConfig>, ConfigError> {
        let services: String = env.or("CONSOLE_SERVICES_URL", local.to_owned())?;
        let public_url: String = env.or("CONSOLE_PUBLIC_URL", services.clone())?;
        let dev = env.optional::<String>("AUTH_DEV")?.as_deref() == Some("on");
        let provider = if dev {
            Provider::Development
        } else if env
            .optional::<String>("CONSOLE_OIDC_AUTHORIZE_URL")?
            .is_none()
        {
            return Ok(None);
        } else {
            Provider::Oidc {
                authorize_url: env.required("CONSOLE_OIDC_AUTHORIZE_URL")?,
                token_url: env.required("CONSOLE_OIDC_TOKEN_URL")?,
                client_id: env.or("CONSOLE_OIDC_CLIENT_ID", "renewal-console".to_owned())?,
                client_secret: env.secret("CONSOLE_OIDC_CLIENT_SECRET"),
            }
        };
        Ok(Some(ConsoleConfig {
            lists_url: env.or("CONSOLE_LISTS_URL", services.clone())?,
            assignment_url: env.or("CONSOLE_ASSIGNMENT_URL", services.clone())?,
            scheduler_url: env.or("CONSOLE_SCHEDULER_URL", services.clone())?,
            dispatch_url: env.or("CONSOLE_DISPATCH_URL", services.clone())?,
            internal_url: env.or("CONSOLE_INTERNAL_URL", public_url.clone())?,
            public_url: public_url.trim_end_matches('/').to_owned(),
            provider,
        }))
    }

    fn secure_cookies(&self) -> bool {
        self.public_url.starts_with("https://")
    }
}

/// Everything a request of the console needs.
#[derive(Clone)]
pub struct Console {
    pub config: Arc<ConsoleConfig>,
    pub sessions: sessions::Sessions,
    pub services: services::Services,
    pub templates: Arc<minijinja::Environment<'static>>,
    pub auth: Authenticator,
    /// The development issuer, when sign-in is local.
    pub dev: Option<Arc<DevIssuer>>,
    pub dev_codes: dev_sign_in::Codes,
}

/// Why a console request failed, shown as a page in one place.
#[derive(Debug, thiserror::Error)]
pub enum ConsoleError {
    /// No session (or it ended): back to the sign-in page.
    #[error("not signed in")]
    SignedOut,
    #[error("the form's CSRF token does not match the session's")]
    Forgery,
    /// The person's role does not open this page.
    #[error("this page is not for your role")]
    NotForYou,
    #[error("{0}")]
    BadInput(String),
    /// A service refused or failed: its status and problem detail.
    #[error("{service}: {status} {detail}")]
    Refused {
        service: &'static str,
        status: u16,
        code: String,
        detail: String,
    },
    #[error("{service} did not answer: {source}")]
    Unreachable {
        service: &'static str,
        source: reqwest::Error,
    },
    #[error("sign-in failed: {0}")]
    SignIn(String),
    #[error("page: {0}")]
    Template(#[from] minijinja::Error),
}

impl ConsoleError {
    fn status(&self) -> StatusCode {
        match self {
            ConsoleError::SignedOut => StatusCode::UNAUTHORIZED,
            ConsoleError::Forgery | ConsoleError::NotForYou => StatusCode::FORBIDDEN,
            ConsoleError::BadInput(_) => StatusCode::BAD_REQUEST,
            ConsoleError::Refused { status, .. } => {
                StatusCode::from_u16(*status).unwrap_or(StatusCode::BAD_GATEWAY)
            }
            ConsoleError::Unreachable { .. } => StatusCode::BAD_GATEWAY,
            ConsoleError::SignIn(_) => StatusCode::UNAUTHORIZED,
            ConsoleError::Template(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl IntoResponse for ConsoleError {
    fn into_response(self) -> Response {
        if matches!(self, ConsoleError::SignedOut) {
            return Redirect::to(&format!("{BASE}/")).into_response();
        }
        let status = self.status();
        if status.is_server_error() {
            tracing::warn!(error = %self, "console page failed");
        }
        // Said plainly, escaped; the page frame is not needed to read why.
        let text = match &self {
            ConsoleError::Refused { detail, code, .. } => format!("{detail} ({code})"),
            ConsoleError::Template(_) => "the page could not be shown".to_owned(),
            other => other.to_string(),
        };
        // A whole (small) page: a link followed shows it; htmx takes its body.
        let body = format!(
            "<!doctype html><html><head><meta charset=\"utf-8\"><title>{status}</title>\
             <link rel=\"stylesheet\" href=\"/console/assets/console.css\"></head><body><main>\
             <div class=\"notice refused\" role=\"alert\" id=\"refusal\">{}</div>\
             <p><a href=\"/console/\">renewal console</a></p></main></body></html>",
            pages::escape(&text)
        );
        let mut response = (status, Html(body)).into_response();
        // htmx swaps error answers into the page's notice area too.
        response
            .headers_mut()
            .insert("HX-Retarget", header::HeaderValue::from_static("#notice"));
        response
    }
}

impl Console {
    /// The console: templates checked, the services' client made.
    pub fn new(
        config: ConsoleConfig,
        auth: Authenticator,
        dev: Option<Arc<DevIssuer>>,
    ) -> Result<Console, ConsoleError> {
        let templates = pages::templates()?;
        Ok(Console {
            services: services::Services::new(&config),
            config: Arc::new(config),
            sessions: sessions::Sessions::default(),
            templates: Arc::new(templates),
            auth,
            dev,
            dev_codes: Default::default(),
        })
    }

    /// Mounts the console on `host`, with the identity the host verifies tokens with.
    pub fn mount(
        host: &renewal_platform::HttpHost,
        config: ConsoleConfig,
    ) -> Result<(), ConsoleError> {
        let auth = host
            .authenticator()
            .ok_or_else(|| ConsoleError::SignIn("the process has no identity provider".into()))?;
        let dev = host.dev_issuer();
        if matches!(config.provider, Provider::Development) && dev.is_none() {
            return Err(ConsoleError::SignIn(
                "the development sign-in needs the development issuer (AUTH_DEV=on)".into(),
            ));
        }
        host.mount_pages(Console::new(config, auth, dev)?.router());
        Ok(())
    }

    /// Every route of the console, under [`BASE`].
    pub fn router(self) -> Router {
        let pages = pages::routes();
        let mut router = Router::new()
            .merge(sign_in::routes())
            .merge(pages)
            .route("/console/assets/{*file}", axum::routing::get(pages::asset))
            .route("/console/openapi.json", axum::routing::get(openapi::served));
        if self.dev.is_some() {
            router = router.merge(dev_sign_in::routes());
        }
        router
            .route(
                "/console",
                axum::routing::get(|| async { Redirect::to("/console/") }),
            )
            .with_state(self)
            .layer(axum::extract::DefaultBodyLimit::max(pages::MAX_UPLOAD))
    }
}
