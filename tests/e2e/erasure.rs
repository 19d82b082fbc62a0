//! Erasure (issue 16): an hq_admin's request to erase a customer reaches all four
//! services, each erases its copy and says so; another customer is untouched; only
//! hq_admin may ask; and the retention job erases, the same way, a case closed longer
//! ago than the retention period.

use std::collections::HashSet;
use std::time::Duration;

use chrono::NaiveDate;
use renewal::demo::portfolio::{self, Customer};
use renewal::simulation::{DEMO_PII_KEY, MAX_DELIVERIES, SimOptions, Simulation};
use renewal_e2e::{Grant, Role, TZ, client_with, database_url, init_logs, local, nats_url, unique};
use serde_json::{Value, json};
use sqlx::PgPool;

const POLICIES: usize = 80;

fn options(name: &str) -> SimOptions {
    SimOptions {
        database_url: database_url(name),
        pii_keys: secrecy::SecretString::from(DEMO_PII_KEY),
        nats_url: nats_url(),
        prefix: name.to_owned(),
        fresh: true,
        start: local("2026-12-01", 8),
        seed: 7,
        time_zone: TZ,
        max_deliveries: MAX_DELIVERIES,
    }
}

/// The customer's cases' sealed values still holding something, per table.
async fn sealed_left(pool: &PgPool, policy_nos: &[String]) -> Vec<(String, i64)> {
    let checks = [
        (
            "lists.policies",
            "SELECT count(*) FROM lists.policies WHERE policy_no = ANY($1)
               AND (length(name_enc) > 0 OR length(mobile_enc) > 0 OR length(id_number_enc) > 0
                    OR length(plate_enc) > 0 OR length(vin_enc) > 0 OR length(mobile_index) > 0)",
        ),
        (
            "scheduler.cases",
            "SELECT count(*) FROM scheduler.cases s JOIN lists.cases c USING (case_id)
             WHERE c.policy_no = ANY($1)
               AND (length(s.contact_enc) > 0 OR length(s.mobile_enc) > 0 OR s.mobile_index IS NOT NULL)",
        ),
        (
            "dispatch.case_contacts",
            "SELECT count(*) FROM dispatch.case_contacts d JOIN lists.cases c USING (case_id)
             WHERE c.policy_no = ANY($1) AND length(d.contact_enc) > 0",
        ),
        (
            "dispatch.sms_messages",
            "SELECT count(*) FROM dispatch.sms_messages m JOIN lists.cases c USING (case_id)
             WHERE c.policy_no = ANY($1) AND (length(m.contact_enc) > 0 OR length(m.mobile_index) > 0)",
        ),
        (
            "dispatch.phone_tasks",
            "SELECT count(*) FROM dispatch.phone_tasks t JOIN lists.cases c USING (case_id)
             WHERE c.policy_no = ANY($1) AND length(t.contact_enc) > 0",
        ),
    ];
    let mut left = Vec::new();
    for (table, sql) in checks {
        let n: i64 = sqlx::query_scalar(sql)
            .bind(policy_nos)
            .fetch_one(pool)
            .await
            .unwrap_or_else(|e| panic!("{table}: {e}"));
        left.push((table.to_owned(), n));
    }
    left
}

async fn sealed_rows(pool: &PgPool, policy_nos: &[String]) -> i64 {
    sealed_left(pool, policy_nos)
        .await
        .iter()
        .map(|(_, n)| n)
        .sum()
}

/// Waits (moving the simulation on a minute at a time) until every service answered.
async fn answered(sim: &Simulation, http: &reqwest::Client, erasure_id: &str) -> Value {
    let url = format!("http://{}/v1/erasures/{erasure_id}", sim.http_addr);
    for _ in 0..60 {
        sim.settle().await.expect("settles");
        let view: Value = http
            .get(&url)
            .send()
            .await
            .expect("answers")
            .json()
            .await
            .expect("json");
        if view["complete"] == true {
            return view;
        }
        let next = sim.now() + chrono::Duration::minutes(1);
        sim.advance_to(next).await.expect("runs");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("the erasure was not answered by every service");
}

async fn post(http: &reqwest::Client, sim: &Simulation, body: Value) -> (u16, Value) {
    let response = http
        .post(format!("http://{}/v1/erasures", sim.http_addr))
        .json(&body)
        .timeout(Duration::from_secs(20))
        .send()
        .await
        .expect("answers");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or_default())
}

