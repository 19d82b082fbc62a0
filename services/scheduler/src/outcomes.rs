//! Call outcomes reschedule the case's contacts: call back at a time (a call then),
//! promised by a date (contacts before it are paused; a check call the day after),
//! unreachable (try again the next day, at most 3 times), refused (every pending
//! contact stops except the lapse rescue the plan keeps), insured elsewhere or sold
//! (the same; lists closes the case, which stops the rest), wrong number (contacts are
//! held until a corrected mobile arrives in `lists.case.changed`, and the owner gets a
//! contact-correction task), renewed (every timer is held at once, contacts and the
//! T-5 step alike, until the core system confirms the renewal and lists closes the
//! case; if it never does, lists reopens the case and the held timers resume).

use std::sync::Arc;

use chrono::{DateTime, Days, NaiveDate, NaiveTime, Utc};
use renewal_contract::dispatch::{CallOutcome, PhoneTaskCompleted};
use renewal_platform::completed_calls::CompletedCall;
use renewal_platform::inbox::field;
use renewal_platform::{Delivery, HandleError, Handler};
use sqlx::{PgConnection, Row};
use tokio::sync::Notify;
use uuid::Uuid;

use crate::plan::{Action, Hours, Placed, Queue, Stage};

/// At most this many "unreachable, try tomorrow" calls per case.
const UNREACHABLE_RETRIES: i64 = 3;

pub struct OutcomeEvents {
    pub hours: Hours,
    pub timers_changed: Arc<Notify>,
}

pub(crate) fn call(name: String, queue: Queue) -> Stage {
    Stage {
        stage: name,
        days_before: 0,
        at: NaiveTime::MIN,
        action: Action::PhoneTask,
        template: String::new(),
        queue: Some(queue),
        marketing: None,
        promotion: String::new(),
        keep_after_refusal: false,
    }
}

impl Handler for OutcomeEvents {
    async fn handle(&self, tx: &mut PgConnection, delivery: &Delivery) -> Result<(), HandleError> {
        // Other dispatch facts (SMS statuses) are not the scheduler's business.
        match CompletedCall::of(delivery)? {
            Some(completed) => self.apply(tx, &completed).await,
            None => Ok(()),
        }
    }

    /// Most calls of a busy hour come back for cases with timers here, but not every
    /// one: the cases are looked up for the batch at once, and only the calls of the
    /// open ones are applied (each as it would be alone).
    async fn handle_batch(
        &self,
        tx: &mut PgConnection,
        deliveries: &[&Delivery],
    ) -> Result<(), HandleError> {
        let calls = CompletedCall::all(deliveries)?;
        let open: std::collections::HashSet<Uuid> = sqlx::query_scalar(
            "SELECT case_id FROM scheduler.cases WHERE case_id = ANY($1) AND state = 'open'",
        )
        .bind(calls.iter().map(|c| c.case_id).collect::<Vec<_>>())
        .fetch_all(&mut *tx)
        .await?
        .into_iter()
        .collect();
        for completed in calls.iter().filter(|c| open.contains(&c.case_id)) {
            self.apply(tx, completed).await?;
        }
        Ok(())
    }

    fn committed(&self) {
        self.timers_changed.notify_one();
    }
}

impl OutcomeEvents {
    /// Reschedules the case's contacts for what the call ended with (a case closed or
    /// without timers here has nothing to reschedule).
    async fn apply(
        &self,
        tx: &mut PgConnection,
        completed: &CompletedCall,
    ) -> Result<(), HandleError> {
        let (case_id, event) = (completed.case_id, &completed.event);
        let Some(tz) = open_case(tx, case_id, &event.task_id).await? else {
            return Ok(());
        };
        let call = Call {
            case_id,
            event,
            at: completed.at,
            tz,
            hours: self.hours,
        };
        let outcome = completed.outcome;
        match outcome {
            CallOutcome::CallBack => call.back(tx).await?,
            CallOutcome::Promised => call.promised(tx).await?,
            CallOutcome::Unreachable => call.unreachable(tx).await?,
            CallOutcome::Refused | CallOutcome::InsuredElsewhere | CallOutcome::VehicleSold => {
                stop(tx, case_id, "all", "stopped: the customer declined", None).await?;
            }
            CallOutcome::WrongNumber => call.wrong_number(tx).await?,
            CallOutcome::Renewed => {}
            // Escalations: assignment moves the case and dispatch makes the task; the
            // planned contacts go on.
            CallOutcome::CannotRenewInTime
            | CallOutcome::HighRiskOfLoss
            | CallOutcome::Unspecified => {}
        }
        // A renewal reported on this call, or on an earlier one not confirmed yet: what
        // is pending now (planned, or just added by another call's outcome) is held.
        if outcome == CallOutcome::Renewed || renewal_held(tx, case_id).await? {
            hold(tx, case_id, HELD_RENEWAL, false).await?;
        }
        metrics::counter!("outcomes_applied_total", "outcome" => outcome.as_str_name())
            .increment(1);
        Ok(())
    }
}

