//! Renewal lists and lapse lists, issued to each branch: every month on the configured
//! day by the daily run, or on demand for one city (`POST /v1/lists:issue`).
//!
//! A renewal list holds the branch's open cases 61-90 days from their effective expiry,
//! plus any open case never listed yet (one that opened late, say), so that no case is
//! left off; a case is on one renewal list only. A lapse list holds the branch's lapsed
//! customers not insured again; they reappear every month until a renewal arrives.
//! Each list is one event per page of at most [`PAGE`] items (`lists.list.issued`).

use std::collections::BTreeMap;

use axum::extract::{Json, State};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use chrono::{DateTime, NaiveDate, Utc};
use renewal_contract::lists::{ListIssued, ListItem, ListKind};
use renewal_contract::subject;
use renewal_platform::{Clock, Outbox, local_date};
use serde::{Deserialize, Serialize};
use sqlx::{PgConnection, PgPool, Row};
use tracing::Instrument;
use uuid::Uuid;

use crate::cases::bucket_of;
use crate::portfolio::Zones;

/// Items per `lists.list.issued` message.
pub const PAGE: usize = 1000;

/// Which cases a renewal list issue takes.
pub struct Scope<'a> {
    pub zone: Option<chrono_tz::Tz>,
    pub city: Option<&'a str>,
    pub monthly: bool,
}

/// What an issue produced, per kind.
#[derive(Debug, Default, Clone, Serialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct Issued {
    pub lists: usize,
    pub items: usize,
    pub list_ids: Vec<Uuid>,
}

/// Issues every branch's renewal list in scope: the open cases with at most 90 days to
/// go that are on no list yet, one list per branch, in one statement.
pub async fn issue_renewal_lists(
    tx: &mut PgConnection,
    outbox: &Outbox,
    scope: &Scope<'_>,
    today: NaiveDate,
    now: DateTime<Utc>,
) -> Result<Issued, sqlx::Error> {
    // Filters written into the statement, so the plan can use the open-cases index.
    let zone = if scope.zone.is_some() {
        "time_zone = $2"
    } else {
        "$2::text IS NULL"
    };
    let city = if scope.city.is_some() {
        "city_code = $3"
    } else {
        "$3::text IS NULL"
    };
    // Issuers take turns (the daily run and an on-demand issue could otherwise list a
    // case twice; the primary key of list_items would refuse the second).
    sqlx::query("SELECT pg_advisory_xact_lock(hashtext('lists.issue_renewal_lists'))")
        .execute(&mut *tx)
        .await?;
    // A listed case is a row of list_items, never an update of the wide case row. The
    // due cases are read, grouped by branch and ordered here, and their items written
    // from arrays: no plan has to pair the cases with their branch's list.
    let sql = format!(
        "SELECT c.case_id, c.policy_no, c.city_code, c.branch_code, c.expiry_date,
                c.effective_expiry_date, c.agent_code, c.category, c.important, c.group_policy,
                GREATEST(c.effective_expiry_date - $1::date, 0) AS days
         FROM lists.cases c
         WHERE c.state = 'open'
           AND c.effective_expiry_date <= $1::date + 90
           AND {zone} AND {city}
           AND NOT EXISTS (SELECT 1 FROM lists.list_items i WHERE i.case_id = c.case_id)"
    );
    let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(today)
        .bind(scope.zone.map(|z| z.name()))
        .bind(scope.city)
        .fetch_all(&mut *tx)
        .await?;
    let mut branches: BTreeMap<(String, String), Vec<(Uuid, ListItem)>> = BTreeMap::new();
    for row in &rows {
        let days: i32 = row.try_get("days")?;
        let expiry: NaiveDate = row.try_get("expiry_date")?;
        let effective: NaiveDate = row.try_get("effective_expiry_date")?;
        let case_id: Uuid = row.try_get("case_id")?;
        branches
            .entry((row.try_get("city_code")?, row.try_get("branch_code")?))
            .or_default()
            .push((
                case_id,
                ListItem {
                    case_id: case_id.to_string(),
                    policy_no: row.try_get("policy_no")?,
                    expiry_date: expiry.to_string(),
                    effective_expiry_date: effective.to_string(),
                    days_to_expiry: days,
                    bucket: bucket_of(days) as i32,
                    agent_code: row.try_get("agent_code")?,
                    category: row.try_get("category")?,
                    important: row.try_get("important")?,
                    group_policy: row.try_get("group_policy")?,
                    ..Default::default()
                },
            ));
    }
    let mut lists: BTreeMap<(String, String, Uuid), Vec<ListItem>> = BTreeMap::new();
    let (mut list_ids, mut cities, mut branch_codes, mut counts) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let (mut item_cases, mut item_lists) = (Vec::new(), Vec::new());
    for ((city, branch), mut items) in branches {
        items.sort_unstable_by(|(_, a), (_, b)| {
            (&a.effective_expiry_date, &a.policy_no).cmp(&(&b.effective_expiry_date, &b.policy_no))
        });
        let list_id = Uuid::now_v7();
        list_ids.push(list_id);
        cities.push(city.clone());
        branch_codes.push(branch.clone());
        counts.push(items.len() as i32);
        for (case_id, _) in &items {
            item_cases.push(*case_id);
            item_lists.push(list_id);
        }
        lists.insert(
            (city, branch, list_id),
            items.into_iter().map(|(_, item)| item).collect(),
        );
    }
    sqlx::query(
        "INSERT INTO lists.issued_lists (list_id, kind, trigger, city_code, branch_code, issued_on, issued_at, items)
         SELECT list_id, 'renewal', $5, city_code, branch_code, $6, $7, items
         FROM unnest($1::uuid[], $2::text[], $3::text[], $4::int[]) AS l(list_id, city_code, branch_code, items)",
    )
    .bind(&list_ids)
    .bind(&cities)
    .bind(&branch_codes)
    .bind(&counts)
    .bind(if scope.monthly {
        "monthly"
    } else {
        "on_demand"
    })
    .bind(today)
    .bind(now)
    .execute(&mut *tx)
    .await?;
    sqlx::query(
        "INSERT INTO lists.list_items (case_id, list_id) SELECT * FROM unnest($1::uuid[], $2::uuid[])",
    )
    .bind(&item_cases)
    .bind(&item_lists)
    .execute(&mut *tx)
    .await?;
    publish(
        outbox,
        tx,
        ListKind::Renewal,
        lists,
        scope.monthly,
        today,
        now,
    )
    .await
}

