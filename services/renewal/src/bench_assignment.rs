//! `renewal bench assignment`: the assignment service's figures, against the loopback
//! Postgres and NATS, with every service running (the simulation), printed as
//! `name value` lines.
//!
//! Setup (not timed): an organisation of 10 cities x 10 branches x 20 agents, 100,000
//! cases opened and waiting for their list, and 20,000 more in their cities' pools.
//! 1. One list issue: 100 branch lists of 1,000 items published to `lists.list.issued`;
//!    timed until the service has opened all 100,000 claims: `claims_per_s`.
//! 2. The 20,000 pool cases' deadline passes (the clock moves): timed until all are
//!    assigned by the sweep: `auto_assign_per_s`.
//! 3. 32 concurrent clients claim 20,000 of the opened claims over HTTP:
//!    `claim_p50_ms`, `claim_p99_ms`, `claim_api_per_s`.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use chrono::{DateTime, NaiveDate, NaiveTime, Utc};
use renewal_contract::lists::{ListIssued, ListItem, ListKind};
use renewal_contract::subject;
use uuid::Uuid;

use crate::simulation::{SimOptions, Simulation};

const CITIES: usize = 10;
const BRANCHES_PER_CITY: usize = 10;
const AGENTS_PER_BRANCH: usize = 20;
const LISTED: usize = 100_000;
const POOLED: usize = 20_000;
const API_CLAIMS: usize = 20_000;
const CLIENTS: usize = 32;

fn line(name: &str, value: impl std::fmt::Display) {
    println!("{name} {value}");
}

pub async fn assignment() -> ExitCode {
    match run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("renewal bench assignment: {e}");
            ExitCode::FAILURE
        }
    }
}

fn branch(city: usize, b: usize) -> String {
    format!("C{city:02}B{b:02}")
}

