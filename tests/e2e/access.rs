//! Who may call what: the README's access matrix walked route by route. Every route
//! of every service is called with no token, an expired token, a token from another
//! issuer, and by every role in and out of its scope; each answer is what the matrix
//! says, and a refusal writes nothing (every table of the four schemas and their
//! outboxes unchanged; only the audit log records the refusal).

use renewal_e2e::{Grant, ORG_CSV, Role, TestSystem, client_with, local, policy};
use serde_json::{Value, json};

/// A caller of the matrix: a role, and whether its scope reaches the scenario's case
/// (policy P1: Shanghai 310000, branch SH01, owned and sold by SH01-A03).
struct Caller {
    label: &'static str,
    role: Role,
    in_scope: bool,
    grant: Grant,
}

fn callers() -> Vec<Caller> {
    let agent = |code: &str, branch: &str, city: &str| {
        Grant::role(Role::Agent)
            .agent(code)
            .branch(branch)
            .city(city)
    };
    let branch = |role: Role, branch: &str, city: &str| {
        Grant::role(role)
            .agent(&format!("{branch}-S01"))
            .branch(branch)
            .city(city)
    };
    let c = |label, role, in_scope, grant| Caller {
        label,
        role,
        in_scope,
        grant,
    };
    vec![
        c(
            "agent SH01-A03",
            Role::Agent,
            true,
            agent("SH01-A03", "SH01", "310000"),
        ),
        c(
            "agent BJ01-A01",
            Role::Agent,
            false,
            agent("BJ01-A01", "BJ01", "110000"),
        ),
        c(
            "supervisor SH01",
            Role::Supervisor,
            true,
            branch(Role::Supervisor, "SH01", "310000"),
        ),
        c(
            "supervisor BJ01",
            Role::Supervisor,
            false,
            branch(Role::Supervisor, "BJ01", "110000"),
        ),
        c(
            "branch_admin SH01",
            Role::BranchAdmin,
            true,
            branch(Role::BranchAdmin, "SH01", "310000"),
        ),
        c(
            "branch_admin BJ01",
            Role::BranchAdmin,
            false,
            branch(Role::BranchAdmin, "BJ01", "110000"),
        ),
        c(
            "city_admin 310000",
            Role::CityAdmin,
            true,
            Grant::role(Role::CityAdmin).city("310000"),
        ),
        c(
            "city_admin 110000",
            Role::CityAdmin,
            false,
            Grant::role(Role::CityAdmin).city("110000"),
        ),
        c("hq_admin", Role::HqAdmin, true, Grant::role(Role::HqAdmin)),
        c(
            "importer",
            Role::Importer,
            true,
            Grant::role(Role::Importer),
        ),
        c("analyst", Role::Analyst, true, Grant::role(Role::Analyst)),
        c(
            "call_center",
            Role::CallCenter,
            true,
            Grant::role(Role::CallCenter),
        ),
        c("auditor", Role::Auditor, true, Grant::role(Role::Auditor)),
    ]
}

/// One row of the matrix: a route with a concrete request, and the roles it admits.
/// `scoped`: callers of those roles out of the case's scope are refused (403); when
/// false, the route narrows what they see instead (a report of their own city, a
/// lookup that leaves out what is not theirs) or the lease token is the scope.
struct Row {
    method: &'static str,
    path: String,
    body: Option<Body>,
    admits: &'static [Role],
    scoped: bool,
}

