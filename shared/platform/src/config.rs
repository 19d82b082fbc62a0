//! Configuration from environment variables, parsed once at start into typed values.
//! A bad value stops start-up with an error that names the variable.

use std::fmt::Display;
use std::net::SocketAddr;
use std::str::FromStr;
use std::time::Duration;

use secrecy::SecretString;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("environment variable {var} is required but not set")]
    Missing { var: String },
    #[error("environment variable {var} has an invalid value: {reason}")]
    Invalid { var: String, reason: String },
}

/// Reads variables through a lookup function, so tests can pass a map instead of
/// changing the process environment.
pub struct Env<F> {
    lookup: F,
}

impl Env<fn(&str) -> Option<String>> {
    pub fn process() -> Self {
        fn get(name: &str) -> Option<String> {
            std::env::var(name).ok()
        }
        Env { lookup: get }
    }
}

impl<F: Fn(&str) -> Option<String>> Env<F> {
    pub fn from_fn(lookup: F) -> Self {
        Env { lookup }
    }

    fn raw(&self, var: &str) -> Option<String> {
        (self.lookup)(var).filter(|v| !v.trim().is_empty())
    }

    pub fn optional<T>(&self, var: &str) -> Result<Option<T>, ConfigError>
    where
        T: FromStr,
        T::Err: Display,
    {
        match self.raw(var) {
            None => Ok(None),
            Some(value) => {
                value
                    .trim()
                    .parse()
                    .map(Some)
                    .map_err(|e: T::Err| ConfigError::Invalid {
                        var: var.to_owned(),
                        reason: format!("{e} (got {:?})", value),
                    })
            }
        }
    }

    pub fn or<T>(&self, var: &str, default: T) -> Result<T, ConfigError>
    where
        T: FromStr,
        T::Err: Display,
    {
        Ok(self.optional(var)?.unwrap_or(default))
    }

    pub fn required<T>(&self, var: &str) -> Result<T, ConfigError>
    where
        T: FromStr,
        T::Err: Display,
    {
        self.optional(var)?.ok_or_else(|| ConfigError::Missing {
            var: var.to_owned(),
        })
    }

    /// A duration such as `250ms`, `30s`, `5m`, `2h` or a plain number of seconds.
    pub fn duration_or(&self, var: &str, default: Duration) -> Result<Duration, ConfigError> {
        match self.raw(var) {
            None => Ok(default),
            Some(value) => parse_duration(&value).map_err(|reason| ConfigError::Invalid {
                var: var.to_owned(),
                reason,
            }),
        }
    }

    /// A secret: kept out of Debug output and logs.
    pub fn secret(&self, var: &str) -> Option<SecretString> {
        self.raw(var).map(SecretString::from)
    }

    /// A value that must not be printed (a URL with a password, say), with a default.
    pub fn secret_or(&self, var: &str, default: &str) -> SecretString {
        SecretString::from(self.raw(var).unwrap_or_else(|| default.to_owned()))
    }
}