/// The case's time zone, the case locked; None when it has no timers here (tasks come
/// from this service's own timers, so any other case has nothing to reschedule) or is
/// closed.
async fn open_case(
    tx: &mut PgConnection,
    case_id: Uuid,
    task_id: &str,
) -> Result<Option<chrono_tz::Tz>, sqlx::Error> {
    let Some(case) =
        sqlx::query("SELECT state, time_zone FROM scheduler.cases WHERE case_id = $1 FOR UPDATE")
            .bind(case_id)
            .fetch_optional(&mut *tx)
            .await?
    else {
        tracing::info!(%task_id, "outcome for a case without timers here; nothing to reschedule");
        return Ok(None);
    };
    if case.try_get::<String, _>("state")? != "open" {
        return Ok(None);
    }
    Ok(Some(
        case.try_get::<Option<String>, _>("time_zone")?
            .and_then(|t| t.parse().ok())
            .unwrap_or(chrono_tz::Asia::Shanghai),
    ))
}

/// One completed call, for the outcomes that add a call of their own.
struct Call<'a> {
    case_id: Uuid,
    event: &'a PhoneTaskCompleted,
    at: DateTime<Utc>,
    tz: chrono_tz::Tz,
    hours: Hours,
}

impl Call<'_> {
    /// The queue a follow-up call goes to: the owner's after the owner's call.
    fn queue(&self) -> Queue {
        if self.event.stage == "T-30" {
            Queue::Owner
        } else {
            Queue::Campaign
        }
    }

    /// Adds the call `name` wanted at `when` (moved into the calling hours).
    async fn follow_up(
        &self,
        tx: &mut PgConnection,
        name: String,
        queue: Queue,
        when: DateTime<Utc>,
    ) -> Result<(), sqlx::Error> {
        let due = crate::plan::allowed(when, self.hours.calls, None, self.tz).unwrap_or(when);
        add(tx, self.case_id, call(name, queue), when, due).await
    }

    /// 10:00 local on `day`.
    fn morning(&self, day: NaiveDate) -> DateTime<Utc> {
        let ten = NaiveTime::from_hms_opt(10, 0, 0).unwrap_or(NaiveTime::MIN);
        renewal_platform::local_instant(day, ten, self.tz)
    }

    /// Call back at the time the customer asked for.
    async fn back(&self, tx: &mut PgConnection) -> Result<(), HandleError> {
        let when = field::instant_ms("call_back_at_ms", self.event.call_back_at_ms)?;
        let name = format!("call back {}", self.event.task_id);
        Ok(self.follow_up(tx, name, self.queue(), when).await?)
    }

    /// Promised by a date: contacts before it pause; a check call the morning after.
    async fn promised(&self, tx: &mut PgConnection) -> Result<(), HandleError> {
        let raw = &self.event.promised_date;
        let date = NaiveDate::parse_from_str(raw, "%Y-%m-%d")
            .map_err(|_| HandleError::Malformed(format!("promised_date {raw:?}")))?;
        let day_after = date + Days::new(1);
        let until = renewal_platform::local_instant(day_after, NaiveTime::MIN, self.tz);
        stop(
            tx,
            self.case_id,
            "pending contacts due before the promised date",
            "paused: the customer promised to renew by then",
            Some(until),
        )
        .await?;
        let name = format!("promise check {}", self.event.task_id);
        Ok(self
            .follow_up(tx, name, self.queue(), self.morning(day_after))
            .await?)
    }

    /// Unreachable: again the next morning, at most [`UNREACHABLE_RETRIES`] times.
    async fn unreachable(&self, tx: &mut PgConnection) -> Result<(), HandleError> {
        let tries: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM scheduler.timers WHERE case_id = $1 AND stage LIKE 'unreachable retry %'",
        )
        .bind(self.case_id)
        .fetch_one(&mut *tx)
        .await?;
        if tries < UNREACHABLE_RETRIES {
            let tomorrow = renewal_platform::local_date(self.at, self.tz) + Days::new(1);
            let name = format!("unreachable retry {}", tries + 1);
            self.follow_up(tx, name, self.queue(), self.morning(tomorrow))
                .await?;
        }
        Ok(())
    }

    /// A wrong number: the contacts wait for the corrected number (lists.case.changed);
    /// the owner gets the correction to make. A mobile replaced at or after the call's
    /// end came in first (the two events crossed): nothing is held, the owner still
    /// checks the number.
    async fn wrong_number(&self, tx: &mut PgConnection) -> Result<(), HandleError> {
        let corrected: bool = sqlx::query_scalar(
            "SELECT coalesce(mobile_changed_at >= $2, false) FROM scheduler.cases WHERE case_id = $1",
        )
        .bind(self.case_id)
        .bind(self.at)
        .fetch_one(&mut *tx)
        .await?;
        if !corrected {
            hold(tx, self.case_id, HELD_WRONG_NUMBER, true).await?;
        }
        let name = format!("contact correction {}", self.event.task_id);
        Ok(self.follow_up(tx, name, Queue::Owner, self.at).await?)
    }
}

