//! Who is calling: every API request carries `Authorization: Bearer <JWT>` issued by
//! the insurer's identity provider (OIDC: Keycloak, Azure AD, ...). Tokens are checked
//! here, in the service itself: RS256 or ES256, `iss`, `aud`, `exp` and `nbf` with a
//! small leeway, keys from the provider's JWKS (fetched at start, fetched again when a
//! token names a key we do not know, at most every few seconds). Roles and scope come
//! from the token's claims (`roles`, `agent_code`, `branch_code`, `city_code`), never
//! from a request body.
//!
//! Verification is `jsonwebtoken` over ring. A token already verified is remembered
//! (by its exact text, until it expires), so the call center's pullers and the branch
//! staff, who send the same token with every request, pay for one signature check.
//! The memo is a plain bounded map: no crate in the workspace offers one and the
//! policy needed (drop everything when full, check `exp` on every hit) is a few lines.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use axum::extract::FromRequestParts;
use axum::http::StatusCode;
use axum::http::request::Parts;
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::{Deserialize, Serialize};

use crate::problem::Problem;

pub use crate::dev_issuer::DevIssuer;

/// The roles a token may name. Each works at one level of the organisation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Their own cases and their own owner-queue tasks.
    Agent,
    /// Their branch: its claims, agents and at-risk cases (read).
    Supervisor,
    /// Claims, declines and confirmations for their branch.
    BranchAdmin,
    /// The pool, research, city settings, plans and lists on demand for their city.
    CityAdmin,
    /// Everything, organisation import and plans included.
    HqAdmin,
    /// A machine client loading policies.
    Importer,
    /// Reports, never personal data.
    Analyst,
    /// A machine client working the campaign and HQ queues for its human agents.
    CallCenter,
    /// The audit log.
    Auditor,
}

impl Role {
    pub const ALL: [Role; 9] = [
        Role::Agent,
        Role::Supervisor,
        Role::BranchAdmin,
        Role::CityAdmin,
        Role::HqAdmin,
        Role::Importer,
        Role::Analyst,
        Role::CallCenter,
        Role::Auditor,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Agent => "agent",
            Role::Supervisor => "supervisor",
            Role::BranchAdmin => "branch_admin",
            Role::CityAdmin => "city_admin",
            Role::HqAdmin => "hq_admin",
            Role::Importer => "importer",
            Role::Analyst => "analyst",
            Role::CallCenter => "call_center",
            Role::Auditor => "auditor",
        }
    }

    pub fn parse(text: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|r| r.as_str() == text)
    }

    /// The part of the organisation the role reaches.
    pub fn level(self) -> Level {
        match self {
            Role::Agent => Level::Agent,
            Role::Supervisor | Role::BranchAdmin => Level::Branch,
            Role::CityAdmin => Level::City,
            Role::HqAdmin | Role::Importer | Role::Analyst | Role::CallCenter | Role::Auditor => {
                Level::Everywhere
            }
        }
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    Agent,
    Branch,
    City,
    Everywhere,
}

/// What a request acts on, as far as scope goes: the agent, branch and city it
/// belongs to. A field left `None` cannot be reached by a role of that level.
#[derive(Debug, Clone, Copy, Default)]
pub struct Scope<'a> {
    pub agent: Option<&'a str>,
    pub branch: Option<&'a str>,
    pub city: Option<&'a str>,
}

impl<'a> Scope<'a> {
    pub fn branch(branch: &'a str, city: Option<&'a str>) -> Scope<'a> {
        Scope {
            agent: None,
            branch: Some(branch),
            city,
        }
    }

    pub fn city(city: &'a str) -> Scope<'a> {
        Scope {
            city: Some(city),
            ..Scope::default()
        }
    }
}

/// The verified caller of a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// The token's `sub`: who, for the audit log.
    pub subject: String,
    pub roles: Vec<Role>,
    pub agent_code: Option<String>,
    pub branch_code: Option<String>,
    pub city_code: Option<String>,
}

impl Caller {
    pub fn has(&self, role: Role) -> bool {
        self.roles.contains(&role)
    }