pub fn parse_duration(value: &str) -> Result<Duration, String> {
    let value = value.trim();
    let (number, unit) = match value.find(|c: char| !c.is_ascii_digit() && c != '.') {
        Some(i) => value.split_at(i),
        None => (value, "s"),
    };
    let n: f64 = number
        .parse()
        .map_err(|_| format!("{value:?} is not a duration like 250ms, 30s, 5m, 2h or 35d"))?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        "d" => n * 86400.0,
        _ => {
            return Err(format!(
                "{value:?} has unknown unit {unit:?}; use ms, s, m, h or d"
            ));
        }
    };
    if !secs.is_finite() || secs < 0.0 {
        return Err(format!("{value:?} is not a non-negative duration"));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// Settings every service process shares.
#[derive(Debug, Clone)]
pub struct Settings {
    pub database_url: SecretString,
    pub database_max_connections: u32,
    pub nats_url: String,
    /// TLS (`NATS_CA`) and the service's credential (`NATS_USER`, `NATS_PASSWORD`);
    /// plain text and no user when none is set.
    pub nats_access: crate::bus::NatsAccess,
    /// Subject and stream prefix; empty in production.
    pub nats_prefix: String,
    /// JetStream stream replicas (3 in a production cluster).
    pub stream_replicas: usize,
    pub http_addr: SocketAddr,
    /// Health, readiness and metrics (kept off the API port).
    pub admin_addr: SocketAddr,
    /// How long a stopping process may take to drain in-flight work.
    pub shutdown_grace: Duration,
    /// The default business time zone (cities without their own).
    pub time_zone: chrono_tz::Tz,
    /// Deliveries a message gets before it is given up as a dead letter.
    pub max_deliveries: i64,
    /// How long the inbox keys and the published outbox rows are kept.
    pub retention: crate::retention::Retention,
    /// The most bytes a stream keeps (`NATS_STREAM_MAX_BYTES`); a full stream refuses
    /// publishes (the outboxes hold them) rather than drop what is unread.
    pub stream_max_bytes: i64,
}

pub const DEFAULT_DATABASE_URL: &str = "postgres://postgres@127.0.0.1:5432/renewal";
pub const DEFAULT_NATS_URL: &str = "nats://127.0.0.1:4222";

impl Settings {
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from(&Env::process())
    }

    pub fn from<F: Fn(&str) -> Option<String>>(env: &Env<F>) -> Result<Self, ConfigError> {
        let nats_prefix: String = env.or("NATS_PREFIX", String::new())?;
        renewal_contract::Subjects::new(&nats_prefix).map_err(|e| ConfigError::Invalid {
            var: "NATS_PREFIX".into(),
            reason: e.to_string(),
        })?;
        let database_url = env.secret_or("DATABASE_URL", DEFAULT_DATABASE_URL);
        {
            use secrecy::ExposeSecret;
            let url = database_url.expose_secret();
            if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
                return Err(ConfigError::Invalid {
                    var: "DATABASE_URL".into(),
                    reason: "must start with postgres:// or postgresql://".into(),
                });
            }
        }
        let nats_url: String = env.or("NATS_URL", DEFAULT_NATS_URL.to_owned())?;
        // One server, or the servers of a cluster, comma-separated.
        if !nats_url
            .split(',')
            .all(|u| u.trim().starts_with("nats://") || u.trim().starts_with("tls://"))
        {
            return Err(ConfigError::Invalid {
                var: "NATS_URL".into(),
                reason: format!("each server must start with nats:// or tls:// (got {nats_url:?})"),
            });
        }
        let nats_access = nats_access(env)?;
        let stream_replicas = env.or("NATS_STREAM_REPLICAS", 1usize)?;
        if !(1..=5).contains(&stream_replicas) {
            return Err(ConfigError::Invalid {
                var: "NATS_STREAM_REPLICAS".into(),
                reason: format!("must be 1 to 5 (got {stream_replicas})"),
            });
        }
        Ok(Settings {
            database_url,
            database_max_connections: env.or("DATABASE_MAX_CONNECTIONS", 10u32)?,
            nats_url,
            nats_access,
            nats_prefix,
            stream_replicas,
            http_addr: env.or("HTTP_ADDR", SocketAddr::from(([0, 0, 0, 0], 8080)))?,
            admin_addr: env.or("ADMIN_ADDR", SocketAddr::from(([0, 0, 0, 0], 9090)))?,
            shutdown_grace: env.duration_or("SHUTDOWN_GRACE", Duration::from_secs(20))?,
            time_zone: env.or("TIME_ZONE", chrono_tz::Asia::Shanghai)?,
            retention: retention(env)?,
            stream_max_bytes: {
                let n: i64 = env.or("NATS_STREAM_MAX_BYTES", crate::bus::STREAM_MAX_BYTES)?;
                if n < 1 << 20 {
                    return Err(ConfigError::Invalid {
                        var: "NATS_STREAM_MAX_BYTES".into(),
                        reason: format!("must be at least 1 MiB (got {n})"),
                    });
                }
                n
            },
            max_deliveries: {
                let n: i64 = env.or("MAX_DELIVERIES", 10)?;
                if !(2..=1000).contains(&n) {
                    return Err(ConfigError::Invalid {
                        var: "MAX_DELIVERIES".into(),
                        reason: format!("must be 2 to 1000 (got {n})"),
                    });
                }
                n
            },
        })
    }
}

/// `NATS_CA` (a readable PEM file), `NATS_USER` and `NATS_PASSWORD` (both or neither).
pub fn nats_access<F: Fn(&str) -> Option<String>>(
    env: &Env<F>,
) -> Result<crate::bus::NatsAccess, ConfigError> {
    let ca = match env.optional::<String>("NATS_CA")? {
        None => None,
        Some(path) => {
            let pem = std::fs::read_to_string(&path).map_err(|e| ConfigError::Invalid {
                var: "NATS_CA".into(),
                reason: format!("cannot read {path:?}: {e}"),
            })?;
            if !pem.contains("-----BEGIN CERTIFICATE-----") {
                return Err(ConfigError::Invalid {
                    var: "NATS_CA".into(),
                    reason: format!("{path:?} holds no PEM certificate"),
                });
            }
            Some(std::path::PathBuf::from(path))
        }
    };
    let user = match (
        env.optional::<String>("NATS_USER")?,
        env.secret("NATS_PASSWORD"),
    ) {
        (None, None) => None,
        (Some(name), Some(password)) => {
            if !renewal_contract::permissions::valid_user(&name) {
                return Err(ConfigError::Invalid {
                    var: "NATS_USER".into(),
                    reason: format!("{name:?} must be ASCII letters, digits, '-' or '_'"),
                });
            }
            Some(crate::bus::NatsUser { name, password })
        }
        (Some(_), None) => {
            return Err(ConfigError::Missing {
                var: "NATS_PASSWORD".into(),
            });
        }
        (None, Some(_)) => {
            return Err(ConfigError::Missing {
                var: "NATS_USER".into(),
            });
        }
    };
    Ok(crate::bus::NatsAccess { ca, user })
}

