//! CSV import of policies from the core system: `renewal import policies FILE` and
//! `POST /v1/policies:import`. The file is streamed (UTF-8 or GBK, with or without a
//! byte order mark), checked row by row on worker threads, sealed, and copied (binary
//! `COPY`) straight into the portfolio while every row is a new policy, else into a
//! staging table merged by policy number and version, all in one transaction:
//! good rows load, every bad row is reported with its line, column and reason, and
//! nothing is half-written. A repeat of the same file changes nothing.

use std::collections::HashMap;
use std::io::Read;
use std::sync::{Arc, Mutex, mpsc};

use chrono::{DateTime, Utc};
use renewal_platform::pii::PiiCipher;
use serde::Serialize;
use sqlx::PgPool;
use uuid::Uuid;

use crate::policy_checks::{self, Flag, PolicyFields, Premium};
use crate::portfolio::{self, Merged, Zones};

/// The columns a file must have, in any order (`version` is optional, default 1).
pub const COLUMNS: [&str; 16] = [
    "policy_no",
    "customer_name",
    "mobile",
    "id_number",
    "plate",
    "vin",
    "city_code",
    "branch_code",
    "agent_code",
    "channel",
    "category",
    "start_date",
    "end_date",
    "premium",
    "important",
    "group_policy",
];

/// How many rows a worker checks at a time.
const BATCH: usize = 8192;
/// How many staged rows are merged at a time.
const MERGE_EVERY: i64 = 100_000;
/// How many rows are copied straight into the portfolio under one savepoint (bounds
/// the work redone when a chunk meets a stored policy, and the subtransactions).
const STRAIGHT_CHUNK: i64 = 100_000;
/// Rows one file may hold (a whole portfolio export is a few million).
pub const MAX_ROWS: u64 = 10_000_000;
/// Bytes one row may take (a policy row is a few hundred).
pub const MAX_ROW_BYTES: usize = 16 * 1024;

/// Rejections returned inline; all of them are kept in `lists.import_rejections`.
pub const INLINE_REJECTIONS: usize = 1000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    /// UTF-8 unless the start of the file is not valid UTF-8, then GBK.
    Detect,
    Utf8,
    Gbk,
}

