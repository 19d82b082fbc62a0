//! Renewal cases: opened when a policy's effective expiry (moved ahead of a long
//! holiday) is 90 days or fewer away in its city's time zone, moved between buckets as
//! the days pass, lapsed (and kept open for rescue) when the expiry day ends unrenewed,
//! held while a renewal reported on the phone waits for the core system, and closed
//! renewed, rescued, lost (insured elsewhere, vehicle sold) or cancelled. Every change
//! is an event written in the same transaction.

use chrono::{DateTime, Datelike, NaiveDate, Utc};
use renewal_contract::lists::{
    Bucket, BucketChanged, CaseClosed, CaseLapsed, CaseOpened, CaseOutcome, CaseReopened, Customer,
};
use renewal_contract::subject;
use renewal_platform::pii::{PiiCipher, Place};
use renewal_platform::{Outbox, local_date};
use sqlx::{PgConnection, Row};
use tracing::Instrument;
use uuid::Uuid;

use crate::losses::LossReason;
use crate::portfolio::Zones;

/// A case opens when the policy is this many days or fewer from its effective expiry.
pub const WINDOW_DAYS: i32 = 90;

/// The bucket of a number of days to the effective expiry (past expiries count as 0).
pub fn bucket_of(days: i32) -> Bucket {
    match days {
        ..=30 => Bucket::Bucket030,
        31..=60 => Bucket::Bucket3160,
        61..=90 => Bucket::Bucket6190,
        _ => Bucket::Unspecified,
    }
}

/// SQL for the bucket of `days` (an integer expression), as stored in `cases.bucket`.
const BUCKET_SQL: &str = "CASE WHEN {d} <= 30 THEN 30 WHEN {d} <= 60 THEN 60 ELSE 90 END";

fn bucket_sql(days: &str) -> String {
    BUCKET_SQL.replace("{d}", days)
}

