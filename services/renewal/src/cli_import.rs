//! `renewal import policies FILE`: a CSV file from the core policy system into the
//! portfolio of the database in DATABASE_URL (migrated first), with the key in PII_KEY.

use std::path::PathBuf;
use std::process::ExitCode;

use renewal_lists::ListsConfig;
use renewal_lists::import::{Encoding, ImportError, Importer};
use renewal_platform::config::{Env, Settings};

pub async fn policies(file: PathBuf, encoding: &str, rejections: Option<PathBuf>) -> ExitCode {
    let configured = (|| {
        let settings = Settings::from(&Env::process())?;
        let lists = ListsConfig::from_env()?;
        Ok::<_, renewal_platform::config::ConfigError>((settings, lists))
    })();
    let (settings, lists) = match configured {
        Ok(c) => c,
        Err(e) => {
            eprintln!("renewal import: configuration error: {e}");
            return ExitCode::from(2);
        }
    };
    let encoding: Encoding = match encoding.parse() {
        Ok(e) => e,
        Err(e) => {
            eprintln!("renewal import: --encoding: {e}");
            return ExitCode::from(2);
        }
    };
    let source = match std::fs::File::open(&file) {
        Ok(f) => std::io::BufReader::with_capacity(1 << 20, f),
        Err(e) => {
            eprintln!("renewal import: cannot open {}: {e}", file.display());
            return ExitCode::from(2);
        }
    };
    let result = async {
        let pool = renewal_platform::postgres::pool(&settings.database_url, 4)
            .map_err(|e| e.to_string())?;
        let importer = importer(&pool, settings.time_zone, &lists).await?;
        let name = file
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let report = importer
            .import(source, &name, encoding, chrono::Utc::now())
            .await
            .map_err(|e| match e {
                ImportError::Header(_) | ImportError::Empty | ImportError::Read(_) => e.to_string(),
                ImportError::Cases(_) => {
                    format!("{e}; the policies were loaded and the service opens their cases")
                }
                other => format!("{other}; nothing was written"),
            })?;
        if let Some(path) = &rejections {
            write_rejections(&pool, report.import_id, path)
                .await
                .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        }
        Ok::<_, String>(report)
    }
    .await;
    let report = match result {
        Ok(r) => r,
        Err(e) => {
            eprintln!("renewal import: {e}");
            return ExitCode::FAILURE;
        }
    };
    println!(
        "import {} of {} ({}): {} rows, {} inserted, {} updated, {} unchanged, {} stale, {} rejected; {} cases opened; {:.1} s ({:.0} rows/s)",
        report.import_id,
        report.file_name,
        report.encoding,
        report.rows,
        report.merged.inserted,
        report.merged.updated,
        report.merged.unchanged,
        report.merged.stale,
        report.rejected,
        report.cases_opened,
        report.seconds,
        report.rows as f64 / report.seconds.max(1e-9),
    );
    for r in report.rejections.iter().take(20) {
        println!("  line {}, {}: {}", r.row, r.column, r.reason);
    }
    if report.rejected > 0 {
        if rejections.is_none() {
            println!(
                "  (every rejection: GET /v1/imports/{}/rejections, or --rejections FILE)",
                report.import_id
            );
        }
        return ExitCode::from(3);
    }
    ExitCode::SUCCESS
}

async fn write_rejections(
    pool: &sqlx::PgPool,
    import_id: uuid::Uuid,
    path: &std::path::Path,
) -> Result<(), String> {
    let rows: Vec<(i64, String, String)> = sqlx::query_as(
        "SELECT row_no, column_name, reason FROM lists.import_rejections WHERE import_id = $1
         ORDER BY row_no, column_name",
    )
    .bind(import_id)
    .fetch_all(pool)
    .await
    .map_err(|e| e.to_string())?;
    let mut out = csv::Writer::from_path(path).map_err(|e| e.to_string())?;
    out.write_record(["row", "column", "reason"])
        .map_err(|e| e.to_string())?;
    for (row, column, reason) in rows {
        out.write_record([row.to_string(), column, reason])
            .map_err(|e| e.to_string())?;
    }
    out.flush().map_err(|e| e.to_string())
}

/// Migrates the database and builds the lists importer over it (the holiday calendar
/// and the cities' time zones loaded).
pub async fn importer(
    pool: &sqlx::PgPool,
    time_zone: chrono_tz::Tz,
    lists: &ListsConfig,
) -> Result<Importer, String> {
    crate::system::migrate_all(pool.clone())
        .await
        .map_err(|e| e.to_string())?;
    let calendar = renewal_lists::holidays::Calendar::embedded().map_err(|e| e.to_string())?;
    renewal_lists::store_calendar(pool, &calendar)
        .await
        .map_err(|e| e.to_string())?;
    let zones = renewal_lists::portfolio::Zones::load(pool, time_zone)
        .await
        .map_err(|e| e.to_string())?;
    Ok(Importer {
        pool: pool.clone(),
        pii: lists.pii.clone(),
        zones,
        outbox: renewal_lists::outbox(),
        vehicle_window: lists.vehicle_window,
    })
}

/// `renewal import org FILE`: the organisation (cities, branches, agents, supervisors,
/// capacity, active) into the database of DATABASE_URL (migrated first). Every row
/// must be right, or nothing is loaded (exit 3 with each wrong row listed).
pub async fn org(file: PathBuf) -> ExitCode {
    let settings = match Settings::from(&Env::process()) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("renewal import: configuration error: {e}");
            return ExitCode::from(2);
        }
    };
    let data = match std::fs::read(&file) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("renewal import: cannot read {}: {e}", file.display());
            return ExitCode::from(2);
        }
    };
    let rows = match renewal_assignment::org::parse(&data) {
        Ok(rows) => rows,
        Err(renewal_assignment::org::OrgError::Rows(problems)) => {
            eprintln!(
                "renewal import: {} wrong rows; nothing was loaded",
                problems.len()
            );
            for p in problems.iter().take(50) {
                eprintln!("  line {}, {}: {}", p.line, p.column, p.reason);
            }
            return ExitCode::from(3);
        }
        Err(e) => {
            eprintln!("renewal import: {e}");
            return ExitCode::from(3);
        }
    };
    let result = async {
        let pool = renewal_platform::postgres::pool(&settings.database_url, 2)
            .map_err(|e| e.to_string())?;
        crate::system::migrate_all(pool.clone())
            .await
            .map_err(|e| e.to_string())?;
        renewal_assignment::org::load(
            &pool,
            &renewal_assignment::outbox(),
            &rows,
            chrono::Utc::now(),
        )
        .await
        .map_err(|e| e.to_string())
    }
    .await;
    match result {
        Ok(report) => {
            println!(
                "organisation loaded: {} agents, {} branches written, {} agents deactivated, {} cases handed back to their branch",
                report.agents, report.branches, report.deactivated, report.cases_handed_back
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("renewal import: {e}; nothing was written");
            ExitCode::FAILURE
        }
    }
}
