//! Automatic assignment: a case still without an owner after the pool deadline (or
//! about to reach T-30 without one) goes to the active agent of its city with the most
//! spare capacity; on a tie, an agent of the originating agent's branch first. A city
//! with no spare capacity left hands the case to HQ's outbound team.

use std::cmp::Reverse;
use std::collections::{BTreeSet, HashMap};

use chrono::{DateTime, Utc};
use renewal_platform::Outbox;
use sqlx::{PgConnection, Row};
use uuid::Uuid;

use crate::claims::OWNERLESS;
use crate::ownership::{self, HQ_OWNER, NewOwner};

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

/// The cities with ownerless cases due for automatic assignment (each city's cases
/// are assigned in a transaction of their own, cities side by side).
pub async fn due_cities(
    pool: &sqlx::PgPool,
    now: DateTime<Utc>,
) -> Result<Vec<String>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT DISTINCT city_code FROM assignment.cases
         WHERE state = 'open' AND phase = ANY($1)
           AND ((phase = 'pool' AND phase_due_at <= $2) OR owner_by <= $2)",
    )
    .bind(&OWNERLESS[..])
    .bind(now)
    .fetch_all(pool)
    .await
}

/// Assigns the city's ownerless cases that are due: past their pool deadline, or at
/// their last moment without an owner. Returns how many were assigned.
pub async fn assign_due(
    tx: &mut PgConnection,
    outbox: &Outbox,
    now: DateTime<Utc>,
    city: &str,
    limit: i64,
) -> Result<usize, sqlx::Error> {
    let due = sqlx::query(
        "SELECT c.case_id, c.city_code, COALESCE(a.branch_code, c.branch_code) AS home
         FROM assignment.cases c
         LEFT JOIN assignment.agents a ON a.agent_code = c.credited_agent
         WHERE c.state = 'open' AND c.phase = ANY($1) AND c.city_code = $4
           AND ((c.phase = 'pool' AND c.phase_due_at <= $2) OR c.owner_by <= $2)
         ORDER BY c.owner_by, c.policy_no
         LIMIT $3
         FOR UPDATE OF c SKIP LOCKED",
    )
    .bind(&OWNERLESS[..])
    .bind(now)
    .bind(limit)
    .bind(city)
    .fetch_all(&mut *tx)
    .await?;
    if due.is_empty() {
        return Ok(0);
    }
    let mut by_city: HashMap<String, Vec<(Uuid, String)>> = HashMap::new();
    for row in &due {
        by_city
            .entry(row.try_get("city_code")?)
            .or_default()
            .push((row.try_get("case_id")?, row.try_get("home")?));
    }
    let mut changes = Vec::with_capacity(due.len());
    for (city, cases) in &by_city {
        let candidates: Vec<Candidate> = sqlx::query(
            "SELECT a.agent_code, a.branch_code,
                    a.capacity - COALESCE((SELECT count(*) FROM assignment.cases c
                                           WHERE c.owner_agent = a.agent_code AND c.state = 'open'), 0) AS spare
             FROM assignment.agents a
             WHERE a.city_code = $1 AND a.active AND a.role = 'agent'
             ORDER BY a.agent_code",
        )
        .bind(city)
        .fetch_all(&mut *tx)
        .await?
        .iter()
        .map(|r| {
            Ok(Candidate {
                agent_code: r.try_get("agent_code")?,
                branch_code: r.try_get("branch_code")?,
                spare: r.try_get("spare")?,
            })
        })
        .collect::<Result<_, sqlx::Error>>()?;
        let homes: Vec<&str> = cases.iter().map(|(_, h)| h.as_str()).collect();
        for ((case_id, _), pick) in cases.iter().zip(choose(&homes, &candidates)) {
            changes.push(match pick {
                Some(i) => NewOwner {
                    case_id: *case_id,
                    owner: Some(candidates[i].agent_code.clone()),
                    owner_branch: Some(candidates[i].branch_code.clone()),
                    phase: "owned",
                    reason: "auto_assign".into(),
                },
                None => NewOwner {
                    case_id: *case_id,
                    owner: Some(HQ_OWNER.into()),
                    owner_branch: None,
                    phase: "hq",
                    reason: "auto_assign_hq".into(),
                },
            });
        }
    }
    ownership::assign_many(tx, outbox, &changes, "system", now).await
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
