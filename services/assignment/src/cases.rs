//! Renewal cases as assignment keeps them: opened (and given an owner), closed.

use renewal_contract::lists::{CaseClosed, CaseOpened};
use renewal_contract::subject;
use renewal_platform::inbox::field;
use renewal_platform::{Clock, Delivery, HandleError, Handler, Outbox};
use sqlx::PgConnection;

use crate::ownership;

pub struct CaseEvents {
    pub outbox: Outbox,
    pub clock: Clock,
}

impl Handler for CaseEvents {
    async fn handle(&self, tx: &mut PgConnection, delivery: &Delivery) -> Result<(), HandleError> {
        match delivery.subject.as_str() {
            subject::LISTS_CASE_OPENED => {
                let event: CaseOpened = delivery.decode()?;
                let id = field::uuid("case_id", &event.case_id)?;
                let expiry = field::date("expiry_date", &event.expiry_date)?;
                let opened_at = field::instant_ms("opened_at_ms", event.opened_at_ms)?;
                let inserted = sqlx::query(
                    "INSERT INTO assignment.cases (case_id, policy_no, city_code, branch_code, credited_agent,
                         expiry_date, important, group_policy, opened_at, state, closed_at)
                     SELECT $1, $2, $3, $4, $5, $6, $7, $8, $9,
                            CASE WHEN e.case_id IS NULL THEN 'open' ELSE 'closed' END, e.closed_at
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
                .execute(&mut *tx)
                .await?;
                if inserted.rows_affected() == 1 && !event.agent_code.is_empty() {
                    ownership::assign(
                        tx,
                        &self.outbox,
                        id,
                        &event.agent_code,
                        "originating_agent",
                        "system",
                        self.clock.now(),
                    )
                    .await?;
                }
                Ok(())
            }
            subject::LISTS_CASE_CLOSED => {
                let event: CaseClosed = delivery.decode()?;
                let id = field::uuid("case_id", &event.case_id)?;
                let closed_at = field::instant_ms("closed_at_ms", event.closed_at_ms)?;
                let updated = sqlx::query(
                    "UPDATE assignment.cases SET state = 'closed', closed_at = $2 WHERE case_id = $1",
                )
                .bind(id)
                .bind(closed_at)
                .execute(&mut *tx)
                .await?;
                if updated.rows_affected() == 0 {
                    sqlx::query("INSERT INTO assignment.closed_early (case_id, closed_at) VALUES ($1, $2) ON CONFLICT DO NOTHING")
                        .bind(id)
                        .bind(closed_at)
                        .execute(&mut *tx)
                        .await?;
                }
                Ok(())
            }
            // Bucket moves are for the services that plan by bucket; nothing to do here.
            subject::LISTS_CASE_BUCKET_CHANGED => Ok(()),
            other => Err(HandleError::Malformed(format!(
                "unexpected subject {other}"
            ))),
        }
    }
}
