//! Escalations are work items. Assignment's steps (`assignment.case.routed`) that hand a
//! case to someone who must call make a phone task here: "hq" (the second assignment's
//! last step, or an owner's "high risk of loss") in HQ's queue, which the call center
//! works; "city_support" (an important customer or group policy escalated while its
//! owner keeps it) in the city company's queue. The task's id is the step's event id, so
//! a redelivered step makes no second task.

use chrono::NaiveDate;
use renewal_contract::assignment::CaseRouted;
use renewal_contract::scheduler::{CreatePhoneTask, TaskQueue};
use renewal_contract::subject;
use renewal_platform::inbox::field;
use renewal_platform::pii::PiiCipher;
use renewal_platform::{Clock, Delivery, HandleError, Handler};
use sqlx::PgConnection;
use std::sync::Arc;

pub struct Steps {
    pub clock: Clock,
    pub pii: Arc<PiiCipher>,
}

impl Handler for Steps {
    async fn handle(&self, tx: &mut PgConnection, delivery: &Delivery) -> Result<(), HandleError> {
        if delivery.subject != subject::ASSIGNMENT_CASE_ROUTED {
            return Ok(());
        }
        let step: CaseRouted = delivery.decode()?;
        let (queue, owner, stage) = match step.step.as_str() {
            "hq" => (TaskQueue::Hq, "HQ".to_owned(), "HQ outbound"),
            "city_support" => (TaskQueue::City, step.owner_agent.clone(), "city support"),
            _ => return Ok(()),
        };
        // The step's event id (the assignment outbox row's id) is the task's.
        let id = field::uuid("Nats-Msg-Id", &delivery.message_id)?;
        let case_id = field::uuid("case_id", &step.case_id)?;
        if step.expiry_date.is_empty() || step.time_zone.is_empty() {
            // A step from before steps made work (a new consumer reads the stream
            // from its start): history, not a task to make now.
            tracing::info!(%case_id, step = %step.step, "escalation step without the case's expiry; no task made");
            return Ok(());
        }
        let expiry = field::date("expiry_date", &step.expiry_date)?;
        let tz = field::time_zone("time_zone", &step.time_zone)?;
        let at = field::instant_ms("routed_at_ms", step.routed_at_ms)?;
        let today = renewal_platform::local_date(at, tz);
        let command = CreatePhoneTask {
            command_id: id.to_string(),
            case_id: case_id.to_string(),
            policy_no: step.policy_no.clone(),
            stage: format!("{stage}: {}", step.reason),
            queue: queue as i32,
            owner_agent: owner,
            branch_code: step.branch_code.clone(),
            city_code: step.city_code.clone(),
            expiry_date: expiry.to_string(),
            time_zone: tz.name().to_owned(),
            days_to_expiry: days_between(today, expiry),
            due_at_ms: at.timestamp_millis(),
            ..Default::default()
        };
        crate::phone::intake::insert(tx, &self.clock, &self.pii, command).await?;
        metrics::counter!("escalation_tasks_total", "queue" => step.step).increment(1);
        Ok(())
    }

    /// Steps name cases, never a customer: kept whole.
    fn redact(&self, delivery: &Delivery) -> Option<Vec<u8>> {
        Some(delivery.payload.to_vec())
    }
}

fn days_between(from: NaiveDate, to: NaiveDate) -> i32 {
    (to - from).num_days() as i32
}
