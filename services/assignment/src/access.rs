//! Who may act on what in assignment: the roles each route admits, and the part of
//! the organisation the caller's token reaches (the README's access matrix). The
//! token decides; a body field naming a branch or an agent must agree with it.

use renewal_platform::{Caller, Problem, Role, Scope};
use sqlx::{PgConnection, PgPool, Row};

use crate::refusals::Refusal;

/// Reading a branch's claims and agents.
pub const READ_BRANCH: &[Role] = &[
    Role::Supervisor,
    Role::BranchAdmin,
    Role::CityAdmin,
    Role::HqAdmin,
];
/// Claiming, declining and editing agents for a branch.
pub const ACT_FOR_BRANCH: &[Role] = &[Role::BranchAdmin, Role::CityAdmin, Role::HqAdmin];
/// A city's pool, as its branches see it.
pub const READ_POOL: &[Role] = &[
    Role::BranchAdmin,
    Role::Supervisor,
    Role::CityAdmin,
    Role::HqAdmin,
];
/// The city's own work: research, settings.
pub const CITY: &[Role] = &[Role::CityAdmin, Role::HqAdmin];
/// A case's owner answering the second assignment.
pub const OWNER_ANSWERS: &[Role] = &[Role::Agent, Role::BranchAdmin, Role::HqAdmin];
/// A case's history.
pub const READ_CASE: &[Role] = &[
    Role::Agent,
    Role::Supervisor,
    Role::BranchAdmin,
    Role::CityAdmin,
    Role::HqAdmin,
];
/// Reports: no personal data in them.
pub const REPORTS: &[Role] = &[Role::Analyst, Role::HqAdmin, Role::CityAdmin];
/// The organisation as a whole.
pub const ORG: &[Role] = &[Role::HqAdmin];

/// The city of a branch (`None` if the branch is unknown).
pub async fn branch_city(
    conn: &mut PgConnection,
    branch: &str,
) -> Result<Option<String>, sqlx::Error> {
    sqlx::query_scalar("SELECT city_code FROM assignment.branches WHERE branch_code = $1")
        .bind(branch)
        .fetch_optional(conn)
        .await
}

/// The caller may read `branch`'s claims and agents; whether the branch is known.
pub async fn read_branch(pool: &PgPool, caller: &Caller, branch: &str) -> Result<bool, Refusal> {
    let mut conn = pool.acquire().await?;
    let city = branch_city(&mut conn, branch).await?;
    for_branch(caller, READ_BRANCH, branch, city.as_deref())?;
    Ok(city.is_some())
}

/// The caller may act for `branch` (claims, declines): its city, or why not (403
/// before 422, so an unknown branch is not told apart from another's).
pub async fn act_for_branch(
    tx: &mut PgConnection,
    caller: &Caller,
    branch: &str,
) -> Result<String, Refusal> {
    let city = branch_city(tx, branch).await?;
    for_branch(caller, ACT_FOR_BRANCH, branch, city.as_deref())?;
    city.ok_or_else(|| Refusal::UnknownBranch(branch.to_owned()))
}

/// The caller may act for `branch` (in `city`) with one of `roles`.
pub fn for_branch(
    caller: &Caller,
    roles: &[Role],
    branch: &str,
    city: Option<&str>,
) -> Result<Role, Refusal> {
    Ok(caller.authorize(roles, Scope::branch(branch, city))?)
}

/// A city's queue: the city's own roles, and the branch roles of its branches.
pub fn for_city(caller: &Caller, roles: &[Role], city: &str) -> Result<Role, Refusal> {
    let own_branch = (caller.city_code.as_deref() == Some(city))
        .then_some(caller.branch_code.as_deref())
        .flatten();
    Ok(caller.authorize(
        roles,
        Scope {
            agent: None,
            branch: own_branch,
            city: Some(city),
        },
    )?)
}

/// Where a case belongs: reached by its owner or credited agent, by its listed or
/// owning branch, and by its city.
pub struct CaseScope {
    pub city_code: String,
    pub branch_code: String,
    pub owner_branch: Option<String>,
    pub owner_agent: Option<String>,
    pub credited_agent: String,
}

impl CaseScope {
    pub async fn of(
        conn: &mut PgConnection,
        policy_no: &str,
    ) -> Result<Option<CaseScope>, sqlx::Error> {
        let row = sqlx::query(
            "SELECT city_code, branch_code, owner_branch, owner_agent, credited_agent
             FROM assignment.cases WHERE policy_no = $1",
        )
        .bind(policy_no)
        .fetch_optional(conn)
        .await?;
        row.map(|r| {
            Ok(CaseScope {
                city_code: r.try_get("city_code")?,
                branch_code: r.try_get("branch_code")?,
                owner_branch: r.try_get("owner_branch")?,
                owner_agent: r.try_get("owner_agent")?,
                credited_agent: r.try_get("credited_agent")?,
            })
        })
        .transpose()
    }

    pub fn authorize(&self, caller: &Caller, roles: &[Role]) -> Result<Role, Refusal> {
        let city = Some(self.city_code.as_str());
        let listed = Scope {
            agent: self.owner_agent.as_deref(),
            branch: Some(&self.branch_code),
            city,
        };
        let owning = Scope {
            agent: Some(&self.credited_agent),
            branch: self.owner_branch.as_deref(),
            city,
        };
        caller
            .authorize(roles, listed)
            .or_else(|_| caller.authorize(roles, owning))
            .map_err(Refusal::from)
    }
}

/// Who acts, for the history: the token's agent code, or its subject. A body `by`
/// naming someone else is refused.
pub fn acting_as(caller: &Caller, by: Option<&str>) -> Result<String, Refusal> {
    let me = caller
        .agent_code
        .clone()
        .unwrap_or_else(|| caller.subject.clone());
    match by.map(str::trim).filter(|b| !b.is_empty()) {
        Some(by) if by != me => Err(Problem::new(
            axum::http::StatusCode::FORBIDDEN,
            "identity_mismatch",
            "by does not match your token: you act as yourself",
        )
        .into()),
        _ => Ok(me),
    }
}
