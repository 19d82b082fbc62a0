//! The people of the branches and city companies, played over the real HTTP API:
//! each day they claim most of their list (naming the policy's own agent when they
//! can), decline a few, leave the rest to the pool; other branches take some pool
//! cases; research traces some untraceable policies; owners answer the T-5
//! confirmation (most confirm, some cannot renew, some do not answer). Every choice is
//! fixed by the seed and the policy number, so a case decides the same way each day.

use std::hash::{Hash, Hasher};
use std::sync::Arc;

use serde::Deserialize;

use super::badges::Badges;
use super::portfolio::{CITIES, City};
use crate::simulation::SimError;

#[derive(Debug, Deserialize)]
struct Claim {
    policy_no: String,
    city_code: String,
    branch_code: String,
    phase: String,
    credited_agent: String,
    owner_agent: Option<String>,
}

pub struct BranchStaff {
    http: reqwest::Client,
    base: String,
    seed: u64,
    /// Each person signs in as themselves: branch staff, city admins, owners.
    badges: Arc<Badges>,
}

/// How a person decides about one case at one step: a number in 0..100.
fn roll(seed: u64, policy_no: &str, step: &str) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    (seed, policy_no, step).hash(&mut h);
    h.finish() % 100
}

impl BranchStaff {
    pub fn new(base: String, seed: u64, badges: Arc<Badges>) -> Result<Self, SimError> {
        let http = reqwest::Client::builder()
            .timeout(std::time::Duration::from_secs(30))
            .build()
            .map_err(|e| SimError::Other(e.to_string()))?;
        Ok(BranchStaff {
            http,
            base,
            seed,
            badges,
        })
    }

    /// Every item of a list (claims, discount requests), page by page.
    async fn get<T: serde::de::DeserializeOwned>(
        &self,
        path: &str,
        token: &str,
    ) -> Result<Vec<T>, SimError> {
        #[derive(Deserialize)]
        struct Page<T> {
            items: Vec<T>,
            next_page_token: Option<String>,
        }
        let fail = |e: &dyn std::fmt::Display| SimError::Other(format!("GET {path}: {e}"));
        let sep = if path.contains('?') { '&' } else { '?' };
        let mut all = Vec::new();
        let mut next: Option<String> = None;
        loop {
            let mut url = format!("{}{path}{sep}page_size=1000", self.base);
            if let Some(token) = &next {
                url.push_str(&format!("&page_token={token}"));
            }
            let response = self
                .http
                .get(url)
                .bearer_auth(token)
                .send()
                .await
                .map_err(|e| fail(&e))?;
            if !response.status().is_success() {
                return Err(fail(&response.status()));
            }
            let page: Page<T> = response.json().await.map_err(|e| fail(&e))?;
            all.extend(page.items);
            next = page.next_page_token;
            if next.is_none() {
                return Ok(all);
            }
        }
    }

    /// Posts an action; a refusal (someone else was faster) is part of the day.
    async fn post(
        &self,
        path: &str,
        token: &str,
        body: serde_json::Value,
    ) -> Result<bool, SimError> {
        let response = self
            .http
            .post(format!("{}{path}", self.base))
            .bearer_auth(token)
            .json(&body)
            .send()
            .await
            .map_err(|e| SimError::Other(format!("POST {path}: {e}")))?;
        let status = response.status();
        if status.is_server_error() || status.as_u16() == 401 {
            return Err(SimError::Other(format!("POST {path}: {status}")));
        }
        Ok(status.is_success())
    }

    /// One working day of every branch and city company. On the first day of a long
    /// holiday each city company issues its lists on demand as well (their claim
    /// windows count the working days after the holiday).
    pub async fn work_day(&self, today: chrono::NaiveDate) -> Result<(), SimError> {
        let calendar = renewal_platform::holidays::Calendar::shared();
        if calendar.periods().iter().any(|p| p.first_day == today) {
            for city in CITIES {
                let token = self.badges.city_admin(city.code)?;
                let body = serde_json::json!({"city_code": city.code});
                self.post("/v1/lists:issue", &token, body).await?;
            }
        }
        for city in CITIES {
            for branch in city.branches {
                self.work_branch(city, branch).await?;
                let manager = self.badges.supervisor(branch, city.code)?;
                self.decide_discounts(&manager).await?;
            }
            self.work_city(city).await?;
            let general_manager = self.badges.city_admin(city.code)?;
            self.decide_discounts(&general_manager).await?;
        }
        Ok(())
    }

