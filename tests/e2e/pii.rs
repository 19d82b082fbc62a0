//! Personal data at rest (issue 16): a key rotated in the middle of a season, with the
//! services writing under the new key while `renewal pii rotate` re-seals what the old
//! one sealed; afterwards the old key is not needed, the season went on with the right
//! numbers, and a dump of every schema holds no customer's data in clear.

use std::collections::HashSet;
use std::time::Duration;

use chrono::NaiveDate;
use renewal::demo::clear_at_rest;
use renewal::demo::portfolio::{self, Customer};
use renewal::simulation::{DEMO_PII_KEY, MAX_DELIVERIES, SimOptions, Simulation};
use renewal_e2e::{TZ, database_url, init_logs, local, nats_url, unique};
use renewal_platform::pii::{PiiCipher, Place};
use secrecy::SecretString;
use sqlx::{PgPool, Row};

const NEW_KEY: &str = "6e65772d6b65792d666f722d726f746174696f6e2d746573742d6f6e6c792121";
const POLICIES: usize = 120;

fn options(name: &str, fresh: bool, keys: String) -> SimOptions {
    SimOptions {
        database_url: database_url(name),
        pii_keys: SecretString::from(keys),
        nats_url: nats_url(),
        prefix: name.to_owned(),
        fresh,
        start: local("2026-12-01", 8),
        seed: 7,
        time_zone: TZ,
        max_deliveries: MAX_DELIVERIES,
    }
}

/// Every sealed value of every service opens under `keys` alone; how many there are.
async fn open_everything(pool: &PgPool, keys: &str) -> usize {
    let mut opened = 0;
    for (service, columns) in renewal::cli_pii::sealed_services() {
        let pii =
            PiiCipher::for_service(&SecretString::from(keys.to_owned()), service).expect("keyring");
        for c in columns {
            let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
                "SELECT ({})::text AS row_key, {} AS sealed FROM {} WHERE length({}) > 0",
                c.row_key, c.column, c.table, c.column
            )))
            .fetch_all(pool)
            .await
            .expect("sealed column reads");
            for row in rows {
                let key: String = row.get("row_key");
                let sealed: Vec<u8> = row.get("sealed");
                pii.open_bytes(&sealed, Place::new(c.table, c.column, &key))
                    .unwrap_or_else(|e| panic!("{}.{} of {key}: {e}", c.table, c.column));
                opened += 1;
            }
        }
    }
    opened
}

