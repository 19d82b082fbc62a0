//! The scheduler's settings: the hours each channel may reach a customer, in the
//! customer's time zone (`SMS_HOURS`, default 09:00-20:00; `CALL_HOURS`, 09:00-21:00),
//! and the keyring that seals its copy of the customers' contacts.

use std::sync::Arc;

use chrono::NaiveTime;
use renewal_platform::config::{ConfigError, Env};
use renewal_platform::pii::PiiCipher;

use crate::plan::Hours;

/// Allowed local hours, `start` included, `end` excluded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    pub start: NaiveTime,
    pub end: NaiveTime,
}

impl std::str::FromStr for Window {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (a, b) = s
            .split_once('-')
            .ok_or_else(|| format!("{s:?} is not like 09:00-20:00"))?;
        let t = |v: &str| {
            NaiveTime::parse_from_str(v.trim(), "%H:%M").map_err(|_| format!("{v:?} is not HH:MM"))
        };
        let (start, end) = (t(a)?, t(b)?);
        if start >= end {
            return Err(format!("{s:?}: the start must come before the end"));
        }
        Ok(Window { start, end })
    }
}

fn hm(h: u32) -> NaiveTime {
    NaiveTime::from_hms_opt(h, 0, 0).unwrap_or(NaiveTime::MIN)
}

#[derive(Debug, Clone)]
pub struct SchedulerConfig {
    pub hours: Hours,
    /// Seals the scheduler's copy of each customer's contact (`PII_KEYS`, or one
    /// `PII_KEY`: see `renewal_platform::pii`).
    pub pii: Arc<PiiCipher>,
}

/// The channels' hours when none are configured.
pub fn default_hours() -> Hours {
    Hours {
        sms: Window {
            start: hm(9),
            end: hm(20),
        },
        calls: Window {
            start: hm(9),
            end: hm(21),
        },
    }
}

impl SchedulerConfig {
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from(&Env::process())
    }

    pub fn from<F: Fn(&str) -> Option<String>>(env: &Env<F>) -> Result<Self, ConfigError> {
        let d = default_hours();
        Ok(SchedulerConfig {
            hours: Hours {
                sms: env.or("SMS_HOURS", d.sms)?,
                calls: env.or("CALL_HOURS", d.calls)?,
            },
            pii: Arc::new(renewal_platform::pii::cipher_from_env(env, "scheduler")?),
        })
    }

    /// The default hours, with the given keyring (or one key).
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

    #[test]
    fn hours_are_read_and_bad_ones_named() {
        let key = "11".repeat(32);
        let env = Env::from_fn(|v: &str| match v {
            "CALL_HOURS" => Some("08:30-21:30".to_owned()),
            "PII_KEY" => Some(key.clone()),
            _ => None,
        });
        let c = SchedulerConfig::from(&env).expect("config");
        assert_eq!(
            c.hours.calls.start,
            NaiveTime::from_hms_opt(8, 30, 0).expect("t")
        );
        assert_eq!(c.hours.sms.end, hm(20));
        let env = Env::from_fn(|v: &str| match v {
            "SMS_HOURS" => Some("20:00-09:00".to_owned()),
            "PII_KEY" => Some(key.clone()),
            _ => None,
        });
        let e = SchedulerConfig::from(&env).expect_err("refused");
        assert!(e.to_string().contains("SMS_HOURS"), "{e}");
    }
}
