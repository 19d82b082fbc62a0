//! The people who make the calls, played over the real pull API: every simulated day
//! at [`OPENS`] the call center's agents work the campaign and HQ queues, each city
//! company its support queue, each owner their own queue and each branch its branch
//! queue, until nothing is left to lease. Each call ends with an outcome of DOMAIN.md, decided by the customer the
//! portfolio made (one who will renew promises to, by the day they will; one who will
//! not refuses, is unreachable, asks to be called back, has switched insurer, sold the
//! car or was given a wrong number; on their own call some owners escalate it), fixed by the seed, the policy and the stage, so
//! a case decides the same way in every run.
//!
//! The call center keeps its own record of every lease it took (`demo.call_center_leases`),
//! which is where a task handed to two agents at once would show. Killed with the
//! demo, it picks up on resume the tasks its agents still hold (read back from
//! dispatch, since the answer to the last lease may never have reached its record)
//! and completes them as it would have, so a resumed season ends as an uninterrupted one.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};

use chrono::{DateTime, NaiveTime, Utc};
use serde::Deserialize;
use sqlx::PgPool;
use uuid::Uuid;

use super::portfolio::{CITIES, Customer};
use crate::simulation::SimError;

/// When the call center starts its day, local time (calls are allowed 09:00-21:00).
pub const OPENS: NaiveTime = match NaiveTime::from_hms_opt(10, 0, 0) {
    Some(t) => t,
    None => NaiveTime::MIN,
};

/// The call center's own agents.
const AGENTS: usize = 8;
/// Tasks one lease asks for.
const LEASE_MAX: i64 = 100;
const LEASE_SECONDS: i64 = 900;

#[derive(Debug, Deserialize)]
struct Leased {
    tasks: Vec<Task>,
}

#[derive(Debug, Deserialize, sqlx::FromRow)]
struct Task {
    id: Uuid,
    lease_token: Uuid,
    lease_expires_at: DateTime<Utc>,
    policy_no: String,
    stage: String,
    expiry_date: String,
    time_zone: String,
}

/// A task one of the call center's agents holds, as dispatch recorded it.
#[derive(sqlx::FromRow)]
struct Held {
    leased_by: String,
    #[sqlx(flatten)]
    task: Task,
}

pub struct CallCenter {
    http: reqwest::Client,
    base: String,
    /// Each desk's token: the call center's machine client for its agents, each
    /// owner's and branch agent's own.
    tokens: HashMap<String, String>,
    seed: u64,
    pool: PgPool,
    /// When each customer renews, if they do (what the customer will say).
    renews_at: HashMap<String, Option<DateTime<Utc>>>,
}

/// How a customer answers one call: a number in 0..100.
fn roll(seed: u64, policy_no: &str, step: &str) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    (seed, policy_no, step, "call").hash(&mut h);
    h.finish() % 100
}

/// The stage without the task ids the scheduler puts into follow-up stages
/// ("call back <task id>"), which differ from run to run.
fn step(stage: &str) -> String {
    stage
        .split_whitespace()
        .filter(|w| Uuid::parse_str(w).is_err())
        .collect::<Vec<_>>()
        .join(" ")
}

impl CallCenter {
    pub fn new(
        base: String,
        seed: u64,
        pool: PgPool,
        customers: &[Customer],
        badges: &super::badges::Badges,
    ) -> Result<Self, SimError> {
        let mut tokens = HashMap::new();
        for n in 1..=AGENTS {
            tokens.insert(format!("CC-{n:02}"), badges.call_center()?);
        }
        for city in CITIES {
            tokens.insert(format!("CITY-{}", city.code), badges.city_admin(city.code)?);
            for branch in city.branches {
                for n in 1..=super::portfolio::AGENTS_PER_BRANCH {
                    let agent = format!("{branch}-A{n:02}");
                    let token = badges.agent(&agent, branch, city.code)?;
                    tokens.insert(agent, token);
                }
            }
        }
        let http = reqwest::Client::builder()
            .timeout(std::time::Duration::from_secs(30))
            .build()
            .map_err(|e| SimError::Other(e.to_string()))?;
        let renews_at = customers
            .iter()
            .map(|c| (c.policy.policy_no.clone(), c.renews_at))
            .collect();
        Ok(CallCenter {
            http,
            base,
            tokens,
            seed,
            pool,
            renews_at,
        })
    }

    /// Who leases from which queue: (agent, queue).
    fn desks() -> Vec<(String, &'static str)> {
        let mut desks = Vec::new();
        for n in 1..=AGENTS {
            desks.push((format!("CC-{n:02}"), "campaign"));
            desks.push((format!("CC-{n:02}"), "hq"));
        }
        // Each city company supports its important customers' owners.
        for city in CITIES {
            desks.push((format!("CITY-{}", city.code), "city"));
        }
        for city in CITIES {
            for branch in city.branches {
                for n in 1..=super::portfolio::AGENTS_PER_BRANCH {
                    desks.push((format!("{branch}-A{n:02}"), "owner"));
                }
                desks.push((format!("{branch}-A01"), "branch"));
            }
        }
        desks
    }

