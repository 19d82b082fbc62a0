//! Renewal cases as assignment keeps them: opened (waiting for a list, with the last
//! moment they may still have no owner: T-31, local midnight), lapsed (still open, its
//! owner keeps it for the lapse rescue, no deadline runs any more), closed (with the
//! outcome and who owned the case then, for attribution: a rescue is credited as a
//! renewal).

use renewal_contract::lists::{CaseClosed, CaseOpened, CaseOutcome};
use renewal_contract::subject;
use renewal_platform::inbox::field;
use renewal_platform::{Delivery, HandleError, Handler};
use sqlx::PgConnection;

pub struct CaseEvents {
    pub wake: std::sync::Arc<tokio::sync::Notify>,
    pub outbox: renewal_platform::Outbox,
    pub clock: renewal_platform::Clock,
}

/// Days before the effective expiry by which every case has an owner (the owner
/// calls at T-30).
pub const OWNER_BY_DAYS: u64 = 31;

impl Handler for CaseEvents {
    async fn handle(&self, tx: &mut PgConnection, delivery: &Delivery) -> Result<(), HandleError> {
        match delivery.subject.as_str() {
            subject::LISTS_CASE_OPENED => opened(tx, delivery).await,
            subject::LISTS_CASE_CLOSED => closed(tx, delivery).await,
            subject::LISTS_CASE_LAPSED => lapsed(tx, delivery).await,
            subject::LISTS_CASE_REOPENED => {
                let event: renewal_contract::lists::CaseReopened = delivery.decode()?;
                crate::case_changes::reopened(tx, &event, self.clock.now()).await
            }
            subject::LISTS_CASE_CHANGED => {
                let event: renewal_contract::lists::CaseChanged = delivery.decode()?;
                crate::case_changes::changed(tx, &self.outbox, &event, self.clock.now()).await
            }
            // Bucket moves are for the services that plan by bucket; nothing to do here.
            subject::LISTS_CASE_BUCKET_CHANGED => Ok(()),
            other => Err(HandleError::Malformed(format!(
                "unexpected subject {other}"
            ))),
        }
    }

    fn committed(&self) {
        self.wake.notify_one();
    }

    /// An opening or a change is kept without its customer (assignment never reads it,
    /// and holds no key to seal it); the others carry none and are kept whole.
    fn redact(&self, delivery: &Delivery) -> Option<Vec<u8>> {
        match delivery.subject.as_str() {
            subject::LISTS_CASE_OPENED => {
                let mut opened: CaseOpened = delivery.decode().ok()?;
                opened.customer = None;
                Some(prost::Message::encode_to_vec(&opened))
            }
            subject::LISTS_CASE_CHANGED => {
                let mut changed: renewal_contract::lists::CaseChanged = delivery.decode().ok()?;
                changed.customer = None;
                Some(prost::Message::encode_to_vec(&changed))
            }
            _ => Some(delivery.payload.to_vec()),
        }
    }
}

