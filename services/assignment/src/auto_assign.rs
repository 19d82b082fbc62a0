//! Automatic assignment: a case still without an owner after the pool deadline (or
//! about to reach T-30 without one) goes to the active agent of its city with the most
//! spare capacity; on a tie, an agent of the originating agent's branch first. A city
//! with no spare capacity left hands the case to HQ's outbound team.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, HashMap};

use chrono::{DateTime, Utc};
use renewal_platform::Outbox;
use sqlx::{PgConnection, Row};
use uuid::Uuid;

use crate::claims::OWNERLESS;
use crate::ownership::{self, HQ_OWNER, NewOwner};

/// Who the history and the events name as having made the change.
const BY: &str = "system";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    pub agent_code: String,
    pub branch_code: String,
    /// Capacity minus open cases owned.
    pub spare: i64,
}

/// Picks an owner for each case (given as its home branch: the originating agent's),
/// in order, most spare capacity first. None: nobody in the city has room.
pub fn choose(homes: &[&str], candidates: &[Candidate]) -> Vec<Option<usize>> {
    let mut spare: Vec<i64> = candidates.iter().map(|c| c.spare).collect();
    let mut all: BTreeSet<(Reverse<i64>, usize)> = BTreeSet::new();
    let mut by_branch: HashMap<&str, BTreeSet<(Reverse<i64>, usize)>> = HashMap::new();
    for (i, c) in candidates.iter().enumerate() {
        all.insert((Reverse(c.spare), i));
        by_branch
            .entry(c.branch_code.as_str())
            .or_default()
            .insert((Reverse(c.spare), i));
    }
    let mut picks = Vec::with_capacity(homes.len());
    for home in homes {
        let Some(&(Reverse(best), first)) = all.first() else {
            picks.push(None);
            continue;
        };
        if best <= 0 {
            picks.push(None);
            continue;
        }
        let pick = by_branch
            .get(home)
            .and_then(|set| set.first())
            .filter(|(Reverse(s), _)| *s == best)
            .map_or(first, |&(_, i)| i);
        let branch = candidates[pick].branch_code.as_str();
        all.remove(&(Reverse(spare[pick]), pick));
        if let Some(set) = by_branch.get_mut(branch) {
            set.remove(&(Reverse(spare[pick]), pick));
        }
        spare[pick] -= 1;
        all.insert((Reverse(spare[pick]), pick));
        by_branch
            .entry(branch)
            .or_default()
            .insert((Reverse(spare[pick]), pick));
        picks.push(Some(pick));
    }
    picks
}

/// One automatic assignment decided by `plan`, for `apply` to write.
#[derive(Debug, Clone)]
pub struct Planned {
    pub change: NewOwner,
    /// The owner the case had when planned (none: it is in an ownerless phase).
    pub previous: Option<String>,
}

/// Decides the automatic assignments due at `now`: the ownerless cases past their pool
/// deadline or at their last moment without an owner (most urgent first, at most
/// `limit`), city by city, from one reading of the cases and of every candidate's spare
/// capacity. Nothing is locked: `apply` writes only the cases still due, so a case
/// claimed in between keeps its claim and its pick's room stays unused. Two planners
/// must not run side by side (each would spend the same spare capacity): the sweep
/// holds an advisory lock from planning until every part is written.
pub async fn plan(
    conn: &mut PgConnection,
    now: DateTime<Utc>,
    limit: i64,
) -> Result<Vec<Planned>, sqlx::Error> {
    let due = sqlx::query(
        "SELECT c.case_id, c.city_code, c.owner_agent, COALESCE(a.branch_code, c.branch_code) AS home
         FROM assignment.cases c
         LEFT JOIN assignment.agents a ON a.agent_code = c.credited_agent
         WHERE c.state = 'open' AND c.phase = ANY($1)
           AND ((c.phase = 'pool' AND c.phase_due_at <= $2) OR c.owner_by <= $2)
         ORDER BY c.owner_by, c.policy_no
         LIMIT $3",
    )
    .bind(&OWNERLESS[..])
    .bind(now)
    .bind(limit)
    .fetch_all(&mut *conn)
    .await?;
    if due.is_empty() {
        return Ok(Vec::new());
    }
    // Each city's cases, in order.
    let mut by_city: BTreeMap<String, Vec<(Uuid, Option<String>, String)>> = BTreeMap::new();
    for row in &due {
        by_city.entry(row.try_get("city_code")?).or_default().push((
            row.try_get("case_id")?,
            row.try_get("owner_agent")?,
            row.try_get("home")?,
        ));
    }
    let cities: Vec<&str> = by_city.keys().map(String::as_str).collect();
    let mut candidates: HashMap<String, Vec<Candidate>> = HashMap::new();
    for r in sqlx::query(
        "SELECT a.city_code, a.agent_code, a.branch_code,
                a.capacity - COALESCE((SELECT count(*) FROM assignment.cases c
                                       WHERE c.owner_agent = a.agent_code AND c.state = 'open'
                                         AND c.outcome IS NULL), 0) AS spare
         FROM assignment.agents a
         WHERE a.city_code = ANY($1) AND a.active AND a.role = 'agent'
         ORDER BY a.city_code, a.agent_code",
    )
    .bind(&cities)
    .fetch_all(&mut *conn)
    .await?
    {
        candidates
            .entry(r.try_get("city_code")?)
            .or_default()
            .push(Candidate {
                agent_code: r.try_get("agent_code")?,
                branch_code: r.try_get("branch_code")?,
                spare: r.try_get("spare")?,
            });
    }
    let mut planned = Vec::with_capacity(due.len());
    for (city, cases) in by_city {
        let candidates = candidates.remove(&city).unwrap_or_default();
        let homes: Vec<&str> = cases.iter().map(|(_, _, h)| h.as_str()).collect();
        let picks = choose(&homes, &candidates);
        for ((case_id, previous, _), pick) in cases.into_iter().zip(picks) {
            let change = match pick {
                Some(i) => NewOwner {
                    case_id,
                    owner: Some(candidates[i].agent_code.clone()),
                    owner_branch: Some(candidates[i].branch_code.clone()),
                    phase: "owned",
                    reason: "auto_assign".into(),
                },
                None => NewOwner {
                    case_id,
                    owner: Some(HQ_OWNER.into()),
                    owner_branch: None,
                    phase: "hq",
                    reason: "auto_assign_hq".into(),
                },
            };
            planned.push(Planned { change, previous });
        }
    }
    Ok(planned)
}