/// The policies of the customers who share `customer`'s mobile.
fn same_mobile(customers: &[Customer], customer: &Customer) -> Vec<String> {
    customers
        .iter()
        .filter(|c| c.policy.mobile == customer.policy.mobile)
        .map(|c| c.policy.policy_no.clone())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_erasure_request_reaches_every_service_and_retention_erases_old_cases() {
    init_logs();
    let name = unique("erase");
    let customers = portfolio::generate(
        POLICIES,
        7,
        NaiveDate::from_ymd_opt(2026, 12, 1).expect("date"),
        20,
        TZ,
    );
    let sim = renewal_e2e::start_simulation(options(&name), None)
        .await
        .expect("starts");
    let org = portfolio::org(POLICIES);
    renewal_assignment::org::load(sim.pool(), &renewal_assignment::outbox(), &org, sim.now())
        .await
        .expect("organisation loads");
    let policies: Vec<_> = customers.iter().map(|c| c.policy.clone()).collect();
    sim.publish_policies(&policies).await.expect("published");
    sim.advance_to(local("2026-12-03", 12)).await.expect("runs");
    sim.settle().await.expect("settles");

    // The customer with the most contacts so far, and another who must stay whole.
    let pool = sim.pool();
    let chosen: String = sqlx::query_scalar(
        "SELECT c.policy_no FROM lists.cases c JOIN dispatch.sms_messages m USING (case_id)
         GROUP BY c.policy_no ORDER BY count(*) DESC, c.policy_no LIMIT 1",
    )
    .fetch_one(pool)
    .await
    .expect("some customer got an SMS");
    let customer = customers
        .iter()
        .find(|c| c.policy.policy_no == chosen)
        .expect("known");
    let erased = same_mobile(&customers, customer);
    let others: Vec<String> = customers
        .iter()
        .map(|c| c.policy.policy_no.clone())
        .filter(|p| !erased.contains(p))
        .collect();
    assert!(
        sealed_rows(pool, &erased).await > 1,
        "{:?}",
        sealed_left(pool, &erased).await
    );
    let others_before = sealed_rows(pool, &others).await;

    let hq = client_with(&sim.token(&Grant::role(Role::HqAdmin)).expect("token"));
    refusals(&sim, customer).await;

    // hq_admin asks, by mobile.
    let (status, first) = post(&hq, &sim, json!({ "mobile": customer.policy.mobile })).await;
    assert_eq!(status, 202, "{first}");
    assert_eq!(first["policies"], erased.len(), "{first}");
    assert_eq!(
        first["answers"]["lists"]["erased"]["policies"],
        erased.len(),
        "{first}"
    );
    let erasure_id = first["erasure_id"].as_str().expect("an id").to_owned();
    let auditor = client_with(&sim.token(&Grant::role(Role::Auditor)).expect("token"));
    let view = answered(&sim, &auditor, &erasure_id).await;
    let services: HashSet<&str> = view["answers"]
        .as_object()
        .expect("answers")
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(
        services,
        HashSet::from(["lists", "assignment", "scheduler", "dispatch"]),
        "{view}"
    );
    let dispatch = &view["answers"]["dispatch"]["erased"];
    assert!(
        dispatch["sms_messages"].as_u64().unwrap_or(0) >= 1,
        "{view}"
    );
    assert!(
        view["answers"]["scheduler"]["erased"]["cases"]
            .as_u64()
            .unwrap_or(0)
            >= 1,
        "{view}"
    );

    // Nothing of the customer is left sealed anywhere; the others are whole.
    sim.advance_to(sim.now() + chrono::Duration::days(2))
        .await
        .expect("runs");
    sim.settle().await.expect("settles");
    let left = sealed_left(pool, &erased).await;
    assert!(
        left.iter().all(|(_, n)| *n == 0),
        "left after erasure: {left:?}"
    );
    assert!(
        sealed_rows(pool, &others).await >= others_before,
        "another customer lost data"
    );
    let open: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM lists.cases WHERE policy_no = ANY($1) AND state = 'open'",
    )
    .bind(&erased)
    .fetch_one(pool)
    .await
    .expect("count");
    assert_eq!(open, 0, "an erased customer's case is still open");
    // Asked again: nobody holds that number any more.
    let (status, again) = post(&hq, &sim, json!({ "mobile": customer.policy.mobile })).await;
    assert_eq!(status, 404, "{again}");
    audited(&sim, &auditor).await;

    retention(&sim, &customers, &erased).await;
    let bus = sim.deps.bus.clone();
    sim.stop().await.expect("stops");
    bus.delete_streams().await;
    let _ = renewal_platform::postgres::drop_database(&database_url(&name)).await;
}

