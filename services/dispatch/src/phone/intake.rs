//! Tasks in: `dispatch.cmd.create_phone_task` makes one task per command id; an owner
//! change (`assignment.owner.assigned`) moves the case's open owner tasks to the new
//! owner, or to the branch when the case was handed back with no owner; a closed case
//! withdraws its open tasks (a lease of one returns nothing). A task of an erased case
//! is kept withdrawn without its contact.

use chrono::{TimeZone, Utc};
use renewal_contract::assignment::OwnerAssigned;
use renewal_contract::scheduler::{CreatePhoneTask, TaskQueue};
use renewal_platform::inbox::field;
use renewal_platform::pii::PiiCipher;
use renewal_platform::{Clock, Delivery, HandleError};
use sqlx::PgConnection;
use uuid::Uuid;

fn queue_name(queue: i32) -> Result<&'static str, HandleError> {
    match TaskQueue::try_from(queue) {
        Ok(TaskQueue::Owner) => Ok("owner"),
        Ok(TaskQueue::Branch) => Ok("branch"),
        Ok(TaskQueue::Campaign) => Ok("campaign"),
        Ok(TaskQueue::Hq) => Ok("hq"),
        Ok(TaskQueue::City) => Ok("city"),
        _ => Err(HandleError::Malformed(format!(
            "queue {queue} is not a task queue"
        ))),
    }
}

/// The task's contact, sealed for its row.
fn sealed_contact(
    pii: &PiiCipher,
    id: Uuid,
    command: &CreatePhoneTask,
) -> Result<Vec<u8>, HandleError> {
    let contact = crate::sealed::TaskContact {
        customer_name: command.customer_name.clone(),
        mobile: command.mobile.clone(),
        plate: command.plate.clone(),
    };
    crate::sealed::seal_task(pii, &id.to_string(), &contact).map_err(HandleError::from)
}

pub async fn create(
    tx: &mut PgConnection,
    clock: &Clock,
    pii: &PiiCipher,
    delivery: &Delivery,
) -> Result<(), HandleError> {
    let command: CreatePhoneTask = delivery.decode()?;
    insert(tx, clock, pii, command).await
}

/// Makes the task a command (or an escalation) asks for, once per command id.
pub async fn insert(
    tx: &mut PgConnection,
    clock: &Clock,
    pii: &PiiCipher,
    mut command: CreatePhoneTask,
) -> Result<(), HandleError> {
    let id = field::uuid("command_id", &command.command_id)?;
    let case_id = field::uuid("case_id", &command.case_id)?;
    let tz = field::time_zone("time_zone", &command.time_zone)?;
    let queue = queue_name(command.queue)?;
    let c = &mut command;
    let contact = [&mut c.customer_name, &mut c.mobile, &mut c.plate];
    crate::contacts::fill(tx, pii, case_id, contact).await?;
    let contact_enc = sealed_contact(pii, id, &command)?;
    crate::commands::lock_case(tx, case_id).await?;
    let now = clock.now();
    let due = Utc
        .timestamp_millis_opt(command.due_at_ms)
        .single()
        .unwrap_or(now)
        .max(now);
    // The owner of the moment wins over the command's (assignment may have moved the
    // case since); an owner task with no owner waits in the branch queue.
    let sql = format!(
        "INSERT INTO dispatch.phone_tasks (id, case_id, policy_no, stage, queue, owner_agent, owner_task, branch_code,
             city_code, promotion, contact_enc, expiry_date, time_zone, days_to_expiry,
             state, available_at, created_at, last_error, traceparent)
         SELECT $1, $2, $3, $4,
                CASE WHEN $5 = 'owner' AND coalesce(o.owner_agent, $6) = '' THEN 'branch' ELSE $5 END,
                CASE WHEN $5 = 'owner' THEN coalesce(o.owner_agent, $6) ELSE $6 END, $5 = 'owner',
                coalesce(o.branch_code, $7), $8, $9,
                CASE WHEN c.erased_at IS NULL THEN $10 ELSE '\\x'::bytea END, $11, $12, $13,
                CASE WHEN c.case_id IS NOT NULL OR {overtaken} THEN 'withdrawn' ELSE 'open' END, $14, $15,
                CASE WHEN c.case_id IS NOT NULL THEN 'case closed before the call'
                     WHEN {overtaken} THEN 'the customer said on a call the policy was renewed' END,
                $16
         FROM (SELECT 1) one
         LEFT JOIN dispatch.closed_cases c ON c.case_id = $2
         LEFT JOIN dispatch.case_owners o ON o.case_id = $2
         {ended}
         ON CONFLICT (id) DO NOTHING
         RETURNING state",
        overtaken = crate::commands::overtaken("$17"),
        ended = crate::commands::ENDED_ON_A_CALL,
    );
    let state = sqlx::query_scalar::<_, String>(sqlx::AssertSqlSafe(sql))
        .bind(id)
        .bind(case_id)
        .bind(&command.policy_no)
        .bind(&command.stage)
        .bind(queue)
        .bind(command.owner_agent.trim())
        .bind(&command.branch_code)
        .bind(&command.city_code)
        .bind(&command.promotion)
        .bind(&contact_enc)
        .bind(&command.expiry_date)
        .bind(tz.name())
        .bind(command.days_to_expiry)
        .bind(due)
        .bind(now)
        .bind(renewal_platform::telemetry::current_traceparent())
        .bind(crate::commands::command_due(command.due_at_ms, now))
        .fetch_optional(&mut *tx)
        .await?;
    if let Some(state) = state {
        let status = if state == "open" {
            "created"
        } else {
            "withdrawn"
        };
        metrics::counter!("phone_tasks_total", "status" => status).increment(1);
    }
    Ok(())
}