/// Opens the due cases and returns, in the same statement, what their events carry.
/// `$1` now, `$2` only this policy, `$3` only this zone, `$4..$5` the expiry range to
/// look in (the window with room for holiday moves, over every zone's local today).
/// The filters are written into the statement (not `$n IS NULL OR ...`) so the plan
/// can use the index of policies awaiting a case. The opened cases reach the policies
/// only by primary key (an array, never a join the planner could cost as a scan of
/// the whole portfolio: it cannot tell that few policies in the window lack a case);
/// their customers are read by [`customers`] the same way.
fn open_due_sql(scope: &OpenScope<'_>) -> String {
    let (policy, zone) = scope.filters();
    format!(
        "WITH due AS (
            SELECT p.policy_no, p.end_date, p.time_zone, p.city_code, p.branch_code, p.agent_code,
                   p.category, p.important, p.group_policy, p.vin_index, p.real_data_at_sale,
                   timezone(p.time_zone, $1::timestamptz)::date AS today,
                   COALESCE(h.worked_before, p.end_date) AS effective, h.name AS holiday,
                   EXISTS (SELECT 1 FROM lists.calendar_years y
                           WHERE y.year = extract(year FROM p.end_date)::int) AS calendar_known
            FROM lists.policies p
            LEFT JOIN lists.holiday_periods h ON p.end_date BETWEEN h.first_day AND h.last_day
            WHERE p.status = 'active' AND NOT p.has_case AND p.erased_at IS NULL
              AND p.end_date BETWEEN $4 AND $5
              AND {policy} AND {zone}
        ), eligible AS (
            SELECT * FROM due WHERE end_date >= today AND effective - today <= {WINDOW_DAYS}
        ), existing AS (
            -- A vehicle's policy whose case is being worked already joins it.
            SELECT e.policy_no, c.case_id FROM eligible e
            CROSS JOIN LATERAL (
                SELECT c.case_id FROM lists.cases c
                WHERE e.vin_index IS NOT NULL AND c.vin_index = e.vin_index
                  AND c.state IN ('open', 'renewal_reported') AND c.policy_no <> e.policy_no
                  AND abs(c.expiry_date - e.end_date) <= $6
                ORDER BY c.opened_at LIMIT 1) c
        ), ranked AS (
            -- A vehicle's policies due together: the first (by expiry) leads its case, the
            -- others within the vehicle window ride along.
            SELECT e.*, row_number() OVER vehicle AS vehicle_rank,
                   first_value(end_date) OVER vehicle AS vehicle_first
            FROM eligible e
            WHERE NOT EXISTS (SELECT 1 FROM existing x WHERE x.policy_no = e.policy_no)
            WINDOW vehicle AS (PARTITION BY COALESCE(vin_index, convert_to(policy_no, 'UTF8'))
                               ORDER BY end_date, policy_no)
        ), opened AS (
            INSERT INTO lists.cases (case_id, policy_no, expiry_date, effective_expiry_date,
                opened_at, time_zone, city_code, branch_code, agent_code, category, important,
                group_policy, bucket, holiday, calendar_known, originator_keeps_credit, vin_index)
            SELECT gen_random_uuid(), policy_no, end_date, effective, $1, time_zone, city_code,
                   branch_code, agent_code, category, important, group_policy, {bucket}, holiday,
                   calendar_known, real_data_at_sale, vin_index
            FROM ranked
            WHERE vehicle_rank = 1 OR end_date - vehicle_first > $6
            ON CONFLICT (policy_no) DO NOTHING
            RETURNING case_id, policy_no, expiry_date, effective_expiry_date, time_zone, city_code,
                      branch_code, agent_code, category, important, group_policy, bucket, holiday,
                      calendar_known, originator_keeps_credit, vin_index
        ), riders AS (
            SELECT DISTINCT ON (r.policy_no) r.policy_no, o.case_id
            FROM ranked r JOIN opened o ON o.vin_index = r.vin_index
            WHERE r.vehicle_rank > 1 AND r.end_date - r.vehicle_first <= $6
              AND abs(o.expiry_date - r.end_date) <= $6
            ORDER BY r.policy_no, o.expiry_date
        ), joined AS (
            INSERT INTO lists.vehicle_policies (policy_no, case_id, joined_at)
            SELECT policy_no, case_id, $1 FROM (SELECT * FROM existing UNION ALL SELECT * FROM riders) j
            ON CONFLICT (policy_no) DO NOTHING
            RETURNING policy_no
        ), marked AS (
            UPDATE lists.policies p SET has_case = true
            WHERE p.policy_no = ANY (ARRAY(SELECT policy_no FROM opened UNION ALL SELECT policy_no FROM joined))
        ), quoted AS (
            -- A quote that came before its case goes out with the opening.
            UPDATE lists.quotes q SET announced_at = $1
            WHERE q.policy_no = ANY (ARRAY(SELECT policy_no FROM opened))
            RETURNING q.policy_no, q.quote_id, q.premium_fen, q.last_premium_fen, q.claim_free_years,
                      q.promotion, q.valid_until, q.discount_percent, q.discount_extra, q.commercial_fen
        )
        SELECT o.*, GREATEST(o.effective_expiry_date - timezone(o.time_zone, $1::timestamptz)::date, 0) AS days,
               q.quote_id, q.premium_fen, q.last_premium_fen, q.claim_free_years, q.promotion,
               q.valid_until, q.discount_percent, q.discount_extra, q.commercial_fen,
               (SELECT count(*) FROM joined) AS joined,
               -- Opened inside T-65 with no quote: the city company is to get one.
               (q.quote_id IS NULL AND o.effective_expiry_date
                    <= timezone(o.time_zone, $1::timestamptz)::date + {QUOTE_BY_DAYS}) AS quote_missing
        FROM opened o LEFT JOIN quoted q ON q.policy_no = o.policy_no",
        bucket = bucket_sql("GREATEST(effective - today, 0)"),
        QUOTE_BY_DAYS = crate::quotes::QUOTE_BY_DAYS,
    )
}

