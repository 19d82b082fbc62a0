//! `POST /v1/quotes:import`: the core system's quotes as CSV (UTF-8), the same as
//! `core.quote.issued`. Columns: `quote_id, policy_no, premium, last_premium,
//! claim_free_years, ncd_level, compulsory, commercial, valid_until`, optionally
//! `promotion` and `issued_at` (RFC 3339; default: the upload's time). Amounts in yuan.
//! Good rows are kept in one transaction and announced to dispatch; each bad row is
//! answered with its line, column and reason. A quote older than the one kept changes
//! nothing, so a repeated file changes nothing.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use chrono::{DateTime, Utc};
use renewal_contract::core::QuoteIssued;
use renewal_platform::{Caller, Clock, Outbox, Problem, Role};
use serde::Serialize;
use sqlx::PgPool;

use crate::policy_checks::yuan_to_fen;
use crate::quotes;

/// Most rows one upload takes (a month of quotes for a large city).
pub const MAX_ROWS: usize = 200_000;
/// Rejections answered in full (the count is always given).
const REJECTIONS_SHOWN: usize = 1_000;

const REQUIRED: [&str; 9] = [
    "quote_id",
    "policy_no",
    "premium",
    "last_premium",
    "claim_free_years",
    "ncd_level",
    "compulsory",
    "commercial",
    "valid_until",
];

#[derive(Clone)]
pub struct QuoteImportApi {
    pub pool: PgPool,
    pub outbox: Outbox,
    pub clock: Clock,
    pub max_bytes: usize,
}

