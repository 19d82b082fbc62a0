//! The scheduler's copy of each case: opened (plan its timers), lapsed (the contacts
//! planned before the lapse stop, the rescue stages after it go on), reopened after an
//! unconfirmed renewal (held timers resume, the owner checks the renewal), closed
//! (cancel them at once), owner named.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use renewal_contract::assignment::OwnerAssigned;
use renewal_contract::lists::{
    CaseChanged, CaseClosed, CaseLapsed, CaseOpened, CaseOutcome, CaseReopened,
};
use renewal_contract::subject;
use renewal_platform::inbox::field;
use renewal_platform::pii::PiiCipher;
use renewal_platform::{Clock, Delivery, HandleError, Handler};
use sqlx::PgConnection;
use tokio::sync::Notify;

pub struct CaseEvents {
    pub clock: Clock,
    pub hours: crate::plan::Hours,
    pub timers_changed: Arc<Notify>,
    /// Keys each case's mobile's blind index.
    pub pii: Arc<PiiCipher>,
}

impl Handler for CaseEvents {
    async fn handle(&self, tx: &mut PgConnection, delivery: &Delivery) -> Result<(), HandleError> {
        match delivery.subject.as_str() {
            subject::LISTS_CASE_OPENED => {
                let event: CaseOpened = delivery.decode()?;
                opened(tx, &event, self.clock.now(), self.hours, &self.pii).await
            }
            subject::LISTS_CASE_CLOSED => {
                let event: CaseClosed = delivery.decode()?;
                closed(tx, &event).await
            }
            subject::LISTS_CASE_LAPSED => {
                let event: CaseLapsed = delivery.decode()?;
                lapsed(tx, &event).await
            }
            subject::LISTS_CASE_REOPENED => {
                let event: CaseReopened = delivery.decode()?;
                reopened(tx, &event, self.clock.now(), self.hours).await
            }
            subject::LISTS_CASE_CHANGED => {
                let event: CaseChanged = delivery.decode()?;
                crate::replanning::changed(tx, &event, self.clock.now(), &self.hours, &self.pii)
                    .await
            }
            // Bucket moves are for the services that plan by bucket; nothing to do here.
            subject::LISTS_CASE_BUCKET_CHANGED => Ok(()),
            other => Err(HandleError::Malformed(format!(
                "unexpected subject {other}"
            ))),
        }
    }

    fn committed(&self) {
        self.timers_changed.notify_one();
    }
}

async fn opened(
    tx: &mut PgConnection,
    event: &CaseOpened,
    now: DateTime<Utc>,
    hours: crate::plan::Hours,
    pii: &PiiCipher,
) -> Result<(), HandleError> {
    let id = field::uuid("case_id", &event.case_id)?;
    let expiry = field::date("expiry_date", &event.expiry_date)?;
    let effective = field::date("effective_expiry_date", &event.effective_expiry_date)?;
    let tz = field::time_zone("time_zone", &event.time_zone)?;
    // The contact itself is dispatch's (it sends and calls); the scheduler keeps only
    // the mobile's blind index, for the frequency cap, and the mobile sealed, for a key
    // rotation to index it again. Sealing fails only when the system's random source
    // does: retried.
    let mobile = event.customer.as_ref().map_or("", |c| c.mobile.as_str());
    let (mobile_enc, mobile_index) = crate::contact::seal_mobile(pii, id, mobile)?.unzip();
    let (plan_city, plan_version, plan) = crate::plan_versions::current(tx, &event.city_code)
        .await?
        .ok_or_else(|| HandleError::Retry("no reminder plan stored yet".into()))?;
    // A case closed before its opening arrived is already here as 'closed'; it keeps
    // that state and gets no timers. One erased before it arrived keeps no index.
    sqlx::query(
        "INSERT INTO scheduler.cases (case_id, policy_no, expiry_date, effective_expiry_date, time_zone,
             mobile_index, city_code, branch_code, plan_city, plan_version, mobile_enc)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)
         ON CONFLICT (case_id) DO UPDATE SET policy_no = EXCLUDED.policy_no, expiry_date = EXCLUDED.expiry_date,
             effective_expiry_date = EXCLUDED.effective_expiry_date, time_zone = EXCLUDED.time_zone,
             mobile_index = CASE WHEN scheduler.cases.erased_at IS NULL THEN EXCLUDED.mobile_index
                                 ELSE scheduler.cases.mobile_index END,
             mobile_enc = CASE WHEN scheduler.cases.erased_at IS NULL THEN EXCLUDED.mobile_enc
                               ELSE scheduler.cases.mobile_enc END,
             city_code = EXCLUDED.city_code, branch_code = EXCLUDED.branch_code,
             plan_city = EXCLUDED.plan_city, plan_version = EXCLUDED.plan_version",
    )
    .bind(id)
    .bind(&event.policy_no)
    .bind(expiry)
    .bind(effective)
    .bind(tz.name())
    .bind(mobile_index.as_ref().map(|i| i.as_slice()))
    .bind(&event.city_code)
    .bind(&event.branch_code)
    .bind(&plan_city)
    .bind(plan_version)
    .bind(mobile_enc)
    .execute(&mut *tx)
    .await?;
    let placed = crate::plan::place(&plan, effective, tz, now, &hours);
    crate::timers::insert(tx, id, &placed).await?;
    Ok(())
}

