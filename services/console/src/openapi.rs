//! The console's OpenAPI 3.1 document (`/console/openapi.json`): every page and form
//! route with who it is for. The pages answer HTML, not JSON, so the document is built
//! from the table below rather than derived from handler types; a test fails when a
//! route the console mounts is missing from it.

use utoipa::openapi::path::{
    HttpMethod, OperationBuilder, ParameterBuilder, ParameterIn, PathItem, PathsBuilder,
};
use utoipa::openapi::schema::{ObjectBuilder, Type};
use utoipa::openapi::security::{ApiKey, ApiKeyValue, SecurityRequirement, SecurityScheme};
use utoipa::openapi::{ComponentsBuilder, Content, Info, OpenApi, Required, ResponseBuilder};

/// Method, path, what it is, who it is for.
pub const ROUTES: &[(&str, &str, &str, &str)] = &[
    ("get", "/console", "to the sign-in page", "anyone"),
    (
        "get",
        "/console/",
        "the sign-in page (a signed-in person: their start page)",
        "anyone",
    ),
    (
        "get",
        "/console/sign-in",
        "starts the OIDC code flow with PKCE at the identity provider",
        "anyone",
    ),
    (
        "get",
        "/console/signed-in",
        "the provider's answer: the code exchanged, a session opened",
        "anyone (with the sign-in's state cookie)",
    ),
    (
        "post",
        "/console/sign-out",
        "ends the session",
        "the signed-in person",
    ),
    (
        "get",
        "/console/lang/{lang}",
        "Chinese (zh) or English (en)",
        "anyone",
    ),
    (
        "get",
        "/console/assets/{file}",
        "the stylesheet, the page script, htmx and ECharts",
        "anyone",
    ),
    ("get", "/console/openapi.json", "this document", "anyone"),
    (
        "get",
        "/console/dev-issuer/authorize",
        "the development issuer's sign-in page (AUTH_DEV=on only)",
        "anyone",
    ),
    (
        "post",
        "/console/dev-issuer/authorize",
        "the role and scope chosen: a code back to the console",
        "anyone",
    ),
    (
        "post",
        "/console/dev-issuer/token",
        "a code and its PKCE verifier for a token",
        "the console",
    ),
    (
        "get",
        "/console/season",
        "the funnel, rates against target by branch and category, the weekly trend",
        "analyst, hq_admin, city_admin, supervisor, branch_admin",
    ),
    (
        "get",
        "/console/claims",
        "the branch's pending claims and its active agents",
        "branch_admin, supervisor, city_admin, hq_admin",
    ),
    (
        "post",
        "/console/claims",
        "claims (with an owner) or declines (with a reason) the cases chosen",
        "branch_admin, supervisor, city_admin, hq_admin (the service decides)",
    ),
    (
        "get",
        "/console/pool",
        "the city's pool",
        "city_admin, hq_admin, branch_admin, supervisor",
    ),
    (
        "post",
        "/console/pool",
        "claims the cases chosen from the pool for a branch (and owner)",
        "city_admin, hq_admin, branch_admin, supervisor (the service decides)",
    ),
    (
        "post",
        "/console/research",
        "routes the cases chosen to the branch their origin was traced to",
        "city_admin, hq_admin",
    ),
    (
        "get",
        "/console/research",
        "the city's origins to research",
        "city_admin, hq_admin",
    ),
    (
        "get",
        "/console/cases",
        "to the case of `policy_no`",
        "agent, supervisor, branch_admin, city_admin, hq_admin, call_center",
    ),
    (
        "get",
        "/console/cases/{policy_no}",
        "a case: policy (masked), owner and routing, timeline, SMS and calls",
        "agent, supervisor, branch_admin, city_admin, hq_admin, call_center",
    ),
    (
        "get",
        "/console/workbench",
        "the workbench",
        "agent, call_center",
    ),
    (
        "post",
        "/console/workbench/next",
        "leases the next call and shows its card",
        "agent, call_center",
    ),
    (
        "post",
        "/console/workbench/outcome",
        "records the call's outcome",
        "agent, call_center",
    ),
    (
        "post",
        "/console/workbench/heartbeat",
        "keeps the lease while the card is open",
        "agent, call_center",
    ),
    (
        "post",
        "/console/workbench/release",
        "puts the task back",
        "agent, call_center",
    ),
    (
        "get",
        "/console/supervisor",
        "at-risk cases and the owners' progress",
        "supervisor, branch_admin, city_admin, hq_admin",
    ),
    (
        "get",
        "/console/operations",
        "queues, dead tasks, failed and dead SMS, opt-outs, dead letters, the import",
        "hq_admin; importer (the import)",
    ),
    (
        "post",
        "/console/operations/requeue",
        "a dead task back in its queue",
        "hq_admin",
    ),
    (
        "post",
        "/console/operations/resend",
        "a failed or dead SMS queued to send again",
        "hq_admin",
    ),
    (
        "post",
        "/console/operations/replay",
        "a dead letter run again through the consumer that gave it up",
        "hq_admin",
    ),
    (
        "post",
        "/console/operations/import",
        "a policy CSV (multipart), imported by lists",
        "hq_admin, importer",
    ),
    (
        "get",
        "/console/operations/imports/{id}/rejections",
        "an import's rejected rows (CSV)",
        "hq_admin, importer",
    ),
    (
        "get",
        "/console/plans",
        "the city's reminder plan",
        "hq_admin, city_admin",
    ),
    (
        "post",
        "/console/plans",
        "saves the edited plan",
        "hq_admin, city_admin",
    ),
    (
        "post",
        "/console/plans/preview",
        "the edited plan's difference against the plan in force",
        "hq_admin, city_admin",
    ),
    (
        "get",
        "/console/organisation",
        "a branch's agents",
        "hq_admin, city_admin, branch_admin",
    ),
    (
        "post",
        "/console/organisation",
        "an agent made active or inactive",
        "hq_admin, city_admin, branch_admin",
    ),
];

