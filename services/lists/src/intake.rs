//! Policy intake from the core policy system over NATS: upserted (idempotent by policy
//! number and version), renewed (closes the case at once), cancelled.

use chrono::{DateTime, NaiveDate, Utc};
use renewal_contract::core::{Policy, PolicyCancelled, PolicyRenewed, PolicyUpserted};
use renewal_contract::lists::CaseOutcome;
use renewal_contract::subject;
use renewal_platform::{Clock, Delivery, HandleError, Handler, Outbox, local_date};
use sqlx::PgConnection;

use crate::cases;

pub struct Intake {
    pub outbox: Outbox,
    pub clock: Clock,
    pub time_zone: chrono_tz::Tz,
}

/// How often a renewal or cancellation for a policy we do not know yet is retried
/// (its upsert may still be on the way) before it is kept as rejected.
const UNKNOWN_POLICY_RETRIES: i64 = 5;

impl Handler for Intake {
    async fn handle(&self, tx: &mut PgConnection, delivery: &Delivery) -> Result<(), HandleError> {
        let now = self.clock.now();
        match delivery.subject.as_str() {
            subject::CORE_POLICY_UPSERTED => {
                let event: PolicyUpserted = delivery.decode()?;
                let policy = event.policy.ok_or_else(|| {
                    HandleError::Malformed("policy upserted without a policy".into())
                })?;
                let valid = validate(&policy)?;
                upsert(tx, &policy, &valid, now).await?;
                let today = local_date(now, self.time_zone);
                cases::open_due(
                    tx,
                    &self.outbox,
                    today,
                    now,
                    self.time_zone,
                    Some(&policy.policy_no),
                )
                .await?;
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
             SET status = $2, renewed_to = COALESCE(NULLIF($3, ''), renewed_to), updated_at = $4
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

struct Valid {
    start: NaiveDate,
    end: NaiveDate,
}

fn validate(policy: &Policy) -> Result<Valid, HandleError> {
    let bad = |what: &str| HandleError::Malformed(format!("policy {}: {what}", policy.policy_no));
    if policy.policy_no.trim().is_empty() {
        return Err(HandleError::Malformed(
            "policy without a policy number".into(),
        ));
    }
    let date = |field: &str, value: &str| {
        NaiveDate::parse_from_str(value, "%Y-%m-%d")
            .map_err(|_| bad(&format!("{field} is not a YYYY-MM-DD date")))
    };
    let start = date("start_date", &policy.start_date)?;
    let end = date("end_date", &policy.end_date)?;
    if end < start {
        return Err(bad("end_date is before start_date"));
    }
    if policy.city_code.is_empty() || policy.branch_code.is_empty() {
        return Err(bad("city_code and branch_code are required"));
    }
    Ok(Valid { start, end })
}

async fn upsert(
    tx: &mut PgConnection,
    p: &Policy,
    valid: &Valid,
    now: DateTime<Utc>,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO lists.policies (policy_no, version, customer_name, mobile, id_number, plate, vin,
             city_code, branch_code, agent_code, channel, category, start_date, end_date, premium_fen,
             important, group_policy, updated_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18)
         ON CONFLICT (policy_no) DO UPDATE SET
             version = EXCLUDED.version, customer_name = EXCLUDED.customer_name,
             mobile = EXCLUDED.mobile, id_number = EXCLUDED.id_number, plate = EXCLUDED.plate,
             vin = EXCLUDED.vin, city_code = EXCLUDED.city_code, branch_code = EXCLUDED.branch_code,
             agent_code = EXCLUDED.agent_code, channel = EXCLUDED.channel, category = EXCLUDED.category,
             start_date = EXCLUDED.start_date, end_date = EXCLUDED.end_date,
             premium_fen = EXCLUDED.premium_fen, important = EXCLUDED.important,
             group_policy = EXCLUDED.group_policy, updated_at = EXCLUDED.updated_at
         WHERE lists.policies.version < EXCLUDED.version",
    )
    .bind(&p.policy_no)
    .bind(p.version)
    .bind(&p.customer_name)
    .bind(&p.mobile)
    .bind(&p.id_number)
    .bind(&p.plate)
    .bind(&p.vin)
    .bind(&p.city_code)
    .bind(&p.branch_code)
    .bind(&p.agent_code)
    .bind(&p.channel)
    .bind(&p.category)
    .bind(valid.start)
    .bind(valid.end)
    .bind(p.premium_fen)
    .bind(p.important)
    .bind(p.group_policy)
    .bind(now)
    .execute(&mut *tx)
    .await?;
    Ok(())
}