#[derive(Debug, thiserror::Error)]
pub enum CaseError {
    #[error("postgres: {0}")]
    Db(#[from] sqlx::Error),
    #[error("personal data of policy {policy_no} cannot be opened: {source}")]
    Pii {
        policy_no: String,
        source: renewal_platform::pii::PiiError,
    },
}

/// The default vehicle window: a vehicle's compulsory and commercial policies expiring
/// within a month of each other are renewed together.
pub const VEHICLE_WINDOW_DAYS: i32 = 30;

/// Where to open cases: every due policy, or one.
pub struct OpenScope<'a> {
    pub only_policy: Option<&'a str>,
    pub only_zone: Option<chrono_tz::Tz>,
    /// Policies of one vehicle expiring within this many days of each other are one
    /// case (`VEHICLE_WINDOW_DAYS`).
    pub vehicle_window: i32,
}

impl OpenScope<'_> {
    /// The policy and zone filters of `$2` and `$3`, written into a statement (not
    /// `$n IS NULL OR ...`) so that its plan can use the index of policies awaiting a
    /// case.
    fn filters(&self) -> (&'static str, &'static str) {
        let policy = if self.only_policy.is_some() {
            "p.policy_no = $2"
        } else {
            "$2::text IS NULL"
        };
        let zone = if self.only_zone.is_some() {
            "p.time_zone = $3"
        } else {
            "$3::text IS NULL"
        };
        (policy, zone)
    }
}

