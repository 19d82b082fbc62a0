//! The portfolio table: checked policies sealed (personal data encrypted, the mobile
//! blind-indexed) and written idempotently by policy number and version. One policy
//! from a NATS message and a million from a CSV file go through the same statement.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use renewal_platform::pii::{PiiCipher, PiiError, Place};
use renewal_platform::resealing::{IndexColumn, SealedColumn, itself};
use sqlx::{PgConnection, PgPool};

use crate::policy_checks::CheckedPolicy;

/// Each city's time zone: the cities table, else the service's default.
#[derive(Debug, Clone)]
pub struct Zones {
    default: chrono_tz::Tz,
    cities: HashMap<String, chrono_tz::Tz>,
}

impl Zones {
    pub async fn load(pool: &PgPool, default: chrono_tz::Tz) -> Result<Self, sqlx::Error> {
        let rows: Vec<(String, String)> =
            sqlx::query_as("SELECT city_code, time_zone FROM lists.cities")
                .fetch_all(pool)
                .await?;
        let mut cities = HashMap::new();
        for (city, zone) in rows {
            match zone.parse::<chrono_tz::Tz>() {
                Ok(tz) => {
                    cities.insert(city, tz);
                }
                Err(_) => {
                    tracing::error!(%city, %zone, "city has an unknown time zone; using the default")
                }
            }
        }
        Ok(Zones { default, cities })
    }

    pub fn of(&self, city_code: &str) -> chrono_tz::Tz {
        self.cities.get(city_code).copied().unwrap_or(self.default)
    }

    /// Every zone a policy can be in.
    pub fn all(&self) -> Vec<chrono_tz::Tz> {
        let mut zones: Vec<chrono_tz::Tz> = self.cities.values().copied().collect();
        zones.push(self.default);
        zones.sort_by_key(|z| z.name());
        zones.dedup();
        zones
    }
}

/// The table of policies: every sealed value's place names it.
pub const POLICIES: &str = "lists.policies";

/// Where lists keeps sealed values, for `renewal pii rotate`.
pub const SEALED: &[SealedColumn] = &[
    sealed("name_enc", None),
    sealed(
        "mobile_enc",
        Some(IndexColumn {
            column: "mobile_index",
            of: itself,
        }),
    ),
    sealed(
        "id_number_enc",
        Some(IndexColumn {
            column: "id_number_index",
            of: id_number_indexed,
        }),
    ),
    sealed("plate_enc", None),
    sealed(
        "vin_enc",
        Some(IndexColumn {
            column: "vin_index",
            of: vin_indexed,
        }),
    ),
    LETTERS,
];

/// Lists' dead letters (a policy from the core system names its customer): sealed.
pub const LETTERS: SealedColumn =
    renewal_platform::dead_letters::sealed_column("lists.dead_letters");

/// A VIN is indexed as checked (trimmed, upper case); none is not indexed.
pub fn vin_indexed(plain: &str) -> Option<String> {
    let vin = plain.trim().to_ascii_uppercase();
    (!vin.is_empty()).then_some(vin)
}

/// An ID number is indexed as checked (trimmed, upper case); none is not indexed.
fn id_number_indexed(plain: &str) -> Option<String> {
    (!plain.is_empty()).then(|| plain.to_owned())
}

const fn sealed(column: &'static str, index: Option<IndexColumn>) -> SealedColumn {
    SealedColumn {
        table: POLICIES,
        column,
        row_key: "policy_no",
        index,
    }
}

/// A policy ready for the table.
pub struct SealedPolicy {
    pub p: CheckedPolicy,
    pub version: i64,
    pub name_enc: Vec<u8>,
    pub mobile_enc: Vec<u8>,
    pub id_number_enc: Vec<u8>,
    pub plate_enc: Vec<u8>,
    pub vin_enc: Vec<u8>,
    pub mobile_index: [u8; 16],
    /// Empty when the policy has no ID number.
    pub id_number_index: Vec<u8>,
    /// The VIN's blind index (a vehicle's policies share it); none without a VIN.
    pub vin_index: Option<Vec<u8>>,
    pub digest: [u8; 16],
    pub time_zone: chrono_tz::Tz,
}

