//! What every service's OpenAPI document shares: the bearer-token security scheme
//! (applied to every operation but those that name their own), the problem+json
//! error, the page envelope, and the audit log's entries. Each service derives its
//! own document with `utoipa` from its handlers and types (`<service>/src/openapi.rs`)
//! and publishes it on the process's [`crate::HttpHost`].

use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityRequirement, SecurityScheme};
use utoipa::{Modify, ToSchema};

/// Adds the `bearer` scheme (the identity provider's JWT) and requires it of every
/// operation that does not say otherwise.
pub struct BearerTokens;

impl Modify for BearerTokens {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_default();
        let mut bearer = Http::new(HttpAuthScheme::Bearer);
        bearer.bearer_format = Some("JWT".into());
        bearer.description = Some(
            "A JWT from the insurer's identity provider: `roles`, and the caller's \
             `agent_code`, `branch_code` and `city_code`."
                .into(),
        );
        components.add_security_scheme("bearer", SecurityScheme::Http(bearer));
        openapi.security = Some(vec![SecurityRequirement::new(
            "bearer",
            Vec::<String>::new(),
        )]);
    }
}

/// An error or refusal (RFC 9457).
#[derive(ToSchema)]
#[schema(as = Problem)]
#[allow(dead_code)]
pub struct ProblemDocument {
    /// `https://renewal.invalid/problems/{code}`.
    #[schema(rename = "type")]
    type_uri: String,
    title: String,
    status: u16,
    detail: String,
    /// Stable and machine-readable, e.g. `not_your_branch`, `forbidden_role`.
    code: String,
}

/// An audit entry as the auditor reads it.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct AuditEntry {
    at: chrono::DateTime<chrono::Utc>,
    subject: String,
    role: String,
    method: String,
    route: String,
    target: String,
    request_id: String,
    status: u16,
}

/// A page of the audit log, newest first.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct AuditPage {
    entries: Vec<AuditEntry>,
    next_page_token: Option<String>,
}

/// A page of a service's dead letters, newest first.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct DeadLetterPage {
    items: Vec<crate::dead_letters::DeadLetter>,
    next_page_token: Option<String>,
}

/// What a replay did: `applied`, `already_applied` (the consumer had handled it),
/// `requeued` (an event back in the relay's line).
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct ReplayAnswer {
    id: i64,
    result: String,
}

/// The usual refusals of a route that needs a caller.
#[derive(utoipa::IntoResponses)]
#[allow(dead_code)]
pub enum Refusals {
    /// No token, a bad or expired one, or one from another issuer.
    #[response(status = 401, content_type = "application/problem+json")]
    Unauthenticated(ProblemDocument),
    /// A role the route does not admit, or a target outside the caller's scope.
    #[response(status = 403, content_type = "application/problem+json")]
    Forbidden(ProblemDocument),
}