enum Body {
    Json(Value),
    Csv(&'static str),
}

fn row(method: &'static str, path: &str, admits: &'static [Role], scoped: bool) -> Row {
    Row {
        method,
        path: path.to_owned(),
        body: None,
        admits,
        scoped,
    }
}

fn with(mut row: Row, body: Value) -> Row {
    row.body = Some(Body::Json(body));
    row
}

use Role::{
    Agent, Analyst, Auditor, BranchAdmin, CallCenter, CityAdmin, HqAdmin, Importer, Supervisor,
};

fn matrix(plan: &Value, task: &str) -> Vec<Row> {
    let audit = &[Auditor, HqAdmin];
    let policy_readers = &[
        Agent,
        Supervisor,
        BranchAdmin,
        CityAdmin,
        HqAdmin,
        CallCenter,
    ];
    let case_readers = &[Agent, Supervisor, BranchAdmin, CityAdmin, HqAdmin];
    let read_branch = &[Supervisor, BranchAdmin, CityAdmin, HqAdmin];
    let act_for_branch = &[BranchAdmin, CityAdmin, HqAdmin];
    let city = &[CityAdmin, HqAdmin];
    let workers = &[
        Agent,
        Supervisor,
        BranchAdmin,
        CityAdmin,
        CallCenter,
        HqAdmin,
    ];
    let token = json!({"lease_token": "00000000-0000-7000-8000-000000000000"});
    vec![
        // lists
        row("GET", "/v1/policies/P1", policy_readers, true),
        row(
            "GET",
            "/v1/policies?mobile=13812345678",
            policy_readers,
            false,
        ),
        Row {
            body: Some(Body::Csv("policy_no\nP9\n")),
            ..row("POST", "/v1/policies:import", &[Importer, HqAdmin], false)
        },
        Row {
            body: Some(Body::Csv(
                "quote_id,policy_no,premium,last_premium,claim_free_years,ncd_level,compulsory,commercial,valid_until\nQ9,P9,1,1,0,0,0,0,2027-01-01\n",
            )),
            ..row("POST", "/v1/quotes:import", &[Importer, HqAdmin], false)
        },
        row(
            "GET",
            "/v1/imports/00000000-0000-7000-8000-000000000000/rejections",
            &[Importer, HqAdmin],
            false,
        ),
        with(
            row("POST", "/v1/lists:issue", city, true),
            json!({"city_code": "310000"}),
        ),
        row(
            "GET",
            "/v1/reports/renewal-rate",
            &[Analyst, HqAdmin, CityAdmin, Supervisor, BranchAdmin],
            false,
        ),
        row(
            "GET",
            "/v1/reports/monthly-analysis?month=2027-02",
            &[Analyst, HqAdmin, CityAdmin, Supervisor, BranchAdmin],
            false,
        ),
        row("GET", "/v1/audit/lists", audit, false),
        row("GET", "/v1/dead-letters/lists", &[HqAdmin], false),
        row("POST", "/v1/dead-letters/lists/1:replay", &[HqAdmin], false),
        // assignment
        row("GET", "/v1/branches/SH01/claims", read_branch, true),
        row(
            "GET",
            "/v1/cities/310000/pool",
            &[BranchAdmin, Supervisor, CityAdmin, HqAdmin],
            true,
        ),
        row("GET", "/v1/cities/310000/research", city, true),
        with(
            row("POST", "/v1/claims/P2:claim", act_for_branch, true),
            json!({"branch_code": "SH01", "owner_agent": "SH01-A01"}),
        ),
        with(
            row("POST", "/v1/claims/P3:decline", act_for_branch, true),
            json!({"branch_code": "SH01", "reason": "customer moved"}),
        ),
        with(
            row("POST", "/v1/research/P1:resolve", city, true),
            json!({"branch_code": "SH01"}),
        ),
        row("GET", "/v1/cases/P1", case_readers, true),
        with(
            row(
                "POST",
                "/v1/cases/P1:confirm",
                &[Agent, BranchAdmin, HqAdmin],
                true,
            ),
            json!({"agent_code": "SH01-A03"}),
        ),
        row(
            "GET",
            "/v1/reports/attribution",
            &[Analyst, HqAdmin, CityAdmin],
            false,
        ),
        row(
            "GET",
            "/v1/branches/SH01/alerts",
            &[Supervisor, BranchAdmin, CityAdmin, HqAdmin],
            true,
        ),
        Row {
            body: Some(Body::Csv(ORG_CSV)),
            ..row("POST", "/v1/org:import", &[HqAdmin], false)
        },
        row("GET", "/v1/agents/SH01-A03", case_readers, true),
        with(
            row("PATCH", "/v1/agents/SH01-A02", act_for_branch, true),
            json!({"capacity": 10}),
        ),
        row("GET", "/v1/branches/SH01/agents", read_branch, true),
        row(
            "GET",
            "/v1/cities/310000/settings",
            &[BranchAdmin, Supervisor, CityAdmin, HqAdmin],
            true,
        ),
        with(
            row("PUT", "/v1/cities/310000/settings", city, true),
            json!({"claim_days": 5, "pool_days": 3, "step_hours": 24}),
        ),
        with(
            row("POST", "/v1/cases/P1/discounts", &[Agent], true),
            json!({"percent": 5, "reason": "a rival's offer"}),
        ),
        row(
            "GET",
            "/v1/discounts",
            &[Supervisor, CityAdmin, HqAdmin],
            false,
        ),
        row(
            "GET",
            "/v1/reports/owner-progress?branch=SH01",
            &[Supervisor, BranchAdmin, CityAdmin, HqAdmin, Analyst],
            true,
        ),
        row(
            "GET",
            "/v1/reports/branch-week?branch=SH01",
            &[Supervisor, BranchAdmin, CityAdmin, HqAdmin, Analyst],
            true,
        ),
        row(
            "GET",
            "/v1/reports/ownership",
            &[Analyst, HqAdmin, CityAdmin, Supervisor, BranchAdmin],
            false,
        ),
        with(
            row(
                "POST",
                "/v1/discounts/00000000-0000-7000-8000-000000000000:approve",
                &[Supervisor, CityAdmin, HqAdmin],
                false,
            ),
            json!({}),
        ),
        row(
            "GET",
            "/v1/cities/310000/discount-ladder",
            &[BranchAdmin, Supervisor, CityAdmin, HqAdmin],
            true,
        ),
        with(
            row("PUT", "/v1/cities/310000/discount-ladder", city, true),
            json!({"rungs": [{"max_percent": 8, "approver": "owner"},
                             {"max_percent": 10, "approver": "supervisor", "extra": "一年道路救援卡"}],
                   "step_hours": 24}),
        ),
        row("GET", "/v1/audit/assignment", audit, false),
        row("GET", "/v1/dead-letters/assignment", &[HqAdmin], false),
        row(
            "POST",
            "/v1/dead-letters/assignment/1:replay",
            &[HqAdmin],
            false,
        ),
        // scheduler
        row("GET", "/v1/plans/310000", city, true),
        with(row("PUT", "/v1/plans/310000", city, true), plan.clone()),
        row("GET", "/v1/cases/P1/timeline", case_readers, true),
        row("GET", "/v1/audit/scheduler", audit, false),
        row("GET", "/v1/dead-letters/scheduler", &[HqAdmin], false),
        row(
            "POST",
            "/v1/dead-letters/scheduler/1:replay",
            &[HqAdmin],
            false,
        ),
        // dispatch
        with(
            row("POST", "/v1/phone-tasks:lease", &[Agent, HqAdmin], true),
            json!({"agent_id": "SH01-A03", "queue": "owner"}),
        ),
        with(
            row(
                "POST",
                "/v1/phone-tasks:lease",
                &[BranchAdmin, Supervisor, HqAdmin],
                true,
            ),
            json!({"agent_id": "SH01-S01", "queue": "branch"}),
        ),
        with(
            row(
                "POST",
                "/v1/phone-tasks:lease",
                &[CallCenter, HqAdmin],
                false,
            ),
            json!({"agent_id": "CC-01", "queue": "campaign"}),
        ),
        with(
            row("POST", "/v1/phone-tasks:lease", &[CityAdmin, HqAdmin], true),
            json!({"agent_id": "CITY-01", "queue": "city", "city_code": "310000"}),
        ),
        with(
            row(
                "POST",
                &format!("/v1/phone-tasks/{task}:heartbeat"),
                workers,
                false,
            ),
            token.clone(),
        ),
        with(
            row(
                "POST",
                &format!("/v1/phone-tasks/{task}:release"),
                workers,
                false,
            ),
            token.clone(),
        ),
        with(
            row(
                "POST",
                &format!("/v1/phone-tasks/{task}:complete"),
                workers,
                false,
            ),
            json!({"lease_token": "00000000-0000-7000-8000-000000000000", "outcome": "unreachable"}),
        ),
        with(
            row(
                "POST",
                &format!("/v1/phone-tasks/{task}:requeue"),
                &[HqAdmin],
                false,
            ),
            json!({}),
        ),
        row("GET", "/v1/phone-queues", city, false),
        row("GET", "/v1/phone-queues?city=310000", city, true),
        row("GET", "/v1/phone-tasks?state=dead", &[HqAdmin], false),
        row("GET", "/v1/cases/P1/contacts", case_readers, true),
        row("GET", "/v1/sms?state=failed", &[HqAdmin], false),
        row("GET", "/v1/sms?state=dead", &[HqAdmin], false),
        row(
            "POST",
            "/v1/sms/00000000-0000-7000-8000-000000000000:resend",
            &[HqAdmin],
            false,
        ),
        row("GET", "/v1/opt-outs", &[HqAdmin], false),
        row("GET", "/v1/audit/dispatch", audit, false),
        row("GET", "/v1/dead-letters/dispatch", &[HqAdmin], false),
        row(
            "POST",
            "/v1/dead-letters/dispatch/1:replay",
            &[HqAdmin],
            false,
        ),
    ]
}

async fn call(system: &TestSystem, http: &reqwest::Client, row: &Row) -> (u16, Value) {
    let method = reqwest::Method::from_bytes(row.method.as_bytes()).expect("a method");
    let mut request = http.request(method, system.url(&row.path));
    request = match &row.body {
        Some(Body::Json(v)) => request.json(v),
        Some(Body::Csv(c)) => request.body(c.to_owned()),
        None => request,
    };
    let response = request.send().await.expect("HTTP answers");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or_default())
}

