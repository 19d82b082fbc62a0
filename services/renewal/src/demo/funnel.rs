//! The funnel report and the "must never happen" counters of DOMAIN.md, computed from
//! each service's own records after the season.

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, NaiveTime, Utc};
use serde::Serialize;

use crate::simulation::{SimError, Simulation};

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Funnel {
    pub policies: i64,
    pub cases_opened: i64,
    pub owners_assigned: i64,
    pub sms_sent: i64,
    pub sms_delivered: i64,
    pub renewed: i64,
    /// Renewed after lapsing (the lapse rescue's catch).
    pub rescued: i64,
    /// Lapsed and still uninsured at the end (on the lapse register).
    pub lapsed: i64,
    /// Lost to another insurer or with the car sold (a call's outcome).
    pub lost: i64,
    /// Phone tasks completed, by the call's outcome.
    pub calls_completed: std::collections::BTreeMap<String, i64>,
}

/// The back half of the season (`season_end` in the JSON).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct SeasonEnd {
    /// Lapse-rescue calls completed (tasks made after the expiry).
    pub rescue_tasks_completed: i64,
    /// Cases renewed after they lapsed.
    pub rescued: i64,
    /// Calls HQ's centralized outbound team completed.
    pub hq_tasks_completed: i64,
    /// T-10 alerts in the supervisors' queue.
    pub supervisor_alerts: i64,
    /// Wrong numbers corrected by the core system (the held contacts resumed).
    pub contact_corrections: i64,
    /// Renewals reported on the phone that the core system did not confirm in time.
    pub renewals_reopened: i64,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Terms {
    pub quotes_by_t60: i64,
    pub quotes_late: i64,
    /// Discounts approved, by who approved the last step: `owner` (their own
    /// authority), `supervisor`, `city_admin`.
    pub discounts_approved: std::collections::BTreeMap<String, i64>,
    pub loss_reasons: std::collections::BTreeMap<String, i64>,
    pub vehicles_with_two_policies: i64,
    pub category_rates: Vec<renewal_lists::report::CategoryRate>,
}