pub fn seal(
    p: CheckedPolicy,
    version: i64,
    pii: &PiiCipher,
    zones: &Zones,
) -> Result<SealedPolicy, PiiError> {
    let start = p.start_date.to_string();
    let end = p.end_date.to_string();
    let premium = p.premium_fen.to_string();
    // The flag counts only when set, so policies written before it keep their digest.
    let real_data: &[&str] = if p.real_data_at_sale {
        &["real_data_at_sale"]
    } else {
        &[]
    };
    let fields: [&str; 15] = [
        &p.customer_name,
        &p.mobile,
        &p.id_number,
        &p.plate,
        &p.vin,
        &p.city_code,
        &p.branch_code,
        &p.agent_code,
        &p.channel,
        &p.category,
        &start,
        &end,
        &premium,
        if p.important { "1" } else { "0" },
        if p.group_policy { "1" } else { "0" },
    ];
    let digest = pii.digest(&[fields.as_slice(), real_data].concat());
    let at = |column| Place::new(POLICIES, column, &p.policy_no);
    Ok(SealedPolicy {
        name_enc: pii.seal(&p.customer_name, at("name_enc"))?,
        mobile_enc: pii.seal(&p.mobile, at("mobile_enc"))?,
        id_number_enc: pii.seal(&p.id_number, at("id_number_enc"))?,
        plate_enc: pii.seal(&p.plate, at("plate_enc"))?,
        vin_enc: pii.seal(&p.vin, at("vin_enc"))?,
        mobile_index: pii.blind_index(&p.mobile),
        id_number_index: id_number_indexed(&p.id_number)
            .map(|id| pii.blind_index(&id).to_vec())
            .unwrap_or_default(),
        vin_index: vin_indexed(&p.vin).map(|vin| pii.blind_index(&vin).to_vec()),
        digest,
        time_zone: zones.of(&p.city_code),
        version,
        p,
    })
}

/// The columns written, in the order of [`write_binary_row`] and of the staging table.
pub const COPY_COLUMNS: &str = "policy_no, version, name_enc, mobile_enc, id_number_enc, \
     mobile_index, content_digest, plate_enc, vin_enc, city_code, branch_code, agent_code, channel, \
     category, start_date, end_date, premium_fen, important, group_policy, time_zone, source, \
     updated_at, id_number_index, vin_index, real_data_at_sale";

/// The staging table a CSV import copies into, per transaction.
pub const CREATE_STAGING: &str = "CREATE TEMP TABLE IF NOT EXISTS policy_staging (
        policy_no text, version bigint, name_enc bytea, mobile_enc bytea, id_number_enc bytea,
        mobile_index bytea, content_digest bytea, plate_enc bytea, vin_enc bytea, city_code text,
        branch_code text, agent_code text, channel text, category text, start_date date,
        end_date date, premium_fen bigint, important boolean, group_policy boolean,
        time_zone text, source text, updated_at timestamptz, id_number_index bytea, vin_index bytea,
        real_data_at_sale boolean
    ) ON COMMIT DROP";

/// Inserts new policies and overwrites a stored one only with a newer version (or the
/// same version with different content: a correction, unless the policy was erased: a
/// /// message repeated after an erasure must not bring its data back). Returns (inserted,
/// updated).
fn merge_sql(from: &str) -> String {
    format!(
        "WITH merged AS (
            INSERT INTO lists.policies AS p ({COPY_COLUMNS})
            SELECT {COPY_COLUMNS} FROM {from}
            ON CONFLICT (policy_no) DO UPDATE SET
                version = EXCLUDED.version, name_enc = EXCLUDED.name_enc,
                mobile_enc = EXCLUDED.mobile_enc, id_number_enc = EXCLUDED.id_number_enc,
                mobile_index = EXCLUDED.mobile_index, content_digest = EXCLUDED.content_digest,
                plate_enc = EXCLUDED.plate_enc, vin_enc = EXCLUDED.vin_enc, city_code = EXCLUDED.city_code,
                branch_code = EXCLUDED.branch_code, agent_code = EXCLUDED.agent_code,
                channel = EXCLUDED.channel, category = EXCLUDED.category,
                start_date = EXCLUDED.start_date, end_date = EXCLUDED.end_date,
                premium_fen = EXCLUDED.premium_fen, important = EXCLUDED.important,
                group_policy = EXCLUDED.group_policy, time_zone = EXCLUDED.time_zone,
                source = EXCLUDED.source, updated_at = EXCLUDED.updated_at,
                id_number_index = EXCLUDED.id_number_index, vin_index = EXCLUDED.vin_index,
                real_data_at_sale = EXCLUDED.real_data_at_sale, erased_at = NULL
            WHERE p.version < EXCLUDED.version
               OR (p.version = EXCLUDED.version AND p.content_digest <> EXCLUDED.content_digest
                   AND p.erased_at IS NULL)
            RETURNING (xmax = 0) AS inserted
        )
        SELECT count(*) FILTER (WHERE inserted), count(*) FILTER (WHERE NOT inserted) FROM merged"
    )
}

