//! The one error format every route answers with: RFC 9457 `application/problem+json`
//! (`type`, `title`, `status`, `detail`) plus the stable `code` clients branch on and
//! the request id to quote to support. Each service keeps its own `thiserror` enum and
//! maps it here in one place; only the SMS vendor's webhook keeps the vendor's format.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

/// Where the problem types are described (a URI reference, as RFC 9457 allows).
pub const TYPE_BASE: &str = "https://renewal.invalid/problems/";

/// A refusal or failure as RFC 9457 describes it; `type` and `title` follow from the
/// code and the status when it is written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub status: u16,
    /// Stable, machine-readable: `not_your_branch`, `lease_conflict`, ...
    pub code: String,
    pub detail: String,
    /// Extension members (RFC 9457 §3.2), such as the rows a CSV was refused for.
    pub extensions: Option<Box<serde_json::Map<String, serde_json::Value>>>,
    /// Seconds to wait before trying again (`Retry-After`, with 429 and 503).
    pub retry_after: Option<u32>,
}

/// The document as written.
#[derive(Serialize)]
struct Document<'a> {
    #[serde(rename = "type")]
    type_uri: String,
    title: &'a str,
    status: u16,
    detail: &'a str,
    code: &'a str,
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    extensions: Option<&'a serde_json::Map<String, serde_json::Value>>,
}

impl Serialize for Problem {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        Document {
            type_uri: format!("{TYPE_BASE}{}", self.code),
            title: self.status_code().canonical_reason().unwrap_or("Error"),
            status: self.status,
            detail: &self.detail,
            code: &self.code,
            extensions: self.extensions.as_deref(),
        }
        .serialize(serializer)
    }
}

impl Problem {
    pub fn new(status: StatusCode, code: &str, detail: impl Into<String>) -> Problem {
        Problem {
            status: status.as_u16(),
            detail: detail.into(),
            code: code.to_owned(),
            extensions: None,
            retry_after: None,
        }
    }

    /// Tells the caller when to try again.
    pub fn retry_after(mut self, seconds: u32) -> Problem {
        self.retry_after = Some(seconds.max(1));
        self
    }

    /// Adds an extension member.
    pub fn with(mut self, name: &str, value: impl Serialize) -> Problem {
        self.extensions.get_or_insert_default().insert(
            name.to_owned(),
            serde_json::to_value(value).unwrap_or_default(),
        );
        self
    }

    pub fn bad_request(detail: impl Into<String>) -> Problem {
        Problem::new(StatusCode::BAD_REQUEST, "invalid_request", detail)
    }

    /// A failure of ours (Postgres, NATS): logged with its cause, answered without it.
    pub fn internal(cause: &dyn std::fmt::Display) -> Problem {
        tracing::error!(error = %cause, "request failed");
        Problem::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "the request failed; nothing was changed",
        )
    }

    /// Postgres or a batch this request joined failed: try again shortly.
    pub fn unavailable(cause: &dyn std::fmt::Display) -> Problem {
        tracing::error!(error = %cause, "request failed");
        Problem::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "temporarily unavailable; nothing was changed",
        )
        .retry_after(1)
    }

    /// A Postgres failure: when every connection is busy, the database is out of
    /// reach or the transaction lost a race and was rolled back, 503 with `Retry-After` (the same request will do once it answers);
    /// anything else is ours, 500.
    pub fn database(e: &sqlx::Error) -> Problem {
        match e {
            sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::Io(_) => {
                Problem::unavailable(e)
            }
            // Serialization failures and deadlocks: the transaction was rolled back.
            sqlx::Error::Database(d) if matches!(d.code().as_deref(), Some("40001" | "40P01")) => {
                Problem::unavailable(e)
            }
            other => Problem::internal(other),
        }
    }

    pub fn status_code(&self) -> StatusCode {
        StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
    }
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}: {}", self.status, self.code, self.detail)
    }
}

impl std::error::Error for Problem {}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let status = self.status_code();
        let body = serde_json::to_vec(&self).unwrap_or_default();
        let mut response = (status, body).into_response();
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        if let Some(seconds) = self.retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        if status == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_problem_carries_the_rfc_9457_members_and_its_code() {
        let p = Problem::new(StatusCode::FORBIDDEN, "not_your_branch", "SH02's case");
        let v = serde_json::to_value(&p).expect("serialises");
        assert_eq!(
            v["type"],
            "https://renewal.invalid/problems/not_your_branch"
        );
        assert_eq!(v["title"], "Forbidden");
        assert_eq!(v["status"], 403);
        assert_eq!(v["code"], "not_your_branch");
        let response = p.into_response();
        assert_eq!(response.status(), StatusCode::FORBIDDEN);
        assert_eq!(
            response.headers()[header::CONTENT_TYPE],
            "application/problem+json"
        );
    }
}
