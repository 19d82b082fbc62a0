//! The renewal terms of each case (`lists.quote.issued`): kept so that the next SMS
//! states the premium, its change against last year and the offer, and every phone task
//! shows them to the caller. A case at T-65 with no quote (`lists.quote.missing`) makes
//! a task in the city company's queue to get one; its id is the event's, so a
//! redelivery makes no second task. The quote's arrival withdraws that task: its work
//! is done.

use chrono::NaiveDate;
use renewal_contract::lists::{CaseQuoted, QuoteMissing};
use renewal_contract::scheduler::{CreatePhoneTask, TaskQueue};
use renewal_contract::subject;
use renewal_platform::inbox::field;
use renewal_platform::pii::PiiCipher;
use renewal_platform::{Clock, Delivery, HandleError, Handler};
use serde::{Deserialize, Serialize};
use sqlx::{PgConnection, Row};
use std::sync::Arc;

/// The stage of the city company's task to get a case its quote.
pub const QUOTE_TASK_STAGE: &str = "quote missing at T-65";

/// A case's terms as an SMS and a phone task state them (money in fen).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Terms {
    pub quote_id: String,
    pub premium_fen: i64,
    pub last_premium_fen: i64,
    /// Against last year: negative when the renewal is cheaper.
    pub change_fen: i64,
    pub claim_free_years: i32,
    pub promotion: String,
    pub valid_until: NaiveDate,
    pub discount_percent: i32,
    pub discount_extra: String,
}

/// Yuan with two decimals, as the SMS prints money.
pub fn yuan(fen: i64) -> String {
    let sign = if fen < 0 { "-" } else { "" };
    format!("{sign}{}.{:02}", fen.abs() / 100, fen.abs() % 100)
}

impl Terms {
    /// The template parameters the terms add to an SMS: `premium`, `change` and
    /// `promotion` (the offer, led by "，", or empty).
    pub fn sms_params(&self) -> [(&'static str, String); 3] {
        let change = match self.change_fen {
            0 => "与去年持平".to_owned(),
            c if c < 0 => format!("比去年少{}元", yuan(-c)),
            c => format!("比去年多{}元", yuan(c)),
        };
        let offers: Vec<&str> = [self.promotion.as_str(), self.discount_extra.as_str()]
            .into_iter()
            .filter(|o| !o.is_empty())
            .collect();
        let promotion = if offers.is_empty() {
            String::new()
        } else {
            format!("，{}", offers.join("、"))
        };
        [
            ("premium", yuan(self.premium_fen)),
            ("change", change),
            ("promotion", promotion),
        ]
    }
}

/// The case's terms, if it has a quote.
pub async fn of_case(
    tx: &mut PgConnection,
    case_id: uuid::Uuid,
) -> Result<Option<Terms>, sqlx::Error> {
    let row = sqlx::query(
        "SELECT quote_id, premium_fen, last_premium_fen, claim_free_years, promotion, valid_until,
                discount_percent, discount_extra
         FROM dispatch.case_terms WHERE case_id = $1",
    )
    .bind(case_id)
    .fetch_optional(&mut *tx)
    .await?;
    let Some(row) = row else {
        return Ok(None);
    };
    let premium: i64 = row.try_get("premium_fen")?;
    let last: i64 = row.try_get("last_premium_fen")?;
    Ok(Some(Terms {
        quote_id: row.try_get("quote_id")?,
        premium_fen: premium,
        last_premium_fen: last,
        change_fen: premium - last,
        claim_free_years: row.try_get("claim_free_years")?,
        promotion: row.try_get("promotion")?,
        valid_until: row.try_get("valid_until")?,
        discount_percent: row.try_get("discount_percent")?,
        discount_extra: row.try_get("discount_extra")?,
    }))
}

pub struct Quotes {
    pub clock: Clock,
    pub pii: Arc<PiiCipher>,
}

impl Handler for Quotes {
    async fn handle(&self, tx: &mut PgConnection, delivery: &Delivery) -> Result<(), HandleError> {
        match delivery.subject.as_str() {
            subject::LISTS_QUOTE_ISSUED => keep(tx, delivery.decode()?).await,
            subject::LISTS_QUOTE_MISSING => {
                let id = field::uuid("Nats-Msg-Id", &delivery.message_id)?;
                self.raise(tx, id, delivery.decode()?).await
            }
            _ => Ok(()),
        }
    }

