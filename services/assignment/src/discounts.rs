//! Discounts climb a ladder (DOMAIN.md, "Discounts climb a ladder"). Each city sets its
//! ladder (`PUT /v1/cities/{city}/discount-ladder`; the handbook's example by default):
//! rungs of a maximum percent, who approves up to it and what comes with it. An owner
//! asks for a discount on their case (`POST /v1/cases/{policy_no}/discounts`): within
//! the owner's own rung it is approved at once; above it the request goes up the
//! approvers of the rungs in between, one step at a time, each a work item with a
//! deadline (`GET /v1/discounts`, `POST /v1/discounts/{id}:approve|:decline`). A step
//! not decided by its deadline expires the request. An approved discount is published
//! (`assignment.discount.approved`) and lists applies it to the case's quote, so the
//! next contact carries it. Every call is in the audit log.

use axum::Json;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use chrono::{DateTime, Utc};
use renewal_contract::assignment::DiscountApproved;
use renewal_contract::subject;
use renewal_platform::paging::{Page, PageQuery};
use renewal_platform::{Caller, Role, Scope};
use serde::{Deserialize, Serialize};
use sqlx::{PgConnection, Row};
use uuid::Uuid;

use crate::access::{self, CaseScope};
use crate::claims::ClaimApi;
use crate::refusals::{Refusal, body};

/// Who approves up to a rung.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, utoipa::ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Approver {
    /// The case's owner, on their own authority.
    Owner,
    /// The branch's manager.
    Supervisor,
    /// The city company (the general manager).
    CityAdmin,
}

impl Approver {
    pub fn as_str(self) -> &'static str {
        match self {
            Approver::Owner => "owner",
            Approver::Supervisor => "supervisor",
            Approver::CityAdmin => "city_admin",
        }
    }

    fn role(self) -> Role {
        match self {
            Approver::Owner => Role::Agent,
            Approver::Supervisor => Role::Supervisor,
            Approver::CityAdmin => Role::CityAdmin,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Rung {
    /// The largest discount of this rung, in percent off the commercial lines.
    pub max_percent: i32,
    pub approver: Approver,
    /// What comes with a discount of this rung (told to the customer), or "".
    #[serde(default)]
    pub extra: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Ladder {
    /// From the owner's own rung up, by rising maximum.
    pub rungs: Vec<Rung>,
    /// How long each approval step may wait, in hours.
    pub step_hours: i64,
}

impl Default for Ladder {
    /// The handbook's example: 8% the seller, 10% plus a one-year roadside rescue card
    /// the manager, 13% and 14% plus other services the general manager.
    fn default() -> Ladder {
        let rung = |max_percent, approver, extra: &str| Rung {
            max_percent,
            approver,
            extra: extra.to_owned(),
        };
        Ladder {
            rungs: vec![
                rung(8, Approver::Owner, ""),
                rung(10, Approver::Supervisor, "一年道路救援卡"),
                rung(13, Approver::CityAdmin, ""),
                rung(14, Approver::CityAdmin, "增值服务包"),
            ],
            step_hours: 24,
        }
    }
}

/// The approval a discount needs: the approvers above the owner, in order, and what
/// comes with it.
#[derive(Debug, PartialEq)]
pub struct Route {
    pub steps: Vec<Approver>,
    pub extra: String,
}

impl Ladder {
    /// Why the ladder cannot be used, if it cannot.
    pub fn refusal(&self) -> Option<String> {
        let first = self.rungs.first()?;
        if first.approver != Approver::Owner {
            return Some("the first rung is the owner's own".into());
        }
        if !(1..=168).contains(&self.step_hours) {
            return Some("step_hours must be 1 to 168".into());
        }
        for pair in self.rungs.windows(2) {
            if pair[1].max_percent <= pair[0].max_percent || pair[1].approver < pair[0].approver {
                return Some(
                    "rungs rise in max_percent and approver (owner, supervisor, city_admin)".into(),
                );
            }
        }
        for rung in &self.rungs {
            if !(1..=50).contains(&rung.max_percent) {
                return Some("max_percent must be 1 to 50".into());
            }
            if let Err(why) = check_extra(&rung.extra) {
                return Some(format!("extra {why}"));
            }
        }
        None
    }

    /// The approval `percent` needs, or why none can give it.
    pub fn route(&self, percent: i32) -> Result<Route, String> {
        if percent < 1 {
            return Err("percent must be at least 1".into());
        }
        let Some(top) = self.rungs.iter().position(|r| r.max_percent >= percent) else {
            let most = self.rungs.last().map_or(0, |r| r.max_percent);
            return Err(format!(
                "{percent}% is above the city's ladder (at most {most}%)"
            ));
        };
        let mut steps: Vec<Approver> = self.rungs[..=top]
            .iter()
            .map(|r| r.approver)
            .filter(|a| *a != Approver::Owner)
            .collect();
        steps.dedup();
        Ok(Route {
            steps,
            extra: self.rungs[top].extra.clone(),
        })
    }
}

/// What comes with a discount is told to the customer in an SMS: as a promotion.
fn check_extra(text: &str) -> Result<(), &'static str> {
    if text.chars().count() > 30 {
        return Err("is longer than 30 characters");
    }
    let allowed = |c: char| c.is_alphanumeric() || matches!(c, ' ' | '·' | '-' | '+' | '%' | '、');
    if !text.chars().all(allowed) {
        return Err("may hold only letters, digits, spaces and · - + % 、");
    }
    Ok(())
}

/// The city's ladder (the default where it set none).
async fn ladder_of(conn: &mut PgConnection, city: &str) -> Result<Ladder, Refusal> {
    let stored: Option<sqlx::types::Json<Ladder>> =
        sqlx::query_scalar("SELECT ladder FROM assignment.discount_ladders WHERE city_code = $1")
            .bind(city)
            .fetch_optional(conn)
            .await?;
    Ok(stored.map_or_else(Ladder::default, |l| l.0))
}

pub fn routes(api: ClaimApi) -> renewal_platform::http::Routes {
    renewal_platform::http::Routes::new()
        .route("/v1/cases/{policy_no}/discounts", post(request_discount))
        .route("/v1/discounts", get(pending_discounts))
        .route("/v1/discounts/{action}", post(decide))
        .route(
            "/v1/cities/{city_code}/discount-ladder",
            get(get_ladder).put(put_ladder),
        )
        .finish(|router| router.with_state(api))
}

#[utoipa::path(get, path = "/v1/cities/{city_code}/discount-ladder", tag = "discounts",
    params(("city_code" = String, Path)),
    responses((status = 200, body = Ladder), renewal_platform::openapi::Refusals))]
