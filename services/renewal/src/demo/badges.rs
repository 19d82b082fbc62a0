//! The tokens the demo's people carry, as they would get them from the insurer's
//! identity provider: minted by the simulation's development issuer for each role
//! and scope the first time it is needed, then kept.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use renewal_platform::Role;
use renewal_platform::dev_issuer::Grant;
use renewal_platform::identity::DevIssuer;

use crate::simulation::SimError;

pub struct Badges {
    issuer: Arc<DevIssuer>,
    minted: Mutex<HashMap<String, String>>,
}

impl Badges {
    pub fn new(issuer: Arc<DevIssuer>) -> Badges {
        Badges {
            issuer,
            minted: Mutex::new(HashMap::new()),
        }
    }

    fn badge(&self, key: String, grant: impl FnOnce() -> Grant) -> Result<String, SimError> {
        let mut minted = self.minted.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(token) = minted.get(&key) {
            return Ok(token.clone());
        }
        let token = self
            .issuer
            .token(&grant(), Duration::from_secs(12 * 3600))
            .map_err(|e| SimError::Other(e.to_string()))?;
        minted.insert(key, token.clone());
        Ok(token)
    }

    /// A branch's staff, acting as its supervisor `{branch}-S01`.
    pub fn branch_admin(&self, branch: &str, city: &str) -> Result<String, SimError> {
        self.badge(format!("branch_admin {branch}"), || {
            Grant::role(Role::BranchAdmin)
                .agent(&format!("{branch}-S01"))
                .branch(branch)
                .city(city)
        })
    }

    /// A branch's manager (its supervisor `{branch}-S01`): approves discounts.
    pub fn supervisor(&self, branch: &str, city: &str) -> Result<String, SimError> {
        self.badge(format!("supervisor {branch}"), || {
            Grant::role(Role::Supervisor)
                .agent(&format!("{branch}-S01"))
                .branch(branch)
                .city(city)
        })
    }

    /// A city company's admin.
    pub fn city_admin(&self, city: &str) -> Result<String, SimError> {
        self.badge(format!("city_admin {city}"), || {
            let mut grant = Grant::role(Role::CityAdmin).city(city);
            grant.sub = format!("city-admin-{city}");
            grant
        })
    }

    /// An agent of a branch.
    pub fn agent(&self, code: &str, branch: &str, city: &str) -> Result<String, SimError> {
        self.badge(format!("agent {code}"), || {
            Grant::role(Role::Agent)
                .agent(code)
                .branch(branch)
                .city(city)
        })
    }

    /// The call center's machine client.
    pub fn call_center(&self) -> Result<String, SimError> {
        self.badge("call_center".into(), || Grant::role(Role::CallCenter))
    }
}
