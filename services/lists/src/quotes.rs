//! Renewal quotes (DOMAIN.md, "Quote early"): the core system quotes each policy two
//! months before its expiry (`core.quote.issued`, or the same as CSV through
//! `POST /v1/quotes:import`); lists keeps the current quote of each policy (a later one
//! replaces it) and announces it to dispatch for the policy's case (`lists.quote.issued`)
//! so the next SMS and every phone task carry the terms. A case that reaches T-65 with
//! no quote raises a task for the city company (`lists.quote.missing`, the daily run);
//! its T-60 SMS then goes without a price rather than late.

use chrono::{DateTime, NaiveDate, Utc};
use renewal_contract::core::QuoteIssued;
use renewal_contract::lists::{CaseQuoted, QuoteMissing};
use renewal_contract::subject;
use renewal_platform::{Delivery, HandleError, Handler, Outbox};
use sqlx::{PgConnection, Row};
use tracing::Instrument;

/// Days before the effective expiry by which a case must have its quote.
pub const QUOTE_BY_DAYS: i64 = 65;

/// A quote that passed its checks.
#[derive(Debug, Clone, PartialEq)]
pub struct Quote {
    pub quote_id: String,
    pub policy_no: String,
    pub premium_fen: i64,
    pub last_premium_fen: i64,
    pub claim_free_years: i32,
    pub ncd_level: i32,
    pub compulsory_fen: i64,
    pub commercial_fen: i64,
    pub valid_until: NaiveDate,
    pub promotion: String,
    pub issued_at: DateTime<Utc>,
}

/// What is wrong with a quote, column by column.
#[derive(Debug, Clone, PartialEq)]
pub struct Bad {
    pub column: &'static str,
    pub reason: String,
}

fn bad(column: &'static str, reason: impl Into<String>) -> Bad {
    Bad {
        column,
        reason: reason.into(),
    }
}

/// A promotion goes into a signed SMS: up to 30 characters of letters, digits, spaces
/// and the few marks an offer needs; no links, no phishing text.
pub fn check_promotion(text: &str) -> Result<(), &'static str> {
    let n = text.chars().count();
    if n > 30 {
        return Err("is longer than 30 characters");
    }
    let allowed = |c: char| {
        c.is_alphanumeric() || matches!(c, ' ' | '·' | '-' | '+' | '%' | '、' | '（' | '）')
    };
    if !text.chars().all(allowed) {
        return Err("may hold only letters, digits, spaces and · - + % 、（）");
    }
    Ok(())
}

/// Checks a quote event; every problem is named by its field.
pub fn check(q: &QuoteIssued) -> Result<Quote, Vec<Bad>> {
    let mut problems = Vec::new();
    let code = |column, value: &str, problems: &mut Vec<Bad>| {
        let v = value.trim();
        if v.is_empty() || v.len() > 64 || v.chars().any(|c| c.is_control()) {
            problems.push(bad(column, "must be 1 to 64 printable characters"));
        }
    };
    code("quote_id", &q.quote_id, &mut problems);
    code("policy_no", &q.policy_no, &mut problems);
    if q.premium_fen <= 0 {
        problems.push(bad("premium", "must be more than 0"));
    }
    for (column, fen) in [
        ("last_premium", q.last_premium_fen),
        ("compulsory", q.compulsory_fen),
        ("commercial", q.commercial_fen),
    ] {
        if fen < 0 {
            problems.push(bad(column, "must not be negative"));
        }
    }
    if q.compulsory_fen + q.commercial_fen > q.premium_fen {
        problems.push(bad(
            "commercial",
            "the lines add up to more than the premium",
        ));
    }
    if !(0..=50).contains(&q.claim_free_years) {
        problems.push(bad("claim_free_years", "must be 0 to 50"));
    }
    if !(-10..=10).contains(&q.ncd_level) {
        problems.push(bad("ncd_level", "must be -10 to 10"));
    }
    let valid_until = NaiveDate::parse_from_str(q.valid_until.trim(), "%Y-%m-%d")
        .map_err(|_| problems.push(bad("valid_until", "must be a date as YYYY-MM-DD")));
    let promotion = q.promotion.trim().to_owned();
    if let Err(reason) = check_promotion(&promotion) {
        problems.push(bad("promotion", reason));
    }
    let issued_at = DateTime::from_timestamp_millis(q.issued_at_ms)
        .filter(|_| q.issued_at_ms > 0)
        .ok_or_else(|| problems.push(bad("issued_at", "must be a time")));
    match (valid_until, issued_at) {
        (Ok(valid_until), Ok(issued_at)) if problems.is_empty() => Ok(Quote {
            quote_id: q.quote_id.trim().to_owned(),
            policy_no: q.policy_no.trim().to_owned(),
            premium_fen: q.premium_fen,
            last_premium_fen: q.last_premium_fen,
            claim_free_years: q.claim_free_years,
            ncd_level: q.ncd_level,
            compulsory_fen: q.compulsory_fen,
            commercial_fen: q.commercial_fen,
            valid_until,
            promotion,
            issued_at,
        }),
        _ => Err(problems),
    }
}