/// Only hq_admin may ask, the request names exactly one key, and refusals erase nothing.
async fn refusals(sim: &Simulation, customer: &Customer) {
    let mobile = json!({ "mobile": customer.policy.mobile });
    for role in [
        Role::BranchAdmin,
        Role::Auditor,
        Role::Analyst,
        Role::CallCenter,
    ] {
        let http = client_with(&sim.token(&Grant::role(role)).expect("token"));
        let (status, body) = post(&http, sim, mobile.clone()).await;
        assert_eq!(status, 403, "{role:?}: {body}");
    }
    let (status, _) = post(&reqwest::Client::new(), sim, mobile.clone()).await;
    assert_eq!(status, 401);
    let hq = client_with(&sim.token(&Grant::role(Role::HqAdmin)).expect("token"));
    for bad in [
        json!({}),
        json!({ "mobile": customer.policy.mobile, "id_number": customer.policy.id_number }),
        json!({ "mobile": "call me maybe" }),
        json!({ "id_number": "12345" }),
        json!({ "name": "x" }),
    ] {
        let (status, body) = post(&hq, sim, bad.clone()).await;
        assert_eq!(status, 400, "{bad}: {body}");
    }
    let (status, body) = post(&hq, sim, json!({ "mobile": "13900000000" })).await;
    assert_eq!(status, 404, "{body}");
    let erasures: i64 = sqlx::query_scalar("SELECT count(*) FROM lists.erasures")
        .fetch_one(sim.pool())
        .await
        .expect("count");
    assert_eq!(erasures, 0, "a refused request erased something");
}

/// The auditor sees who asked.
async fn audited(sim: &Simulation, auditor: &reqwest::Client) {
    let page: Value = auditor
        .get(format!(
            "http://{}/v1/audit/lists?page_size=200",
            sim.http_addr
        ))
        .send()
        .await
        .expect("answers")
        .json()
        .await
        .expect("json");
    let asked = page["entries"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|e| e["route"] == "/v1/erasures" && e["role"] == "hq_admin" && e["status"] == 202);
    assert!(asked, "the erasure is not in the audit log: {page}");
}

/// A case closed longer ago than the retention period is erased by the hourly job,
/// by ID number's customer too, and answered by every service.
async fn retention(sim: &Simulation, customers: &[Customer], already: &[String]) {
    let pool = sim.pool();
    let old: String = sqlx::query_scalar(
        "SELECT c.policy_no FROM lists.cases c JOIN dispatch.case_contacts d USING (case_id)
         WHERE NOT c.policy_no = ANY($1) AND length(d.contact_enc) > 0
         ORDER BY c.policy_no LIMIT 1",
    )
    .bind(already)
    .fetch_one(pool)
    .await
    .expect("another customer with a case");
    let customer = customers
        .iter()
        .find(|c| c.policy.policy_no == old)
        .expect("known");
    let theirs = same_mobile(customers, customer);
    // Closed 400 days ago (the default retention is 365 days).
    sqlx::query(
        "UPDATE lists.cases SET state = 'cancelled', closed_at = $2 - interval '400 days'
         WHERE policy_no = $1",
    )
    .bind(&old)
    .bind(sim.now())
    .execute(pool)
    .await
    .expect("backdated");
    sim.advance_to(sim.now() + chrono::Duration::hours(2))
        .await
        .expect("runs");
    let erasure_id: uuid::Uuid = {
        let mut found = None;
        for _ in 0..50 {
            found = sqlx::query_scalar(
                "SELECT erasure_id FROM lists.erasures WHERE reason = 'retention'",
            )
            .fetch_optional(pool)
            .await
            .expect("query");
            if found.is_some() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        found.expect("the retention job made an erasure")
    };
    let hq = client_with(&sim.token(&Grant::role(Role::HqAdmin)).expect("token"));
    let view = answered(sim, &hq, &erasure_id.to_string()).await;
    assert_eq!(view["reason"], "retention", "{view}");
    assert_eq!(view["policies"], 1, "{view}");
    let left = sealed_left(pool, std::slice::from_ref(&old)).await;
    assert!(
        left.iter().all(|(_, n)| *n == 0),
        "left after retention: {left:?}"
    );
    // The customer's other policies (same mobile, cases not closed) are kept.
    let rest: Vec<String> = theirs.into_iter().filter(|p| *p != old).collect();
    if !rest.is_empty() {
        let kept: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM lists.policies WHERE policy_no = ANY($1) AND erased_at IS NULL",
        )
        .bind(&rest)
        .fetch_one(pool)
        .await
        .expect("count");
        assert_eq!(
            kept as usize,
            rest.len(),
            "retention erased a policy still in its period"
        );
    }
}
