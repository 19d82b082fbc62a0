//! Reminder plans as data: which stage happens when, per city, versioned. The default
//! plan ships in `data/default-plan.json`; `PUT /v1/plans/{city}` adds a version that
//! applies to cases opened from then on (open cases keep the version they were
//! planned with). Planning a case places each stage inside the allowed hours of its
//! channel in the customer's time zone, the owner's confirmation (T-5) on a working
//! day, and gives a case that opens late at least two contacts before expiry.

use chrono::{DateTime, Days, NaiveDate, NaiveTime, Utc};
use renewal_contract::sms_templates;
use serde::{Deserialize, Serialize};

use crate::config::Window;

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    Sms,
    PhoneTask,
    SupervisorAlert,
    ConfirmOwner,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Sms => "sms",
            Action::PhoneTask => "phone_task",
            Action::SupervisorAlert => "supervisor_alert",
            Action::ConfirmOwner => "confirm_owner",
        }
    }

    /// A contact with the customer (what "at least two contacts" counts).
    pub fn is_contact(self) -> bool {
        matches!(self, Action::Sms | Action::PhoneTask)
    }
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Queue {
    Owner,
    Branch,
    Campaign,
    Hq,
}

impl Queue {
    pub fn as_str(self) -> &'static str {
        match self {
            Queue::Owner => "owner",
            Queue::Branch => "branch",
            Queue::Campaign => "campaign",
            Queue::Hq => "hq",
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Stage {
    /// Unique within the plan, e.g. "T-60", "T-15 call", "T+1".
    pub stage: String,
    /// Days before the effective expiry (negative: after it).
    pub days_before: i32,
    /// Local time of day the stage is wanted.
    #[serde(with = "hhmm")]
    #[schema(value_type = String, example = "10:00")]
    pub at: NaiveTime,
    pub action: Action,
    /// SMS template key.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub template: String,
    /// Phone-task queue.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue: Option<Queue>,
    /// Whether the SMS is marketing (counts against the frequency cap, never to an
    /// opted-out customer) follows from its template; a plan may state it, but only
    /// as its template has it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub marketing: Option<bool>,
    /// The promotion a phone task names.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub promotion: String,
    /// Kept when the customer refuses or sold the car (lapse rescue).
    #[serde(default)]
    pub keep_after_refusal: bool,
}

impl Stage {
    /// A marketing SMS: an SMS whose template is marketing.
    pub fn is_marketing(&self) -> bool {
        self.action == Action::Sms && sms_templates::is_marketing(&self.template)
    }
}

mod hhmm {
    use chrono::NaiveTime;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(t: &NaiveTime, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&t.format("%H:%M").to_string())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<NaiveTime, D::Error> {
        let raw = String::deserialize(d)?;
        NaiveTime::parse_from_str(&raw, "%H:%M")
            .map_err(|_| serde::de::Error::custom(format!("{raw:?} is not HH:MM")))
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Plan {
    #[serde(default)]
    pub note: String,
    pub stages: Vec<Stage>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PlanError {
    #[error("the plan is not valid JSON: {0}")]
    Json(String),
    #[error("stage {stage:?}: {reason}")]
    Stage { stage: String, reason: String },
    #[error("a plan needs at least one stage")]
    Empty,
}

impl Plan {
    pub fn default_plan() -> Result<Plan, PlanError> {
        Plan::parse(include_str!("../data/default-plan.json"))
    }

    pub fn parse(raw: &str) -> Result<Plan, PlanError> {
        let plan: Plan = serde_json::from_str(raw).map_err(|e| PlanError::Json(e.to_string()))?;
        plan.check()?;
        Ok(plan)
    }

    /// Every stage makes sense on its own and names are unique.
    pub fn check(&self) -> Result<(), PlanError> {
        if self.stages.is_empty() {
            return Err(PlanError::Empty);
        }
        let mut names = std::collections::HashSet::new();
        for s in &self.stages {
            let bad = |reason: &str| PlanError::Stage {
                stage: s.stage.clone(),
                reason: reason.to_owned(),
            };
            if s.stage.trim().is_empty() || s.stage.len() > 40 {
                return Err(bad("needs a name of 1 to 40 characters"));
            }
            if !names.insert(s.stage.as_str()) {
                return Err(bad("the name is used twice"));
            }
            if !(-90..=120).contains(&s.days_before) {
                return Err(bad("days_before must be from -90 to 120"));
            }
            match s.action {
                Action::Sms if s.template.is_empty() => return Err(bad("an SMS needs a template")),
                Action::Sms if sms_templates::kind(&s.template).is_none() => {
                    return Err(bad("the SMS template is not one the vendor approved"));
                }
                Action::Sms if s.marketing.is_some_and(|m| m != s.is_marketing()) => {
                    return Err(bad(
                        "whether an SMS is marketing comes from its template, not from the plan",
                    ));
                }
                Action::PhoneTask if s.queue.is_none() => {
                    return Err(bad("a phone task needs a queue"));
                }
                Action::Sms | Action::PhoneTask => {}
                Action::SupervisorAlert | Action::ConfirmOwner if s.marketing == Some(true) => {
                    return Err(bad("only an SMS can be marketing"));
                }
                Action::SupervisorAlert | Action::ConfirmOwner => {}
            }
        }
        Ok(())
    }
}

/// One stage placed on a case's calendar.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placed {
    pub stage: Stage,
    /// When the plan wants it.
    pub nominal: DateTime<Utc>,
    /// When it fires (moved into the channel's allowed hours).
    pub due: DateTime<Utc>,
    /// Why it does not fire: it was already behind when the case opened.
    pub skipped: Option<&'static str>,
}

/// The allowed hours for each channel.
#[derive(Debug, Clone, Copy)]
pub struct Hours {
    pub sms: Window,
    pub calls: Window,
}

impl Hours {
    pub fn for_action(&self, action: Action) -> Option<Window> {
        match action {
            Action::Sms => Some(self.sms),
            Action::PhoneTask => Some(self.calls),
            Action::SupervisorAlert | Action::ConfirmOwner => None,
        }
    }
}

/// The first allowed moment at or after `at`, unless that is later than `limit`: then
/// the last allowed moment before `limit` (a stage moves earlier rather than cross the
/// next stage or the expiry). None when no allowed moment fits at all.
pub fn allowed(
    at: DateTime<Utc>,
    window: Window,
    limit: Option<DateTime<Utc>>,
    tz: chrono_tz::Tz,
) -> Option<DateTime<Utc>> {
    let local = at.with_timezone(&tz);
    let day = local.date_naive();
    let time = local.time();
    let later = if time < window.start {
        renewal_platform::local_instant(day, window.start, tz)
    } else if time < window.end {
        at
    } else {
        renewal_platform::local_instant(day + Days::new(1), window.start, tz)
    };
    match limit {
        Some(limit) if later >= limit => {
            let last = window.end - chrono::Duration::minutes(1);
            let mut candidate = limit - chrono::Duration::minutes(1);
            for _ in 0..3 {
                let l = candidate.with_timezone(&tz);
                let (d, t) = (l.date_naive(), l.time());
                if t >= window.start && t < window.end {
                    return Some(candidate);
                }
                let day = if t >= window.end { d } else { d.pred_opt()? };
                candidate = renewal_platform::local_instant(day, last, tz);
            }
            None
        }
        _ => Some(later),
    }
}

/// Places every stage of the plan for a case expiring (effectively) on `effective`,
/// opened at `now`. Late cases get catch-up contacts so at least two come before expiry.
pub fn place(
    plan: &Plan,
    effective: NaiveDate,
    tz: chrono_tz::Tz,
    now: DateTime<Utc>,
    hours: &Hours,
) -> Vec<Placed> {
    let nominal = |s: &Stage| {
        let day = if s.days_before >= 0 {
            effective - Days::new(s.days_before as u64)
        } else {
            effective + Days::new(s.days_before.unsigned_abs() as u64)
        };
        // The owner's confirmation is office work: on the last working day on or
        // before its day (a T-5 on a Sunday is asked on Friday).
        let day = if s.action == Action::ConfirmOwner {
            renewal_platform::holidays::Calendar::shared().working_day_on_or_before(day)
        } else {
            day
        };
        renewal_platform::local_instant(day, s.at, tz)
    };
    let expiry = renewal_platform::local_instant(effective, NaiveTime::MIN, tz);
    let mut stages: Vec<(DateTime<Utc>, &Stage)> =
        plan.stages.iter().map(|s| (nominal(s), s)).collect();
    stages.sort_by_key(|(at, _)| *at);
    let mut placed = Vec::with_capacity(stages.len() + 2);
    for (i, (at, stage)) in stages.iter().enumerate() {
        // Not past the next stage of the same channel, nor (before expiry) the expiry.
        let next = stages[i + 1..]
            .iter()
            .find(|(_, s)| s.action == stage.action)
            .map(|(t, _)| *t);
        let limit = match (next, *at < expiry) {
            (Some(n), true) => Some(n.min(expiry)),
            (Some(n), false) => Some(n),
            (None, true) => Some(expiry),
            (None, false) => None,
        };
        let due = match hours.for_action(stage.action) {
            Some(window) => allowed(*at, window, limit, tz).unwrap_or(*at),
            None => *at,
        };
        placed.push(Placed {
            stage: (*stage).clone(),
            nominal: *at,
            due,
            skipped: (due <= now).then_some("case opened after this stage was due"),
        });
    }
    let ahead = placed
        .iter()
        .filter(|p| p.skipped.is_none() && p.stage.action.is_contact() && p.due < expiry)
        .count();
    let catch_ups = [
        Stage {
            stage: "catch-up call".into(),
            days_before: 0,
            at: NaiveTime::MIN,
            action: Action::PhoneTask,
            template: String::new(),
            queue: Some(Queue::Owner),
            marketing: None,
            promotion: String::new(),
            keep_after_refusal: false,
        },
        Stage {
            stage: "catch-up SMS".into(),
            days_before: 0,
            at: NaiveTime::MIN,
            action: Action::Sms,
            template: "renewal_urgent".into(),
            queue: None,
            marketing: Some(true),
            promotion: String::new(),
            keep_after_refusal: false,
        },
    ];
    for stage in catch_ups.into_iter().take(2usize.saturating_sub(ahead)) {
        let window = hours.for_action(stage.action).unwrap_or(hours.calls);
        let Some(due) = allowed(now + chrono::Duration::minutes(1), window, Some(expiry), tz)
        else {
            continue;
        };
        if due <= now {
            continue;
        }
        placed.push(Placed {
            stage,
            nominal: due,
            due,
            skipped: None,
        });
    }
    placed
}

#[cfg(test)]
mod tests {
    use super::*;

    const TZ: chrono_tz::Tz = chrono_tz::Asia::Shanghai;

    fn hm(h: u32, m: u32) -> NaiveTime {
        NaiveTime::from_hms_opt(h, m, 0).expect("time")
    }

    fn local(d: &str, h: u32, m: u32) -> DateTime<Utc> {
        let day = NaiveDate::parse_from_str(d, "%Y-%m-%d").expect("date");
        renewal_platform::local_instant(day, hm(h, m), TZ)
    }

    fn hours() -> Hours {
        Hours {
            sms: Window {
                start: hm(9, 0),
                end: hm(20, 0),
            },
            calls: Window {
                start: hm(9, 0),
                end: hm(21, 0),
            },
        }
    }

    #[test]
    fn the_default_plan_parses_and_has_every_stage_of_the_issue() {
        let plan = Plan::default_plan().expect("default plan");
        let names: Vec<&str> = plan.stages.iter().map(|s| s.stage.as_str()).collect();
        assert_eq!(
            names,
            [
                "T-60",
                "T-30",
                "T-15 call",
                "T-15 SMS",
                "T-10",
                "T-7",
                "T-5",
                "T+1",
                "T+15"
            ]
        );
    }

    #[test]
    fn whether_an_sms_is_marketing_comes_from_its_template_not_the_plan() {
        let mut plan = Plan::default_plan().expect("default plan");
        let t60 = plan
            .stages
            .iter_mut()
            .find(|s| s.stage == "T-60")
            .expect("T-60");
        assert!(t60.is_marketing());
        // A plan calling a reminder "not marketing" (to get past opt-outs) is refused.
        t60.marketing = Some(false);
        let refused = plan.check().expect_err("refused");
        assert!(
            refused.to_string().contains("from its template"),
            "{refused}"
        );
        // Saying nothing is fine: the template decides.
        plan.stages[0].marketing = None;
        assert!(plan.check().is_ok());
        assert!(plan.stages[0].is_marketing());
        plan.stages[0].template = "free_text".into();
        assert!(plan.check().is_err(), "an unknown template is refused");
    }

    #[test]
    fn a_night_time_stage_moves_to_the_morning_or_earlier_before_a_limit() {
        let h = hours();
        // 22:30 SMS: next morning 09:00.
        assert_eq!(
            allowed(local("2027-01-10", 22, 30), h.sms, None, TZ),
            Some(local("2027-01-11", 9, 0))
        );
        // 07:00: same morning 09:00.
        assert_eq!(
            allowed(local("2027-01-10", 7, 0), h.sms, None, TZ),
            Some(local("2027-01-10", 9, 0))
        );
        // 22:30 but the expiry is at midnight: the last minute of the evening window.
        assert_eq!(
            allowed(
                local("2027-01-10", 22, 30),
                h.sms,
                Some(local("2027-01-11", 0, 0)),
                TZ
            ),
            Some(local("2027-01-10", 19, 59))
        );
    }

    #[test]
    fn a_case_opened_at_t_minus_20_gets_the_stages_ahead_and_two_contacts() {
        let plan = Plan::default_plan().expect("plan");
        let effective = NaiveDate::from_ymd_opt(2027, 2, 10).expect("date");
        let now = local("2027-01-21", 12, 0);
        let placed = place(&plan, effective, TZ, now, &hours());
        let ahead: Vec<&str> = placed
            .iter()
            .filter(|p| p.skipped.is_none())
            .map(|p| p.stage.stage.as_str())
            .collect();
        assert_eq!(
            ahead,
            ["T-15 call", "T-15 SMS", "T-10", "T-7", "T-5", "T+1", "T+15"]
        );
        let skipped: Vec<&str> = placed
            .iter()
            .filter(|p| p.skipped.is_some())
            .map(|p| p.stage.stage.as_str())
            .collect();
        assert_eq!(skipped, ["T-60", "T-30"]);
        // Opened at T-3: only the confirmation is left before expiry, so two catch-ups.
        let late = place(&plan, effective, TZ, local("2027-02-07", 22, 0), &hours());
        let catch_up: Vec<(&str, DateTime<Utc>)> = late
            .iter()
            .filter(|p| p.stage.stage.starts_with("catch-up"))
            .map(|p| (p.stage.stage.as_str(), p.due))
            .collect();
        assert_eq!(
            catch_up,
            [
                ("catch-up call", local("2027-02-08", 9, 0)),
                ("catch-up SMS", local("2027-02-08", 9, 0))
            ]
        );
    }
}