async fn get_ladder(
    State(api): State<ClaimApi>,
    caller: Caller,
    Path(city): Path<String>,
) -> Result<Json<Ladder>, Refusal> {
    access::for_city(&caller, access::READ_POOL, &city)?;
    let mut conn = api.pool.acquire().await?;
    Ok(Json(ladder_of(&mut conn, &city).await?))
}

/// Sets the city's ladder; requests already made keep the steps they were given.
#[utoipa::path(put, path = "/v1/cities/{city_code}/discount-ladder", tag = "discounts",
    params(("city_code" = String, Path)), request_body = Ladder,
    responses((status = 200, body = Ladder), (status = 400, content_type = "application/problem+json", body = renewal_platform::openapi::ProblemDocument), renewal_platform::openapi::Refusals))]
async fn put_ladder(
    State(api): State<ClaimApi>,
    caller: Caller,
    Path(city): Path<String>,
    json: Result<Json<Ladder>, JsonRejection>,
) -> Result<Json<Ladder>, Refusal> {
    access::for_city(&caller, access::CITY, &city)?;
    let ladder = body(json)?;
    if ladder.rungs.is_empty() {
        return Err(Refusal::Invalid(
            "a ladder has at least the owner's rung".into(),
        ));
    }
    if let Some(why) = ladder.refusal() {
        return Err(Refusal::Invalid(why));
    }
    sqlx::query(
        "INSERT INTO assignment.discount_ladders (city_code, ladder, updated_by, updated_at)
         VALUES ($1, $2, $3, $4)
         ON CONFLICT (city_code) DO UPDATE SET ladder = $2, updated_by = $3, updated_at = $4",
    )
    .bind(&city)
    .bind(sqlx::types::Json(&ladder))
    .bind(&caller.subject)
    .bind(api.clock.now())
    .execute(&api.pool)
    .await?;
    Ok(Json(ladder))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct DiscountRequest {
    /// Percent off the commercial lines.
    pub percent: i32,
    /// Why the customer needs it (e.g. a rival's offer).
    pub reason: String,
}

/// A discount request as its owner and approvers see it.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct DiscountView {
    pub request_id: Uuid,
    pub policy_no: String,
    pub branch_code: String,
    pub percent: i32,
    pub extra: String,
    pub reason: String,
    pub requested_by: String,
    pub requested_at: DateTime<Utc>,
    /// pending, approved, declined or expired.
    pub state: String,
    /// The approvers above the owner it needs, in order.
    pub steps: Vec<Approver>,
    /// Who must decide now, and by when (pending only).
    pub awaiting: Option<Approver>,
    pub step_due_at: Option<DateTime<Utc>>,
    pub decided_at: Option<DateTime<Utc>>,
}

