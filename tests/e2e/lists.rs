//! The lists service against the real Postgres and NATS: CSV import with every kind of
//! bad row (UTF-8 with BOM over HTTP, GBK through the CLI), personal data encrypted at
//! rest and found by blind index, holiday pull-forward and the unknown-year alert,
//! buckets in the city's time zone, monthly and on-demand renewal lists (one list per
//! policy), lapse and lapse lists, a renewal after the case opened and one after the
//! lapse, and the KPI report.

use renewal_contract::lists::{
    BucketChanged, CaseClosed, CaseLapsed, CaseOutcome, ListIssued, ListKind,
};
use renewal_contract::subject;
use renewal_e2e::{TestSystem, database_url, events, local, policy, renewal_binary};
use secrecy::ExposeSecret;

const HEADER: &str = "policy_no,customer_name,mobile,id_number,plate,vin,city_code,branch_code,agent_code,channel,category,start_date,end_date,premium,important,group_policy";

fn row(no: &str, mobile: &str, vin: &str, start: &str, end: &str) -> String {
    // Each row a vehicle of its own, unless it names another VIN than the default.
    let vin = if vin == VIN {
        renewal_e2e::vin_for(no)
    } else {
        vin.to_owned()
    };
    format!(
        "{no},李雷,{mobile},11010519491231002X,沪AD12345,{vin},310000,SH01,SH01-A01,dealer,insured_last_year,{start},{end},3250.50,否,0"
    )
}

const VIN: &str = "LSVAU218XN2183294";

async fn post_csv(system: &TestSystem, body: Vec<u8>, query: &str) -> (u16, serde_json::Value) {
    let response = system
        .http
        .clone()
        .post(system.url(&format!("/v1/policies:import{query}")))
        .header("content-type", "text/csv")
        .body(body)
        .send()
        .await
        .expect("HTTP answers");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or_default())
}

