//! Why a request is refused, mapped to HTTP in this one place: a clear 4xx with a
//! reason, and nothing changed.

use axum::Json;
use axum::extract::rejection::JsonRejection;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

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
    #[error("the case is on branch {owner}'s list, not {branch}'s")]
    NotYourBranch { owner: String, branch: String },
    #[error("the case is in city {city}'s pool; branch {branch} is not in that city")]
    NotYourCity { city: String, branch: String },
    #[error("the case was already claimed (owner {owner})")]
    AlreadyClaimed { owner: String },
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
            Refusal::AlreadyClaimed { .. } => (StatusCode::CONFLICT, "already_claimed"),
            Refusal::OwnerBeingReplaced { .. } => (StatusCode::CONFLICT, "owner_being_replaced"),
            Refusal::WrongPhase { .. } => (StatusCode::CONFLICT, "wrong_phase"),
            Refusal::Closed => (StatusCode::CONFLICT, "case_closed"),
            Refusal::NotOwner { .. } => (StatusCode::FORBIDDEN, "not_owner"),
            Refusal::Db(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        }
    }
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        let (status, code) = self.status_and_code();
        let detail = if let Refusal::Db(e) = &self {
            tracing::error!(error = %e, "assignment request failed");
            "the request failed; nothing was changed".to_owned()
        } else {
            self.to_string()
        };
        (
            status,
            Json(serde_json::json!({"error": code, "detail": detail})),
        )
            .into_response()
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
