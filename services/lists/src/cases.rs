//! Renewal cases: opened when a policy enters the renewal window, closed renewed,
//! lapsed or cancelled. Every change is an event written in the same transaction.

use chrono::{DateTime, NaiveDate, Utc};
use renewal_contract::lists::{CaseClosed, CaseOpened, CaseOutcome, Customer};
use renewal_contract::subject;
use renewal_platform::Outbox;
use sqlx::{PgConnection, Row};
use tracing::Instrument;
use uuid::Uuid;

/// A case opens when the policy is this many days or fewer from expiry.
pub const WINDOW_DAYS: i32 = 90;

/// Opens the cases and returns, in the same statement, what their events carry.
const OPEN_DUE: &str = "
    WITH opened AS (
        INSERT INTO lists.cases (case_id, policy_no, expiry_date, effective_expiry_date, opened_at)
        SELECT gen_random_uuid(), p.policy_no, p.end_date, p.end_date, $2
        FROM lists.policies p
        WHERE p.status = 'active'
          AND p.end_date >= $1 AND p.end_date <= $1 + $3::int
          AND ($4::text IS NULL OR p.policy_no = $4)
          AND NOT EXISTS (SELECT 1 FROM lists.cases c WHERE c.policy_no = p.policy_no)
        ON CONFLICT (policy_no) DO NOTHING
        RETURNING case_id, policy_no, expiry_date, effective_expiry_date
    )
    SELECT o.case_id, o.policy_no, o.expiry_date, o.effective_expiry_date, p.city_code,
           p.branch_code, p.agent_code, p.customer_name, p.mobile, p.plate, p.important,
           p.group_policy, p.category
    FROM opened o JOIN lists.policies p USING (policy_no)";

/// Opens a case for every active policy within the window that has none (or for
/// `only` that policy), and publishes each. Returns how many opened.
pub async fn open_due(
    tx: &mut PgConnection,
    outbox: &Outbox,
    today: NaiveDate,
    now: DateTime<Utc>,
    time_zone: chrono_tz::Tz,
    only: Option<&str>,
) -> Result<usize, sqlx::Error> {
    let rows = sqlx::query(OPEN_DUE)
        .bind(today)
        .bind(now)
        .bind(WINDOW_DAYS)
        .bind(only)
        .fetch_all(&mut *tx)
        .await?;
    for row in &rows {
        let expiry: NaiveDate = row.try_get("expiry_date")?;
        let effective: NaiveDate = row.try_get("effective_expiry_date")?;
        let event = CaseOpened {
            case_id: row.try_get::<Uuid, _>("case_id")?.to_string(),
            policy_no: row.try_get("policy_no")?,
            city_code: row.try_get("city_code")?,
            branch_code: row.try_get("branch_code")?,
            agent_code: row.try_get("agent_code")?,
            expiry_date: expiry.to_string(),
            effective_expiry_date: effective.to_string(),
            time_zone: time_zone.name().to_owned(),
            customer: Some(Customer {
                name: row.try_get("customer_name")?,
                mobile: row.try_get("mobile")?,
                plate: row.try_get("plate")?,
            }),
            important: row.try_get("important")?,
            group_policy: row.try_get("group_policy")?,
            category: row.try_get("category")?,
            opened_at_ms: now.timestamp_millis(),
        };
        // A case opened by the daily run starts a trace of its own; one opened on intake
        // continues the intake's trace.
        let span = if only.is_some() {
            tracing::Span::current()
        } else {
            tracing::info_span!(parent: None, "case_opened")
        };
        outbox
            .enqueue(tx, subject::LISTS_CASE_OPENED, &event)
            .instrument(span)
            .await?;
    }
    metrics::counter!("cases_opened_total").increment(rows.len() as u64);
    Ok(rows.len())
}

/// Closes the policy's open case, if it has one, and publishes it.
pub async fn close(
    tx: &mut PgConnection,
    outbox: &Outbox,
    policy_no: &str,
    outcome: CaseOutcome,
    new_policy_no: &str,
    now: DateTime<Utc>,
) -> Result<bool, sqlx::Error> {
    let state = match outcome {
        CaseOutcome::Renewed => "renewed",
        CaseOutcome::Lapsed => "lapsed",
        CaseOutcome::Cancelled | CaseOutcome::Unspecified => "cancelled",
    };
    let closed = sqlx::query(
        "UPDATE lists.cases SET state = $2, closed_at = $3, new_policy_no = NULLIF($4, '')
         WHERE policy_no = $1 AND state = 'open'
         RETURNING case_id",
    )
    .bind(policy_no)
    .bind(state)
    .bind(now)
    .bind(new_policy_no)
    .fetch_optional(&mut *tx)
    .await?;
    let Some(row) = closed else {
        return Ok(false);
    };
    let event = CaseClosed {
        case_id: row.try_get::<Uuid, _>("case_id")?.to_string(),
        policy_no: policy_no.to_owned(),
        outcome: outcome as i32,
        new_policy_no: new_policy_no.to_owned(),
        closed_at_ms: now.timestamp_millis(),
    };
    outbox
        .enqueue(tx, subject::LISTS_CASE_CLOSED, &event)
        .await?;
    metrics::counter!("cases_closed_total", "outcome" => state).increment(1);
    Ok(true)
}

/// Lapses every open case whose expiry day ended before `today`.
pub async fn lapse_due(
    tx: &mut PgConnection,
    outbox: &Outbox,
    today: NaiveDate,
    now: DateTime<Utc>,
) -> Result<usize, sqlx::Error> {
    let due: Vec<String> = sqlx::query_scalar(
        "SELECT policy_no FROM lists.cases WHERE state = 'open' AND expiry_date < $1 ORDER BY expiry_date",
    )
    .bind(today)
    .fetch_all(&mut *tx)
    .await?;
    for policy_no in &due {
        sqlx::query("UPDATE lists.policies SET status = 'lapsed', updated_at = $2 WHERE policy_no = $1 AND status = 'active'")
            .bind(policy_no)
            .bind(now)
            .execute(&mut *tx)
            .await?;
        close(tx, outbox, policy_no, CaseOutcome::Lapsed, "", now).await?;
    }
    Ok(due.len())
}