/// Issues every branch's lapse list in the zone: its lapsed policies not renewed since.
pub async fn issue_lapse_lists(
    tx: &mut PgConnection,
    outbox: &Outbox,
    zone: Option<chrono_tz::Tz>,
    city: Option<&str>,
    monthly: bool,
    today: NaiveDate,
    now: DateTime<Utc>,
) -> Result<Issued, sqlx::Error> {
    let rows = sqlx::query(
        "SELECT p.policy_no, p.city_code, p.branch_code, p.agent_code, p.category, p.end_date,
                p.important, p.group_policy, c.case_id, c.effective_expiry_date,
                COALESCE(c.lapsed_on, p.lapsed_on) AS lapsed_on, COALESCE(c.calls_made, 0) AS calls_made,
                COALESCE(c.last_outcome, '') AS last_outcome
         FROM lists.policies p LEFT JOIN lists.cases c USING (policy_no)
         WHERE p.status = 'lapsed'
           -- Off the register: a customer lost for good (insured elsewhere, vehicle sold),
           -- or one who said on a call they renewed (until that is found untrue).
           AND (c.state IS NULL OR c.state = 'lapsed')
           AND ($1::text IS NULL OR p.time_zone = $1)
           AND ($2::text IS NULL OR p.city_code = $2)",
    )
    .bind(zone.map(|z| z.name()))
    .bind(city)
    .fetch_all(&mut *tx)
    .await?;
    let mut lists: BTreeMap<(String, String), Vec<ListItem>> = BTreeMap::new();
    for row in &rows {
        let expiry: NaiveDate = row.try_get("end_date")?;
        let effective: Option<NaiveDate> = row.try_get("effective_expiry_date")?;
        lists
            .entry((row.try_get("city_code")?, row.try_get("branch_code")?))
            .or_default()
            .push(ListItem {
                case_id: row
                    .try_get::<Option<Uuid>, _>("case_id")?
                    .map(|id| id.to_string())
                    .unwrap_or_default(),
                policy_no: row.try_get("policy_no")?,
                expiry_date: expiry.to_string(),
                effective_expiry_date: effective.unwrap_or(expiry).to_string(),
                days_to_expiry: (expiry - today).num_days() as i32,
                bucket: 0,
                agent_code: row.try_get("agent_code")?,
                category: row.try_get("category")?,
                important: row.try_get("important")?,
                group_policy: row.try_get("group_policy")?,
                lapsed_on: row
                    .try_get::<Option<NaiveDate>, _>("lapsed_on")?
                    .map(|d| d.to_string())
                    .unwrap_or_default(),
                calls_made: row.try_get("calls_made")?,
                last_outcome: row.try_get("last_outcome")?,
            });
    }
    let mut with_ids = BTreeMap::new();
    for ((city, branch), mut items) in lists {
        // Ordered here rather than by Postgres (a sort of every lapsed customer).
        items.sort_unstable_by(|a, b| {
            (&a.expiry_date, &a.policy_no).cmp(&(&b.expiry_date, &b.policy_no))
        });
        let list_id = Uuid::now_v7();
        sqlx::query(
            "INSERT INTO lists.issued_lists (list_id, kind, trigger, city_code, branch_code, issued_on, issued_at, items)
             VALUES ($1, 'lapse', $2, $3, $4, $5, $6, $7)",
        )
        .bind(list_id)
        .bind(if monthly { "monthly" } else { "on_demand" })
        .bind(&city)
        .bind(&branch)
        .bind(today)
        .bind(now)
        .bind(items.len() as i32)
        .execute(&mut *tx)
        .await?;
        let policy_nos: Vec<&str> = items.iter().map(|i| i.policy_no.as_str()).collect();
        sqlx::query(
            "INSERT INTO lists.lapse_list_items (list_id, policy_no) SELECT $1, unnest($2::text[])",
        )
        .bind(list_id)
        .bind(&policy_nos)
        .execute(&mut *tx)
        .await?;
        with_ids.insert((city, branch, list_id), items);
    }
    publish(outbox, tx, ListKind::Lapse, with_ids, monthly, today, now).await
}