/// Keeps the quote unless a later one of the policy is kept already; whether it was.
/// A new quote clears the discount approved on the one before.
pub async fn store(
    tx: &mut PgConnection,
    quote: &Quote,
    source: &str,
    now: DateTime<Utc>,
) -> Result<bool, sqlx::Error> {
    let stored = sqlx::query(
        "INSERT INTO lists.quotes AS q (policy_no, quote_id, premium_fen, last_premium_fen, claim_free_years,
             ncd_level, compulsory_fen, commercial_fen, valid_until, promotion, issued_at, received_at, source)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)
         ON CONFLICT (policy_no) DO UPDATE SET quote_id = EXCLUDED.quote_id,
             premium_fen = EXCLUDED.premium_fen, last_premium_fen = EXCLUDED.last_premium_fen,
             claim_free_years = EXCLUDED.claim_free_years, ncd_level = EXCLUDED.ncd_level,
             compulsory_fen = EXCLUDED.compulsory_fen, commercial_fen = EXCLUDED.commercial_fen,
             valid_until = EXCLUDED.valid_until, promotion = EXCLUDED.promotion,
             issued_at = EXCLUDED.issued_at, received_at = EXCLUDED.received_at, source = EXCLUDED.source,
             discount_percent = 0, discount_extra = '', announced_at = NULL
         WHERE q.issued_at < EXCLUDED.issued_at",
    )
    .bind(&quote.policy_no)
    .bind(&quote.quote_id)
    .bind(quote.premium_fen)
    .bind(quote.last_premium_fen)
    .bind(quote.claim_free_years)
    .bind(quote.ncd_level)
    .bind(quote.compulsory_fen)
    .bind(quote.commercial_fen)
    .bind(quote.valid_until)
    .bind(&quote.promotion)
    .bind(quote.issued_at)
    .bind(now)
    .bind(source)
    .execute(&mut *tx)
    .await?;
    Ok(stored.rows_affected() == 1)
}

/// What a case's announcement is read from: the quote and the case, `$1` the time,
/// `{policies}` the filter (written in, so that a plan for a few policies reads them by
/// key).
const ANNOUNCE: &str = "UPDATE lists.quotes q SET announced_at = $1
     FROM lists.cases c
     WHERE c.policy_no = q.policy_no AND q.announced_at IS NULL
       AND c.state IN ('open', 'renewal_reported', 'lapsed') AND {policies}
     RETURNING c.case_id, q.policy_no, q.quote_id, q.premium_fen, q.last_premium_fen,
               q.claim_free_years, q.promotion, q.valid_until, q.discount_percent,
               q.discount_extra, q.commercial_fen";

/// The premium offered: the quote's, less the approved discount on the commercial lines
/// (on the whole premium when the quote does not split its lines), to the fen.
pub fn offered_fen(premium_fen: i64, commercial_fen: i64, discount_percent: i32) -> i64 {
    let base = if commercial_fen > 0 {
        commercial_fen
    } else {
        premium_fen
    };
    premium_fen - (base * i64::from(discount_percent) + 50) / 100
}

/// A case's terms from a row with the case's id and its quote's columns (`quote_id`
/// null when it has none).
pub fn terms_of(
    row: &sqlx::postgres::PgRow,
    now: DateTime<Utc>,
) -> Result<Option<CaseQuoted>, sqlx::Error> {
    let Some(quote_id) = row.try_get::<Option<String>, _>("quote_id")? else {
        return Ok(None);
    };
    let discount: i32 = row.try_get("discount_percent")?;
    let premium: i64 = row.try_get("premium_fen")?;
    Ok(Some(CaseQuoted {
        case_id: row.try_get::<uuid::Uuid, _>("case_id")?.to_string(),
        policy_no: row.try_get("policy_no")?,
        quote_id,
        premium_fen: offered_fen(premium, row.try_get("commercial_fen")?, discount),
        last_premium_fen: row.try_get("last_premium_fen")?,
        claim_free_years: row.try_get("claim_free_years")?,
        promotion: row.try_get("promotion")?,
        valid_until: row.try_get::<NaiveDate, _>("valid_until")?.to_string(),
        discount_percent: discount,
        discount_extra: row.try_get("discount_extra")?,
        quoted_at_ms: now.timestamp_millis(),
    }))
}

