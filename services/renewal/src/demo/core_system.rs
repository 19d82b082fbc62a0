//! The insurer's core system as the demo plays it over the season: the renewals it
//! reports (most at once, some two days late) and the quotes it issues (two months
//! before each expiry, some late, and at once for the policies the city company chases),
//! each published when its moment comes. On resume, what came before the saved time is
//! published again: lists applies a renewal once and keeps a quote once.

use chrono::{DateTime, Utc};
use renewal_contract::core::QuoteIssued;

use super::portfolio::{self, Customer};
use crate::simulation::{SimError, Simulation};

pub struct CoreSystem<'a> {
    /// Each renewal's report time and policy, in time order.
    renewals: Vec<(DateTime<Utc>, &'a str)>,
    next_renewal: usize,
    /// Each quote's issue time, in time order.
    quotes: Vec<(DateTime<Utc>, QuoteIssued)>,
    next_quote: usize,
}

impl<'a> CoreSystem<'a> {
    /// The season's renewals and quotes up to `end`.
    pub fn new(
        customers: &'a [Customer],
        seed: u64,
        start: DateTime<Utc>,
        end: DateTime<Utc>,
        tz: chrono_tz::Tz,
    ) -> Self {
        let mut renewals: Vec<(DateTime<Utc>, &str)> = customers
            .iter()
            .filter_map(|c| {
                let no = c.policy.policy_no.as_str();
                c.renews_at.map(|t| (t + core_lag(seed, no), no))
            })
            .filter(|(t, _)| *t < end)
            .collect();
        renewals.sort();
        let quotes = portfolio::quotes(customers, seed, start, tz)
            .into_iter()
            .filter(|(t, _)| *t < end)
            .collect();
        CoreSystem {
            renewals,
            next_renewal: 0,
            quotes,
            next_quote: 0,
        }
    }

    /// The quotes the core system had given before the season started (published with
    /// the portfolio, before the first daily run opens the cases).
    pub fn given_before(
        customers: &[Customer],
        seed: u64,
        start: DateTime<Utc>,
        tz: chrono_tz::Tz,
    ) -> Vec<QuoteIssued> {
        portfolio::quotes(customers, seed, start, tz)
            .into_iter()
            .filter(|(t, _)| *t <= start)
            .map(|(_, q)| q)
            .collect()
    }

    /// Publishes the renewals and quotes whose moment has come.
    pub async fn publish_due(&mut self, sim: &Simulation) -> Result<(), SimError> {
        let now = sim.now();
        while let Some((at, policy_no)) = self.renewals.get(self.next_renewal)
            && *at <= now
        {
            sim.publish_renewal(policy_no, &format!("R{}", &policy_no[1..]))
                .await?;
            self.next_renewal += 1;
        }
        let due = self.quotes[self.next_quote..].partition_point(|(t, _)| *t <= now);
        if due > 0 {
            let batch: Vec<_> = self.quotes[self.next_quote..self.next_quote + due]
                .iter()
                .map(|(_, q)| q.clone())
                .collect();
            sim.publish_quotes(&batch).await?;
            self.next_quote += due;
        }
        Ok(())
    }

    /// The city company chased these policies' missing quotes: the core system issues
    /// the ones it had not issued yet, now.
    pub async fn issue_chased(&self, sim: &Simulation, chased: &[String]) -> Result<(), SimError> {
        let now = sim.now();
        let issued: Vec<_> = self
            .quotes
            .iter()
            .filter(|(t, q)| *t > now && chased.binary_search(&q.policy_no).is_ok())
            .map(|(_, q)| QuoteIssued {
                issued_at_ms: now.timestamp_millis(),
                ..q.clone()
            })
            .collect();
        sim.publish_quotes(&issued).await
    }

    /// When the next renewal or quote is due, if any is left.
    pub fn next_moment(&self) -> Option<DateTime<Utc>> {
        let renewal = self.renewals.get(self.next_renewal).map(|(t, _)| *t);
        let quote = self.quotes.get(self.next_quote).map(|(t, _)| *t);
        renewal.into_iter().chain(quote).min()
    }
}

/// How late the core system reports a policy's renewal: two days for three in ten.
fn core_lag(seed: u64, policy_no: &str) -> chrono::Duration {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    (seed, policy_no, "core lag").hash(&mut h);
    if h.finish() % 10 < 3 {
        chrono::Duration::days(2)
    } else {
        chrono::Duration::zero()
    }
}
