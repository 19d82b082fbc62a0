//! `renewal pii rotate`: re-seals every service's personal data under the newest key of
//! the keyring (`PII_KEYS`, newest first), in batches, while the services run.
//!
//! The rotation, for ops: put the new key first in `PII_KEYS` (`2:<new>,1:<old>`) and
//! roll every service, so new values are sealed under it; run this once (again after
//! an interruption: it carries on from what is left); when it reports nothing stale,
//! drop the old key from `PII_KEYS` and roll the services again.

use std::process::ExitCode;

use renewal_platform::config::{Env, Settings};
use renewal_platform::pii::PiiCipher;
use renewal_platform::resealing::{self, Progress, ResealError, SealedColumn};
use secrecy::SecretString;
use sqlx::PgPool;

/// Rows re-sealed per transaction.
pub const BATCH: i64 = 500;

/// Each service whose schema holds sealed values, and where.
pub fn sealed_services() -> [(&'static str, &'static [SealedColumn]); 3] {
    [
        ("lists", renewal_lists::portfolio::SEALED),
        ("scheduler", renewal_scheduler::SEALED),
        ("dispatch", renewal_dispatch::SEALED),
    ]
}

#[derive(Debug, thiserror::Error)]
pub enum RotateError {
    #[error("the keyring: {0}")]
    Keyring(#[from] renewal_platform::pii::PiiError),
    #[error(transparent)]
    Reseal(#[from] ResealError),
}

/// Re-seals all four services' values in `pool` under the keyring's newest key;
/// returns how many values it re-sealed.
pub async fn rotate_all(
    pool: &PgPool,
    keyring: &SecretString,
    batch: i64,
    mut progress: impl FnMut(&str, Progress),
) -> Result<u64, RotateError> {
    let mut total = 0;
    for (service, columns) in sealed_services() {
        let pii = PiiCipher::for_service(keyring, service)?;
        total += resealing::rotate(pool, &pii, columns, batch, |p| progress(service, p)).await?;
    }
    Ok(total)
}

/// The command: configuration from the environment, progress on stdout.
pub async fn rotate(batch: i64) -> ExitCode {
    let env = Env::process();
    let configured = Settings::from(&env).and_then(|settings| {
        let (_, keyring) = renewal_platform::pii::keyring_from(&env).ok_or(
            renewal_platform::config::ConfigError::Missing {
                var: "PII_KEYS".into(),
            },
        )?;
        Ok((settings, keyring))
    });
    let (settings, keyring) = match configured {
        Ok(c) => c,
        Err(e) => {
            eprintln!("renewal pii rotate: configuration error: {e}");
            return ExitCode::from(2);
        }
    };
    let pool = match renewal_platform::postgres::pool(&settings.database_url, 2) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("renewal pii rotate: {e}");
            return ExitCode::FAILURE;
        }
    };
    let started = std::time::Instant::now();
    let report = |service: &str, p: Progress| {
        println!(
            "{service} {}.{}: {} of {} re-sealed",
            p.table, p.column, p.resealed, p.stale_at_start
        );
    };
    match rotate_all(&pool, &keyring, batch, report).await {
        Ok(n) => {
            println!(
                "re-sealed {n} values in {:.1} s; nothing is left under an older key",
                started.elapsed().as_secs_f64()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("renewal pii rotate: {e}; what was re-sealed stays, run it again to go on");
            ExitCode::FAILURE
        }
    }
}
