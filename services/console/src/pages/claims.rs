//! *Claims* (a branch's people): the branch's pending claims with the time left to
//! claim them, claimed many at once with an owner picked from the branch's active
//! agents, or declined with a reason. *Pool* and *Research* (the city company): the
//! city's unclaimed cases and the origins to research. Each claim or decline is the
//! assignment service's own call, one per case, and the page says for each what
//! happened or why it was refused.

use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::response::Response;
use axum::routing::get;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::pages::{self, require};
use crate::services::Service;
use crate::sessions::SignedIn;
use crate::sign_in::frame;
use crate::{Console, ConsoleError};

/// Cases claimed or declined in one go at most.
const MOST_AT_ONCE: usize = 200;

pub fn routes() -> axum::Router<Console> {
    axum::Router::new()
        .route("/console/claims", get(claims).post(act))
        .route("/console/pool", get(pool).post(from_pool))
        .route("/console/research", get(research).post(resolve))
}

#[derive(Deserialize)]
struct Scope {
    branch: Option<String>,
    city: Option<String>,
}

/// A branch or city code as the services take it.
pub fn code(value: Option<String>) -> Result<Option<String>, ConsoleError> {
    match value.map(|v| v.trim().to_owned()).filter(|v| !v.is_empty()) {
        None => Ok(None),
        Some(v) if v.len() <= 32 && v.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') => {
            Ok(Some(v))
        }
        Some(v) => Err(ConsoleError::BadInput(format!("{v:?} is not a code"))),
    }
}

/// "2d 4h" until `deadline` (RFC 3339), or "overdue".
fn time_left(deadline: &Value) -> String {
    let Some(at) = deadline
        .as_str()
        .and_then(|d| chrono::DateTime::parse_from_rfc3339(d).ok())
    else {
        return "—".into();
    };
    let left = at.with_timezone(&chrono::Utc) - chrono::Utc::now();
    if left <= chrono::Duration::zero() {
        return "overdue".into();
    }
    format!("{}d {}h", left.num_days(), left.num_hours() % 24)
}

