//! The assignment service's OpenAPI document, generated from its handlers and types.
//! The custom methods (`{policy_no}:claim`, `:decline`, `:resolve`, `:confirm`,
//! `:release`) are served by one handler per path and documented here, one operation
//! each, as clients call them.

use renewal_platform::openapi::BearerTokens;
use renewal_platform::openapi::{ProblemDocument, Refusals};
use utoipa::{OpenApi, ToSchema};

use crate::claims::{ClaimRequest, ResearchRequest};
use crate::second_assignment::OwnerAnswer;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "renewal assignment",
        description = "Claims, the city pool and research, owners and the second assignment, the organisation."
    ),
    paths(
        crate::claims::branch_claims,
        crate::claims::city_pool,
        crate::claims::city_research,
        claim,
        decline,
        resolve,
        crate::case_history::show,
        confirm,
        release,
        crate::case_history::attribution,
        crate::supervision::branch_alerts,
        crate::org::import_csv,
        crate::org::show_agent,
        crate::org::edit_agent,
        crate::org::branch_agents,
        crate::org::get_settings,
        crate::org::put_settings,
        crate::discounts::request_discount,
        crate::discounts::pending_discounts,
        crate::discounts::decide,
        crate::discounts::get_ladder,
        crate::discounts::put_ladder,
        crate::progress::owner_progress,
        crate::progress::branch_week,
        crate::season::ownership,
        audit, dead_letters, replay_dead_letter,
    ),
    components(schemas(ProblemDocument)),
    modifiers(&BearerTokens),
    tags(
        (name = "claims"),
        (name = "cases"),
        (name = "organisation"),
        (name = "reports"),
        (name = "supervision"),
        (name = "discounts"),
        (name = "audit"), (name = "dead letters")
    )
)]
pub struct ApiDoc;

pub fn document() -> utoipa::openapi::OpenApi {
    ApiDoc::openapi()
}

/// The answer to a claim (its retry gets the same).
#[derive(ToSchema)]
#[allow(dead_code)]
struct Claimed {
    policy_no: String,
    owner_agent: String,
    branch_code: String,
    /// branch_claim, city_pool, second_assignment_branch, ...
    reason: Option<String>,
}

#[derive(ToSchema)]
#[allow(dead_code)]
struct Declined {
    policy_no: String,
    phase: String,
    pool_deadline: chrono::DateTime<chrono::Utc>,
}

#[derive(ToSchema)]
#[allow(dead_code)]
struct Resolved {
    policy_no: String,
    branch_code: String,
    claim_deadline: chrono::DateTime<chrono::Utc>,
}

#[derive(ToSchema)]
#[allow(dead_code)]
struct Answered {
    policy_no: String,
    phase: String,
}

/// A branch claims a case naming its owner; first claim wins.
#[utoipa::path(post, path = "/v1/claims/{policy_no}:claim", tag = "claims",
    operation_id = "claim",
    params(("policy_no" = String, Path)), request_body = ClaimRequest,
    responses(
        (status = 200, body = Claimed),
        (status = 400, content_type = "application/problem+json", body = ProblemDocument),
        Refusals,
        (status = 404, content_type = "application/problem+json", body = ProblemDocument),
        (status = 409, description = "Claimed by another, or not claimable now", content_type = "application/problem+json", body = ProblemDocument),
        (status = 422, description = "Unknown or inactive agent or branch", content_type = "application/problem+json", body = ProblemDocument)))]
#[allow(dead_code)]
fn claim() {}

/// A branch declines a case on its list, with a reason: it opens to the city's pool.
#[utoipa::path(post, path = "/v1/claims/{policy_no}:decline", tag = "claims",
    operation_id = "decline",
    params(("policy_no" = String, Path)), request_body = ClaimRequest,
    responses(
        (status = 200, body = Declined),
        (status = 400, content_type = "application/problem+json", body = ProblemDocument),
        Refusals,
        (status = 404, content_type = "application/problem+json", body = ProblemDocument),
        (status = 409, content_type = "application/problem+json", body = ProblemDocument)))]
#[allow(dead_code)]
fn decline() {}

/// The city gives a researched case its branch.
#[utoipa::path(post, path = "/v1/research/{policy_no}:resolve", tag = "claims",
    operation_id = "resolve_research",
    params(("policy_no" = String, Path)), request_body = ResearchRequest,
    responses(
        (status = 200, body = Resolved),
        (status = 400, content_type = "application/problem+json", body = ProblemDocument),
        Refusals,
        (status = 409, content_type = "application/problem+json", body = ProblemDocument)))]
#[allow(dead_code)]
fn resolve() {}

/// The owner confirms at T-5 that they can still renew the case.
#[utoipa::path(post, path = "/v1/cases/{policy_no}:confirm", tag = "cases",
    operation_id = "confirm_owner",
    params(("policy_no" = String, Path)), request_body = OwnerAnswer,
    responses(
        (status = 200, body = Answered),
        Refusals,
        (status = 409, content_type = "application/problem+json", body = ProblemDocument)))]
#[allow(dead_code)]
fn confirm() {}

/// The owner cannot renew the case in time (with a reason): second assignment moves it.
#[utoipa::path(post, path = "/v1/cases/{policy_no}:release", tag = "cases",
    operation_id = "release_case",
    params(("policy_no" = String, Path)), request_body = OwnerAnswer,
    responses(
        (status = 200, body = Answered),
        Refusals,
        (status = 409, content_type = "application/problem+json", body = ProblemDocument)))]
#[allow(dead_code)]
fn release() {}

/// Who called assignment's API (`auditor`, `hq_admin`).
#[utoipa::path(get, path = "/v1/audit/assignment", tag = "audit",
    params(renewal_platform::audit::AuditQuery),
    responses((status = 200, body = renewal_platform::openapi::AuditPage), Refusals))]
#[allow(dead_code)]
fn audit() {}

/// Messages assignment gave up on (`hq_admin`), newest first; `waiting=false` shows the
/// replayed ones too. Never the payload.
#[utoipa::path(get, path = "/v1/dead-letters/assignment", tag = "dead letters",
    params(renewal_platform::dead_letters::DeadLetterQuery),
    responses((status = 200, body = renewal_platform::openapi::DeadLetterPage), Refusals))]
#[allow(dead_code)]
fn dead_letters() {}

/// Replays a dead letter (`hq_admin`): a consumer's message through the consumer that
/// failed it, in a transaction with its inbox (200; 409 if it fails again, kept with
/// the new reason); an event back in the relay's line (202).
#[utoipa::path(post, path = "/v1/dead-letters/assignment/{id}:replay", tag = "dead letters",
    params(("id" = i64, Path, description = "the dead letter's id")),
    responses(
        (status = 200, body = renewal_platform::openapi::ReplayAnswer),
        (status = 202, body = renewal_platform::openapi::ReplayAnswer),
        (status = 404, body = ProblemDocument, content_type = "application/problem+json"),
        (status = 409, body = ProblemDocument, content_type = "application/problem+json"),
        Refusals))]
#[allow(dead_code)]
fn replay_dead_letter() {}