async fn terms(pool: &sqlx::PgPool) -> Result<Terms, SimError> {
    let facts = renewal_lists::report::terms(pool).await?;
    let levels = ["owner", "supervisor", "city_admin"];
    let discounts_approved = renewal_assignment::discounts::approved_by_steps(pool)
        .await?
        .into_iter()
        .map(|(steps, n)| {
            let level = levels.get(steps as usize).copied().unwrap_or("above_city");
            (level.to_owned(), n)
        })
        .collect();
    Ok(Terms {
        quotes_by_t60: facts.quotes_by_t60,
        quotes_late: facts.quotes_late,
        discounts_approved,
        loss_reasons: facts.loss_reasons,
        vehicles_with_two_policies: facts.vehicles_with_two_policies,
        category_rates: facts.category_rates,
    })
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Violations {
    /// Cases open at T-30 with no owner by then.
    pub no_owner_at_t30: i64,
    /// SMS sent, or calls begun, after we knew the policy was renewed (the renewal
    /// reported on a call, or the core system's confirmation).
    pub reminder_after_renewal: i64,
    pub marketing_sms_to_opted_out: i64,
    /// SMS sent outside 09:00-20:00 in the customer's time zone.
    pub sms_at_night: i64,
    /// Receipts our webhook acknowledged that did not reach the message.
    pub lost_receipts: i64,
    /// Outbox events never published.
    pub lost_outbox_events: i64,
    /// An effect applied twice: two SMS for one case and stage, or a case given the
    /// owner it already had.
    pub duplicate_effects: i64,
    /// Phone tasks the call center got while another lease of them still held.
    pub phone_task_handed_to_two_agents: i64,
    /// Log lines that looked like they carried a mobile or ID number.
    pub pii_in_logs: i64,
    /// Customers' names, mobiles, ID numbers, plates and VINs found in clear in a
    /// `pg_dump` of the four services' schemas (where: `details.clear_at_rest`).
    pub pii_readable_at_rest: i64,
}

impl Violations {
    pub fn total(&self) -> i64 {
        self.no_owner_at_t30
            + self.reminder_after_renewal
            + self.marketing_sms_to_opted_out
            + self.sms_at_night
            + self.lost_receipts
            + self.lost_outbox_events
            + self.duplicate_effects
            + self.phone_task_handed_to_two_agents
            + self.pii_in_logs
            + self.pii_readable_at_rest
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub seed: u64,
    /// How cases got their owners.
    pub ownership: renewal_assignment::report::OwnerSources,
    pub days: u32,
    pub start: String,
    pub end: DateTime<Utc>,
    pub funnel: Funnel,
    pub season_end: SeasonEnd,
    /// The renewal sold on its terms: quotes, discounts, loss reasons, vehicles, the
    /// categories against their targets.
    pub terms: Terms,
    pub violations: Violations,
    /// Rules of DOMAIN.md this build cannot check yet, and why.
    pub not_yet_measured: Vec<&'static str>,
    pub details: Details,
}

#[derive(Debug, Clone, Serialize)]
pub struct Details {
    pub cases_open: i64,
    pub sms_failed: i64,
    pub sms_withdrawn: i64,
    /// Numbers opted out of marketing SMS by replying TD (or a variant).
    pub sms_opted_out: i64,
    /// Marketing SMS not sent because the customer had opted out.
    pub sms_suppressed: i64,
    /// Phone tasks by outcome (`completed:<outcome>`) or state.
    pub phone_tasks: std::collections::BTreeMap<String, i64>,
    pub timers: HashMap<String, i64>,
    pub receipts_recorded: i64,
    pub receipts_unmatched: i64,
    pub messages_rejected_as_malformed: i64,
    /// Sends the vendor accepted twice for one message (a crash between the vendor's
    /// answer and our commit): at-least-once towards the vendor.
    pub vendor_duplicate_sends: i64,
    /// Where personal data was found in clear at rest: hits per table.
    pub clear_at_rest: std::collections::BTreeMap<String, i64>,
}

pub async fn measure(
    sim: &Simulation,
    seed: u64,
    days: u32,
    start: &str,
) -> Result<Report, SimError> {
    let pool = sim.pool();
    let tz = sim.time_zone;
    let now = sim.now();
    let cases = renewal_lists::report::cases(pool).await?;
    let owners = renewal_assignment::report::first_owners(pool).await?;
    let sms = renewal_dispatch::report::messages(pool).await?;
    let (receipts_recorded, receipts_unmatched) = renewal_dispatch::report::receipts(pool).await?;

    let owner_by_policy: HashMap<&str, _> =
        owners.iter().map(|o| (o.policy_no.as_str(), o)).collect();
    let renewed_at: HashMap<&str, DateTime<Utc>> = cases
        .iter()
        .filter_map(|c| c.renewal_known_at.map(|t| (c.policy_no.as_str(), t)))
        .collect();

    let mut v = Violations {
        no_owner_at_t30: no_owner_at_t30(&cases, &owner_by_policy, tz, now),
        ..Violations::default()
    };
    let hours = crate::simulation::sms_hours();
    let mut per_stage: HashMap<(&str, &str), i64> = HashMap::new();
    for m in &sms {
        *per_stage
            .entry((m.policy_no.as_str(), m.stage.as_str()))
            .or_default() += 1;
        let Some(sent_at) = m.sent_at else { continue };
        if renewed_at
            .get(m.policy_no.as_str())
            .is_some_and(|r| *r < sent_at)
        {
            v.reminder_after_renewal += 1;
        }
        if m.marketing && m.opted_out_before_send {
            v.marketing_sms_to_opted_out += 1;
        }
        let zone: chrono_tz::Tz = m.time_zone.parse().unwrap_or(tz);
        let local = sent_at.with_timezone(&zone).time();
        if local < hours.start || local >= hours.end {
            v.sms_at_night += 1;
        }
    }
    for (policy_no, made_at) in renewal_dispatch::report::calls_made(pool).await? {
        if renewed_at
            .get(policy_no.as_str())
            .is_some_and(|r| *r < made_at)
        {
            v.reminder_after_renewal += 1;
        }
    }
    v.duplicate_effects += per_stage
        .values()
        .filter(|n| **n > 1)
        .map(|n| n - 1)
        .sum::<i64>();
    v.duplicate_effects += owners.iter().map(|o| o.repeated).sum::<i64>();

    let acknowledged: HashSet<String> = crate::vendor_sim::acknowledged_out_ids(pool)
        .await?
        .into_iter()
        .collect();
    v.lost_receipts = sms
        .iter()
        .filter(|m| {
            acknowledged.contains(&m.id.to_string())
                && !matches!(m.state.as_str(), "delivered" | "failed")
        })
        .count() as i64;
    for outbox in crate::system::outboxes() {
        v.lost_outbox_events += outbox.backlog(pool).await?;
    }
    v.phone_task_handed_to_two_agents =
        crate::demo::call_center::handed_to_two_agents(pool).await?;
    v.pii_in_logs = renewal_platform::telemetry::pii_suspect_log_events() as i64;

    let mut rejected = 0;
    for schema in ["lists", "assignment", "scheduler", "dispatch"] {
        rejected += renewal_platform::inbox::rejected_count(pool, schema).await?;
    }
    let phone_tasks = renewal_dispatch::report::phone_tasks(pool).await?;
    let count = |state: &str| cases.iter().filter(|c| c.state == state).count() as i64;
    let season_end = season_end(pool, count("rescued")).await?;
    let funnel = Funnel {
        policies: renewal_lists::report::policy_count(pool).await?,
        cases_opened: cases.len() as i64,
        owners_assigned: owners.len() as i64,
        sms_sent: sms.iter().filter(|m| m.sent_at.is_some()).count() as i64,
        sms_delivered: sms.iter().filter(|m| m.state == "delivered").count() as i64,
        renewed: count("renewed"),
        rescued: count("rescued"),
        lapsed: count("lapsed"),
        lost: count("insured_elsewhere") + count("vehicle_sold"),
        calls_completed: phone_tasks
            .iter()
            .filter_map(|(label, n)| {
                label
                    .strip_prefix("completed:")
                    .map(|outcome| (outcome.to_owned(), *n))
            })
            .collect(),
    };
    let details = Details {
        cases_open: cases
            .iter()
            .filter(|c| c.state == "open" || c.state == "renewal_reported")
            .count() as i64,
        sms_failed: sms
            .iter()
            .filter(|m| matches!(m.state.as_str(), "failed" | "dead"))
            .count() as i64,
        sms_withdrawn: sms.iter().filter(|m| m.state == "withdrawn").count() as i64,
        sms_opted_out: renewal_dispatch::report::opted_out(pool).await?,
        sms_suppressed: sms.iter().filter(|m| m.state == "suppressed").count() as i64,
        phone_tasks: phone_tasks.into_iter().collect(),
        timers: renewal_scheduler::report::timers_by_state(pool)
            .await?
            .into_iter()
            .collect(),
        receipts_recorded,
        receipts_unmatched,
        messages_rejected_as_malformed: rejected,
        vendor_duplicate_sends: crate::vendor_sim::duplicate_sends(pool).await?,
        clear_at_rest: Default::default(),
    };
    Ok(Report {
        seed,
        ownership: renewal_assignment::report::owner_sources(pool).await?,
        days,
        start: start.to_owned(),
        end: now,
        funnel,
        season_end,
        terms: terms(pool).await?,
        violations: v,
        not_yet_measured: Vec::new(),
        details,
    })
}

/// Cases open at T-30 with no owner by then.
fn no_owner_at_t30(
    cases: &[renewal_lists::report::CaseFacts],
    owner_by_policy: &HashMap<&str, &renewal_assignment::report::FirstOwner>,
    tz: chrono_tz::Tz,
    now: DateTime<Utc>,
) -> i64 {
    let mut ownerless = 0;
    for case in cases {
        let t30 = renewal_platform::local_instant(
            case.expiry_date - chrono::Days::new(30),
            NaiveTime::MIN,
            tz,
        );
        let open_at_t30 =
            case.opened_at < t30 && case.closed_at.is_none_or(|c| c > t30) && now >= t30;
        let owned = owner_by_policy
            .get(case.policy_no.as_str())
            .is_some_and(|o| o.assigned_at <= t30);
        if open_at_t30 && !owned {
            ownerless += 1;
        }
    }
    ownerless
}

/// The back half of the season, from each service's records.
async fn season_end(pool: &sqlx::PgPool, rescued: i64) -> Result<SeasonEnd, SimError> {
    let work = renewal_dispatch::report::season_end_work(pool).await?;
    Ok(SeasonEnd {
        rescue_tasks_completed: work.rescue_tasks_completed,
        rescued,
        hq_tasks_completed: work.hq_tasks_completed,
        supervisor_alerts: renewal_assignment::report::supervisor_alerts(pool).await?,
        contact_corrections: work.contact_corrections,
        renewals_reopened: renewal_lists::report::renewals_reopened(pool).await?,
    })
}

impl Report {
    /// Takes in what a dump of the services' schemas showed in clear.
    pub fn clear_at_rest(&mut self, hits: std::collections::BTreeMap<String, i64>) {
        self.violations.pii_readable_at_rest = hits.values().sum();
        self.details.clear_at_rest = hits;
    }

    /// The report as people read it.
    pub fn render(&self) -> String {
        let f = &self.funnel;
        let pct = |n: i64, of: i64| {
            if of > 0 {
                format!("{:5.1}%", n as f64 * 100.0 / of as f64)
            } else {
                "     -".into()
            }
        };
        let mut out = String::new();
        out.push_str(&format!(
            "\nRenewal season: {} days from {} (seed {}), business time now {}\n\n",
            self.days,
            self.start,
            self.seed,
            self.end.format("%Y-%m-%d %H:%M UTC")
        ));
        out.push_str("  funnel                     count   of previous\n");
        let rows = [
            ("policies", f.policies, None),
            ("cases opened", f.cases_opened, Some(f.policies)),
            ("owners assigned", f.owners_assigned, Some(f.cases_opened)),
            ("SMS sent", f.sms_sent, Some(f.owners_assigned)),
            ("SMS delivered", f.sms_delivered, Some(f.sms_sent)),
            ("renewed", f.renewed, Some(f.cases_opened)),
            ("rescued after lapsing", f.rescued, Some(f.cases_opened)),
            ("lapsed, still uninsured", f.lapsed, Some(f.cases_opened)),
            ("lost (elsewhere, sold)", f.lost, Some(f.cases_opened)),
        ];
        for (name, n, of) in rows {
            out.push_str(&format!(
                "  {name:<24} {n:>7}   {}\n",
                of.map(|o| pct(n, o)).unwrap_or_default()
            ));
        }
        out.push_str(&format!(
            "\n  still open at the end: {} cases\n",
            self.details.cases_open
        ));
        let d = &self.details;
        out.push_str("\n  dispatch                        count\n");
        for (name, n) in [
            ("SMS delivered", f.sms_delivered),
            ("SMS failed or dead", d.sms_failed),
            ("SMS withdrawn (case closed)", d.sms_withdrawn),
            ("numbers opted out by reply", d.sms_opted_out),
            ("SMS held back (opted out)", d.sms_suppressed),
        ] {
            out.push_str(&format!("  {name:<32} {n:>6}\n"));
        }
        for (label, n) in d
            .phone_tasks
            .iter()
            .filter(|(l, _)| !l.starts_with("completed:"))
        {
            let name = format!("phone tasks {label}");
            out.push_str(&format!("  {name:<32} {n:>6}\n"));
        }
        let calls: i64 = f.calls_completed.values().sum();
        out.push_str(&format!(
            "\n  phone tasks completed by outcome  {calls:>5}\n"
        ));
        for (outcome, n) in &f.calls_completed {
            out.push_str(&format!(
                "  {:<24} {n:>7}   {}\n",
                outcome.replace('_', " "),
                pct(*n, calls)
            ));
        }
        let o = &self.ownership;
        let e = &self.season_end;
        out.push_str("\n  end of the season               count\n");
        for (name, n) in [
            ("lapse-rescue calls completed", e.rescue_tasks_completed),
            ("rescued after lapsing", e.rescued),
            ("HQ calls completed", e.hq_tasks_completed),
            ("supervisor alerts (T-10)", e.supervisor_alerts),
            ("wrong numbers corrected", e.contact_corrections),
            ("reported renewals reopened", e.renewals_reopened),
        ] {
            out.push_str(&format!("  {name:<32} {n:>6}\n"));
        }
        let t = &self.terms;
        out.push_str("\n  renewal terms                   count\n");
        for (name, n) in [
            ("cases quoted by T-60", t.quotes_by_t60),
            ("quotes late (city task at T-65)", t.quotes_late),
            ("vehicles with two policies", t.vehicles_with_two_policies),
        ] {
            out.push_str(&format!("  {name:<32} {n:>6}\n"));
        }
        for (level, n) in &t.discounts_approved {
            let name = format!("discounts approved ({level})");
            out.push_str(&format!("  {name:<32} {n:>6}\n"));
        }
        for (reason, n) in &t.loss_reasons {
            let name = format!("lost: {}", reason.replace('_', " "));
            out.push_str(&format!("  {name:<32} {n:>6}\n"));
        }
        out.push_str("\n  category                  due  renewed   rate  target\n");
        let percent = |r: Option<f64>| r.map_or("     -".into(), |r| format!("{:5.1}%", r * 100.0));
        for c in &t.category_rates {
            out.push_str(&format!(
                "  {:<24} {:>5} {:>8} {} {}\n",
                c.category,
                c.due,
                c.renewed,
                percent(c.rate),
                percent(c.target)
            ));
        }
        out.push_str("\n  how cases got an owner          count\n");
        for (name, n) in [
            ("claimed by their branch", o.claimed_by_branch),
            ("claimed from the city pool", o.claimed_from_pool),
            ("assigned automatically", o.assigned_automatically),
            ("reassigned (second assignment)", o.reassigned),
            ("declined by the branch", o.declined),
            ("traced by research", o.researched),
        ] {
            out.push_str(&format!("  {name:<32} {n:>6}\n"));
        }
        out.push_str("\n  must never happen                 count\n");
        let v = &self.violations;
        for (name, n) in [
            ("no owner at T-30", v.no_owner_at_t30),
            ("reminder after renewal", v.reminder_after_renewal),
            ("marketing SMS to opted-out", v.marketing_sms_to_opted_out),
            ("SMS at night", v.sms_at_night),
            ("lost delivery receipt", v.lost_receipts),
            ("lost outbox event", v.lost_outbox_events),
            ("effect applied twice", v.duplicate_effects),
            (
                "phone task to two agents",
                v.phone_task_handed_to_two_agents,
            ),
            ("personal data in logs", v.pii_in_logs),
            ("personal data readable at rest", v.pii_readable_at_rest),
        ] {
            out.push_str(&format!(
                "  {name:<32} {n:>6}{}\n",
                if n > 0 { "   <-- VIOLATION" } else { "" }
            ));
        }
        for note in &self.not_yet_measured {
            out.push_str(&format!("  (not yet measured: {note})\n"));
        }
        out
    }
}