/// Opens a case for every active policy inside the window that has none, and
/// publishes each. Returns how many opened.
pub async fn open_due(
    tx: &mut PgConnection,
    outbox: &Outbox,
    pii: &PiiCipher,
    zones: &Zones,
    now: DateTime<Utc>,
    scope: OpenScope<'_>,
) -> Result<usize, CaseError> {
    let todays: Vec<NaiveDate> = zones.all().iter().map(|z| local_date(now, *z)).collect();
    let earliest = todays
        .iter()
        .min()
        .copied()
        .unwrap_or(local_date(now, chrono_tz::UTC));
    let latest = todays.iter().max().copied().unwrap_or(earliest);
    // The window's far end, moved out to the last day of a holiday whose worked-before
    // day is inside the window.
    let window_end = latest + chrono::Days::new(WINDOW_DAYS as u64);
    let until: Option<NaiveDate> = sqlx::query_scalar(
        "SELECT max(last_day) FROM lists.holiday_periods WHERE worked_before <= $1 AND last_day > $1",
    )
    .bind(window_end)
    .fetch_one(&mut *tx)
    .await?;
    let until = until.unwrap_or(window_end).max(window_end);
    let rows = sqlx::query(sqlx::AssertSqlSafe(open_due_sql(&scope)))
        .bind(now)
        .bind(scope.only_policy)
        .bind(scope.only_zone.map(|z| z.name()))
        .bind(earliest)
        .bind(until)
        .bind(scope.vehicle_window)
        .fetch_all(&mut *tx)
        .await?;
    if let Some(row) = rows.first() {
        let joined: i64 = row.try_get("joined")?;
        metrics::counter!("vehicle_policies_joined_total").increment(joined as u64);
    }
    let policy_nos = rows
        .iter()
        .map(|row| row.try_get("policy_no"))
        .collect::<Result<Vec<String>, _>>()?;
    let mut customers = customers(tx, &policy_nos).await?;
    let mut events = Vec::with_capacity(rows.len());
    let mut missing = Vec::new();
    let mut unknown_years: std::collections::BTreeMap<i32, i64> = Default::default();
    for (row, policy_no) in rows.iter().zip(policy_nos) {
        let Some(sealed) = customers.remove(&policy_no) else {
            // The policy row was read in the same transaction; it cannot be missing.
            return Err(CaseError::Db(sqlx::Error::RowNotFound));
        };
        let open = |sealed: &[u8], column| -> Result<String, CaseError> {
            let place = Place::new(crate::portfolio::POLICIES, column, &policy_no);
            pii.open(sealed, place).map_err(|source| CaseError::Pii {
                policy_no: policy_no.clone(),
                source,
            })
        };
        let expiry: NaiveDate = row.try_get("expiry_date")?;
        let effective: NaiveDate = row.try_get("effective_expiry_date")?;
        let calendar_known: bool = row.try_get("calendar_known")?;
        if !calendar_known {
            *unknown_years.entry(expiry.year()).or_default() += 1;
        }
        let days: i32 = row.try_get("days")?;
        if row.try_get::<Option<bool>, _>("quote_missing")? == Some(true) {
            let zone: chrono_tz::Tz = row
                .try_get::<String, _>("time_zone")?
                .parse()
                .unwrap_or(chrono_tz::UTC);
            missing.push(crate::quotes::missing_of(
                row,
                zone,
                local_date(now, zone),
                now,
            )?);
        }
        let event = CaseOpened {
            case_id: row.try_get::<Uuid, _>("case_id")?.to_string(),
            city_code: row.try_get("city_code")?,
            branch_code: row.try_get("branch_code")?,
            agent_code: row.try_get("agent_code")?,
            expiry_date: expiry.to_string(),
            effective_expiry_date: effective.to_string(),
            time_zone: row.try_get("time_zone")?,
            customer: Some(Customer {
                name: open(&sealed.name_enc, "name_enc")?,
                mobile: open(&sealed.mobile_enc, "mobile_enc")?,
                plate: open(&sealed.plate_enc, "plate_enc")?,
            }),
            important: row.try_get("important")?,
            group_policy: row.try_get("group_policy")?,
            category: row.try_get("category")?,
            opened_at_ms: now.timestamp_millis(),
            days_to_expiry: days,
            bucket: bucket_of(days) as i32,
            holiday: row
                .try_get::<Option<String>, _>("holiday")?
                .unwrap_or_default(),
            calendar_known,
            originator_keeps_credit: row.try_get("originator_keeps_credit")?,
            quote: crate::quotes::terms_of(row, now)?,
            policy_no,
        };
        events.push((subject::LISTS_CASE_OPENED, event));
    }
    let opened = events.len();
    if scope.only_policy.is_some() {
        // A case opened on intake continues the intake's trace.
        outbox.enqueue_many(tx, events).await?;
    } else {
        outbox
            .enqueue_many(tx, events)
            .instrument(tracing::info_span!(parent: None, "cases_opened"))
            .await?;
    }
    crate::quotes::raise(tx, outbox, missing).await?;
    for (year, cases) in unknown_years {
        alert_unknown_year(tx, year, cases, now).await?;
    }
    metrics::counter!("cases_opened_total").increment(opened as u64);
    Ok(opened)
}

/// The sealed customer of a newly opened case.
#[derive(sqlx::FromRow)]
struct SealedCustomer {
    policy_no: String,
    name_enc: Vec<u8>,
    mobile_enc: Vec<u8>,
    plate_enc: Vec<u8>,
}

/// The sealed customers of the given policies, by primary key.
async fn customers(
    tx: &mut PgConnection,
    policy_nos: &[String],
) -> Result<std::collections::HashMap<String, SealedCustomer>, sqlx::Error> {
    let rows: Vec<SealedCustomer> = sqlx::query_as(
        "SELECT policy_no, name_enc, mobile_enc, plate_enc FROM lists.policies
         WHERE policy_no = ANY ($1)",
    )
    .bind(policy_nos)
    .fetch_all(&mut *tx)
    .await?;
    Ok(rows.into_iter().map(|c| (c.policy_no.clone(), c)).collect())
}

