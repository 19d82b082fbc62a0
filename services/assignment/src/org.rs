//! The organisation: cities, branches, agents and supervisors, each agent's capacity
//! and whether they are active; per-city deadlines. Loaded from CSV
//! (`renewal import org FILE`, `POST /v1/org:import`) and edited over HTTP.
//! Deactivating an agent hands their open cases back to their branch for claiming.

use std::collections::HashSet;

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, Query, State};
use axum::routing::{get, post, put};
use chrono::{DateTime, NaiveDate, Utc};
use renewal_platform::holidays::Calendar;
use renewal_platform::paging::{Page, PageQuery};
use renewal_platform::{Caller, Clock, Outbox, Problem, Scope};
use serde::{Deserialize, Serialize};
use sqlx::{PgConnection, PgPool, Row};
use uuid::Uuid;

use crate::access;
use crate::ownership::{self, NewOwner};
use crate::refusals::{Refusal, body, required};
use crate::routing::{self, Step};

pub const COLUMNS: [&str; 8] = [
    "city_code",
    "branch_code",
    "branch_name",
    "agent_code",
    "agent_name",
    "role",
    "capacity",
    "active",
];

/// Per-city deadlines (defaults when the city has no row).
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct CityDeadlines {
    pub claim_days: i32,
    pub pool_days: i32,
    pub step_hours: i32,
}

impl CityDeadlines {
    /// The handbook's deadlines (the defaults); a city may only shorten them.
    pub const HANDBOOK: CityDeadlines = CityDeadlines {
        claim_days: 5,
        pool_days: 3,
        step_hours: 24,
    };

    /// The end of the claim window opened on `day` (local): the end of its
    /// `claim_days`-th working day after, holidays and weekends skipped, make-up
    /// workdays counted.
    pub fn claim_due(&self, day: NaiveDate, tz: chrono_tz::Tz) -> DateTime<Utc> {
        let last = Calendar::shared().working_days_after(day, self.claim_days.max(1) as u32);
        renewal_platform::local_instant(last + chrono::Days::new(1), chrono::NaiveTime::MIN, tz)
    }

    /// When a second-assignment step begun at `now` ends: `step_hours` counted on
    /// working days only.
    pub fn step_due(&self, now: DateTime<Utc>, tz: chrono_tz::Tz) -> DateTime<Utc> {
        let local = now.with_timezone(&tz).naive_local();
        let end = Calendar::shared().add_working_hours(local, self.step_hours.max(1) as i64);
        renewal_platform::local_instant(end.date(), end.time(), tz)
    }

    /// Why these deadlines are refused: out of range, or longer than the handbook's.
    fn refusal(&self) -> Option<String> {
        let h = Self::HANDBOOK;
        if self.claim_days < 1 || self.pool_days < 1 || self.step_hours < 1 {
            return Some("claim_days, pool_days and step_hours must be at least 1".into());
        }
        let longer: Vec<String> = [
            ("claim_days", self.claim_days, h.claim_days, "working days"),
            ("pool_days", self.pool_days, h.pool_days, "days"),
            ("step_hours", self.step_hours, h.step_hours, "working hours"),
        ]
        .into_iter()
        .filter(|(_, set, most, _)| set > most)
        .map(|(name, set, most, unit)| {
            format!("{name} {set} is longer than the handbook's {most} {unit}")
        })
        .collect();
        (!longer.is_empty()).then(|| {
            format!(
                "a city may only shorten its deadlines: {}",
                longer.join("; ")
            )
        })
    }
}

impl Default for CityDeadlines {
    fn default() -> Self {
        CityDeadlines {
            claim_days: 5,
            pool_days: 3,
            step_hours: 24,
        }
    }
}

