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
        audit
    ),
    components(schemas(renewal_platform::openapi::ProblemDocument)),
    modifiers(&BearerTokens),
    tags((name = "plans"), (name = "cases"), (name = "audit"))
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
