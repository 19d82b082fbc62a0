//! Why a request is refused, mapped to HTTP in this one place: a clear 4xx with a
//! reason (RFC 9457 problem+json), and nothing changed. A refusal never names
//! another branch's owner or another city.

use axum::Json;
use axum::extract::rejection::JsonRejection;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use renewal_platform::Problem;

#[derive(Debug, thiserror::Error)]
pub enum Refusal {
    #[error("{0}")]
    Invalid(String),
    #[error("no case for policy {0}")]
    UnknownCase(String),
    #[error("no branch {0}")]
    UnknownBranch(String),
    #[error("no agent {0}")]
    UnknownAgent(String),
    #[error("agent {0} is not active")]
    InactiveAgent(String),
    #[error("agent {agent} works for branch {agent_branch}, not {branch}")]
    AgentNotInBranch {
        agent: String,
        agent_branch: String,
        branch: String,
    },
    #[error("the case is on another branch's list, not {branch}'s")]
    NotYourBranch { branch: String },
    #[error("the case is in another city's pool; branch {branch} is not in that city")]
    NotYourCity { branch: String },
    #[error("the case was already claimed")]
    AlreadyClaimed,
    #[error(
        "the case is being reassigned away from {owner}, who did not confirm it; another agent must take it"
    )]
    OwnerBeingReplaced { owner: String },
    #[error("the case cannot be {action} now: it is {phase}")]
    WrongPhase { action: &'static str, phase: String },
    #[error("the case is closed")]
    Closed,
    #[error("{agent} does not own the case")]
    NotOwner { agent: String },
    #[error("no discount request {0}")]
    UnknownDiscount(String),
    #[error("the discount request is {state}, no longer awaiting a decision")]
    DiscountDecided { state: String },
    /// Who is calling may not do this (401, 403).
    #[error("{0}")]
    Denied(#[from] Problem),
    #[error("postgres: {0}")]
    Db(#[from] sqlx::Error),
}

impl Refusal {
    fn status_and_code(&self) -> (StatusCode, &'static str) {
        match self {
            Refusal::Invalid(_) => (StatusCode::BAD_REQUEST, "invalid_request"),
            Refusal::UnknownCase(_) => (StatusCode::NOT_FOUND, "unknown_case"),
            Refusal::UnknownBranch(_) => (StatusCode::UNPROCESSABLE_ENTITY, "unknown_branch"),
            Refusal::UnknownAgent(_) => (StatusCode::UNPROCESSABLE_ENTITY, "unknown_agent"),
            Refusal::InactiveAgent(_) => (StatusCode::UNPROCESSABLE_ENTITY, "inactive_agent"),
            Refusal::AgentNotInBranch { .. } => {
                (StatusCode::UNPROCESSABLE_ENTITY, "agent_not_in_branch")
            }
            Refusal::NotYourBranch { .. } => (StatusCode::FORBIDDEN, "not_your_branch"),
            Refusal::NotYourCity { .. } => (StatusCode::FORBIDDEN, "not_your_city"),
            Refusal::AlreadyClaimed => (StatusCode::CONFLICT, "already_claimed"),
            Refusal::OwnerBeingReplaced { .. } => (StatusCode::CONFLICT, "owner_being_replaced"),
            Refusal::WrongPhase { .. } => (StatusCode::CONFLICT, "wrong_phase"),
            Refusal::Closed => (StatusCode::CONFLICT, "case_closed"),
            Refusal::NotOwner { .. } => (StatusCode::FORBIDDEN, "not_owner"),
            Refusal::UnknownDiscount(_) => (StatusCode::NOT_FOUND, "unknown_discount"),
            Refusal::DiscountDecided { .. } => (StatusCode::CONFLICT, "discount_decided"),
            Refusal::Denied(p) => (p.status_code(), "denied"),
            Refusal::Db(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        }
    }
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        let (status, code) = self.status_and_code();
        match self {
            Refusal::Denied(problem) => problem.into_response(),
            Refusal::Db(e) => Problem::database(&e).into_response(),
            other => Problem::new(status, code, other.to_string()).into_response(),
        }
    }
}

/// A JSON body, or a 400 saying what is wrong with it.
pub fn body<T>(json: Result<Json<T>, JsonRejection>) -> Result<T, Refusal> {
    json.map(|Json(v)| v)
        .map_err(|e| Refusal::Invalid(e.body_text()))
}

/// A required text field: present and not blank.
pub fn required<'a>(name: &str, value: &'a str) -> Result<&'a str, Refusal> {
    let v = value.trim();
    if v.is_empty() {
        Err(Refusal::Invalid(format!("{name} is required")))
    } else {
        Ok(v)
    }
}