async fn scalar_i64(system: &TestSystem, sql: &str) -> i64 {
    sqlx::query_scalar(sqlx::AssertSqlSafe(sql.to_owned()))
        .fetch_one(system.sim.pool())
        .await
        .expect("query")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_csv_import_loads_the_good_rows_and_reports_every_bad_one() {
    let system = TestSystem::start("imp", local("2026-12-02", 9)).await;
    let lines = [
        HEADER.to_owned(),
        row("C1", "138 1234 5678", VIN, "2026-01-20", "2027-01-20"),
        row("C2", "+86 139 0000 1111", VIN, "2026/06/30", "2027/06/30"),
        row("C3", "13800001111", VIN, "01/12/2026", "2027-01-01"),
        row("C4", "12012345678", VIN, "2026-01-21", "2027-01-21"),
        row(
            "C5",
            "13800002222",
            "LSVAU2180N2183294",
            "2026-01-22",
            "2027-01-22",
        ),
        row("C6", "13800003333", VIN, "2027-01-23", "2026-01-23"),
        row("C1", "13800004444", VIN, "2026-01-24", "2027-01-24"),
        "C8,only,three".to_owned(),
    ];
    let mut body = vec![0xEF, 0xBB, 0xBF];
    body.extend_from_slice(lines.join("\r\n").as_bytes());
    let (status, report) = post_csv(&system, body.clone(), "?file_name=december.csv").await;
    assert_eq!(status, 200, "{report}");
    assert_eq!(report["encoding"], "utf-8");
    assert_eq!(report["rows"], 8);
    assert_eq!(report["inserted"], 2);
    assert_eq!(report["rejected"], 6);
    let rejections: Vec<(u64, String)> = report["rejections"]
        .as_array()
        .expect("rejections")
        .iter()
        .map(|r| {
            (
                r["row"].as_u64().expect("row"),
                r["column"].as_str().expect("column").to_owned(),
            )
        })
        .collect();
    assert_eq!(
        rejections,
        [
            (4, "start_date".to_owned()),
            (5, "mobile".to_owned()),
            (6, "vin".to_owned()),
            (7, "end_date".to_owned()),
            (8, "policy_no".to_owned()),
            (9, "*".to_owned()),
        ],
        "{report}"
    );
    assert!(
        report["rejections"][4]["reason"]
            .as_str()
            .expect("reason")
            .contains("duplicate of line 2"),
        "{report}"
    );
    assert_eq!(
        report["cases_opened"], 1,
        "C1 expires in 49 days, C2 in 210"
    );
    system.sim.settle().await.expect("settles");

    let (status, c1) = system.get_json("/v1/policies/C1").await;
    assert_eq!(status, 200, "{c1}");
    assert_eq!(c1["case"]["state"], "open");
    assert_eq!(c1["case"]["bucket"], "31-60");
    assert_eq!(c1["mobile_masked"], "138****5678");
    let (_, c2) = system.get_json("/v1/policies/C2").await;
    assert!(c2["case"].is_null(), "{c2}");
    assert_eq!(system.get_json("/v1/policies/C3").await.0, 404);

    // Personal data is not in the table in the clear, yet the mobile is findable.
    let plain = scalar_i64(
        &system,
        "SELECT count(*) FROM lists.policies
         WHERE position(convert_to('李雷', 'UTF8') IN name_enc) > 0
            OR position(convert_to('13812345678', 'UTF8') IN mobile_enc) > 0
            OR position(convert_to('11010519491231002X', 'UTF8') IN id_number_enc) > 0",
    )
    .await;
    assert_eq!(plain, 0);
    let (status, found) = system
        .get_json("/v1/policies?mobile=%2B86%20138-1234-5678")
        .await;
    assert_eq!(status, 200, "{found}");
    let found: Vec<&str> = found["policies"]
        .as_array()
        .expect("policies")
        .iter()
        .map(|p| p["policy_no"].as_str().expect("policy_no"))
        .collect();
    assert_eq!(found, ["C1"]);
    assert_eq!(system.get_json("/v1/policies?mobile=123").await.0, 400);

    // The same file again changes nothing; every rejection is kept.
    let (status, again) = post_csv(&system, body, "").await;
    assert_eq!(status, 200, "{again}");
    assert_eq!(
        (
            &again["inserted"],
            &again["updated"],
            &again["unchanged"],
            &again["rejected"]
        ),
        (&0.into(), &0.into(), &2.into(), &6.into())
    );
    assert_eq!(
        scalar_i64(&system, "SELECT count(*) FROM lists.policies").await,
        2
    );
    assert_eq!(
        scalar_i64(&system, "SELECT count(*) FROM lists.cases").await,
        1
    );
    let id = again["import_id"].as_str().expect("id");
    let csv = system
        .http
        .get(system.url(&format!("/v1/imports/{id}/rejections")))
        .send()
        .await
        .expect("answers")
        .text()
        .await
        .expect("text");
    assert_eq!(csv.lines().count(), 7, "{csv}");
    assert!(csv.contains("6,vin,"), "{csv}");

    // A newer version updates; an older one is stale.
    let newer = format!(
        "{HEADER},version\n{},2\n",
        row("C2", "13900001111", VIN, "2026-06-30", "2027-06-29")
    );
    let (_, r) = post_csv(&system, newer.into_bytes(), "").await;
    assert_eq!(r["updated"], 1, "{r}");
    let older = format!(
        "{HEADER},version\n{},1\n",
        row("C2", "13900001111", VIN, "2026-06-30", "2027-06-28")
    );
    let (_, r) = post_csv(&system, older.into_bytes(), "").await;
    assert_eq!(r["stale"], 1, "{r}");

    // A file without a required column is refused before anything is written.
    let imports = scalar_i64(&system, "SELECT count(*) FROM lists.imports").await;
    let (status, bad) = post_csv(&system, b"policy_no,mobile\nX1,13812345678\n".to_vec(), "").await;
    assert_eq!(status, 400, "{bad}");
    assert_eq!(bad["code"], "invalid_header");
    assert_eq!(
        scalar_i64(&system, "SELECT count(*) FROM lists.imports").await,
        imports
    );
    system.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gbk_file_imports_through_the_command_line() {
    let system = TestSystem::start("gbk", local("2026-12-02", 9)).await;
    let text = format!(
        "{HEADER}\n{}\n{}\n",
        row("G1", "13812345678", VIN, "2026年02月01日", "2027年02月01日"),
        row("G2", "1381234567", VIN, "2026-02-01", "2027-02-01"),
    );
    let (gbk, _, lossy) = encoding_rs::GBK.encode(&text);
    assert!(!lossy);
    let dir = std::env::temp_dir().join(&system.name);
    std::fs::create_dir_all(&dir).expect("temp dir");
    let file = dir.join("portfolio-gbk.csv");
    std::fs::write(&file, &gbk).expect("written");
    let rejections = dir.join("rejections.csv");
    let out = std::process::Command::new(renewal_binary())
        .args(["import", "policies"])
        .arg(&file)
        .arg("--rejections")
        .arg(&rejections)
        .env("DATABASE_URL", database_url(&system.name).expose_secret())
        .env("PII_KEY", renewal::simulation::DEMO_PII_KEY)
        .env("RUST_LOG", "off")
        .output()
        .expect("renewal runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(3),
        "rows were rejected: {stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("(gbk)") && stdout.contains("1 inserted") && stdout.contains("1 rejected"),
        "{stdout}"
    );
    assert!(
        !stdout.contains("1381234567"),
        "no personal data on the terminal: {stdout}"
    );
    let rejected = std::fs::read_to_string(&rejections).expect("rejections file");
    assert!(rejected.contains("3,mobile,has 10 digits"), "{rejected}");

    // The name was read as GBK and sealed; it opens to the right characters.
    let sealed: Vec<u8> =
        sqlx::query_scalar("SELECT name_enc FROM lists.policies WHERE policy_no = 'G1'")
            .fetch_one(system.sim.pool())
            .await
            .expect("G1 loaded");
    let key = renewal_lists::ListsConfig::with_key(renewal::simulation::DEMO_PII_KEY).expect("key");
    let place = renewal_platform::pii::Place::new("lists.policies", "name_enc", "G1");
    assert_eq!(key.pii.open(&sealed, place).expect("opens"), "李雷");
    let _ = std::fs::remove_dir_all(&dir);
    system.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_policy_expiring_in_a_long_holiday_is_worked_before_it() {
    let system = TestSystem::start("hol", local("2026-07-02", 9)).await;
    let sim = &system.sim;
    // National Day 2026: 1-7 October; the last working day before it is 30 September.
    sim.publish_policies(&[policy("H1", "2026-10-03"), policy("N1", "2026-10-09")])
        .await
        .expect("published");
    sim.settle().await.expect("settles");
    let (_, h1) = system.get_json("/v1/policies/H1").await;
    assert_eq!(
        h1["case"]["state"], "open",
        "90 days before 30 September: {h1}"
    );
    assert_eq!(h1["case"]["effective_expiry_date"], "2026-09-30");
    assert_eq!(h1["case"]["holiday"], "National Day");
    let (_, n1) = system.get_json("/v1/policies/N1").await;
    assert!(n1["case"].is_null(), "99 days away: {n1}");
    // Its T-60 SMS moves with it: 60 days before 30 September, not 3 October.
    let due: chrono::DateTime<chrono::Utc> = sqlx::query_scalar(
        "SELECT t.due_at FROM scheduler.timers t JOIN scheduler.cases c USING (case_id)
         WHERE c.policy_no = 'H1' AND t.stage = 'T-60'",
    )
    .fetch_one(sim.pool())
    .await
    .expect("timer");
    assert_eq!(due, local("2026-08-01", 10));
    system.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expiry_in_a_year_the_calendar_does_not_cover_raises_an_alert() {
    let system = TestSystem::start("cal", local("2027-11-20", 9)).await;
    let sim = &system.sim;
    sim.publish_policies(&[policy("Y1", "2028-01-10"), policy("Y2", "2027-12-20")])
        .await
        .expect("published");
    sim.settle().await.expect("settles");
    let alerts: Vec<(i32, i64)> = sqlx::query_as("SELECT year, cases FROM lists.calendar_alerts")
        .fetch_all(sim.pool())
        .await
        .expect("alerts");
    assert_eq!(alerts, [(2028, 1)]);
    let known: Vec<(String, bool)> =
        sqlx::query_as("SELECT policy_no, calendar_known FROM lists.cases ORDER BY policy_no")
            .fetch_all(sim.pool())
            .await
            .expect("cases");
    assert_eq!(known, [("Y1".to_owned(), false), ("Y2".to_owned(), true)]);
    system.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn days_to_expiry_count_in_the_city_time_zone() {
    // 01:00 in Shanghai is 23:00 the day before in Urumqi.
    let system = TestSystem::start("tz", local("2026-11-29", 1)).await;
    let sim = &system.sim;
    let mut urumqi = policy("U1", "2027-02-27");
    urumqi.city_code = "650100".into();
    sim.publish_policies(&[urumqi, policy("S1", "2027-02-27")])
        .await
        .expect("published");
    sim.settle().await.expect("settles");
    let (_, s1) = system.get_json("/v1/policies/S1").await;
    assert_eq!(s1["case"]["state"], "open", "90 days in Shanghai: {s1}");
    let (_, u1) = system.get_json("/v1/policies/U1").await;
    assert!(u1["case"].is_null(), "still 91 days in Urumqi: {u1}");
    sim.advance_to(local("2026-11-29", 3))
        .await
        .expect("time moves");
    let (_, u1) = system.get_json("/v1/policies/U1").await;
    assert_eq!(
        u1["case"]["state"], "open",
        "Urumqi's daily run at 00:05 local: {u1}"
    );
    system.finish().await;
}

fn in_branch(no: &str, end: &str, city: &str, branch: &str) -> renewal_contract::core::Policy {
    let mut p = policy(no, end);
    p.city_code = city.into();
    p.branch_code = branch.into();
    p.agent_code = format!("{branch}-A01");
    p
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lists_buckets_lapses_and_renewals_over_a_month() {
    let system = TestSystem::start("mon", local("2026-11-29", 9)).await;
    let sim = &system.sim;
    // The first run (29 November, November's issue day long past) is done before the
    // policies arrive: it has nothing to list.
    sim.settle().await.expect("settles");
    sim.publish_policies(&[
        in_branch("L1", "2026-11-30", "310000", "SH01"),
        in_branch("M1", "2027-02-15", "310000", "SH01"),
        in_branch("M2", "2027-01-29", "310000", "SH01"),
        in_branch("O1", "2027-02-20", "310000", "SH02"),
        in_branch("C2", "2027-02-10", "320100", "NJ01"),
    ])
    .await
    .expect("published");
    sim.settle().await.expect("settles");
    let (_, m2) = system.get_json("/v1/policies/M2").await;
    assert_eq!(m2["case"]["bucket"], "61-90", "{m2}");

    // Nanjing issues its lists now, ahead of the month.
    let response = system
        .http
        .clone()
        .post(system.url("/v1/lists:issue"))
        .json(&serde_json::json!({"city_code": "320100"}))
        .send()
        .await
        .expect("answers");
    assert_eq!(response.status().as_u16(), 200);
    let issued: serde_json::Value = response.json().await.expect("json");
    assert_eq!(issued["renewal"]["lists"], 1, "{issued}");
    assert_eq!(issued["renewal"]["items"], 1, "{issued}");
    let bad = system
        .http
        .clone()
        .post(system.url("/v1/lists:issue"))
        .json(&serde_json::json!({"city": "320100"}))
        .send()
        .await
        .expect("answers");
    assert_eq!(bad.status().as_u16(), 400);

    sim.advance_to(local("2026-12-01", 9))
        .await
        .expect("time moves");
    // L1 was not renewed by the end of 30 November.
    let (_, l1) = system.get_json("/v1/policies/L1").await;
    assert_eq!(
        (&l1["status"], &l1["case"]["state"]),
        (&"lapsed".into(), &"lapsed".into())
    );
    // It stays open for lapse rescue: lapsed, not closed.
    let lapsed: Vec<CaseLapsed> = events(&system, subject::LISTS_CASE_LAPSED).await;
    assert!(
        lapsed
            .iter()
            .any(|c| c.policy_no == "L1" && c.lapsed_on == "2026-12-01"),
        "{lapsed:?}"
    );
    let closed: Vec<CaseClosed> = events(&system, subject::LISTS_CASE_CLOSED).await;
    assert!(!closed.iter().any(|c| c.policy_no == "L1"), "{closed:?}");
    // M2 crossed from 61-90 into 31-60 on 30 November.
    let (_, m2) = system.get_json("/v1/policies/M2").await;
    assert_eq!(m2["case"]["bucket"], "31-60", "{m2}");
    let moves: Vec<BucketChanged> = events(&system, subject::LISTS_CASE_BUCKET_CHANGED).await;
    let m2_moves: Vec<(i32, i32, i32)> = moves
        .iter()
        .filter(|m| m.policy_no == "M2")
        .map(|m| (m.from_bucket, m.to_bucket, m.days_to_expiry))
        .collect();
    assert_eq!(m2_moves, [(90, 60, 60)]);

    // 1 December: each branch gets its list; Nanjing's policy is on its list only once.
    let lists: Vec<ListIssued> = events(&system, subject::LISTS_LIST_ISSUED).await;
    let mut renewal: Vec<(String, bool, Vec<String>)> = lists
        .iter()
        .filter(|l| l.kind == ListKind::Renewal as i32)
        .map(|l| {
            let mut items: Vec<String> = l.items.iter().map(|i| i.policy_no.clone()).collect();
            items.sort();
            (l.branch_code.clone(), l.monthly, items)
        })
        .collect();
    renewal.sort();
    assert_eq!(
        renewal,
        [
            ("NJ01".to_owned(), false, vec!["C2".to_owned()]),
            (
                "SH01".to_owned(),
                true,
                vec!["M1".to_owned(), "M2".to_owned()]
            ),
            ("SH02".to_owned(), true, vec!["O1".to_owned()]),
        ]
    );
    let lapse: Vec<(String, Vec<String>)> = lists
        .iter()
        .filter(|l| l.kind == ListKind::Lapse as i32)
        .map(|l| {
            (
                l.branch_code.clone(),
                l.items.iter().map(|i| i.policy_no.clone()).collect(),
            )
        })
        .collect();
    assert_eq!(lapse, [("SH01".to_owned(), vec!["L1".to_owned()])]);

    // M1 renews while its case is open: closed at once. L1 renews after lapsing.
    sim.publish_renewal("M1", "M1-2027")
        .await
        .expect("published");
    sim.publish_renewal("L1", "L1-2026")
        .await
        .expect("published");
    sim.settle().await.expect("settles");
    let (_, m1) = system.get_json("/v1/policies/M1").await;
    assert_eq!(
        (&m1["status"], &m1["case"]["state"]),
        (&"renewed".into(), &"renewed".into())
    );
    let (_, l1) = system.get_json("/v1/policies/L1").await;
    assert_eq!(l1["status"], "renewed", "{l1}");
    assert_eq!(l1["case"]["state"], "rescued", "{l1}");
    let closed: Vec<CaseClosed> = events(&system, subject::LISTS_CASE_CLOSED).await;
    assert!(
        closed
            .iter()
            .any(|c| c.policy_no == "L1" && c.outcome == CaseOutcome::Rescued as i32),
        "a renewal after the lapse closes the case rescued: {closed:?}"
    );
    let timers = scalar_i64(
        &system,
        "SELECT count(*) FROM scheduler.timers t JOIN scheduler.cases c USING (case_id)
         WHERE c.policy_no = 'M1' AND t.state = 'pending'",
    )
    .await;
    assert_eq!(timers, 0, "every reminder for M1 stops");

    // January: L1 is insured again, so it is on no lapse list; M1 and O1 were listed.
    sim.advance_to(local("2027-01-01", 9))
        .await
        .expect("time moves");
    let january: Vec<ListIssued> = events::<ListIssued>(&system, subject::LISTS_LIST_ISSUED)
        .await
        .into_iter()
        .filter(|l| l.issued_on == "2027-01-01")
        .collect();
    assert!(
        january.iter().all(|l| l
            .items
            .iter()
            .all(|i| i.policy_no != "L1" && i.policy_no != "M1" && i.policy_no != "O1")),
        "{january:?}"
    );

    // KPIs: due 5, renewed 1 (M1), rescued 1 (L1), lapsed 0, open 3.
    let (status, kpi) = system
        .get_json("/v1/reports/renewal-rate?from=2026-11-01&to=2027-03-31")
        .await;
    assert_eq!(status, 200, "{kpi}");
    let total = &kpi["total"];
    assert_eq!(
        (
            &total["due"],
            &total["renewed"],
            &total["rescued"],
            &total["lapsed"],
            &total["open"]
        ),
        (&5.into(), &1.into(), &1.into(), &0.into(), &3.into()),
        "{kpi}"
    );
    assert_eq!(total["renewal_rate"], 0.4);
    assert_eq!(kpi["groups"][0]["target_rate"], 0.75);
    let (_, sh01) = system
        .get_json(
            "/v1/reports/renewal-rate?from=2026-11-01&to=2027-03-31&branch=SH01&group_by=agent",
        )
        .await;
    assert_eq!(sh01["total"]["due"], 3, "{sh01}");
    let csv = system
        .http
        .get(system.url(
            "/v1/reports/renewal-rate?from=2026-11-01&to=2027-03-31&group_by=branch&format=csv",
        ))
        .send()
        .await
        .expect("answers")
        .text()
        .await
        .expect("text");
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(
        lines[0],
        "group,due,renewed,rescued,lapsed,open,renewal_rate,target_rate,gap"
    );
    assert!(
        lines.iter().any(|l| l.starts_with("SH01,3,1,1,0,1,")),
        "{csv}"
    );
    assert!(
        lines.last().is_some_and(|l| l.starts_with("total,5,")),
        "{csv}"
    );
    let (status, _) = system
        .get_json("/v1/reports/renewal-rate?from=2027-13-01")
        .await;
    assert_eq!(status, 400);
    system.finish().await;
}

/// The service was away over the whole issue day (1 December): its first run after it
/// issues the month's lists, once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missed_issue_day_issues_the_months_lists_when_the_service_is_back() {
    let system = TestSystem::start("mi", local("2026-11-30", 9)).await;
    let sim = &system.sim;
    // The first run (30 November, November's issue day long past) is done before the
    // policy arrives: it has nothing to list.
    sim.settle().await.expect("settles");
    sim.publish_policies(&[policy("MI1", "2027-01-20")])
        .await
        .expect("published");
    sim.advance_to(local("2026-11-30", 12))
        .await
        .expect("time moves");
    assert!(
        events::<ListIssued>(&system, subject::LISTS_LIST_ISSUED)
            .await
            .is_empty()
    );
    // No run on 1 December: the clock jumps from the 30th to the 2nd.
    sim.clock
        .advance_to(local("2026-12-02", 9))
        .expect("the clock moves");
    sim.settle().await.expect("settles");
    sim.advance_to(local("2026-12-04", 9))
        .await
        .expect("time moves");
    let lists: Vec<ListIssued> = events(&system, subject::LISTS_LIST_ISSUED).await;
    let renewal: Vec<(String, bool, String, Vec<String>)> = lists
        .iter()
        .filter(|l| l.kind == ListKind::Renewal as i32)
        .map(|l| {
            (
                l.branch_code.clone(),
                l.monthly,
                l.issued_on.clone(),
                l.items.iter().map(|i| i.policy_no.clone()).collect(),
            )
        })
        .collect();
    assert_eq!(
        renewal,
        [(
            "SH01".to_owned(),
            true,
            "2026-12-02".to_owned(),
            vec!["MI1".to_owned()]
        )],
        "issued on the first run after the issue day, and only then"
    );
    system.finish().await;
}