async fn closed(tx: &mut PgConnection, event: &CaseClosed) -> Result<(), HandleError> {
    let id = field::uuid("case_id", &event.case_id)?;
    let closed_at = field::instant_ms("closed_at_ms", event.closed_at_ms)?;
    let reason = match CaseOutcome::try_from(event.outcome).unwrap_or(CaseOutcome::Unspecified) {
        CaseOutcome::Renewed => "renewed",
        // Closed lapsed: only from a lists that closed cases at their lapse.
        CaseOutcome::Lapsed => "lapsed",
        CaseOutcome::Rescued => "rescued",
        CaseOutcome::InsuredElsewhere => "insured_elsewhere",
        CaseOutcome::VehicleSold => "vehicle_sold",
        CaseOutcome::Cancelled => "cancelled",
        CaseOutcome::Unspecified => "closed",
    };
    sqlx::query(
        "INSERT INTO scheduler.cases (case_id, policy_no, state, closed_reason, closed_at)
         VALUES ($1, $2, 'closed', $3, $4)
         ON CONFLICT (case_id) DO UPDATE SET state = 'closed', closed_reason = EXCLUDED.closed_reason,
             closed_at = EXCLUDED.closed_at",
    )
    .bind(id)
    .bind(&event.policy_no)
    .bind(reason)
    .bind(closed_at)
    .execute(&mut *tx)
    .await?;
    // A lapse keeps the lapse-rescue stages after it; anything else stops every timer.
    let lapse_kept_after = (reason == "lapsed").then_some(closed_at);
    cancel_pending(tx, &[id], reason, lapse_kept_after).await?;
    Ok(())
}

/// A case lapsed: the contacts planned up to the lapse stop; the rescue stages after it
/// stay (the case stays open here, so call outcomes still reschedule).
async fn lapsed(tx: &mut PgConnection, event: &CaseLapsed) -> Result<(), HandleError> {
    let id = field::uuid("case_id", &event.case_id)?;
    let lapsed_at = field::instant_ms("lapsed_at_ms", event.lapsed_at_ms)?;
    cancel_pending(tx, &[id], "lapsed", Some(lapsed_at)).await?;
    Ok(())
}

/// A renewal reported on the phone was not confirmed: the timers held by the report
/// resume (skipped when their time has passed), and the owner is asked to check the
/// renewal with the customer.
async fn reopened(
    tx: &mut PgConnection,
    event: &CaseReopened,
    now: DateTime<Utc>,
    hours: crate::plan::Hours,
) -> Result<(), HandleError> {
    let id = field::uuid("case_id", &event.case_id)?;
    let Some(tz) = sqlx::query_scalar::<_, Option<String>>(
        "SELECT time_zone FROM scheduler.cases WHERE case_id = $1 AND state = 'open' FOR UPDATE",
    )
    .bind(id)
    .fetch_optional(&mut *tx)
    .await?
    else {
        return Ok(());
    };
    let tz: chrono_tz::Tz = tz
        .and_then(|t| t.parse().ok())
        .unwrap_or(chrono_tz::Asia::Shanghai);
    crate::outcomes::resume_held(tx, id, crate::outcomes::HELD_RENEWAL, now).await?;
    let due = crate::plan::allowed(now, hours.calls, None, tz).unwrap_or(now);
    let check = crate::outcomes::call(
        format!("renewal check {}", event.reported_at_ms),
        crate::plan::Queue::Owner,
    );
    crate::outcomes::add(tx, id, check, now, due).await?;
    Ok(())
}

/// Cancels the cases' pending timers, noted `case <reason>` (a closed case's, an erased
/// one's), but those planned after `kept_after` (a lapse keeps its rescue stages).
/// Returns how many it cancelled.
pub(crate) async fn cancel_pending(
    tx: &mut PgConnection,
    case_ids: &[uuid::Uuid],
    reason: &'static str,
    kept_after: Option<DateTime<Utc>>,
) -> Result<u64, sqlx::Error> {
    let cancelled = sqlx::query(
        "UPDATE scheduler.timers SET state = 'cancelled', note = 'case ' || $2
         WHERE case_id = ANY($1) AND state IN ('pending', 'held')
           AND NOT ($3::timestamptz IS NOT NULL AND nominal_at IS NOT NULL AND nominal_at > $3)",
    )
    .bind(case_ids)
    .bind(reason)
    .bind(kept_after)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    metrics::counter!("timers_cancelled_total", "reason" => reason).increment(cancelled);
    Ok(cancelled)
}

pub struct OwnerEvents;

impl Handler for OwnerEvents {
    async fn handle(&self, tx: &mut PgConnection, delivery: &Delivery) -> Result<(), HandleError> {
        if delivery.subject != subject::ASSIGNMENT_OWNER_ASSIGNED {
            return Err(HandleError::Malformed(format!(
                "unexpected subject {}",
                delivery.subject
            )));
        }
        let event: OwnerAssigned = delivery.decode()?;
        let id = field::uuid("case_id", &event.case_id)?;
        let at = field::instant_ms("assigned_at_ms", event.assigned_at_ms)?;
        // Owner changes are applied in the order they happened, whatever order they arrive in.
        sqlx::query(
            "INSERT INTO scheduler.owners (case_id, owner_agent, assigned_at) VALUES ($1, $2, $3)
             ON CONFLICT (case_id) DO UPDATE SET owner_agent = EXCLUDED.owner_agent, assigned_at = EXCLUDED.assigned_at
             WHERE scheduler.owners.assigned_at <= EXCLUDED.assigned_at",
        )
        .bind(id)
        .bind(&event.owner_agent)
        .bind(at)
        .execute(&mut *tx)
        .await?;
        Ok(())
    }
}
