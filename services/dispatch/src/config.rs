//! Dispatch's own settings, from the environment.

use std::time::Duration;

use chrono::NaiveTime;
use renewal_platform::config::{ConfigError, Env};
use secrecy::SecretString;

/// The default reserve: one connection per sender (each holds its claimed batch's
/// transaction while the vendor answers) and three times as many for the webhook. Each
/// push holds a connection for its transaction's round trips. Measured while sqlx
/// 0.9.0 left Nagle's algorithm on (each receipt batch then held its connection 40 ms
/// longer), a reserve of 8 gave `receipts_per_s` about 13,000 and 16 about 16,500;
/// without that stall 8 may be enough, not measured yet (issue 14's note). A
/// Kubernetes pod keeps its own `DATABASE_RESERVED_CONNECTIONS`.
pub const RESERVED_CONNECTIONS: u32 = 4 * crate::sms::sending::WORKERS as u32;

#[derive(Debug, Clone)]
pub struct DispatchConfig {
    /// Seals dispatch's copies of mobiles, names and plates, and its opt-out list
    /// (`PII_KEYS`, or one `PII_KEY`: see `renewal_platform::pii`).
    pub pii: std::sync::Arc<renewal_platform::pii::PiiCipher>,
    /// The SMS vendor's API base URL (a local mock in tests and the demo).
    pub vendor_url: String,
    pub sign_name: String,
    pub access_key_id: String,
    pub access_key_secret: SecretString,
    pub vendor_timeout: Duration,
    /// The secret path token the vendor's pushes must carry.
    pub webhook_token: SecretString,
    /// The token being rotated out (`SMS_WEBHOOK_TOKEN_PREVIOUS`): pushes carrying
    /// either are accepted while the vendor's console is switched over.
    pub webhook_previous_token: Option<SecretString>,
    /// Where the vendor's pushes may come from (`SMS_WEBHOOK_ALLOW`, CIDRs); empty:
    /// anywhere.
    pub webhook_allow: Vec<ipnet::IpNet>,
    /// Proxies in front of the webhook (`TRUSTED_PROXIES`, CIDRs, e.g. the ingress
    /// controller's pods): for a push through one of them, the source checked against
    /// the allow-list is the last address in `X-Forwarded-For` it did not add itself.
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// Local hours SMS may go out in.
    pub sms_hours: Hours,
    /// Local hours the customer may be called in (phone tasks are leased only then).
    pub call_hours: Hours,
    /// Requests per second the vendor accepts from us (its rate limit for our account).
    pub vendor_qps: u32,
    /// Connections kept apart for the vendor's webhook and the SMS sender
    /// (`DATABASE_RESERVED_CONNECTIONS`), beside the main pool the API and the
    /// consumers share, so no caller of the API can starve them.
    pub reserved_connections: u32,
    /// How long after a lost answer (or a sender's death) the vendor is asked whether
    /// it took the message (`SMS_RECONCILE_AFTER`): its records lag behind its answers.
    pub reconcile_after: Duration,
}

/// A daily window of local time, [start, end).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hours {
    pub start: NaiveTime,
    pub end: NaiveTime,
}

impl Hours {
    /// 09:00-20:00, the default for SMS.
    pub fn daytime() -> Hours {
        Hours {
            start: NaiveTime::from_hms_opt(9, 0, 0).unwrap_or(NaiveTime::MIN),
            end: NaiveTime::from_hms_opt(20, 0, 0).unwrap_or(NaiveTime::MIN),
        }
    }

    /// 09:00-21:00, the default for calls (the scheduler places calls in the same window).
    pub fn calls() -> Hours {
        Hours {
            start: NaiveTime::from_hms_opt(9, 0, 0).unwrap_or(NaiveTime::MIN),
            end: NaiveTime::from_hms_opt(21, 0, 0).unwrap_or(NaiveTime::MIN),
        }
    }
}

impl std::str::FromStr for Hours {
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
            return Err(format!("{s:?}: the window must start before it ends"));
        }
        Ok(Hours { start, end })
    }
}

