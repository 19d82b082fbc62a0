//! The Chinese long public holidays (Spring Festival, Labour Day, National Day), their
//! make-up working days, and the rules built on them: a policy expiring inside a holiday
//! is worked as if it expired on the last working day before the holiday starts (lists);
//! the business's deadlines count working days (the claim window, the research deadline,
//! the second assignment's steps in assignment; the T-5 confirmation in the scheduler).
//! The calendar comes from `data/holidays-cn.json`; an expiry in a year it does not cover
//! is an alert, never silently a normal day. Counting days in such a year takes Monday
//! to Friday as working days (nothing else is known of it).

use std::collections::{BTreeMap, BTreeSet};

use chrono::{Datelike, Days, Duration, NaiveDate, NaiveDateTime, NaiveTime, Weekday};
use serde::Deserialize;

const EMBEDDED: &str = include_str!("../data/holidays-cn.json");

/// The long public holidays and make-up working days of the years the data file covers.
#[derive(Debug, Clone)]
pub struct Calendar {
    years: BTreeMap<i32, Year>,
    periods: Vec<HolidayPeriod>,
}

/// One covered year: whether its dates are provisional, and its make-up workdays.
#[derive(Debug, Clone)]
struct Year(bool, BTreeSet<NaiveDate>);

/// One long holiday, with the day policies expiring inside it are worked against.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HolidayPeriod {
    pub name: String,
    pub first_day: NaiveDate,
    pub last_day: NaiveDate,
    /// last working day before first_day
    pub worked_before: NaiveDate,
}

/// The date a policy's renewal is worked against.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effective {
    /// not in a holiday: worked against the expiry itself
    Normal(NaiveDate),
    /// in a holiday: worked against `date`, the last working day before `holiday`
    Holiday { date: NaiveDate, holiday: String },
    /// the calendar does not cover this year: an alert
    UnknownYear(i32),
}

