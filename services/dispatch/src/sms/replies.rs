//! Customers' replies (`SmsUp`), pushed by the vendor as a JSON array on the same
//! secret-token webhook as the receipts and answered the same way. A reply of `TD`,
//! `T`, `退订`, `N` or `STOP` (any case, full-width or padded) opts the number out of
//! marketing SMS at once (the sender re-checks before every send) and publishes
//! `dispatch.sms.opted_out` once per number. Every reply is kept once, however often
//! the vendor repeats it.

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use renewal_contract::dispatch::SmsOptedOut;
use renewal_contract::subject;
use serde::Deserialize;
use uuid::Uuid;

use super::receipts::{Webhook, WebhookError};

/// The keywords that opt a customer out, after [`normalize`].
const OPT_OUT_WORDS: &[&str] = &["TD", "T", "退订", "N", "STOP"];

/// One reply as the vendor pushes it.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct SmsUp {
    pub phone_number: String,
    #[serde(default)]
    pub send_time: String,
    pub content: String,
    #[serde(default)]
    pub sign_name: String,
    #[serde(default)]
    pub dest_code: String,
    /// A number in the vendor's pushes; kept as text.
    #[serde(default)]
    pub sequence_id: serde_json::Value,
}

/// Full-width forms to ASCII, whitespace (incl. the ideographic space) trimmed, upper case.
pub fn normalize(content: &str) -> String {
    content
        .chars()
        .map(|c| match c {
            '\u{3000}' => ' ',
            '\u{FF01}'..='\u{FF5E}' => char::from_u32(c as u32 - 0xFEE0).unwrap_or(c),
            other => other,
        })
        .collect::<String>()
        .trim()
        .to_uppercase()
}

pub fn is_opt_out(content: &str) -> bool {
    let word = normalize(content);
    OPT_OUT_WORDS.contains(&word.as_str())
}

/// The national number (the vendor drops the country code; our commands may carry it).
pub fn national(phone: &str) -> &str {
    let phone = phone.trim();
    phone
        .strip_prefix("+86")
        .or_else(|| phone.strip_prefix("0086"))
        .unwrap_or(phone)
}

pub(crate) async fn up(
    State(hook): State<Webhook>,
    body: Bytes,
) -> Result<Json<serde_json::Value>, WebhookError> {
    let replies: Vec<SmsUp> =
        serde_json::from_slice(&body).map_err(|e| WebhookError::Malformed(e.to_string()))?;
    for r in &replies {
        let n = national(&r.phone_number);
        if n.is_empty() || n.len() > 20 || !n.bytes().all(|b| b.is_ascii_digit()) {
            return Err(WebhookError::Malformed(
                "a reply's phone_number is not a phone number".into(),
            ));
        }
        if r.content.chars().count() > 1000 {
            return Err(WebhookError::Malformed("a reply is too long".into()));
        }
    }
    let opted_out = record(&hook, &replies).await?;
    renewal_platform::activity::record();
    if opted_out > 0 {
        hook.outbox.wake();
    }
    metrics::counter!("sms_replies_total").increment(replies.len() as u64);
    Ok(Json(serde_json::json!({ "code": 0, "msg": "成功" })))
}

/// Records a batch in one transaction; returns how many numbers opted out now.
async fn record(hook: &Webhook, replies: &[SmsUp]) -> Result<usize, sqlx::Error> {
    let now = hook.clock.now();
    let mut tx = hook.pool.begin().await?;
    let mut opted_out = 0;
    for r in replies {
        let national = national(&r.phone_number);
        let e164 = format!("+86{national}");
        let opt_out = is_opt_out(&r.content);
        let sequence = match &r.sequence_id {
            serde_json::Value::String(s) => s.clone(),
            serde_json::Value::Null => String::new(),
            other => other.to_string(),
        };
        let fresh = sqlx::query(
            "INSERT INTO dispatch.sms_replies (mobile, content, send_time, sequence_id, opt_out, received_at)
             VALUES ($1, $2, $3, $4, $5, $6)
             ON CONFLICT (mobile, send_time, sequence_id, content) DO NOTHING",
        )
        .bind(&e164)
        .bind(&r.content)
        .bind(&r.send_time)
        .bind(&sequence)
        .bind(opt_out)
        .bind(now)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if fresh == 0 || !opt_out {
            continue;
        }
        // Both spellings our commands use, so the sender's check matches either.
        let first = sqlx::query(
            "INSERT INTO dispatch.opt_outs (mobile, opted_out_at) VALUES ($1, $3), ($2, $3)
             ON CONFLICT (mobile) DO NOTHING",
        )
        .bind(&e164)
        .bind(national)
        .bind(now)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if first == 0 {
            continue; // this number had opted out already
        }
        let cases: Vec<Uuid> = sqlx::query_scalar(
            "SELECT DISTINCT case_id FROM dispatch.sms_messages WHERE mobile IN ($1, $2) LIMIT 100",
        )
        .bind(&e164)
        .bind(national)
        .fetch_all(&mut *tx)
        .await?;
        let event = SmsOptedOut {
            mobile: e164,
            reply: r.content.clone(),
            case_ids: cases.iter().map(Uuid::to_string).collect(),
            at_ms: now.timestamp_millis(),
        };
        hook.outbox
            .enqueue(&mut tx, subject::DISPATCH_SMS_OPTED_OUT, &event)
            .await?;
        metrics::counter!("sms_opt_outs_total").increment(1);
        opted_out += 1;
    }
    tx.commit().await?;
    Ok(opted_out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opt_out_words_in_any_case_width_or_padding() {
        for reply in [
            "TD",
            "td",
            " Td ",
            "ＴＤ",
            "ｔｄ",
            "\u{3000}TD\u{3000}",
            "T",
            "t",
            "退订",
            " 退订\n",
            "N",
            "ｎ",
            "STOP",
            "stop",
            "Ｓｔｏｐ",
        ] {
            assert!(is_opt_out(reply), "{reply:?} opts out");
        }
        for reply in ["好的", "TD 谢谢", "NO", "STOPP", "", "已续保"] {
            assert!(!is_opt_out(reply), "{reply:?} does not opt out");
        }
    }

    #[test]
    fn numbers_lose_the_country_code() {
        assert_eq!(national("+8613812345678"), "13812345678");
        assert_eq!(national("13812345678"), "13812345678");
    }
}