/// `INBOX_RETENTION` (longer than the streams keep messages) and `OUTBOX_RETENTION`.
fn retention<F: Fn(&str) -> Option<String>>(
    env: &Env<F>,
) -> Result<crate::retention::Retention, ConfigError> {
    let default = crate::retention::Retention::default();
    let inbox = env.duration_or("INBOX_RETENTION", default.inbox)?;
    if inbox <= crate::retention::STREAM_MAX_AGE {
        return Err(ConfigError::Invalid {
            var: "INBOX_RETENTION".into(),
            reason: format!(
                "must be longer than the streams keep messages ({} days), or a redelivered message could act twice",
                crate::retention::STREAM_MAX_AGE.as_secs() / 86400
            ),
        });
    }
    let outbox = env.duration_or("OUTBOX_RETENTION", default.outbox)?;
    Ok(crate::retention::Retention { inbox, outbox })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(pairs: &[(&str, &str)]) -> Env<impl Fn(&str) -> Option<String>> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Env::from_fn(move |k| map.get(k).cloned())
    }

    #[test]
    fn defaults_point_at_the_loopback_servers() {
        let s = Settings::from(&env(&[])).expect("defaults are valid");
        use secrecy::ExposeSecret;
        assert_eq!(s.database_url.expose_secret(), DEFAULT_DATABASE_URL);
        assert_eq!(s.nats_url, DEFAULT_NATS_URL);
        assert_eq!(s.http_addr.port(), 8080);
        assert_eq!(s.time_zone, chrono_tz::Asia::Shanghai);
    }

    #[test]
    fn a_malformed_value_names_its_variable() {
        let err =
            Settings::from(&env(&[("HTTP_ADDR", "not-an-address")])).expect_err("must be refused");
        assert!(err.to_string().contains("HTTP_ADDR"), "{err}");
        let err = Settings::from(&env(&[("SHUTDOWN_GRACE", "ten")])).expect_err("must be refused");
        assert!(err.to_string().contains("SHUTDOWN_GRACE"), "{err}");
        let err = Settings::from(&env(&[("NATS_URL", "http://x")])).expect_err("must be refused");
        assert!(err.to_string().contains("NATS_URL"), "{err}");
        let err =
            Settings::from(&env(&[("TIME_ZONE", "Mars/Olympus")])).expect_err("must be refused");
        assert!(err.to_string().contains("TIME_ZONE"), "{err}");
        let err = Settings::from(&env(&[("NATS_PREFIX", "a.b")])).expect_err("must be refused");
        assert!(err.to_string().contains("NATS_PREFIX"), "{err}");
    }

    #[test]
    fn nats_credentials_come_in_pairs_and_the_ca_must_be_a_certificate() {
        let plain = Settings::from(&env(&[])).expect("defaults");
        assert!(plain.nats_access.ca.is_none() && plain.nats_access.user.is_none());
        let err = Settings::from(&env(&[("NATS_USER", "lists")])).expect_err("no password");
        assert!(err.to_string().contains("NATS_PASSWORD"), "{err}");
        let err = Settings::from(&env(&[("NATS_PASSWORD", "x")])).expect_err("no user");
        assert!(err.to_string().contains("NATS_USER"), "{err}");
        let err = Settings::from(&env(&[("NATS_USER", "a.b"), ("NATS_PASSWORD", "x")]))
            .expect_err("not a token");
        assert!(err.to_string().contains("NATS_USER"), "{err}");
        let err = Settings::from(&env(&[("NATS_CA", "/nonexistent/ca.crt")])).expect_err("no file");
        assert!(err.to_string().contains("NATS_CA"), "{err}");
        let with = Settings::from(&env(&[("NATS_USER", "lists"), ("NATS_PASSWORD", "secret")]))
            .expect("a user");
        assert!(
            !format!("{:?}", with.nats_access).contains("secret"),
            "kept out of logs"
        );
        assert_eq!(
            with.nats_access.user.map(|u| u.name).as_deref(),
            Some("lists")
        );
    }

    #[test]
    fn durations_take_units() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("30"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert!(parse_duration("5 fortnights").is_err());
    }
}