async fn publish(
    outbox: &Outbox,
    tx: &mut PgConnection,
    kind: ListKind,
    lists: BTreeMap<(String, String, Uuid), Vec<ListItem>>,
    monthly: bool,
    today: NaiveDate,
    now: DateTime<Utc>,
) -> Result<Issued, sqlx::Error> {
    let mut issued = Issued::default();
    let mut events = Vec::new();
    for ((city_code, branch_code, list_id), items) in lists {
        let total = items.len();
        let pages = total.div_ceil(PAGE);
        for (page, chunk) in items.chunks(PAGE).enumerate() {
            events.push((
                subject::LISTS_LIST_ISSUED,
                ListIssued {
                    list_id: list_id.to_string(),
                    kind: kind as i32,
                    city_code: city_code.clone(),
                    branch_code: branch_code.clone(),
                    issued_on: today.to_string(),
                    monthly,
                    page: page as i32 + 1,
                    pages: pages as i32,
                    total_items: total as i32,
                    items: chunk.to_vec(),
                    issued_at_ms: now.timestamp_millis(),
                },
            ));
        }
        issued.lists += 1;
        issued.items += total;
        issued.list_ids.push(list_id);
    }
    outbox
        .enqueue_many(tx, events)
        .instrument(tracing::info_span!(parent: None, "lists_issued"))
        .await?;
    let kind_label = if kind == ListKind::Renewal {
        "renewal"
    } else {
        "lapse"
    };
    metrics::counter!("lists_issued_total", "kind" => kind_label).increment(issued.lists as u64);
    Ok(issued)
}

#[derive(Clone)]
pub struct IssueApi {
    pub pool: PgPool,
    pub outbox: Outbox,
    pub clock: Clock,
    pub zones: Zones,
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct IssueRequest {
    city_code: String,
    #[serde(default)]
    lapse: bool,
}

#[derive(Serialize, utoipa::ToSchema)]
struct IssueResponse {
    city_code: String,
    issued_on: NaiveDate,
    renewal: Issued,
    #[serde(skip_serializing_if = "Option::is_none")]
    lapse: Option<Issued>,
}

pub fn routes(api: IssueApi) -> renewal_platform::http::Routes {
    renewal_platform::http::Routes::new()
        .route("/v1/lists:issue", post(issue_on_demand))
        .finish(|router| router.with_state(api))
}

/// `POST /v1/lists:issue {"city_code": "310100", "lapse": false}`: issues the city's
/// renewal lists now (and its lapse lists when asked).
#[utoipa::path(post, path = "/v1/lists:issue", tag = "lists", request_body = IssueRequest,
    responses((status = 200, body = IssueResponse), (status = 400, content_type = "application/problem+json", body = renewal_platform::openapi::ProblemDocument),
              renewal_platform::openapi::Refusals))]
async fn issue_on_demand(
    State(api): State<IssueApi>,
    caller: renewal_platform::Caller,
    body: Result<Json<IssueRequest>, axum::extract::rejection::JsonRejection>,
) -> Response {
    use renewal_platform::Role;
    if let Err(refused) = caller.require(&[Role::CityAdmin, Role::HqAdmin]) {
        return refused.into_response();
    }
    let request = match body {
        Ok(Json(r)) if !r.city_code.trim().is_empty() => r,
        Ok(_) => return bad_request("city_code is required"),
        Err(e) => return bad_request(&e.body_text()),
    };
    let city = request.city_code.trim().to_owned();
    let target = renewal_platform::Scope::city(&city);
    if let Err(refused) = caller.authorize(&[Role::CityAdmin, Role::HqAdmin], target) {
        return refused.into_response();
    }
    let now = api.clock.now();
    let today = local_date(now, api.zones.of(&city));
    let result = async {
        let mut tx = api.pool.begin().await?;
        let scope = Scope {
            zone: None,
            city: Some(&city),
            monthly: false,
        };
        let renewal = issue_renewal_lists(&mut tx, &api.outbox, &scope, today, now).await?;
        let lapse = if request.lapse {
            Some(
                issue_lapse_lists(&mut tx, &api.outbox, None, Some(&city), false, today, now)
                    .await?,
            )
        } else {
            None
        };
        tx.commit().await?;
        Ok::<_, sqlx::Error>((renewal, lapse))
    }
    .await;
    match result {
        Ok((renewal, lapse)) => {
            api.outbox.wake();
            renewal_platform::activity::record();
            Json(IssueResponse {
                city_code: city,
                issued_on: today,
                renewal,
                lapse,
            })
            .into_response()
        }
        Err(e) => renewal_platform::Problem::database(&e).into_response(),
    }
}

fn bad_request(detail: &str) -> Response {
    renewal_platform::Problem::bad_request(detail).into_response()
}