/// Publishes the terms of the cases being worked whose quote changed since it was last
/// announced: of these policies, or of all (a catch-up); how many. A quote that came
/// before its case goes out with the case's opening (`crate::cases::open_due`).
pub async fn announce(
    tx: &mut PgConnection,
    outbox: &Outbox,
    policies: Option<&[String]>,
    now: DateTime<Utc>,
) -> Result<usize, sqlx::Error> {
    let filter = if policies.is_some() {
        "q.policy_no = ANY($2)"
    } else {
        "$2::text[] IS NULL"
    };
    let rows = sqlx::query(sqlx::AssertSqlSafe(ANNOUNCE.replace("{policies}", filter)))
        .bind(now)
        .bind(policies)
        .fetch_all(&mut *tx)
        .await?;
    let mut events = Vec::with_capacity(rows.len());
    for row in &rows {
        if let Some(terms) = terms_of(row, now)? {
            events.push((subject::LISTS_QUOTE_ISSUED, terms));
        }
    }
    let n = events.len();
    outbox.enqueue_many(tx, events).await?;
    Ok(n)
}

/// The daily run's check at T-65: the zone's open cases whose effective expiry crossed
/// T-65 since its last run (one day's band, more after days without a run) and that
/// have no quote are raised for the city company. A case opened already inside T-65 is
/// raised by its opening (`crate::cases::open_due`). Returns how many.
pub async fn raise_missing(
    tx: &mut PgConnection,
    outbox: &Outbox,
    zone: chrono_tz::Tz,
    today: NaiveDate,
    now: DateTime<Utc>,
) -> Result<usize, sqlx::Error> {
    let rows = sqlx::query(
        "WITH last AS (
             SELECT max(run_date) AS day FROM lists.daily_runs WHERE time_zone = $1 AND run_date < $2
         )
         SELECT c.case_id, c.policy_no, c.city_code, c.branch_code, c.expiry_date, c.effective_expiry_date
         FROM lists.cases c, last
         WHERE c.state = 'open' AND c.time_zone = $1
           AND c.effective_expiry_date > COALESCE(last.day, $2 - 1) + $3::int
           AND c.effective_expiry_date <= $2 + $3::int
           AND NOT EXISTS (SELECT 1 FROM lists.quotes q WHERE q.policy_no = c.policy_no)",
    )
    .bind(zone.name())
    .bind(today)
    .bind(QUOTE_BY_DAYS as i32)
    .fetch_all(&mut *tx)
    .await?;
    let mut missing = Vec::with_capacity(rows.len());
    for row in &rows {
        missing.push(missing_of(row, zone, today, now)?);
    }
    raise(tx, outbox, missing).await
}

/// What the city company is told of a case with no quote, from its row.
pub fn missing_of(
    row: &sqlx::postgres::PgRow,
    zone: chrono_tz::Tz,
    today: NaiveDate,
    now: DateTime<Utc>,
) -> Result<QuoteMissing, sqlx::Error> {
    let effective: NaiveDate = row.try_get("effective_expiry_date")?;
    Ok(QuoteMissing {
        case_id: row.try_get::<uuid::Uuid, _>("case_id")?.to_string(),
        policy_no: row.try_get("policy_no")?,
        city_code: row.try_get("city_code")?,
        branch_code: row.try_get("branch_code")?,
        expiry_date: row.try_get::<NaiveDate, _>("expiry_date")?.to_string(),
        days_to_expiry: (effective - today).num_days() as i32,
        raised_at_ms: now.timestamp_millis(),
        time_zone: zone.name().to_owned(),
    })
}

/// Raises each case once (kept in `lists.quotes_missing`) and publishes it.
pub async fn raise(
    tx: &mut PgConnection,
    outbox: &Outbox,
    missing: Vec<QuoteMissing>,
) -> Result<usize, sqlx::Error> {
    if missing.is_empty() {
        return Ok(0);
    }
    let ids: Vec<uuid::Uuid> = missing
        .iter()
        .filter_map(|m| m.case_id.parse().ok())
        .collect();
    let at = missing
        .first()
        .and_then(|m| DateTime::from_timestamp_millis(m.raised_at_ms))
        .unwrap_or_default();
    let raised: Vec<uuid::Uuid> = sqlx::query_scalar(
        "INSERT INTO lists.quotes_missing (case_id, raised_at) SELECT unnest($1::uuid[]), $2
         ON CONFLICT DO NOTHING RETURNING case_id",
    )
    .bind(&ids)
    .bind(at)
    .fetch_all(&mut *tx)
    .await?;
    let raised: std::collections::HashSet<String> =
        raised.into_iter().map(|id| id.to_string()).collect();
    let events: Vec<_> = missing
        .into_iter()
        .filter(|m| raised.contains(&m.case_id))
        .map(|m| (subject::LISTS_QUOTE_MISSING, m))
        .collect();
    let n = events.len();
    metrics::counter!("quotes_missing_total").increment(n as u64);
    outbox
        .enqueue_many(tx, events)
        .instrument(tracing::info_span!(parent: None, "quotes_missing"))
        .await?;
    Ok(n)
}

