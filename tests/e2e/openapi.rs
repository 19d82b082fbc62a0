//! Each service's OpenAPI document: it describes every route the service mounts, a
//! standard validator (openapi-spec-validator) takes it, and a client generated from
//! it by a standard generator (openapi-python-client) makes a claim and a lease
//! against the running system with a bearer token.

use std::collections::BTreeSet;
use std::process::Command;

use renewal_e2e::{Grant, ORG_CSV, Role, TestSystem, local, policy};
use serde_json::Value;

const SERVICES: [&str; 4] = ["lists", "assignment", "scheduler", "dispatch"];

/// A path with its parameters blanked, custom methods folded into the parameter they
/// follow (`/v1/claims/{policy_no}:claim` and axum's `/v1/claims/{action}` are both
/// `/v1/claims/{}`), so the document's paths and the router's can be compared.
fn shape(path: &str) -> String {
    path.split('/')
        .map(|segment| match segment.find('{') {
            Some(0) => "{}".to_owned(),
            _ => segment.to_owned(),
        })
        .collect::<Vec<_>>()
        .join("/")
}

async fn documents(system: &TestSystem) -> Vec<(&'static str, Value)> {
    let mut docs = Vec::new();
    for service in SERVICES {
        let (status, doc) = system.get_json(&format!("/openapi/{service}.json")).await;
        assert_eq!(status, 200, "{service}: {doc}");
        docs.push((service, doc));
    }
    docs
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_mounted_route_is_in_its_services_document() {
    let system = TestSystem::start("oad", local("2026-12-01", 9)).await;
    let mut documented = BTreeSet::new();
    for (service, doc) in documents(&system).await {
        assert!(
            doc["openapi"]
                .as_str()
                .is_some_and(|v| v.starts_with("3.1")),
            "{service}: OpenAPI 3.1"
        );
        assert_eq!(
            doc["components"]["securitySchemes"]["bearer"]["scheme"], "bearer",
            "{service} names its security scheme"
        );
        let paths = doc["paths"].as_object().expect("paths");
        assert!(!paths.is_empty(), "{service} documents its routes");
        documented.extend(paths.keys().map(|p| shape(p)));
    }
    // The process's own routes: public, described in the README.
    let own = ["/openapi.json", "/openapi/{}", "/.well-known/jwks.json"];
    let mounted: BTreeSet<String> = system
        .sim
        .deps
        .http
        .mounted_paths()
        .iter()
        .map(|p| shape(p))
        .collect();
    assert!(mounted.len() >= 25, "{mounted:?}");
    let missing: Vec<&String> = mounted
        .iter()
        .filter(|p| !documented.contains(*p) && !own.contains(&p.as_str()))
        .collect();
    assert!(
        missing.is_empty(),
        "mounted but not documented: {missing:?}"
    );
    // The merged document the all-in-one serves has them all.
    let (status, all) = system.get_json("/openapi.json").await;
    assert_eq!(status, 200);
    let merged: BTreeSet<String> = all["paths"]
        .as_object()
        .expect("paths")
        .keys()
        .map(|p| shape(p))
        .collect();
    assert_eq!(merged, documented);
    system.finish().await;
}

/// The standard tools' virtualenv (installed on first use by deploy/local/openapi-tools).
fn tools() -> std::path::PathBuf {
    let script =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/local/openapi-tools");
    let out = Command::new("bash")
        .arg(&script)
        .output()
        .expect("deploy/local/openapi-tools runs");
    assert!(
        out.status.success(),
        "the OpenAPI tools install: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::path::PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
}

fn run(cmd: &mut Command, what: &str) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(
        out.status.success(),
        "{what} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_documents_validate_and_a_generated_client_claims_and_leases() {
    let system = TestSystem::start("oac", local("2026-12-01", 0)).await;
    let sim = &system.sim;
    system.load_org(ORG_CSV).await;
    sim.publish_policies(&[policy("P1", "2027-02-15")])
        .await
        .expect("published");
    sim.advance_to(local("2026-12-01", 10)).await.expect("time");
    renewal_e2e::insert_campaign_tasks(sim.pool(), &["P1".to_owned()], sim.now()).await;

    let bin = tools();
    let dir = std::env::temp_dir().join(format!("renewal-openapi-{}", system.name));
    std::fs::create_dir_all(&dir).expect("a folder");
    // The four services' documents and the console's (its pages and forms).
    let (status, console) = system.get_json("/console/openapi.json").await;
    assert_eq!(status, 200, "{console}");
    let mut all = documents(&system).await;
    all.push(("console", console));
    for (service, doc) in all {
        let file = dir.join(format!("{service}.json"));
        std::fs::write(&file, serde_json::to_vec_pretty(&doc).expect("json")).expect("written");
        run(
            Command::new(bin.join("openapi-spec-validator")).arg(&file),
            &format!("openapi-spec-validator {service}"),
        );
    }
    for service in ["assignment", "dispatch"] {
        run(
            Command::new(bin.join("openapi-python-client"))
                .current_dir(&dir)
                .args(["generate", "--overwrite", "--meta", "none", "--path"])
                .arg(dir.join(format!("{service}.json")))
                .arg("--output-path")
                .arg(dir.join(format!("{service}_client"))),
            &format!("openapi-python-client generate {service}"),
        );
    }
    let staff = sim
        .token(
            &Grant::role(Role::BranchAdmin)
                .agent("SH01-S01")
                .branch("SH01")
                .city("310000"),
        )
        .expect("token");
    let call_center = sim.token(&Grant::role(Role::CallCenter)).expect("token");
    let script = dir.join("use_clients.py");
    std::fs::write(&script, PYTHON).expect("written");
    let out = run(
        Command::new(bin.join("python"))
            .arg(&script)
            .current_dir(&dir)
            .env("BASE_URL", system.url(""))
            .env("STAFF_TOKEN", &staff)
            .env("CALL_CENTER_TOKEN", &call_center),
        "the generated clients",
    );
    let answers: Value = serde_json::from_str(out.trim()).expect("the script prints JSON");
    assert_eq!(answers["claim_status"], 200, "{answers}");
    assert_eq!(answers["owner_agent"], "SH01-A01", "{answers}");
    assert_eq!(answers["lease_status"], 200, "{answers}");
    assert_eq!(answers["leased"], serde_json::json!(["P1"]), "{answers}");
    assert_eq!(answers["refused_status"], 403, "{answers}");
    let _ = std::fs::remove_dir_all(&dir);
    system.finish().await;
}

/// Uses the generated clients as an integrator would: a claim as SH01's staff, a lease
/// as the call center, and a claim for another branch, refused.
const PYTHON: &str = r#"
import json, os, sys
sys.path.insert(0, os.getcwd())
from assignment_client import AuthenticatedClient as Assignment
from assignment_client.api.claims import claim
from assignment_client.models import ClaimRequest
from dispatch_client import AuthenticatedClient as Dispatch
from dispatch_client.api.phone_tasks import lease_tasks
from dispatch_client.models import LeaseRequest

base = os.environ["BASE_URL"]
staff = Assignment(base_url=base, token=os.environ["STAFF_TOKEN"])
claimed = claim.sync_detailed(
    client=staff, policy_no="P1",
    body=ClaimRequest(branch_code="SH01", owner_agent="SH01-A01"))
answer = json.loads(claimed.content)
refused = claim.sync_detailed(
    client=staff, policy_no="P1",
    body=ClaimRequest(branch_code="SH02", owner_agent="SH02-A01"))
center = Dispatch(base_url=base, token=os.environ["CALL_CENTER_TOKEN"])
leased = lease_tasks.sync_detailed(
    client=center, body=LeaseRequest(agent_id="CC-01", queue="campaign", max_=5))
tasks = json.loads(leased.content)["tasks"]
print(json.dumps({
    "claim_status": int(claimed.status_code), "owner_agent": answer.get("owner_agent"),
    "refused_status": int(refused.status_code),
    "lease_status": int(leased.status_code), "leased": [t["policy_no"] for t in tasks],
}))
"#;