    /// Who reads the season's reports, and in what scope: analysts and HQ any city or
    /// branch they name; a city's admin their city, a branch's supervisor and staff
    /// their branch (the filter is set for them; naming another is 403 `out_of_scope`).
    pub fn scope_report(
        &self,
        city: &mut Option<String>,
        branch: &mut Option<String>,
    ) -> Result<Role, Problem> {
        const READERS: &[Role] = &[
            Role::Analyst,
            Role::HqAdmin,
            Role::CityAdmin,
            Role::Supervisor,
            Role::BranchAdmin,
        ];
        let role = self.require(READERS)?;
        let (filter, mine) = match role {
            Role::CityAdmin => (city, &self.city_code),
            Role::Supervisor | Role::BranchAdmin => (branch, &self.branch_code),
            _ => return Ok(role),
        };
        let mine = mine.clone().unwrap_or_default();
        match filter {
            Some(given) if *given != mine => Err(Problem::new(
                axum::http::StatusCode::FORBIDDEN,
                "out_of_scope",
                "this is outside your branch or city",
            )),
            _ => {
                *filter = Some(mine);
                Ok(role)
            }
        }
    }

    /// The role the audit log names: the first one the token lists.
    pub fn main_role(&self) -> &'static str {
        self.roles.first().map_or("none", |r| r.as_str())
    }

    /// Whether `role`, if the caller holds it, reaches `target`.
    pub fn reaches(&self, role: Role, target: Scope<'_>) -> bool {
        fn same(mine: &Option<String>, theirs: Option<&str>) -> bool {
            matches!((mine, theirs), (Some(m), Some(t)) if m == t)
        }
        self.has(role)
            && match role.level() {
                Level::Everywhere => true,
                Level::City => same(&self.city_code, target.city),
                Level::Branch => same(&self.branch_code, target.branch),
                Level::Agent => same(&self.agent_code, target.agent),
            }
    }

    /// The first of `roles` the caller holds that reaches `target`; 403 otherwise,
    /// saying which roles the route is for, or only that the target is out of the
    /// caller's scope (never whose it is).
    pub fn authorize(&self, roles: &[Role], target: Scope<'_>) -> Result<Role, Problem> {
        if let Some(role) = roles.iter().copied().find(|r| self.reaches(*r, target)) {
            return Ok(role);
        }
        if roles.iter().any(|r| self.has(*r)) {
            Err(Problem::new(
                StatusCode::FORBIDDEN,
                "out_of_scope",
                "this is outside your agent code, branch or city",
            ))
        } else {
            Err(forbidden_role(roles))
        }
    }

    /// The caller holds one of `roles` (for routes whose scope is checked later, or
    /// that have none).
    pub fn require(&self, roles: &[Role]) -> Result<Role, Problem> {
        roles
            .iter()
            .copied()
            .find(|r| self.has(*r))
            .ok_or_else(|| forbidden_role(roles))
    }

    /// A body field naming someone must agree with the token (403 otherwise).
    pub fn must_match(
        &self,
        field: &str,
        given: &str,
        mine: &Option<String>,
    ) -> Result<(), Problem> {
        match mine {
            Some(m) if m == given => Ok(()),
            _ => Err(Problem::new(
                StatusCode::FORBIDDEN,
                "identity_mismatch",
                format!("{field} does not match your token"),
            )),
        }
    }
}

fn forbidden_role(roles: &[Role]) -> Problem {
    let names: Vec<&str> = roles.iter().map(|r| r.as_str()).collect();
    Problem::new(
        StatusCode::FORBIDDEN,
        "forbidden_role",
        format!("this route is for: {}", names.join(", ")),
    )
}

/// Why a token was not accepted (answered 401, nothing read or written).
#[derive(Debug, Clone, thiserror::Error)]
pub enum AuthError {
    #[error("no bearer token: send Authorization: Bearer <token>")]
    Missing,
    #[error("the token is malformed: {0}")]
    Malformed(String),
    #[error("the token has expired")]
    Expired,
    #[error("the token is not valid yet")]
    NotYetValid,
    #[error("the token is from another issuer")]
    WrongIssuer,
    #[error("the token is for another audience")]
    WrongAudience,
    #[error("the token's signature does not verify")]
    BadSignature,
    #[error("the token is signed with an unknown key")]
    UnknownKey,
    #[error("the token's algorithm is not accepted (RS256 or ES256)")]
    Algorithm,
    #[error("the identity provider's keys cannot be fetched: {0}")]
    Jwks(String),
}

impl From<AuthError> for Problem {
    fn from(e: AuthError) -> Problem {
        if let AuthError::Jwks(_) = &e {
            return Problem::unavailable(&e);
        }
        Problem::new(StatusCode::UNAUTHORIZED, "unauthenticated", e.to_string())
    }
}

