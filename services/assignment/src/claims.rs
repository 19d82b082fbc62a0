//! Claims: each item of an issued renewal list becomes a claim for its branch, due
//! within the city's claim days. Branch staff claim it naming an owner, or decline it
//! with a reason; a claim not taken in time, or declined, opens to every branch of the
//! city (the pool), first claim wins. A policy whose branch or agent is unknown goes to
//! the city's research queue instead, to be given a branch by the 15th.

use axum::Json;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, Query, State};
use axum::routing::{get, post};
use chrono::{DateTime, Datelike, NaiveDate, NaiveTime, Utc};
use renewal_contract::lists::{ListIssued, ListKind};
use renewal_platform::inbox::field;
use renewal_platform::paging::{Page, PageQuery};
use renewal_platform::{Caller, Clock, Delivery, HandleError, Handler, Outbox};
use serde::{Deserialize, Serialize};
use sqlx::{PgConnection, PgPool, Row};
use uuid::Uuid;

use crate::access;
use crate::org::city_deadlines;
use crate::ownership::{self, NewOwner};
use crate::refusals::{Refusal, body, required};
use crate::routing::{self, Step};

/// The phases in which a case has no owner yet.
pub const OWNERLESS: [&str; 4] = ["awaiting_list", "research", "branch", "pool"];

/// `lists.list.issued`: renewal lists become claims; lapse lists are for the branches'
/// rescue work and change nothing here.
pub struct ListEvents {
    pub wake: std::sync::Arc<tokio::sync::Notify>,
}

impl Handler for ListEvents {
    async fn handle(&self, tx: &mut PgConnection, delivery: &Delivery) -> Result<(), HandleError> {
        let list: ListIssued = delivery.decode()?;
        if list.kind != ListKind::Renewal as i32 {
            return Ok(());
        }
        let list_id = field::uuid("list_id", &list.list_id)?;
        let issued_on = field::date("issued_on", &list.issued_on)?;
        let issued_at = field::instant_ms("issued_at_ms", list.issued_at_ms)?;
        let ids = list
            .items
            .iter()
            .map(|i| field::uuid("case_id", &i.case_id))
            .collect::<Result<Vec<_>, _>>()?;
        open_claims(tx, list_id, &list.city_code, &ids, issued_on, issued_at).await?;
        Ok(())
    }

    fn committed(&self) {
        self.wake.notify_one();
    }

    /// A list names cases and policies, never a customer: kept whole.
    fn redact(&self, delivery: &Delivery) -> Option<Vec<u8>> {
        Some(delivery.payload.to_vec())
    }
}

/// The research deadline: the end of the 15th (of the issue month, or of the next
/// month for a list issued after the 15th), local time; the end of the first working
/// day after it when the 15th is not worked.
pub fn research_due(issued_on: NaiveDate, tz: chrono_tz::Tz) -> DateTime<Utc> {
    let month_start = issued_on.with_day(1).unwrap_or(issued_on);
    let month_start = if issued_on.day() > 15 {
        month_start + chrono::Months::new(1)
    } else {
        month_start
    };
    let fifteenth = month_start + chrono::Days::new(14);
    let last = renewal_platform::holidays::Calendar::shared().working_day_on_or_after(fifteenth);
    renewal_platform::local_instant(last + chrono::Days::new(1), NaiveTime::MIN, tz)
}