fn view(row: &sqlx::postgres::PgRow) -> Result<DiscountView, sqlx::Error> {
    let steps: sqlx::types::Json<Vec<Approver>> = row.try_get("steps")?;
    let state: String = row.try_get("state")?;
    let step: i32 = row.try_get("step")?;
    let awaiting = (state == "pending")
        .then(|| steps.0.get(step as usize).copied())
        .flatten();
    Ok(DiscountView {
        request_id: row.try_get("request_id")?,
        policy_no: row.try_get("policy_no")?,
        branch_code: row.try_get("branch_code")?,
        percent: row.try_get("percent")?,
        extra: row.try_get("extra")?,
        reason: row.try_get("reason")?,
        requested_by: row.try_get("requested_by")?,
        requested_at: row.try_get("requested_at")?,
        state,
        steps: steps.0,
        awaiting,
        step_due_at: row.try_get("step_due_at")?,
        decided_at: row.try_get("decided_at")?,
    })
}

/// Requests whose step ran past its deadline end expired (checked whenever discounts
/// are asked for or decided, so no request waits on a lapsed step).
async fn expire_overdue(tx: &mut PgConnection, now: DateTime<Utc>) -> Result<u64, sqlx::Error> {
    let expired = sqlx::query(
        "WITH overdue AS (
             UPDATE assignment.discount_requests SET state = 'expired', decided_at = $1
             WHERE state = 'pending' AND step_due_at < $1
             RETURNING request_id, step, steps
         )
         INSERT INTO assignment.discount_decisions (request_id, step, approver, decision, decided_by, decided_at)
         SELECT request_id, step, steps->>step, 'expired', 'system', $1 FROM overdue",
    )
    .bind(now)
    .execute(&mut *tx)
    .await?;
    Ok(expired.rows_affected())
}

/// Publishes an approved discount for lists.
async fn publish_approved(
    tx: &mut PgConnection,
    api: &ClaimApi,
    row: &sqlx::postgres::PgRow,
    by: &str,
    now: DateTime<Utc>,
) -> Result<(), Refusal> {
    let steps: sqlx::types::Json<Vec<Approver>> = row.try_get("steps")?;
    let event = DiscountApproved {
        request_id: row.try_get::<Uuid, _>("request_id")?.to_string(),
        case_id: row.try_get::<Uuid, _>("case_id")?.to_string(),
        policy_no: row.try_get("policy_no")?,
        percent: row.try_get("percent")?,
        extra: row.try_get("extra")?,
        steps: steps.0.len() as i32,
        approved_by: by.to_owned(),
        approved_at_ms: now.timestamp_millis(),
    };
    api.outbox
        .enqueue(tx, subject::ASSIGNMENT_DISCOUNT_APPROVED, &event)
        .await?;
    metrics::counter!("discounts_approved_total", "steps" => steps.0.len().to_string())
        .increment(1);
    Ok(())
}