#[derive(Debug, thiserror::Error)]
enum QuoteImportError {
    #[error("{0}")]
    Refused(#[from] Problem),
    #[error("invalid file: {0}")]
    File(String),
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
}

impl IntoResponse for QuoteImportError {
    fn into_response(self) -> Response {
        match self {
            QuoteImportError::Refused(p) => p,
            QuoteImportError::File(detail) => {
                Problem::new(StatusCode::BAD_REQUEST, "invalid_file", detail)
            }
            QuoteImportError::Database(e) => Problem::database(&e),
        }
        .into_response()
    }
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Rejection {
    /// The line of the file (the header is line 1).
    pub line: u64,
    pub column: String,
    pub reason: String,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct QuoteImportReport {
    pub rows: usize,
    /// Kept as the policy's current quote.
    pub stored: usize,
    /// Older than (or the same as) the quote kept: nothing changed.
    pub unchanged: usize,
    pub rejected: usize,
    /// Cases whose new terms went to dispatch.
    pub announced: usize,
    pub rejections: Vec<Rejection>,
}

pub fn routes(api: QuoteImportApi) -> renewal_platform::http::Routes {
    let max = api.max_bytes;
    renewal_platform::http::Routes::new()
        .route("/v1/quotes:import", post(import_quotes))
        .finish(|router| {
            router
                .layer(axum::extract::DefaultBodyLimit::max(max))
                .with_state(api)
        })
}

/// One row as the event it stands for, or what is wrong with it.
fn read_row(
    header: &csv::StringRecord,
    record: &csv::StringRecord,
    now: DateTime<Utc>,
) -> Result<QuoteIssued, Vec<(String, String)>> {
    let field = |name: &str| {
        header
            .iter()
            .position(|h| h == name)
            .and_then(|i| record.get(i))
            .unwrap_or("")
            .trim()
    };
    let mut problems = Vec::new();
    let mut fen = |name: &str| match field(name) {
        "" if name != "premium" => 0,
        text => yuan_to_fen(text).unwrap_or_else(|reason| {
            problems.push((name.to_owned(), reason));
            0
        }),
    };
    let (premium, last, compulsory, commercial) = (
        fen("premium"),
        fen("last_premium"),
        fen("compulsory"),
        fen("commercial"),
    );
    let mut int = |name: &str| {
        field(name).parse::<i32>().unwrap_or_else(|_| {
            problems.push((name.to_owned(), "must be a whole number".into()));
            0
        })
    };
    let (claim_free_years, ncd_level) = (int("claim_free_years"), int("ncd_level"));
    let issued_at = match field("issued_at") {
        "" => now,
        text => DateTime::parse_from_rfc3339(text)
            .map(|t| t.with_timezone(&Utc))
            .unwrap_or_else(|_| {
                problems.push(("issued_at".into(), "must be a time as RFC 3339".into()));
                now
            }),
    };
    if !problems.is_empty() {
        return Err(problems);
    }
    Ok(QuoteIssued {
        quote_id: field("quote_id").to_owned(),
        policy_no: field("policy_no").to_owned(),
        premium_fen: premium,
        last_premium_fen: last,
        claim_free_years,
        ncd_level,
        compulsory_fen: compulsory,
        commercial_fen: commercial,
        valid_until: field("valid_until").to_owned(),
        promotion: field("promotion").to_owned(),
        issued_at_ms: issued_at.timestamp_millis(),
    })
}

/// A file read: the quotes that passed their checks (by line) and the rejections.
type Read = (Vec<(u64, quotes::Quote)>, Vec<Rejection>);

/// Reads the file.
fn read_file(body: &[u8], now: DateTime<Utc>) -> Result<Read, QuoteImportError> {
    let body = body.strip_prefix("\u{feff}".as_bytes()).unwrap_or(body);
    let mut reader = csv::ReaderBuilder::new().flexible(true).from_reader(body);
    let header = reader
        .headers()
        .map_err(|e| QuoteImportError::File(format!("header: {e}")))?
        .clone();
    let header = csv::StringRecord::from(header.iter().map(str::trim).collect::<Vec<_>>());
    let missing: Vec<&str> = REQUIRED
        .into_iter()
        .filter(|c| !header.iter().any(|h| h == *c))
        .collect();
    if !missing.is_empty() {
        return Err(QuoteImportError::File(format!(
            "the header lacks {}",
            missing.join(", ")
        )));
    }
    let (mut good, mut rejections) = (Vec::new(), Vec::new());
    for (i, record) in reader.records().enumerate() {
        if i >= MAX_ROWS {
            return Err(QuoteImportError::File(format!(
                "more than {MAX_ROWS} rows; split the file"
            )));
        }
        let line = i as u64 + 2;
        let record = record.map_err(|e| QuoteImportError::File(format!("line {line}: {e}")))?;
        let checked = read_row(&header, &record, now).and_then(|event| {
            quotes::check(&event).map_err(|bad| {
                bad.into_iter()
                    .map(|b| (b.column.to_owned(), b.reason))
                    .collect()
            })
        });
        match checked {
            Ok(quote) => good.push((line, quote)),
            Err(problems) => {
                rejections.extend(problems.into_iter().map(|(column, reason)| Rejection {
                    line,
                    column,
                    reason,
                }))
            }
        }
    }
    Ok((good, rejections))
}

/// Loading quotes is for the core system's importer and HQ.
const IMPORTERS: &[Role] = &[Role::Importer, Role::HqAdmin];

#[utoipa::path(post, path = "/v1/quotes:import", tag = "quotes",
    request_body(content = String, content_type = "text/csv",
        description = "quote_id, policy_no, premium, last_premium, claim_free_years, ncd_level, compulsory, commercial, valid_until[, promotion][, issued_at]"),
    responses((status = 200, body = QuoteImportReport, description = "Rows kept, unchanged and rejected, with each rejection's line, column and reason"),
              (status = 400, content_type = "application/problem+json", body = renewal_platform::openapi::ProblemDocument),
              renewal_platform::openapi::Refusals,
              (status = 413, description = "Larger than IMPORT_MAX_BYTES")))]
async fn import_quotes(
    State(api): State<QuoteImportApi>,
    caller: Caller,
    body: axum::body::Bytes,
) -> Result<Json<QuoteImportReport>, QuoteImportError> {
    caller.require(IMPORTERS)?;
    let now = api.clock.now();
    let (good, mut rejections) = read_file(&body, now)?;
    let rejected_lines = {
        let mut lines: Vec<u64> = rejections.iter().map(|r| r.line).collect();
        lines.dedup();
        lines.len()
    };
    let mut tx = api.pool.begin().await?;
    let mut stored = Vec::new();
    for (_, quote) in &good {
        if quotes::store(&mut tx, quote, "csv", now).await? {
            stored.push(quote.policy_no.clone());
        }
    }
    let announced = quotes::announce(&mut tx, &api.outbox, Some(&stored), now).await?;
    let stored = stored.len();
    tx.commit().await?;
    api.outbox.wake();
    metrics::counter!("quotes_total", "source" => "csv").increment(stored as u64);
    rejections.truncate(REJECTIONS_SHOWN);
    Ok(Json(QuoteImportReport {
        rows: good.len() + rejected_lines,
        stored,
        unchanged: good.len() - stored,
        rejected: rejected_lines,
        announced,
        rejections,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn good_rows_are_read_and_bad_ones_named_by_line_and_column() {
        let file = "quote_id,policy_no,premium,last_premium,claim_free_years,ncd_level,compulsory,commercial,valid_until,promotion\n\
                    Q1,P1,4200.00,4520.00,2,-2,950,3250,2027-02-14,赠送道路救援卡\n\
                    Q2,P2,abc,4520.00,2,-2,950,3250,2027-02-14,\n\
                    Q3,P3,4200.00,4520.00,x,-2,950,3250,2027-02-30,\n";
        let (good, bad) = read_file(file.as_bytes(), Utc::now()).expect("readable");
        assert_eq!(good.len(), 1);
        assert_eq!((good[0].0, good[0].1.premium_fen), (2, 420_000));
        let named: Vec<(u64, &str)> = bad.iter().map(|r| (r.line, r.column.as_str())).collect();
        assert_eq!(named, [(3, "premium"), (4, "claim_free_years")]);
        let missing = read_file(b"quote_id,policy_no\nQ1,P1\n", Utc::now()).expect_err("header");
        assert!(missing.to_string().contains("premium"), "{missing}");
    }
}