/// A case opened: kept waiting for its list, with the moment it must have an owner by
/// (closed already if its close came first).
async fn opened(tx: &mut PgConnection, delivery: &Delivery) -> Result<(), HandleError> {
    let event: CaseOpened = delivery.decode()?;
    let id = field::uuid("case_id", &event.case_id)?;
    let expiry = field::date("expiry_date", &event.expiry_date)?;
    let effective = if event.effective_expiry_date.is_empty() {
        expiry
    } else {
        field::date("effective_expiry_date", &event.effective_expiry_date)?
    };
    let tz = field::time_zone("time_zone", &event.time_zone)?;
    let opened_at = field::instant_ms("opened_at_ms", event.opened_at_ms)?;
    let owner_by = renewal_platform::local_instant(
        effective - chrono::Days::new(OWNER_BY_DAYS),
        chrono::NaiveTime::MIN,
        tz,
    );
    sqlx::query(
        "INSERT INTO assignment.cases (case_id, policy_no, city_code, branch_code, credited_agent,
                 expiry_date, important, group_policy, opened_at, state, closed_at,
                 effective_expiry_date, time_zone, owner_by, phase, originator_keeps_credit)
             SELECT $1, $2, $3, $4, $5, $6, $7, $8, $9,
                    CASE WHEN e.case_id IS NULL THEN 'open' ELSE 'closed' END, e.closed_at,
                    $10, $11, $12, 'awaiting_list', $13
             FROM (SELECT 1) one LEFT JOIN assignment.closed_early e ON e.case_id = $1
             ON CONFLICT (case_id) DO NOTHING",
    )
    .bind(id)
    .bind(&event.policy_no)
    .bind(&event.city_code)
    .bind(&event.branch_code)
    .bind(&event.agent_code)
    .bind(expiry)
    .bind(event.important)
    .bind(event.group_policy)
    .bind(opened_at)
    .bind(effective)
    .bind(tz.name())
    .bind(owner_by)
    .bind(event.originator_keeps_credit)
    .execute(&mut *tx)
    .await?;
    Ok(())
}

/// A case closed: its outcome and who owned it then; a close ahead of its opening is
/// noted for the opening to find.
async fn closed(tx: &mut PgConnection, delivery: &Delivery) -> Result<(), HandleError> {
    let event: CaseClosed = delivery.decode()?;
    let id = field::uuid("case_id", &event.case_id)?;
    let closed_at = field::instant_ms("closed_at_ms", event.closed_at_ms)?;
    let outcome = match CaseOutcome::try_from(event.outcome) {
        Ok(CaseOutcome::Renewed) => "renewed",
        Ok(CaseOutcome::Lapsed) => "lapsed",
        Ok(CaseOutcome::Rescued) => "rescued",
        Ok(CaseOutcome::InsuredElsewhere) => "insured_elsewhere",
        Ok(CaseOutcome::VehicleSold) => "vehicle_sold",
        Ok(CaseOutcome::Cancelled) => "cancelled",
        _ => "unknown",
    };
    let updated = sqlx::query(
        "UPDATE assignment.cases SET state = 'closed', closed_at = $2, outcome = $3,
                 renewed_by = CASE WHEN $3 IN ('renewed', 'rescued') THEN owner_agent END,
                 phase_due_at = NULL
             WHERE case_id = $1 AND state = 'open'",
    )
    .bind(id)
    .bind(closed_at)
    .bind(outcome)
    .execute(&mut *tx)
    .await?;
    let known: bool = updated.rows_affected() == 1
        || sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM assignment.cases WHERE case_id = $1)")
            .bind(id)
            .fetch_one(&mut *tx)
            .await?;
    if !known {
        sqlx::query("INSERT INTO assignment.closed_early (case_id, closed_at) VALUES ($1, $2) ON CONFLICT DO NOTHING")
                .bind(id)
                .bind(closed_at)
                .execute(&mut *tx)
                .await?;
    }
    Ok(())
}

/// A case lapsed: it stays with its owner for the lapse rescue; no claim, research or
/// second-assignment deadline runs after the expiry.
async fn lapsed(tx: &mut PgConnection, delivery: &Delivery) -> Result<(), HandleError> {
    let event: renewal_contract::lists::CaseLapsed = delivery.decode()?;
    let id = field::uuid("case_id", &event.case_id)?;
    Ok(keep_for_rescue(tx, id).await?)
}

/// The case lapsed (at its expiry, or when a reported renewal turned out unconfirmed
/// after it): kept with its owner for the rescue, with no deadline.
pub(crate) async fn keep_for_rescue(
    tx: &mut PgConnection,
    case_id: uuid::Uuid,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE assignment.cases SET outcome = 'lapsed', phase_due_at = NULL
         WHERE case_id = $1 AND state = 'open'",
    )
    .bind(case_id)
    .execute(&mut *tx)
    .await?;
    Ok(())
}