/// Everything the four services hold, but the audit log (which records refusals).
async fn fingerprint(system: &TestSystem) -> String {
    system.sim.settle().await.expect("settles");
    let tables: Vec<(String, String)> = sqlx::query_as(
        "SELECT table_schema::text, table_name::text FROM information_schema.tables
         WHERE table_schema IN ('lists', 'assignment', 'scheduler', 'dispatch')
           AND table_type = 'BASE TABLE' AND table_name <> 'audit_log'
         ORDER BY 1, 2",
    )
    .fetch_all(system.sim.pool())
    .await
    .expect("tables");
    let mut all = String::new();
    for (schema, table) in tables {
        let sql = format!(
            "SELECT coalesce(md5(string_agg(t::text, '|' ORDER BY t::text)), '') FROM {schema}.{table} t"
        );
        let digest: String = sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
            .fetch_one(system.sim.pool())
            .await
            .expect("digest");
        all.push_str(&format!("{schema}.{table}={digest};"));
    }
    all
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_answers_each_caller_as_the_matrix_says_and_refusals_write_nothing() {
    let system = TestSystem::start("acl", local("2026-12-01", 0)).await;
    let sim = &system.sim;
    system.load_org(ORG_CSV).await;
    let mut p2 = policy("P2", "2027-02-16");
    p2.agent_code = "SH01-A01".into();
    let mut p3 = policy("P3", "2027-02-17");
    p3.agent_code = "SH01-A02".into();
    sim.publish_policies(&[policy("P1", "2027-02-15"), p2, p3])
        .await
        .expect("published");
    sim.advance_to(local("2026-12-01", 9)).await.expect("time");
    let (status, body) = system
        .post_json(
            "/v1/claims/P1:claim",
            json!({"branch_code": "SH01", "owner_agent": "SH01-A03"}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    sim.settle().await.expect("settles");
    let (_, plan) = system.get_json("/v1/plans/310000").await;
    let plan = json!({"note": plan["note"], "stages": plan["stages"]});
    let task = uuid::Uuid::new_v4();
    let rows = matrix(&plan, &task.to_string());

    let expired = sim
        .issuer
        .token_at(&Grant::role(HqAdmin), -7200, 3600)
        .expect("signs");
    let stranger = renewal_platform::identity::DevIssuer::ephemeral("https://idp.example/other")
        .expect("a key")
        .token(&Grant::role(HqAdmin), std::time::Duration::from_secs(600))
        .expect("signs");
    let nobody = reqwest::Client::new();
    let callers = callers();
    let clients: Vec<reqwest::Client> = callers.iter().map(|c| system.client(&c.grant)).collect();
    let mut failures = Vec::new();
    let mut allowed = 0;
    let mut refused = 0;
    for row in &rows {
        let what = format!("{} {}", row.method, row.path);
        // Refusals first, so what the allowed calls change cannot hide a write.
        let before = fingerprint(&system).await;
        let anonymous = [
            ("no token", &nobody),
            ("expired token", &client_with(&expired)),
            ("another issuer's token", &client_with(&stranger)),
        ];
        for (label, http) in anonymous {
            let (status, body) = call(&system, http, row).await;
            if status != 401 || body["code"] != "unauthenticated" {
                failures.push(format!("{what} with {label}: {status} {body}"));
            }
        }
        for (caller, http) in callers.iter().zip(&clients) {
            if admitted(row, caller) {
                continue;
            }
            refused += 1;
            let (status, body) = call(&system, http, row).await;
            if status != 403 {
                failures.push(format!(
                    "{what} as {}: {status} {body}, not 403",
                    caller.label
                ));
            }
            let detail = body["detail"].as_str().unwrap_or_default();
            if detail.contains("SH02") || detail.contains("BJ01") || detail.contains("110000") {
                failures.push(format!(
                    "{what} as {}: names another's: {detail}",
                    caller.label
                ));
            }
        }
        if fingerprint(&system).await != before {
            failures.push(format!("{what}: a refused call wrote something"));
        }
        for (caller, http) in callers.iter().zip(&clients) {
            if !admitted(row, caller) {
                continue;
            }
            allowed += 1;
            let (status, body) = call(&system, http, row).await;
            if matches!(status, 401 | 403) || status >= 500 {
                failures.push(format!("{what} as {}: {status} {body}", caller.label));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} answers differ from the matrix:\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert!(
        allowed > 100 && refused > 200,
        "{allowed} allowed, {refused} refused"
    );

    // Every call is in the audit log, refusals included, for the auditor to read.
    let auditor = system.client(&Grant::role(Auditor));
    let (status, log) = renewal_e2e::get_json_with(
        &auditor,
        &system.url("/v1/audit/assignment?target=/v1/claims/P2:claim&page_size=1000"),
    )
    .await;
    assert_eq!(status, 200, "{log}");
    let entries = log["entries"].as_array().cloned().unwrap_or_default();
    assert!(
        entries
            .iter()
            .any(|e| e["status"] == 403 && e["role"] == "agent"),
        "the refused agent is audited: {log}"
    );
    assert!(
        entries
            .iter()
            .any(|e| e["status"] == 200 && e["subject"] == "dev-SH01-S01"),
        "the claim is audited with who made it: {log}"
    );
    assert!(
        entries
            .iter()
            .all(|e| !e["request_id"].as_str().unwrap_or_default().is_empty())
    );
    system.finish().await;
}

fn admitted(row: &Row, caller: &Caller) -> bool {
    row.admits.contains(&caller.role) && (caller.in_scope || !row.scoped)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_that_disagrees_with_the_token_is_refused_and_lookups_keep_to_the_callers_scope() {
    let system = TestSystem::start("acb", local("2026-12-01", 0)).await;
    let sim = &system.sim;
    system.load_org(ORG_CSV).await;
    let mut bj = policy("P7", "2027-02-15");
    bj.branch_code = "BJ01".into();
    bj.city_code = "110000".into();
    bj.agent_code = "BJ01-A01".into();
    sim.publish_policies(&[policy("P1", "2027-02-15"), bj])
        .await
        .expect("published");
    sim.advance_to(local("2026-12-01", 9)).await.expect("time");
    let sh01 = system.client(
        &Grant::role(BranchAdmin)
            .agent("SH01-S01")
            .branch("SH01")
            .city("310000"),
    );
    // Naming someone else as the one who acts.
    let (status, body) = renewal_e2e::post_json_to(
        &sh01,
        &system.url("/v1/claims/P1:claim"),
        json!({"branch_code": "SH01", "owner_agent": "SH01-A01", "by": "SH01-A02"}),
    )
    .await;
    assert_eq!(
        (status, body["code"].as_str()),
        (403, Some("identity_mismatch")),
        "{body}"
    );
    // Leasing another owner's queue.
    let agent = system.client(
        &Grant::role(Agent)
            .agent("SH01-A01")
            .branch("SH01")
            .city("310000"),
    );
    let (status, body) = renewal_e2e::post_json_to(
        &agent,
        &system.url("/v1/phone-tasks:lease"),
        json!({"agent_id": "SH01-A02", "queue": "owner"}),
    )
    .await;
    assert_eq!(
        (status, body["code"].as_str()),
        (403, Some("identity_mismatch")),
        "{body}"
    );
    // The claim, as itself, goes through; its retry is answered as it was.
    let claim = json!({"branch_code": "SH01", "owner_agent": "SH01-A01"});
    let first =
        renewal_e2e::post_json_to(&sh01, &system.url("/v1/claims/P1:claim"), claim.clone()).await;
    let again = renewal_e2e::post_json_to(&sh01, &system.url("/v1/claims/P1:claim"), claim).await;
    assert_eq!(first.0, 200, "{}", first.1);
    assert_eq!(
        first, again,
        "a retry of the winning claim gets the same answer"
    );
    // A lookup by mobile shows only what the caller's scope reaches.
    let (status, found) =
        renewal_e2e::get_json_with(&sh01, &system.url("/v1/policies?mobile=13812345678")).await;
    assert_eq!(status, 200, "{found}");
    let numbers: Vec<&str> = found["policies"]
        .as_array()
        .map(|p| p.iter().filter_map(|p| p["policy_no"].as_str()).collect())
        .unwrap_or_default();
    assert_eq!(
        numbers,
        vec!["P1"],
        "SH01 does not see BJ01's policy: {found}"
    );
    let (_, all) = system.get_json("/v1/policies?mobile=13812345678").await;
    assert_eq!(
        all["policies"].as_array().map(Vec::len),
        Some(2),
        "HQ sees both: {all}"
    );
    // A city admin's report is their own city's, and naming another is refused.
    let shanghai = system.client(&Grant::role(CityAdmin).city("310000"));
    let (status, body) = renewal_e2e::get_json_with(
        &shanghai,
        &system.url("/v1/reports/renewal-rate?city=110000"),
    )
    .await;
    assert_eq!(status, 403, "{body}");
    // So is the funnel's owned and contacted count: a city admin's is their city's,
    // a branch's supervisor's their branch's.
    let (status, body) =
        renewal_e2e::get_json_with(&shanghai, &system.url("/v1/reports/ownership?city=110000"))
            .await;
    assert_eq!(
        (status, body["code"].as_str()),
        (403, Some("out_of_scope")),
        "{body}"
    );
    let season = "/v1/reports/ownership?from=2027-01-01&to=2027-03-31";
    let (status, own) = renewal_e2e::get_json_with(&shanghai, &system.url(season)).await;
    assert_eq!(
        (status, &own["city_code"], &own["cases"]),
        (200, &json!("310000"), &json!(1)),
        "P1 only: {own}"
    );
    let (status, all) = system.get_json(season).await;
    assert_eq!(
        (status, &all["cases"]),
        (200, &json!(2)),
        "HQ sees both: {all}"
    );
    let beijing = system.client(
        &Grant::role(Supervisor)
            .agent("BJ01-S01")
            .branch("BJ01")
            .city("110000"),
    );
    let (status, body) =
        renewal_e2e::get_json_with(&beijing, &system.url("/v1/reports/ownership?branch=SH01"))
            .await;
    assert_eq!(
        (status, body["code"].as_str()),
        (403, Some("out_of_scope")),
        "{body}"
    );
    // Every answer carries a request id; one sent is kept.
    let response = sh01
        .get(system.url("/v1/branches/SH01/claims"))
        .header("x-request-id", "req-abc-123")
        .send()
        .await
        .expect("answers");
    assert_eq!(response.headers()["x-request-id"], "req-abc-123");
    system.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_is_held_to_its_limits_and_told_when_to_come_back() {
    let system = TestSystem::start("acl2", local("2026-12-01", 10)).await;
    let sim = &system.sim;
    system.load_org(ORG_CSV).await;
    // A name made to carry a link into a signed SMS is refused with its row.
    let csv = "policy_no,customer_name,mobile,id_number,plate,vin,city_code,branch_code,agent_code,channel,category,start_date,end_date,premium,important,group_policy
P1,王芳,13812345678,11010519491231002X,沪AD12345,LSVAU218XN2183294,310000,SH01,SH01-A03,dealer,insured_last_year,2026-02-15,2027-02-14,4567.00,false,false
P2,点击 bit.ly/x 领奖,13812345679,11010519491231002X,沪AD12346,LSVAU218XN2183294,310000,SH01,SH01-A03,dealer,insured_last_year,2026-02-15,2027-02-14,4567.00,false,false
";
    let response = system
        .http
        .post(system.url("/v1/policies:import"))
        .body(csv)
        .send()
        .await
        .expect("answers");
    let report: Value = response.json().await.expect("a report");
    assert_eq!(report["rejected"], 1, "{report}");
    assert_eq!(
        report["rejections"][0]["column"], "customer_name",
        "{report}"
    );
    // Policy lookups: a burst (80 at once, more than the 50 allowed at once, and sent
    // together so a busy machine answering slowly cannot refill the allowance), then
    // 429 with Retry-After.
    let analyst_of_sorts = system.client(&Grant::role(CallCenter));
    let mut lookups = tokio::task::JoinSet::new();
    for _ in 0..80 {
        let (client, url) = (analyst_of_sorts.clone(), system.url("/v1/policies/P1"));
        lookups.spawn(async move {
            let r = client.get(url).send().await.expect("answers");
            let retry_after = r
                .headers()
                .get("retry-after")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u64>().ok());
            (r.status().as_u16(), retry_after)
        });
    }
    let mut answers = Vec::new();
    while let Some(answer) = lookups.join_next().await {
        answers.push(answer.expect("lookup"));
    }
    assert!(
        answers
            .iter()
            .all(|(status, _)| matches!(status, 200 | 429)),
        "{answers:?}"
    );
    let limited: Vec<_> = answers
        .iter()
        .filter(|(status, _)| *status == 429)
        .collect();
    assert!(
        (1..=30).contains(&limited.len()),
        "a caller looking policies up without pause is slowed down, after its allowance: {answers:?}"
    );
    let wait = limited[0].1.expect("Retry-After in seconds");
    assert!((1..=60).contains(&wait), "{wait}");
    // A release can put a task off at most 60 days.
    let policy_nos: Vec<String> = (1..=250).map(|i| format!("PL{i}")).collect();
    renewal_e2e::insert_campaign_tasks(sim.pool(), &policy_nos, sim.now()).await;
    let desk = system.client(&Grant::role(CallCenter));
    let lease_url = system.url("/v1/phone-tasks:lease");
    let lease = |max: i64| {
        renewal_e2e::post_json_to(
            &desk,
            &lease_url,
            json!({"agent_id": "CC-07", "queue": "campaign", "max": max}),
        )
    };
    let (status, first) = lease(100).await;
    assert_eq!(status, 200, "{first}");
    let task = &first["tasks"][0];
    let (status, body) = renewal_e2e::post_json_to(
        &desk,
        &system.url(&format!(
            "/v1/phone-tasks/{}:release",
            task["id"].as_str().expect("id")
        )),
        json!({"lease_token": task["lease_token"], "retry_at": "2027-12-01T00:00:00Z"}),
    )
    .await;
    assert_eq!(
        (status, body["code"].as_str()),
        (400, Some("invalid_request")),
        "{body}"
    );
    // One desk holds at most 200 leases: the third hundred is refused, nothing leased.
    assert_eq!(lease(100).await.0, 200);
    let (status, body) = lease(100).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (429, Some("too_many_leases")),
        "{body}"
    );
    let held: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM dispatch.phone_tasks WHERE state = 'leased' AND leased_by = 'CC-07'",
    )
    .fetch_one(sim.pool())
    .await
    .expect("count");
    assert_eq!(held, 200);
    system.finish().await;
}