pub async fn city_deadlines(
    conn: &mut PgConnection,
    city: &str,
) -> Result<CityDeadlines, sqlx::Error> {
    let row = sqlx::query(
        "SELECT claim_days, pool_days, step_hours FROM assignment.city_settings WHERE city_code = $1",
    )
    .bind(city)
    .fetch_optional(&mut *conn)
    .await?;
    Ok(match row {
        Some(r) => CityDeadlines {
            claim_days: r.try_get("claim_days")?,
            pool_days: r.try_get("pool_days")?,
            step_hours: r.try_get("step_hours")?,
        },
        None => CityDeadlines::default(),
    })
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrgRow {
    pub city_code: String,
    pub branch_code: String,
    pub branch_name: String,
    pub agent_code: String,
    pub agent_name: String,
    pub role: String,
    pub capacity: i32,
    pub active: bool,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct RowProblem {
    pub line: u64,
    pub column: String,
    pub reason: String,
}

#[derive(Debug, thiserror::Error)]
pub enum OrgError {
    #[error("the header is wrong: {0}")]
    Header(String),
    #[error("{} rows are wrong", .0.len())]
    Rows(Vec<RowProblem>),
    #[error("{0}")]
    Denied(#[from] Problem),
    #[error("postgres: {0}")]
    Db(#[from] sqlx::Error),
}

impl axum::response::IntoResponse for OrgError {
    fn into_response(self) -> axum::response::Response {
        use axum::http::StatusCode;
        match self {
            OrgError::Header(d) => Problem::new(StatusCode::BAD_REQUEST, "invalid_header", d),
            OrgError::Rows(problems) => Problem::new(
                StatusCode::BAD_REQUEST,
                "invalid_rows",
                "nothing was loaded; fix these rows",
            )
            .with("rows", problems),
            OrgError::Denied(problem) => problem,
            OrgError::Db(e) => Problem::database(&e),
        }
        .into_response()
    }
}

/// Reads an organisation CSV (UTF-8, optional BOM); every row must be right.
pub fn parse(data: &[u8]) -> Result<Vec<OrgRow>, OrgError> {
    let data = data.strip_prefix(b"\xef\xbb\xbf").unwrap_or(data);
    let mut reader = csv::ReaderBuilder::new()
        .flexible(true)
        .trim(csv::Trim::All)
        .from_reader(data);
    let header = reader
        .headers()
        .map_err(|e| OrgError::Header(e.to_string()))?
        .clone();
    let mut index = [0usize; 8];
    for (i, name) in COLUMNS.iter().enumerate() {
        index[i] = header
            .iter()
            .position(|h| h.eq_ignore_ascii_case(name))
            .ok_or_else(|| OrgError::Header(format!("missing column {name}")))?;
    }
    let mut rows = Vec::new();
    let mut problems = Vec::new();
    let mut seen = HashSet::new();
    for (n, record) in reader.records().enumerate() {
        let line = n as u64 + 2;
        let record = match record {
            Ok(r) => r,
            Err(e) => {
                problems.push(RowProblem {
                    line,
                    column: String::new(),
                    reason: e.to_string(),
                });
                continue;
            }
        };
        let fields: Vec<String> = index
            .iter()
            .map(|i| record.get(*i).unwrap_or("").to_owned())
            .collect();
        let (row, mut row_problems) = read_row(line, &fields);
        if !seen.insert(row.agent_code.clone()) {
            row_problems.push(RowProblem {
                line,
                column: "agent_code".into(),
                reason: "repeated in the file".into(),
            });
        }
        if row_problems.is_empty() {
            rows.push(row);
        } else {
            problems.append(&mut row_problems);
        }
    }
    if !problems.is_empty() {
        return Err(OrgError::Rows(problems));
    }
    Ok(rows)
}

/// One row's fields (in [`COLUMNS`] order) as a row, and what is wrong with them.
fn read_row(line: u64, fields: &[String]) -> (OrgRow, Vec<RowProblem>) {
    let field = |i: usize| fields.get(i).cloned().unwrap_or_default();
    let mut problems: Vec<RowProblem> = Vec::new();
    let mut bad = |column: &str, reason: &str| {
        problems.push(RowProblem {
            line,
            column: column.to_owned(),
            reason: reason.to_owned(),
        })
    };
    let active = field(7).to_ascii_lowercase();
    let row = OrgRow {
        city_code: field(0),
        branch_code: field(1),
        branch_name: field(2),
        agent_code: field(3),
        agent_name: field(4),
        role: field(5).to_ascii_lowercase(),
        capacity: field(6).parse().unwrap_or(-1),
        active: matches!(active.as_str(), "true" | "1" | "yes" | "y"),
    };
    for (column, value) in [
        ("city_code", &row.city_code),
        ("branch_code", &row.branch_code),
        ("agent_code", &row.agent_code),
    ] {
        if value.is_empty() {
            bad(column, "required");
        } else if let Err(reason) = renewal_platform::names::code(value) {
            bad(column, reason);
        }
    }
    if let Err(reason) = renewal_platform::names::person_name(&row.agent_name) {
        bad("agent_name", reason);
    }
    if let Err(reason) = renewal_platform::names::organisation_name(&row.branch_name) {
        bad("branch_name", reason);
    }
    if row.role != "agent" && row.role != "supervisor" {
        bad("role", "must be agent or supervisor");
    }
    if !(0..=100_000).contains(&row.capacity) {
        bad("capacity", "must be a whole number from 0");
    }
    if !matches!(
        active.as_str(),
        "true" | "1" | "yes" | "y" | "false" | "0" | "no" | "n"
    ) {
        bad("active", "must be true or false");
    }
    (row, problems)
}

#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct OrgReport {
    pub branches: u64,
    pub agents: u64,
    pub deactivated: u64,
    pub cases_handed_back: u64,
}

/// Loads the rows (branches and agents are upserted; agents turned inactive hand
/// their open cases back to their branch).
pub async fn load(
    pool: &PgPool,
    outbox: &Outbox,
    rows: &[OrgRow],
    now: DateTime<Utc>,
) -> Result<OrgReport, OrgError> {
    let mut tx = pool.begin().await?;
    let col = |f: fn(&OrgRow) -> &str| rows.iter().map(f).collect::<Vec<&str>>();
    let branches = sqlx::query(
        "INSERT INTO assignment.branches (branch_code, city_code, branch_name)
         SELECT DISTINCT ON (b) b, c, n FROM UNNEST($1::text[], $2::text[], $3::text[]) AS u(b, c, n)
         ON CONFLICT (branch_code) DO UPDATE SET city_code = EXCLUDED.city_code, branch_name = EXCLUDED.branch_name",
    )
    .bind(col(|r| &r.branch_code))
    .bind(col(|r| &r.city_code))
    .bind(col(|r| &r.branch_name))
    .execute(&mut *tx)
    .await?
    .rows_affected();
    let capacities: Vec<i32> = rows.iter().map(|r| r.capacity).collect();
    let actives: Vec<bool> = rows.iter().map(|r| r.active).collect();
    let deactivated: Vec<String> = sqlx::query_scalar(
        "WITH incoming AS (
             SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::int[], $7::bool[])
                 AS u(agent_code, branch_code, city_code, agent_name, role, capacity, active)),
         was AS (SELECT a.agent_code, a.active FROM assignment.agents a JOIN incoming USING (agent_code)),
         written AS (
             INSERT INTO assignment.agents (agent_code, branch_code, city_code, agent_name, role, capacity, active, updated_at)
             SELECT agent_code, branch_code, city_code, agent_name, role, capacity, active, $8 FROM incoming
             ON CONFLICT (agent_code) DO UPDATE SET branch_code = EXCLUDED.branch_code, city_code = EXCLUDED.city_code,
                 agent_name = EXCLUDED.agent_name, role = EXCLUDED.role, capacity = EXCLUDED.capacity,
                 active = EXCLUDED.active, updated_at = EXCLUDED.updated_at)
         SELECT i.agent_code FROM incoming i JOIN was USING (agent_code) WHERE was.active AND NOT i.active",
    )
    .bind(col(|r| &r.agent_code))
    .bind(col(|r| &r.branch_code))
    .bind(col(|r| &r.city_code))
    .bind(col(|r| &r.agent_name))
    .bind(col(|r| &r.role))
    .bind(&capacities)
    .bind(&actives)
    .bind(now)
    .fetch_all(&mut *tx)
    .await?;
    let handed = hand_back(&mut tx, outbox, &deactivated, now).await?;
    tx.commit().await?;
    outbox.wake();
    Ok(OrgReport {
        branches,
        agents: rows.len() as u64,
        deactivated: deactivated.len() as u64,
        cases_handed_back: handed as u64,
    })
}

/// The open cases of agents no longer active go back to the agent's branch, to be
/// claimed again within the city's claim deadline.
pub async fn hand_back(
    tx: &mut PgConnection,
    outbox: &Outbox,
    agents: &[String],
    now: DateTime<Utc>,
) -> Result<usize, sqlx::Error> {
    if agents.is_empty() {
        return Ok(0);
    }
    let rows = sqlx::query(
        "SELECT c.case_id, a.branch_code,
                $2::timestamptz + make_interval(days => COALESCE(s.claim_days, 5)) AS deadline
         FROM assignment.cases c
         JOIN assignment.agents a ON a.agent_code = c.owner_agent
         LEFT JOIN assignment.city_settings s ON s.city_code = a.city_code
         WHERE c.owner_agent = ANY($1) AND c.state = 'open'
         FOR UPDATE OF c",
    )
    .bind(agents)
    .bind(now)
    .fetch_all(&mut *tx)
    .await?;
    let mut changes = Vec::with_capacity(rows.len());
    let mut steps = Vec::with_capacity(rows.len());
    let (mut ids, mut branches, mut deadlines) = (Vec::new(), Vec::new(), Vec::new());
    for row in &rows {
        let case_id: Uuid = row.try_get("case_id")?;
        let branch: String = row.try_get("branch_code")?;
        let deadline: DateTime<Utc> = row.try_get("deadline")?;
        changes.push(NewOwner {
            case_id,
            owner: None,
            owner_branch: None,
            phase: "branch",
            reason: "agent_deactivated".into(),
        });
        steps.push(Step {
            case_id,
            step: "branch",
            reason: "agent_deactivated".into(),
            deadline: Some(deadline),
        });
        ids.push(case_id);
        branches.push(branch);
        deadlines.push(deadline);
    }
    ownership::assign_many(tx, outbox, &changes, "system", now).await?;
    sqlx::query(
        "UPDATE assignment.cases c SET branch_code = u.branch, phase_due_at = u.deadline
         FROM UNNEST($1::uuid[], $2::text[], $3::timestamptz[]) AS u(case_id, branch, deadline)
         WHERE c.case_id = u.case_id",
    )
    .bind(&ids)
    .bind(&branches)
    .bind(&deadlines)
    .execute(&mut *tx)
    .await?;
    routing::record_many(tx, outbox, &steps, "system", now).await?;
    Ok(rows.len())
}

#[derive(Clone)]
pub struct OrgApi {
    pub pool: PgPool,
    pub outbox: Outbox,
    pub clock: Clock,
}

pub fn routes(api: OrgApi) -> renewal_platform::http::Routes {
    renewal_platform::http::Routes::new()
        .route("/v1/org:import", post(import_csv))
        .route("/v1/agents/{agent_code}", get(show_agent).patch(edit_agent))
        .route("/v1/branches/{branch_code}/agents", get(branch_agents))
        .route(
            "/v1/cities/{city_code}/settings",
            put(put_settings).get(get_settings),
        )
        .finish(|router| router.with_state(api))
}

#[utoipa::path(post, path = "/v1/org:import", tag = "organisation",
    request_body(content = String, content_type = "text/csv",
        description = "city_code, branch_code, branch_name, agent_code, agent_name, role, capacity, active"),
    responses((status = 200, body = OrgReport),
              (status = 400, description = "Nothing loaded: the header or rows are wrong", content_type = "application/problem+json", body = renewal_platform::openapi::ProblemDocument), renewal_platform::openapi::Refusals))]