/// Opens a claim for each listed case still waiting for a list (a case is claimed
/// from one list only; a replayed page finds nothing left to open). The steps go into
/// the routing history; the list's own event is their announcement, so no
/// `assignment.case.routed` is published per item.
pub async fn open_claims(
    tx: &mut PgConnection,
    list_id: Uuid,
    city: &str,
    ids: &[Uuid],
    issued_on: NaiveDate,
    issued_at: DateTime<Utc>,
) -> Result<usize, HandleError> {
    let known: i64 =
        sqlx::query_scalar("SELECT count(*) FROM assignment.cases WHERE case_id = ANY($1)")
            .bind(ids)
            .fetch_one(&mut *tx)
            .await?;
    if known < ids.len() as i64 {
        // The list overtook some case.opened messages (they travel on another consumer).
        return Err(HandleError::Retry(format!(
            "{} listed cases not opened here yet",
            ids.len() as i64 - known
        )));
    }
    let deadlines = city_deadlines(tx, city).await?;
    let tz: Option<String> = sqlx::query_scalar(
        "SELECT time_zone FROM assignment.cases WHERE case_id = ANY($1) AND time_zone IS NOT NULL LIMIT 1",
    )
    .bind(ids)
    .fetch_optional(&mut *tx)
    .await?
    .flatten();
    let tz: chrono_tz::Tz = tz
        .and_then(|t| t.parse().ok())
        .unwrap_or(chrono_tz::Asia::Shanghai);
    let claim_due = deadlines.claim_due(issued_on, tz);
    let research_by = research_due(issued_on, tz);
    let rows = sqlx::query(
        "WITH listed AS (
             SELECT c.case_id,
                    (b.branch_code IS NOT NULL AND a.agent_code IS NOT NULL) AS traceable
             FROM assignment.cases c
             LEFT JOIN assignment.branches b ON b.branch_code = c.branch_code
             LEFT JOIN assignment.agents a ON a.agent_code = c.credited_agent
             WHERE c.case_id = ANY($1) AND c.state = 'open' AND c.phase = 'awaiting_list'
             FOR UPDATE OF c)
         UPDATE assignment.cases c
         SET list_id = $2,
             phase = CASE WHEN l.traceable THEN 'branch' ELSE 'research' END,
             phase_due_at = CASE WHEN l.traceable THEN $3 ELSE $4 END
         FROM listed l WHERE c.case_id = l.case_id
         RETURNING c.case_id, c.phase, c.phase_due_at",
    )
    .bind(ids)
    .bind(list_id)
    .bind(claim_due)
    .bind(research_by)
    .fetch_all(&mut *tx)
    .await?;
    let mut steps = Vec::with_capacity(rows.len());
    for row in &rows {
        let phase: String = row.try_get("phase")?;
        steps.push(Step {
            case_id: row.try_get("case_id")?,
            step: if phase == "branch" {
                "branch"
            } else {
                "research"
            },
            reason: if phase == "branch" {
                "list_issued".into()
            } else {
                "origin_untraceable".into()
            },
            deadline: row.try_get("phase_due_at")?,
        });
    }
    routing::record_history(tx, &steps, "system", issued_at).await?;
    metrics::counter!("claims_opened_total").increment(rows.len() as u64);
    Ok(rows.len())
}

#[derive(Clone)]
pub struct ClaimApi {
    pub pool: PgPool,
    pub outbox: Outbox,
    pub clock: Clock,
    pub wake: std::sync::Arc<tokio::sync::Notify>,
}

pub fn routes(api: ClaimApi) -> renewal_platform::http::Routes {
    renewal_platform::http::Routes::new()
        .route("/v1/branches/{branch_code}/claims", get(branch_claims))
        .route("/v1/cities/{city_code}/pool", get(city_pool))
        .route("/v1/cities/{city_code}/research", get(city_research))
        .route("/v1/claims/{action}", post(claim_action))
        .route("/v1/research/{action}", post(research_action))
        .finish(|router| router.with_state(api))
}

/// One claim as branch staff see it.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ClaimView {
    pub case_id: Uuid,
    pub policy_no: String,
    pub city_code: String,
    pub branch_code: String,
    pub phase: String,
    pub deadline: Option<DateTime<Utc>>,
    pub expiry_date: NaiveDate,
    pub effective_expiry_date: Option<NaiveDate>,
    pub credited_agent: String,
    pub owner_agent: Option<String>,
    pub important: bool,
    pub group_policy: bool,
}