    /// The discount requests awaiting this approver: most approved, one in eight
    /// declined.
    async fn decide_discounts(&self, token: &str) -> Result<(), SimError> {
        #[derive(Deserialize)]
        struct Request {
            request_id: String,
            policy_no: String,
        }
        let requests: Vec<Request> = self.get("/v1/discounts", token).await?;
        for r in requests {
            let (verb, body) = if roll(self.seed, &r.policy_no, "discount decision") < 12 {
                (
                    "decline",
                    serde_json::json!({"reason": "the margin does not allow it"}),
                )
            } else {
                ("approve", serde_json::json!({}))
            };
            self.post(
                &format!("/v1/discounts/{}:{verb}", r.request_id),
                token,
                body,
            )
            .await?;
        }
        Ok(())
    }

    /// A branch's day: its list claimed, declined or left, second-assignment cases
    /// taken, and its owners answering the T-5 confirmation.
    async fn work_branch(&self, city: &City, branch: &str) -> Result<(), SimError> {
        let staff = self.badges.branch_admin(branch, city.code)?;
        for c in self
            .get::<Claim>(
                &format!("/v1/branches/{branch}/claims?state=pending"),
                &staff,
            )
            .await?
        {
            let r = roll(self.seed, &c.policy_no, &c.phase);
            let own_agent = c.credited_agent.starts_with(branch) && c.credited_agent != "CD02-A06";
            match c.phase.as_str() {
                "branch" if r < 75 => {
                    let owner = if own_agent {
                        c.credited_agent.clone()
                    } else {
                        format!("{branch}-A01")
                    };
                    self.claim(&c.policy_no, branch, &owner, &staff).await?;
                }
                "branch" if r < 80 => {
                    self.post(
                        &format!("/v1/claims/{}:decline", c.policy_no),
                        &staff,
                        serde_json::json!({"branch_code": branch, "by": format!("{branch}-S01"),
                            "reason": "customer moved to another city"}),
                    )
                    .await?;
                }
                "branch_reassign" if r < 50 => {
                    let owner = if c.owner_agent.as_deref() == Some(&format!("{branch}-A02")) {
                        format!("{branch}-A03")
                    } else {
                        format!("{branch}-A02")
                    };
                    self.claim(&c.policy_no, branch, &owner, &staff).await?;
                }
                _ => {}
            }
        }
        for c in self
            .get::<Claim>(
                &format!("/v1/branches/{branch}/claims?state=claimed"),
                &staff,
            )
            .await?
        {
            if c.phase != "confirming" {
                continue;
            }
            let Some(owner) = c.owner_agent.clone() else {
                continue;
            };
            let r = roll(self.seed, &c.policy_no, "confirming");
            let me = self.badges.agent(&owner, branch, city.code)?;
            if r < 85 {
                self.post(
                    &format!("/v1/cases/{}:confirm", c.policy_no),
                    &me,
                    serde_json::json!({"agent_code": owner}),
                )
                .await?;
            } else if r < 93 {
                self.post(
                    &format!("/v1/cases/{}:release", c.policy_no),
                    &me,
                    serde_json::json!({"agent_code": owner, "reason": "customer is shopping around"}),
                )
                .await?;
            }
        }
        Ok(())
    }

    /// A city company's day: branches take pool cases, research traces origins.
    async fn work_city(&self, city: &City) -> Result<(), SimError> {
        let city_admin = self.badges.city_admin(city.code)?;
        for c in self
            .get::<Claim>(&format!("/v1/cities/{}/pool", city.code), &city_admin)
            .await?
        {
            let r = roll(self.seed, &c.policy_no, &c.phase);
            let taker = city.branches[(r as usize) % city.branches.len()];
            if (c.phase == "pool" && r < 40) || (c.phase == "city_reassign" && r < 30) {
                let staff = self.badges.branch_admin(taker, city.code)?;
                self.claim(&c.policy_no, taker, &format!("{taker}-A04"), &staff)
                    .await?;
            }
        }
        for c in self
            .get::<Claim>(&format!("/v1/cities/{}/research", city.code), &city_admin)
            .await?
        {
            if roll(self.seed, &c.policy_no, "research") < 60 && c.city_code == city.code {
                self.post(
                    &format!("/v1/research/{}:resolve", c.policy_no),
                    &city_admin,
                    serde_json::json!({"branch_code": c.branch_code}),
                )
                .await?;
            }
        }
        Ok(())
    }

    async fn claim(
        &self,
        policy_no: &str,
        branch: &str,
        owner: &str,
        staff: &str,
    ) -> Result<bool, SimError> {
        self.post(
            &format!("/v1/claims/{policy_no}:claim"),
            staff,
            serde_json::json!({"branch_code": branch, "owner_agent": owner}),
        )
        .await
    }
}