async fn import_csv(
    State(api): State<OrgApi>,
    caller: Caller,
    data: Bytes,
) -> Result<Json<OrgReport>, OrgError> {
    caller.require(access::ORG)?;
    let rows = parse(&data)?;
    let report = load(&api.pool, &api.outbox, &rows, api.clock.now()).await?;
    tracing::info!(
        agents = report.agents,
        deactivated = report.deactivated,
        "organisation loaded"
    );
    Ok(Json(report))
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct AgentView {
    pub agent_code: String,
    pub branch_code: String,
    pub city_code: String,
    pub agent_name: String,
    pub role: String,
    pub capacity: i32,
    pub active: bool,
    pub open_cases: i64,
}

async fn agent(pool: &PgPool, code: &str) -> Result<AgentView, Refusal> {
    let row = sqlx::query(
        "SELECT a.*, (SELECT count(*) FROM assignment.cases c WHERE c.owner_agent = a.agent_code AND c.state = 'open' AND c.outcome IS NULL) AS open_cases
         FROM assignment.agents a WHERE a.agent_code = $1",
    )
    .bind(code)
    .fetch_optional(pool)
    .await?
    .ok_or_else(|| Refusal::UnknownAgent(code.to_owned()))?;
    agent_view(&row).map_err(Refusal::Db)
}

fn agent_view(row: &sqlx::postgres::PgRow) -> Result<AgentView, sqlx::Error> {
    Ok(AgentView {
        agent_code: row.try_get("agent_code")?,
        branch_code: row.try_get("branch_code")?,
        city_code: row.try_get("city_code")?,
        agent_name: row.try_get("agent_name")?,
        role: row.try_get("role")?,
        capacity: row.try_get("capacity")?,
        active: row.try_get("active")?,
        open_cases: row.try_get("open_cases")?,
    })
}

/// An agent is reached by themselves, their branch and their city.
fn agent_scope<'a>(code: &'a str, branch: &'a str, city: &'a str) -> Scope<'a> {
    Scope {
        agent: Some(code),
        branch: Some(branch),
        city: Some(city),
    }
}