const CLAIM_COLUMNS: &str =
    "c.case_id, c.policy_no, c.city_code, c.branch_code, c.phase, c.phase_due_at, c.expiry_date,
    c.effective_expiry_date, c.credited_agent, c.owner_agent, c.important, c.group_policy";

fn claim_view(row: &sqlx::postgres::PgRow) -> Result<ClaimView, sqlx::Error> {
    Ok(ClaimView {
        case_id: row.try_get("case_id")?,
        policy_no: row.try_get("policy_no")?,
        city_code: row.try_get("city_code")?,
        branch_code: row.try_get("branch_code")?,
        phase: row.try_get("phase")?,
        deadline: row.try_get("phase_due_at")?,
        expiry_date: row.try_get("expiry_date")?,
        effective_expiry_date: row.try_get("effective_expiry_date")?,
        credited_agent: row.try_get("credited_agent")?,
        owner_agent: row.try_get("owner_agent")?,
        important: row.try_get("important")?,
        group_policy: row.try_get("group_policy")?,
    })
}

#[derive(Debug, Deserialize)]
struct ClaimsQuery {
    state: Option<String>,
    #[serde(flatten)]
    page: PageQuery,
}

/// Where a page of claims continues: after this deadline (most urgent first) and
/// policy number.
type ClaimKey = (Option<DateTime<Utc>>, String);

fn claim_key(c: &ClaimView) -> ClaimKey {
    (c.deadline, c.policy_no.clone())
}

/// Orders by deadline (none last), then policy number, from `$2`/`$3` on.
const BY_DEADLINE: &str = "AND (coalesce(c.phase_due_at, 'infinity'), c.policy_no)
         > (coalesce($2::timestamptz, '-infinity'), $3)
     ORDER BY coalesce(c.phase_due_at, 'infinity'), c.policy_no LIMIT $4";

/// `GET /v1/branches/{branch}/claims?state=pending|claimed|declined` (default pending):
/// pending claims (the branch's list, and second-assignment cases it may take), cases
/// it claimed that are still open, or cases it declined; paged, most urgent first.
#[utoipa::path(get, path = "/v1/branches/{branch_code}/claims", tag = "claims",
    params(("branch_code" = String, Path),
           ("state" = Option<String>, Query, description = "pending (default), claimed or declined"),
           PageQuery),
    responses((status = 200, body = Page<ClaimView>), (status = 400, content_type = "application/problem+json", body = renewal_platform::openapi::ProblemDocument), renewal_platform::openapi::Refusals,
              (status = 422, description = "No such branch", content_type = "application/problem+json", body = renewal_platform::openapi::ProblemDocument)))]
async fn branch_claims(
    State(api): State<ClaimApi>,
    caller: Caller,
    Path(branch): Path<String>,
    Query(q): Query<ClaimsQuery>,
) -> Result<Json<Page<ClaimView>>, Refusal> {
    let known = access::read_branch(&api.pool, &caller, &branch).await?;
    let which = match q.state.as_deref().unwrap_or("pending") {
        "pending" => {
            "c.branch_code = $1 AND c.state = 'open' AND c.phase IN ('branch', 'branch_reassign')"
        }
        "claimed" => "c.owner_branch = $1 AND c.state = 'open'",
        "declined" => {
            "c.case_id IN (SELECT case_id FROM assignment.declines WHERE branch_code = $1)"
        }
        other => {
            return Err(Refusal::Invalid(format!(
                "state {other:?}: use pending, claimed or declined"
            )));
        }
    };
    if !known {
        return Err(Refusal::UnknownBranch(branch));
    }
    let sql = format!("SELECT {CLAIM_COLUMNS} FROM assignment.cases c WHERE {which} {BY_DEADLINE}");
    Ok(Json(
        claims_page(&api.pool, &sql, &branch, None, &q.page).await?,
    ))
}

