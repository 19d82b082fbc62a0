//! Assignment against the real Postgres and NATS, on the simulated clock: the
//! organisation, branch claims and their refusals, 50 concurrent claims of one case,
//! the pool and auto-assignment timeline, the research queue, the second assignment
//! all the way to HQ (and to the city company), and the credit staying with the
//! originating agent.

use renewal_contract::core::Policy;
use renewal_e2e::{Grant, ORG_CSV, Role, TestSystem, local, policy, post_json_to};
use serde_json::{Value, json};

fn policy_of(no: &str, end: &str, branch: &str, agent: &str) -> Policy {
    let mut p = policy(no, end);
    p.branch_code = branch.into();
    p.agent_code = agent.into();
    p
}

async fn case(system: &TestSystem, policy_no: &str) -> Value {
    let (status, case) = system.get_json(&format!("/v1/cases/{policy_no}")).await;
    assert_eq!(status, 200, "{case}");
    case
}

fn steps(case: &Value) -> Vec<String> {
    case["routing"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|s| s["step"].as_str().unwrap_or_default().to_owned())
                .collect()
        })
        .unwrap_or_default()
}

fn owners(case: &Value) -> Vec<(String, String)> {
    case["history"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|h| {
                    (
                        h["owner_agent"].as_str().unwrap_or("-").to_owned(),
                        h["reason"].as_str().unwrap_or_default().to_owned(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

async fn claim(system: &TestSystem, policy_no: &str, branch: &str, owner: &str) -> (u16, Value) {
    system
        .post_json(
            &format!("/v1/claims/{policy_no}:claim"),
            json!({"branch_code": branch, "owner_agent": owner}),
        )
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn branches_claim_their_list_and_every_bad_claim_is_refused_without_effect() {
    let system = TestSystem::start("ac", local("2026-12-01", 0)).await;
    let sim = &system.sim;
    system.load_org(ORG_CSV).await;
    sim.publish_policies(&[
        policy("P1", "2027-02-15"),
        policy("P2", "2027-02-16"),
        policy("P3", "2027-02-17"),
    ])
    .await
    .expect("published");
    sim.advance_to(local("2026-12-01", 9)).await.expect("time");

    // Read two at a time: the pages follow one another in deadline order.
    let pending = system
        .get_items("/v1/branches/SH01/claims?state=pending")
        .await;
    assert_eq!(pending.as_array().map(Vec::len), Some(3), "{pending}");
    assert_eq!(
        pending[0]["deadline"], "2026-12-08T16:00:00Z",
        "issued on Tuesday 1 December, due by the end of the fifth working day after"
    );

    // Refusals, each with its reason.
    let refusals = [
        ("P1", "SH02", "SH02-A01", 403, "not_your_branch"),
        ("P1", "SH01", "SH01-A09", 422, "unknown_agent"),
        ("P1", "SH01", "SH02-A01", 422, "agent_not_in_branch"),
        ("P1", "XX01", "SH01-A01", 422, "unknown_branch"),
        ("P9", "SH01", "SH01-A01", 404, "unknown_case"),
    ];
    for (no, branch, owner, want, code) in refusals {
        let (status, body) = claim(&system, no, branch, owner).await;
        assert_eq!(
            (status, body["code"].as_str()),
            (want, Some(code)),
            "{body}"
        );
    }
    let (status, body) = system
        .post_json("/v1/claims/P1:claim", json!({"branch_code": "SH01"}))
        .await;
    assert_eq!(
        (status, body["code"].as_str()),
        (400, Some("invalid_request")),
        "{body}"
    );
    let (status, body) = system
        .post_json("/v1/claims/P1:claim", json!({"branch": 1}))
        .await;
    assert_eq!(status, 400, "a body of the wrong shape: {body}");
    let (status, body) = system.post_json("/v1/agents/SH01-A02", json!({})).await;
    assert_eq!(status, 405, "agents are edited with PATCH: {body}");
    let case_p1 = case(&system, "P1").await;
    assert_eq!(case_p1["phase"], "branch", "the refusals changed nothing");
    assert!(case_p1["history"].as_array().is_some_and(Vec::is_empty));

    // An inactive agent cannot be named.
    let response = system
        .http
        .clone()
        .patch(system.url("/v1/agents/SH01-A02"))
        .json(&json!({"active": false}))
        .send()
        .await
        .expect("patch");
    assert_eq!(response.status().as_u16(), 200);
    let (status, body) = claim(&system, "P1", "SH01", "SH01-A02").await;
    assert_eq!(
        (status, body["code"].as_str()),
        (422, Some("inactive_agent")),
        "{body}"
    );

    // The claim, then the same claim again (a retry: answered as it was, nothing
    // done twice), then a claim by someone else after it was won.
    let (status, won) = claim(&system, "P1", "SH01", "SH01-A01").await;
    assert_eq!(status, 200, "{won}");
    let (status, again) = claim(&system, "P1", "SH01", "SH01-A01").await;
    assert_eq!((status, &again), (200, &won));
    let (status, body) = claim(&system, "P1", "SH01", "SH01-A03").await;
    assert_eq!(
        (status, body["code"].as_str()),
        (409, Some("already_claimed")),
        "{body}"
    );
    sim.settle().await.expect("settles");
    let case_p1 = case(&system, "P1").await;
    assert_eq!(case_p1["owner_agent"], "SH01-A01");
    assert_eq!(
        case_p1["credited_agent"], "SH01-A03",
        "the credit stays with the seller"
    );
    assert_eq!(
        owners(&case_p1),
        vec![("SH01-A01".into(), "branch_claim".into())]
    );

    // A decline needs a reason, and sends the case to the city's pool. SH01's
    // supervisor declines, signed in as themselves.
    let staff = system.client(
        &Grant::role(Role::BranchAdmin)
            .agent("SH01-S01")
            .branch("SH01")
            .city("310000"),
    );
    let decline = system.url("/v1/claims/P2:decline");
    let (status, body) = post_json_to(
        &staff,
        &decline,
        json!({"branch_code": "SH01", "by": "SH01-S01"}),
    )
    .await;
    assert_eq!(
        (status, body["code"].as_str()),
        (400, Some("invalid_request")),
        "{body}"
    );
    let (status, body) = post_json_to(
        &staff,
        &decline,
        json!({"branch_code": "SH01", "by": "SH01-S01", "reason": "customer moved"}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let pool = system.get_items("/v1/cities/310000/pool").await;
    assert_eq!(pool[0]["policy_no"], "P2", "{pool}");
    let (status, body) = claim(&system, "P2", "BJ01", "BJ01-A01").await;
    assert_eq!(
        (status, body["code"].as_str()),
        (403, Some("not_your_city")),
        "{body}"
    );
    let (status, body) = claim(&system, "P2", "SH02", "SH02-A02").await;
    assert_eq!(status, 200, "another branch of the city takes it: {body}");
    let declined = system
        .get_items("/v1/branches/SH01/claims?state=declined")
        .await;
    assert_eq!(declined[0]["policy_no"], "P2", "{declined}");
    let claimed = system
        .get_items("/v1/branches/SH02/claims?state=claimed")
        .await;
    assert_eq!(claimed[0]["owner_agent"], "SH02-A02", "{claimed}");

    // Deactivating an owner hands their open cases back to their branch.
    let response = system
        .http
        .clone()
        .patch(system.url("/v1/agents/SH01-A01"))
        .json(&json!({"active": false}))
        .send()
        .await
        .expect("patch");
    let body: Value = response.json().await.expect("json");
    assert_eq!(body["cases_handed_back"], 1, "{body}");
    let case_p1 = case(&system, "P1").await;
    assert_eq!(case_p1["phase"], "branch");
    assert_eq!(case_p1["owner_agent"], Value::Null);
    assert_eq!(
        owners(&case_p1),
        vec![
            ("SH01-A01".into(), "branch_claim".into()),
            ("-".into(), "agent_deactivated".into())
        ]
    );
    let (status, body) = claim(&system, "P1", "SH01", "SH01-A03").await;
    assert_eq!(status, 200, "claimed again: {body}");

    // A bad organisation file loads nothing and says which rows are wrong.
    let response = system.http.clone()
        .post(system.url("/v1/org:import"))
        .body("city_code,branch_code,branch_name,agent_code,agent_name,role,capacity,active\n310000,SH03,x,SH03-A01,y,boss,-1,maybe\n")
        .send()
        .await
        .expect("post");
    assert_eq!(response.status().as_u16(), 400);
    let body: Value = response.json().await.expect("json");
    let columns: Vec<&str> = body["rows"]
        .as_array()
        .map(|r| r.iter().filter_map(|p| p["column"].as_str()).collect())
        .unwrap_or_default();
    assert_eq!(columns, vec!["role", "capacity", "active"], "{body}");
    let (status, _) = system.get_json("/v1/agents/SH03-A01").await;
    assert_eq!(status, 422, "nothing was loaded");
    system.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn of_fifty_concurrent_claims_of_one_case_exactly_one_wins() {
    let system = TestSystem::start("cc", local("2026-12-01", 0)).await;
    let sim = &system.sim;
    system.load_org(ORG_CSV).await;
    sim.publish_policies(&[policy("P1", "2027-02-15")])
        .await
        .expect("published");
    sim.advance_to(local("2026-12-01", 9)).await.expect("time");
    let owners_to_try = ["SH01-A01", "SH01-A02", "SH01-A03"];
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..50 {
        let url = system.url("/v1/claims/P1:claim");
        let owner = owners_to_try[i % 3];
        let http = system.http.clone();
        tasks.spawn(async move {
            let status = http
                .post(url)
                .json(&json!({"branch_code": "SH01", "owner_agent": owner}))
                .send()
                .await
                .expect("answers")
                .status()
                .as_u16();
            (owner, status)
        });
    }
    let mut answers = Vec::new();
    while let Some(answer) = tasks.join_next().await {
        answers.push(answer.expect("task"));
    }
    // One owner wins; the claims naming that same owner are answered as the winner
    // was (a retry gets its 200), every other claim is refused.
    let winners: std::collections::BTreeSet<&str> = answers
        .iter()
        .filter(|(_, s)| *s == 200)
        .map(|(o, _)| *o)
        .collect();
    assert_eq!(winners.len(), 1, "{answers:?}");
    let winner = winners.first().copied().unwrap_or_default();
    for (owner, status) in &answers {
        let expected = if *owner == winner { 200 } else { 409 };
        assert_eq!(*status, expected, "{owner}: {answers:?}");
    }
    sim.settle().await.expect("settles");
    let case = case(&system, "P1").await;
    assert_eq!(
        case["history"].as_array().map(Vec::len),
        Some(1),
        "one owner: {case}"
    );
    let events: Vec<renewal_contract::assignment::OwnerAssigned> = renewal_e2e::events(
        &system,
        renewal_contract::subject::ASSIGNMENT_OWNER_ASSIGNED,
    )
    .await;
    assert_eq!(events.len(), 1, "one owner event");
    system.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unclaimed_cases_open_to_the_pool_then_go_to_the_agent_with_most_room() {
    let system = TestSystem::start("ap", local("2026-12-01", 0)).await;
    let sim = &system.sim;
    system.load_org(ORG_CSV).await;
    sim.publish_policies(&[
        policy("P1", "2027-02-15"),
        // Its origin cannot be traced: SH01-A99 is nobody.
        policy_of("P2", "2027-02-15", "SH01", "SH01-A99"),
        policy_of("P3", "2027-02-15", "SH01", "SH01-A98"),
        // Expires in 25 days: past T-31 already, so it gets an owner at once.
        policy("P4", "2026-12-26"),
    ])
    .await
    .expect("published");
    sim.advance_to(local("2026-12-01", 9)).await.expect("time");
    let p4 = case(&system, "P4").await;
    assert_eq!(owners(&p4)[0].1, "auto_assign", "{p4}");

    let research = system.get_items("/v1/cities/310000/research").await;
    assert_eq!(research.as_array().map(Vec::len), Some(2), "{research}");
    assert_eq!(
        research[0]["deadline"], "2026-12-15T16:00:00Z",
        "researched by the end of the 15th"
    );
    let (status, body) = system
        .post_json("/v1/research/P2:resolve", json!({"branch_code": "SH02"}))
        .await;
    assert_eq!(status, 200, "{body}");
    let sh02 = system.get_items("/v1/branches/SH02/claims").await;
    assert_eq!(
        sh02[0]["policy_no"], "P2",
        "the traced branch gets the claim: {sh02}"
    );

    // 9 December: P1's claim deadline (the end of the fifth working day after the
    // issue, Tuesday the 8th) passed: it is in the pool for 3 days.
    sim.advance_to(local("2026-12-09", 1)).await.expect("time");
    let p1 = case(&system, "P1").await;
    assert_eq!(p1["phase"], "pool", "{p1}");
    assert_eq!(steps(&p1), vec!["branch", "pool"]);
    assert_eq!(p1["routing"][1]["reason"], "claim_deadline");

    // SH01-A01 gets busier than the others (2 cases of 10) so it has less room.
    sim.publish_policies(&[policy("P5", "2027-02-20"), policy("P6", "2027-02-21")])
        .await
        .expect("published");
    sim.settle().await.expect("settles");
    let (status, body) = system
        .post_json("/v1/lists:issue", json!({"city_code": "310000"}))
        .await;
    assert_eq!(status, 200, "{body}");
    sim.settle().await.expect("settles");
    for p in ["P5", "P6"] {
        let (status, body) = claim(&system, p, "SH01", "SH01-A01").await;
        assert_eq!(status, 200, "{body}");
    }
    let response = system
        .http
        .clone()
        .patch(system.url("/v1/agents/SH02-A01"))
        .json(&json!({"capacity": 4}))
        .send()
        .await
        .expect("patch");
    assert_eq!(response.status().as_u16(), 200);

    // 12 December: still unclaimed after the pool deadline: assigned automatically,
    // to the agent with the most room; the tie (SH01-A02, SH01-A03, SH02-A02, all 10
    // free) goes to the originating agent's branch, SH01.
    sim.advance_to(local("2026-12-12", 1)).await.expect("time");
    let p1 = case(&system, "P1").await;
    assert_eq!(p1["phase"], "owned", "{p1}");
    let (owner, reason) = owners(&p1)[0].clone();
    assert_eq!(reason, "auto_assign");
    assert!(owner == "SH01-A02" || owner == "SH01-A03", "{owner}");
    assert_eq!(p1["credited_agent"], "SH01-A03");

    // P3 was never researched: on 16 December it opens to the pool, then is assigned.
    sim.advance_to(local("2026-12-16", 1)).await.expect("time");
    let p3 = case(&system, "P3").await;
    assert_eq!(steps(&p3), vec!["research", "pool"], "{p3}");
    assert_eq!(p3["routing"][1]["reason"], "research_deadline");
    sim.advance_to(local("2026-12-19", 1)).await.expect("time");
    let p3 = case(&system, "P3").await;
    assert_eq!(p3["phase"], "owned", "{p3}");

    // Nobody reached T-30 without an owner.
    let ownerless: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM assignment.cases WHERE owner_agent IS NULL AND state = 'open' AND owner_by <= $1",
    )
    .bind(sim.now())
    .fetch_one(sim.pool())
    .await
    .expect("count");
    assert_eq!(ownerless, 0);
    system.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_second_assignment_goes_branch_city_then_hq_and_the_credit_stays() {
    let system = TestSystem::start("sa", local("2026-12-01", 0)).await;
    let sim = &system.sim;
    system.load_org(ORG_CSV).await;
    let mut important = policy("P3", "2027-01-20");
    important.important = true;
    sim.publish_policies(&[
        policy("P1", "2027-01-20"),
        policy("P2", "2027-01-20"),
        important,
    ])
    .await
    .expect("published");
    sim.advance_to(local("2026-12-01", 9)).await.expect("time");
    for p in ["P1", "P2", "P3"] {
        let (status, body) = claim(&system, p, "SH01", "SH01-A01").await;
        assert_eq!(status, 200, "{body}");
    }
    // T-5 is 15 January 09:00: the scheduler asks the owner to confirm.
    sim.advance_to(local("2027-01-15", 10)).await.expect("time");
    let p1 = case(&system, "P1").await;
    assert_eq!(p1["phase"], "confirming", "{p1}");
    let (status, body) = system
        .post_json("/v1/cases/P2:confirm", json!({"agent_code": "SH01-A02"}))
        .await;
    assert_eq!(
        (status, body["code"].as_str()),
        (403, Some("not_owner")),
        "{body}"
    );
    let (status, body) = system
        .post_json("/v1/cases/P2:confirm", json!({"agent_code": "SH01-A01"}))
        .await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = system
        .post_json(
            "/v1/cases/P3:release",
            json!({"agent_code": "SH01-A01", "reason": "customer wants a discount"}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let p3 = case(&system, "P3").await;
    assert_eq!(
        p3["phase"], "city_company",
        "an important customer escalates to the city company's support: {p3}"
    );
    assert_eq!(
        p3["owner_agent"], "SH01-A01",
        "the owner keeps the case while the city supports it"
    );

    // P1 gets no answer (T-5 was Friday the 15th; a step lasts 24 working hours):
    // branch (Monday the 18th), city-wide (19th), HQ (20th).
    sim.advance_to(local("2027-01-18", 10)).await.expect("time");
    assert_eq!(case(&system, "P1").await["phase"], "branch_reassign");
    let pending = system.get_items("/v1/branches/SH01/claims").await;
    assert_eq!(pending[0]["policy_no"], "P1", "{pending}");
    let (status, body) = claim(&system, "P1", "SH01", "SH01-A01").await;
    assert_eq!(
        (status, body["code"].as_str()),
        (409, Some("owner_being_replaced")),
        "the owner who did not confirm cannot take it back: {body}"
    );
    sim.advance_to(local("2027-01-19", 10)).await.expect("time");
    assert_eq!(case(&system, "P1").await["phase"], "city_reassign");
    let pool = system.get_items("/v1/cities/310000/pool").await;
    assert_eq!(pool[0]["policy_no"], "P1", "{pool}");
    sim.advance_to(local("2027-01-20", 10)).await.expect("time");
    let p1 = case(&system, "P1").await;
    assert_eq!(p1["phase"], "hq", "{p1}");
    assert_eq!(
        steps(&p1),
        vec![
            "branch",
            "confirming",
            "branch_reassign",
            "city_reassign",
            "hq"
        ]
    );
    assert_eq!(
        owners(&p1),
        vec![
            ("SH01-A01".into(), "branch_claim".into()),
            ("HQ".into(), "hq_outbound".into())
        ]
    );
    assert_eq!(p1["credited_agent"], "SH01-A03");
    assert_eq!(case(&system, "P2").await["phase"], "owned", "confirmed");
    // The HQ step is work: a task in HQ's queue (the call center works it); P3's city
    // support is a task in the city company's queue.
    sim.settle().await.expect("settles");
    let queued: Vec<(String, String)> = sqlx::query_as(
        "SELECT policy_no, queue FROM dispatch.phone_tasks
         WHERE queue IN ('hq', 'city') AND state = 'open' AND stage <> 'quote missing at T-65'
         ORDER BY policy_no",
    )
    .fetch_all(sim.pool())
    .await
    .expect("tasks");
    assert_eq!(
        queued,
        [("P1".into(), "hq".into()), ("P3".into(), "city".into())]
    );

    // HQ renews P1: the renewal is credited to the agent who sold it.
    sim.publish_renewal("P1", "R1").await.expect("renewed");
    sim.settle().await.expect("settles");
    let p1 = case(&system, "P1").await;
    assert_eq!(
        (p1["outcome"].as_str(), p1["renewed_by"].as_str()),
        (Some("renewed"), Some("HQ"))
    );
    let credits = system
        .get_items("/v1/reports/attribution?city=310000")
        .await;
    assert_eq!(credits[0]["credited_agent"], "SH01-A03", "{credits}");
    assert_eq!(credits[0]["renewed"], 1, "{credits}");
    assert_eq!(credits[0]["renewed_by_others"], 1, "{credits}");
    system.finish().await;
}

/// A sweep of thousands (written in parts, several transactions side by side) fills
/// each active agent to capacity and no further, hands the rest to HQ, and records a
/// history row and an event for every case.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sweep_of_thousands_fills_agents_to_capacity_then_hands_the_rest_to_hq() {
    let system = TestSystem::start("am", local("2026-12-01", 0)).await;
    let sim = &system.sim;
    system
        .load_org(
            "city_code,branch_code,branch_name,agent_code,agent_name,role,capacity,active
310000,SH01,上海一支,SH01-A01,张伟,agent,700,true
310000,SH01,上海一支,SH01-A02,李娜,agent,600,true
310000,SH01,上海一支,SH01-S01,赵敏,supervisor,900,true
310000,SH02,上海二支,SH02-A01,陈静,agent,500,true
310000,SH02,上海二支,SH02-A02,刘洋,agent,900,false
110000,BJ01,北京一支,BJ01-A01,杨光,agent,100,true
",
        )
        .await;
    // 2,500 Shanghai and 150 Beijing cases in their cities' pools, due at 2 December.
    sqlx::query(
        "INSERT INTO assignment.cases (case_id, policy_no, city_code, branch_code, credited_agent,
             expiry_date, effective_expiry_date, important, group_policy, opened_at, time_zone,
             owner_by, phase, phase_due_at)
         SELECT gen_random_uuid(), 'M' || lpad(i::text, 5, '0'), city, branch, branch || '-A01',
             DATE '2027-02-15', DATE '2027-02-15', false, false, $1, 'Asia/Shanghai', $2, 'pool', $3
         FROM generate_series(1, 2650) i,
              LATERAL (SELECT CASE WHEN i > 2500 THEN '110000' ELSE '310000' END AS city,
                              CASE WHEN i > 2500 THEN 'BJ01' WHEN i % 2 = 0 THEN 'SH01' ELSE 'SH02' END AS branch) b",
    )
    .bind(sim.now())
    .bind(local("2027-01-15", 0))
    .bind(local("2026-12-02", 0))
    .execute(sim.pool())
    .await
    .expect("cases inserted");

    sim.advance_to(local("2026-12-02", 1)).await.expect("time");
    let owned: Vec<(String, i64)> = sqlx::query_as(
        "SELECT owner_agent, count(*) FROM assignment.cases WHERE state = 'open'
         GROUP BY owner_agent ORDER BY owner_agent",
    )
    .fetch_all(sim.pool())
    .await
    .expect("owners");
    let owned: Vec<(&str, i64)> = owned.iter().map(|(a, n)| (a.as_str(), *n)).collect();
    assert_eq!(
        owned,
        vec![
            ("BJ01-A01", 100),
            ("HQ", 700 + 50),
            ("SH01-A01", 700),
            ("SH01-A02", 600),
            ("SH02-A01", 500),
        ],
        "supervisors and inactive agents get none; nobody goes over capacity"
    );
    let history: Vec<(String, i64)> = sqlx::query_as(
        "SELECT reason, count(*) FROM assignment.owner_history GROUP BY reason ORDER BY reason",
    )
    .fetch_all(sim.pool())
    .await
    .expect("history");
    assert_eq!(
        history,
        vec![("auto_assign".into(), 1900), ("auto_assign_hq".into(), 750)]
    );
    let events: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM assignment.outbox WHERE subject LIKE '%assignment.owner.assigned'",
    )
    .fetch_one(sim.pool())
    .await
    .expect("events");
    assert_eq!(events, 2650, "one event per case assigned");
    system.finish().await;
}