/// Writes planned assignments of cases that are still ownerless and due (one statement:
/// the owner, the history row), and publishes one `assignment.owner.assigned` each.
/// Returns how many were assigned. (`c.case_id = ANY($1)` looks the part's cases up by
/// key; without it the re-check reads every due case of the sweep for each part.)
pub async fn apply(
    tx: &mut PgConnection,
    outbox: &Outbox,
    planned: &[Planned],
    now: DateTime<Utc>,
) -> Result<usize, sqlx::Error> {
    if planned.is_empty() {
        return Ok(0);
    }
    let ids: Vec<Uuid> = planned.iter().map(|p| p.change.case_id).collect();
    let owners: Vec<Option<&str>> = planned.iter().map(|p| p.change.owner.as_deref()).collect();
    let branches: Vec<Option<&str>> = planned
        .iter()
        .map(|p| p.change.owner_branch.as_deref())
        .collect();
    let phases: Vec<&str> = planned.iter().map(|p| p.change.phase).collect();
    let reasons: Vec<&str> = planned.iter().map(|p| p.change.reason.as_str()).collect();
    let previous: Vec<Option<&str>> = planned.iter().map(|p| p.previous.as_deref()).collect();
    let rows = sqlx::query(
        "WITH change AS (
             SELECT * FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[])
                 AS u(case_id, owner, branch, phase, reason, previous)),
         updated AS (
             UPDATE assignment.cases c
             SET owner_agent = change.owner, owner_branch = change.branch, phase = change.phase,
                 phase_due_at = NULL
             FROM change
             WHERE c.case_id = change.case_id AND c.case_id = ANY($1)
               AND c.state = 'open' AND c.phase = ANY($7)
               AND ((c.phase = 'pool' AND c.phase_due_at <= $8) OR c.owner_by <= $8)
             RETURNING c.case_id, c.policy_no, c.branch_code, c.credited_agent, change.previous,
                       change.owner, change.reason),
         history AS (
             INSERT INTO assignment.owner_history (case_id, owner_agent, previous_owner, reason, assigned_by, assigned_at)
             SELECT case_id, owner, previous, reason, $9, $8 FROM updated)
         SELECT * FROM updated",
    )
    .bind(&ids)
    .bind(&owners)
    .bind(&branches)
    .bind(&phases)
    .bind(&reasons)
    .bind(&previous)
    .bind(&OWNERLESS[..])
    .bind(now)
    .bind(BY)
    .fetch_all(&mut *tx)
    .await?;
    ownership::publish(tx, outbox, &rows, BY, now).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn agent(code: &str, branch: &str, spare: i64) -> Candidate {
        Candidate {
            agent_code: code.into(),
            branch_code: branch.into(),
            spare,
        }
    }

    #[test]
    fn most_spare_capacity_wins_and_ties_go_to_the_home_branch() {
        let agents = [
            agent("A1", "B1", 2),
            agent("A2", "B2", 3),
            agent("A3", "B2", 2),
        ];
        // A2 has the most room; then A1, A2 and A3 all have 2: the B1 case goes to A1,
        // then B2's to A2 or A3.
        let picks = choose(&["B1", "B1", "B2"], &agents);
        assert_eq!(picks[0], Some(1), "most spare first, whatever the branch");
        assert_eq!(picks[1], Some(0), "a tie goes to the home branch");
        assert!(matches!(picks[2], Some(1) | Some(2)), "{picks:?}");
    }

    #[test]
    fn nobody_with_room_means_no_pick() {
        let agents = [agent("A1", "B1", 1), agent("A2", "B1", 0)];
        assert_eq!(choose(&["B1", "B1"], &agents), vec![Some(0), None]);
        assert_eq!(choose(&["B1"], &[]), vec![None]);
    }
}