/// One page of claims from `sql` (`$1` the branch or city, `$5` the phases if any).
async fn claims_page(
    pool: &PgPool,
    sql: &str,
    key: &str,
    phases: Option<&[&str]>,
    page: &PageQuery,
) -> Result<Page<ClaimView>, Refusal> {
    let (after_deadline, after_policy): ClaimKey = page.after()?.unwrap_or_default();
    let size = page.size();
    let mut query = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(key)
        .bind(after_deadline)
        .bind(after_policy)
        .bind(size + 1);
    if let Some(phases) = phases {
        query = query.bind(phases);
    }
    let rows = query.fetch_all(pool).await?;
    let claims = rows.iter().map(claim_view).collect::<Result<_, _>>()?;
    Ok(Page::of(claims, size, claim_key))
}

async fn city_queue(
    pool: &PgPool,
    city: &str,
    phases: &[&str],
    page: &PageQuery,
) -> Result<Page<ClaimView>, Refusal> {
    let sql = format!(
        "SELECT {CLAIM_COLUMNS} FROM assignment.cases c
         WHERE c.city_code = $1 AND c.state = 'open' AND c.phase = ANY($5) {BY_DEADLINE}"
    );
    claims_page(pool, &sql, city, Some(phases), page).await
}

/// `GET /v1/cities/{city}/pool`: cases any branch of the city may claim.
#[utoipa::path(get, path = "/v1/cities/{city_code}/pool", tag = "claims",
    params(("city_code" = String, Path), PageQuery),
    responses((status = 200, body = Page<ClaimView>), renewal_platform::openapi::Refusals))]
async fn city_pool(
    State(api): State<ClaimApi>,
    caller: Caller,
    Path(city): Path<String>,
    Query(page): Query<PageQuery>,
) -> Result<Json<Page<ClaimView>>, Refusal> {
    access::for_city(&caller, access::READ_POOL, &city)?;
    Ok(Json(
        city_queue(&api.pool, &city, &["pool", "city_reassign"], &page).await?,
    ))
}

/// `GET /v1/cities/{city}/research`: cases whose origin must be traced.
#[utoipa::path(get, path = "/v1/cities/{city_code}/research", tag = "claims",
    params(("city_code" = String, Path), PageQuery),
    responses((status = 200, body = Page<ClaimView>), renewal_platform::openapi::Refusals))]
async fn city_research(
    State(api): State<ClaimApi>,
    caller: Caller,
    Path(city): Path<String>,
    Query(page): Query<PageQuery>,
) -> Result<Json<Page<ClaimView>>, Refusal> {
    access::for_city(&caller, access::CITY, &city)?;
    Ok(Json(
        city_queue(&api.pool, &city, &["research"], &page).await?,
    ))
}

