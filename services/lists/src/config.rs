//! The lists service's own settings, from the environment.

use std::sync::Arc;

use renewal_platform::config::{ConfigError, Env};
use renewal_platform::pii::PiiCipher;

#[derive(Debug, Clone)]
pub struct ListsConfig {
    /// Seals names, mobiles, ID numbers, plates and VINs at rest (`PII_KEYS`, or one
    /// `PII_KEY`: see `renewal_platform::pii`).
    pub pii: Arc<PiiCipher>,
    /// Day of the month the monthly renewal and lapse lists are issued (1-28).
    pub list_issue_day: u32,
    /// The largest policy CSV taken over HTTP (`IMPORT_MAX_BYTES`, default 2 GiB).
    pub import_max_bytes: usize,
    /// How long the personal data of a closed case is kept before the retention job
    /// erases it (`PII_RETENTION_DAYS`, default 365: a lapsed customer stays on the
    /// monthly lapse lists for rescue through the next season).
    pub pii_retention: std::time::Duration,
    /// How long a renewal reported on the phone waits for the core system's
    /// confirmation before the case is worked again with a check task for its owner
    /// (`RENEWAL_CONFIRM_DAYS`, default 3).
    pub renewal_confirm_within: chrono::Duration,
    /// A vehicle's policies expiring within this many days of each other are one case
    /// (`VEHICLE_WINDOW_DAYS`, default 30).
    pub vehicle_window: i32,
}

impl ListsConfig {
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from(&Env::process())
    }

    pub fn from<F: Fn(&str) -> Option<String>>(env: &Env<F>) -> Result<Self, ConfigError> {
        let pii = renewal_platform::pii::cipher_from_env(env, "lists")?;
        let list_issue_day: u32 = env.or("LIST_ISSUE_DAY", 1)?;
        if !(1..=28).contains(&list_issue_day) {
            return Err(ConfigError::Invalid {
                var: "LIST_ISSUE_DAY".into(),
                reason: format!("must be a day of the month from 1 to 28 (got {list_issue_day})"),
            });
        }
        let import_max_bytes: usize = env.or("IMPORT_MAX_BYTES", 2 << 30)?;
        if import_max_bytes < 1024 {
            return Err(ConfigError::Invalid {
                var: "IMPORT_MAX_BYTES".into(),
                reason: "must be at least 1024".into(),
            });
        }
        let retention_days: u64 = env.or("PII_RETENTION_DAYS", 365)?;
        if !(1..=3650).contains(&retention_days) {
            return Err(ConfigError::Invalid {
                var: "PII_RETENTION_DAYS".into(),
                reason: format!("must be from 1 to 3650 days (got {retention_days})"),
            });
        }
        let confirm_days: i64 = env.or("RENEWAL_CONFIRM_DAYS", 3)?;
        if !(1..=60).contains(&confirm_days) {
            return Err(ConfigError::Invalid {
                var: "RENEWAL_CONFIRM_DAYS".into(),
                reason: format!("must be from 1 to 60 days (got {confirm_days})"),
            });
        }
        let vehicle_window: i32 =
            env.or("VEHICLE_WINDOW_DAYS", crate::cases::VEHICLE_WINDOW_DAYS)?;
        if !(0..=90).contains(&vehicle_window) {
            return Err(ConfigError::Invalid {
                var: "VEHICLE_WINDOW_DAYS".into(),
                reason: format!("must be from 0 to 90 days (got {vehicle_window})"),
            });
        }
        Ok(ListsConfig {
            vehicle_window,
            renewal_confirm_within: chrono::Duration::days(confirm_days),
            pii: Arc::new(pii),
            list_issue_day,
            import_max_bytes,
            pii_retention: std::time::Duration::from_secs(retention_days * 24 * 3600),
        })
    }

    /// A configuration with the given keyring (or one key) and the default issue day.
    pub fn with_key(keyring: &str) -> Result<Self, ConfigError> {
        let key = keyring.to_owned();
        Self::from(&Env::from_fn(move |var| {
            (var == "PII_KEYS").then(|| key.clone())
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn from(pairs: &[(&str, &str)]) -> Result<ListsConfig, ConfigError> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        ListsConfig::from(&Env::from_fn(move |k| map.get(k).cloned()))
    }

    #[test]
    fn the_key_is_required_and_checked() {
        let key = "11".repeat(32);
        assert!(matches!(from(&[]), Err(ConfigError::Missing { var }) if var == "PII_KEYS"));
        assert!(
            matches!(from(&[("PII_KEY", "abc")]), Err(ConfigError::Invalid { var, .. }) if var == "PII_KEY")
        );
        assert!(
            matches!(from(&[("PII_KEY", &key), ("LIST_ISSUE_DAY", "31")]), Err(ConfigError::Invalid { var, .. }) if var == "LIST_ISSUE_DAY")
        );
        assert_eq!(from(&[("PII_KEY", &key)]).expect("valid").list_issue_day, 1);
    }
}
