//! Each case's contact (name, mobile, plate), kept by dispatch from the case's opening
//! (`lists.case.opened`): the service that texts and calls the customer is the one that
//! holds the number. The scheduler keeps only the mobile's blind index (its frequency
//! cap), so firing a timer reads no contact and opens nothing, and its commands name the
//! case; dispatch fills them in here, one open per command, before sealing the message's
//! or task's own copy.
//!
//! - Sealed in `dispatch.case_contacts` as the array `[name, mobile, plate]` (the rows
//!   are read one per command, at random), bound to the case; the empty value once the
//!   case is erased, and never written for a case erased before its opening arrived.
//! - A command that carries a contact (sent before dispatch kept them: a case the
//!   scheduler still holds a contact for, or a test) is taken as it is.
//! - A command whose case's opening has not reached dispatch yet (the two come on
//!   different streams) is delivered again a little later.
//! - A new mobile (`lists.case.changed`) replaces the contact, reaches the case's open
//!   tasks and clears its wrong-number marks ([`CaseChanges`]).
//! - Beside the contact, the case's policy number, branch and city (no personal data),
//!   by which the operations console finds it and its readers' scope is checked
//!   (`crate::history`).

use std::sync::Arc;

use renewal_contract::lists::{CaseChanged, CaseOpened, Customer};
use renewal_contract::subject;
use renewal_platform::inbox::field;
use renewal_platform::pii::{PiiCipher, PiiError, Place};
use renewal_platform::{Delivery, HandleError, Handler};
use sqlx::PgConnection;
use uuid::Uuid;

pub const CONTACTS: &str = "dispatch.case_contacts";

/// A case's contact.
#[derive(Default)]
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

impl From<Customer> for Contact {
    fn from(c: Customer) -> Self {
        Contact {
            name: c.name,
            mobile: c.mobile,
            plate: c.plate,
        }
    }
}

fn place(case_id: &str) -> Place<'_> {
    Place::new(CONTACTS, "contact_enc", case_id)
}

fn seal(pii: &PiiCipher, case_id: Uuid, c: &Contact) -> Result<Vec<u8>, PiiError> {
    pii.seal_json(&(&c.name, &c.mobile, &c.plate), place(&case_id.to_string()))
}

pub(crate) fn open(pii: &PiiCipher, case_id: Uuid, sealed: &[u8]) -> Result<Contact, PiiError> {
    let (name, mobile, plate) = pii.open_json(sealed, place(&case_id.to_string()))?;
    Ok(Contact {
        name,
        mobile,
        plate,
    })
}

/// Cases opened by lists: their contacts kept.
pub struct CaseOpenings {
    pub pii: Arc<PiiCipher>,
}

impl Handler for CaseOpenings {
    async fn handle(&self, tx: &mut PgConnection, delivery: &Delivery) -> Result<(), HandleError> {
        if delivery.subject != subject::LISTS_CASE_OPENED {
            return Err(HandleError::Malformed(format!(
                "unexpected subject {}",
                delivery.subject
            )));
        }
        let event: CaseOpened = delivery.decode()?;
        let case_id = field::uuid("case_id", &event.case_id)?;
        let customer = event.customer.unwrap_or_default();
        let contact = Contact::from(customer);
        // Sealing fails only when the system's random source does: retried.
        let sealed = seal(&self.pii, case_id, &contact)?;
        // Against an erasure of the same case: one waits for the other.
        crate::commands::lock_case(tx, case_id).await?;
        sqlx::query(
            "INSERT INTO dispatch.case_contacts (case_id, contact_enc)
             SELECT $1, CASE WHEN closed.erased_at IS NULL THEN $2 ELSE '\\x'::bytea END
             FROM (SELECT 1) one LEFT JOIN dispatch.closed_cases closed ON closed.case_id = $1
             ON CONFLICT (case_id) DO NOTHING",
        )
        .bind(case_id)
        .bind(sealed)
        .execute(&mut *tx)
        .await?;
        let (branch, city) = (event.branch_code.as_str(), event.city_code.as_str());
        let at = event.opened_at_ms;
        crate::history::keep_scope(tx, case_id, &event.policy_no, [branch, city], at, false)
            .await?;
        // A quote that came before the case: its terms arrive with the opening.
        if let Some(quote) = event.quote {
            crate::terms::keep(tx, quote).await?;
        }
        Ok(())
    }

    /// An opening refused as malformed is kept without its customer.
    fn redact(&self, delivery: &Delivery) -> Option<Vec<u8>> {
        let mut opened: CaseOpened = delivery.decode().ok()?;
        opened.customer = None;
        Some(prost::Message::encode_to_vec(&opened))
    }
}

/// Changed cases (`lists.case.changed`): a new mobile replaces the case's contact, goes
/// into its open tasks (the next call reaches the new number), and clears the case's
/// wrong-number marks.
pub struct CaseChanges {
    pub pii: Arc<PiiCipher>,
}

