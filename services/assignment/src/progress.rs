//! The review's rhythm (DOMAIN.md, "The review runs on a rhythm"): owners report their
//! progress daily and branches meet weekly. Each owner's calls on their own cases (and
//! the promises among them) are counted as the calls arrive (`record`, in the call
//! consumer's transaction, so a redelivered call counts once); renewals are the owner's
//! cases closed renewed. `GET /v1/reports/owner-progress` answers a branch's day,
//! `GET /v1/reports/branch-week` its week (with the cases lost); after local midnight
//! [`Issuer`] issues every branch's day before, and on Monday its week before, keeps
//! them and publishes them (`assignment.review.issued`).

use std::time::Duration;

use axum::Json;
use axum::extract::{Query, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use chrono::{DateTime, Datelike, NaiveDate, NaiveTime, Utc, Weekday};
use renewal_contract::assignment::ReviewIssued;
use renewal_contract::subject;
use renewal_platform::{Caller, Clock, Outbox, Role};
use serde::{Deserialize, Serialize};
use sqlx::{PgConnection, PgPool, Row};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::access;
use crate::refusals::Refusal;

/// Counts the calls owners made on their own cases, per owner and local day.
pub async fn record(
    tx: &mut PgConnection,
    calls: &[(uuid::Uuid, &str, String, DateTime<Utc>)],
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO assignment.owner_days AS d (day, agent_code, branch_code, calls, promises)
         SELECT (v.at AT TIME ZONE c.time_zone)::date, c.owner_agent, coalesce(c.owner_branch, c.branch_code),
                count(*), count(*) FILTER (WHERE v.outcome = 'promised')
         FROM unnest($1::uuid[], $2::text[], $3::text[], $4::timestamptz[]) AS v(case_id, agent, outcome, at)
         JOIN assignment.cases c ON c.case_id = v.case_id AND c.owner_agent = v.agent
         WHERE c.time_zone IS NOT NULL
         GROUP BY 1, 2, 3
         ON CONFLICT (day, agent_code) DO UPDATE
         SET calls = d.calls + EXCLUDED.calls, promises = d.promises + EXCLUDED.promises",
    )
    .bind(calls.iter().map(|c| c.0).collect::<Vec<_>>())
    .bind(calls.iter().map(|c| c.1).collect::<Vec<_>>())
    .bind(calls.iter().map(|c| c.2.as_str()).collect::<Vec<_>>())
    .bind(calls.iter().map(|c| c.3).collect::<Vec<_>>())
    .execute(&mut *tx)
    .await?;
    Ok(())
}

/// One owner's figures over the period.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct OwnerFigures {
    pub agent_code: String,
    /// Calls the owner completed on their own cases.
    pub calls: i64,
    pub promises: i64,
    /// The owner's cases closed renewed (or rescued).
    pub renewals: i64,
}

/// A branch's owners over a day or a week.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Progress {
    pub branch_code: String,
    pub from: NaiveDate,
    pub to: NaiveDate,
    pub owners: Vec<OwnerFigures>,
    pub calls: i64,
    pub promises: i64,
    pub renewals: i64,
    /// The branch's cases lost in the period (insured elsewhere, vehicle sold).
    pub lost: i64,
}

/// The branch's figures from `from` to `to` (local days).
pub async fn progress(
    conn: &mut PgConnection,
    branch: &str,
    from: NaiveDate,
    to: NaiveDate,
) -> Result<Progress, sqlx::Error> {
    let rows = sqlx::query(
        "WITH calls AS (
             SELECT agent_code, sum(calls)::bigint AS calls, sum(promises)::bigint AS promises
             FROM assignment.owner_days WHERE branch_code = $1 AND day BETWEEN $2 AND $3
             GROUP BY agent_code
         ), renewals AS (
             SELECT renewed_by AS agent_code, count(*) AS renewals FROM assignment.cases
             WHERE outcome IN ('renewed', 'rescued') AND renewed_by IS NOT NULL
               AND coalesce(owner_branch, branch_code) = $1
               AND closed_at BETWEEN $2::date - 1 AND $3::date + 2
               AND (closed_at AT TIME ZONE time_zone)::date BETWEEN $2 AND $3
             GROUP BY renewed_by
         )
         SELECT coalesce(c.agent_code, r.agent_code) AS agent_code, coalesce(c.calls, 0) AS calls,
                coalesce(c.promises, 0) AS promises, coalesce(r.renewals, 0) AS renewals
         FROM calls c FULL JOIN renewals r ON r.agent_code = c.agent_code ORDER BY 1",
    )
    .bind(branch)
    .bind(from)
    .bind(to)
    .fetch_all(&mut *conn)
    .await?;
    let owners = rows
        .iter()
        .map(|r| {
            Ok(OwnerFigures {
                agent_code: r.try_get("agent_code")?,
                calls: r.try_get("calls")?,
                promises: r.try_get("promises")?,
                renewals: r.try_get("renewals")?,
            })
        })
        .collect::<Result<Vec<_>, sqlx::Error>>()?;
    let lost: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM assignment.cases
         WHERE outcome IN ('insured_elsewhere', 'vehicle_sold') AND coalesce(owner_branch, branch_code) = $1
           AND closed_at BETWEEN $2::date - 1 AND $3::date + 2
           AND (closed_at AT TIME ZONE time_zone)::date BETWEEN $2 AND $3",
    )
    .bind(branch)
    .bind(from)
    .bind(to)
    .fetch_one(&mut *conn)
    .await?;
    Ok(Progress {
        branch_code: branch.to_owned(),
        from,
        to,
        calls: owners.iter().map(|o| o.calls).sum(),
        promises: owners.iter().map(|o| o.promises).sum(),
        renewals: owners.iter().map(|o| o.renewals).sum(),
        lost,
        owners,
    })
}

