//! The reminder plan: which stage happens when. The walking skeleton has the first
//! stage of the default plan, the city company's friendly SMS at T-60; the full plan
//! (as data, per city, versioned) comes with the scheduler's own issue.

use chrono::{DateTime, NaiveDate, NaiveTime, Utc};

pub struct Stage {
    pub stage: &'static str,
    /// Days before the effective expiry.
    pub days_before: u64,
    pub template: &'static str,
    /// Local time of day the stage is due.
    pub at: NaiveTime,
}

pub const DEFAULT_PLAN: &[Stage] = &[Stage {
    stage: "T-60",
    days_before: 60,
    template: "renewal_friendly",
    at: match NaiveTime::from_hms_opt(10, 0, 0) {
        Some(t) => t,
        None => NaiveTime::MIN,
    },
}];

impl Stage {
    pub fn due_at(&self, effective_expiry: NaiveDate, tz: chrono_tz::Tz) -> DateTime<Utc> {
        let day = effective_expiry - chrono::Days::new(self.days_before);
        renewal_platform::local_instant(day, self.at, tz)
    }
}
