//! A customer's contact as the scheduler knows it: `mobile_index`, the mobile's blind
//! index, is how the frequency cap finds a customer's other cases without reading any
//! of them; `mobile_enc`, the mobile sealed alone, is what a key rotation re-indexes it
//! from (firing never reads it). The contact itself (name, mobile, plate) is dispatch's, which sends and
//! calls (`dispatch`'s `contacts.rs`, from the case's opening): the scheduler's commands
//! name the case, and firing reads a random case row per timer, so the rows' size is how
//! much of `scheduler.cases` stays in Postgres' buffers.
//!
//! Cases opened before that keep the contact they were opened with, sealed in
//! `scheduler.cases.contact_enc` (the array `[name, mobile, plate]`, or an object before
//! it), bound to the case: firing their commands opens it once and carries it, and a
//! key rotation re-seals it until the cases are erased.

use renewal_platform::pii::{BlindIndex, PiiCipher, PiiError, Place};
use renewal_platform::resealing::{IndexColumn, SealedColumn};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

pub const CASES: &str = "scheduler.cases";
pub const COLUMN: &str = "contact_enc";

/// Where the scheduler keeps sealed values, for `renewal pii rotate`.
pub const SEALED: &[SealedColumn] = &[
    SealedColumn {
        table: CASES,
        column: COLUMN,
        row_key: "case_id::text",
        index: Some(IndexColumn {
            column: "mobile_index",
            of: mobile_of,
        }),
    },
    SealedColumn {
        table: CASES,
        column: MOBILE,
        row_key: "case_id::text",
        index: Some(IndexColumn {
            column: "mobile_index",
            of: renewal_platform::resealing::itself,
        }),
    },
    LETTERS,
];

/// A case's mobile, sealed alone (cases opened since dispatch keeps the contacts): only
/// a key rotation reads it, to index the mobile under the new key.
pub const MOBILE: &str = "mobile_enc";

/// A case's mobile, sealed for its row, and its blind index; neither without a mobile.
pub fn seal_mobile(
    pii: &PiiCipher,
    case_id: Uuid,
    mobile: &str,
) -> Result<Option<(Vec<u8>, BlindIndex)>, PiiError> {
    if mobile.is_empty() {
        return Ok(None);
    }
    let row = case_id.to_string();
    let sealed = pii.seal(mobile, Place::new(CASES, MOBILE, &row))?;
    Ok(Some((sealed, pii.blind_index(mobile))))
}

/// The scheduler's dead letters (a case's opening carries the contact): sealed.
pub const LETTERS: SealedColumn =
    renewal_platform::dead_letters::sealed_column("scheduler.dead_letters");

/// A customer's contact, as the case's opening carried it.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Contact {
    pub name: String,
    pub mobile: String,
    pub plate: String,
}

/// Never the contact itself: a contact printed by mistake must not reach a log.
impl std::fmt::Debug for Contact {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Contact { .. }")
    }
}

/// A contact ready for the table: its sealed value, and its mobile's blind index (none
/// without a mobile: customers without one are not one customer).
pub struct Sealed {
    pub contact_enc: Vec<u8>,
    pub mobile_index: Option<BlindIndex>,
}

fn place(case_id: &str) -> Place<'_> {
    Place::new(CASES, COLUMN, case_id)
}

/// Seals `contact` for its case, under the newest key, as cases were opened before
/// dispatch kept the contacts (tests make such cases with it).
pub fn seal(pii: &PiiCipher, case_id: Uuid, contact: &Contact) -> Result<Sealed, PiiError> {
    let row = case_id.to_string();
    let compact = (&contact.name, &contact.mobile, &contact.plate);
    Ok(Sealed {
        contact_enc: pii.seal_json(&compact, place(&row))?,
        mobile_index: index_of(pii, &contact.mobile),
    })
}

/// Opens a case's contact, sealed under any key of the keyring.
pub fn open(pii: &PiiCipher, case_id: Uuid, sealed: &[u8]) -> Result<Contact, PiiError> {
    let row = case_id.to_string();
    parse(&pii.open(sealed, place(&row))?).ok_or(PiiError::Unreadable)
}

/// A contact's plain text: the array, or the object sealed before it.
fn parse(plain: &str) -> Option<Contact> {
    if plain.starts_with('[') {
        let (name, mobile, plate) = serde_json::from_str(plain).ok()?;
        Some(Contact {
            name,
            mobile,
            plate,
        })
    } else {
        serde_json::from_str(plain).ok()
    }
}

/// The blind index of a mobile under the newest key; none for no mobile.
pub fn index_of(pii: &PiiCipher, mobile: &str) -> Option<BlindIndex> {
    (!mobile.is_empty()).then(|| pii.blind_index(mobile))
}

/// The mobile in an opened contact: what `mobile_index` indexes.
fn mobile_of(plain: &str) -> Option<String> {
    parse(plain).map(|c| c.mobile).filter(|m| !m.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cipher(service: &str) -> PiiCipher {
        PiiCipher::for_service(&"11".repeat(32).into(), service).expect("key")
    }

    #[test]
    fn a_contact_opens_only_for_its_case_and_its_mobile_is_indexed() {
        let pii = cipher("scheduler");
        let contact = Contact {
            name: "张三".into(),
            mobile: "+8613812345678".into(),
            plate: "沪A12345".into(),
        };
        let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
        let sealed = seal(&pii, a, &contact).expect("seals");
        assert!(!sealed.contact_enc.windows(5).any(|w| w == b"13812"));
        assert_eq!(open(&pii, a, &sealed.contact_enc).expect("opens"), contact);
        assert!(open(&pii, b, &sealed.contact_enc).is_err(), "another case");
        assert!(open(&cipher("lists"), a, &sealed.contact_enc).is_err());
        assert_eq!(sealed.mobile_index, Some(pii.blind_index("+8613812345678")));
        let plain = pii
            .open(&sealed.contact_enc, place(&a.to_string()))
            .expect("opens");
        assert_eq!(
            plain, r#"["张三","+8613812345678","沪A12345"]"#,
            "the compact form"
        );
        assert_eq!(mobile_of(&plain).as_deref(), Some("+8613812345678"));
        assert_eq!(format!("{contact:?}"), "Contact { .. }");
    }

    #[test]
    fn a_contact_sealed_as_an_object_before_still_opens() {
        let pii = cipher("scheduler");
        let contact = Contact {
            name: "李四".into(),
            mobile: "+8613900000001".into(),
            plate: "京N00001".into(),
        };
        let case = Uuid::now_v7();
        let legacy = pii
            .seal_json(&contact, place(&case.to_string()))
            .expect("seals");
        assert_eq!(open(&pii, case, &legacy).expect("opens"), contact);
        let plain = serde_json::to_string(&contact).expect("json");
        assert_eq!(mobile_of(&plain).as_deref(), Some("+8613900000001"));
        let smaller = seal(&pii, case, &contact).expect("seals");
        assert!(smaller.contact_enc.len() + 20 < legacy.len());
    }

    #[test]
    fn a_contact_without_a_mobile_has_no_index() {
        let pii = cipher("scheduler");
        let sealed = seal(&pii, Uuid::now_v7(), &Contact::default()).expect("seals");
        assert_eq!(sealed.mobile_index, None);
        assert_eq!(mobile_of(r#"{"name":"","mobile":"","plate":""}"#), None);
        assert_eq!(mobile_of("not json"), None);
    }
}