/// An expiry in a year the holiday calendar does not cover: kept as an alert for ops,
/// counted in a metric and logged, never taken as a normal day silently.
async fn alert_unknown_year(
    tx: &mut PgConnection,
    year: i32,
    cases: i64,
    now: DateTime<Utc>,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO lists.calendar_alerts (year, first_seen, last_seen, cases) VALUES ($1, $2, $2, $3)
         ON CONFLICT (year) DO UPDATE SET last_seen = $2, cases = lists.calendar_alerts.cases + $3",
    )
    .bind(year)
    .bind(now)
    .bind(cases)
    .execute(&mut *tx)
    .await?;
    metrics::counter!("lists_calendar_unknown_year_cases_total").increment(cases as u64);
    tracing::error!(
        year,
        cases,
        "cases expire in a year the holiday calendar does not cover; add the year to the calendar"
    );
    Ok(())
}

/// A case's state, as `lists.cases.state` keeps it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CaseState {
    /// Being worked before its expiry.
    Open,
    /// An owner or agent reported the renewal on the phone; the core system has not
    /// confirmed it yet (contacts are held).
    RenewalReported,
    /// The expiry day ended unrenewed: open for lapse rescue.
    Lapsed,
    Renewed,
    /// Renewed after it lapsed.
    Rescued,
    InsuredElsewhere,
    VehicleSold,
    Cancelled,
}

impl CaseState {
    pub fn as_str(self) -> &'static str {
        match self {
            CaseState::Open => "open",
            CaseState::RenewalReported => "renewal_reported",
            CaseState::Lapsed => "lapsed",
            CaseState::Renewed => "renewed",
            CaseState::Rescued => "rescued",
            CaseState::InsuredElsewhere => "insured_elsewhere",
            CaseState::VehicleSold => "vehicle_sold",
            CaseState::Cancelled => "cancelled",
        }
    }

    pub fn parse(raw: &str) -> Option<CaseState> {
        [
            CaseState::Open,
            CaseState::RenewalReported,
            CaseState::Lapsed,
            CaseState::Renewed,
            CaseState::Rescued,
            CaseState::InsuredElsewhere,
            CaseState::VehicleSold,
            CaseState::Cancelled,
        ]
        .into_iter()
        .find(|s| s.as_str() == raw)
    }

    /// The state a case ends in for an outcome (a renewal of a lapsed case is a rescue,
    /// decided in SQL).
    fn closed_by(outcome: CaseOutcome) -> CaseState {
        match outcome {
            CaseOutcome::Renewed => CaseState::Renewed,
            CaseOutcome::Rescued => CaseState::Rescued,
            CaseOutcome::InsuredElsewhere => CaseState::InsuredElsewhere,
            CaseOutcome::VehicleSold => CaseState::VehicleSold,
            CaseOutcome::Lapsed | CaseOutcome::Cancelled | CaseOutcome::Unspecified => {
                CaseState::Cancelled
            }
        }
    }

    /// The outcome a closed case publishes.
    fn outcome(self) -> CaseOutcome {
        match self {
            CaseState::Renewed => CaseOutcome::Renewed,
            CaseState::Rescued => CaseOutcome::Rescued,
            CaseState::InsuredElsewhere => CaseOutcome::InsuredElsewhere,
            CaseState::VehicleSold => CaseOutcome::VehicleSold,
            CaseState::Lapsed => CaseOutcome::Lapsed,
            _ => CaseOutcome::Cancelled,
        }
    }
}