impl From<jsonwebtoken::errors::Error> for AuthError {
    fn from(e: jsonwebtoken::errors::Error) -> AuthError {
        use jsonwebtoken::errors::ErrorKind as K;
        match e.kind() {
            K::ExpiredSignature => AuthError::Expired,
            K::ImmatureSignature => AuthError::NotYetValid,
            K::InvalidIssuer => AuthError::WrongIssuer,
            K::InvalidAudience => AuthError::WrongAudience,
            K::InvalidSignature => AuthError::BadSignature,
            K::InvalidAlgorithm => AuthError::Algorithm,
            other => AuthError::Malformed(format!("{other:?}")),
        }
    }
}

/// The claims we read.
#[derive(Debug, Deserialize)]
struct Claims {
    sub: String,
    exp: u64,
    #[serde(default)]
    roles: Vec<String>,
    agent_code: Option<String>,
    branch_code: Option<String>,
    city_code: Option<String>,
}

/// Where the signing keys come from.
enum KeySource {
    /// The provider's JWKS endpoint.
    Remote {
        url: String,
        http: reqwest::Client,
        last_fetch: tokio::sync::Mutex<Option<Instant>>,
    },
    /// The development issuer's key, held in the process.
    Local,
}

/// Fetch the JWKS again for an unknown key at most this often.
const REFETCH_EVERY: Duration = Duration::from_secs(10);
/// Tokens remembered once verified.
const MEMO_CAPACITY: usize = 8192;

struct Inner {
    keys: RwLock<HashMap<String, (DecodingKey, Algorithm)>>,
    rs256: Validation,
    es256: Validation,
    source: KeySource,
    memo: Mutex<HashMap<String, (Arc<Caller>, u64)>>,
    leeway: u64,
}

/// Verifies bearer tokens for one issuer and audience.
#[derive(Clone)]
pub struct Authenticator {
    inner: Arc<Inner>,
}

impl Authenticator {
    fn with_source(issuer: &str, audience: &str, source: KeySource, leeway: Duration) -> Self {
        let validation = |alg| {
            let mut v = Validation::new(alg);
            v.set_issuer(&[issuer]);
            v.set_audience(&[audience]);
            v.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
            v.validate_nbf = true;
            v.leeway = leeway.as_secs();
            v
        };
        Authenticator {
            inner: Arc::new(Inner {
                keys: RwLock::new(HashMap::new()),
                rs256: validation(Algorithm::RS256),
                es256: validation(Algorithm::ES256),
                source,
                memo: Mutex::new(HashMap::new()),
                leeway: leeway.as_secs(),
            }),
        }
    }