impl std::str::FromStr for Encoding {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "" | "auto" | "detect" => Ok(Encoding::Detect),
            "utf-8" | "utf8" => Ok(Encoding::Utf8),
            "gbk" | "gb2312" | "gb18030" | "cp936" => Ok(Encoding::Gbk),
            other => Err(format!("unknown encoding {other:?}; use utf-8 or gbk")),
        }
    }
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct RowRejection {
    /// The line of the file (the header is line 1).
    pub row: u64,
    pub column: String,
    pub reason: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct ImportReport {
    pub import_id: Uuid,
    pub file_name: String,
    pub encoding: &'static str,
    pub rows: u64,
    #[serde(flatten)]
    pub merged: Merged,
    /// Rows refused (a row with several bad fields counts once).
    pub rejected: u64,
    /// The first [`INLINE_REJECTIONS`] rejections; all are stored.
    pub rejections: Vec<RowRejection>,
    pub rejections_truncated: bool,
    pub cases_opened: usize,
    /// From the first byte to the committed portfolio.
    pub load_seconds: f64,
    /// Of which Postgres spent copying rows in (new policies straight into the
    /// portfolio, indexes included) and merging staged ones.
    pub copy_seconds: f64,
    pub merge_seconds: f64,
    /// Including opening the cases the import made due.
    pub seconds: f64,
}

#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error("the file cannot be read: {0}")]
    Read(String),
    #[error("the header is wrong: {0}")]
    Header(String),
    #[error("the file is empty")]
    Empty,
    #[error("postgres: {0}")]
    Db(#[from] sqlx::Error),
    #[error(transparent)]
    Cases(#[from] crate::cases::CaseError),
    #[error("sealing personal data failed: {0}")]
    Pii(#[from] renewal_platform::pii::PiiError),
}

/// What the import needs from the service.
#[derive(Clone)]
pub struct Importer {
    pub pool: PgPool,
    pub pii: Arc<PiiCipher>,
    pub zones: Zones,
    pub outbox: renewal_platform::Outbox,
    /// See [`crate::cases::OpenScope::vehicle_window`].
    pub vehicle_window: i32,
}

/// What the worker threads hand to the database side.
enum Piece {
    Copy {
        rows: i64,
        data: Vec<u8>,
        rejections: Vec<RowRejection>,
        rejected: u64,
    },
    Header(Result<&'static str, ImportError>),
    Failed(ImportError),
    Done {
        rows: u64,
    },
}

impl Importer {
    /// Imports one file. `source` is read on a thread of its own (it may block).
    pub async fn import<R: Read + Send + 'static>(
        &self,
        source: R,
        file_name: &str,
        encoding: Encoding,
        now: DateTime<Utc>,
    ) -> Result<ImportReport, ImportError> {
        let began = std::time::Instant::now();
        let (tx_pieces, mut pieces) = tokio::sync::mpsc::channel::<Piece>(8);
        let pii = self.pii.clone();
        let zones = self.zones.clone();
        std::thread::Builder::new()
            .name("csv-import".into())
            .spawn(move || read_file(source, encoding, pii, zones, now, tx_pieces))
            .map_err(|e| ImportError::Read(e.to_string()))?;

        let encoding_used = match pieces.recv().await {
            Some(Piece::Header(result)) => result?,
            Some(Piece::Failed(e)) => return Err(e),
            _ => return Err(ImportError::Empty),
        };
        let import_id = Uuid::now_v7();
        let mut tx = self.pool.begin().await?;
        sqlx::query(portfolio::CREATE_STAGING)
            .execute(&mut *tx)
            .await?;
        let mut tally = Tally::default();
        // New policies are copied straight into the portfolio, a chunk at a time under a
        // savepoint; once a chunk meets a stored policy, it and the rest of the file go
        // through the staging table and the merge by version.
        let mut straight = true;
        let mut more = true;
        while more {
            if straight {
                let chunk;
                (chunk, more) = copy_straight(&mut tx, &mut pieces, &mut tally).await?;
                if let Straight::MeetsStored(kept) = chunk {
                    straight = false;
                    for (rows, data) in kept {
                        tally.stage(&mut tx, rows, &data).await?;
                    }
                }
            } else {
                match next_rows(&mut pieces, &mut tally).await? {
                    Some((rows, data)) => tally.stage(&mut tx, rows, &data).await?,
                    None => more = false,
                }
            }
            if tally.staged >= MERGE_EVERY || (!more && tally.staged > 0) {
                tally.merge(&mut tx).await?;
            }
        }
        let Tally {
            rows,
            rejected,
            mut rejections,
            merged,
            copy_seconds,
            merge_seconds,
            ..
        } = tally;
        if rows == 0 {
            return Err(ImportError::Empty);
        }
        rejections.sort_by(|a, b| (a.row, &a.column).cmp(&(b.row, &b.column)));
        sqlx::query(
            "INSERT INTO lists.imports (import_id, file_name, started_at, finished_at, encoding,
                 rows_read, inserted, updated, unchanged, stale, rejected)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
        )
        .bind(import_id)
        .bind(file_name)
        .bind(now)
        .bind(Utc::now())
        .bind(encoding_used)
        .bind(rows as i64)
        .bind(merged.inserted)
        .bind(merged.updated)
        .bind(merged.unchanged)
        .bind(merged.stale)
        .bind(rejected as i64)
        .execute(&mut *tx)
        .await?;
        for chunk in rejections.chunks(10_000) {
            let rows: Vec<i64> = chunk.iter().map(|r| r.row as i64).collect();
            let columns: Vec<&str> = chunk.iter().map(|r| r.column.as_str()).collect();
            let reasons: Vec<&str> = chunk.iter().map(|r| r.reason.as_str()).collect();
            sqlx::query(
                "INSERT INTO lists.import_rejections (import_id, row_no, column_name, reason)
                 SELECT $1, * FROM unnest($2::bigint[], $3::text[], $4::text[])",
            )
            .bind(import_id)
            .bind(&rows)
            .bind(&columns)
            .bind(&reasons)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        let load_seconds = began.elapsed().as_secs_f64();
        renewal_platform::activity::record();
        metrics::counter!("policies_imported_total")
            .increment((merged.inserted + merged.updated) as u64);
        metrics::counter!("policy_rows_rejected_total").increment(rejected);

        // A bulk load leaves the planner's statistics behind; refresh them before the
        // portfolio is queried.
        if merged.inserted + merged.updated > 10_000 {
            sqlx::query("ANALYZE lists.policies")
                .execute(&self.pool)
                .await?;
        }
        // The portfolio is in; open the cases it made due (the service does it too if
        // this process stops first).
        let mut tx = self.pool.begin().await?;
        let scope = crate::cases::OpenScope {
            only_policy: None,
            only_zone: None,
            vehicle_window: self.vehicle_window,
        };
        let cases_opened =
            crate::cases::open_due(&mut tx, &self.outbox, &self.pii, &self.zones, now, scope)
                .await?;
        sqlx::query("UPDATE lists.imports SET cases_opened_at = $2 WHERE import_id = $1")
            .bind(import_id)
            .bind(now)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        self.outbox.wake();

        let truncated = rejections.len() > INLINE_REJECTIONS;
        rejections.truncate(INLINE_REJECTIONS);
        tracing::info!(%import_id, rows, inserted = merged.inserted, updated = merged.updated,
            rejected, cases_opened, "policy import done");
        Ok(ImportReport {
            import_id,
            file_name: file_name.to_owned(),
            encoding: encoding_used,
            rows,
            merged,
            rejected,
            rejections,
            rejections_truncated: truncated,
            cases_opened,
            load_seconds,
            copy_seconds,
            merge_seconds,
            seconds: began.elapsed().as_secs_f64(),
        })
    }
}

/// What the database side has taken in so far.
#[derive(Default)]
struct Tally {
    rows: u64,
    rejected: u64,
    rejections: Vec<RowRejection>,
    /// Rows in the staging table, not merged yet.
    staged: i64,
    merged: Merged,
    copy_seconds: f64,
    merge_seconds: f64,
}

impl Tally {
    /// Copies checked rows into the staging table.
    async fn stage(
        &mut self,
        tx: &mut sqlx::PgConnection,
        rows: i64,
        data: &[u8],
    ) -> Result<(), sqlx::Error> {
        let began = std::time::Instant::now();
        let mut copy = tx
            .copy_in_raw("COPY pg_temp.policy_staging FROM STDIN (FORMAT binary)")
            .await?;
        copy.send(portfolio::COPY_BINARY_HEADER).await?;
        copy.send(data).await?;
        copy.send(portfolio::COPY_BINARY_TRAILER).await?;
        copy.finish().await?;
        self.staged += rows;
        self.copy_seconds += began.elapsed().as_secs_f64();
        Ok(())
    }

    /// Merges the staged rows into the portfolio.
    async fn merge(&mut self, tx: &mut sqlx::PgConnection) -> Result<(), sqlx::Error> {
        let began = std::time::Instant::now();
        let m = portfolio::merge_staged(tx, self.staged).await?;
        self.merged.inserted += m.inserted;
        self.merged.updated += m.updated;
        self.merged.unchanged += m.unchanged;
        self.merged.stale += m.stale;
        self.staged = 0;
        self.merge_seconds += began.elapsed().as_secs_f64();
        Ok(())
    }
}

/// The next checked rows from the workers (binary `COPY` rows), keeping the rejections
/// and the row count on the way; `None` once the file is done.
async fn next_rows(
    pieces: &mut tokio::sync::mpsc::Receiver<Piece>,
    tally: &mut Tally,
) -> Result<Option<(i64, Vec<u8>)>, ImportError> {
    while let Some(piece) = pieces.recv().await {
        match piece {
            Piece::Copy {
                rows,
                data,
                rejections,
                rejected,
            } => {
                tally.rejected += rejected;
                tally.rejections.extend(rejections);
                if rows > 0 {
                    return Ok(Some((rows, data)));
                }
            }
            Piece::Failed(e) => return Err(e),
            Piece::Header(_) => {}
            Piece::Done { rows } => tally.rows = rows,
        }
    }
    Ok(None)
}

/// How a chunk copied straight into the portfolio went.
enum Straight {
    Loaded,
    /// A row of the chunk is a policy already stored: the chunk was rolled back and its
    /// rows are handed back, to be merged by version.
    MeetsStored(Vec<(i64, Vec<u8>)>),
}

/// Copies up to [`STRAIGHT_CHUNK`] rows straight into `lists.policies` under a
/// savepoint. Returns how it went and whether the file has more rows.
async fn copy_straight(
    tx: &mut sqlx::PgConnection,
    pieces: &mut tokio::sync::mpsc::Receiver<Piece>,
    tally: &mut Tally,
) -> Result<(Straight, bool), ImportError> {
    sqlx::query("SAVEPOINT straight_copy")
        .execute(&mut *tx)
        .await?;
    let began = std::time::Instant::now();
    let mut kept = Vec::new();
    let (mut rows, mut more) = (0i64, true);
    let mut copy = tx
        .copy_in_raw(&format!(
            "COPY lists.policies ({}) FROM STDIN (FORMAT binary)",
            portfolio::COPY_COLUMNS
        ))
        .await?;
    copy.send(portfolio::COPY_BINARY_HEADER).await?;
    while rows < STRAIGHT_CHUNK {
        match next_rows(pieces, tally).await {
            Ok(Some((n, data))) => {
                copy.send(&data[..]).await?;
                rows += n;
                kept.push((n, data));
            }
            Ok(None) => {
                more = false;
                break;
            }
            Err(e) => {
                // The transaction is dropped (rolled back) with the error.
                let _ = copy.abort("the import failed").await;
                return Err(e);
            }
        }
    }
    copy.send(portfolio::COPY_BINARY_TRAILER).await?;
    let copied = copy.finish().await;
    tally.copy_seconds += began.elapsed().as_secs_f64();
    match copied {
        Ok(_) => {
            sqlx::query("RELEASE SAVEPOINT straight_copy")
                .execute(&mut *tx)
                .await?;
            tally.merged.inserted += rows;
            Ok((Straight::Loaded, more))
        }
        Err(sqlx::Error::Database(e)) if e.constraint() == Some("policies_pkey") => {
            sqlx::query("ROLLBACK TO SAVEPOINT straight_copy")
                .execute(&mut *tx)
                .await?;
            sqlx::query("RELEASE SAVEPOINT straight_copy")
                .execute(&mut *tx)
                .await?;
            Ok((Straight::MeetsStored(kept), more))
        }
        Err(e) => Err(e.into()),
    }
}

/// The reading thread: decodes, splits into records, finds duplicates, and hands
/// batches to two checking workers whose output goes to the database side.
fn read_file<R: Read>(
    source: R,
    encoding: Encoding,
    pii: Arc<PiiCipher>,
    zones: Zones,
    now: DateTime<Utc>,
    out: tokio::sync::mpsc::Sender<Piece>,
) {
    let fail = |e: ImportError| {
        let _ = out.blocking_send(Piece::Failed(e));
    };
    let decoded = match Decoded::new(source, encoding) {
        Ok(d) => d,
        Err(e) => return fail(ImportError::Read(e.to_string())),
    };
    let encoding_name = decoded.name;
    // The csv crate numbers the lines of a CRLF file from 0; ours count from 1.
    let line_offset = u64::from(decoded.crlf);
    let mut reader = csv::ReaderBuilder::new()
        .flexible(true)
        .has_headers(true)
        .from_reader(decoded);
    let columns = match reader.byte_headers() {
        Ok(h) if h.is_empty() || (h.len() == 1 && h[0].is_empty()) => {
            return fail(ImportError::Empty);
        }
        Ok(h) => match column_order(h) {
            Ok(c) => c,
            Err(e) => return fail(e),
        },
        Err(e) => return fail(ImportError::Read(e.to_string())),
    };
    if out.blocking_send(Piece::Header(Ok(encoding_name))).is_err() {
        return;
    }
    let (to_workers, from_reader) = mpsc::sync_channel::<Vec<(u64, csv::ByteRecord)>>(4);
    let from_reader = Arc::new(Mutex::new(from_reader));
    let workers: Vec<_> = (0..2)
        .map(|_| {
            let from_reader = from_reader.clone();
            let out = out.clone();
            let pii = pii.clone();
            let zones = zones.clone();
            std::thread::spawn(move || {
                loop {
                    let batch = match from_reader.lock() {
                        Ok(rx) => rx.recv(),
                        Err(_) => return,
                    };
                    let Ok(batch) = batch else { return };
                    let piece = check_batch(&batch, &columns, &pii, &zones, now);
                    if out.blocking_send(piece).is_err() {
                        return;
                    }
                }
            })
        })
        .collect();
    let mut seen: HashMap<Box<str>, u64> = HashMap::new();
    let mut batch = Vec::with_capacity(BATCH);
    let mut early = Vec::new();
    let mut rows = 0u64;
    let mut record = csv::ByteRecord::new();
    loop {
        match reader.read_byte_record(&mut record) {
            Ok(false) => break,
            Ok(true) => {}
            Err(e) => {
                drop(to_workers);
                return fail(ImportError::Read(format!("line {}: {e}", rows + 2)));
            }
        }
        rows += 1;
        if rows > MAX_ROWS {
            drop(to_workers);
            return fail(ImportError::Read(format!(
                "more than {MAX_ROWS} rows: split the file"
            )));
        }
        let line = record
            .position()
            .map_or(rows + 1, |p| p.line() + line_offset);
        if record.as_slice().len() > MAX_ROW_BYTES {
            early.push(RowRejection {
                row: line,
                column: "*".into(),
                reason: format!("is longer than {MAX_ROW_BYTES} bytes"),
            });
            continue;
        }
        if record.len() == 1 && record[0].is_empty() {
            rows -= 1; // a blank line
            continue;
        }
        if record.len() != columns.width {
            early.push(RowRejection {
                row: line,
                column: "*".into(),
                reason: format!(
                    "has {} fields; the header has {}",
                    record.len(),
                    columns.width
                ),
            });
            continue;
        }
        let policy_no = String::from_utf8_lossy(&record[columns.index[0]]);
        let policy_no = policy_no.trim();
        if !policy_no.is_empty() {
            if let Some(first) = seen.get(policy_no) {
                early.push(RowRejection {
                    row: line,
                    column: "policy_no".into(),
                    reason: format!("duplicate of line {first} in this file"),
                });
                continue;
            }
            seen.insert(policy_no.into(), line);
        }
        batch.push((line, std::mem::take(&mut record)));
        if batch.len() == BATCH
            && to_workers
                .send(std::mem::replace(&mut batch, Vec::with_capacity(BATCH)))
                .is_err()
        {
            return;
        }
    }
    if !batch.is_empty() && to_workers.send(batch).is_err() {
        return;
    }
    drop(to_workers);
    for worker in workers {
        let _ = worker.join();
    }
    let rejected = early.len() as u64;
    let _ = out.blocking_send(Piece::Copy {
        rows: 0,
        data: Vec::new(),
        rejections: early,
        rejected,
    });
    let _ = out.blocking_send(Piece::Done { rows });
}

/// Where each column is in this file.
#[derive(Clone, Copy)]
struct ColumnOrder {
    index: [usize; 16],
    version: Option<usize>,
    /// The optional `real_data_at_sale` column (absent: no).
    real_data: Option<usize>,
    width: usize,
}

fn column_order(header: &csv::ByteRecord) -> Result<ColumnOrder, ImportError> {
    let names: Vec<String> = header
        .iter()
        .map(|h| String::from_utf8_lossy(h).trim().to_ascii_lowercase())
        .collect();
    let find = |name: &str| names.iter().position(|n| n == name);
    let mut index = [0usize; 16];
    let mut missing = Vec::new();
    for (i, name) in COLUMNS.iter().enumerate() {
        match find(name) {
            Some(at) => index[i] = at,
            None => missing.push(*name),
        }
    }
    if !missing.is_empty() {
        return Err(ImportError::Header(format!(
            "missing column(s) {}; expected {}",
            missing.join(", "),
            COLUMNS.join(",")
        )));
    }
    Ok(ColumnOrder {
        index,
        version: find("version"),
        real_data: find("real_data_at_sale"),
        width: names.len(),
    })
}

fn check_batch(
    batch: &[(u64, csv::ByteRecord)],
    columns: &ColumnOrder,
    pii: &PiiCipher,
    zones: &Zones,
    now: DateTime<Utc>,
) -> Piece {
    let mut data = Vec::with_capacity(batch.len() * 300);
    let mut rejections = Vec::new();
    let (mut rows, mut rejected) = (0i64, 0u64);
    for (line, record) in batch {
        let mut bad_text = None;
        let field = |i: usize| -> &str {
            match std::str::from_utf8(&record[columns.index[i]]) {
                Ok(s) => s,
                Err(_) => "\u{FFFD}",
            }
        };
        for (i, name) in COLUMNS.iter().enumerate() {
            if field(i).contains('\u{FFFD}') {
                bad_text = Some(*name);
                break;
            }
        }
        if let Some(column) = bad_text {
            rejected += 1;
            rejections.push(RowRejection {
                row: *line,
                column: column.into(),
                reason: "holds bytes that are not valid text in the file's encoding".into(),
            });
            continue;
        }
        let version = match columns.version.map(|v| std::str::from_utf8(&record[v])) {
            None => Ok(1),
            Some(Ok(v)) if v.trim().is_empty() => Ok(1),
            Some(Ok(v)) => v
                .trim()
                .parse::<i64>()
                .ok()
                .filter(|v| *v > 0)
                .ok_or("must be a positive whole number"),
            Some(Err(_)) => Err("must be a positive whole number"),
        };
        let fields = PolicyFields {
            policy_no: field(0),
            customer_name: field(1),
            mobile: field(2),
            id_number: field(3),
            plate: field(4),
            vin: field(5),
            city_code: field(6),
            branch_code: field(7),
            agent_code: field(8),
            channel: field(9),
            category: field(10),
            start_date: field(11),
            end_date: field(12),
            premium: Premium::Yuan(field(13)),
            important: Flag::Text(field(14)),
            group_policy: Flag::Text(field(15)),
            real_data_at_sale: match columns.real_data {
                Some(i) => Flag::Text(std::str::from_utf8(&record[i]).unwrap_or("\u{FFFD}")),
                None => Flag::Bool(false),
            },
        };
        match (policy_checks::check(&fields), version) {
            (Ok(policy), Ok(version)) => match portfolio::seal(policy, version, pii, zones) {
                Ok(sealed) => {
                    portfolio::write_binary_row(&mut data, &sealed, now);
                    rows += 1;
                }
                Err(e) => return Piece::Failed(e.into()),
            },
            (checked, version) => {
                rejected += 1;
                if let Err(reason) = version {
                    rejections.push(RowRejection {
                        row: *line,
                        column: "version".into(),
                        reason: reason.into(),
                    });
                }
                for r in checked.err().unwrap_or_default() {
                    rejections.push(RowRejection {
                        row: *line,
                        column: r.column.into(),
                        reason: r.reason,
                    });
                }
            }
        }
    }
    Piece::Copy {
        rows,
        data,
        rejections,
        rejected,
    }
}

/// The file decoded to UTF-8 as it streams; a byte order mark is dropped.
struct Decoded<R> {
    inner: R,
    decoder: encoding_rs::Decoder,
    name: &'static str,
    /// Lines end in CRLF (judged by the first line).
    crlf: bool,
    pending: Vec<u8>,
    input: Vec<u8>,
    output: Vec<u8>,
    at: usize,
    finished: bool,
}

impl<R: Read> Decoded<R> {
    fn new(mut inner: R, encoding: Encoding) -> std::io::Result<Self> {
        let mut head = vec![0u8; 64 * 1024];
        let mut filled = 0;
        while filled < head.len() {
            let n = inner.read(&mut head[filled..])?;
            if n == 0 {
                break;
            }
            filled += n;
        }
        head.truncate(filled);
        let has_bom = head.starts_with(&[0xEF, 0xBB, 0xBF]);
        let gbk = match encoding {
            Encoding::Gbk => true,
            Encoding::Utf8 => false,
            Encoding::Detect => {
                !has_bom
                    && match std::str::from_utf8(&head) {
                        Ok(_) => false,
                        // Invalid only because the sample cut a character in two.
                        Err(e) => e.error_len().is_some(),
                    }
            }
        };
        let (encoding, name) = if gbk {
            (encoding_rs::GBK, "gbk")
        } else {
            (encoding_rs::UTF_8, "utf-8")
        };
        let crlf = head
            .iter()
            .position(|b| *b == b'\n')
            .is_some_and(|at| at > 0 && head[at - 1] == b'\r');
        Ok(Decoded {
            crlf,
            inner,
            decoder: encoding.new_decoder_with_bom_removal(),
            name,
            pending: head,
            input: vec![0u8; 256 * 1024],
            output: Vec::new(),
            at: 0,
            finished: false,
        })
    }
}

impl<R: Read> Read for Decoded<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        loop {
            if self.at < self.output.len() {
                let n = buf.len().min(self.output.len() - self.at);
                buf[..n].copy_from_slice(&self.output[self.at..self.at + n]);
                self.at += n;
                return Ok(n);
            }
            if self.finished {
                return Ok(0);
            }
            let input: Vec<u8> = if self.pending.is_empty() {
                let n = self.inner.read(&mut self.input)?;
                self.input[..n].to_vec()
            } else {
                std::mem::take(&mut self.pending)
            };
            let last = input.is_empty();
            let room = self
                .decoder
                .max_utf8_buffer_length(input.len())
                .unwrap_or(input.len() * 3 + 16);
            self.output.clear();
            self.output.resize(room, 0);
            let (_, _, written, _) = self.decoder.decode_to_utf8(&input, &mut self.output, last);
            self.output.truncate(written);
            self.at = 0;
            self.finished = last;
        }
    }
}

#[derive(Clone)]
pub struct ImportApi {
    pub importer: Importer,
    pub clock: renewal_platform::Clock,
    /// Largest upload taken (`IMPORT_MAX_BYTES`); past it the upload is cut off (413).
    pub max_bytes: usize,
    /// Imports running at once over HTTP (each takes a reading thread, two checking
    /// workers and a database connection).
    pub running: renewal_platform::quotas::Gate,
}

#[derive(serde::Deserialize)]
struct ImportQuery {
    #[serde(default)]
    encoding: Option<String>,
    #[serde(default)]
    file_name: Option<String>,
}

pub fn routes(api: ImportApi) -> renewal_platform::http::Routes {
    use axum::routing::{get, post};
    let max = api.max_bytes;
    renewal_platform::http::Routes::new()
        .route("/v1/policies:import", post(import_upload))
        .route("/v1/imports/{import_id}/rejections", get(rejections_csv))
        .finish(|router| {
            router
                // Streamed, so no buffered limit; the stream itself stops at the maximum.
                .layer(axum::extract::DefaultBodyLimit::disable())
                .layer(tower_http::limit::RequestBodyLimitLayer::new(max))
                .with_state(api)
        })
}

fn error(status: axum::http::StatusCode, code: &str, detail: &str) -> axum::response::Response {
    use axum::response::IntoResponse;
    renewal_platform::Problem::new(status, code, detail).into_response()
}

/// Loading policies is for the core system's importer and HQ.
const IMPORTERS: &[renewal_platform::Role] = &[
    renewal_platform::Role::Importer,
    renewal_platform::Role::HqAdmin,
];

impl axum::response::IntoResponse for ImportError {
    fn into_response(self) -> axum::response::Response {
        use axum::http::StatusCode;
        match &self {
            ImportError::Header(d) => error(StatusCode::BAD_REQUEST, "invalid_header", d),
            ImportError::Empty => error(
                StatusCode::BAD_REQUEST,
                "empty_file",
                "the file has no rows",
            ),
            ImportError::Read(d) => error(StatusCode::BAD_REQUEST, "unreadable_file", d),
            // Cases open after the portfolio is committed; the service opens them later.
            ImportError::Cases(_) => {
                tracing::error!(error = %self, "opening the cases of an import failed");
                error(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "cases_pending",
                    "the policies were loaded; their cases will be opened by the service",
                )
            }
            ImportError::Db(_) | ImportError::Pii(_) => {
                tracing::error!(error = %self, "policy import failed");
                error(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal",
                    "the import failed; nothing was written",
                )
            }
        }
    }
}

/// `POST /v1/policies:import?encoding=gbk&file_name=portfolio.csv` with the CSV file as
/// the body (streamed, any size); answers with the import report.
#[utoipa::path(post, path = "/v1/policies:import", tag = "policies",
    params(("encoding" = Option<String>, Query, description = "utf-8, gbk or auto"),
           ("file_name" = Option<String>, Query)),
    request_body(content = String, content_type = "text/csv",
        description = "policy_no, customer_name, mobile, id_number, plate, vin, city_code, branch_code, agent_code, channel, category, start_date, end_date, premium, important, group_policy[, version]"),
    responses((status = 200, body = serde_json::Value, description = "The import report: rows, merged, rejected, the first rejections"),
              (status = 400, content_type = "application/problem+json", body = renewal_platform::openapi::ProblemDocument), renewal_platform::openapi::Refusals,
              (status = 413, description = "Larger than IMPORT_MAX_BYTES"),
              (status = 503, description = "Two imports are running", content_type = "application/problem+json", body = renewal_platform::openapi::ProblemDocument)))]