impl DispatchConfig {
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from(&Env::process())
    }

    pub fn from<F: Fn(&str) -> Option<String>>(env: &Env<F>) -> Result<Self, ConfigError> {
        let vendor_url: String =
            env.or("SMS_VENDOR_URL", "https://dysmsapi.aliyuncs.com".to_owned())?;
        if !(vendor_url.starts_with("http://") || vendor_url.starts_with("https://")) {
            return Err(ConfigError::Invalid {
                var: "SMS_VENDOR_URL".into(),
                reason: format!("must be an http(s) URL (got {vendor_url:?})"),
            });
        }
        let current =
            webhook_token(env, "SMS_WEBHOOK_TOKEN")?.ok_or_else(|| ConfigError::Missing {
                var: "SMS_WEBHOOK_TOKEN".into(),
            })?;
        let webhook_previous_token = webhook_token(env, "SMS_WEBHOOK_TOKEN_PREVIOUS")?;
        let webhook_allow = networks(env, "SMS_WEBHOOK_ALLOW")?;
        let trusted_proxies = networks(env, "TRUSTED_PROXIES")?;
        let vendor_timeout = env.duration_or("SMS_VENDOR_TIMEOUT", Duration::from_secs(10))?;
        // A stopping process lets its calls in flight finish and records their answers:
        // its grace must outlast a call (else they are left for the vendor to be asked).
        let grace = env.duration_or("SHUTDOWN_GRACE", Duration::from_secs(20))?;
        if grace <= vendor_timeout {
            return Err(ConfigError::Invalid {
                var: "SMS_VENDOR_TIMEOUT".into(),
                reason: format!(
                    "must be shorter than SHUTDOWN_GRACE ({grace:?}), so calls in flight end before the process does"
                ),
            });
        }
        Ok(DispatchConfig {
            pii: std::sync::Arc::new(renewal_platform::pii::cipher_from_env(env, "dispatch")?),
            vendor_url,
            sign_name: env.or("SMS_SIGN_NAME", "车险续保".to_owned())?,
            access_key_id: env.or("SMS_ACCESS_KEY_ID", String::new())?,
            access_key_secret: env.secret_or("SMS_ACCESS_KEY_SECRET", ""),
            vendor_timeout,
            webhook_token: current,
            webhook_previous_token,
            webhook_allow,
            trusted_proxies,
            sms_hours: env.or("SMS_HOURS", Hours::daytime())?,
            call_hours: env.or("CALL_HOURS", Hours::calls())?,
            vendor_qps: {
                let qps: u32 = env.or("SMS_VENDOR_QPS", 500)?;
                if qps == 0 {
                    return Err(ConfigError::Invalid {
                        var: "SMS_VENDOR_QPS".into(),
                        reason: "must be at least 1".into(),
                    });
                }
                qps
            },
            reconcile_after: env.duration_or("SMS_RECONCILE_AFTER", Duration::from_secs(60))?,
            reserved_connections: {
                let n: u32 = env.or("DATABASE_RESERVED_CONNECTIONS", RESERVED_CONNECTIONS)?;
                if !(2..=100).contains(&n) {
                    return Err(ConfigError::Invalid {
                        var: "DATABASE_RESERVED_CONNECTIONS".into(),
                        reason: format!("must be 2 to 100 (got {n})"),
                    });
                }
                n
            },
        })
    }
}

/// A comma-separated list of networks (CIDRs or single addresses).
fn networks<F: Fn(&str) -> Option<String>>(
    env: &Env<F>,
    var: &str,
) -> Result<Vec<ipnet::IpNet>, ConfigError> {
    env.or(var, String::new())?
        .split(',')
        .map(str::trim)
        .filter(|c| !c.is_empty())
        .map(|c| {
            c.parse::<ipnet::IpNet>()
                .or_else(|_| c.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
                .map_err(|_| ConfigError::Invalid {
                    var: var.into(),
                    reason: format!("{c:?} is not a CIDR such as 106.11.0.0/16"),
                })
        })
        .collect()
}

/// A webhook path token: 16 characters or more.
fn webhook_token<F: Fn(&str) -> Option<String>>(
    env: &Env<F>,
    var: &str,
) -> Result<Option<SecretString>, ConfigError> {
    use secrecy::ExposeSecret;
    match env.secret(var) {
        Some(t) if t.expose_secret().len() < 16 => Err(ConfigError::Invalid {
            var: var.into(),
            reason: "must be at least 16 characters".into(),
        }),
        other => Ok(other),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_webhook_token_is_required_and_named() {
        let env = Env::from_fn(|_| None);
        let err = DispatchConfig::from(&env).expect_err("must be refused");
        assert!(err.to_string().contains("SMS_WEBHOOK_TOKEN"), "{err}");
        let env =
            Env::from_fn(|k| (k == "SMS_WEBHOOK_TOKEN").then(|| "0123456789abcdef".to_owned()));
        let err = DispatchConfig::from(&env).expect_err("no keyring");
        assert!(err.to_string().contains("PII_KEYS"), "{err}");
        let key = "11".repeat(32);
        let env = Env::from_fn(|k| match k {
            "SMS_WEBHOOK_TOKEN" => Some("0123456789abcdef".to_owned()),
            "PII_KEY" => Some(key.clone()),
            _ => None,
        });
        let config = DispatchConfig::from(&env).expect("valid");
        assert_eq!(config.sms_hours, "09:00-20:00".parse().expect("hours"));
        assert_eq!(config.call_hours, "09:00-21:00".parse().expect("hours"));
        let env = Env::from_fn(|k| match k {
            "SMS_WEBHOOK_TOKEN" => Some("0123456789abcdef".to_owned()),
            "SMS_HOURS" => Some("21:00-08:00".to_owned()),
            "PII_KEY" => Some(key.clone()),
            _ => None,
        });
        assert!(
            DispatchConfig::from(&env)
                .expect_err("must be refused")
                .to_string()
                .contains("SMS_HOURS")
        );
    }
}