pub(crate) async fn add(
    tx: &mut PgConnection,
    case_id: Uuid,
    stage: Stage,
    nominal: DateTime<Utc>,
    due: DateTime<Utc>,
) -> Result<(), sqlx::Error> {
    crate::timers::insert(
        tx,
        case_id,
        &[Placed {
            stage,
            nominal,
            due,
            skipped: None,
        }],
    )
    .await
}

/// Stops pending contacts: all of them (except those the plan keeps after a refusal),
/// or those due before `before`. Contacts held (for a wrong number, a reported
/// renewal) stop too: what the customer said on this call holds whether the number is
/// corrected before or after it is taken in.
async fn stop(
    tx: &mut PgConnection,
    case_id: Uuid,
    which: &str,
    note: &str,
    before: Option<DateTime<Utc>>,
) -> Result<(), sqlx::Error> {
    let sql = if which == "all" {
        "UPDATE scheduler.timers SET state = 'cancelled', note = $2
         WHERE case_id = $1 AND state IN ('pending', 'held') AND action IN ('sms', 'phone_task')
           AND NOT keep_after_refusal"
    } else {
        "UPDATE scheduler.timers SET state = 'skipped', note = $2
         WHERE case_id = $1 AND state IN ('pending', 'held') AND action IN ('sms', 'phone_task')
           AND due_at < $3"
    };
    sqlx::query(sql)
        .bind(case_id)
        .bind(note)
        .bind(before)
        .execute(&mut *tx)
        .await?;
    Ok(())
}

/// Why a timer is held (its note): a renewal reported on the phone and not confirmed
/// yet, or a wrong number not corrected yet.
pub(crate) const HELD_RENEWAL: &str = "held: renewal reported on the phone";
pub(crate) const HELD_WRONG_NUMBER: &str = "held: wrong number, until the contact is corrected";

/// Holds the case's pending timers with why: its contacts only, or every one (the
/// supervisor alert and the T-5 step too, for a reported renewal). A held timer never
/// fires; [`resume_held`] lets it go on.
pub(crate) async fn hold(
    tx: &mut PgConnection,
    case_id: Uuid,
    why: &'static str,
    contacts_only: bool,
) -> Result<(), sqlx::Error> {
    // A renewal holds the contacts waiting for a corrected number too: a correction
    // must not set them off while the renewal is unconfirmed.
    let held = sqlx::query(
        "UPDATE scheduler.timers SET state = 'held', note = $2
         WHERE case_id = $1
           AND (state = 'pending' OR ($2 = $4 AND state = 'held' AND note = $5))
           AND (NOT $3 OR action IN ('sms', 'phone_task'))",
    )
    .bind(case_id)
    .bind(why)
    .bind(contacts_only)
    .bind(HELD_RENEWAL)
    .bind(HELD_WRONG_NUMBER)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    metrics::counter!("timers_held_total").increment(held);
    Ok(())
}

/// Whether the case's timers are held for a renewal reported on a call.
pub(crate) async fn renewal_held(
    tx: &mut PgConnection,
    case_id: Uuid,
) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM scheduler.timers
                        WHERE case_id = $1 AND state = 'held' AND note = $2)",
    )
    .bind(case_id)
    .bind(HELD_RENEWAL)
    .fetch_one(&mut *tx)
    .await
}

/// Holds what is pending again when a renewal is held (timers a re-plan just added).
pub(crate) async fn hold_if_renewal_held(
    tx: &mut PgConnection,
    case_id: Uuid,
) -> Result<(), sqlx::Error> {
    if renewal_held(tx, case_id).await? {
        hold(tx, case_id, HELD_RENEWAL, false).await?;
    }
    Ok(())
}

/// Resumes the case's timers held for `why`: those still ahead go back to pending,
/// those whose time passed while held are skipped.
pub(crate) async fn resume_held(
    tx: &mut PgConnection,
    case_id: Uuid,
    why: &'static str,
    now: DateTime<Utc>,
) -> Result<u64, sqlx::Error> {
    let resumed = sqlx::query(
        "UPDATE scheduler.timers
         SET state = CASE WHEN due_at > $3 THEN 'pending' ELSE 'skipped' END,
             note = CASE WHEN due_at > $3 THEN 'resumed (was ' || note || ')'
                         ELSE 'skipped: its time passed while ' || note END
         WHERE case_id = $1 AND state = 'held' AND note = $2",
    )
    .bind(case_id)
    .bind(why)
    .bind(now)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    Ok(resumed)
}