async fn run() -> Result<(), String> {
    let (database_url, nats_url, access) = crate::bench::bench_target(
        "BENCH_ASSIGNMENT_DATABASE_URL",
        "postgres://postgres@127.0.0.1:5432/renewal_bench_assignment",
    )?;
    let tz = chrono_tz::Asia::Shanghai;
    let day = |d: u32, h: u32| {
        renewal_platform::local_instant(
            NaiveDate::from_ymd_opt(2026, 12, d).unwrap_or_default(),
            NaiveTime::from_hms_opt(h, 0, 0).unwrap_or_default(),
            tz,
        )
    };
    let sim = Simulation::start_with(
        SimOptions {
            database_url,
            pii_keys: secrecy::SecretString::from(crate::simulation::DEMO_PII_KEY),
            nats_url,
            prefix: "benchas".into(),
            fresh: true,
            start: day(1, 8),
            seed: 1,
            time_zone: tz,
            max_deliveries: crate::simulation::MAX_DELIVERIES,
        },
        None,
        &access,
    )
    .await
    .map_err(|e| e.to_string())?;
    let pool = sim.pool().clone();
    sim.settle().await.map_err(|e| e.to_string())?;

    // The organisation.
    let mut org = Vec::new();
    for c in 0..CITIES {
        for b in 0..BRANCHES_PER_CITY {
            for a in 0..AGENTS_PER_BRANCH {
                org.push(renewal_assignment::org::OrgRow {
                    city_code: format!("C{c:02}"),
                    branch_code: branch(c, b),
                    branch_name: format!("branch {c}-{b}"),
                    agent_code: format!("{}-A{a:02}", branch(c, b)),
                    agent_name: format!("agent {a}"),
                    role: "agent".into(),
                    capacity: 200,
                    active: true,
                });
            }
        }
    }
    renewal_assignment::org::load(&pool, &renewal_assignment::outbox(), &org, sim.now())
        .await
        .map_err(|e| e.to_string())?;

    // The cases, as if lists had opened them (expiring mid-February: no owner due yet).
    let expiry = NaiveDate::from_ymd_opt(2027, 2, 15).ok_or("date")?;
    let owner_by =
        renewal_platform::local_instant(expiry - chrono::Days::new(31), NaiveTime::MIN, tz);
    let total = LISTED + POOLED;
    let ids: Vec<Uuid> = (0..total).map(|_| Uuid::now_v7()).collect();
    let numbers: Vec<String> = (0..total).map(|i| format!("B{i:07}")).collect();
    let branches: Vec<String> = (0..total)
        .map(|i| branch(i % CITIES, (i / CITIES) % BRANCHES_PER_CITY))
        .collect();
    let cities: Vec<String> = (0..total).map(|i| format!("C{:02}", i % CITIES)).collect();
    let agents: Vec<String> = branches.iter().map(|b| format!("{b}-A00")).collect();
    let phases: Vec<&str> = (0..total)
        .map(|i| if i < LISTED { "awaiting_list" } else { "pool" })
        .collect();
    let pool_due = day(2, 0);
    let dues: Vec<Option<DateTime<Utc>>> = (0..total)
        .map(|i| (i >= LISTED).then_some(pool_due))
        .collect();
    let setup = Instant::now();
    sqlx::query(
        "INSERT INTO assignment.cases (case_id, policy_no, city_code, branch_code, credited_agent, expiry_date,
             effective_expiry_date, important, group_policy, opened_at, time_zone, owner_by, phase, phase_due_at)
         SELECT id, no, city, branch, agent, $6, $6, false, false, $7, 'Asia/Shanghai', $8, phase, due
         FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[], $9::text[], $10::timestamptz[])
             AS u(id, no, city, branch, agent, phase, due)",
    )
    .bind(&ids)
    .bind(&numbers)
    .bind(&cities)
    .bind(&branches)
    .bind(&agents)
    .bind(expiry)
    .bind(sim.now())
    .bind(owner_by)
    .bind(&phases)
    .bind(&dues)
    .execute(&pool)
    .await
    .map_err(|e| e.to_string())?;
    sqlx::query("ANALYZE assignment.cases")
        .execute(&pool)
        .await
        .map_err(|e| e.to_string())?;
    eprintln!(
        "bench: {total} cases set up in {:.1} s",
        setup.elapsed().as_secs_f64()
    );

    // 1. One list issue: a list of 1,000 per branch.
    let mut by_branch: std::collections::BTreeMap<&str, Vec<usize>> = Default::default();
    for (i, b) in branches.iter().enumerate().take(LISTED) {
        by_branch.entry(b.as_str()).or_default().push(i);
    }
    let mut pages = Vec::new();
    for (b, items) in &by_branch {
        let list_id = Uuid::now_v7();
        let chunks: Vec<&[usize]> = items.chunks(1000).collect();
        for (p, chunk) in chunks.iter().enumerate() {
            let list = ListIssued {
                list_id: list_id.to_string(),
                kind: ListKind::Renewal as i32,
                city_code: cities[chunk[0]].clone(),
                branch_code: (*b).to_owned(),
                issued_on: "2026-12-01".into(),
                monthly: true,
                page: p as i32 + 1,
                pages: chunks.len() as i32,
                total_items: items.len() as i32,
                items: chunk
                    .iter()
                    .map(|&i| ListItem {
                        case_id: ids[i].to_string(),
                        policy_no: numbers[i].clone(),
                        expiry_date: expiry.to_string(),
                        effective_expiry_date: expiry.to_string(),
                        days_to_expiry: 76,
                        bucket: 90,
                        agent_code: agents[i].clone(),
                        category: "insured_last_year".into(),
                        important: false,
                        group_policy: false,
                        ..Default::default()
                    })
                    .collect(),
                issued_at_ms: sim.now().timestamp_millis(),
            };
            pages.push((
                format!("{list_id}:{p}"),
                prost::Message::encode_to_vec(&list),
            ));
        }
    }
    let started = Instant::now();
    for (id, payload) in pages {
        sim.deps
            .bus
            .publish(subject::LISTS_LIST_ISSUED, &id, None, payload)
            .await
            .map_err(|e| e.to_string())?;
    }
    let pages_done =
        "SELECT count(*) FROM assignment.inbox WHERE subject LIKE '%lists.list.issued'";
    wait_for(&pool, pages_done, None, (LISTED / 1000) as i64).await?;
    let claims_seconds = started.elapsed().as_secs_f64();
    let opened: i64 =
        sqlx::query_scalar("SELECT count(*) FROM assignment.cases WHERE phase = 'branch'")
            .fetch_one(&pool)
            .await
            .map_err(|e| e.to_string())?;
    line("claims_opened", opened);
    line("claims_seconds", format!("{claims_seconds:.3}"));
    line(
        "claims_per_s",
        format!("{:.0}", opened as f64 / claims_seconds),
    );
    sim.settle().await.map_err(|e| e.to_string())?;

    // 2. The pool deadline passes: one sweep assigns the 20,000.
    let started = Instant::now();
    sim.clock.advance_to(day(2, 1)).map_err(|e| e.to_string())?;
    // Done when no pool case past its deadline is left (all 20,000 are past it). Read
    // in deadline order from the index of open deadlines, so that a poll costs next to
    // nothing: "any pool case left" was planned as a scan of the table, which the last
    // poll read to the end (10-160 ms counted as the sweep's).
    wait_for(
        &pool,
        "SELECT 1 - count(*) FROM (SELECT 1 FROM assignment.cases
         WHERE state = 'open' AND phase = 'pool' AND phase_due_at <= $1
         ORDER BY phase_due_at LIMIT 1) left_over",
        Some(day(2, 1)),
        1,
    )
    .await?;
    let assign_seconds = started.elapsed().as_secs_f64();
    let assigned: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM assignment.owner_history WHERE reason = 'auto_assign'",
    )
    .fetch_one(&pool)
    .await
    .map_err(|e| e.to_string())?;
    line("auto_assigned", assigned);
    line("auto_assign_seconds", format!("{assign_seconds:.3}"));
    line(
        "auto_assign_per_s",
        format!("{:.0}", assigned as f64 / assign_seconds),
    );
    sim.settle().await.map_err(|e| e.to_string())?;

    // 3. The claim API under 32 concurrent clients.
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(CLIENTS)
        .build()
        .map_err(|e| e.to_string())?;
    let base = format!("http://{}", sim.http_addr);
    // HQ's token: the claims span every branch (verified on every request).
    let token = sim
        .token(&renewal_platform::dev_issuer::Grant::role(
            renewal_platform::Role::HqAdmin,
        ))
        .map_err(|e| e.to_string())?;
    let targets: Vec<usize> = (0..LISTED)
        .step_by(LISTED / API_CLAIMS)
        .take(API_CLAIMS)
        .collect();
    let queue = std::sync::Arc::new(std::sync::Mutex::new(targets));
    let started = Instant::now();
    let mut clients = tokio::task::JoinSet::new();
    for _ in 0..CLIENTS {
        let (http, base, queue, token) = (http.clone(), base.clone(), queue.clone(), token.clone());
        let (numbers, branches) = (numbers.clone(), branches.clone());
        clients.spawn(async move {
            let mut latencies = Vec::new();
            let mut failures = 0usize;
            loop {
                let next = queue.lock().ok().and_then(|mut q| q.pop());
                let Some(i) = next else { break };
                let t = Instant::now();
                let ok = http
                    .post(format!("{base}/v1/claims/{}:claim", numbers[i]))
                    .bearer_auth(&token)
                    .json(&serde_json::json!({"branch_code": branches[i],
                        "owner_agent": format!("{}-A{:02}", branches[i], 1 + i % (AGENTS_PER_BRANCH - 1))}))
                    .send()
                    .await
                    .is_ok_and(|r| r.status().is_success());
                latencies.push(t.elapsed());
                failures += usize::from(!ok);
            }
            (latencies, failures)
        });
    }
    let mut latencies = Vec::new();
    let mut failures = 0;
    while let Some(done) = clients.join_next().await {
        let (l, f) = done.map_err(|e| e.to_string())?;
        latencies.extend(l);
        failures += f;
    }
    let api_seconds = started.elapsed().as_secs_f64();
    latencies.sort();
    let pct = |p: f64| {
        latencies
            .get(((latencies.len() as f64 * p) as usize).min(latencies.len().saturating_sub(1)))
            .copied()
            .unwrap_or(Duration::ZERO)
            .as_secs_f64()
            * 1000.0
    };
    line("claim_api_clients", CLIENTS);
    line("claim_api_requests", latencies.len());
    line("claim_api_failures", failures);
    line(
        "claim_api_per_s",
        format!("{:.0}", latencies.len() as f64 / api_seconds),
    );
    line("claim_p50_ms", format!("{:.2}", pct(0.50)));
    line("claim_p99_ms", format!("{:.2}", pct(0.99)));
    sim.settle().await.map_err(|e| e.to_string())?;
    sim.stop().await.map_err(|e| e.to_string())?;
    if failures > 0 {
        return Err(format!("{failures} claims failed"));
    }
    Ok(())
}

/// Polls until the count reaches `want` (or fails after 5 minutes); `at` is `$1`.
async fn wait_for(
    pool: &sqlx::PgPool,
    sql: &'static str,
    at: Option<DateTime<Utc>>,
    want: i64,
) -> Result<i64, String> {
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let mut query = sqlx::query_scalar(sql);
        if let Some(at) = at {
            query = query.bind(at);
        }
        let n: i64 = query.fetch_one(pool).await.map_err(|e| e.to_string())?;
        if n >= want {
            return Ok(n);
        }
        if Instant::now() > deadline {
            return Err(format!("only {n} of {want} after 5 minutes"));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
