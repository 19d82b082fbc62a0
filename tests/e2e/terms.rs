//! The renewal sold on its terms (issue 18), on the simulated clock against the real
//! Postgres and NATS: the core system's quote reaches the case, so the T-60 SMS states
//! the premium and its change against last year and the owner's T-30 call shows the
//! terms; a case with no quote by T-65 raises a task for the city company and its T-60
//! SMS goes on time without a price; the quote that comes late by CSV reaches the next
//! contact.

use renewal_contract::core::QuoteIssued;
use renewal_e2e::{Grant, ORG_CSV, Role, TestSystem, get_json_with, local, policy, post_json_to};
use serde_json::{Value, json};

fn quote(id: &str, policy_no: &str, premium_fen: i64, last_premium_fen: i64) -> QuoteIssued {
    QuoteIssued {
        quote_id: id.into(),
        policy_no: policy_no.into(),
        premium_fen,
        last_premium_fen,
        claim_free_years: 2,
        ncd_level: -2,
        compulsory_fen: 95_000,
        commercial_fen: premium_fen - 95_000,
        valid_until: "2027-02-15".into(),
        promotion: "赠送道路救援卡".into(),
        issued_at_ms: local("2026-12-10", 9).timestamp_millis(),
    }
}

async fn scalar_i64(system: &TestSystem, sql: &str) -> i64 {
    sqlx::query_scalar(sqlx::AssertSqlSafe(sql.to_owned()))
        .fetch_one(system.sim.pool())
        .await
        .expect("query")
}

/// The calls SH01-A03 leases from their owner queue now.
async fn owner_calls(system: &TestSystem) -> Vec<Value> {
    let (status, leased) = system
        .post_json(
            "/v1/phone-tasks:lease",
            json!({"agent_id": "SH01-A03", "queue": "owner", "max": 10}),
        )
        .await;
    assert_eq!(status, 200, "{leased}");
    leased["tasks"].as_array().cloned().unwrap_or_default()
}

fn task_of<'a>(tasks: &'a [Value], policy_no: &str) -> &'a Value {
    tasks
        .iter()
        .find(|t| t["policy_no"] == policy_no)
        .unwrap_or_else(|| panic!("no call for {policy_no}: {tasks:?}"))
}

