//! Read-only facts for the funnel report and the demo's checks.

use chrono::{DateTime, NaiveDate, Utc};
use sqlx::{PgPool, Row};

#[derive(Debug, Clone)]
pub struct CaseFacts {
    pub case_id: uuid::Uuid,
    pub policy_no: String,
    pub expiry_date: NaiveDate,
    pub state: String,
    pub opened_at: DateTime<Utc>,
    pub closed_at: Option<DateTime<Utc>>,
}

pub async fn policy_count(pool: &PgPool) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar("SELECT count(*) FROM lists.policies")
        .fetch_one(pool)
        .await
}

pub async fn cases(pool: &PgPool) -> Result<Vec<CaseFacts>, sqlx::Error> {
    let rows = sqlx::query(
        "SELECT case_id, policy_no, expiry_date, state, opened_at, closed_at FROM lists.cases ORDER BY policy_no",
    )
    .fetch_all(pool)
    .await?;
    rows.iter()
        .map(|r| {
            Ok(CaseFacts {
                case_id: r.try_get("case_id")?,
                policy_no: r.try_get("policy_no")?,
                expiry_date: r.try_get("expiry_date")?,
                state: r.try_get("state")?,
                opened_at: r.try_get("opened_at")?,
                closed_at: r.try_get("closed_at")?,
            })
        })
        .collect()
}

/// Portfolio rows whose personal data is not sealed (a sealed value starts with its key
/// version and is at least 29 bytes), or that hold something shaped like a mainland
/// mobile or resident ID number in a clear column.
pub async fn pii_readable_at_rest(pool: &PgPool) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar(
        r"SELECT count(*) FROM lists.policies
          WHERE length(name_enc) < 29 OR substring(name_enc FROM 1 FOR 1) <> '\x01'::bytea
             OR length(mobile_enc) < 29 OR substring(mobile_enc FROM 1 FOR 1) <> '\x01'::bytea
             OR length(id_number_enc) < 29 OR substring(id_number_enc FROM 1 FOR 1) <> '\x01'::bytea
             OR concat_ws(' ', policy_no, plate, vin, city_code, branch_code, agent_code)
                ~ '(^|[^0-9])(1[3-9][0-9]{9}|[0-9]{17}[0-9X])($|[^0-9])'",
    )
    .fetch_one(pool)
    .await
}