/// Why a holiday file was rejected; each message names the year, holiday or day at fault.
#[derive(Debug, thiserror::Error)]
pub enum CalendarError {
    #[error("holiday calendar is not valid: {0}")]
    Json(#[from] serde_json::Error),
    #[error("holiday calendar lists year {0} twice")]
    DuplicateYear(i32),
    #[error("year {0}: {1} `{2}` is not a YYYY-MM-DD date")]
    BadDate(i32, String, String),
    #[error("year {0}: a holiday has an empty name")]
    EmptyName(i32),
    #[error("year {0}: {1} ends before it starts")]
    Reversed(i32, String),
    #[error("year {0}: {1} {2} is not in {0}")]
    OutsideYear(i32, String, NaiveDate),
    #[error("year {0}: make-up workday {1} is a {wd}, not a Saturday or Sunday", wd = .1.weekday())]
    MakeUpNotWeekend(i32, NaiveDate),
    #[error("year {0}: make-up workday {1} is inside {2}")]
    MakeUpInHoliday(i32, NaiveDate, String),
    #[error("holidays overlap: {0} and {1}")]
    Overlap(String, String),
    #[error("no working day found before {0}")]
    NoWorkingDay(String),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileDto {
    /// For people; required so every file says where its dates come from.
    #[serde(rename = "source")]
    _source: String,
    years: Vec<YearDto>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct YearDto {
    year: i32,
    provisional: bool,
    holidays: Vec<HolidayDto>,
    make_up_workdays: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct HolidayDto {
    name: String,
    first_day: String,
    last_day: String,
}

fn date(year: i32, what: &str, value: &str) -> Result<NaiveDate, CalendarError> {
    NaiveDate::parse_from_str(value, "%Y-%m-%d")
        .map_err(|_| CalendarError::BadDate(year, what.to_owned(), value.to_owned()))
}

fn is_weekend(day: NaiveDate) -> bool {
    matches!(day.weekday(), Weekday::Sat | Weekday::Sun)
}

/// How errors name a period: `Labour Day 2025-05-01..2025-05-05`.
fn label(p: &HolidayPeriod) -> String {
    format!("{} {}..{}", p.name, p.first_day, p.last_day)
}

impl Calendar {
    /// Parses the calendar compiled into the binary (`data/holidays-cn.json`).
    pub fn embedded() -> Result<Calendar, CalendarError> {
        Self::parse(EMBEDDED)
    }

    /// Parses and validates a holiday file; see `data/holidays-cn.json` for the format.
    pub fn parse(json: &str) -> Result<Calendar, CalendarError> {
        let file: FileDto = serde_json::from_str(json)?;
        let mut years = BTreeMap::new();
        let mut periods = Vec::new();
        for y in file.years {
            let year = y.year;
            if years.contains_key(&year) {
                return Err(CalendarError::DuplicateYear(year));
            }
            let mut own = Vec::new();
            for h in y.holidays {
                if h.name.trim().is_empty() {
                    return Err(CalendarError::EmptyName(year));
                }
                let first_day = date(year, &format!("{} first_day", h.name), &h.first_day)?;
                let last_day = date(year, &format!("{} last_day", h.name), &h.last_day)?;
                if last_day < first_day {
                    return Err(CalendarError::Reversed(year, h.name));
                }
                if let Some(day) = [first_day, last_day].into_iter().find(|d| d.year() != year) {
                    return Err(CalendarError::OutsideYear(year, h.name, day));
                }
                let (name, worked_before) = (h.name, first_day); // set once all years are known
                own.push(HolidayPeriod {
                    name,
                    first_day,
                    last_day,
                    worked_before,
                });
            }
            let mut make_up = BTreeSet::new();
            for value in &y.make_up_workdays {
                let day = date(year, "make-up workday", value)?;
                if day.year() != year {
                    let what = "make-up workday".to_owned();
                    return Err(CalendarError::OutsideYear(year, what, day));
                }
                if !is_weekend(day) {
                    return Err(CalendarError::MakeUpNotWeekend(year, day));
                }
                if let Some(p) = own.iter().find(|p| p.contains(day)) {
                    return Err(CalendarError::MakeUpInHoliday(year, day, p.name.clone()));
                }
                make_up.insert(day);
            }
            periods.extend(own);
            years.insert(year, Year(y.provisional, make_up));
        }
        periods.sort_by_key(|p| p.first_day);
        if let Some(w) = periods.windows(2).find(|w| w[1].first_day <= w[0].last_day) {
            return Err(CalendarError::Overlap(label(&w[0]), label(&w[1])));
        }
        let mut calendar = Calendar { years, periods };
        for i in 0..calendar.periods.len() {
            calendar.periods[i].worked_before = calendar.last_working_day_before(i)?;
        }
        Ok(calendar)
    }

    /// Walks back from the day before period `i` starts to a working day. A day in a year
    /// the calendar does not cover (only possible when crossing into the previous year)
    /// counts as working if it is Monday to Friday: the period's own make-up days are in
    /// its own year, so nothing else is known about that day.
    fn last_working_day_before(&self, i: usize) -> Result<NaiveDate, CalendarError> {
        let period = &self.periods[i];
        let working = |&day: &NaiveDate| self.is_working_day(day).unwrap_or(!is_weekend(day));
        let mut back = period.first_day.iter_days().rev().skip(1);
        back.find(working)
            .ok_or_else(|| CalendarError::NoWorkingDay(label(period)))
    }

    /// The years covered, ascending, each with whether its dates are provisional.
    pub fn years(&self) -> Vec<(i32, bool)> {
        self.years.iter().map(|(&y, v)| (y, v.0)).collect()
    }

    /// Every long holiday, ascending by first_day.
    pub fn periods(&self) -> &[HolidayPeriod] {
        &self.periods
    }

    /// Whether `day` is a working day: Monday to Friday outside the long holidays, or a
    /// make-up workday. Only the long holidays are known, so New Year, Qingming etc. count
    /// as ordinary days. `None` if the calendar does not cover the year.
    pub fn is_working_day(&self, day: NaiveDate) -> Option<bool> {
        let Year(_, make_up) = self.years.get(&day.year())?;
        if self.period_of(day).is_some() {
            return Some(false);
        }
        Some(make_up.contains(&day) || !is_weekend(day))
    }

    /// The date a policy expiring on `expiry` is worked against.
    pub fn effective_expiry(&self, expiry: NaiveDate) -> Effective {
        if !self.years.contains_key(&expiry.year()) {
            return Effective::UnknownYear(expiry.year());
        }
        match self.period_of(expiry) {
            Some(p) => Effective::Holiday {
                date: p.worked_before,
                holiday: p.name.clone(),
            },
            None => Effective::Normal(expiry),
        }
    }

    /// The calendar compiled in, parsed once. The file is checked by this module's tests
    /// and at every lists start; were it ever unreadable here, days are counted Monday to
    /// Friday rather than stop the service.
    pub fn shared() -> &'static Calendar {
        static SHARED: std::sync::OnceLock<Calendar> = std::sync::OnceLock::new();
        SHARED.get_or_init(|| {
            Calendar::embedded().unwrap_or_else(|e| {
                tracing::error!(error = %e, "the embedded holiday calendar does not parse; counting Monday to Friday");
                Calendar {
                    years: BTreeMap::new(),
                    periods: Vec::new(),
                }
            })
        })
    }

    /// Whether `day` is worked, Monday to Friday in a year the calendar does not cover.
    pub fn working(&self, day: NaiveDate) -> bool {
        self.is_working_day(day).unwrap_or(!is_weekend(day))
    }

    /// The `n`-th working day after `day` (`day` itself when `n` is 0).
    pub fn working_days_after(&self, day: NaiveDate, n: u32) -> NaiveDate {
        let mut found = 0;
        let mut at = day;
        // A year has far fewer than 400 non-working days in a row.
        for _ in 0..(n as usize + 400) {
            if found == n {
                break;
            }
            at = at.succ_opt().unwrap_or(at);
            if self.working(at) {
                found += 1;
            }
        }
        at
    }

    /// `day` when it is worked, else the last working day before it.
    pub fn working_day_on_or_before(&self, day: NaiveDate) -> NaiveDate {
        day.iter_days()
            .rev()
            .take(60)
            .find(|d| self.working(*d))
            .unwrap_or(day)
    }

    /// `day` when it is worked, else the first working day after it.
    pub fn working_day_on_or_after(&self, day: NaiveDate) -> NaiveDate {
        day.iter_days()
            .take(60)
            .find(|d| self.working(*d))
            .unwrap_or(day)
    }

    /// `start` (local time) plus `hours` counted on working days only: a 24-hour step
    /// begun on a Friday afternoon ends on Monday afternoon.
    pub fn add_working_hours(&self, start: NaiveDateTime, hours: i64) -> NaiveDateTime {
        let mut at = start;
        let mut left = Duration::hours(hours.max(0));
        for _ in 0..800 {
            let next_day = (at.date() + Days::new(1)).and_time(NaiveTime::MIN);
            if !self.working(at.date()) {
                at = next_day;
                continue;
            }
            let today = next_day - at;
            if left <= today {
                return at + left;
            }
            left -= today;
            at = next_day;
        }
        at
    }

    fn period_of(&self, day: NaiveDate) -> Option<&HolidayPeriod> {
        self.periods.iter().find(|p| p.contains(day))
    }
}

impl HolidayPeriod {
    fn contains(&self, day: NaiveDate) -> bool {
        self.first_day <= day && day <= self.last_day
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use CalendarError as E;

    fn d(s: &str) -> NaiveDate {
        NaiveDate::parse_from_str(s, "%Y-%m-%d").expect("test date")
    }

    fn cal() -> Calendar {
        Calendar::embedded().expect("the embedded holiday file must parse")
    }

    fn eff(expiry: &str) -> Effective {
        cal().effective_expiry(d(expiry))
    }

    fn working(day: &str) -> Option<bool> {
        cal().is_working_day(d(day))
    }

    fn worked_before(first_day: &str) -> Option<NaiveDate> {
        let cal = cal();
        let found = cal.periods().iter().find(|p| p.first_day == d(first_day));
        found.map(|p| p.worked_before)
    }

    /// A file of one year, `holidays` and `make_up` being the insides of its two lists.
    fn file(year: i32, holidays: &str, make_up: &str) -> String {
        let y = format!(
            r#"{{"year": {year}, "provisional": false, "holidays": [{holidays}],
            "make_up_workdays": [{make_up}]}}"#
        );
        format!(r#"{{"source": "test", "years": [{y}]}}"#)
    }

    #[test]
    fn worked_before_skips_back_over_weekends_but_not_make_up_days() {
        assert_eq!(worked_before("2025-01-28"), Some(d("2025-01-27"))); // Tue -> Mon
        assert_eq!(worked_before("2026-02-15"), Some(d("2026-02-14"))); // make-up Sat
        assert_eq!(worked_before("2026-10-01"), Some(d("2026-09-30")));
        assert_eq!(worked_before("2025-05-01"), Some(d("2025-04-30")));
        assert_eq!(worked_before("2027-02-05"), Some(d("2027-02-04")));
        // 2029-01-01 is a Monday and 2028 is not covered: back to Friday 2028-12-29.
        let h = r#"{"name": "T", "first_day": "2029-01-01", "last_day": "2029-01-03"}"#;
        let cal = Calendar::parse(&file(2029, h, "")).expect("valid");
        assert_eq!(cal.periods()[0].worked_before, d("2028-12-29"));
    }

    #[test]
    fn only_non_working_days_lie_between_worked_before_and_each_holiday() {
        let cal = cal();
        assert_eq!(cal.periods().len(), 9);
        assert!(cal.periods().is_sorted_by_key(|p| p.first_day));
        for p in cal.periods() {
            let mut day = p.worked_before;
            assert_eq!(cal.is_working_day(day), Some(true), "{p:?}");
            while let Some(next) = day.succ_opt().filter(|&n| n < p.first_day) {
                day = next;
                assert_eq!(cal.is_working_day(day), Some(false), "{p:?} {day}");
            }
        }
    }

    #[test]
    fn effective_expiry() {
        let holiday = |date: &str, name: &str| {
            let (date, holiday) = (d(date), name.to_owned());
            Effective::Holiday { date, holiday }
        };
        let sf = holiday("2025-01-27", "Spring Festival");
        for day in ["2025-01-28", "2025-02-01", "2025-02-04"] {
            assert_eq!(eff(day), sf, "{day}"); // first, inside and last day
        }
        let nd = holiday("2025-09-30", "National Day and Mid-Autumn");
        assert_eq!(eff("2025-10-08"), nd);
        assert_eq!(eff("2026-02-23"), holiday("2026-02-14", "Spring Festival"));
        // The day after, the day before, a make-up Saturday, a plain Saturday: normal.
        for day in "2025-02-05 2025-01-27 2026-02-14 2025-03-01 2026-10-08".split(' ') {
            assert_eq!(eff(day), Effective::Normal(d(day)), "{day}");
        }
        assert_eq!(eff("2030-10-03"), Effective::UnknownYear(2030));
        assert_eq!(eff("2024-12-31"), Effective::UnknownYear(2024));
    }

    #[test]
    fn deadlines_count_working_days_with_make_up_days() {
        let cal = cal();
        // Issued on 1 October 2026: the holiday runs to the 7th; Saturday the 10th is a
        // make-up workday, so the fifth working day after is Tuesday the 13th.
        assert_eq!(cal.working_days_after(d("2026-10-01"), 5), d("2026-10-13"));
        // Issued on a Friday: Monday is the first working day after.
        assert_eq!(cal.working_days_after(d("2026-12-04"), 1), d("2026-12-07"));
        assert_eq!(cal.working_days_after(d("2026-12-04"), 0), d("2026-12-04"));
        // A Sunday moves back to Friday; a make-up Saturday stays.
        assert_eq!(
            cal.working_day_on_or_before(d("2027-01-10")),
            d("2027-01-08")
        );
        assert_eq!(
            cal.working_day_on_or_before(d("2026-02-14")),
            d("2026-02-14")
        );
        assert_eq!(
            cal.working_day_on_or_after(d("2026-11-15")),
            d("2026-11-16")
        );
        // 24 working hours from Friday 15:00 end on Monday 15:00; from Saturday, on
        // Tuesday 00:00.
        let at = |s: &str| NaiveDateTime::parse_from_str(s, "%Y-%m-%d %H:%M").expect("time");
        assert_eq!(
            cal.add_working_hours(at("2026-12-04 15:00"), 24),
            at("2026-12-07 15:00")
        );
        assert_eq!(
            cal.add_working_hours(at("2026-12-05 10:00"), 24),
            at("2026-12-08 00:00")
        );
        // A year the calendar does not cover counts Monday to Friday.
        assert_eq!(cal.working_days_after(d("2030-03-01"), 1), d("2030-03-04"));
    }

    #[test]
    fn working_days_and_years() {
        assert_eq!(working("2026-02-14"), Some(true)); // make-up Saturday
        assert_eq!(working("2025-01-26"), Some(true)); // make-up Sunday
        assert_eq!(working("2026-02-16"), Some(false)); // Monday, in the holiday
        assert_eq!(working("2025-03-01"), Some(false)); // plain Saturday
        assert_eq!(working("2025-03-03"), Some(true)); // plain Monday
        assert_eq!(working("2030-03-04"), None);
        let years = vec![(2025, false), (2026, false), (2027, true)];
        assert_eq!(cal().years(), years);
    }

    #[test]
    fn every_make_up_day_in_the_embedded_file_is_a_weekend() {
        // Read the raw file, not through `parse`, so this does not trust its validation.
        let raw: serde_json::Value = serde_json::from_str(EMBEDDED).expect("valid JSON");
        let mut count = 0;
        for year in raw["years"].as_array().expect("years") {
            for day in year["make_up_workdays"].as_array().expect("make-up list") {
                let day = d(day.as_str().expect("a string"));
                let weekday = day.weekday();
                assert!(weekday == Weekday::Sat || weekday == Weekday::Sun, "{day}");
                count += 1;
            }
        }
        assert_eq!(count, 10);
    }

    #[test]
    fn bad_files_are_rejected_naming_what_is_wrong() {
        let a = r#"{"name": "A", "first_day": "2025-05-01", "last_day": "2025-05-05"}"#;
        let b = r#"{"name": "B", "first_day": "2025-05-05", "last_day": "2025-05-07"}"#;
        let r = r#"{"name": "R", "first_day": "2025-05-05", "last_day": "2025-05-01"}"#;
        let x = r#"{"name": "X", "first_day": "2025-02-30", "last_day": "2025-03-01"}"#;
        let err = |json: String| Calendar::parse(&json).expect_err("must be rejected");

        let e = err(file(2025, &format!("{a}, {b}"), ""));
        assert!(matches!(&e, E::Overlap(..)), "{e}");
        assert!(e.to_string().contains("A 2025-05-01..2025-05-05"), "{e}");
        let e = err(file(2025, a, r#""2025-04-30""#));
        assert!(matches!(e, E::MakeUpNotWeekend(2025, _)), "{e}");
        assert!(e.to_string().contains("2025-04-30 is a Wed"), "{e}");
        let e = err(file(2025, a, r#""2025-05-03""#));
        assert!(matches!(e, E::MakeUpInHoliday(..)), "{e}");
        let e = err(file(2025, r, ""));
        assert!(matches!(&e, E::Reversed(2025, n) if n == "R"), "{e}");
        let e = err(file(2026, a, ""));
        assert!(matches!(e, E::OutsideYear(2026, ..)), "{e}");
        let e = err(file(2025, a, r#""2024-12-28""#));
        assert!(matches!(e, E::OutsideYear(..)), "{e}");
        let e = err(file(2025, x, "")).to_string();
        assert_eq!(
            e,
            "year 2025: X first_day `2025-02-30` is not a YYYY-MM-DD date"
        );
        let one = file(2025, a, "");
        let y = &one[one.find("[{").expect("years") + 1..one.len() - 2];
        let e = err(format!(r#"{{"source": "t", "years": [{y}, {y}]}}"#));
        assert!(matches!(e, E::DuplicateYear(2025)), "{e}");
        assert!(matches!(err("{".to_owned()), E::Json(_)));
        let typo = one.replace("make_up_workdays", "make_up_days");
        assert!(matches!(err(typo), E::Json(_)));
    }
}
