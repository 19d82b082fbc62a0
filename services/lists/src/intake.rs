//! Policy intake from the core policy system over NATS: upserted (idempotent by policy
//! number and version; a newer version reaches the case being worked, see
//! `crate::case_changes`), renewed (closes the case at once), cancelled.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use renewal_contract::core::{Policy, PolicyCancelled, PolicyRenewed, PolicyUpserted};
use renewal_contract::lists::CaseOutcome;
use renewal_contract::subject;
use renewal_platform::pii::PiiCipher;
use renewal_platform::{Clock, Delivery, HandleError, Handler, Outbox};
use sqlx::PgConnection;

use crate::policy_checks::{self, Flag, PolicyFields, Premium};
use crate::portfolio::{self, Zones};
use crate::{case_changes, cases, rescues};

pub struct Intake {
    pub outbox: Outbox,
    pub clock: Clock,
    pub pii: Arc<PiiCipher>,
    pub zones: Zones,
    pub vehicle_window: i32,
}

/// How often a renewal or cancellation for a policy we do not know yet is retried
/// (its upsert may still be on the way) before it is kept as rejected.
const UNKNOWN_POLICY_RETRIES: i64 = 5;

/// Replaces the customer's name, mobile, ID number, plate and VIN in an upsert; whether
/// it named any.
pub(crate) fn redact_customer(event: &mut PolicyUpserted) -> bool {
    let Some(p) = event.policy.as_mut() else {
        return false;
    };
    let mut named = false;
    for field in [
        &mut p.customer_name,
        &mut p.mobile,
        &mut p.id_number,
        &mut p.plate,
        &mut p.vin,
    ] {
        if !field.is_empty() && field != "[redacted]" {
            *field = "[redacted]".into();
            named = true;
        }
    }
    named
}

impl Handler for Intake {
    /// A refused upsert is kept without the customer's name, mobile, ID number, plate
    /// and VIN; renewals and cancellations carry none and are kept whole.
    fn redact(&self, delivery: &Delivery) -> Option<Vec<u8>> {
        if delivery.subject != subject::CORE_POLICY_UPSERTED {
            return Some(delivery.payload.to_vec());
        }
        let mut event: PolicyUpserted = delivery.decode().ok()?;
        redact_customer(&mut event);
        Some(prost::Message::encode_to_vec(&event))
    }

    async fn handle(&self, tx: &mut PgConnection, delivery: &Delivery) -> Result<(), HandleError> {
        let now = self.clock.now();
        match delivery.subject.as_str() {
            subject::CORE_POLICY_UPSERTED => {
                let event: PolicyUpserted = delivery.decode()?;
                let policy = event.policy.ok_or_else(|| {
                    HandleError::Malformed("policy upserted without a policy".into())
                })?;
                let checked = policy_checks::check(&fields_of(&policy)).map_err(|bad| {
                    let reasons: Vec<String> = bad
                        .iter()
                        .map(|r| format!("{} {}", r.column, r.reason))
                        .collect();
                    HandleError::Malformed(format!(
                        "policy {}: {}",
                        policy.policy_no,
                        reasons.join("; ")
                    ))
                })?;
                let sealed = portfolio::seal(checked, policy.version, &self.pii, &self.zones)?;
                let mobile_before = case_changes::mobile_before(tx, &policy.policy_no).await?;
                let written = portfolio::upsert_one(tx, &sealed, now).await?;
                if written == portfolio::Written::Inserted {
                    // A new policy may be a lapsed customer's vehicle insured again.
                    rescues::by_new_policy(
                        tx,
                        &self.outbox,
                        &self.pii,
                        &policy.policy_no,
                        &sealed.p.vin,
                        now,
                    )
                    .await?;
                }
                if written == portfolio::Written::Updated {
                    // A case being worked follows its policy's changes.
                    case_changes::apply(
                        tx,
                        &self.outbox,
                        &self.pii,
                        &policy.policy_no,
                        mobile_before,
                        now,
                    )
                    .await
                    .map_err(|e| match e {
                        cases::CaseError::Db(e) => HandleError::Db(e),
                        other => HandleError::Retry(other.to_string()),
                    })?;
                }
                let scope = cases::OpenScope {
                    only_policy: Some(&policy.policy_no),
                    only_zone: None,
                    vehicle_window: self.vehicle_window,
                };
                cases::open_due(tx, &self.outbox, &self.pii, &self.zones, now, scope)
                    .await
                    .map_err(|e| match e {
                        cases::CaseError::Db(e) => HandleError::Db(e),
                        other => HandleError::Retry(other.to_string()),
                    })?;
                Ok(())
            }
            subject::CORE_POLICY_RENEWED => {
                let event: PolicyRenewed = delivery.decode()?;
                let ended = (&event.policy_no, CaseOutcome::Renewed, &event.new_policy_no);
                self.end_policy(tx, delivery, ended, now).await
            }
            subject::CORE_POLICY_CANCELLED => {
                let event: PolicyCancelled = delivery.decode()?;
                let ended = (&event.policy_no, CaseOutcome::Cancelled, &String::new());
                self.end_policy(tx, delivery, ended, now).await
            }
            other => Err(HandleError::Malformed(format!(
                "unexpected subject {other}"
            ))),
        }
    }
}

