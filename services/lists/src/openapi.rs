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
        audit,
    ),
    components(schemas(renewal_platform::openapi::ProblemDocument)),
    modifiers(&BearerTokens),
    tags(
        (name = "policies"),
        (name = "lists"),
        (name = "reports"),
        (name = "audit")
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
