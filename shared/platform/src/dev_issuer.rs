//! The development issuer: so the demo, the tests and `renewal run` on a laptop need
//! no identity provider, the process can issue and verify its own tokens. Its ES256
//! key (ring's P-256, PKCS#8) is generated once into the local state folder
//! (`$RENEWAL_STATE_DIR/dev-issuer/key.p8`, else `$XDG_STATE_HOME/renewal/...`, else
//! `~/.local/state/renewal/...`), so every process on the machine and `renewal token`
//! share it; the process serves its public half at `/.well-known/jwks.json`. Off
//! unless `AUTH_DEV=on`, and refused beside `RENEWAL_ENV=production`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use ring::rand::SystemRandom;
use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair};
use serde::Serialize;

use crate::identity::Role;

/// The issuer name of the development issuer's tokens.
pub const ISSUER: &str = "renewal-dev";
/// The audience its tokens are for.
pub const AUDIENCE: &str = "renewal";

#[derive(Debug, thiserror::Error)]
pub enum DevIssuerError {
    #[error("{path}: {source}")]
    File {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the key cannot be made or read: {0}")]
    Key(String),
    #[error("signing: {0}")]
    Sign(#[from] jsonwebtoken::errors::Error),
}

/// The local state folder the scripts and processes share.
pub fn state_dir<F: Fn(&str) -> Option<String>>(env: &crate::config::Env<F>) -> PathBuf {
    if let Ok(Some(dir)) = env.optional::<String>("RENEWAL_STATE_DIR") {
        return PathBuf::from(dir);
    }
    if let Ok(Some(dir)) = env.optional::<String>("XDG_STATE_HOME") {
        return Path::new(&dir).join("renewal");
    }
    let home = env
        .or("HOME", String::from("."))
        .unwrap_or_else(|_| ".".into());
    Path::new(&home).join(".local/state/renewal")
}

/// Who a token is for: its roles and scope.
#[derive(Debug, Clone, Serialize)]
pub struct Grant {
    pub sub: String,
    pub roles: Vec<Role>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub agent_code: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub branch_code: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub city_code: Option<String>,
}

impl Grant {
    pub fn role(role: Role) -> Grant {
        Grant {
            sub: format!("dev-{role}"),
            roles: vec![role],
            agent_code: None,
            branch_code: None,
            city_code: None,
        }
    }

    pub fn agent(mut self, code: &str) -> Grant {
        self.agent_code = Some(code.to_owned());
        self.sub = format!("dev-{code}");
        self
    }

    pub fn branch(mut self, code: &str) -> Grant {
        self.branch_code = Some(code.to_owned());
        self
    }

    pub fn city(mut self, code: &str) -> Grant {
        self.city_code = Some(code.to_owned());
        self
    }
}

#[derive(Serialize)]
struct Claims<'a> {
    iss: &'a str,
    aud: &'a str,
    iat: i64,
    nbf: i64,
    exp: i64,
    #[serde(flatten)]
    grant: &'a Grant,
}

pub struct DevIssuer {
    issuer: String,
    kid: String,
    key: EncodingKey,
    jwk: serde_json::Value,
}

impl DevIssuer {
    /// A key of its own, kept in memory only (tests, the demo).
    pub fn ephemeral(issuer: &str) -> Result<DevIssuer, DevIssuerError> {
        DevIssuer::from_pkcs8(issuer, &generate()?)
    }

    /// The machine's development key: read from `dir`, or made there first. Replicas
    /// starting together agree: the key is written aside and linked into place, and a
    /// process that loses the race reads the winner's.
    pub fn load_or_create(dir: &Path) -> Result<DevIssuer, DevIssuerError> {
        let file = |source| DevIssuerError::File {
            path: dir.to_owned(),
            source,
        };
        let path = dir.join("key.p8");
        if !path.exists() {
            std::fs::create_dir_all(dir).map_err(file)?;
            let aside = dir.join(format!("key.p8.{}", std::process::id()));
            write_private(&aside, &generate()?).map_err(file)?;
            let linked = std::fs::hard_link(&aside, &path);
            let _ = std::fs::remove_file(&aside);
            match linked {
                Ok(()) => tracing::info!(path = %path.display(), "development issuer key made"),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(file(e)),
            }
        }
        let der = std::fs::read(&path).map_err(file)?;
        DevIssuer::from_pkcs8(ISSUER, &der)
    }

    fn from_pkcs8(issuer: &str, der: &[u8]) -> Result<DevIssuer, DevIssuerError> {
        let rng = SystemRandom::new();
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, der, &rng)
            .map_err(|e| DevIssuerError::Key(e.to_string()))?;
        // An uncompressed P-256 point: 0x04, then x and y, 32 bytes each.
        let point = pair.public_key().as_ref();
        if point.len() != 65 {
            return Err(DevIssuerError::Key("unexpected public key".into()));
        }
        let digest = ring::digest::digest(&ring::digest::SHA256, point);
        let kid = hex::encode(&digest.as_ref()[..8]);
        let jwk = serde_json::json!({
            "kty": "EC", "crv": "P-256", "use": "sig", "alg": "ES256", "kid": kid,
            "x": URL_SAFE_NO_PAD.encode(&point[1..33]),
            "y": URL_SAFE_NO_PAD.encode(&point[33..65]),
        });
        Ok(DevIssuer {
            issuer: issuer.to_owned(),
            kid,
            key: EncodingKey::from_ec_der(der),
            jwk,
        })
    }

    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// The public key as a JWKS document.
    pub fn jwks_json(&self) -> serde_json::Value {
        serde_json::json!({ "keys": [self.jwk] })
    }

    pub fn jwks(&self) -> JwkSet {
        serde_json::from_value(self.jwks_json()).unwrap_or(JwkSet { keys: Vec::new() })
    }

    /// A token for `grant`, valid for `ttl` from now.
    pub fn token(&self, grant: &Grant, ttl: Duration) -> Result<String, DevIssuerError> {
        self.token_at(grant, 0, ttl.as_secs() as i64)
    }

    /// A token issued `offset_s` seconds from now (negative: in the past), valid for
    /// `ttl_s` seconds: tests make expired tokens with it.
    pub fn token_at(
        &self,
        grant: &Grant,
        offset_s: i64,
        ttl_s: i64,
    ) -> Result<String, DevIssuerError> {
        let iat = jsonwebtoken::get_current_timestamp() as i64 + offset_s;
        let claims = Claims {
            iss: &self.issuer,
            aud: AUDIENCE,
            iat,
            nbf: iat,
            exp: iat + ttl_s,
            grant,
        };
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(self.kid.clone());
        Ok(jsonwebtoken::encode(&header, &claims, &self.key)?)
    }
}

fn generate() -> Result<Vec<u8>, DevIssuerError> {
    let rng = SystemRandom::new();
    EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
        .map(|doc| doc.as_ref().to_vec())
        .map_err(|e| DevIssuerError::Key(e.to_string()))
}

/// Writes a new file only its owner may read (0600); an existing file is left alone
/// (`AlreadyExists`), so two processes making the same secret keep the first.
pub fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options.open(path)?.write_all(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_machine_key_is_made_once_and_shared() {
        let dir = std::env::temp_dir().join(format!("renewal-dev-{}", uuid::Uuid::new_v4()));
        let a = DevIssuer::load_or_create(&dir).expect("made");
        let b = DevIssuer::load_or_create(&dir).expect("read");
        assert_eq!(a.kid, b.kid);
        assert_eq!(a.jwks_json(), b.jwks_json());
        let _ = std::fs::remove_dir_all(dir);
    }
}