/// The branch's pending claims and its active agents.
async fn section(
    console: &Console,
    signed: &SignedIn,
    branch: &str,
) -> Result<Value, ConsoleError> {
    let token = &signed.session.token;
    let claims_path = format!("/v1/branches/{branch}/claims?state=pending&page_size=500");
    let agents_path = format!("/v1/branches/{branch}/agents?page_size=1000");
    let (claims, agents) = futures::try_join!(
        console
            .services
            .get(Service::Assignment, &claims_path, token),
        console
            .services
            .get(Service::Assignment, &agents_path, token),
    )?;
    let mut items = claims["items"].as_array().cloned().unwrap_or_default();
    for item in &mut items {
        item["time_left"] = json!(time_left(&item["deadline"]));
    }
    let agents: Vec<Value> = agents["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|a| a["active"].as_bool() == Some(true))
        .cloned()
        .collect();
    Ok(json!({ "branch": branch, "claims": items, "agents": agents }))
}

async fn claims(
    State(console): State<Console>,
    signed: SignedIn,
    Query(scope): Query<Scope>,
) -> Result<Response, ConsoleError> {
    require(&signed, "claims")?;
    let branch = code(scope.branch)?.or_else(|| signed.session.caller.branch_code.clone());
    let section = match &branch {
        Some(b) => section(&console, &signed, b).await?,
        None => json!({ "branch": null, "claims": [], "agents": [] }),
    };
    let page = crate::page! { section, results => Vec::<Value>::new() };
    pages::render(&console, "claims.html", frame(&signed, "claims"), page)
}

/// What happened to one case.
#[derive(Debug, Serialize)]
struct Done {
    policy_no: String,
    ok: bool,
    message: String,
}

/// The form: `policy_no` repeated, `action` claim or decline, `owner`, `reason`.
struct Chosen {
    csrf: Option<String>,
    branch: Option<String>,
    action: String,
    owner: Option<String>,
    reason: Option<String>,
    policies: Vec<String>,
}

fn chosen(body: &[u8]) -> Chosen {
    let mut c = Chosen {
        csrf: None,
        branch: None,
        action: String::new(),
        owner: None,
        reason: None,
        policies: Vec::new(),
    };
    for (name, value) in url::form_urlencoded::parse(body) {
        let value = value.trim().to_owned();
        match name.as_ref() {
            "csrf" => c.csrf = Some(value),
            "branch" => c.branch = Some(value),
            "action" => c.action = value,
            "owner" => c.owner = Some(value).filter(|v| !v.is_empty()),
            "reason" => c.reason = Some(value).filter(|v| !v.is_empty()),
            "policy_no" if !value.is_empty() => c.policies.push(value),
            _ => {}
        }
    }
    c
}

/// Claims or declines every chosen case, one call each, and shows each answer.
async fn act(
    State(console): State<Console>,
    signed: SignedIn,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ConsoleError> {
    require(&signed, "claims")?;
    let c = chosen(&body);
    signed.check_csrf(&headers, c.csrf.as_deref())?;
    let branch = code(c.branch)?.ok_or_else(|| ConsoleError::BadInput("no branch".into()))?;
    if c.policies.is_empty() {
        return pages::notice(
            &console,
            &signed,
            false,
            crate::i18n::text(signed.session.lang, "claims.pick_one"),
        );
    }
    if c.policies.len() > MOST_AT_ONCE {
        return Err(ConsoleError::BadInput(format!(
            "at most {MOST_AT_ONCE} cases at once"
        )));
    }
    let (verb, body) = match c.action.as_str() {
        "claim" => (
            "claim",
            json!({ "branch_code": branch, "owner_agent": c.owner }),
        ),
        "decline" => (
            "decline",
            json!({ "branch_code": branch, "reason": c.reason }),
        ),
        other => return Err(ConsoleError::BadInput(format!("unknown action {other:?}"))),
    };
    let path = |no: &str| format!("/v1/claims/{}:{verb}", urlencode(no));
    let results = each(&console, &signed, c.policies, path, &body).await?;
    let section = section(&console, &signed, &branch).await?;
    pages::part(
        &console,
        &signed,
        "claims_section.html",
        crate::page! { section, results },
    )
}

/// One call per case, each answer said: done, or the service's refusal.
async fn each(
    console: &Console,
    signed: &SignedIn,
    policies: Vec<String>,
    path: impl Fn(&str) -> String,
    body: &Value,
) -> Result<Vec<Done>, ConsoleError> {
    let mut results = Vec::new();
    for policy_no in policies {
        let path = path(&policy_no);
        let verb = path.rsplit(':').next().unwrap_or_default().to_owned();
        let answer = console
            .services
            .post(Service::Assignment, &path, &signed.session.token, body)
            .await;
        results.push(match answer {
            Ok(_) => Done {
                policy_no,
                ok: true,
                message: verb,
            },
            Err(ConsoleError::Refused { detail, .. }) => Done {
                policy_no,
                ok: false,
                message: detail,
            },
            Err(e) => return Err(e),
        });
    }
    Ok(results)
}

/// The chosen cases of the pool claimed for a branch, or of the research list routed
/// to the branch found.
async fn city_act(
    console: Console,
    signed: SignedIn,
    headers: HeaderMap,
    body: Bytes,
    which: &'static str,
) -> Result<Response, ConsoleError> {
    require(&signed, which)?;
    let c = chosen(&body);
    signed.check_csrf(&headers, c.csrf.as_deref())?;
    let branch = code(c.branch)?.ok_or_else(|| ConsoleError::BadInput("name the branch".into()))?;
    if c.policies.is_empty() || c.policies.len() > MOST_AT_ONCE {
        return pages::notice(
            &console,
            &signed,
            false,
            crate::i18n::text(signed.session.lang, "claims.pick_one"),
        );
    }
    let owner = code(c.owner)?;
    let results = if which == "pool" {
        let body = json!({ "branch_code": branch, "owner_agent": owner });
        let path = |no: &str| format!("/v1/claims/{}:claim", urlencode(no));
        each(&console, &signed, c.policies, path, &body).await?
    } else {
        let body = json!({ "branch_code": branch });
        let path = |no: &str| format!("/v1/research/{}:resolve", urlencode(no));
        each(&console, &signed, c.policies, path, &body).await?
    };
    pages::part(&console, &signed, "results.html", crate::page! { results })
}

async fn from_pool(
    State(console): State<Console>,
    signed: SignedIn,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ConsoleError> {
    city_act(console, signed, headers, body, "pool").await
}

async fn resolve(
    State(console): State<Console>,
    signed: SignedIn,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ConsoleError> {
    city_act(console, signed, headers, body, "research").await
}

/// A path segment, percent-encoded.
pub fn urlencode(text: &str) -> String {
    url::form_urlencoded::byte_serialize(text.as_bytes()).collect()
}

/// The city's pool or its research list.
async fn city_list(
    console: Console,
    signed: SignedIn,
    scope: Scope,
    which: &'static str,
) -> Result<Response, ConsoleError> {
    require(&signed, which)?;
    let city = code(scope.city)?.or_else(|| signed.session.caller.city_code.clone());
    let items = match &city {
        Some(c) => {
            let path = format!("/v1/cities/{c}/{which}?page_size=500");
            console
                .services
                .get(Service::Assignment, &path, &signed.session.token)
                .await?["items"]
                .clone()
        }
        None => json!([]),
    };
    let page = crate::page! { which, city, items, title => format!("{which}.title") };
    pages::render(&console, "city_list.html", frame(&signed, which), page)
}

async fn pool(
    State(console): State<Console>,
    signed: SignedIn,
    Query(scope): Query<Scope>,
) -> Result<Response, ConsoleError> {
    city_list(console, signed, scope, "pool").await
}

async fn research(
    State(console): State<Console>,
    signed: SignedIn,
    Query(scope): Query<Scope>,
) -> Result<Response, ConsoleError> {
    city_list(console, signed, scope, "research").await
}