fn render_csv(p: &Progress) -> String {
    let mut out = String::from("agent_code,calls,promises,renewals\r\n");
    for o in &p.owners {
        out.push_str(&format!(
            "{},{},{},{}\r\n",
            o.agent_code, o.calls, o.promises, o.renewals
        ));
    }
    out.push_str(&format!(
        "total,{},{},{}\r\n",
        p.calls, p.promises, p.renewals
    ));
    out
}

#[derive(Clone)]
pub struct ProgressApi {
    pub pool: PgPool,
    pub clock: Clock,
    pub time_zone: chrono_tz::Tz,
}

pub fn routes(api: ProgressApi) -> renewal_platform::http::Routes {
    renewal_platform::http::Routes::new()
        .route("/v1/reports/owner-progress", get(owner_progress))
        .route("/v1/reports/branch-week", get(branch_week))
        .route("/v1/reports/ownership", get(crate::season::ownership))
        .finish(|router| router.with_state(api))
}

/// Who reads a branch's rhythm: its supervisor and staff, its city, HQ and analysts.
const READERS: &[Role] = &[
    Role::Supervisor,
    Role::BranchAdmin,
    Role::CityAdmin,
    Role::HqAdmin,
    Role::Analyst,
];

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ProgressQuery {
    /// The branch.
    branch: String,
    /// YYYY-MM-DD: the day (owner progress; default yesterday) or any day of the week
    /// (branch week; default last week).
    day: Option<String>,
    /// json (default) or csv.
    format: Option<String>,
}

async fn answer(
    api: &ProgressApi,
    caller: &Caller,
    q: ProgressQuery,
    weekly: bool,
) -> Result<Response, Refusal> {
    let mut conn = api.pool.acquire().await?;
    let city = access::branch_city(&mut conn, &q.branch).await?;
    access::for_branch(caller, READERS, &q.branch, city.as_deref())?;
    if city.is_none() {
        return Err(Refusal::UnknownBranch(q.branch));
    }
    let today = renewal_platform::local_date(api.clock.now(), api.time_zone);
    let day = match q.day.as_deref() {
        None | Some("") if weekly => today - chrono::Days::new(7),
        None | Some("") => today - chrono::Days::new(1),
        Some(raw) => NaiveDate::parse_from_str(raw, "%Y-%m-%d")
            .map_err(|_| Refusal::Invalid(format!("day {raw:?} is not YYYY-MM-DD")))?,
    };
    let (from, to) = if weekly { week_of(day) } else { (day, day) };
    let figures = progress(&mut conn, &q.branch, from, to).await?;
    match q.format.as_deref() {
        Some("csv") => {
            let content_type = [(header::CONTENT_TYPE, "text/csv; charset=utf-8")];
            Ok((content_type, render_csv(&figures)).into_response())
        }
        None | Some("") | Some("json") => Ok(Json(figures).into_response()),
        Some(other) => Err(Refusal::Invalid(format!(
            "format {other:?}: use json or csv"
        ))),
    }
}

/// The Monday to Sunday week of a day.
pub fn week_of(day: NaiveDate) -> (NaiveDate, NaiveDate) {
    let monday = day - chrono::Days::new(u64::from(day.weekday().num_days_from_monday()));
    (monday, monday + chrono::Days::new(6))
}

/// `GET /v1/reports/owner-progress?branch=&day=`: each owner's calls, promises and
/// renewals of the day.
#[utoipa::path(get, path = "/v1/reports/owner-progress", tag = "reports", params(ProgressQuery),
    responses((status = 200, body = Progress), (status = 400, content_type = "application/problem+json", body = renewal_platform::openapi::ProblemDocument),
              renewal_platform::openapi::Refusals,
              (status = 422, description = "No such branch", content_type = "application/problem+json", body = renewal_platform::openapi::ProblemDocument)))]
