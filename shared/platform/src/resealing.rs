//! Key rotation: re-sealing every value sealed under an older key with the newest one,
//! in batches, while the services run (`renewal pii rotate`).
//!
//! Each service lists where it keeps sealed values ([`SealedColumn`]). A batch locks the
//! rows it takes (`FOR UPDATE SKIP LOCKED`, so a service writing the same rows is never
//! waited on for long), opens each value under the key it names, seals it again under
//! the newest, recomputes its blind index, and commits. The work left is the rows whose
//! first byte (the key version) is not the newest, so an interrupted rotation resumes
//! where it stopped by being run again. Rows a service holds locked are waited for
//! (up to a minute) before a column counts as done, so a finished rotation leaves
//! nothing under an older key. A value no listed key opens stops the rotation with its
//! place: the old key is missing from the keyring.

use sqlx::{PgPool, Row};

use crate::pii::{PiiCipher, PiiError, Place};

/// A column of sealed values.
#[derive(Debug, Clone, Copy)]
pub struct SealedColumn {
    /// `schema.table`, as in the values' [`Place`].
    pub table: &'static str,
    pub column: &'static str,
    /// SQL giving the row key of the values' [`Place`] as text.
    pub row_key: &'static str,
    /// A blind index kept beside the value, recomputed with it.
    pub index: Option<IndexColumn>,
}

/// A blind-index column and how to find the indexed value in the plaintext.
#[derive(Debug, Clone, Copy)]
pub struct IndexColumn {
    pub column: &'static str,
    /// The canonical value to index, from the opened plaintext.
    pub of: fn(&str) -> Option<String>,
}

/// The plaintext itself is what is indexed.
pub fn itself(plain: &str) -> Option<String> {
    Some(plain.to_owned())
}

#[derive(Debug, thiserror::Error)]
pub enum ResealError {
    #[error("database: {0}")]
    Db(#[from] sqlx::Error),
    #[error("{table}.{column} of row {row} does not open: {source} (is its key in the keyring?)")]
    Unreadable {
        table: &'static str,
        column: &'static str,
        row: String,
        source: PiiError,
    },
    #[error("sealing failed: {0}")]
    Seal(PiiError),
    #[error(
        "{rows} rows of {table}.{column} stayed locked by a service for {LOCKED_PATIENCE:?}; run the rotation again"
    )]
    StillLocked {
        table: &'static str,
        column: &'static str,
        rows: u64,
    },
}

/// How long a rotation waits for rows a service holds locked, and between looks.
const LOCKED_PATIENCE: std::time::Duration = std::time::Duration::from_secs(60);
const LOCKED_PAUSE: std::time::Duration = std::time::Duration::from_millis(200);

/// How far one column has come.
#[derive(Debug, Clone, Copy)]
pub struct Progress {
    pub table: &'static str,
    pub column: &'static str,
    pub resealed: u64,
    /// Rows under an older key when the column was started.
    pub stale_at_start: u64,
}

/// Rows under an older key than the newest, per column.
pub async fn stale(
    pool: &PgPool,
    pii: &PiiCipher,
    columns: &[SealedColumn],
) -> Result<Vec<(SealedColumn, u64)>, sqlx::Error> {
    let mut out = Vec::with_capacity(columns.len());
    for c in columns {
        out.push((*c, stale_rows(pool, pii, c).await?));
    }
    Ok(out)
}

/// Rows of one column under an older key than the newest, locked or not.
async fn stale_rows(pool: &PgPool, pii: &PiiCipher, c: &SealedColumn) -> Result<u64, sqlx::Error> {
    let n: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "SELECT count(*) FROM {t} WHERE length({c}) > 0 AND get_byte({c}, 0) <> $1",
        t = c.table,
        c = c.column
    )))
    .bind(i32::from(pii.newest_version()))
    .fetch_one(pool)
    .await?;
    Ok(n as u64)
}

/// Re-seals every column under the newest key, `batch` rows per transaction, calling
/// `progress` after each batch.
pub async fn rotate(
    pool: &PgPool,
    pii: &PiiCipher,
    columns: &[SealedColumn],
    batch: i64,
    mut progress: impl FnMut(Progress),
) -> Result<u64, ResealError> {
    let mut total = 0;
    for (column, stale_at_start) in stale(pool, pii, columns).await? {
        let mut done = Progress {
            table: column.table,
            column: column.column,
            resealed: 0,
            stale_at_start,
        };
        let mut waited = std::time::Duration::ZERO;
        loop {
            let n = reseal_batch(pool, pii, &column, batch).await?;
            if n > 0 {
                done.resealed += n;
                total += n;
                progress(done);
                continue;
            }
            // Nothing unlocked was left: done, unless a service held some rows locked.
            let left = stale_rows(pool, pii, &column).await?;
            if left == 0 {
                break;
            }
            if waited >= LOCKED_PATIENCE {
                return Err(ResealError::StillLocked {
                    table: column.table,
                    column: column.column,
                    rows: left,
                });
            }
            tokio::time::sleep(LOCKED_PAUSE).await;
            waited += LOCKED_PAUSE;
        }
    }
    Ok(total)
}

/// One batch of one column; how many rows it re-sealed.
async fn reseal_batch(
    pool: &PgPool,
    pii: &PiiCipher,
    c: &SealedColumn,
    batch: i64,
) -> Result<u64, ResealError> {
    let mut tx = pool.begin().await?;
    let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT ctid::text AS tid, ({key})::text AS row_key, {col} AS sealed FROM {t}
         WHERE length({col}) > 0 AND get_byte({col}, 0) <> $1
         LIMIT $2 FOR UPDATE SKIP LOCKED",
        key = c.row_key,
        col = c.column,
        t = c.table
    )))
    .bind(i32::from(pii.newest_version()))
    .bind(batch)
    .fetch_all(&mut *tx)
    .await?;
    let (mut tids, mut sealed, mut indexes) = (Vec::new(), Vec::new(), Vec::new());
    for row in &rows {
        let row_key: String = row.try_get("row_key")?;
        let old: Vec<u8> = row.try_get("sealed")?;
        let place = Place::new(c.table, c.column, &row_key);
        // Bytes, not text: a dead letter is a message kept whole.
        let plain = pii
            .open_bytes(&old, place)
            .map_err(|source| ResealError::Unreadable {
                table: c.table,
                column: c.column,
                row: row_key.clone(),
                source,
            })?;
        sealed.push(pii.seal_bytes(&plain, place).map_err(ResealError::Seal)?);
        let index = c
            .index
            .zip(std::str::from_utf8(&plain).ok())
            .and_then(|(i, plain)| (i.of)(plain))
            .map(|v| pii.blind_index(&v).to_vec());
        indexes.push(index);
        tids.push(row.try_get::<String, _>("tid")?);
    }
    if tids.is_empty() {
        tx.commit().await?;
        return Ok(0);
    }
    let set_index = match c.index {
        Some(i) => format!(", {} = COALESCE(u.idx, t.{})", i.column, i.column),
        None => String::new(),
    };
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "UPDATE {t} t SET {col} = u.sealed{set_index}
         FROM unnest($1::text[], $2::bytea[], $3::bytea[]) AS u(tid, sealed, idx)
         WHERE t.ctid = u.tid::tid",
        t = c.table,
        col = c.column
    )))
    .bind(&tids)
    .bind(&sealed)
    .bind(&indexes)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(tids.len() as u64)
}