    /// Terms and missing quotes name cases, never a customer: kept whole.
    fn redact(&self, delivery: &Delivery) -> Option<Vec<u8>> {
        Some(delivery.payload.to_vec())
    }
}

/// Keeps the case's terms unless newer ones are kept.
pub(crate) async fn keep(tx: &mut PgConnection, q: CaseQuoted) -> Result<(), HandleError> {
    let case_id = field::uuid("case_id", &q.case_id)?;
    let valid_until = field::date("valid_until", &q.valid_until)?;
    let at = field::instant_ms("quoted_at_ms", q.quoted_at_ms)?;
    sqlx::query(
        "INSERT INTO dispatch.case_terms AS t (case_id, quote_id, premium_fen, last_premium_fen,
             claim_free_years, promotion, valid_until, discount_percent, discount_extra, quoted_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
         ON CONFLICT (case_id) DO UPDATE SET quote_id = EXCLUDED.quote_id,
             premium_fen = EXCLUDED.premium_fen, last_premium_fen = EXCLUDED.last_premium_fen,
             claim_free_years = EXCLUDED.claim_free_years, promotion = EXCLUDED.promotion,
             valid_until = EXCLUDED.valid_until, discount_percent = EXCLUDED.discount_percent,
             discount_extra = EXCLUDED.discount_extra, quoted_at = EXCLUDED.quoted_at
         WHERE t.quoted_at <= EXCLUDED.quoted_at",
    )
    .bind(case_id)
    .bind(&q.quote_id)
    .bind(q.premium_fen)
    .bind(q.last_premium_fen)
    .bind(q.claim_free_years)
    .bind(&q.promotion)
    .bind(valid_until)
    .bind(q.discount_percent)
    .bind(&q.discount_extra)
    .bind(at)
    .execute(&mut *tx)
    .await?;
    let done = sqlx::query(
        "UPDATE dispatch.phone_tasks SET state = 'withdrawn', last_error = 'the quote arrived'
         WHERE case_id = $1 AND stage = $2 AND state IN ('open', 'leased')",
    )
    .bind(case_id)
    .bind(QUOTE_TASK_STAGE)
    .execute(&mut *tx)
    .await?;
    metrics::counter!("phone_tasks_total", "status" => "withdrawn").increment(done.rows_affected());
    Ok(())
}

impl Quotes {
    /// A task in the city company's queue: get the case a quote.
    async fn raise(
        &self,
        tx: &mut PgConnection,
        id: uuid::Uuid,
        missing: QuoteMissing,
    ) -> Result<(), HandleError> {
        field::uuid("case_id", &missing.case_id)?;
        let at = field::instant_ms("raised_at_ms", missing.raised_at_ms)?;
        let tz = field::time_zone("time_zone", &missing.time_zone)?;
        let command = CreatePhoneTask {
            command_id: id.to_string(),
            case_id: missing.case_id.clone(),
            policy_no: missing.policy_no.clone(),
            stage: QUOTE_TASK_STAGE.into(),
            queue: TaskQueue::City as i32,
            owner_agent: String::new(),
            branch_code: missing.branch_code.clone(),
            city_code: missing.city_code.clone(),
            expiry_date: missing.expiry_date.clone(),
            time_zone: tz.name().to_owned(),
            days_to_expiry: missing.days_to_expiry,
            due_at_ms: at.timestamp_millis(),
            ..Default::default()
        };
        crate::phone::intake::insert(tx, &self.clock, &self.pii, command).await?;
        metrics::counter!("quote_missing_tasks_total").increment(1);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn terms(premium: i64, last: i64) -> Terms {
        Terms {
            quote_id: "Q1".into(),
            premium_fen: premium,
            last_premium_fen: last,
            change_fen: premium - last,
            claim_free_years: 2,
            promotion: "赠送道路救援卡".into(),
            valid_until: NaiveDate::from_ymd_opt(2027, 2, 14).expect("date"),
            discount_percent: 0,
            discount_extra: String::new(),
        }
    }

    #[test]
    fn the_sms_states_the_premium_its_change_and_the_offer() {
        let [premium, change, promotion] = terms(420_000, 452_000).sms_params();
        assert_eq!(premium.1, "4200.00");
        assert_eq!(change.1, "比去年少320.00元");
        assert_eq!(promotion.1, "，赠送道路救援卡");
        let mut dearer = terms(460_050, 452_000);
        dearer.promotion.clear();
        let [_, change, promotion] = dearer.sms_params();
        assert_eq!(
            (change.1.as_str(), promotion.1.as_str()),
            ("比去年多80.50元", "")
        );
        assert_eq!(terms(1, 1).sms_params()[1].1, "与去年持平");
    }
}