impl Intake {
    /// A renewal or cancellation: the policy's status changes and its open case closes
    /// at once (which stops every reminder downstream). A cancelled policy is not renewed.
    async fn end_policy(
        &self,
        tx: &mut PgConnection,
        delivery: &Delivery,
        (policy_no, outcome, new_policy_no): (&String, CaseOutcome, &String),
        now: DateTime<Utc>,
    ) -> Result<(), HandleError> {
        let status = match outcome {
            CaseOutcome::Renewed => "renewed",
            _ => "cancelled",
        };
        let known = sqlx::query(
            "UPDATE lists.policies
             SET status = $2, renewed_to = COALESCE(NULLIF($3, ''), renewed_to), updated_at = $4,
                 renewed_at = CASE WHEN $2 = 'renewed' THEN COALESCE(renewed_at, $4) ELSE renewed_at END
             WHERE policy_no = $1 AND (status <> 'cancelled' OR $2 = 'cancelled')",
        )
        .bind(policy_no)
        .bind(status)
        .bind(new_policy_no)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        if known.rows_affected() == 0 {
            let exists: bool = sqlx::query_scalar(
                "SELECT EXISTS (SELECT 1 FROM lists.policies WHERE policy_no = $1)",
            )
            .bind(policy_no)
            .fetch_one(&mut *tx)
            .await?;
            if exists {
                tracing::info!(%policy_no, "renewal of a cancelled policy ignored");
                return Ok(());
            }
            return unknown_policy(delivery);
        }
        cases::close(tx, &self.outbox, policy_no, outcome, new_policy_no, now).await?;
        Ok(())
    }
}

fn unknown_policy(delivery: &Delivery) -> Result<(), HandleError> {
    if delivery.delivered < UNKNOWN_POLICY_RETRIES {
        Err(HandleError::Retry("policy not known yet".into()))
    } else {
        Err(HandleError::Malformed(
            "policy is not in the portfolio".into(),
        ))
    }
}

fn fields_of(p: &Policy) -> PolicyFields<'_> {
    PolicyFields {
        policy_no: &p.policy_no,
        customer_name: &p.customer_name,
        mobile: &p.mobile,
        id_number: &p.id_number,
        plate: &p.plate,
        vin: &p.vin,
        city_code: &p.city_code,
        branch_code: &p.branch_code,
        agent_code: &p.agent_code,
        channel: &p.channel,
        category: &p.category,
        start_date: &p.start_date,
        end_date: &p.end_date,
        premium: Premium::Fen(p.premium_fen),
        important: Flag::Bool(p.important),
        group_policy: Flag::Bool(p.group_policy),
        real_data_at_sale: Flag::Bool(p.real_data_at_sale),
    }
}