/// `POST /v1/cases/{policy_no}/discounts` `{"percent": 13, "reason": "..."}`: the case's
/// owner asks; approved at once within their own rung, else sent up the ladder (201).
#[utoipa::path(post, path = "/v1/cases/{policy_no}/discounts", tag = "discounts",
    params(("policy_no" = String, Path)), request_body = DiscountRequest,
    responses((status = 201, body = DiscountView), (status = 400, content_type = "application/problem+json", body = renewal_platform::openapi::ProblemDocument),
              (status = 404, content_type = "application/problem+json", body = renewal_platform::openapi::ProblemDocument),
              (status = 409, content_type = "application/problem+json", body = renewal_platform::openapi::ProblemDocument), renewal_platform::openapi::Refusals))]
async fn request_discount(
    State(api): State<ClaimApi>,
    caller: Caller,
    Path(policy_no): Path<String>,
    json: Result<Json<DiscountRequest>, JsonRejection>,
) -> Result<(StatusCode, Json<DiscountView>), Refusal> {
    let mut tx = api.pool.begin().await?;
    let scope = CaseScope::of(&mut tx, &policy_no)
        .await?
        .ok_or_else(|| Refusal::UnknownCase(policy_no.clone()))?;
    let owner = scope.owner_agent.clone().unwrap_or_default();
    caller.authorize(
        &[Role::Agent],
        Scope {
            agent: Some(&owner),
            branch: None,
            city: None,
        },
    )?;
    let request = body(json)?;
    let reason = request.reason.trim();
    if reason.is_empty() || reason.chars().count() > 200 {
        return Err(Refusal::Invalid(
            "reason must be 1 to 200 characters".into(),
        ));
    }
    let ladder = ladder_of(&mut tx, &scope.city_code).await?;
    let route = ladder.route(request.percent).map_err(Refusal::Invalid)?;
    let now = api.clock.now();
    expire_overdue(&mut tx, now).await?;
    let state = if route.steps.is_empty() {
        "approved"
    } else {
        "pending"
    };
    let row = sqlx::query(
        "INSERT INTO assignment.discount_requests (request_id, case_id, policy_no, city_code, branch_code,
             percent, extra, reason, requested_by, steps, step, step_due_at, state, requested_at, decided_at)
         SELECT $1, c.case_id, c.policy_no, c.city_code, coalesce(c.owner_branch, c.branch_code),
                $3, $4, $5, $6, $7, 0, CASE WHEN $8 = 'pending' THEN $9::timestamptz END, $8, $10,
                CASE WHEN $8 = 'approved' THEN $10 END
         FROM assignment.cases c WHERE c.policy_no = $2 AND c.state = 'open'
         ON CONFLICT (case_id) WHERE state = 'pending' DO NOTHING
         RETURNING *",
    )
    .bind(Uuid::now_v7())
    .bind(&policy_no)
    .bind(request.percent)
    .bind(&route.extra)
    .bind(reason)
    .bind(&owner)
    .bind(sqlx::types::Json(&route.steps))
    .bind(state)
    .bind(now + chrono::Duration::hours(ladder.step_hours))
    .bind(now)
    .fetch_optional(&mut *tx)
    .await?;
    let Some(row) = row else {
        return Err(Refusal::DiscountDecided {
            state: "closed, or has a request awaiting a decision".into(),
        });
    };
    if state == "approved" {
        publish_approved(&mut tx, &api, &row, &owner, now).await?;
    }
    let view = view(&row)?;
    tx.commit().await?;
    api.outbox.wake();
    Ok((StatusCode::CREATED, Json(view)))
}

/// Who may see and decide discount steps: each step's approver in their branch or city,
/// and HQ anywhere.
const APPROVERS: &[Role] = &[Role::Supervisor, Role::CityAdmin, Role::HqAdmin];

/// The pending requests a caller decides now: a supervisor's at their branch's
/// supervisor step, a city admin's at their city's step, every one for HQ.
#[utoipa::path(get, path = "/v1/discounts", tag = "discounts", params(PageQuery),
    responses((status = 200, body = Page<DiscountView>), renewal_platform::openapi::Refusals))]
