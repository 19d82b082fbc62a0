//! Dispatch's personal data at rest (issue 16): every mobile, name, plate and reply is
//! sealed with the service's key (`DispatchConfig::pii`), bound to its table, column
//! and row, and what is read together is one sealed JSON value (one open per SMS sent
//! and per task leased). Numbers are found by their keyed blind index of the E.164
//! form ([`e164`]): written under the newest key, looked up under every key of the
//! keyring, so rows not yet re-sealed still match during a rotation.
//!
//! | table | sealed | row key | blind index |
//! |---|---|---|---|
//! | `sms_messages` | `contact_enc` ([`SmsContact`]) | `id` | `mobile_index` |
//! | `phone_tasks` | `contact_enc` ([`TaskContact`]) | `id` | none |
//! | `opt_outs` | `mobile_enc` (the E.164 number) | `id` | `mobile_index` (unique) |
//! | `sms_replies` | `reply_enc` ([`ReplyText`]) | `id` | `mobile_index` |
//! | `case_contacts` | `contact_enc` (`[name, mobile, plate]`, `crate::contacts`) | `case_id` | none |
//!
//! A contact correction keeps no number of its own: it is its task's.
//!
//! An erased value (`crate::erasure`) is the empty one, as is its blind index: never
//! opened (a key rotation passes over it too).

use renewal_platform::pii::{PiiCipher, PiiError, Place};
use renewal_platform::resealing::{IndexColumn, SealedColumn, itself};
use serde::{Deserialize, Serialize};

pub const MESSAGES: &str = "dispatch.sms_messages";
pub const TASKS: &str = "dispatch.phone_tasks";
pub const OPT_OUTS: &str = "dispatch.opt_outs";
pub const REPLIES: &str = "dispatch.sms_replies";

/// Where dispatch keeps sealed values, for `renewal pii rotate`.
pub const SEALED: &[SealedColumn] = &[
    SealedColumn {
        table: MESSAGES,
        column: "contact_enc",
        row_key: "id",
        index: Some(IndexColumn {
            column: "mobile_index",
            of: mobile_in_json,
        }),
    },
    SealedColumn {
        table: TASKS,
        column: "contact_enc",
        row_key: "id",
        index: None,
    },
    SealedColumn {
        table: OPT_OUTS,
        column: "mobile_enc",
        row_key: "id",
        index: Some(IndexColumn {
            column: "mobile_index",
            of: itself,
        }),
    },
    SealedColumn {
        table: REPLIES,
        column: "reply_enc",
        row_key: "id",
        index: Some(IndexColumn {
            column: "mobile_index",
            of: mobile_in_json,
        }),
    },
    SealedColumn {
        table: crate::contacts::CONTACTS,
        column: "contact_enc",
        row_key: "case_id::text",
        index: None,
    },
    LETTERS,
];

/// Dispatch's dead letters (its commands carry the contact): sealed.
pub const LETTERS: SealedColumn =
    renewal_platform::dead_letters::sealed_column("dispatch.dead_letters");

/// What an SMS needs at the vendor: `dispatch.sms_messages.contact_enc`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SmsContact {
    pub mobile: String,
    pub template_params: serde_json::Value,
}

/// Whom a phone task calls: `dispatch.phone_tasks.contact_enc`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TaskContact {
    pub customer_name: String,
    pub mobile: String,
    pub plate: String,
}

impl TaskContact {
    /// What an erased contact (the empty value) shows.
    pub fn erased() -> Self {
        TaskContact {
            customer_name: "[erased]".into(),
            mobile: String::new(),
            plate: String::new(),
        }
    }
}

/// A customer's reply: `dispatch.sms_replies.reply_enc`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReplyText {
    pub mobile: String,
    pub content: String,
}

/// The E.164 form of a number as our commands or the vendor spell it (with or without
/// `+86`/`0086`): what is blind-indexed, so every spelling of a number matches.
pub fn e164(mobile: &str) -> String {
    let national = crate::sms::replies::national(mobile);
    if let Some(rest) = national.strip_prefix("00") {
        format!("+{rest}")
    } else if national.starts_with('+') {
        national.to_owned()
    } else {
        format!("+86{national}")
    }
}

