//! Personal data in clear at rest, measured as an auditor would: `pg_dump` of the four
//! services' schemas, searched for every customer's name, mobile (E.164 and the 11
//! national digits), ID number, plate and VIN. Counted per table, so a hit says where.
//!
//! Digits and letters must stand alone to count (a mobile inside a longer number is
//! not one); names count anywhere, as they would inside an SMS text. A customer whose
//! name is also a staff member's (the org's agents, whose names assignment keeps to
//! show them) is not searched by name.

use std::collections::{BTreeMap, HashSet};

use aho_corasick::AhoCorasick;
use secrecy::{ExposeSecret, SecretString};

use crate::demo::portfolio::Customer;

/// The schemas searched: every service's.
pub const SCHEMAS: [&str; 4] = ["lists", "assignment", "scheduler", "dispatch"];

#[derive(Debug, thiserror::Error)]
pub enum ScanError {
    #[error("pg_dump could not run: {0}")]
    Spawn(#[from] std::io::Error),
    #[error("pg_dump failed: {0}")]
    Dump(String),
    #[error("the search could not be built: {0}")]
    Search(#[from] aho_corasick::BuildError),
}

/// What to look for: each customer's values, and whether a hit must stand alone.
struct Needles {
    values: Vec<String>,
    standalone: Vec<bool>,
}

fn needles(customers: &[Customer], staff_names: &HashSet<String>) -> Needles {
    let mut seen = HashSet::new();
    let mut n = Needles {
        values: Vec::new(),
        standalone: Vec::new(),
    };
    let mut push = |value: &str, standalone: bool| {
        if value.chars().count() >= 2 && seen.insert(value.to_owned()) {
            n.values.push(value.to_owned());
            n.standalone.push(standalone);
        }
    };
    for c in customers {
        let p = &c.policy;
        if !staff_names.contains(&p.customer_name) {
            push(&p.customer_name, false);
        }
        push(&p.mobile, true);
        push(p.mobile.trim_start_matches("+86"), true);
        push(&p.id_number, true);
        push(&p.plate, true);
        push(&p.vin, true);
    }
    n
}

/// Hits per `schema.table` in a dump of the services' schemas of `database_url`.
pub async fn scan(
    database_url: &SecretString,
    customers: &[Customer],
    staff_names: &HashSet<String>,
) -> Result<BTreeMap<String, i64>, ScanError> {
    let mut dump = tokio::process::Command::new("pg_dump");
    dump.arg("--data-only").arg("--no-owner");
    for schema in SCHEMAS {
        dump.arg(format!("--schema={schema}"));
    }
    let out = dump
        .arg(format!("--dbname={}", database_url.expose_secret()))
        .output()
        .await?;
    if !out.status.success() {
        return Err(ScanError::Dump(
            String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        ));
    }
    count(&out.stdout, customers, staff_names)
}

/// Hits per table after the demo's season: its customers, its organisation's staff.
pub async fn of_demo(
    database_url: &SecretString,
    customers: &[Customer],
    policies: usize,
) -> Result<BTreeMap<String, i64>, crate::simulation::SimError> {
    let staff: HashSet<String> = crate::demo::portfolio::org(policies)
        .into_iter()
        .map(|a| a.agent_name)
        .collect();
    scan(database_url, customers, &staff).await.map_err(|e| {
        crate::simulation::SimError::Other(format!("searching the schemas for personal data: {e}"))
    })
}

/// Hits per table in a dump's text.
pub fn count(
    dump: &[u8],
    customers: &[Customer],
    staff_names: &HashSet<String>,
) -> Result<BTreeMap<String, i64>, ScanError> {
    let needles = needles(customers, staff_names);
    let search = AhoCorasick::new(&needles.values)?;
    let mut hits = BTreeMap::new();
    let mut table = String::from("(outside any table)");
    for line in dump.split(|b| *b == b'\n') {
        if let Some(rest) = line.strip_prefix(b"COPY ") {
            let name = rest.split(|b| *b == b' ').next().unwrap_or_default();
            table = String::from_utf8_lossy(name).into_owned();
            continue;
        }
        for m in search.find_overlapping_iter(line) {
            let alone = |at: Option<&u8>| at.is_none_or(|b| !b.is_ascii_alphanumeric());
            let standalone = needles.standalone[m.pattern().as_usize()];
            let before = m.start().checked_sub(1).and_then(|i| line.get(i));
            if !standalone || (alone(before) && alone(line.get(m.end()))) {
                *hits.entry(table.clone()).or_insert(0) += 1;
            }
        }
    }
    Ok(hits)
}