/// `core.quote.issued`: a malformed quote is refused whole (kept with its reasons).
pub struct QuoteIntake {
    pub outbox: Outbox,
    pub clock: renewal_platform::Clock,
}

impl Handler for QuoteIntake {
    async fn handle(&self, tx: &mut PgConnection, delivery: &Delivery) -> Result<(), HandleError> {
        if delivery.subject != subject::CORE_QUOTE_ISSUED {
            return Ok(());
        }
        let event: QuoteIssued = delivery.decode()?;
        let quote = check(&event).map_err(|problems| {
            let reasons: Vec<String> = problems
                .iter()
                .map(|b| format!("{} {}", b.column, b.reason))
                .collect();
            HandleError::Malformed(format!("quote {}: {}", event.quote_id, reasons.join("; ")))
        })?;
        let now = self.clock.now();
        if store(tx, &quote, "nats", now).await? {
            let policy = [quote.policy_no.clone()];
            announce(tx, &self.outbox, Some(&policy), now).await?;
            metrics::counter!("quotes_total", "source" => "nats").increment(1);
        }
        Ok(())
    }

    /// Quotes carry no personal data: kept whole.
    fn redact(&self, delivery: &Delivery) -> Option<Vec<u8>> {
        Some(delivery.payload.to_vec())
    }
}

/// `assignment.discount.approved`: the case's quote takes the discount (off the
/// commercial lines) and what comes with it, and is announced again so the next contact
/// carries it. A discount for a policy with no quote has nothing to apply to (logged).
pub struct Discounts {
    pub outbox: Outbox,
    pub clock: renewal_platform::Clock,
}

impl Handler for Discounts {
    async fn handle(&self, tx: &mut PgConnection, delivery: &Delivery) -> Result<(), HandleError> {
        if delivery.subject != subject::ASSIGNMENT_DISCOUNT_APPROVED {
            return Ok(());
        }
        let event: renewal_contract::assignment::DiscountApproved = delivery.decode()?;
        if !(1..=100).contains(&event.percent) {
            return Err(HandleError::Malformed(format!(
                "discount of {}%",
                event.percent
            )));
        }
        let applied = sqlx::query(
            "UPDATE lists.quotes SET discount_percent = $2, discount_extra = $3, announced_at = NULL
             WHERE policy_no = $1",
        )
        .bind(&event.policy_no)
        .bind(event.percent)
        .bind(&event.extra)
        .execute(&mut *tx)
        .await?;
        if applied.rows_affected() == 0 {
            tracing::warn!(policy_no = %event.policy_no, request = %event.request_id,
                "a discount was approved for a policy with no quote; nothing to apply it to");
            return Ok(());
        }
        let policy = [event.policy_no.clone()];
        announce(tx, &self.outbox, Some(&policy), self.clock.now()).await?;
        Ok(())
    }

    /// Discounts carry no personal data: kept whole.
    fn redact(&self, delivery: &Delivery) -> Option<Vec<u8>> {
        Some(delivery.payload.to_vec())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn quote() -> QuoteIssued {
        QuoteIssued {
            quote_id: "Q1".into(),
            policy_no: "P1".into(),
            premium_fen: 420_000,
            last_premium_fen: 452_000,
            claim_free_years: 2,
            ncd_level: -2,
            compulsory_fen: 95_000,
            commercial_fen: 325_000,
            valid_until: "2027-02-14".into(),
            promotion: "赠送道路救援卡".into(),
            issued_at_ms: 1_800_000_000_000,
        }
    }

    #[test]
    fn a_good_quote_passes_and_a_bad_one_names_each_field() {
        let q = check(&quote()).expect("good");
        assert_eq!(
            (q.premium_fen, q.promotion.as_str()),
            (420_000, "赠送道路救援卡")
        );
        let mut b = quote();
        b.premium_fen = 0;
        b.valid_until = "14/02/2027".into();
        b.promotion = "点击 bit.ly/x 领奖".into();
        b.claim_free_years = 99;
        let columns: Vec<&str> = check(&b)
            .expect_err("bad")
            .iter()
            .map(|p| p.column)
            .collect();
        assert_eq!(
            columns,
            [
                "premium",
                "commercial",
                "claim_free_years",
                "valid_until",
                "promotion"
            ]
        );
    }

    #[test]
    fn a_discount_comes_off_the_commercial_lines() {
        assert_eq!(offered_fen(420_000, 325_000, 0), 420_000);
        // 13% of 3,250.00 is 422.50.
        assert_eq!(offered_fen(420_000, 325_000, 13), 377_750);
        // No split of the lines: off the whole premium.
        assert_eq!(offered_fen(100_000, 0, 10), 90_000);
    }
}