/// What a write did to one policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Written {
    Inserted,
    Updated,
    /// The same version and content again.
    Unchanged,
    /// Older than the version stored.
    Stale,
}

/// Writes one policy (from the core system's messages).
pub async fn upsert_one(
    tx: &mut PgConnection,
    s: &SealedPolicy,
    now: DateTime<Utc>,
) -> Result<Written, sqlx::Error> {
    let values = "(SELECT $2::text AS policy_no, $3::bigint AS version, $4::bytea AS name_enc,
        $5::bytea AS mobile_enc, $6::bytea AS id_number_enc, $7::bytea AS mobile_index,
        $8::bytea AS content_digest, $9::bytea AS plate_enc, $10::bytea AS vin_enc, $11::text AS city_code,
        $12::text AS branch_code, $13::text AS agent_code, $14::text AS channel,
        $15::text AS category, $16::date AS start_date, $17::date AS end_date,
        $18::bigint AS premium_fen, $19::boolean AS important, $20::boolean AS group_policy,
        $21::text AS time_zone, 'nats'::text AS source, $1::timestamptz AS updated_at,
        $22::bytea AS id_number_index, $23::bytea AS vin_index,
        $24::boolean AS real_data_at_sale) v";
    let (inserted, updated): (i64, i64) = sqlx::query_as(sqlx::AssertSqlSafe(merge_sql(values)))
        .bind(now)
        .bind(&s.p.policy_no)
        .bind(s.version)
        .bind(&s.name_enc)
        .bind(&s.mobile_enc)
        .bind(&s.id_number_enc)
        .bind(&s.mobile_index[..])
        .bind(&s.digest[..])
        .bind(&s.plate_enc)
        .bind(&s.vin_enc)
        .bind(&s.p.city_code)
        .bind(&s.p.branch_code)
        .bind(&s.p.agent_code)
        .bind(&s.p.channel)
        .bind(&s.p.category)
        .bind(s.p.start_date)
        .bind(s.p.end_date)
        .bind(s.p.premium_fen)
        .bind(s.p.important)
        .bind(s.p.group_policy)
        .bind(s.time_zone.name())
        .bind(&s.id_number_index)
        .bind(s.vin_index.as_deref())
        .bind(s.p.real_data_at_sale)
        .fetch_one(&mut *tx)
        .await?;
    if inserted == 1 {
        return Ok(Written::Inserted);
    }
    if updated == 1 {
        return Ok(Written::Updated);
    }
    let stored: i64 = sqlx::query_scalar("SELECT version FROM lists.policies WHERE policy_no = $1")
        .bind(&s.p.policy_no)
        .fetch_one(&mut *tx)
        .await?;
    Ok(if stored > s.version {
        Written::Stale
    } else {
        Written::Unchanged
    })
}

/// Counts of a bulk merge.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Merged {
    pub inserted: i64,
    pub updated: i64,
    pub unchanged: i64,
    pub stale: i64,
}