#[utoipa::path(get, path = "/v1/agents/{agent_code}", tag = "organisation",
    params(("agent_code" = String, Path)),
    responses((status = 200, body = AgentView), (status = 422, content_type = "application/problem+json", body = renewal_platform::openapi::ProblemDocument), renewal_platform::openapi::Refusals))]
async fn show_agent(
    State(api): State<OrgApi>,
    caller: Caller,
    Path(code): Path<String>,
) -> Result<Json<AgentView>, Refusal> {
    let roles = &[
        renewal_platform::Role::Agent,
        renewal_platform::Role::Supervisor,
        renewal_platform::Role::BranchAdmin,
        renewal_platform::Role::CityAdmin,
        renewal_platform::Role::HqAdmin,
    ];
    caller.require(roles)?;
    let view = agent(&api.pool, &code).await?;
    caller.authorize(
        roles,
        agent_scope(&code, &view.branch_code, &view.city_code),
    )?;
    Ok(Json(view))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct AgentEdit {
    capacity: Option<i32>,
    active: Option<bool>,
    role: Option<String>,
    agent_name: Option<String>,
}

/// `PATCH /v1/agents/{code}` `{"active": false}`, `{"capacity": 40}`, ...
#[utoipa::path(patch, path = "/v1/agents/{agent_code}", tag = "organisation",
    params(("agent_code" = String, Path)), request_body = AgentEdit,
    responses((status = 200, body = serde_json::Value, description = "The agent, and the cases handed back if made inactive"),
              (status = 400, content_type = "application/problem+json", body = renewal_platform::openapi::ProblemDocument), (status = 422, content_type = "application/problem+json", body = renewal_platform::openapi::ProblemDocument), renewal_platform::openapi::Refusals))]