/// Closes the policy's case if it is still being worked (open, reported renewed, or
/// lapsed and in rescue), and publishes it. A renewal of a lapsed case closes it
/// rescued. Returns the state it closed in.
pub async fn close(
    tx: &mut PgConnection,
    outbox: &Outbox,
    policy_no: &str,
    outcome: CaseOutcome,
    new_policy_no: &str,
    now: DateTime<Utc>,
) -> Result<Option<CaseState>, sqlx::Error> {
    let state = CaseState::closed_by(outcome);
    let closed = sqlx::query(
        "UPDATE lists.cases
         SET state = CASE WHEN $2 = 'renewed' AND lapsed_at IS NOT NULL THEN 'rescued' ELSE $2 END,
             closed_at = $3, new_policy_no = COALESCE(NULLIF($4, ''), reported_policy_no)
         WHERE policy_no = $1 AND state IN ('open', 'renewal_reported', 'lapsed')
         RETURNING case_id, state, new_policy_no",
    )
    .bind(policy_no)
    .bind(state.as_str())
    .bind(now)
    .bind(new_policy_no)
    .fetch_optional(&mut *tx)
    .await?;
    let Some(row) = closed else {
        return Ok(None);
    };
    let state = CaseState::parse(row.try_get("state")?).unwrap_or(state);
    let case_id: Uuid = row.try_get("case_id")?;
    let lost = match state {
        CaseState::InsuredElsewhere => Some(LossReason::InsuredElsewhere),
        CaseState::VehicleSold => Some(LossReason::VehicleSold),
        _ => None,
    };
    if let Some(reason) = lost {
        crate::losses::record(tx, case_id, policy_no, reason, now).await?;
    }
    let event = CaseClosed {
        case_id: case_id.to_string(),
        policy_no: policy_no.to_owned(),
        outcome: state.outcome() as i32,
        new_policy_no: row
            .try_get::<Option<String>, _>("new_policy_no")?
            .unwrap_or_default(),
        closed_at_ms: now.timestamp_millis(),
    };
    outbox
        .enqueue(tx, subject::LISTS_CASE_CLOSED, &event)
        .await?;
    metrics::counter!("cases_closed_total", "outcome" => state.as_str()).increment(1);
    Ok(Some(state))
}

/// Lapses every open case in the zone whose expiry day ended before `today`, and its
/// policy, in one statement; publishes each. A lapsed case stays open for rescue.
pub async fn lapse_due(
    tx: &mut PgConnection,
    outbox: &Outbox,
    pii: &PiiCipher,
    zone: chrono_tz::Tz,
    today: NaiveDate,
    now: DateTime<Utc>,
) -> Result<usize, CaseError> {
    // Each lapsed case's loss reason is written with it, from its calls.
    const LAPSE: &str = concat!(
        "WITH lapsed AS (
            UPDATE lists.cases SET state = 'lapsed', lapsed_at = $3, lapsed_on = expiry_date + 1
            WHERE state = 'open' AND time_zone = $1 AND expiry_date < $2
              AND effective_expiry_date < $2 -- never later than the expiry; lets the index serve
            RETURNING case_id, policy_no, expiry_date, lapsed_on, calls_made, last_outcome, refused_because
         ), policies AS (
            UPDATE lists.policies p SET status = 'lapsed', lapsed_on = l.lapsed_on, updated_at = $3
            FROM lapsed l WHERE p.policy_no = l.policy_no AND p.status = 'active'
            RETURNING p.policy_no
         ), reasons AS (
            INSERT INTO lists.lost_reasons (policy_no, case_id, reason, recorded_at)
            SELECT l.policy_no, l.case_id, ",
        crate::losses::at_lapse_sql!("l"),
        ", $3 FROM lapsed l
            ON CONFLICT (policy_no) DO UPDATE SET reason = EXCLUDED.reason, recorded_at = EXCLUDED.recorded_at
         )
         SELECT case_id, policy_no, lapsed_on FROM lapsed ORDER BY expiry_date, policy_no"
    );
    let rows = sqlx::query(LAPSE)
        .bind(zone.name())
        .bind(today)
        .bind(now)
        .fetch_all(&mut *tx)
        .await?;
    let mut events = Vec::with_capacity(rows.len());
    for row in &rows {
        events.push((
            subject::LISTS_CASE_LAPSED,
            CaseLapsed {
                case_id: row.try_get::<Uuid, _>("case_id")?.to_string(),
                policy_no: row.try_get("policy_no")?,
                lapsed_on: row.try_get::<NaiveDate, _>("lapsed_on")?.to_string(),
                lapsed_at_ms: now.timestamp_millis(),
            },
        ));
    }
    let lapsed = events.len();
    let policy_nos: Vec<String> = events.iter().map(|(_, e)| e.policy_no.clone()).collect();
    crate::rescues::index_lapsed(tx, pii, &policy_nos).await?;
    outbox
        .enqueue_many(tx, events)
        .instrument(tracing::info_span!(parent: None, "cases_lapsed"))
        .await?;
    metrics::counter!("cases_lapsed_total").increment(lapsed as u64);
    Ok(lapsed)
}