async fn owner_progress(
    State(api): State<ProgressApi>,
    caller: Caller,
    Query(q): Query<ProgressQuery>,
) -> Result<Response, Refusal> {
    answer(&api, &caller, q, false).await
}

/// `GET /v1/reports/branch-week?branch=&day=`: the branch's week (Monday to Sunday) by
/// owner, with the cases lost.
#[utoipa::path(get, path = "/v1/reports/branch-week", tag = "reports", params(ProgressQuery),
    responses((status = 200, body = Progress), (status = 400, content_type = "application/problem+json", body = renewal_platform::openapi::ProblemDocument),
              renewal_platform::openapi::Refusals,
              (status = 422, description = "No such branch", content_type = "application/problem+json", body = renewal_platform::openapi::ProblemDocument)))]
async fn branch_week(
    State(api): State<ProgressApi>,
    caller: Caller,
    Query(q): Query<ProgressQuery>,
) -> Result<Response, Refusal> {
    answer(&api, &caller, q, true).await
}

/// Issues the reviews after local midnight of the service's time zone.
pub struct Issuer {
    pub pool: PgPool,
    pub outbox: Outbox,
    pub clock: Clock,
    pub time_zone: chrono_tz::Tz,
}

fn issue_time() -> NaiveTime {
    NaiveTime::from_hms_opt(0, 10, 0).unwrap_or(NaiveTime::MIN)
}

impl Issuer {
    pub async fn run(self, cancel: CancellationToken) {
        loop {
            let now = self.clock.now();
            let today = renewal_platform::local_date(now, self.time_zone);
            let mut next = renewal_platform::local_instant(
                today + chrono::Days::new(1),
                issue_time(),
                self.time_zone,
            );
            if now >= renewal_platform::local_instant(today, issue_time(), self.time_zone) {
                match self.issue(today, now).await {
                    Ok(0) => {}
                    Ok(n) => {
                        self.outbox.wake();
                        tracing::info!(%today, reviews = n, "owner and branch reviews issued");
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, %today, "issuing the reviews failed; retrying");
                        next = now + chrono::Duration::seconds(5);
                    }
                }
            }
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = self.clock.sleep_until(next, Duration::from_secs(30)) => {}
            }
        }
    }

    /// Every branch's day before `today` and, on Monday, its week before, where anything
    /// happened; each once.
    pub async fn issue(&self, today: NaiveDate, now: DateTime<Utc>) -> Result<usize, sqlx::Error> {
        let mut tx = self.pool.begin().await?;
        let branches: Vec<String> =
            sqlx::query_scalar("SELECT branch_code FROM assignment.branches ORDER BY 1")
                .fetch_all(&mut *tx)
                .await?;
        let yesterday = today - chrono::Days::new(1);
        let mut periods = vec![("owner_daily", yesterday.to_string(), (yesterday, yesterday))];
        if today.weekday() == Weekday::Mon {
            let week = week_of(yesterday);
            periods.push(("branch_weekly", week.0.to_string(), week));
        }
        let mut issued = 0;
        for branch in &branches {
            for (kind, period, (from, to)) in &periods {
                let figures = progress(&mut tx, branch, *from, *to).await?;
                if figures.owners.is_empty() && figures.lost == 0 {
                    // Nothing happened in the branch: nothing to report.
                    continue;
                }
                let body = serde_json::to_value(&figures).unwrap_or_default();
                let kept = sqlx::query(
                    "INSERT INTO assignment.reviews (kind, period, branch_code, issued_at, body)
                     VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING",
                )
                .bind(kind)
                .bind(period)
                .bind(branch)
                .bind(now)
                .bind(&body)
                .execute(&mut *tx)
                .await?;
                if kept.rows_affected() == 0 {
                    continue;
                }
                let event = ReviewIssued {
                    kind: (*kind).to_owned(),
                    period: period.clone(),
                    branch_code: branch.clone(),
                    issued_at_ms: now.timestamp_millis(),
                    body_json: body.to_string(),
                };
                self.outbox
                    .enqueue(&mut tx, subject::ASSIGNMENT_REVIEW_ISSUED, &event)
                    .instrument(tracing::info_span!(parent: None, "review_issued"))
                    .await?;
                issued += 1;
            }
        }
        tx.commit().await?;
        Ok(issued)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_week_runs_monday_to_sunday() {
        let d = |s: &str| NaiveDate::parse_from_str(s, "%Y-%m-%d").expect("date");
        assert_eq!(week_of(d("2027-01-20")), (d("2027-01-18"), d("2027-01-24")));
        assert_eq!(week_of(d("2027-01-18")), (d("2027-01-18"), d("2027-01-24")));
        assert_eq!(week_of(d("2027-01-24")), (d("2027-01-18"), d("2027-01-24")));
    }
}
