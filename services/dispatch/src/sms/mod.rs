//! The SMS gateway: templates, the vendor client, the sender and the receipts webhook;
//! and operations' view of the SMS that did not reach their customer, a resend, and the
//! opt-outs ([`failures`], [`opt_outs`]).

pub mod doubts;
pub mod failures;
pub mod opt_outs;
pub mod receipts;
pub mod replies;
pub mod sending;
pub mod signing;
pub mod stops;
pub mod templates;
pub mod throttle;
pub mod vendor;

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use renewal_platform::pii::{PiiCipher, PiiError};
use renewal_platform::{Caller, Clock, Problem};
use sqlx::PgPool;
use tokio::sync::Notify;
use uuid::Uuid;

/// What the operations routes read and act with (the API's pool: the sender and the
/// webhook keep connections of their own).
#[derive(Clone)]
pub struct SmsDesk {
    pub pool: PgPool,
    pub pii: Arc<PiiCipher>,
    pub clock: Clock,
    /// Wakes a sender for a message queued again.
    pub queued: Arc<Notify>,
}

/// What the operations routes can refuse, mapped to HTTP in one place.
#[derive(Debug, thiserror::Error)]
pub enum SmsError {
    #[error("no SMS {0}")]
    NotFound(Uuid),
    #[error("{0}")]
    Invalid(String),
    /// A resend of a message that is not failed or dead.
    #[error("{0}")]
    NotResendable(String),
    /// A resend for a case that wants no more contacts (closed, erased, renewed or lost
    /// on a call, a wrong number not corrected).
    #[error("{0}")]
    CaseStopped(String),
    /// A resend of a reminder to a number that opted out.
    #[error("{0}")]
    OptedOut(String),
    #[error("postgres: {0}")]
    Db(#[from] sqlx::Error),
    /// A sealed number does not open (its key is not in the keyring?).
    #[error("the number of {id} does not open: {source}")]
    Pii { id: Uuid, source: PiiError },
    /// A resend of a message (or to a case) whose number does not open.
    #[error("the number of {id} does not open, so it cannot be sent again: {source}")]
    Unreadable { id: Uuid, source: PiiError },
    /// The caller may not do this (401, 403), or a bad page token.
    #[error("{0}")]
    Refused(#[from] Problem),
}

impl IntoResponse for SmsError {
    fn into_response(self) -> Response {
        match self {
            e @ SmsError::NotFound(_) => {
                Problem::new(StatusCode::NOT_FOUND, "not_found", e.to_string())
            }
            SmsError::Invalid(d) => Problem::new(StatusCode::BAD_REQUEST, "invalid_request", d),
            SmsError::NotResendable(d) => Problem::new(StatusCode::CONFLICT, "not_resendable", d),
            SmsError::CaseStopped(d) => Problem::new(StatusCode::CONFLICT, "case_stopped", d),
            SmsError::OptedOut(d) => Problem::new(StatusCode::CONFLICT, "opted_out", d),
            SmsError::Db(e) => Problem::database(&e),
            e @ SmsError::Pii { .. } => Problem::internal(&e),
            e @ SmsError::Unreadable { .. } => {
                Problem::new(StatusCode::CONFLICT, "unreadable", e.to_string())
            }
            SmsError::Refused(p) => p,
        }
        .into_response()
    }
}

/// `GET /v1/sms?state=failed|dead`, `POST /v1/sms/{id}:resend`, `GET /v1/opt-outs`.
pub fn routes(desk: SmsDesk) -> renewal_platform::http::Routes {
    renewal_platform::http::Routes::new()
        .route("/v1/sms", get(failures::listed))
        .route("/v1/sms/{action}", post(act))
        .route("/v1/opt-outs", get(opt_outs::listed))
        .finish(|router| router.with_state(desk))
}

/// `POST /v1/sms/{id}:resend` (one path segment, as in Google's custom methods).
async fn act(
    State(desk): State<SmsDesk>,
    caller: Caller,
    Path(action): Path<String>,
) -> Result<Json<failures::Resent>, SmsError> {
    caller.require(failures::SMS_OPERATORS)?;
    let (id, verb) = action.split_once(':').unwrap_or((&action, ""));
    if verb != "resend" {
        return Err(SmsError::Invalid(format!(
            "{verb:?}: the only action on an SMS is :resend"
        )));
    }
    let id = id
        .parse::<Uuid>()
        .map_err(|_| SmsError::Invalid(format!("{id:?} is not an SMS id")))?;
    Ok(Json(failures::resend(&desk, id).await?))
}