/// `{policy_no}:claim` or `{policy_no}:decline`.
fn split_action(raw: &str) -> Result<(&str, &str), Refusal> {
    raw.rsplit_once(':')
        .filter(|(p, _)| !p.is_empty())
        .ok_or_else(|| Refusal::Invalid(format!("{raw:?}: use {{policy_no}}:claim or :decline")))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ClaimRequest {
    pub branch_code: String,
    /// The agent who will own the case (`owner_agent`).
    pub owner_agent: Option<String>,
    /// Who acts: if given, it must be the caller's own agent code (the token says who
    /// acts; this field only confirms it).
    pub by: Option<String>,
    /// Why a branch declines.
    pub reason: Option<String>,
}

async fn claim_action(
    State(api): State<ClaimApi>,
    caller: Caller,
    Path(action): Path<String>,
    json: Result<Json<ClaimRequest>, JsonRejection>,
) -> Result<Json<serde_json::Value>, Refusal> {
    let (policy_no, verb) = split_action(&action)?;
    caller.require(access::ACT_FOR_BRANCH)?;
    let request = body(json)?;
    let now = api.clock.now();
    let result = match verb {
        "claim" => claim(&api.pool, &api.outbox, policy_no, &request, &caller, now).await?,
        "decline" => decline(&api.pool, &api.outbox, policy_no, &request, &caller, now).await?,
        other => {
            return Err(Refusal::Invalid(format!(
                "unknown action {other:?}: use claim or decline"
            )));
        }
    };
    api.outbox.wake();
    api.wake.notify_one();
    Ok(Json(result))
}

/// A case locked for update in the caller's transaction.
pub(crate) struct LockedCase {
    pub case_id: Uuid,
    pub city_code: String,
    pub branch_code: String,
    pub owner_branch: Option<String>,
    pub phase: String,
    pub state: String,
    pub owner_agent: Option<String>,
    pub important: bool,
    pub group_policy: bool,
}

impl LockedCase {
    /// Important customers and group policies escalate to the city company.
    pub fn escalates_to_city(&self) -> bool {
        self.important || self.group_policy
    }
}

pub(crate) async fn lock_case(
    tx: &mut PgConnection,
    policy_no: &str,
) -> Result<LockedCase, Refusal> {
    let row = sqlx::query(
        "SELECT case_id, city_code, branch_code, owner_branch, phase, state, owner_agent, important, group_policy
         FROM assignment.cases WHERE policy_no = $1 FOR UPDATE",
    )
    .bind(policy_no)
    .fetch_optional(&mut *tx)
    .await?
    .ok_or_else(|| Refusal::UnknownCase(policy_no.to_owned()))?;
    let case = LockedCase {
        case_id: row.try_get("case_id")?,
        city_code: row.try_get("city_code")?,
        branch_code: row.try_get("branch_code")?,
        owner_branch: row.try_get("owner_branch")?,
        phase: row.try_get("phase")?,
        state: row.try_get("state")?,
        owner_agent: row.try_get("owner_agent")?,
        important: row.try_get("important")?,
        group_policy: row.try_get("group_policy")?,
    };
    if case.state != "open" {
        return Err(Refusal::Closed);
    }
    Ok(case)
}

/// A branch claims a case naming its owner. Exactly one of any number of concurrent
/// claims wins: the case row is locked, and the losers find it owned.
pub async fn claim(
    pool: &PgPool,
    outbox: &Outbox,
    policy_no: &str,
    request: &ClaimRequest,
    caller: &Caller,
    now: DateTime<Utc>,
) -> Result<serde_json::Value, Refusal> {
    let branch = required("branch_code", &request.branch_code)?;
    let owner = required("owner_agent", request.owner_agent.as_deref().unwrap_or(""))?;
    let by = access::acting_as(caller, request.by.as_deref())?;
    let mut tx = pool.begin().await?;
    let city = access::act_for_branch(&mut tx, caller, branch).await?;
    check_new_owner(&mut tx, owner, branch).await?;
    let case = lock_case(&mut tx, policy_no).await?;
    if case.phase == "owned"
        && case.owner_agent.as_deref() == Some(owner)
        && case.owner_branch.as_deref() == Some(branch)
    {
        // The winner retrying: answered as it was.
        return Ok(claimed(&mut tx, &case, policy_no, owner, branch).await?);
    }
    let reason = claim_reason(&case, owner, branch, &city)?;
    ownership::assign_many(
        &mut tx,
        outbox,
        &[NewOwner {
            case_id: case.case_id,
            owner: Some(owner.to_owned()),
            owner_branch: Some(branch.to_owned()),
            phase: "owned",
            reason: reason.into(),
        }],
        &by,
        now,
    )
    .await?;
    tx.commit().await?;
    Ok(
        serde_json::json!({"policy_no": policy_no, "owner_agent": owner, "branch_code": branch, "reason": reason}),
    )
}

/// The owner named must be an active agent of the claiming branch.
async fn check_new_owner(tx: &mut PgConnection, owner: &str, branch: &str) -> Result<(), Refusal> {
    let agent =
        sqlx::query("SELECT branch_code, active FROM assignment.agents WHERE agent_code = $1")
            .bind(owner)
            .fetch_optional(&mut *tx)
            .await?
            .ok_or_else(|| Refusal::UnknownAgent(owner.to_owned()))?;
    if !agent.try_get::<bool, _>("active")? {
        return Err(Refusal::InactiveAgent(owner.to_owned()));
    }
    let agent_branch: String = agent.try_get("branch_code")?;
    if agent_branch != branch {
        return Err(Refusal::AgentNotInBranch {
            agent: owner.to_owned(),
            agent_branch,
            branch: branch.to_owned(),
        });
    }
    Ok(())
}

/// Why `branch` (in `city`) may claim the case for `owner` now, for the history; or
/// why it may not.
fn claim_reason(
    case: &LockedCase,
    owner: &str,
    branch: &str,
    city: &str,
) -> Result<&'static str, Refusal> {
    // Second assignment takes the case away from its owner: they cannot take it back.
    if matches!(case.phase.as_str(), "branch_reassign" | "city_reassign")
        && case.owner_agent.as_deref() == Some(owner)
    {
        return Err(Refusal::OwnerBeingReplaced {
            owner: owner.to_owned(),
        });
    }
    match case.phase.as_str() {
        "branch" | "branch_reassign" if case.branch_code != branch => Err(Refusal::NotYourBranch {
            branch: branch.to_owned(),
        }),
        "branch" => Ok("branch_claim"),
        "branch_reassign" => Ok("second_assignment_branch"),
        "pool" | "city_reassign" if case.city_code != city => Err(Refusal::NotYourCity {
            branch: branch.to_owned(),
        }),
        "pool" => Ok("city_pool"),
        "city_reassign" => Ok("second_assignment_city"),
        "owned" | "confirming" | "hq" | "city_company" => Err(Refusal::AlreadyClaimed),
        other => Err(Refusal::WrongPhase {
            action: "claimed",
            phase: other.to_owned(),
        }),
    }
}