impl Handler for CaseChanges {
    async fn handle(&self, tx: &mut PgConnection, delivery: &Delivery) -> Result<(), HandleError> {
        if delivery.subject != subject::LISTS_CASE_CHANGED {
            return Ok(());
        }
        let event: CaseChanged = delivery.decode()?;
        let case_id = field::uuid("case_id", &event.case_id)?;
        let at = field::instant_ms("changed_at_ms", event.changed_at_ms)?;
        let (branch, city) = (event.branch_code.as_str(), event.city_code.as_str());
        let (policy_no, at_ms) = (event.policy_no.as_str(), event.changed_at_ms);
        crate::history::keep_scope(tx, case_id, policy_no, [branch, city], at_ms, true).await?;
        let Some(customer) = event.customer.filter(|c| !c.mobile.trim().is_empty()) else {
            return Ok(());
        };
        let contact = Contact::from(customer);
        let sealed = seal(&self.pii, case_id, &contact)?;
        crate::commands::lock_case(tx, case_id).await?;
        // Ahead of the opening (another consumer) it is written first and the opening
        // keeps it; an erased case keeps nothing.
        sqlx::query(
            "INSERT INTO dispatch.case_contacts (case_id, contact_enc)
             SELECT $1, $2 FROM (SELECT 1) one
             LEFT JOIN dispatch.closed_cases closed ON closed.case_id = $1
             WHERE closed.erased_at IS NULL
             ON CONFLICT (case_id) DO UPDATE SET contact_enc = EXCLUDED.contact_enc
             WHERE length(dispatch.case_contacts.contact_enc) > 0",
        )
        .bind(case_id)
        .bind(sealed)
        .execute(&mut *tx)
        .await?;
        let open_tasks: Vec<Uuid> = sqlx::query_scalar(
            "SELECT id FROM dispatch.phone_tasks WHERE case_id = $1 AND state = 'open'",
        )
        .bind(case_id)
        .fetch_all(&mut *tx)
        .await?;
        let task_contact = crate::sealed::TaskContact {
            customer_name: contact.name.clone(),
            mobile: contact.mobile.clone(),
            plate: contact.plate.clone(),
        };
        for id in open_tasks {
            let sealed = crate::sealed::seal_task(&self.pii, &id.to_string(), &task_contact)?;
            sqlx::query("UPDATE dispatch.phone_tasks SET contact_enc = $2 WHERE id = $1")
                .bind(id)
                .bind(sealed)
                .execute(&mut *tx)
                .await?;
        }
        sqlx::query(
            "UPDATE dispatch.contact_corrections SET corrected_at = $2
             WHERE case_id = $1 AND corrected_at IS NULL",
        )
        .bind(case_id)
        .bind(at)
        .execute(&mut *tx)
        .await?;
        Ok(())
    }

    /// A change refused as malformed is kept without its customer.
    fn redact(&self, delivery: &Delivery) -> Option<Vec<u8>> {
        let mut changed: CaseChanged = delivery.decode().ok()?;
        changed.customer = None;
        Some(prost::Message::encode_to_vec(&changed))
    }
}

/// Fills in a command's contact (`name`, `mobile`, `plate`) from its case's, unless it
/// carries one (one open). For an erased case the fields stay empty: its message or
/// task is kept withdrawn without them. A case whose opening has not arrived yet is
/// retried.
pub async fn fill(
    tx: &mut PgConnection,
    pii: &PiiCipher,
    case_id: Uuid,
    [name, mobile, plate]: [&mut String; 3],
) -> Result<(), HandleError> {
    if !mobile.trim().is_empty() {
        return Ok(());
    }
    let row: (Option<Vec<u8>>, bool) = sqlx::query_as(
        "SELECT c.contact_enc, closed.erased_at IS NOT NULL
         FROM (SELECT 1) one
         LEFT JOIN dispatch.case_contacts c ON c.case_id = $1
         LEFT JOIN dispatch.closed_cases closed ON closed.case_id = $1",
    )
    .bind(case_id)
    .fetch_one(&mut *tx)
    .await?;
    let sealed = match row {
        (_, true) => return Ok(()),
        (Some(sealed), false) if sealed.is_empty() => return Ok(()),
        (Some(sealed), false) => sealed,
        (None, false) => {
            return Err(HandleError::Retry(
                "the case's opening has not reached dispatch yet".into(),
            ));
        }
    };
    let contact = open(pii, case_id, &sealed)?;
    if contact.mobile.trim().is_empty() {
        return Err(HandleError::Malformed(
            "the case's customer has no mobile".into(),
        ));
    }
    (*name, *mobile, *plate) = (contact.name, contact.mobile, contact.plate);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_contact_opens_only_for_its_case() {
        let pii = PiiCipher::for_service(&"11".repeat(32).into(), "dispatch").expect("key");
        let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
        let contact = Contact {
            name: "王芳".into(),
            mobile: "+8613812345678".into(),
            plate: "沪A1".into(),
        };
        let sealed = seal(&pii, a, &contact).expect("seals");
        assert!(open(&pii, b, &sealed).is_err(), "bound to its case");
        let opened = open(&pii, a, &sealed).expect("opens");
        assert_eq!(
            (opened.name, opened.mobile, opened.plate),
            ("王芳".into(), "+8613812345678".into(), "沪A1".into())
        );
    }
}
