//! Lapse rescue by vehicle: a lapsed customer insured again with us on a new policy for
//! the same VIN (not a renewal of the lapsed policy: a new number, perhaps another
//! channel) ends the lapse as rescued. The VINs of lapsed policies are indexed when they
//! lapse ([`index_lapsed`]; blind indexes under lists' key, kept by `renewal pii
//! rotate`), so a new policy finds the lapse it ends by its own VIN's index.

use chrono::{DateTime, Utc};
use renewal_contract::lists::CaseOutcome;
use renewal_platform::Outbox;
use renewal_platform::pii::{PiiCipher, Place};
use sqlx::{PgConnection, Row};

use crate::cases::{self, CaseError};
use crate::portfolio::{POLICIES, vin_indexed};

/// Writes the VIN index of these just-lapsed policies.
pub async fn index_lapsed(
    tx: &mut PgConnection,
    pii: &PiiCipher,
    policy_nos: &[String],
) -> Result<(), CaseError> {
    if policy_nos.is_empty() {
        return Ok(());
    }
    let rows = sqlx::query(
        "SELECT policy_no, vin_enc FROM lists.policies
         WHERE policy_no = ANY($1) AND length(vin_enc) > 0 AND vin_index IS NULL",
    )
    .bind(policy_nos)
    .fetch_all(&mut *tx)
    .await?;
    let (mut nos, mut indexes) = (
        Vec::with_capacity(rows.len()),
        Vec::with_capacity(rows.len()),
    );
    for row in &rows {
        let policy_no: String = row.try_get("policy_no")?;
        let sealed: Vec<u8> = row.try_get("vin_enc")?;
        let vin = pii
            .open(&sealed, Place::new(POLICIES, "vin_enc", &policy_no))
            .map_err(|source| CaseError::Pii {
                policy_no: policy_no.clone(),
                source,
            })?;
        if let Some(vin) = vin_indexed(&vin) {
            indexes.push(pii.blind_index(&vin).to_vec());
            nos.push(policy_no);
        }
    }
    sqlx::query(
        "UPDATE lists.policies p SET vin_index = u.vin_index
         FROM UNNEST($1::text[], $2::bytea[]) AS u(policy_no, vin_index)
         WHERE p.policy_no = u.policy_no",
    )
    .bind(&nos)
    .bind(&indexes)
    .execute(&mut *tx)
    .await?;
    Ok(())
}

/// A new policy `new_policy_no` for the vehicle `vin`: every lapse of another policy on
/// the same VIN ends rescued (the lapsed policy renewed into the new one). Returns how
/// many.
pub async fn by_new_policy(
    tx: &mut PgConnection,
    outbox: &Outbox,
    pii: &PiiCipher,
    new_policy_no: &str,
    vin: &str,
    now: DateTime<Utc>,
) -> Result<usize, sqlx::Error> {
    let Some(vin) = vin_indexed(vin) else {
        return Ok(0);
    };
    let index = pii.blind_index(&vin);
    let lapsed: Vec<String> = sqlx::query_scalar(
        "UPDATE lists.policies p
         SET status = 'renewed', renewed_to = $2, renewed_at = COALESCE(p.renewed_at, $3), updated_at = $3
         WHERE p.vin_index = $1 AND p.status = 'lapsed' AND p.policy_no <> $2
         RETURNING p.policy_no",
    )
    .bind(&index[..])
    .bind(new_policy_no)
    .bind(now)
    .fetch_all(&mut *tx)
    .await?;
    let mut rescued = 0;
    for policy_no in &lapsed {
        if cases::close(
            tx,
            outbox,
            policy_no,
            CaseOutcome::Renewed,
            new_policy_no,
            now,
        )
        .await?
        .is_some()
        {
            rescued += 1;
        }
    }
    metrics::counter!("lapses_rescued_by_vehicle_total").increment(rescued as u64);
    Ok(rescued)
}