/// Reopens the zone's cases whose renewal was reported on the phone longer than
/// `confirm_within` ago and never confirmed by the core system: back to work (to lapse
/// rescue when the expiry has passed meanwhile), published so the held contacts resume
/// and the owner gets a task to check the renewal.
pub async fn reopen_unconfirmed(
    tx: &mut PgConnection,
    outbox: &Outbox,
    pii: &PiiCipher,
    zone: chrono_tz::Tz,
    today: NaiveDate,
    now: DateTime<Utc>,
    confirm_within: chrono::Duration,
) -> Result<usize, CaseError> {
    // A case reopened into lapse rescue is lost for now: its reason is written with it.
    const REOPEN: &str = concat!(
        "WITH due AS (
            SELECT case_id FROM lists.cases
            WHERE state = 'renewal_reported' AND time_zone = $1 AND reported_at <= $4
            FOR UPDATE
         ), reopened AS (
            UPDATE lists.cases c
            SET state = CASE WHEN c.lapsed_at IS NOT NULL OR c.expiry_date < $2 THEN 'lapsed' ELSE 'open' END,
                reopened_at = $3,
                lapsed_at = CASE WHEN c.lapsed_at IS NULL AND c.expiry_date < $2 THEN $3 ELSE c.lapsed_at END,
                lapsed_on = CASE WHEN c.lapsed_on IS NULL AND c.expiry_date < $2 THEN c.expiry_date + 1
                                 ELSE c.lapsed_on END
            FROM due WHERE c.case_id = due.case_id
            RETURNING c.case_id, c.policy_no, c.state, c.reported_at, c.reported_policy_no, c.lapsed_on,
                      c.calls_made, c.last_outcome, c.refused_because
         ), policies AS (
            UPDATE lists.policies p SET status = 'lapsed', lapsed_on = r.lapsed_on, updated_at = $3
            FROM reopened r WHERE p.policy_no = r.policy_no AND r.state = 'lapsed' AND p.status = 'active'
         ), reasons AS (
            INSERT INTO lists.lost_reasons (policy_no, case_id, reason, recorded_at)
            SELECT r.policy_no, r.case_id, ",
        crate::losses::at_lapse_sql!("r"),
        ", $3 FROM reopened r WHERE r.state = 'lapsed'
            ON CONFLICT (policy_no) DO UPDATE SET reason = EXCLUDED.reason, recorded_at = EXCLUDED.recorded_at
         )
         SELECT * FROM reopened ORDER BY policy_no"
    );
    let rows = sqlx::query(REOPEN)
        .bind(zone.name())
        .bind(today)
        .bind(now)
        .bind(now - confirm_within)
        .fetch_all(&mut *tx)
        .await?;
    let mut events = Vec::with_capacity(rows.len());
    for row in &rows {
        let reported_at: DateTime<Utc> = row.try_get("reported_at")?;
        events.push((
            subject::LISTS_CASE_REOPENED,
            CaseReopened {
                case_id: row.try_get::<Uuid, _>("case_id")?.to_string(),
                policy_no: row.try_get("policy_no")?,
                reported_at_ms: reported_at.timestamp_millis(),
                reported_policy_no: row
                    .try_get::<Option<String>, _>("reported_policy_no")?
                    .unwrap_or_default(),
                lapsed: row.try_get::<String, _>("state")? == CaseState::Lapsed.as_str(),
                reopened_at_ms: now.timestamp_millis(),
            },
        ));
    }
    let reopened = events.len();
    let lapsed: Vec<String> = events
        .iter()
        .filter(|(_, e)| e.lapsed)
        .map(|(_, e)| e.policy_no.clone())
        .collect();
    crate::rescues::index_lapsed(tx, pii, &lapsed).await?;
    outbox
        .enqueue_many(tx, events)
        .instrument(tracing::info_span!(parent: None, "cases_reopened"))
        .await?;
    metrics::counter!("cases_reopened_total").increment(reopened as u64);
    Ok(reopened)
}