async fn edit_agent(
    State(api): State<OrgApi>,
    caller: Caller,
    Path(code): Path<String>,
    json: Result<Json<AgentEdit>, JsonRejection>,
) -> Result<Json<serde_json::Value>, Refusal> {
    caller.require(access::ACT_FOR_BRANCH)?;
    let edit = body(json)?;
    if edit.capacity.is_some_and(|c| !(0..=100_000).contains(&c)) {
        return Err(Refusal::Invalid("capacity must be from 0 to 100000".into()));
    }
    if let Some(name) = &edit.agent_name
        && let Err(reason) = renewal_platform::names::person_name(name)
    {
        return Err(Refusal::Invalid(format!("agent_name {reason}")));
    }
    if let Some(role) = &edit.role
        && role != "agent"
        && role != "supervisor"
    {
        return Err(Refusal::Invalid("role must be agent or supervisor".into()));
    }
    let now = api.clock.now();
    let mut tx = api.pool.begin().await?;
    let (was, branch, city): (bool, String, String) = sqlx::query_as(
        "SELECT active, branch_code, city_code FROM assignment.agents WHERE agent_code = $1 FOR UPDATE",
    )
    .bind(&code)
    .fetch_optional(&mut *tx)
    .await?
    .ok_or_else(|| Refusal::UnknownAgent(code.clone()))?;
    access::for_branch(&caller, access::ACT_FOR_BRANCH, &branch, Some(&city))?;
    sqlx::query(
        "UPDATE assignment.agents SET capacity = COALESCE($2, capacity), active = COALESCE($3, active),
             role = COALESCE($4, role), agent_name = COALESCE($5, agent_name), updated_at = $6
         WHERE agent_code = $1",
    )
    .bind(&code)
    .bind(edit.capacity)
    .bind(edit.active)
    .bind(&edit.role)
    .bind(&edit.agent_name)
    .bind(now)
    .execute(&mut *tx)
    .await?;
    let handed = if was && edit.active == Some(false) {
        hand_back(&mut tx, &api.outbox, std::slice::from_ref(&code), now).await?
    } else {
        0
    };
    tx.commit().await?;
    api.outbox.wake();
    let view = agent(&api.pool, &code).await?;
    Ok(Json(
        serde_json::json!({"agent": view, "cases_handed_back": handed}),
    ))
}