/// The answer the winning claim got, for its retry: the reason its owner was named.
async fn claimed(
    tx: &mut PgConnection,
    case: &LockedCase,
    policy_no: &str,
    owner: &str,
    branch: &str,
) -> Result<serde_json::Value, sqlx::Error> {
    let reason: Option<String> = sqlx::query_scalar(
        "SELECT reason FROM assignment.owner_history WHERE case_id = $1 AND owner_agent = $2
         ORDER BY assigned_at DESC LIMIT 1",
    )
    .bind(case.case_id)
    .bind(owner)
    .fetch_optional(&mut *tx)
    .await?;
    Ok(
        serde_json::json!({"policy_no": policy_no, "owner_agent": owner, "branch_code": branch, "reason": reason}),
    )
}

/// A branch declines a claim on its list: the case opens to the city's pool.
pub async fn decline(
    pool: &PgPool,
    outbox: &Outbox,
    policy_no: &str,
    request: &ClaimRequest,
    caller: &Caller,
    now: DateTime<Utc>,
) -> Result<serde_json::Value, Refusal> {
    let branch = required("branch_code", &request.branch_code)?;
    let reason = required("reason", request.reason.as_deref().unwrap_or(""))?;
    let by = access::acting_as(caller, request.by.as_deref())?;
    let mut tx = pool.begin().await?;
    access::act_for_branch(&mut tx, caller, branch).await?;
    let case = lock_case(&mut tx, policy_no).await?;
    match case.phase.as_str() {
        "branch" if case.branch_code == branch => {}
        "branch" => {
            return Err(Refusal::NotYourBranch {
                branch: branch.to_owned(),
            });
        }
        "owned" | "confirming" | "hq" | "city_company" => {
            return Err(Refusal::AlreadyClaimed);
        }
        other => {
            return Err(Refusal::WrongPhase {
                action: "declined",
                phase: other.to_owned(),
            });
        }
    }
    let deadlines = city_deadlines(&mut tx, &case.city_code).await?;
    let pool_due = now + chrono::Duration::days(deadlines.pool_days as i64);
    sqlx::query("UPDATE assignment.cases SET phase = 'pool', phase_due_at = $2 WHERE case_id = $1")
        .bind(case.case_id)
        .bind(pool_due)
        .execute(&mut *tx)
        .await?;
    sqlx::query(
        "INSERT INTO assignment.declines (case_id, branch_code, reason, declined_by, declined_at) VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(case.case_id)
    .bind(branch)
    .bind(reason)
    .bind(&by)
    .bind(now)
    .execute(&mut *tx)
    .await?;
    routing::record_many(
        &mut tx,
        outbox,
        &[Step {
            case_id: case.case_id,
            step: "pool",
            reason: format!("declined: {reason}"),
            deadline: Some(pool_due),
        }],
        &by,
        now,
    )
    .await?;
    tx.commit().await?;
    Ok(serde_json::json!({"policy_no": policy_no, "phase": "pool", "pool_deadline": pool_due}))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct ResearchRequest {
    branch_code: String,
    /// If given, the caller's own agent code.
    by: Option<String>,
}

/// `POST /v1/research/{policy_no}:resolve` `{"branch_code": ..., "by": ...}`: the traced
/// branch gets the claim, due within the city's claim days.
async fn research_action(
    State(api): State<ClaimApi>,
    caller: Caller,
    Path(action): Path<String>,
    json: Result<Json<ResearchRequest>, JsonRejection>,
) -> Result<Json<serde_json::Value>, Refusal> {
    let (policy_no, verb) = split_action(&action)?;
    caller.require(access::CITY)?;
    if verb != "resolve" {
        return Err(Refusal::Invalid(format!(
            "unknown action {verb:?}: use resolve"
        )));
    }
    let request = body(json)?;
    let branch = required("branch_code", &request.branch_code)?;
    let by = access::acting_as(&caller, request.by.as_deref())?;
    let now = api.clock.now();
    let mut tx = api.pool.begin().await?;
    let city = access::branch_city(&mut tx, branch)
        .await?
        .ok_or_else(|| Refusal::UnknownBranch(branch.to_owned()))?;
    let case = lock_case(&mut tx, policy_no).await?;
    access::for_city(&caller, access::CITY, &case.city_code)?;
    if case.phase != "research" {
        return Err(Refusal::WrongPhase {
            action: "researched",
            phase: case.phase.clone(),
        });
    }
    if case.city_code != city {
        return Err(Refusal::NotYourCity {
            branch: branch.to_owned(),
        });
    }
    let deadlines = city_deadlines(&mut tx, &city).await?;
    let tz: chrono_tz::Tz = case_zone(&mut tx, case.case_id).await?;
    let due = deadlines.claim_due(renewal_platform::local_date(now, tz), tz);
    sqlx::query(
        "UPDATE assignment.cases SET phase = 'branch', branch_code = $2, phase_due_at = $3 WHERE case_id = $1",
    )
    .bind(case.case_id)
    .bind(branch)
    .bind(due)
    .execute(&mut *tx)
    .await?;
    routing::record_many(
        &mut tx,
        &api.outbox,
        &[Step {
            case_id: case.case_id,
            step: "branch",
            reason: "researched".into(),
            deadline: Some(due),
        }],
        &by,
        now,
    )
    .await?;
    tx.commit().await?;
    api.outbox.wake();
    api.wake.notify_one();
    Ok(Json(
        serde_json::json!({"policy_no": policy_no, "branch_code": branch, "claim_deadline": due}),
    ))
}

/// The case's time zone (Shanghai for a case opened without one).
pub(crate) async fn case_zone(
    conn: &mut PgConnection,
    case_id: Uuid,
) -> Result<chrono_tz::Tz, sqlx::Error> {
    let tz: Option<String> =
        sqlx::query_scalar("SELECT time_zone FROM assignment.cases WHERE case_id = $1")
            .bind(case_id)
            .fetch_optional(&mut *conn)
            .await?
            .flatten();
    Ok(tz
        .and_then(|t| t.parse().ok())
        .unwrap_or(chrono_tz::Asia::Shanghai))
}