    /// One day of calls at `now`: every desk leases what it can, then the calls are
    /// made one by one in the order of the policy and the stage, so the events of one
    /// case reach the scheduler in the same order in every run. A city company's task
    /// to get a case its quote is no call: the policies whose quote it chases with the
    /// core system are returned (the quote's arrival ends the task).
    pub async fn work_day(&self, now: DateTime<Utc>) -> Result<Vec<String>, SimError> {
        let desks = Self::desks();
        // Calls its agents were making when the demo was killed.
        let agents: Vec<&str> = desks.iter().map(|(a, _)| a.as_str()).collect();
        let held: Vec<Held> = sqlx::query_as(
            "SELECT id, lease_token, available_at AS lease_expires_at, policy_no, stage, expiry_date,
                    time_zone, leased_by
             FROM dispatch.phone_tasks
             WHERE state IN ('leased', 'withdrawn') AND lease_token IS NOT NULL
               AND leased_by = ANY($1) AND outcome IS NULL AND available_at > $2",
        )
        .bind(&agents)
        .bind(now)
        .fetch_all(&self.pool)
        .await?;
        let mut calls: Vec<(String, Task)> =
            held.into_iter().map(|h| (h.leased_by, h.task)).collect();
        for (agent, task) in &calls {
            self.record_lease(agent, task, now).await?;
        }
        for (agent, queue) in &desks {
            loop {
                let tasks = self.lease(agent, queue).await?;
                if tasks.is_empty() {
                    break;
                }
                for task in tasks {
                    self.record_lease(agent, &task, now).await?;
                    calls.push((agent.clone(), task));
                }
            }
        }
        let (chase, mut calls): (Vec<_>, Vec<_>) = calls
            .into_iter()
            .partition(|(_, t)| t.stage == renewal_dispatch::terms::QUOTE_TASK_STAGE);
        calls.sort_by_cached_key(|(_, t)| (t.policy_no.clone(), step(&t.stage)));
        for (agent, task) in &calls {
            self.call(agent, task, now).await?;
        }
        let mut chase: Vec<String> = chase.into_iter().map(|(_, t)| t.policy_no).collect();
        chase.sort();
        chase.dedup();
        Ok(chase)
    }

    fn token(&self, agent: &str) -> Result<&str, SimError> {
        self.tokens
            .get(agent)
            .map(String::as_str)
            .ok_or_else(|| SimError::Other(format!("no desk for {agent}")))
    }

    async fn lease(&self, agent: &str, queue: &str) -> Result<Vec<Task>, SimError> {
        let response = self
            .http
            .post(format!("{}/v1/phone-tasks:lease", self.base))
            .bearer_auth(self.token(agent)?)
            .json(&serde_json::json!({"agent_id": agent, "queue": queue,
                "max": LEASE_MAX, "lease_seconds": LEASE_SECONDS}))
            .send()
            .await
            .map_err(|e| SimError::Other(format!("lease: {e}")))?;
        let status = response.status();
        if status.as_u16() == 429 {
            // The desk holds as many calls as it may: the next desk takes the rest.
            return Ok(Vec::new());
        }
        if !status.is_success() {
            return Err(SimError::Other(format!("lease: {status}")));
        }
        let leased: Leased = response
            .json()
            .await
            .map_err(|e| SimError::Other(format!("lease: {e}")))?;
        Ok(leased.tasks)
    }