async fn import_upload(
    axum::extract::State(api): axum::extract::State<ImportApi>,
    caller: renewal_platform::Caller,
    axum::extract::Query(query): axum::extract::Query<ImportQuery>,
    headers: axum::http::HeaderMap,
    body: axum::body::Body,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    use futures::TryStreamExt;
    if let Err(refused) = caller.require(IMPORTERS) {
        return refused.into_response();
    }
    let _running = match api.running.enter() {
        Ok(place) => place,
        Err(busy) => return busy.into_response(),
    };
    let charset = headers
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split("charset=").nth(1))
        .map(|c| c.trim_matches('"').to_owned());
    let encoding = match query
        .encoding
        .or(charset)
        .as_deref()
        .map(str::parse)
        .unwrap_or(Ok(Encoding::Detect))
    {
        Ok(e) => e,
        Err(e) => return error(axum::http::StatusCode::BAD_REQUEST, "invalid_query", &e),
    };
    let stream = body.into_data_stream().map_err(std::io::Error::other);
    let reader = tokio_util::io::SyncIoBridge::new(tokio_util::io::StreamReader::new(stream));
    let file_name = query.file_name.unwrap_or_else(|| "upload.csv".into());
    match api
        .importer
        .import(reader, &file_name, encoding, api.clock.now())
        .await
    {
        Ok(report) => axum::Json(report).into_response(),
        Err(e) => e.into_response(),
    }
}