async fn pending_discounts(
    State(api): State<ClaimApi>,
    caller: Caller,
    Query(page): Query<PageQuery>,
) -> Result<Json<Page<DiscountView>>, Refusal> {
    let role = caller.require(APPROVERS)?;
    let after: Option<Uuid> = page.after()?;
    let mut tx = api.pool.begin().await?;
    expire_overdue(&mut tx, api.clock.now()).await?;
    let (approver, branch, city) = match role {
        Role::Supervisor => (Some("supervisor"), caller.branch_code.clone(), None),
        Role::CityAdmin => (Some("city_admin"), None, caller.city_code.clone()),
        _ => (None, None, None),
    };
    let rows = sqlx::query(
        "SELECT * FROM assignment.discount_requests
         WHERE state = 'pending' AND ($1::text IS NULL OR steps->>step = $1::text)
           AND ($2::text IS NULL OR branch_code = $2::text) AND ($3::text IS NULL OR city_code = $3::text)
           AND ($4::uuid IS NULL OR request_id > $4::uuid)
         ORDER BY request_id LIMIT $5",
    )
    .bind(approver)
    .bind(branch)
    .bind(city)
    .bind(after)
    .bind(page.size() + 1)
    .fetch_all(&mut *tx)
    .await?;
    tx.commit().await?;
    let views = rows.iter().map(view).collect::<Result<Vec<_>, _>>()?;
    Ok(Json(Page::of(views, page.size(), |d| d.request_id)))
}

#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
pub struct Decision {
    /// Why (required to decline).
    #[serde(default)]
    pub reason: String,
}

/// `POST /v1/discounts/{id}:approve` or `:decline`: the step's approver decides. An
/// approval at the last step approves the request (published); a decline ends it.
#[utoipa::path(post, path = "/v1/discounts/{action}", tag = "discounts",
    params(("action" = String, Path, description = "{request_id}:approve or {request_id}:decline")),
    request_body = Decision,
    responses((status = 200, body = DiscountView), (status = 400, content_type = "application/problem+json", body = renewal_platform::openapi::ProblemDocument),
              (status = 404, content_type = "application/problem+json", body = renewal_platform::openapi::ProblemDocument),
              (status = 409, content_type = "application/problem+json", body = renewal_platform::openapi::ProblemDocument), renewal_platform::openapi::Refusals))]
async fn decide(
    State(api): State<ClaimApi>,
    caller: Caller,
    Path(action): Path<String>,
    json: Option<Json<Decision>>,
) -> Result<Json<DiscountView>, Refusal> {
    caller.require(APPROVERS)?;
    let (request_id, approve, reason) = parse_decision(&action, json)?;
    let now = api.clock.now();
    let mut tx = api.pool.begin().await?;
    expire_overdue(&mut tx, now).await?;
    let unknown = || Refusal::UnknownDiscount(request_id.to_string());
    let row =
        sqlx::query("SELECT * FROM assignment.discount_requests WHERE request_id = $1 FOR UPDATE")
            .bind(request_id)
            .fetch_optional(&mut *tx)
            .await?
            .ok_or_else(unknown)?;
    let current = view(&row)?;
    let Some(approver) = current.awaiting else {
        return Err(Refusal::DiscountDecided {
            state: current.state,
        });
    };
    let city: String = row.try_get("city_code")?;
    caller.authorize(
        &[approver.role(), Role::HqAdmin],
        Scope::branch(&current.branch_code, Some(&city)),
    )?;
    let decision = StepDecision {
        request_id,
        step: row.try_get("step")?,
        approver,
        approve,
        by: caller
            .agent_code
            .clone()
            .unwrap_or_else(|| caller.subject.clone()),
        reason,
        last: row.try_get::<i32, _>("step")? as usize + 1 >= current.steps.len(),
    };
    let hours = ladder_of(&mut tx, &city).await?.step_hours;
    let row = decision.record(&mut tx, hours, now).await?;
    if decision.approve && decision.last {
        publish_approved(&mut tx, &api, &row, &decision.by, now).await?;
    }
    let decided = view(&row)?;
    tx.commit().await?;
    api.outbox.wake();
    Ok(Json(decided))
}

