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
    /// For a renewed or rescued case: when we knew (the renewal reported on a call, when
    /// the core system then confirmed it, or the confirmation).
    pub renewal_known_at: Option<DateTime<Utc>>,
}

pub async fn policy_count(pool: &PgPool) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar("SELECT count(*) FROM lists.policies")
        .fetch_one(pool)
        .await
}

pub async fn cases(pool: &PgPool) -> Result<Vec<CaseFacts>, sqlx::Error> {
    let rows = sqlx::query(
        "SELECT case_id, policy_no, expiry_date, state, opened_at, closed_at,
                CASE WHEN state IN ('renewed', 'rescued') THEN
                    CASE WHEN reported_at IS NOT NULL AND reopened_at IS NULL
                         THEN LEAST(reported_at, closed_at) ELSE closed_at END
                END AS renewal_known_at
         FROM lists.cases ORDER BY policy_no",
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
                renewal_known_at: r.try_get("renewal_known_at")?,
            })
        })
        .collect()
}

/// Cases whose renewal reported on the phone was reopened unconfirmed.
pub async fn renewals_reopened(pool: &PgPool) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar("SELECT count(*) FROM lists.cases WHERE reopened_at IS NOT NULL")
        .fetch_one(pool)
        .await
}

/// One customer category's renewal rate against its target, over every case so far.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct CategoryRate {
    pub category: &'static str,
    pub due: i64,
    /// Renewed on time or rescued after lapsing.
    pub renewed: i64,
    pub rate: Option<f64>,
    /// The target rate; none for the category that has none.
    pub target: Option<f64>,
}

/// What the season's renewal terms came to (the demo report's `terms`).
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct TermsFacts {
    /// Cases quoted by their T-60 (the day of the first SMS).
    pub quotes_by_t60: i64,
    /// Cases that reached T-65 with no quote (a city task each).
    pub quotes_late: i64,
    /// Lost cases (lapsed, not rescued; insured elsewhere; vehicle sold) by reason.
    pub loss_reasons: std::collections::BTreeMap<String, i64>,
    /// Cases renewing a vehicle's two policies together.
    pub vehicles_with_two_policies: i64,
    /// Every category, with its rate and target.
    pub category_rates: Vec<CategoryRate>,
}

pub async fn terms(pool: &PgPool) -> Result<TermsFacts, sqlx::Error> {
    let (quotes_by_t60, quotes_late): (i64, i64) = sqlx::query_as(
        "SELECT count(*) FILTER (WHERE (q.received_at AT TIME ZONE c.time_zone)::date
                                        <= c.effective_expiry_date - 60),
                (SELECT count(*) FROM lists.quotes_missing)
         FROM lists.cases c JOIN lists.quotes q ON q.policy_no = c.policy_no",
    )
    .fetch_one(pool)
    .await?;
    let loss_reasons: Vec<(String, i64)> = sqlx::query_as(
        "SELECT l.reason, count(*) FROM lists.lost_reasons l
         JOIN lists.cases c ON c.policy_no = l.policy_no
         WHERE c.state IN ('lapsed', 'insured_elsewhere', 'vehicle_sold') GROUP BY l.reason",
    )
    .fetch_all(pool)
    .await?;
    let vehicles_with_two_policies: i64 =
        sqlx::query_scalar("SELECT count(DISTINCT case_id) FROM lists.vehicle_policies")
            .fetch_one(pool)
            .await?;
    let query = crate::kpis::ReportQuery {
        from: NaiveDate::from_ymd_opt(1900, 1, 1).unwrap_or_default(),
        to: NaiveDate::from_ymd_opt(2999, 12, 31).unwrap_or_default(),
        group_by: "category",
        csv: false,
        filters: Default::default(),
    };
    let (groups, _) = crate::kpis::tallies(&mut *pool.acquire().await?, &query).await?;
    let category_rates = crate::categories::CATEGORIES
        .iter()
        .map(|c| {
            let tally = groups.iter().find(|g| g.key.as_deref() == Some(c.code));
            CategoryRate {
                category: c.code,
                due: tally.map_or(0, |t| t.due),
                renewed: tally.map_or(0, |t| t.renewed + t.rescued),
                rate: tally.and_then(|t| t.renewal_rate),
                target: c.target_percent.map(|p| f64::from(p) / 100.0),
            }
        })
        .collect();
    Ok(TermsFacts {
        quotes_by_t60,
        quotes_late,
        loss_reasons: loss_reasons.into_iter().collect(),
        vehicles_with_two_policies,
        category_rates,
    })
}
