//! `GET /v1/policies/{policy_no}`: a policy's status and its renewal case, with the
//! customer's personal data masked.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use chrono::{DateTime, NaiveDate, Utc};
use serde::Serialize;
use sqlx::{PgPool, Row};

pub fn routes(pool: PgPool) -> Router {
    Router::new()
        .route("/v1/policies/{policy_no}", get(show))
        .with_state(pool)
}

#[derive(Serialize)]
struct PolicyView {
    policy_no: String,
    status: String,
    city_code: String,
    branch_code: String,
    agent_code: String,
    end_date: NaiveDate,
    mobile_masked: String,
    case: Option<CaseView>,
}

#[derive(Serialize)]
struct CaseView {
    case_id: uuid::Uuid,
    state: String,
    opened_at: DateTime<Utc>,
    closed_at: Option<DateTime<Utc>>,
}

/// Keeps the first three and last four digits: 138****5678.
pub fn mask_mobile(mobile: &str) -> String {
    let digits: Vec<char> = mobile.chars().filter(char::is_ascii_digit).collect();
    let digits = if digits.len() > 11 {
        &digits[digits.len() - 11..]
    } else {
        &digits[..]
    };
    if digits.len() < 7 {
        return "*".repeat(digits.len());
    }
    let head: String = digits[..3].iter().collect();
    let tail: String = digits[digits.len() - 4..].iter().collect();
    format!("{head}{}{tail}", "*".repeat(digits.len() - 7))
}

async fn show(State(pool): State<PgPool>, Path(policy_no): Path<String>) -> Response {
    let row = sqlx::query(
        "SELECT p.policy_no, p.status, p.city_code, p.branch_code, p.agent_code, p.end_date, p.mobile,
                c.case_id, c.state, c.opened_at, c.closed_at
         FROM lists.policies p LEFT JOIN lists.cases c USING (policy_no)
         WHERE p.policy_no = $1",
    )
    .bind(&policy_no)
    .fetch_optional(&pool)
    .await;
    let view = match row {
        Ok(Some(row)) => read(&row),
        Ok(None) => {
            return (
                StatusCode::NOT_FOUND,
                Json(serde_json::json!({"error": "unknown_policy"})),
            )
                .into_response();
        }
        Err(e) => Err(e),
    };
    match view {
        Ok(view) => Json(view).into_response(),
        Err(e) => {
            tracing::error!(error = %e, "reading a policy failed");
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                Json(serde_json::json!({"error": "internal"})),
            )
                .into_response()
        }
    }
}

fn read(row: &sqlx::postgres::PgRow) -> Result<PolicyView, sqlx::Error> {
    let case_id: Option<uuid::Uuid> = row.try_get("case_id")?;
    let case = match case_id {
        Some(case_id) => Some(CaseView {
            case_id,
            state: row.try_get("state")?,
            opened_at: row.try_get("opened_at")?,
            closed_at: row.try_get("closed_at")?,
        }),
        None => None,
    };
    Ok(PolicyView {
        policy_no: row.try_get("policy_no")?,
        status: row.try_get("status")?,
        city_code: row.try_get("city_code")?,
        branch_code: row.try_get("branch_code")?,
        agent_code: row.try_get("agent_code")?,
        end_date: row.try_get("end_date")?,
        mobile_masked: mask_mobile(&row.try_get::<String, _>("mobile")?),
        case,
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn masks_the_middle_of_a_mobile() {
        assert_eq!(super::mask_mobile("13812345678"), "138****5678");
        assert_eq!(super::mask_mobile("+86 138 1234 5678"), "138****5678");
        assert_eq!(super::mask_mobile("123"), "***");
    }
}
