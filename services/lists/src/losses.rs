//! Why a renewal was lost (DOMAIN.md, "Review"): every case that ends lost carries one
//! reason, drawn from its calls, written in the statement that ends it: a call that
//! found the customer insured elsewhere or the vehicle sold, or the lapse of a case whose
//! last call said why (a refusal keeps its reason code, never the customer's words).
//! The review (`crate::kpis`, `crate::reviews`) counts them.

use chrono::{DateTime, Utc};
use sqlx::PgConnection;
use uuid::Uuid;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LossReason {
    TooExpensive,
    InsuredElsewhere,
    VehicleSold,
    /// The last call reached nobody, or a wrong number.
    Unreachable,
    /// No call completed before the lapse, or the call back asked for never came.
    NotContactedInTime,
    /// Refused for a reason other than the price.
    Refused,
    /// Promised (or reported renewed on the phone) and never renewed.
    PromiseNotKept,
    Other,
}

impl LossReason {
    pub const ALL: [LossReason; 8] = [
        LossReason::TooExpensive,
        LossReason::InsuredElsewhere,
        LossReason::VehicleSold,
        LossReason::Unreachable,
        LossReason::NotContactedInTime,
        LossReason::Refused,
        LossReason::PromiseNotKept,
        LossReason::Other,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            LossReason::TooExpensive => "too_expensive",
            LossReason::InsuredElsewhere => "insured_elsewhere",
            LossReason::VehicleSold => "vehicle_sold",
            LossReason::Unreachable => "unreachable",
            LossReason::NotContactedInTime => "not_contacted_in_time",
            LossReason::Refused => "refused",
            LossReason::PromiseNotKept => "promise_not_kept",
            LossReason::Other => "other",
        }
    }
}

/// The reason code of a refusal from what the caller wrote (a code, or the customer's
/// words in Chinese or English): the price, or another reason.
pub fn refusal_code(reason: &str) -> LossReason {
    let reason = reason.to_lowercase();
    const PRICE: [&str; 9] = [
        "too_expensive",
        "expensive",
        "price",
        "premium",
        "cost",
        "discount",
        "贵",
        "价",
        "优惠",
    ];
    if PRICE.iter().any(|word| reason.contains(word)) {
        LossReason::TooExpensive
    } else {
        LossReason::Refused
    }
}

/// The reason of a case that lapses, from its columns (`calls_made`, `last_outcome`,
/// `refused_because`), as SQL over the relation `$rel`.
macro_rules! at_lapse_sql {
    ($rel:literal) => {
        concat!(
            "CASE WHEN ",
            $rel,
            ".calls_made = 0 OR ",
            $rel,
            ".last_outcome = 'call_back' THEN 'not_contacted_in_time'
                  WHEN ",
            $rel,
            ".last_outcome = 'refused' THEN COALESCE(",
            $rel,
            ".refused_because, 'refused')
                  WHEN ",
            $rel,
            ".last_outcome IN ('unreachable', 'wrong_number') THEN 'unreachable'
                  WHEN ",
            $rel,
            ".last_outcome IN ('promised', 'renewed') THEN 'promise_not_kept'
                  ELSE 'other' END"
        )
    };
}
pub(crate) use at_lapse_sql;

/// Records why a case closed lost by a call (insured elsewhere, vehicle sold).
pub async fn record(
    tx: &mut PgConnection,
    case_id: Uuid,
    policy_no: &str,
    reason: LossReason,
    at: DateTime<Utc>,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO lists.lost_reasons (policy_no, case_id, reason, recorded_at)
         VALUES ($1, $2, $3, $4)
         ON CONFLICT (policy_no) DO UPDATE SET reason = EXCLUDED.reason, recorded_at = EXCLUDED.recorded_at",
    )
    .bind(policy_no)
    .bind(case_id)
    .bind(reason.as_str())
    .bind(at)
    .execute(&mut *tx)
    .await?;
    metrics::counter!("cases_lost_total", "reason" => reason.as_str()).increment(1);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refusal_over_the_price_is_too_expensive_whatever_the_words() {
        for words in [
            "too expensive",
            "Price too high",
            "太贵了",
            "别家价格更低",
            "too_expensive",
        ] {
            assert_eq!(refusal_code(words), LossReason::TooExpensive, "{words}");
        }
        for words in ["not interested", "不需要", "moving abroad"] {
            assert_eq!(refusal_code(words), LossReason::Refused, "{words}");
        }
    }

    #[test]
    fn the_lapse_expression_names_only_known_reasons() {
        let sql = at_lapse_sql!("c");
        for quoted in sql.split('\'').skip(1).step_by(2) {
            let known = LossReason::ALL.iter().any(|r| r.as_str() == quoted);
            let outcome = [
                "call_back",
                "refused",
                "unreachable",
                "wrong_number",
                "promised",
                "renewed",
            ]
            .contains(&quoted);
            assert!(known || outcome, "{quoted}");
        }
    }
}