fn customers() -> Vec<Customer> {
    let start = NaiveDate::from_ymd_opt(2026, 12, 1).expect("date");
    portfolio::generate(POLICIES, 7, start, 20, TZ)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_rotates_mid_season_and_no_personal_data_rests_in_clear() {
    init_logs();
    let name = unique("pii");
    let old = format!("1:{DEMO_PII_KEY}");
    let ring = format!("2:{NEW_KEY},1:{DEMO_PII_KEY}");
    let customers = customers();
    let policies: Vec<_> = customers.iter().map(|c| c.policy.clone()).collect();

    // The first days of the season under the old key alone.
    let sim = renewal_e2e::start_simulation(options(&name, true, old.clone()), None)
        .await
        .expect("starts");
    let org = portfolio::org(POLICIES);
    renewal_assignment::org::load(sim.pool(), &renewal_assignment::outbox(), &org, sim.now())
        .await
        .expect("organisation loads");
    sim.publish_policies(&policies).await.expect("published");
    sim.advance_to(local("2026-12-03", 12)).await.expect("runs");
    sim.settle().await.expect("settles");
    let paused_at = sim.now();
    let before = open_everything(sim.pool(), &old).await;
    assert!(before > POLICIES * 5, "only {before} values sealed");
    sim.stop().await.expect("stops");

    // Rolled onto the new keyring; the rotation runs while the season goes on.
    let sim = renewal_e2e::start_simulation(options(&name, false, ring.clone()), Some(paused_at))
        .await
        .expect("restarts");
    let pool = sim.pool().clone();
    let keyring = SecretString::from(ring.clone());
    let rotation =
        tokio::spawn(
            async move { renewal::cli_pii::rotate_all(&pool, &keyring, 50, |_, _| {}).await },
        );
    sim.advance_to(local("2026-12-08", 12)).await.expect("runs");
    let resealed = rotation.await.expect("joins").expect("rotation succeeds");
    assert!(resealed > 0, "the rotation re-sealed nothing");
    sim.settle().await.expect("settles");
    // Run again, as after an interruption: nothing is left under the old key.
    let again =
        renewal::cli_pii::rotate_all(sim.pool(), &SecretString::from(ring.clone()), 50, |_, _| {})
            .await
            .expect("second run");
    assert_eq!(again, 0, "a value was left under the old key");
    let after = open_everything(sim.pool(), &format!("2:{NEW_KEY}")).await;
    assert!(after >= before, "{after} values after, {before} before");
    assert_the_cap_finds_customers_under_the_new_key(sim.pool()).await;

    assert_the_season_went_on(&sim, &customers).await;
    assert_nothing_in_clear(&sim, &name, &customers).await;

    let bus = sim.deps.bus.clone();
    sim.stop().await.expect("stops");
    bus.delete_streams().await;
    let _ = renewal_platform::postgres::drop_database(&database_url(&name)).await;
}

/// Every blind index the scheduler's frequency cap matches customers by is the index of
/// the case's own mobile under the new key: none is left that the old key made.
async fn assert_the_cap_finds_customers_under_the_new_key(pool: &PgPool) {
    let newest = PiiCipher::for_service(&SecretString::from(format!("2:{NEW_KEY}")), "scheduler")
        .expect("key");
    let rows: Vec<(String, Option<Vec<u8>>, Vec<u8>)> = sqlx::query_as(
        "SELECT case_id::text, mobile_enc, mobile_index FROM scheduler.cases
         WHERE mobile_index IS NOT NULL",
    )
    .fetch_all(pool)
    .await
    .expect("the scheduler's cases");
    assert!(
        rows.len() >= POLICIES / 2,
        "only {} cases indexed",
        rows.len()
    );
    for (case_id, sealed, index) in rows {
        let sealed = sealed.unwrap_or_else(|| panic!("case {case_id}: an index with no mobile"));
        let place = Place::new("scheduler.cases", "mobile_enc", &case_id);
        let mobile = newest
            .open(&sealed, place)
            .expect("opens under the new key");
        assert_eq!(
            index,
            newest.blind_index(&mobile).to_vec(),
            "case {case_id}"
        );
    }
}

/// The vendor got SMS after the rotation, every one to a customer's own number.
async fn assert_the_season_went_on(sim: &Simulation, customers: &[Customer]) {
    let mobiles: HashSet<String> = customers
        .iter()
        .map(|c| c.policy.mobile.trim_start_matches("+86").to_owned())
        .collect();
    let phones: Vec<String> = sqlx::query_scalar("SELECT phone FROM demo.vendor_messages")
        .fetch_all(sim.pool())
        .await
        .expect("vendor log");
    assert!(!phones.is_empty(), "no SMS reached the vendor");
    for phone in &phones {
        assert!(
            mobiles.contains(phone.trim_start_matches("+86")),
            "an SMS went to a number no customer has"
        );
    }
    // A customer is still found by mobile (its blind index re-computed).
    let first = &customers[0].policy;
    let client = reqwest::Client::new();
    let hq = sim
        .token(&renewal_e2e::Grant::role(renewal_e2e::Role::HqAdmin))
        .expect("token");
    let found: serde_json::Value = client
        .get(format!(
            "http://{}/v1/policies?mobile={}",
            sim.http_addr,
            first.mobile.replace('+', "%2B")
        ))
        .bearer_auth(hq)
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .expect("answers")
        .json()
        .await
        .expect("json");
    let found = found["policies"].as_array().cloned().unwrap_or_default();
    assert!(
        found
            .iter()
            .any(|p| p["policy_no"] == first.policy_no.as_str()),
        "{} not found by its mobile after the rotation",
        first.policy_no
    );
}

/// A dump of the four schemas holds no customer's data in clear, and the search does
/// find one planted on purpose.
async fn assert_nothing_in_clear(sim: &Simulation, name: &str, customers: &[Customer]) {
    let staff: HashSet<String> = portfolio::org(POLICIES)
        .into_iter()
        .map(|a| a.agent_name)
        .collect();
    let hits = clear_at_rest::scan(&database_url(name), customers, &staff)
        .await
        .expect("pg_dump runs");
    assert!(hits.is_empty(), "personal data in clear: {hits:?}");
    sqlx::query(
        "INSERT INTO lists.inbox (message_id, subject, rejected_reason) VALUES ('planted', 'x', $1)",
    )
    .bind(format!("wrong number {}", customers[1].policy.mobile))
    .execute(sim.pool())
    .await
    .expect("planted");
    let hits = clear_at_rest::scan(&database_url(name), customers, &staff)
        .await
        .expect("pg_dump runs");
    assert_eq!(hits.get("lists.inbox"), Some(&1), "{hits:?}");
}