/// The indexed number of a sealed JSON value with a `mobile` field.
fn mobile_in_json(plain: &str) -> Option<String> {
    #[derive(Deserialize)]
    struct Mobile {
        mobile: String,
    }
    serde_json::from_str::<Mobile>(plain)
        .ok()
        .map(|m| e164(&m.mobile))
}

/// One message's contact, sealed for its row.
pub fn seal_sms(pii: &PiiCipher, id: &str, c: &SmsContact) -> Result<Vec<u8>, PiiError> {
    pii.seal_json(c, Place::new(MESSAGES, "contact_enc", id))
}

pub fn open_sms(pii: &PiiCipher, id: &str, sealed: &[u8]) -> Result<SmsContact, PiiError> {
    pii.open_json(sealed, Place::new(MESSAGES, "contact_enc", id))
}

/// One task's contact, sealed for its row.
pub fn seal_task(pii: &PiiCipher, id: &str, c: &TaskContact) -> Result<Vec<u8>, PiiError> {
    pii.seal_json(c, Place::new(TASKS, "contact_enc", id))
}

pub fn open_task(pii: &PiiCipher, id: &str, sealed: &[u8]) -> Result<TaskContact, PiiError> {
    pii.open_json(sealed, Place::new(TASKS, "contact_enc", id))
}

/// An opted-out number (E.164), sealed for its row.
pub fn seal_opt_out(pii: &PiiCipher, id: &str, e164: &str) -> Result<Vec<u8>, PiiError> {
    pii.seal(e164, Place::new(OPT_OUTS, "mobile_enc", id))
}

pub fn open_opt_out(pii: &PiiCipher, id: &str, sealed: &[u8]) -> Result<String, PiiError> {
    pii.open(sealed, Place::new(OPT_OUTS, "mobile_enc", id))
}

/// A reply, sealed for its row.
pub fn seal_reply(pii: &PiiCipher, id: &str, r: &ReplyText) -> Result<Vec<u8>, PiiError> {
    pii.seal_json(r, Place::new(REPLIES, "reply_enc", id))
}

pub fn open_reply(pii: &PiiCipher, id: &str, sealed: &[u8]) -> Result<ReplyText, PiiError> {
    pii.open_json(sealed, Place::new(REPLIES, "reply_enc", id))
}

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::SecretString;

    fn pii() -> PiiCipher {
        PiiCipher::for_service(&SecretString::from("11".repeat(32)), "dispatch").expect("key")
    }

    #[test]
    fn every_spelling_of_a_number_has_one_e164_form() {
        for m in ["+8613812345678", "13812345678", " 008613812345678 "] {
            assert_eq!(e164(m), "+8613812345678", "{m}");
        }
        assert_eq!(e164("+85291234567"), "+85291234567");
    }

    #[test]
    fn sealed_columns_open_in_their_row_and_index_their_number() {
        let pii = pii();
        let c = SmsContact {
            mobile: "13812345678".into(),
            template_params: serde_json::json!({"name": "王芳", "plate": "沪A1"}),
        };
        let sealed = seal_sms(&pii, "m1", &c).expect("seals");
        assert!(open_sms(&pii, "m2", &sealed).is_err());
        let opened = open_sms(&pii, "m1", &sealed).expect("opens");
        assert_eq!(opened.template_params["name"], "王芳");
        let index = SEALED[0].index.expect("indexed");
        let plain = pii
            .open(&sealed, Place::new(SEALED[0].table, SEALED[0].column, "m1"))
            .expect("opens by its listed place");
        assert_eq!((index.of)(&plain).as_deref(), Some("+8613812345678"));
        for (column, table) in SEALED.iter().map(|c| (c.column, c.table)) {
            assert!(table.starts_with("dispatch."), "{table}.{column}");
        }
    }
}