/// The decision asked for: which request, approve or decline, and why (a decline must
/// say why).
fn parse_decision(
    action: &str,
    json: Option<Json<Decision>>,
) -> Result<(Uuid, bool, String), Refusal> {
    let (id, verb) = action.rsplit_once(':').ok_or_else(|| {
        Refusal::Invalid(format!(
            "{action:?}: use {{request_id}}:approve or :decline"
        ))
    })?;
    let approve = match verb {
        "approve" => true,
        "decline" => false,
        other => {
            return Err(Refusal::Invalid(format!(
                "unknown action {other:?}: use approve or decline"
            )));
        }
    };
    let request_id: Uuid = id
        .parse()
        .map_err(|_| Refusal::UnknownDiscount(id.to_owned()))?;
    let reason = json.map(|Json(d)| d.reason).unwrap_or_default();
    let reason = reason.trim().to_owned();
    if (!approve && reason.is_empty()) || reason.chars().count() > 200 {
        return Err(Refusal::Invalid(
            "reason must be 1 to 200 characters to decline, at most 200 to approve".into(),
        ));
    }
    Ok((request_id, approve, reason))
}

/// One approver's decision on the step awaiting them.
struct StepDecision {
    request_id: Uuid,
    step: i32,
    approver: Approver,
    approve: bool,
    by: String,
    reason: String,
    /// The request's last step.
    last: bool,
}

impl StepDecision {
    /// Records the decision and moves the request on: to its next step (due in
    /// `step_hours`), approved at the last, or declined. The request as it now stands.
    async fn record(
        &self,
        tx: &mut PgConnection,
        step_hours: i64,
        now: DateTime<Utc>,
    ) -> Result<sqlx::postgres::PgRow, sqlx::Error> {
        sqlx::query(
            "INSERT INTO assignment.discount_decisions (request_id, step, approver, decision, decided_by, reason, decided_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(self.request_id)
        .bind(self.step)
        .bind(self.approver.as_str())
        .bind(if self.approve { "approved" } else { "declined" })
        .bind(&self.by)
        .bind(&self.reason)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "UPDATE assignment.discount_requests
             SET state = $2, step = CASE WHEN $2 = 'pending' THEN step + 1 ELSE step END,
                 step_due_at = CASE WHEN $2 = 'pending' THEN $3::timestamptz END,
                 decided_at = CASE WHEN $2 = 'pending' THEN NULL ELSE $4 END
             WHERE request_id = $1 RETURNING *",
        )
        .bind(self.request_id)
        .bind(match (self.approve, self.last) {
            (false, _) => "declined",
            (true, true) => "approved",
            (true, false) => "pending",
        })
        .bind(now + chrono::Duration::hours(step_hours))
        .bind(now)
        .fetch_one(&mut *tx)
        .await
    }
}

/// Approved discounts by how many steps above the owner they took, for the review.
pub async fn approved_by_steps(
    pool: &sqlx::PgPool,
) -> Result<std::collections::BTreeMap<i64, i64>, sqlx::Error> {
    let rows: Vec<(i64, i64)> = sqlx::query_as(
        "SELECT jsonb_array_length(steps)::bigint, count(*) FROM assignment.discount_requests
         WHERE state = 'approved' GROUP BY 1",
    )
    .fetch_all(pool)
    .await?;
    Ok(rows.into_iter().collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_handbooks_ladder_routes_each_discount() {
        let ladder = Ladder::default();
        assert_eq!(ladder.refusal(), None);
        let route = |p| ladder.route(p).expect("routable");
        assert_eq!(
            route(8),
            Route {
                steps: vec![],
                extra: String::new()
            }
        );
        assert_eq!(
            route(10),
            Route {
                steps: vec![Approver::Supervisor],
                extra: "一年道路救援卡".into()
            }
        );
        // 13%: the manager, then the general manager.
        assert_eq!(route(13).steps, [Approver::Supervisor, Approver::CityAdmin]);
        assert_eq!(route(14).steps, [Approver::Supervisor, Approver::CityAdmin]);
        assert_eq!(route(14).extra, "增值服务包");
        assert!(
            ladder
                .route(15)
                .expect_err("too much")
                .contains("at most 14%")
        );
        assert!(ladder.route(0).is_err());
    }

    #[test]
    fn a_ladder_that_does_not_rise_or_starts_above_the_owner_is_refused() {
        let mut l = Ladder::default();
        l.rungs.swap(1, 2);
        assert!(l.refusal().is_some());
        let mut l = Ladder::default();
        l.rungs.remove(0);
        assert!(l.refusal().is_some());
        let mut l = Ladder::default();
        l.rungs[1].extra = "点击 bit.ly/x".into();
        assert!(l.refusal().is_some());
    }
}