/// `GET /v1/imports/{id}/rejections`: every rejected row of an import, as CSV.
#[utoipa::path(get, path = "/v1/imports/{import_id}/rejections", tag = "policies",
    params(("import_id" = uuid::Uuid, Path)),
    responses((status = 200, content_type = "text/csv", body = String, description = "row, column, reason"),
              (status = 400, content_type = "application/problem+json", body = renewal_platform::openapi::ProblemDocument), renewal_platform::openapi::Refusals))]
async fn rejections_csv(
    axum::extract::State(api): axum::extract::State<ImportApi>,
    caller: renewal_platform::Caller,
    axum::extract::Path(import_id): axum::extract::Path<String>,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    if let Err(refused) = caller.require(IMPORTERS) {
        return refused.into_response();
    }
    let Ok(import_id) = import_id.parse::<Uuid>() else {
        return error(
            axum::http::StatusCode::BAD_REQUEST,
            "invalid_import_id",
            "not a UUID",
        );
    };
    let rows: Result<Vec<(i64, String, String)>, _> = sqlx::query_as(
        "SELECT row_no, column_name, reason FROM lists.import_rejections WHERE import_id = $1
         ORDER BY row_no, column_name",
    )
    .bind(import_id)
    .fetch_all(&api.importer.pool)
    .await;
    match rows {
        Ok(rows) => {
            let mut out = csv::Writer::from_writer(Vec::new());
            let _ = out.write_record(["row", "column", "reason"]);
            for (row, column, reason) in rows {
                let _ = out.write_record([row.to_string(), column, reason]);
            }
            let body = out.into_inner().unwrap_or_default();
            (
                [(axum::http::header::CONTENT_TYPE, "text/csv; charset=utf-8")],
                body,
            )
                .into_response()
        }
        Err(e) => {
            tracing::error!(error = %e, "reading import rejections failed");
            error(
                axum::http::StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "",
            )
        }
    }
}