    /// For the insurer's identity provider: keys fetched now from `jwks_url`.
    pub async fn provider(
        issuer: &str,
        audience: &str,
        jwks_url: &str,
        leeway: Duration,
    ) -> Result<Self, AuthError> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .build()
            .map_err(|e| AuthError::Jwks(e.to_string()))?;
        let source = KeySource::Remote {
            url: jwks_url.to_owned(),
            http,
            last_fetch: tokio::sync::Mutex::new(None),
        };
        let auth = Authenticator::with_source(issuer, audience, source, leeway);
        // A provider that is away at start is asked again when the first token comes.
        if let Err(e) = auth.refetch(None).await {
            tracing::warn!(error = %e, "identity provider keys not fetched yet");
        }
        Ok(auth)
    }

    /// For tokens of the development issuer (its key is in the process already).
    pub fn development(issuer: &DevIssuer) -> Self {
        let auth = Authenticator::with_source(
            issuer.issuer(),
            crate::dev_issuer::AUDIENCE,
            KeySource::Local,
            Duration::from_secs(30),
        );
        auth.install(&issuer.jwks());
        auth
    }

    /// Builds the authenticator the configuration asks for.
    pub async fn from_config(config: &AuthConfig) -> Result<(Self, Option<DevIssuer>), AuthError> {
        match config {
            AuthConfig::Provider {
                issuer,
                audience,
                jwks_url,
                leeway,
            } => Ok((
                Authenticator::provider(issuer, audience, jwks_url, *leeway).await?,
                None,
            )),
            AuthConfig::Development { dir } => {
                let dev = DevIssuer::load_or_create(dir)
                    .map_err(|e| AuthError::Jwks(format!("development issuer: {e}")))?;
                Ok((Authenticator::development(&dev), Some(dev)))
            }
        }
    }

    fn install(&self, set: &JwkSet) {
        let mut keys = self.inner.keys.write().unwrap_or_else(|e| e.into_inner());
        for jwk in &set.keys {
            let Some(kid) = jwk.common.key_id.clone() else {
                continue;
            };
            let alg = match &jwk.algorithm {
                jsonwebtoken::jwk::AlgorithmParameters::RSA(_) => Algorithm::RS256,
                jsonwebtoken::jwk::AlgorithmParameters::EllipticCurve(_) => Algorithm::ES256,
                _ => continue,
            };
            if let Ok(key) = DecodingKey::from_jwk(jwk) {
                keys.insert(kid, (key, alg));
            }
        }
    }

    /// Fetches the provider's keys again (unless `kid` turned up meanwhile, or they
    /// were fetched moments ago).
    async fn refetch(&self, kid: Option<&str>) -> Result<(), AuthError> {
        let KeySource::Remote {
            url,
            http,
            last_fetch,
        } = &self.inner.source
        else {
            return Ok(());
        };
        let mut last = last_fetch.lock().await;
        if let Some(kid) = kid
            && (self.known(kid) || last.is_some_and(|t| t.elapsed() < REFETCH_EVERY))
        {
            return Ok(());
        }
        *last = Some(Instant::now());
        let set: JwkSet = http
            .get(url)
            .send()
            .await
            .and_then(|r| r.error_for_status())
            .map_err(|e| AuthError::Jwks(e.to_string()))?
            .json()
            .await
            .map_err(|e| AuthError::Jwks(e.to_string()))?;
        self.install(&set);
        tracing::info!(keys = set.keys.len(), "identity provider keys fetched");
        Ok(())
    }

    fn known(&self, kid: &str) -> bool {
        let keys = self.inner.keys.read().unwrap_or_else(|e| e.into_inner());
        keys.contains_key(kid)
    }

    /// The caller a bearer token stands for.
    pub async fn verify(&self, token: &str) -> Result<Arc<Caller>, AuthError> {
        let now = jsonwebtoken::get_current_timestamp();
        if let Some(caller) = self.remembered(token, now) {
            return Ok(caller);
        }
        let header = jsonwebtoken::decode_header(token)?;
        let kid = header.kid.ok_or(AuthError::UnknownKey)?;
        if !self.known(&kid) {
            self.refetch(Some(&kid)).await?;
        }
        let claims = {
            let keys = self.inner.keys.read().unwrap_or_else(|e| e.into_inner());
            let (key, alg) = keys.get(&kid).ok_or(AuthError::UnknownKey)?;
            if header.alg != *alg {
                return Err(AuthError::Algorithm);
            }
            let validation = match alg {
                Algorithm::ES256 => &self.inner.es256,
                _ => &self.inner.rs256,
            };
            jsonwebtoken::decode::<Claims>(token, key, validation)?.claims
        };
        let caller = Arc::new(Caller {
            subject: claims.sub,
            roles: claims.roles.iter().filter_map(|r| Role::parse(r)).collect(),
            agent_code: claims.agent_code,
            branch_code: claims.branch_code,
            city_code: claims.city_code,
        });
        self.remember(token, &caller, claims.exp);
        Ok(caller)
    }

    fn remembered(&self, token: &str, now: u64) -> Option<Arc<Caller>> {
        let memo = self.inner.memo.lock().unwrap_or_else(|e| e.into_inner());
        let (caller, exp) = memo.get(token)?;
        (now <= exp + self.inner.leeway).then(|| caller.clone())
    }

    fn remember(&self, token: &str, caller: &Arc<Caller>, exp: u64) {
        let mut memo = self.inner.memo.lock().unwrap_or_else(|e| e.into_inner());
        if memo.len() >= MEMO_CAPACITY {
            memo.clear();
        }
        memo.insert(token.to_owned(), (caller.clone(), exp));
    }
}

/// How the process learns who calls it.
#[derive(Debug, Clone)]
pub enum AuthConfig {
    /// The insurer's identity provider.
    Provider {
        issuer: String,
        audience: String,
        jwks_url: String,
        leeway: Duration,
    },
    /// The development issuer: a key kept in `dir`, for a laptop. Refused when
    /// `RENEWAL_ENV=production`.
    Development { dir: std::path::PathBuf },
}