/// The document.
pub fn document() -> OpenApi {
    let mut paths = PathsBuilder::new();
    for (method, path, summary, who) in ROUTES {
        let method = if *method == "post" {
            HttpMethod::Post
        } else {
            HttpMethod::Get
        };
        let answer = ResponseBuilder::new()
            .description("The page, or the part of it an htmx form replaces")
            .content(
                "text/html",
                Content::new(None::<utoipa::openapi::RefOr<utoipa::openapi::Schema>>),
            )
            .build();
        let refused = ResponseBuilder::new()
            .description("Not for this role, a bad form, a forged CSRF token, or the service's refusal, said in the page")
            .content("text/html", Content::new(None::<utoipa::openapi::RefOr<utoipa::openapi::Schema>>))
            .build();
        let mut operation = OperationBuilder::new()
            .tag("console")
            .summary(Some(*summary))
            .description(Some(format!("For: {who}.")))
            .response("200", answer)
            .response(
                "303",
                ResponseBuilder::new()
                    .description("Redirect (to the sign-in page when signed out)")
                    .build(),
            )
            .response("403", refused);
        // Each `{name}` of the path: a text parameter.
        for name in path.split('{').skip(1).filter_map(|p| p.split('}').next()) {
            let parameter = ParameterBuilder::new()
                .name(name)
                .parameter_in(ParameterIn::Path)
                .required(Required::True)
                .schema(Some(ObjectBuilder::new().schema_type(Type::String)));
            operation = operation.parameter(parameter);
        }
        if !who.starts_with("anyone") && *who != "the console" {
            operation =
                operation.security(SecurityRequirement::new("session", Vec::<String>::new()));
        }
        paths = paths.path(*path, PathItem::new(method, operation.build()));
    }
    let session = ApiKeyValue::with_description(
        crate::sessions::SESSION_COOKIE,
        "The session cookie; forms and htmx requests also carry the session's CSRF token (`csrf` field or `x-csrf-token`).",
    );
    let components = ComponentsBuilder::new()
        .security_scheme("session", SecurityScheme::ApiKey(ApiKey::Cookie(session)))
        .build();
    let mut document = OpenApi::new(
        Info::new("renewal console", env!("CARGO_PKG_VERSION")),
        paths,
    );
    document.components = Some(components);
    document
}

/// `GET /console/openapi.json`.
pub async fn served() -> axum::Json<OpenApi> {
    axum::Json(document())
}

#[cfg(test)]
mod tests {
    use super::*;

    const SOURCES: &[&str] = &[
        include_str!("lib.rs"),
        include_str!("sign_in.rs"),
        include_str!("dev_sign_in.rs"),
        include_str!("pages/mod.rs"),
        include_str!("pages/season.rs"),
        include_str!("pages/claims.rs"),
        include_str!("pages/cases.rs"),
        include_str!("pages/workbench.rs"),
        include_str!("pages/supervisor.rs"),
        include_str!("pages/operations.rs"),
        include_str!("pages/plans.rs"),
        include_str!("pages/organisation.rs"),
    ];

    /// Each `.route("path", get(..).post(..))` of the sources: (method, path).
    fn mounted() -> std::collections::BTreeSet<(String, String)> {
        let mut mounted = std::collections::BTreeSet::new();
        for source in SOURCES {
            for part in source.split(".route(").skip(1) {
                let path = part.trim_start().trim_start_matches('"');
                let Some(end) = path.find('"') else { continue };
                let (route, rest) = path.split_at(end);
                let route = route.replace("{*", "{");
                // The method router: up to the next route, or the end of the call.
                let methods = rest.split(".route(").next().unwrap_or_default();
                let methods = &methods[..methods.len().min(160)];
                for method in ["get", "post"] {
                    let called = methods.contains(&format!("{method}("))
                        || methods.contains(&format!("routing::{method}("));
                    if called && route.starts_with("/console") {
                        mounted.insert((method.to_owned(), route.clone()));
                    }
                }
            }
        }
        mounted
    }

    #[test]
    fn every_route_the_console_mounts_is_in_its_document() {
        let documented: std::collections::BTreeSet<(String, String)> = ROUTES
            .iter()
            .map(|r| (r.0.to_owned(), r.1.to_owned()))
            .collect();
        let mounted = mounted();
        assert!(mounted.len() >= 30, "{mounted:?}");
        let missing: Vec<_> = mounted.difference(&documented).collect();
        assert!(
            missing.is_empty(),
            "mounted but not documented: {missing:?}"
        );
        let stale: Vec<_> = documented.difference(&mounted).collect();
        assert!(stale.is_empty(), "documented but not mounted: {stale:?}");
        let json = serde_json::to_value(document()).expect("the document serializes");
        assert!(
            json["openapi"]
                .as_str()
                .is_some_and(|v| v.starts_with("3.1"))
        );
    }
}
