//! The console in a real browser (issue 19): headless Chromium, driven over WebDriver,
//! against the whole system on the simulated clock with the real Postgres and NATS.
//! People sign in through the development issuer's page (the OIDC code flow with
//! PKCE), then: branch staff claim two cases at once; a user of another branch is
//! refused the case and the branch's claims, and nothing changes; an owner takes the
//! next call and records a promise; HQ operations requeue a dead phone task, resend a
//! dead SMS (its number masked), and upload a CSV with a bad row and download its
//! rejection; an analyst sees the season chart
//! and no mobile. Every page is photographed into `target/console-screenshots/`.

use renewal_e2e::browser::{Browser, screenshot_dir};
use renewal_e2e::{ORG_CSV, TestSystem, insert_campaign_tasks, local, policy};
use serde_json::{Value, json};

async fn scalar_text(system: &TestSystem, sql: &str) -> String {
    sqlx::query_scalar(sqlx::AssertSqlSafe(sql.to_owned()))
        .fetch_one(system.sim.pool())
        .await
        .expect("query")
}

/// Three Shanghai policies listed for branch SH01 on 1 December.
async fn listed(system: &TestSystem) {
    system.load_org(ORG_CSV).await;
    let policies: Vec<_> = ["W1", "W2", "W3"]
        .iter()
        .map(|no| policy(no, "2027-02-15"))
        .collect();
    system
        .sim
        .publish_policies(&policies)
        .await
        .expect("published");
    system
        .sim
        .advance_to(local("2026-12-01", 9))
        .await
        .expect("time");
    let claims = system
        .get_items("/v1/branches/SH01/claims?state=pending")
        .await;
    assert_eq!(claims.as_array().map(Vec::len), Some(3), "{claims}");
}