/// Applies an owner change in `assigned_at` order (an older one changes nothing).
pub async fn owner_assigned(tx: &mut PgConnection, delivery: &Delivery) -> Result<(), HandleError> {
    let event: OwnerAssigned = delivery.decode()?;
    let case_id = field::uuid("case_id", &event.case_id)?;
    let at = field::instant_ms("assigned_at_ms", event.assigned_at_ms)?;
    let owner = event.owner_agent.trim();
    let newer = sqlx::query(
        "INSERT INTO dispatch.case_owners (case_id, owner_agent, branch_code, assigned_at)
         VALUES ($1, $2, $3, $4)
         ON CONFLICT (case_id) DO UPDATE SET owner_agent = excluded.owner_agent,
             branch_code = excluded.branch_code, assigned_at = excluded.assigned_at
         WHERE dispatch.case_owners.assigned_at <= excluded.assigned_at",
    )
    .bind(case_id)
    .bind(owner)
    .bind(&event.branch_code)
    .bind(at)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    if newer == 0 {
        return Ok(());
    }
    // A running lease is left to finish (its outcome must not be lost); the task is
    // the new owner's from then on.
    let moved = sqlx::query(
        "UPDATE dispatch.phone_tasks
         SET owner_agent = $2, branch_code = $3, queue = CASE WHEN $2 = '' THEN 'branch' ELSE 'owner' END
         WHERE case_id = $1 AND owner_task AND state IN ('open', 'leased')",
    )
    .bind(case_id)
    .bind(owner)
    .bind(&event.branch_code)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    metrics::counter!("phone_tasks_total", "status" => "moved").increment(moved);
    Ok(())
}

/// A closed case: its open and leased tasks are withdrawn (a holder may still report).
pub async fn withdraw(tx: &mut PgConnection, case_id: Uuid) -> Result<u64, sqlx::Error> {
    withdraw_all(tx, &[case_id], "case closed").await
}

/// Withdraws the cases' open and leased tasks, with why; returns how many.
pub async fn withdraw_all(
    tx: &mut PgConnection,
    case_ids: &[Uuid],
    why: &str,
) -> Result<u64, sqlx::Error> {
    let withdrawn = sqlx::query(
        "UPDATE dispatch.phone_tasks SET state = 'withdrawn', last_error = $2
         WHERE case_id = ANY($1) AND state IN ('open', 'leased')",
    )
    .bind(case_ids)
    .bind(why)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    metrics::counter!("phone_tasks_total", "status" => "withdrawn").increment(withdrawn);
    Ok(withdrawn)
}