/// `GET /v1/branches/{branch}/agents`: the branch's agents, paged by agent code.
#[utoipa::path(get, path = "/v1/branches/{branch_code}/agents", tag = "organisation",
    params(("branch_code" = String, Path), PageQuery),
    responses((status = 200, body = Page<AgentView>), (status = 422, content_type = "application/problem+json", body = renewal_platform::openapi::ProblemDocument), renewal_platform::openapi::Refusals))]
async fn branch_agents(
    State(api): State<OrgApi>,
    caller: Caller,
    Path(branch): Path<String>,
    Query(page): Query<PageQuery>,
) -> Result<Json<Page<AgentView>>, Refusal> {
    if !access::read_branch(&api.pool, &caller, &branch).await? {
        return Err(Refusal::UnknownBranch(branch));
    }
    let after: String = page.after()?.unwrap_or_default();
    let rows = sqlx::query(
        "SELECT a.*, (SELECT count(*) FROM assignment.cases c WHERE c.owner_agent = a.agent_code AND c.state = 'open' AND c.outcome IS NULL) AS open_cases
         FROM assignment.agents a WHERE a.branch_code = $1 AND a.agent_code > $2
         ORDER BY a.agent_code LIMIT $3",
    )
    .bind(&branch)
    .bind(after)
    .bind(page.size() + 1)
    .fetch_all(&api.pool)
    .await?;
    let views = rows.iter().map(agent_view).collect::<Result<Vec<_>, _>>()?;
    Ok(Json(Page::of(views, page.size(), |a| a.agent_code.clone())))
}

#[utoipa::path(get, path = "/v1/cities/{city_code}/settings", tag = "organisation",
    params(("city_code" = String, Path)),
    responses((status = 200, body = CityDeadlines), renewal_platform::openapi::Refusals))]
async fn get_settings(
    State(api): State<OrgApi>,
    caller: Caller,
    Path(city): Path<String>,
) -> Result<Json<CityDeadlines>, Refusal> {
    access::for_city(&caller, access::READ_POOL, &city)?;
    let mut conn = api.pool.acquire().await?;
    Ok(Json(city_deadlines(&mut conn, &city).await?))
}

/// `PUT /v1/cities/{city}/settings` `{"claim_days": 3, "pool_days": 2, "step_hours": 24}`:
/// applies to claims opened from then on. A city may only shorten the handbook's
/// deadlines (5 working days to claim, 3 days in the pool, 24 working hours a step):
/// longer is refused with the reason.
#[utoipa::path(put, path = "/v1/cities/{city_code}/settings", tag = "organisation",
    params(("city_code" = String, Path)), request_body = CityDeadlines,
    responses((status = 200, body = CityDeadlines), (status = 400, content_type = "application/problem+json", body = renewal_platform::openapi::ProblemDocument), renewal_platform::openapi::Refusals))]
async fn put_settings(
    State(api): State<OrgApi>,
    caller: Caller,
    Path(city): Path<String>,
    json: Result<Json<CityDeadlines>, JsonRejection>,
) -> Result<Json<CityDeadlines>, Refusal> {
    access::for_city(&caller, access::CITY, &city)?;
    let s = body(json)?;
    required("city_code", &city)?;
    if let Some(why) = s.refusal() {
        return Err(Refusal::Invalid(why));
    }
    sqlx::query(
        "INSERT INTO assignment.city_settings (city_code, claim_days, pool_days, step_hours) VALUES ($1, $2, $3, $4)
         ON CONFLICT (city_code) DO UPDATE SET claim_days = $2, pool_days = $3, step_hours = $4",
    )
    .bind(&city)
    .bind(s.claim_days)
    .bind(s.pool_days)
    .bind(s.step_hours)
    .execute(&api.pool)
    .await?;
    Ok(Json(s))
}