async fn owner_of(system: &TestSystem, no: &str) -> Value {
    let (status, case) = system.get_json(&format!("/v1/cases/{no}")).await;
    assert_eq!(status, 200, "{case}");
    case["owner_agent"].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn branch_staff_claim_two_cases_and_another_branch_is_refused() {
    let system = TestSystem::start("cbr", local("2026-12-01", 0)).await;
    listed(&system).await;
    let browser = Browser::start(&system.url("")).await;
    browser.goto("/console/").await;
    browser.find("#sign-in").await;
    browser.screenshot("sign-in").await;
    browser.click("#sign-in").await;
    browser.find("#role").await;
    browser.screenshot("dev-issuer-sign-in").await;

    // Branch staff of SH01: the claims page lists the three; two are claimed at once.
    browser.sign_in("branch_admin", "", "SH01", "310000").await;
    let url = browser.client.current_url().await.expect("url");
    assert!(url.path().ends_with("/console/claims"), "{url}");
    browser.find("input[value=W1]").await;
    browser.screenshot("claims").await;
    browser.click("input[value=W1]").await;
    browser.click("input[value=W2]").await;
    browser
        .find("#owner")
        .await
        .select_by_value("SH01-A02")
        .await
        .expect("owner");
    browser.click("#claim").await;
    let results = browser.text("#claim-results").await;
    assert!(
        results.contains("W1") && results.contains("W2"),
        "{results}"
    );
    assert_eq!(
        browser
            .client
            .find_all(fantoccini::Locator::Css("#claim-results li.done"))
            .await
            .expect("items")
            .len(),
        2
    );
    browser.screenshot("claims-done").await;
    for no in ["W1", "W2"] {
        assert_eq!(
            owner_of(&system, no).await,
            json!("SH01-A02"),
            "{no} claimed for SH01-A02"
        );
    }
    assert_eq!(
        owner_of(&system, "W3").await,
        Value::Null,
        "W3 was not chosen"
    );
    // The case page: the policy with its mobile masked, the owner's history.
    browser.goto("/console/cases/W1").await;
    let masked = browser.text("#mobile-masked").await;
    assert!(
        !masked.contains("13812345678") && masked.contains('*'),
        "{masked}"
    );
    assert!(browser.text("main").await.contains("SH01-A02"));
    browser.screenshot("case").await;
    // In English too.
    browser.goto("/console/lang/en?back=/console/claims").await;
    assert!(browser.text("h1").await.contains("Pending claims"));
    browser.screenshot("claims-en").await;
    browser.close().await;

    // Another branch's staff: refused the case and SH01's claims, and nothing changes.
    let other = Browser::start(&system.url("")).await;
    other.sign_in("branch_admin", "", "SH02", "310000").await;
    other.goto("/console/cases/W3").await;
    let refusal = other.text("#refusal").await;
    assert!(
        !refusal.is_empty() && !refusal.contains("王芳"),
        "{refusal}"
    );
    other.screenshot("case-refused-other-branch").await;
    let (status, _) = other_post(&system, &other).await;
    assert_eq!(status, 403, "a claim for another branch is refused");
    assert_eq!(
        owner_of(&system, "W3").await,
        Value::Null,
        "nothing written on a refusal"
    );
    other.close().await;

    // SH01 declines W3; the city company claims it from the pool for SH02's agent.
    let (status, body) = system
        .post_json(
            "/v1/claims/W3:decline",
            json!({"branch_code": "SH01", "reason": "customer moved"}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let city = Browser::start(&system.url("")).await;
    city.sign_in("city_admin", "", "", "310000").await;
    city.goto("/console/pool").await;
    city.click("input[value=W3]").await;
    city.type_into("input[name=branch]", "SH02").await;
    city.type_into("input[name=owner]", "SH02-A01").await;
    city.click("#city-form button.primary").await;
    assert!(city.text("#claim-results li.done").await.contains("W3"));
    city.screenshot("pool-claimed").await;
    assert_eq!(
        owner_of(&system, "W3").await,
        json!("SH02-A01"),
        "claimed from the pool"
    );
    city.close().await;

    // An analyst: the season's chart, drawn, and no mobile anywhere on the page.
    let analyst = Browser::start(&system.url("")).await;
    analyst.sign_in("analyst", "", "", "").await;
    analyst
        .goto("/console/season?from=2027-01-01&to=2027-03-31")
        .await;
    analyst.find("#funnel-chart[data-drawn] canvas").await;
    assert_eq!(analyst.text("#total-due").await, "3");
    // Every case has an owner now (two claimed, one from the pool); none was called.
    assert_eq!(analyst.text("#total-owned").await, "3");
    assert_eq!(analyst.text("#total-contacted").await, "0");
    let page = analyst.source().await;
    assert!(
        !page.contains("13812345678") && !page.contains("王芳"),
        "no personal data"
    );
    analyst.screenshot("season").await;
    // The weekly trend's groups: the ISO week the policies expire in (15 February 2027).
    let (status, weeks) = system
        .get_json("/v1/reports/renewal-rate?from=2027-01-01&to=2027-03-31&group_by=week")
        .await;
    assert_eq!(status, 200, "{weeks}");
    assert_eq!(weeks["groups"][0]["key"], "2027-W07", "{weeks}");
    assert_eq!(weeks["groups"][0]["due"], 3, "{weeks}");
    analyst.goto("/console/cases/W1").await;
    assert!(
        !analyst.text("#refusal").await.is_empty(),
        "the case page is not an analyst's"
    );
    analyst.close().await;
    system.finish().await;
}

/// The claim form posted by SH02's staff for SH01's W3, with their session and token:
/// what the browser would send if the page let them.
async fn other_post(system: &TestSystem, browser: &Browser) -> (u16, String) {
    let cookie = browser.session_cookie().await;
    let csrf = browser
        .find("body")
        .await
        .attr("data-csrf")
        .await
        .expect("attr")
        .unwrap_or_default();
    let response = reqwest::Client::new()
        .post(system.url("/console/claims"))
        .header("cookie", cookie)
        .header("x-csrf-token", csrf)
        .header("content-type", "application/x-www-form-urlencoded")
        .body("branch=SH01&action=claim&owner=SH01-A02&policy_no=W3")
        .send()
        .await
        .expect("answers");
    (
        response.status().as_u16(),
        response.text().await.unwrap_or_default(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_owner_takes_the_next_call_and_records_a_promise() {
    let system = TestSystem::start("cow", local("2026-12-01", 0)).await;
    listed(&system).await;
    let (status, body) = system
        .post_json(
            "/v1/claims/W1:claim",
            json!({"branch_code": "SH01", "owner_agent": "SH01-A03"}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    // The core system's quote: the card states the renewal terms.
    let quote = renewal_contract::core::QuoteIssued {
        quote_id: "QUOTE-W1".into(),
        policy_no: "W1".into(),
        premium_fen: 420_000,
        last_premium_fen: 452_000,
        claim_free_years: 2,
        ncd_level: -2,
        compulsory_fen: 95_000,
        commercial_fen: 325_000,
        valid_until: "2027-02-15".into(),
        promotion: "赠送道路救援卡".into(),
        issued_at_ms: local("2026-12-01", 9).timestamp_millis(),
    };
    system
        .sim
        .publish_quotes(&[quote])
        .await
        .expect("published");
    // T-30, in the morning: the owner's call is waiting.
    system
        .sim
        .advance_to(local("2027-01-16", 10))
        .await
        .expect("time");

    let browser = Browser::start(&system.url("")).await;
    browser.sign_in("agent", "SH01-A03", "SH01", "310000").await;
    browser.click("#next-call").await;
    let name = browser.text("#customer-name").await;
    assert_eq!(name, "王芳", "the owner calls: the card shows the customer");
    assert!(
        browser
            .text("#customer-mobile")
            .await
            .contains("13812345678")
    );
    browser.screenshot("workbench").await;
    browser.click("#outcome-promised").await;
    browser
        .client
        .execute(
            "document.getElementById('promised_date').value = '2027-01-20'",
            vec![],
        )
        .await
        .expect("the date is set");
    browser.click("#save-outcome").await;
    let said = browser.text("#task .notice").await;
    assert!(said.contains("承诺续保"), "{said}");
    let outcome = scalar_text(
        &system,
        "SELECT outcome FROM dispatch.phone_tasks WHERE policy_no = 'W1' AND state = 'completed'",
    )
    .await;
    assert_eq!(outcome, "promised");
    // The season's funnel: three cases, each owned by now (W1 claimed, the other two
    // assigned once their claim window passed), one contacted (the only call made).
    system.sim.settle().await.expect("settles");
    let (status, funnel) = system
        .get_json("/v1/reports/ownership?from=2027-01-01&to=2027-03-31")
        .await;
    assert_eq!(status, 200, "{funnel}");
    assert_eq!(
        (&funnel["cases"], &funnel["owned"], &funnel["contacted"]),
        (&json!(3), &json!(3), &json!(1)),
        "{funnel}"
    );
    // A phone's width: the card still reads.
    browser.resize(390, 844).await;
    browser.goto("/console/workbench").await;
    browser.find("#next-call").await;
    browser.screenshot("workbench-phone").await;
    browser.close().await;
    system.finish().await;
}

/// A campaign task leased five times without an outcome: dead.
async fn dead_task(system: &TestSystem) -> String {
    insert_campaign_tasks(system.sim.pool(), &["W3".to_owned()], system.sim.now()).await;
    for _ in 0..5 {
        let (status, leased) = system
            .post_json(
                "/v1/phone-tasks:lease",
                json!({"agent_id": "CC-1", "queue": "campaign", "max": 1, "lease_seconds": 60}),
            )
            .await;
        assert_eq!(status, 200, "{leased}");
        let now = system.sim.now();
        system
            .sim
            .advance_to(now + chrono::Duration::seconds(61))
            .await
            .expect("time");
    }
    // The next lease finds it out of leases, and it is dead.
    let (status, leased) = system
        .post_json(
            "/v1/phone-tasks:lease",
            json!({"agent_id": "CC-1", "queue": "campaign", "max": 1}),
        )
        .await;
    assert_eq!((status, &leased["tasks"]), (200, &json!([])), "{leased}");
    scalar_text(
        system,
        "SELECT id::text FROM dispatch.phone_tasks WHERE policy_no = 'W3' AND state = 'dead'",
    )
    .await
}

/// A reminder the vendor never took (five attempts while it was down, in the
/// morning after the dead task's leases): dead.
async fn dead_sms(system: &TestSystem) -> String {
    use renewal::vendor_sim::Fault;
    let mut command = renewal_e2e::send_sms("+8613900000044");
    command.policy_no = "W9".into();
    system
        .sim
        .vendor
        .inject(&command.mobile, Fault::Unavailable { times: 100 });
    renewal_e2e::queue_sms(system, &command).await;
    let now = system.sim.now();
    system
        .sim
        .advance_to(now + chrono::Duration::minutes(10))
        .await
        .expect("time");
    let state = scalar_text(
        system,
        &format!(
            "SELECT state || ' ' || attempts || ' ' || next_attempt_at || ' ' || coalesce(last_error, '') FROM dispatch.sms_messages WHERE id = '{}'",
            command.command_id
        ),
    )
    .await;
    assert!(
        state.starts_with("dead "),
        "{state} at {}",
        system.sim.now()
    );
    command.command_id
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operations_requeue_a_dead_task_resend_an_sms_and_download_an_import_rejection() {
    let system = TestSystem::start("cop", local("2026-12-01", 0)).await;
    listed(&system).await;
    let id = dead_task(&system).await;
    let sms = dead_sms(&system).await;

    let browser = Browser::start(&system.url("")).await;
    browser.sign_in("hq_admin", "", "", "").await;
    browser.goto("/console/operations").await;
    browser.find(&format!("#dead-{id}")).await;
    browser.screenshot("operations").await;
    browser.click(&format!("#dead-{id} button.requeue")).await;
    let said = browser.text("#notice .notice, tr .notice, .notice").await;
    assert!(said.contains(&id), "{said}");
    let state = scalar_text(
        &system,
        &format!("SELECT state FROM dispatch.phone_tasks WHERE id = '{id}'"),
    )
    .await;
    assert_eq!(state, "open", "the dead task is back in its queue");

    // The dead SMS, its number masked, sent again.
    browser.goto("/console/operations").await;
    let row = browser.text(&format!("#sms-{sms}")).await;
    assert!(row.contains("139****0044") && row.contains("W9"), "{row}");
    assert!(
        !browser.source().await.contains("13900000044"),
        "no full number"
    );
    browser.click(&format!("#sms-{sms} button.resend")).await;
    let said = browser.text("tr .notice, .notice").await;
    assert!(said.contains(&sms), "{said}");
    // Sent again as a new message, which the sender takes (the vendor is still down,
    // so it waits for its next attempt).
    let resent = scalar_text(
        &system,
        &format!(
            "SELECT n.state || ' ' || n.attempts FROM dispatch.sms_messages o
             JOIN dispatch.sms_messages n ON n.id = o.resent_as WHERE o.id = '{sms}'"
        ),
    )
    .await;
    assert!(
        ["queued 0", "sending 1", "queued 1"].contains(&resent.as_str()),
        "{resent}"
    );

    // A CSV with one good row and one bad mobile.
    let csv = "policy_no,customer_name,mobile,id_number,plate,vin,city_code,branch_code,agent_code,channel,category,start_date,end_date,premium,important,group_policy\n\
        U1,李雷,13900001111,11010519491231002X,沪AD12345,LSVAU218XN2183294,310000,SH01,SH01-A01,dealer,insured_last_year,2026-03-01,2027-02-28,3250.50,否,0\n\
        U2,韩梅,not-a-mobile,11010519491231002X,沪AD12346,LSVAU2180N2000001,310000,SH01,SH01-A01,dealer,insured_last_year,2026-03-01,2027-02-28,3250.50,否,0\n";
    let file = screenshot_dir().join(format!("import-{}.csv", system.name));
    std::fs::write(&file, csv).expect("the CSV");
    browser
        .find("#import-file")
        .await
        .send_keys(&file.display().to_string())
        .await
        .expect("file chosen");
    browser.click("#import-upload").await;
    assert_eq!(browser.text("#rejected-count").await, "1");
    browser.screenshot("operations-import").await;
    let href = browser
        .find("#download-rejections")
        .await
        .attr("href")
        .await
        .expect("attr")
        .expect("a link");
    let rejections = reqwest::Client::new()
        .get(system.url(&href))
        .header("cookie", browser.session_cookie().await)
        .send()
        .await
        .expect("answers");
    assert_eq!(rejections.status().as_u16(), 200);
    let text = rejections.text().await.expect("text");
    assert!(
        text.contains("mobile") && text.contains('3'),
        "line 3's mobile: {text}"
    );
    let _ = std::fs::remove_file(&file);

    // The remaining pages, photographed as HQ sees them.
    for (path, name) in [
        ("/console/supervisor?branch=SH01", "supervisor"),
        ("/console/pool?city=310000", "pool"),
        ("/console/research?city=310000", "research"),
        ("/console/plans?city=310000", "plans"),
        ("/console/organisation?branch=SH01", "organisation"),
        ("/console/season", "season-hq"),
    ] {
        browser.goto(path).await;
        browser.find("main h1").await;
        let page = browser.source().await;
        assert!(!page.contains("id=\"refusal\""), "{path} answers HQ");
        browser.screenshot(name).await;
    }
    // An agent's capacity, set on the Organisation page.
    browser.goto("/console/organisation?branch=SH01").await;
    browser
        .type_into("input[aria-label='容量 SH01-A01']", "42")
        .await;
    browser
        .click("input[aria-label='容量 SH01-A01'] + button")
        .await;
    browser.find("#notice .notice.done").await;
    let (status, agent) = system.get_json("/v1/agents/SH01-A01").await;
    assert_eq!((status, &agent["capacity"]), (200, &json!(42)), "{agent}");
    browser.close().await;
    system.finish().await;
}
