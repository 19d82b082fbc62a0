//! Customers' replies (`SmsUp`), pushed by the vendor as a JSON array on the same
//! secret-token webhook as the receipts and answered the same way. A reply of `TD`,
//! `T`, `退订`, `N` or `STOP` (any case, full-width or padded) opts the number out of
//! marketing SMS at once (the sender re-checks before every send) and publishes
//! `dispatch.sms.opted_out` once per number. Every reply is kept once, however often
//! the vendor repeats it: number and text sealed, told apart by the number's blind
//! index and a keyed digest of the text. An opt-out is kept once per number, found
//! under every key of the keyring.

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use chrono::{DateTime, Utc};
use renewal_contract::dispatch::SmsOptedOut;
use renewal_contract::subject;
use renewal_platform::pii::PiiCipher;
use serde::Deserialize;
use sqlx::PgConnection;
use uuid::Uuid;

use super::receipts::{Webhook, WebhookError};
use crate::sealed::{self, ReplyText};

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
async fn record(hook: &Webhook, replies: &[SmsUp]) -> Result<usize, WebhookError> {
    let now = hook.clock.now();
    let mut tx = hook.pool.begin().await?;
    let mut opted_out = 0;
    for r in replies {
        let e164 = format!("+86{}", national(&r.phone_number));
        let opt_out = is_opt_out(&r.content);
        let fresh = keep(&mut tx, &hook.pii, r, &e164, opt_out, now).await?;
        if !fresh || !opt_out {
            continue;
        }
        if !note_opt_out(&mut tx, &hook.pii, &e164, now).await? {
            continue; // this number had opted out already
        }
        // Every spelling of the number is indexed as its E.164 form; every key of the
        // keyring is asked for (rows not re-sealed yet during a rotation).
        let cases: Vec<Uuid> = sqlx::query_scalar(
            "SELECT DISTINCT case_id FROM dispatch.sms_messages WHERE mobile_index = ANY($1) LIMIT 100",
        )
        .bind(hook.pii.blind_indexes_bytes(&e164))
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

/// Keeps a reply (number and text sealed), once however often the vendor pushes it;
/// whether it is new.
async fn keep(
    tx: &mut PgConnection,
    pii: &PiiCipher,
    r: &SmsUp,
    e164: &str,
    opt_out: bool,
    now: DateTime<Utc>,
) -> Result<bool, WebhookError> {
    let sequence = match &r.sequence_id {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Null => String::new(),
        other => other.to_string(),
    };
    let id = Uuid::now_v7();
    let text = ReplyText {
        mobile: e164.to_owned(),
        content: r.content.clone(),
    };
    let fresh = sqlx::query(
        "INSERT INTO dispatch.sms_replies (id, mobile_index, content_digest, reply_enc, send_time, sequence_id,
             opt_out, received_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
         ON CONFLICT (mobile_index, send_time, sequence_id, content_digest) DO NOTHING",
    )
    .bind(id)
    .bind(&pii.blind_index(e164)[..])
    .bind(&pii.digest(&[&r.content])[..])
    .bind(sealed::seal_reply(pii, &id.to_string(), &text)?)
    .bind(&r.send_time)
    .bind(&sequence)
    .bind(opt_out)
    .bind(now)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    Ok(fresh > 0)
}

/// Opts a number out, once: not if it is already out under any key of the keyring.
/// Whether it is new.
async fn note_opt_out(
    tx: &mut PgConnection,
    pii: &PiiCipher,
    e164: &str,
    now: DateTime<Utc>,
) -> Result<bool, WebhookError> {
    let id = Uuid::now_v7();
    let first = sqlx::query(
        "INSERT INTO dispatch.opt_outs (id, mobile_index, mobile_enc, opted_out_at)
         SELECT $1, $2, $3, $4
         WHERE NOT EXISTS (SELECT 1 FROM dispatch.opt_outs WHERE mobile_index = ANY($5))
         ON CONFLICT (mobile_index) DO NOTHING",
    )
    .bind(id)
    .bind(&pii.blind_index(e164)[..])
    .bind(sealed::seal_opt_out(pii, &id.to_string(), e164)?)
    .bind(now)
    .bind(pii.blind_indexes_bytes(e164))
    .execute(&mut *tx)
    .await?
    .rows_affected();
    Ok(first > 0)
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