/// Moves the zone's open cases whose days to expiry crossed into a nearer bucket, and
/// publishes each move.
pub async fn move_buckets(
    tx: &mut PgConnection,
    outbox: &Outbox,
    zone: chrono_tz::Tz,
    today: NaiveDate,
) -> Result<usize, sqlx::Error> {
    // The cases whose bucket changes, locked, then updated by primary key: never a
    // join the planner could cost as a scan of every case.
    let sql = format!(
        "SELECT case_id, policy_no, bucket AS old_bucket, days
         FROM (SELECT case_id, policy_no, bucket, GREATEST(effective_expiry_date - $2, 0) AS days
               FROM lists.cases
               WHERE state = 'open' AND time_zone = $1 AND effective_expiry_date <= $2 + 60) c
         WHERE bucket IS DISTINCT FROM {bucket}
         ORDER BY days, policy_no
         FOR UPDATE",
        bucket = bucket_sql("days")
    );
    let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(zone.name())
        .bind(today)
        .fetch_all(&mut *tx)
        .await?;
    let case_ids = rows
        .iter()
        .map(|row| row.try_get("case_id"))
        .collect::<Result<Vec<Uuid>, _>>()?;
    let sql = format!(
        "UPDATE lists.cases SET bucket = {bucket} WHERE case_id = ANY ($1)",
        bucket = bucket_sql("GREATEST(effective_expiry_date - $2, 0)")
    );
    sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(&case_ids)
        .bind(today)
        .execute(&mut *tx)
        .await?;
    let mut events = Vec::with_capacity(rows.len());
    for row in &rows {
        let old: Option<i16> = row.try_get("old_bucket")?;
        let days: i32 = row.try_get("days")?;
        events.push((
            subject::LISTS_CASE_BUCKET_CHANGED,
            BucketChanged {
                case_id: row.try_get::<Uuid, _>("case_id")?.to_string(),
                policy_no: row.try_get("policy_no")?,
                from_bucket: old.map(|b| b as i32).unwrap_or_default(),
                to_bucket: bucket_of(days) as i32,
                days_to_expiry: days,
                as_of: today.to_string(),
            },
        ));
    }
    let moved = events.len();
    outbox
        .enqueue_many(tx, events)
        .instrument(tracing::info_span!(parent: None, "buckets_moved"))
        .await?;
    metrics::counter!("case_bucket_moves_total").increment(moved as u64);
    Ok(moved)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn days_fall_into_buckets_at_the_boundaries() {
        assert_eq!(bucket_of(-3), Bucket::Bucket030);
        assert_eq!(bucket_of(0), Bucket::Bucket030);
        assert_eq!(bucket_of(30), Bucket::Bucket030);
        assert_eq!(bucket_of(31), Bucket::Bucket3160);
        assert_eq!(bucket_of(60), Bucket::Bucket3160);
        assert_eq!(bucket_of(61), Bucket::Bucket6190);
        assert_eq!(bucket_of(90), Bucket::Bucket6190);
        assert_eq!(bucket_of(91), Bucket::Unspecified);
    }
}