impl AuthConfig {
    pub fn from_env<F: Fn(&str) -> Option<String>>(
        env: &crate::config::Env<F>,
    ) -> Result<AuthConfig, crate::config::ConfigError> {
        use crate::config::ConfigError;
        let production = env.or("RENEWAL_ENV", String::from("development"))? == "production";
        let issuer: Option<String> = env.optional("AUTH_ISSUER")?;
        let dev: Option<String> = env.optional("AUTH_DEV")?;
        if let Some(dev) = dev.filter(|d| d != "off") {
            if dev != "on" {
                return Err(ConfigError::Invalid {
                    var: "AUTH_DEV".into(),
                    reason: "on or off".into(),
                });
            }
            if production || issuer.is_some() {
                return Err(ConfigError::Invalid {
                    var: "AUTH_DEV".into(),
                    reason: "the development issuer is for a laptop: it cannot run with \
                             RENEWAL_ENV=production or beside AUTH_ISSUER"
                        .into(),
                });
            }
            return Ok(AuthConfig::Development {
                dir: crate::dev_issuer::state_dir(env).join("dev-issuer"),
            });
        }
        let issuer = issuer.ok_or_else(|| ConfigError::Invalid {
            var: "AUTH_ISSUER".into(),
            reason: "no identity provider: set AUTH_ISSUER, AUTH_AUDIENCE and AUTH_JWKS_URL \
                     (or AUTH_DEV=on on a laptop)"
                .into(),
        })?;
        Ok(AuthConfig::Provider {
            issuer,
            audience: env.required("AUTH_AUDIENCE")?,
            jwks_url: env.required("AUTH_JWKS_URL")?,
            leeway: env.duration_or("AUTH_LEEWAY", Duration::from_secs(30))?,
        })
    }
}

/// What the edge found out about a request's caller (set by [`crate::http`]'s layer).
#[derive(Clone)]
pub struct Identified(pub Result<Arc<Caller>, AuthError>);

impl<S: Send + Sync> FromRequestParts<S> for Caller {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        match parts.extensions.get::<Identified>() {
            Some(Identified(Ok(caller))) => Ok(Caller::clone(caller)),
            Some(Identified(Err(e))) => Err(e.clone().into()),
            None => Err(AuthError::Missing.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caller(roles: &[Role]) -> Caller {
        Caller {
            subject: "u1".into(),
            roles: roles.to_vec(),
            agent_code: Some("SH01-A01".into()),
            branch_code: Some("SH01".into()),
            city_code: Some("310000".into()),
        }
    }

    #[test]
    fn a_role_reaches_only_its_own_part_of_the_organisation() {
        let admin = caller(&[Role::BranchAdmin]);
        let roles = [Role::BranchAdmin, Role::HqAdmin];
        assert!(admin.authorize(&roles, Scope::branch("SH01", None)).is_ok());
        let other = admin.authorize(&roles, Scope::branch("SH02", Some("310000")));
        assert_eq!(other.expect_err("another branch").code, "out_of_scope");
        let city = caller(&[Role::CityAdmin]);
        assert!(
            city.authorize(&[Role::CityAdmin], Scope::city("310000"))
                .is_ok()
        );
        assert!(
            city.authorize(&[Role::CityAdmin], Scope::city("110000"))
                .is_err()
        );
        let analyst = caller(&[Role::Analyst]);
        let refused = analyst.authorize(&roles, Scope::default());
        assert_eq!(refused.expect_err("wrong role").code, "forbidden_role");
        assert!(
            caller(&[Role::HqAdmin])
                .authorize(&roles, Scope::default())
                .is_ok()
        );
    }

    #[tokio::test]
    async fn tokens_verify_against_their_issuer_and_nothing_else() {
        let dev = DevIssuer::ephemeral("renewal-dev").expect("key");
        let other = DevIssuer::ephemeral("someone-else").expect("key");
        let auth = Authenticator::development(&dev);
        let grant = crate::dev_issuer::Grant::role(Role::BranchAdmin).branch("SH01");
        let token = dev.token(&grant, Duration::from_secs(60)).expect("signs");
        let who = auth.verify(&token).await.expect("verifies");
        assert_eq!(who.roles, vec![Role::BranchAdmin]);
        assert_eq!(who.branch_code.as_deref(), Some("SH01"));
        // Memoised: the same answer again.
        assert_eq!(auth.verify(&token).await.expect("again"), who);
        let foreign = other.token(&grant, Duration::from_secs(60)).expect("signs");
        assert!(auth.verify(&foreign).await.is_err());
        let expired = dev.token_at(&grant, -3600, 120).expect("signs");
        assert!(matches!(
            auth.verify(&expired).await,
            Err(AuthError::Expired)
        ));
        let mut tampered = token.clone();
        tampered.pop();
        tampered.push(if token.ends_with('A') { 'B' } else { 'A' });
        assert!(auth.verify(&tampered).await.is_err());
        assert!(matches!(
            auth.verify("not.a.token").await,
            Err(AuthError::Malformed(_))
        ));
    }
}
