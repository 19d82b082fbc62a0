//! The lists service's OpenAPI document, generated from its handlers and types.

use renewal_platform::openapi::BearerTokens;
use utoipa::OpenApi;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "renewal lists",
        description = "Policy intake, renewal and lapse lists, renewal-rate reports."
    ),
    paths(
        crate::policies::show,
        crate::policies::find_by_mobile,
        crate::import::import_upload,
        crate::import::rejections_csv,
        crate::issued_lists::issue_on_demand,
        crate::kpis::renewal_rate,
        crate::reviews::monthly_analysis,
        crate::quote_import::import_quotes,
        crate::erasures::request_erasure,
        crate::erasures::show_erasure,
        audit, dead_letters, replay_dead_letter,
    ),
    components(schemas(renewal_platform::openapi::ProblemDocument)),
    modifiers(&BearerTokens),
    tags(
        (name = "policies"),
        (name = "lists"),
        (name = "reports"),
        (name = "quotes"),
        (name = "erasures"),
        (name = "audit"), (name = "dead letters")
    )
)]
pub struct ApiDoc;

/// The service's document.
pub fn document() -> utoipa::openapi::OpenApi {
    ApiDoc::openapi()
}

/// Who called lists' API (`auditor`, `hq_admin`).
#[utoipa::path(get, path = "/v1/audit/lists", tag = "audit",
    params(renewal_platform::audit::AuditQuery),
    responses((status = 200, body = renewal_platform::openapi::AuditPage),
              renewal_platform::openapi::Refusals))]
#[allow(dead_code)]
fn audit() {}

/// Messages lists gave up on (`hq_admin`), newest first; `waiting=false` shows the
/// replayed ones too. Never the payload.
#[utoipa::path(get, path = "/v1/dead-letters/lists", tag = "dead letters",
    params(renewal_platform::dead_letters::DeadLetterQuery),
    responses((status = 200, body = renewal_platform::openapi::DeadLetterPage), renewal_platform::openapi::Refusals))]
#[allow(dead_code)]
fn dead_letters() {}

/// Replays a dead letter (`hq_admin`): a consumer's message through the consumer that
/// failed it, in a transaction with its inbox (200; 409 if it fails again, kept with
/// the new reason); an event back in the relay's line (202).
#[utoipa::path(post, path = "/v1/dead-letters/lists/{id}:replay", tag = "dead letters",
    params(("id" = i64, Path, description = "the dead letter's id")),
    responses(
        (status = 200, body = renewal_platform::openapi::ReplayAnswer),
        (status = 202, body = renewal_platform::openapi::ReplayAnswer),
        (status = 404, body = renewal_platform::openapi::ProblemDocument, content_type = "application/problem+json"),
        (status = 409, body = renewal_platform::openapi::ProblemDocument, content_type = "application/problem+json"),
        renewal_platform::openapi::Refusals))]
#[allow(dead_code)]
fn replay_dead_letter() {}