/// Merges what was copied into the staging table, then empties it.
pub async fn merge_staged(tx: &mut PgConnection, staged: i64) -> Result<Merged, sqlx::Error> {
    let (inserted, updated): (i64, i64) =
        sqlx::query_as(sqlx::AssertSqlSafe(merge_sql("pg_temp.policy_staging")))
            .fetch_one(&mut *tx)
            .await?;
    let skipped = staged - inserted - updated;
    let stale: i64 = if skipped > 0 {
        sqlx::query_scalar(
            "SELECT count(*) FROM pg_temp.policy_staging s JOIN lists.policies p USING (policy_no)
             WHERE p.version > s.version",
        )
        .fetch_one(&mut *tx)
        .await?
    } else {
        0
    };
    sqlx::query("TRUNCATE pg_temp.policy_staging")
        .execute(&mut *tx)
        .await?;
    Ok(Merged {
        inserted,
        updated,
        unchanged: skipped - stale,
        stale,
    })
}

/// The start of a binary `COPY ... FROM STDIN (FORMAT binary)` stream: signature, flags
/// and header extension length.
pub const COPY_BINARY_HEADER: &[u8] = b"PGCOPY\n\xff\r\n\0\0\0\0\0\0\0\0\0";
/// The end of a binary `COPY` stream.
pub const COPY_BINARY_TRAILER: &[u8] = &[0xff, 0xff];

/// Days from the Postgres epoch (2000-01-01) to the Unix epoch, and the same in µs.
const PG_EPOCH_DAYS_FROM_CE: i32 = 730_120;
const PG_EPOCH_UNIX_MICROS: i64 = 946_684_800_000_000;

/// One row of a binary `COPY` into `lists.policies` or the staging table, in the order
/// of [`COPY_COLUMNS`]. Binary rows spare the single backend doing the load the text
/// parsing of every field (dates, numbers, hex-encoded bytes).
pub fn write_binary_row(out: &mut Vec<u8>, s: &SealedPolicy, updated_at: DateTime<Utc>) {
    fn field(out: &mut Vec<u8>, value: &[u8]) {
        // Every field is far below 2 GiB: a policy number, a code or a sealed value.
        out.extend_from_slice(&(value.len() as i32).to_be_bytes());
        out.extend_from_slice(value);
    }
    fn date(out: &mut Vec<u8>, d: chrono::NaiveDate) {
        use chrono::Datelike;
        field(
            out,
            &(d.num_days_from_ce() - PG_EPOCH_DAYS_FROM_CE).to_be_bytes(),
        );
    }
    let p = &s.p;
    out.extend_from_slice(&25i16.to_be_bytes());
    field(out, p.policy_no.as_bytes());
    field(out, &s.version.to_be_bytes());
    field(out, &s.name_enc);
    field(out, &s.mobile_enc);
    field(out, &s.id_number_enc);
    field(out, &s.mobile_index);
    field(out, &s.digest);
    field(out, &s.plate_enc);
    field(out, &s.vin_enc);
    field(out, p.city_code.as_bytes());
    field(out, p.branch_code.as_bytes());
    field(out, p.agent_code.as_bytes());
    field(out, p.channel.as_bytes());
    field(out, p.category.as_bytes());
    date(out, p.start_date);
    date(out, p.end_date);
    field(out, &p.premium_fen.to_be_bytes());
    field(out, &[u8::from(p.important)]);
    field(out, &[u8::from(p.group_policy)]);
    field(out, s.time_zone.name().as_bytes());
    field(out, b"csv");
    field(
        out,
        &(updated_at.timestamp_micros() - PG_EPOCH_UNIX_MICROS).to_be_bytes(),
    );
    field(out, &s.id_number_index);
    match &s.vin_index {
        Some(index) => field(out, index),
        // NULL: a length of -1 and no bytes.
        None => out.extend_from_slice(&(-1i32).to_be_bytes()),
    }
    field(out, &[u8::from(p.real_data_at_sale)]);
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{Datelike, NaiveDate, TimeZone};

    #[test]
    fn binary_dates_and_times_count_from_the_postgres_epoch() {
        let epoch = NaiveDate::from_ymd_opt(2000, 1, 1).expect("a date");
        assert_eq!(epoch.num_days_from_ce(), PG_EPOCH_DAYS_FROM_CE);
        let at = Utc
            .with_ymd_and_hms(2000, 1, 1, 0, 0, 0)
            .single()
            .expect("an instant");
        assert_eq!(at.timestamp_micros(), PG_EPOCH_UNIX_MICROS);
    }
}
