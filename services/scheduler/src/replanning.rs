//! A case whose policy changed while it is worked (`lists.case.changed`): a new expiry
//! re-plans every stage not yet fired from the case's own plan version (moved, or
//! skipped when its new time has passed; stages the plan gains are added), a new mobile
//! re-indexes the frequency cap and resumes the contacts held for a wrong number, a new
//! branch is noted for the commands to come.

use chrono::{DateTime, Utc};
use renewal_contract::lists::CaseChanged;
use renewal_platform::HandleError;
use renewal_platform::inbox::field;
use renewal_platform::pii::PiiCipher;
use sqlx::{PgConnection, Row};
use uuid::Uuid;

use crate::plan::{Hours, Placed, Plan};

pub(crate) async fn changed(
    tx: &mut PgConnection,
    event: &CaseChanged,
    now: DateTime<Utc>,
    hours: &Hours,
    pii: &PiiCipher,
) -> Result<(), HandleError> {
    let id = field::uuid("case_id", &event.case_id)?;
    let Some(case) = sqlx::query(
        "SELECT plan_city, plan_version FROM scheduler.cases WHERE case_id = $1 AND state = 'open'
         FOR UPDATE",
    )
    .bind(id)
    .fetch_optional(&mut *tx)
    .await?
    else {
        // Closed (or never planned here): nothing to move.
        return Ok(());
    };
    let what = |w: &str| event.changed.iter().any(|c| c == w);
    if what("expiry") {
        let expiry = field::date("expiry_date", &event.expiry_date)?;
        let effective = field::date("effective_expiry_date", &event.effective_expiry_date)?;
        let tz = field::time_zone("time_zone", &event.time_zone)?;
        sqlx::query(
            "UPDATE scheduler.cases SET expiry_date = $2, effective_expiry_date = $3 WHERE case_id = $1",
        )
        .bind(id)
        .bind(expiry)
        .bind(effective)
        .execute(&mut *tx)
        .await?;
        let city: Option<String> = case.try_get("plan_city")?;
        let version: Option<i32> = case.try_get("plan_version")?;
        let plan = match (city, version) {
            (Some(city), Some(version)) => {
                crate::plan_versions::version(tx, &city, version).await?
            }
            _ => None,
        };
        let plan = match plan {
            Some(plan) => plan,
            None => crate::plan::Plan::default_plan()
                .map_err(|e| HandleError::Retry(format!("the default plan: {e}")))?,
        };
        replan(tx, id, &plan, effective, tz, now, hours).await?;
    }
    if what("mobile") {
        let mobile = event.customer.as_ref().map_or("", |c| c.mobile.as_str());
        let (mobile_enc, mobile_index) = crate::contact::seal_mobile(pii, id, mobile)?.unzip();
        let changed_at = match event.changed_at_ms {
            0 => now,
            ms => field::instant_ms("changed_at_ms", ms)?,
        };
        sqlx::query(
            "UPDATE scheduler.cases SET mobile_index = $2, mobile_enc = $3,
                 mobile_changed_at = GREATEST(mobile_changed_at, $4)
             WHERE case_id = $1 AND erased_at IS NULL",
        )
        .bind(id)
        .bind(mobile_index.as_ref().map(|i| i.as_slice()))
        .bind(mobile_enc)
        .bind(changed_at)
        .execute(&mut *tx)
        .await?;
        crate::outcomes::resume_held(tx, id, crate::outcomes::HELD_WRONG_NUMBER, now).await?;
    }
    if what("branch") {
        sqlx::query("UPDATE scheduler.cases SET branch_code = $2 WHERE case_id = $1")
            .bind(id)
            .bind(&event.branch_code)
            .execute(&mut *tx)
            .await?;
    }
    Ok(())
}

/// Moves the case's pending and held timers of each plan stage to where the plan puts
/// them against the new expiry (skipped when that has passed), and adds the stages it
/// has no timer for. Fired timers stay as they were: what happened happened.
async fn replan(
    tx: &mut PgConnection,
    case_id: Uuid,
    plan: &Plan,
    effective: chrono::NaiveDate,
    tz: chrono_tz::Tz,
    now: DateTime<Utc>,
    hours: &Hours,
) -> Result<(), sqlx::Error> {
    let placed: Vec<Placed> = crate::plan::place(plan, effective, tz, now, hours);
    let stages: Vec<&str> = placed.iter().map(|p| p.stage.stage.as_str()).collect();
    let dues: Vec<DateTime<Utc>> = placed.iter().map(|p| p.due).collect();
    let nominals: Vec<DateTime<Utc>> = placed.iter().map(|p| p.nominal).collect();
    let skipped: Vec<bool> = placed.iter().map(|p| p.skipped.is_some()).collect();
    let moved = sqlx::query(
        "UPDATE scheduler.timers t
         SET due_at = u.due_at, nominal_at = u.nominal_at,
             state = CASE WHEN u.skipped THEN 'skipped' ELSE t.state END,
             note = CASE WHEN u.skipped THEN 'skipped: the expiry moved and its time has passed'
                         WHEN t.state = 'held' THEN t.note
                         ELSE 're-planned: the expiry moved' END
         FROM UNNEST($2::text[], $3::timestamptz[], $4::timestamptz[], $5::bool[])
              AS u(stage, due_at, nominal_at, skipped)
         WHERE t.case_id = $1 AND t.stage = u.stage AND t.state IN ('pending', 'held')",
    )
    .bind(case_id)
    .bind(&stages)
    .bind(&dues)
    .bind(&nominals)
    .bind(&skipped)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    metrics::counter!("timers_replanned_total").increment(moved);
    // Stages with no timer yet (catch-ups the new expiry calls for) are added, and held
    // at once if a renewal reported on a call is.
    crate::timers::insert(tx, case_id, &placed).await?;
    crate::outcomes::hold_if_renewal_held(tx, case_id).await
}