async fn post_quotes(system: &TestSystem, csv: &str) -> (u16, Value) {
    let response = system
        .http
        .post(system.url("/v1/quotes:import"))
        .header("content-type", "text/csv")
        .body(csv.to_owned())
        .send()
        .await
        .expect("HTTP answers");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or_default())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_t60_sms_states_the_quote_and_a_case_unquoted_by_t65_raises_a_city_task() {
    let system = TestSystem::start("qt", local("2026-12-01", 0)).await;
    let sim = &system.sim;
    system.load_org(ORG_CSV).await;
    // Q1 is quoted on 10 December (T-67); Q2 only by CSV on 25 December (T-52).
    let mut q1 = policy("Q1", "2027-02-15");
    let mut q2 = policy("Q2", "2027-02-15");
    q1.mobile = "+8613900001001".into();
    q2.mobile = "+8613900001002".into();
    for p in [&q1, &q2] {
        sim.vendor.watch(&p.mobile);
    }
    sim.publish_policies(&[q1.clone(), q2.clone()])
        .await
        .expect("published");
    sim.advance_to(local("2026-12-01", 9)).await.expect("time");
    for no in ["Q1", "Q2"] {
        let (status, body) = system
            .post_json(
                &format!("/v1/claims/{no}:claim"),
                json!({"branch_code": "SH01", "owner_agent": "SH01-A03"}),
            )
            .await;
        assert_eq!(status, 200, "{body}");
    }
    sim.advance_to(local("2026-12-10", 9)).await.expect("time");
    sim.publish_quotes(&[quote("QUOTE-1", "Q1", 420_000, 452_000)])
        .await
        .expect("published");
    sim.settle().await.expect("settles");
    let (status, view) = system.get_json("/v1/policies/Q1").await;
    assert_eq!(status, 200, "{view}");
    assert_eq!(
        (&view["quote"]["premium_fen"], &view["quote"]["change_fen"]),
        (&json!(420_000), &json!(-32_000)),
        "{view}"
    );

    // T-65 (12 December) passed: Q2 has no quote, the city company has a task for it.
    sim.advance_to(local("2026-12-13", 9)).await.expect("time");
    let city_tasks = |no: &str| {
        format!(
            "SELECT count(*) FROM dispatch.phone_tasks
             WHERE policy_no = '{no}' AND queue = 'city' AND stage = 'quote missing at T-65'"
        )
    };
    assert_eq!(scalar_i64(&system, &city_tasks("Q2")).await, 1);
    assert_eq!(scalar_i64(&system, &city_tasks("Q1")).await, 0);

    // T-60 (17 December, 10:00): both SMS go on time; Q1's states its terms, Q2's none.
    sim.advance_to(local("2026-12-17", 12)).await.expect("time");
    let texts = sim.vendor.texts_for(&q1.mobile);
    assert_eq!(
        texts,
        [
            "尊敬的王芳，您的爱车沪AD12345的车险将于2027-02-15到期，续保保费4200.00元，比去年少320.00元，赠送道路救援卡，请及时续保，如已续保请忽略。回TD退订"
        ],
        "the T-60 SMS states the premium and its change"
    );
    let texts = sim.vendor.texts_for(&q2.mobile);
    assert_eq!(texts.len(), 1, "{texts:?}");
    assert!(
        texts[0].contains("2027-02-15到期") && !texts[0].contains("续保保费"),
        "without a quote the SMS goes on time, without a price: {texts:?}"
    );

    // Q2's quote comes late, by CSV, with a bad row beside it.
    sim.advance_to(local("2026-12-25", 9)).await.expect("time");
    let (status, report) = post_quotes(
        &system,
        "quote_id,policy_no,premium,last_premium,claim_free_years,ncd_level,compulsory,commercial,valid_until,promotion\n\
         QUOTE-2,Q2,4880.00,4560.00,0,0,950.00,3930.00,2027-02-15,\n\
         QUOTE-3,Q3,-1,4560.00,0,0,950.00,3930.00,2027-02-15,\n",
    )
    .await;
    assert_eq!(status, 200, "{report}");
    assert_eq!(
        (&report["stored"], &report["rejected"], &report["announced"]),
        (&json!(1), &json!(1), &json!(1)),
        "{report}"
    );
    assert_eq!(report["rejections"][0]["line"], 3, "{report}");
    sim.settle().await.expect("settles");
    let withdrawn = scalar_i64(
        &system,
        "SELECT count(*) FROM dispatch.phone_tasks
         WHERE policy_no = 'Q2' AND queue = 'city' AND state = 'withdrawn'
           AND last_error = 'the quote arrived'",
    )
    .await;
    assert_eq!(
        withdrawn, 1,
        "the quote's arrival ends the city company's task"
    );

    // T-30 (16 January, 10:05): the owner's calls carry the terms.
    sim.advance_to(local("2027-01-16", 10) + chrono::Duration::minutes(5))
        .await
        .expect("time");
    let tasks = owner_calls(&system).await;
    let terms_of = |no: &str| task_of(&tasks, no)["terms"].clone();
    let q1_terms = terms_of("Q1");
    assert_eq!(
        (
            &q1_terms["premium_fen"],
            &q1_terms["change_fen"],
            &q1_terms["promotion"]
        ),
        (&json!(420_000), &json!(-32_000), &json!("赠送道路救援卡"))
    );
    let q2_terms = terms_of("Q2");
    assert_eq!(
        (&q2_terms["premium_fen"], &q2_terms["change_fen"]),
        (&json!(488_000), &json!(32_000))
    );
    system.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_13_percent_discount_is_approved_in_two_steps_and_the_next_call_carries_it() {
    let system = TestSystem::start("dc", local("2026-12-01", 0)).await;
    let sim = &system.sim;
    system.load_org(ORG_CSV).await;
    let mut d1 = policy("D1", "2027-02-15");
    d1.mobile = "+8613900002001".into();
    sim.publish_policies(&[d1]).await.expect("published");
    sim.advance_to(local("2026-12-01", 9)).await.expect("time");
    let (status, body) = system
        .post_json(
            "/v1/claims/D1:claim",
            json!({"branch_code": "SH01", "owner_agent": "SH01-A03"}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    sim.publish_quotes(&[quote("QUOTE-D1", "D1", 420_000, 452_000)])
        .await
        .expect("published");
    sim.settle().await.expect("settles");

    let owner = system.client(
        &Grant::role(Role::Agent)
            .agent("SH01-A03")
            .branch("SH01")
            .city("310000"),
    );
    let other = system.client(
        &Grant::role(Role::Agent)
            .agent("SH01-A01")
            .branch("SH01")
            .city("310000"),
    );
    let manager = system.client(&Grant::role(Role::Supervisor).branch("SH01").city("310000"));
    let other_manager = system.client(&Grant::role(Role::Supervisor).branch("SH02").city("310000"));
    let general = system.client(&Grant::role(Role::CityAdmin).city("310000"));
    let url = |path: &str| system.url(path);

    // Only the owner asks; 15% is above the ladder.
    let ask = |percent: i64| json!({"percent": percent, "reason": "a rival offered cash back"});
    let (status, _) = post_json_to(&other, &url("/v1/cases/D1/discounts"), ask(13)).await;
    assert_eq!(status, 403);
    let (status, body) = post_json_to(&owner, &url("/v1/cases/D1/discounts"), ask(15)).await;
    assert_eq!(status, 400, "{body}");
    // 13%: the manager, then the general manager.
    let (status, request) = post_json_to(&owner, &url("/v1/cases/D1/discounts"), ask(13)).await;
    assert_eq!(status, 201, "{request}");
    assert_eq!(
        request["steps"],
        json!(["supervisor", "city_admin"]),
        "{request}"
    );
    assert_eq!(request["awaiting"], "supervisor");
    let id = request["request_id"].as_str().expect("id").to_owned();
    let approve = url(&format!("/v1/discounts/{id}:approve"));

    // The general manager cannot skip the manager; another branch's manager cannot act.
    let (status, _) = post_json_to(&general, &approve, json!({})).await;
    assert_eq!(status, 403);
    let (status, _) = post_json_to(&other_manager, &approve, json!({})).await;
    assert_eq!(status, 403);
    let (_, queue) = get_json_with(&manager, &url("/v1/discounts")).await;
    assert_eq!(queue["items"][0]["request_id"], id.as_str(), "{queue}");
    let (status, step1) =
        post_json_to(&manager, &approve, json!({"reason": "loyal customer"})).await;
    assert_eq!(status, 200, "{step1}");
    assert_eq!(
        (&step1["state"], &step1["awaiting"]),
        (&json!("pending"), &json!("city_admin"))
    );
    let (_, queue) = get_json_with(&manager, &url("/v1/discounts")).await;
    assert_eq!(
        queue["items"],
        json!([]),
        "no longer the manager's: {queue}"
    );
    let (status, step2) = post_json_to(&general, &approve, json!({})).await;
    assert_eq!(status, 200, "{step2}");
    assert_eq!(step2["state"], "approved", "{step2}");
    let (status, again) = post_json_to(&general, &approve, json!({})).await;
    assert_eq!(status, 409, "decided once: {again}");
    sim.settle().await.expect("settles");

    // The case's quote carries it: 13% off the commercial 3,250.00 is 422.50.
    let (_, view) = system.get_json("/v1/policies/D1").await;
    assert_eq!(
        (
            &view["quote"]["discount_percent"],
            &view["quote"]["premium_fen"]
        ),
        (&json!(13), &json!(377_750)),
        "{view}"
    );
    // The owner's T-30 call carries the discounted terms.
    sim.advance_to(local("2027-01-16", 10) + chrono::Duration::minutes(5))
        .await
        .expect("time");
    let tasks = owner_calls(&system).await;
    let task = task_of(&tasks, "D1");
    assert_eq!(
        (
            &task["terms"]["premium_fen"],
            &task["terms"]["discount_percent"]
        ),
        (&json!(377_750), &json!(13)),
        "{task}"
    );
    system.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_policies_of_one_vehicle_are_one_case_with_one_sms_per_stage() {
    use renewal_contract::lists::CaseOpened;
    let system = TestSystem::start("vh", local("2026-12-01", 0)).await;
    let sim = &system.sim;
    system.load_org(ORG_CSV).await;
    // V1 (commercial) and V2 (compulsory) insure one car; V3 another car whose
    // compulsory policy V4 arrives a few days later.
    let mut v1 = policy("V1", "2027-02-15");
    let mut v2 = policy("V2", "2027-02-25");
    v2.vin = v1.vin.clone();
    v1.mobile = "+8613900003001".into();
    v2.mobile = v1.mobile.clone();
    let v3 = policy("V3", "2027-02-10");
    let mut v4 = policy("V4", "2027-02-12");
    v4.vin = v3.vin.clone();
    sim.vendor.watch(&v1.mobile);
    sim.publish_policies(&[v1.clone(), v2, v3])
        .await
        .expect("published");
    sim.advance_to(local("2026-12-05", 9)).await.expect("time");
    sim.publish_policies(&[v4]).await.expect("published");
    sim.settle().await.expect("settles");

    let opened: Vec<CaseOpened> =
        renewal_e2e::events(&system, renewal_contract::subject::LISTS_CASE_OPENED).await;
    let mut nos: Vec<&str> = opened.iter().map(|c| c.policy_no.as_str()).collect();
    nos.sort();
    assert_eq!(nos, ["V1", "V3"], "one case per vehicle");
    for (joined, lead) in [("V2", "V1"), ("V4", "V3")] {
        let (status, view) = system.get_json(&format!("/v1/policies/{joined}")).await;
        assert_eq!(status, 200, "{view}");
        assert_eq!(view["case"]["policies"], json!([lead, joined]), "{view}");
    }

    // T-60 of the vehicle (17 December): one SMS for the car, not one per policy.
    sim.advance_to(local("2026-12-28", 12)).await.expect("time");
    assert_eq!(sim.vendor.texts_for(&v1.mobile).len(), 1);
    let sms = scalar_i64(
        &system,
        "SELECT count(*) FROM dispatch.sms_messages WHERE policy_no IN ('V1', 'V2')",
    )
    .await;
    assert_eq!(sms, 1);
    // The review counts vehicles.
    let (_, report) = system
        .get_json("/v1/reports/renewal-rate?from=2027-02-01&to=2027-02-28")
        .await;
    assert_eq!(report["total"]["due"], 2, "{report}");
    system.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_seller_keeps_the_credit_only_where_they_left_the_customers_real_data() {
    let system = TestSystem::start("at", local("2026-12-01", 0)).await;
    let sim = &system.sim;
    system.load_org(ORG_CSV).await;
    // Both sold by SH01-A03, both renewed by their owner SH01-A01; only A2's seller
    // left the customer's real data at sale.
    let mut a1 = policy("A1", "2027-02-15");
    a1.real_data_at_sale = false;
    let a2 = policy("A2", "2027-02-15");
    sim.publish_policies(&[a1, a2]).await.expect("published");
    sim.advance_to(local("2026-12-01", 9)).await.expect("time");
    for no in ["A1", "A2"] {
        let (status, body) = system
            .post_json(
                &format!("/v1/claims/{no}:claim"),
                json!({"branch_code": "SH01", "owner_agent": "SH01-A01"}),
            )
            .await;
        assert_eq!(status, 200, "{body}");
    }
    sim.advance_to(local("2026-12-20", 12)).await.expect("time");
    for no in ["A1", "A2"] {
        sim.publish_renewal(no, &format!("{no}-2027"))
            .await
            .expect("renewed");
    }
    sim.settle().await.expect("settles");
    let (_, a1) = system.get_json("/v1/cases/A1").await;
    assert_eq!(
        (&a1["credited_agent"], &a1["originating_agent"]),
        (&json!("SH01-A01"), &json!("SH01-A03")),
        "{a1}"
    );
    let credits = system
        .get_items("/v1/reports/attribution?city=310000")
        .await;
    let renewed = |agent: &str| {
        credits
            .as_array()
            .and_then(|c| c.iter().find(|c| c["credited_agent"] == agent))
            .map(|c| c["renewed"].clone())
            .unwrap_or(json!(0))
    };
    assert_eq!(
        (renewed("SH01-A01"), renewed("SH01-A03")),
        (json!(1), json!(1)),
        "{credits}"
    );
    system.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_owners_day_and_each_branchs_week_are_reported_and_issued() {
    use renewal_contract::assignment::ReviewIssued;
    let system = TestSystem::start("pr", local("2026-12-01", 0)).await;
    let sim = &system.sim;
    system.load_org(ORG_CSV).await;
    sim.publish_policies(&[policy("W1", "2027-02-15")])
        .await
        .expect("published");
    sim.advance_to(local("2026-12-01", 9)).await.expect("time");
    let (status, body) = system
        .post_json(
            "/v1/claims/W1:claim",
            json!({"branch_code": "SH01", "owner_agent": "SH01-A03"}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    // Saturday 16 January, T-30: the owner calls, the customer promises and renews.
    sim.advance_to(local("2027-01-16", 10) + chrono::Duration::minutes(5))
        .await
        .expect("time");
    let tasks = owner_calls(&system).await;
    let task = task_of(&tasks, "W1");
    let id = task["id"].as_str().expect("id");
    let (status, done) = system
        .post_json(
            &format!("/v1/phone-tasks/{id}:complete"),
            json!({"lease_token": task["lease_token"], "outcome": "promised",
                   "promised_date": "2027-01-16"}),
        )
        .await;
    assert_eq!(status, 200, "{done}");
    sim.advance_to(local("2027-01-16", 15)).await.expect("time");
    sim.publish_renewal("W1", "W1-2027").await.expect("renewed");
    // Monday 18 January: Saturday's and Sunday's days and last week were issued.
    sim.advance_to(local("2027-01-18", 1)).await.expect("time");
    let (status, day) = system
        .get_json("/v1/reports/owner-progress?branch=SH01&day=2027-01-16")
        .await;
    assert_eq!(status, 200, "{day}");
    assert_eq!(
        day["owners"],
        json!([{"agent_code": "SH01-A03", "calls": 1, "promises": 1, "renewals": 1}]),
        "{day}"
    );
    let (_, week) = system
        .get_json("/v1/reports/branch-week?branch=SH01&day=2027-01-13")
        .await;
    assert_eq!(
        (
            &week["from"],
            &week["to"],
            &week["calls"],
            &week["renewals"]
        ),
        (
            &json!("2027-01-11"),
            &json!("2027-01-17"),
            &json!(1),
            &json!(1)
        ),
        "{week}"
    );
    let csv = system
        .http
        .get(system.url("/v1/reports/owner-progress?branch=SH01&day=2027-01-16&format=csv"))
        .send()
        .await
        .expect("answers")
        .text()
        .await
        .expect("text");
    assert!(csv.contains("SH01-A03,1,1,1"), "{csv}");
    let issued: Vec<ReviewIssued> =
        renewal_e2e::events(&system, renewal_contract::subject::ASSIGNMENT_REVIEW_ISSUED).await;
    let of = |kind: &str, period: &str| {
        issued
            .iter()
            .find(|r| r.kind == kind && r.period == period && r.branch_code == "SH01")
            .map(|r| serde_json::from_str::<Value>(&r.body_json).expect("json"))
    };
    let daily = of("owner_daily", "2027-01-16").expect("Saturday issued");
    assert_eq!(daily["calls"], 1, "{daily}");
    let weekly = of("branch_weekly", "2027-01-11").expect("the week issued on Monday");
    assert_eq!(weekly["renewals"], 1, "{weekly}");
    system.finish().await;
}
