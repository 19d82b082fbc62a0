//! The scheduler's OpenAPI document, generated from its handlers and types.

use renewal_platform::openapi::BearerTokens;
use utoipa::OpenApi;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "renewal scheduler",
        description = "Reminder plans per city, and each case's timeline of contacts."
    ),
    paths(
        crate::plan_versions::show,
        crate::plan_versions::replace,
        crate::timeline::timeline,
        audit, dead_letters, replay_dead_letter
    ),
    components(schemas(renewal_platform::openapi::ProblemDocument)),
    modifiers(&BearerTokens),
    tags((name = "plans"), (name = "cases"), (name = "audit"), (name = "dead letters"))
)]
pub struct ApiDoc;

pub fn document() -> utoipa::openapi::OpenApi {
    ApiDoc::openapi()
}

/// Who called the scheduler's API (`auditor`, `hq_admin`).
#[utoipa::path(get, path = "/v1/audit/scheduler", tag = "audit",
    params(renewal_platform::audit::AuditQuery),
    responses((status = 200, body = renewal_platform::openapi::AuditPage),
              renewal_platform::openapi::Refusals))]
#[allow(dead_code)]
fn audit() {}

/// Messages scheduler gave up on (`hq_admin`), newest first; `waiting=false` shows the
/// replayed ones too. Never the payload.
#[utoipa::path(get, path = "/v1/dead-letters/scheduler", tag = "dead letters",
    params(renewal_platform::dead_letters::DeadLetterQuery),
    responses((status = 200, body = renewal_platform::openapi::DeadLetterPage), renewal_platform::openapi::Refusals))]
#[allow(dead_code)]
fn dead_letters() {}

/// Replays a dead letter (`hq_admin`): a consumer's message through the consumer that
/// failed it, in a transaction with its inbox (200; 409 if it fails again, kept with
/// the new reason); an event back in the relay's line (202).
#[utoipa::path(post, path = "/v1/dead-letters/scheduler/{id}:replay", tag = "dead letters",
    params(("id" = i64, Path, description = "the dead letter's id")),
    responses(
        (status = 200, body = renewal_platform::openapi::ReplayAnswer),
        (status = 202, body = renewal_platform::openapi::ReplayAnswer),
        (status = 404, body = renewal_platform::openapi::ProblemDocument, content_type = "application/problem+json"),
        (status = 409, body = renewal_platform::openapi::ProblemDocument, content_type = "application/problem+json"),
        renewal_platform::openapi::Refusals))]
#[allow(dead_code)]
fn replay_dead_letter() {}
