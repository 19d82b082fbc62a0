//! Changes reach open cases: a `core.policy.upserted` for a policy whose case is still
//! being worked (open, reported renewed, or lapsed and in rescue) that moves its expiry,
//! its mobile, its branch or its flags updates the case (a new expiry is worked against
//! its holiday-adjusted date and moves the bucket) and publishes `lists.case.changed`,
//! so the scheduler re-plans, dispatch and the scheduler take the new mobile, and
//! assignment routes the case to its new branch.

use chrono::{DateTime, NaiveDate, Utc};
use renewal_contract::lists::{CaseChanged, Customer};
use renewal_contract::subject;
use renewal_platform::holidays::{Calendar, Effective};
use renewal_platform::pii::{PiiCipher, Place};
use renewal_platform::{Outbox, local_date};
use sqlx::{PgConnection, Row};
use uuid::Uuid;

use crate::cases::{CaseError, bucket_of};

/// The case as stored and the policy as just written, side by side.
struct Compared {
    case_id: Uuid,
    changed: Vec<&'static str>,
    expiry: NaiveDate,
    time_zone: String,
    city_code: String,
    branch_code: String,
    important: bool,
    group_policy: bool,
}

/// Applies the policy's new version to its case if one is being worked; whether the
/// case changed. `mobile_before` is the policy's mobile index before the write.
pub async fn apply(
    tx: &mut PgConnection,
    outbox: &Outbox,
    pii: &PiiCipher,
    policy_no: &str,
    mobile_before: Option<Vec<u8>>,
    now: DateTime<Utc>,
) -> Result<bool, CaseError> {
    let Some(c) = compare(tx, policy_no, mobile_before).await? else {
        return Ok(false);
    };
    let (effective, holiday) = match Calendar::shared().effective_expiry(c.expiry) {
        Effective::Holiday { date, holiday } => (date, holiday),
        Effective::Normal(_) | Effective::UnknownYear(_) => (c.expiry, String::new()),
    };
    let tz: chrono_tz::Tz = c.time_zone.parse().unwrap_or(chrono_tz::Asia::Shanghai);
    let days = ((effective - local_date(now, tz)).num_days() as i32).max(0);
    let bucket = bucket_of(days);
    sqlx::query(
        "UPDATE lists.cases SET expiry_date = $2, effective_expiry_date = $3, holiday = NULLIF($4, ''),
             bucket = $5, branch_code = $6, important = $7, group_policy = $8
         WHERE case_id = $1",
    )
    .bind(c.case_id)
    .bind(c.expiry)
    .bind(effective)
    .bind(&holiday)
    .bind(match bucket {
        renewal_contract::lists::Bucket::Unspecified => None,
        b => Some(b as i16),
    })
    .bind(&c.branch_code)
    .bind(c.important)
    .bind(c.group_policy)
    .execute(&mut *tx)
    .await?;
    let customer = if c.changed.contains(&"mobile") {
        Some(customer(tx, pii, policy_no).await?)
    } else {
        None
    };
    let event = CaseChanged {
        case_id: c.case_id.to_string(),
        policy_no: policy_no.to_owned(),
        changed: c.changed.iter().map(|s| (*s).to_owned()).collect(),
        expiry_date: c.expiry.to_string(),
        effective_expiry_date: effective.to_string(),
        time_zone: c.time_zone,
        days_to_expiry: days,
        bucket: bucket as i32,
        holiday,
        city_code: c.city_code,
        branch_code: c.branch_code,
        important: c.important,
        group_policy: c.group_policy,
        customer,
        changed_at_ms: now.timestamp_millis(),
    };
    outbox
        .enqueue(tx, subject::LISTS_CASE_CHANGED, &event)
        .await?;
    for what in &c.changed {
        metrics::counter!("case_changes_total", "what" => *what).increment(1);
    }
    Ok(true)
}

/// What differs between the case being worked and its policy's new version (None when
/// no case is being worked or nothing it carries changed).
async fn compare(
    tx: &mut PgConnection,
    policy_no: &str,
    mobile_before: Option<Vec<u8>>,
) -> Result<Option<Compared>, sqlx::Error> {
    let Some(row) = sqlx::query(
        "SELECT c.case_id, c.expiry_date, c.branch_code AS case_branch, c.important AS case_important,
                c.group_policy AS case_group, p.end_date, p.time_zone, p.city_code, p.branch_code,
                p.important, p.group_policy, p.mobile_index
         FROM lists.cases c JOIN lists.policies p USING (policy_no)
         WHERE c.policy_no = $1 AND c.state IN ('open', 'renewal_reported', 'lapsed')
         FOR UPDATE OF c",
    )
    .bind(policy_no)
    .fetch_optional(&mut *tx)
    .await?
    else {
        return Ok(None);
    };
    let expiry: NaiveDate = row.try_get("end_date")?;
    let branch_code: String = row.try_get("branch_code")?;
    let important: bool = row.try_get("important")?;
    let group_policy: bool = row.try_get("group_policy")?;
    let mobile: Option<Vec<u8>> = row.try_get("mobile_index")?;
    let mut changed = Vec::new();
    if expiry != row.try_get::<NaiveDate, _>("expiry_date")? {
        changed.push("expiry");
    }
    if mobile_before.is_some() && mobile != mobile_before {
        changed.push("mobile");
    }
    if branch_code != row.try_get::<String, _>("case_branch")? {
        changed.push("branch");
    }
    if (important, group_policy)
        != (
            row.try_get::<bool, _>("case_important")?,
            row.try_get::<bool, _>("case_group")?,
        )
    {
        changed.push("flags");
    }
    if changed.is_empty() {
        return Ok(None);
    }
    Ok(Some(Compared {
        case_id: row.try_get("case_id")?,
        changed,
        expiry,
        time_zone: row.try_get("time_zone")?,
        city_code: row.try_get("city_code")?,
        branch_code,
        important,
        group_policy,
    }))
}

/// The policy's customer as the services downstream need it (opened for the event).
async fn customer(
    tx: &mut PgConnection,
    pii: &PiiCipher,
    policy_no: &str,
) -> Result<Customer, CaseError> {
    let row = sqlx::query(
        "SELECT name_enc, mobile_enc, plate_enc FROM lists.policies WHERE policy_no = $1",
    )
    .bind(policy_no)
    .fetch_one(&mut *tx)
    .await?;
    let open = |column: &'static str| -> Result<String, CaseError> {
        let sealed: Vec<u8> = row.try_get(column)?;
        let place = Place::new(crate::portfolio::POLICIES, column, policy_no);
        pii.open(&sealed, place).map_err(|source| CaseError::Pii {
            policy_no: policy_no.to_owned(),
            source,
        })
    };
    Ok(Customer {
        name: open("name_enc")?,
        mobile: open("mobile_enc")?,
        plate: open("plate_enc")?,
    })
}

/// The policy's mobile index as stored now (before a write), if it has a case.
pub async fn mobile_before(
    tx: &mut PgConnection,
    policy_no: &str,
) -> Result<Option<Vec<u8>>, sqlx::Error> {
    sqlx::query_scalar("SELECT mobile_index FROM lists.policies WHERE policy_no = $1 AND has_case")
        .bind(policy_no)
        .fetch_optional(&mut *tx)
        .await
        .map(Option::flatten)
}