    /// The call center's record of a lease it took.
    async fn record_lease(
        &self,
        agent: &str,
        task: &Task,
        now: DateTime<Utc>,
    ) -> Result<(), SimError> {
        sqlx::query(
            "INSERT INTO demo.call_center_leases (task_id, lease_token, agent_id, leased_at, lease_expires_at)
             VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING",
        )
        .bind(task.id)
        .bind(task.lease_token)
        .bind(agent)
        .bind(now)
        .bind(task.lease_expires_at)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// On their T-30 call, one owner in four offers a discount to win the renewal: 5%
    /// on their own authority, 10% or 13% asked of the ladder (the branch's supervisor,
    /// then the city company, approve it on their next working day).
    async fn offer_discount(&self, agent: &str, task: &Task) -> Result<(), SimError> {
        let owner_desk = !agent.starts_with("CC-") && !agent.starts_with("CITY-");
        if !owner_desk || task.stage != "T-30" || roll(self.seed, &task.policy_no, "discount") >= 25
        {
            return Ok(());
        }
        let percent = match roll(self.seed, &task.policy_no, "discount size") {
            r if r < 40 => 5,
            r if r < 75 => 10,
            _ => 13,
        };
        let response = self
            .http
            .post(format!(
                "{}/v1/cases/{}/discounts",
                self.base, task.policy_no
            ))
            .bearer_auth(self.token(agent)?)
            .json(&serde_json::json!({"percent": percent, "reason": "a rival's cash offer"}))
            .send()
            .await
            .map_err(|e| SimError::Other(format!("discount: {e}")))?;
        let status = response.status();
        // 403/409: the desk is no longer the owner, or a request is already waiting.
        if status.is_server_error() || matches!(status.as_u16(), 400 | 401) {
            return Err(SimError::Other(format!("discount {agent}: {status}")));
        }
        Ok(())
    }

    /// Makes the call and reports how it ended.
    async fn call(&self, agent: &str, task: &Task, now: DateTime<Utc>) -> Result<(), SimError> {
        self.offer_discount(agent, task).await?;
        let outcome = self.outcome(task, now);
        let mut body = outcome.clone();
        body["lease_token"] = serde_json::json!(task.lease_token);
        let response = self
            .http
            .post(format!("{}/v1/phone-tasks/{}:complete", self.base, task.id))
            .bearer_auth(self.token(agent)?)
            .json(&body)
            .send()
            .await
            .map_err(|e| SimError::Other(format!("complete: {e}")))?;
        let status = response.status();
        if status.is_server_error() || matches!(status.as_u16(), 400 | 401 | 403) {
            return Err(SimError::Other(format!("complete {agent}: {status}")));
        }
        // 409: the lease no longer held the task; the call center notes it and goes on.
        let ended = if status.is_success() {
            outcome["outcome"].as_str().unwrap_or_default().to_owned()
        } else {
            format!("refused {status}")
        };
        sqlx::query(
            "UPDATE demo.call_center_leases
             SET ended_at = $3, outcome = $4, ended_seq = nextval('demo.call_center_leases_seq_seq')
             WHERE task_id = $1 AND lease_token = $2",
        )
        .bind(task.id)
        .bind(task.lease_token)
        .bind(now)
        .bind(ended)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// What the customer says, with the fields the outcome needs.
    fn outcome(&self, task: &Task, now: DateTime<Utc>) -> serde_json::Value {
        let tz: chrono_tz::Tz = task.time_zone.parse().unwrap_or(chrono_tz::Asia::Shanghai);
        let today = renewal_platform::local_date(now, tz);
        let tomorrow_morning =
            renewal_platform::local_instant(today + chrono::Days::new(1), OPENS, tz);
        let r = roll(self.seed, &task.policy_no, &step(&task.stage));
        let renews_at = self.renews_at.get(&task.policy_no).copied().flatten();
        match renews_at {
            Some(at) if at <= now => serde_json::json!({
                "outcome": "renewed",
                "new_policy_no": format!("R{}", task.policy_no.get(1..).unwrap_or_default()),
            }),
            Some(at) if r < 65 => serde_json::json!({
                "outcome": "promised",
                "promised_date": renewal_platform::local_date(at, tz).to_string(),
            }),
            Some(_) if r < 85 => serde_json::json!({
                "outcome": "call_back", "call_back_at": tomorrow_morning,
            }),
            Some(_) => serde_json::json!({"outcome": "unreachable"}),
            None if r < 25 => serde_json::json!({"outcome": "unreachable"}),
            None if r < 40 => serde_json::json!({
                "outcome": "call_back", "call_back_at": tomorrow_morning,
            }),
            None if r < 60 => serde_json::json!({"outcome": "refused", "reason": "too expensive"}),
            None if r < 72 => serde_json::json!({
                "outcome": "insured_elsewhere", "reason": "switched insurer",
            }),
            None if r < 80 => {
                serde_json::json!({"outcome": "vehicle_sold", "reason": "sold the car"})
            }
            None if r < 86 => serde_json::json!({"outcome": "wrong_number"}),
            // On the owner's own call, some owners escalate at once: a customer at high
            // risk of loss goes to HQ's calling, one they cannot renew in time to the
            // branch (or to the city company's support, for important customers).
            None if r < 91 && task.stage == "T-30" => serde_json::json!({
                "outcome": "high_risk_of_loss", "reason": "a rival offered a cash discount",
            }),
            None if r < 94 && task.stage == "T-30" => serde_json::json!({
                "outcome": "cannot_renew_in_time", "reason": "away until after the expiry",
            }),
            // Says they renewed, and did not: the core system never confirms it, and the
            // case is worked again with a check call for its owner.
            None if r >= 97 => serde_json::json!({
                "outcome": "renewed", "new_policy_no": format!("X{}", task.policy_no),
            }),
            None => {
                // Promises, and will not keep it: renew "the day before it expires".
                let expiry = chrono::NaiveDate::parse_from_str(&task.expiry_date, "%Y-%m-%d").ok();
                match expiry.map(|d| d - chrono::Days::new(1)) {
                    Some(day) if day > today => serde_json::json!({
                        "outcome": "promised", "promised_date": day.to_string(),
                    }),
                    _ => serde_json::json!({"outcome": "unreachable"}),
                }
            }
        }
    }
}

/// Tasks the call center saw leased twice at once: a lease of a task taken after
/// another lease of it (in the order the call center took them) that had neither ended
/// nor run out by then.
pub async fn handed_to_two_agents(pool: &PgPool) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT count(DISTINCT a.task_id) FROM demo.call_center_leases a
         JOIN demo.call_center_leases b ON b.task_id = a.task_id AND b.seq > a.seq
         WHERE (a.ended_seq IS NULL OR b.seq < a.ended_seq) AND b.leased_at < a.lease_expires_at",
    )
    .fetch_one(pool)
    .await
}
