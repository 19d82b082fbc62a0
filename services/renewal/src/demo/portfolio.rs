//! A synthetic motor portfolio: realistic Chinese names, +86 mobiles, plates (with
//! 8-character new-energy plates), valid VINs and resident ID numbers, cities,
//! branches and agents. Fixed by the seed: the same seed gives the same portfolio and
//! the same customer behaviour.

use chrono::{DateTime, NaiveDate, NaiveTime, Utc};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use renewal_contract::core::Policy;

pub struct City {
    pub code: &'static str,
    pub name: &'static str,
    pub plate_prefix: &'static str,
    pub id_region: &'static str,
    pub branches: &'static [&'static str],
}

pub const CITIES: &[City] = &[
    City {
        code: "310000",
        name: "上海",
        plate_prefix: "沪A",
        id_region: "310104",
        branches: &["SH01", "SH02", "SH03", "SH04"],
    },
    City {
        code: "110000",
        name: "北京",
        plate_prefix: "京N",
        id_region: "110105",
        branches: &["BJ01", "BJ02", "BJ03"],
    },
    City {
        code: "440100",
        name: "广州",
        plate_prefix: "粤A",
        id_region: "440106",
        branches: &["GZ01", "GZ02", "GZ03"],
    },
    City {
        code: "440300",
        name: "深圳",
        plate_prefix: "粤B",
        id_region: "440305",
        branches: &["SZ01", "SZ02"],
    },
    City {
        code: "330100",
        name: "杭州",
        plate_prefix: "浙A",
        id_region: "330106",
        branches: &["HZ01", "HZ02"],
    },
    City {
        code: "510100",
        name: "成都",
        plate_prefix: "川A",
        id_region: "510107",
        branches: &["CD01", "CD02"],
    },
];

pub const AGENTS_PER_BRANCH: u32 = 6;

const SURNAMES: &[&str] = &[
    "王", "李", "张", "刘", "陈", "杨", "黄", "赵", "吴", "周", "徐", "孙", "马", "朱", "胡", "郭",
    "何", "高", "林", "罗", "郑", "梁", "谢", "宋", "唐", "许", "韩", "冯", "邓", "曹", "彭", "曾",
    "肖", "田", "董", "袁", "潘", "蒋", "蔡", "欧阳",
];
const GIVEN: &[&str] = &[
    "伟", "芳", "娜", "敏", "静", "丽", "强", "磊", "军", "洋", "勇", "艳", "杰", "娟", "涛", "明",
    "超", "秀英", "霞", "平", "刚", "桂英", "建华", "志强", "文", "辉", "玉兰", "海燕", "晓东",
    "婷", "浩然", "子涵", "欣怡", "宇航", "梓萱", "俊杰",
];
const MOBILE_PREFIXES: &[&str] = &[
    "130", "131", "132", "133", "135", "136", "137", "138", "139", "150", "151", "152", "155",
    "156", "157", "158", "159", "166", "176", "177", "180", "181", "182", "185", "186", "187",
    "188", "189", "198", "199",
];

/// The six customer categories of DOMAIN.md, with how many customers of each renew by
/// themselves in the simulation (the target rate where there is one).
pub const CATEGORIES: &[(&str, u32, u32)] = &[
    // (category, share of the portfolio %, renewal rate of its customers %)
    ("insured_last_year", 55, 75),
    ("full_policy_data", 10, 30),
    ("phone_only", 10, 20),
    ("local_recent_workshop", 10, 20),
    ("local_not_back_2y", 10, 10),
    ("other_city", 5, 10),
];

/// A policy and what its customer will do.
pub struct Customer {
    pub policy: Policy,
    /// When the customer renews, if they do.
    pub renews_at: Option<DateTime<Utc>>,
}

/// ISO 3779 check digit (position 9), as lists checks it.
pub fn vin_check_digit(vin: &[u8; 17]) -> u8 {
    renewal_lists::policy_checks::vin_check_digit(vin)
}

/// GB 11643 check character of an 18-character resident ID number.
pub fn id_check_char(first17: &str) -> char {
    const WEIGHTS: [u32; 17] = [7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2];
    const CHECK: &[u8; 11] = b"10X98765432";
    let sum: u32 = first17
        .bytes()
        .zip(WEIGHTS)
        .map(|(b, w)| (b - b'0') as u32 * w)
        .sum();
    CHECK[(sum % 11) as usize] as char
}

fn vin(rng: &mut SmallRng) -> String {
    const WMI: &[&str] = &["LSV", "LFV", "LGB", "LHG", "LVS", "LBV", "LSG", "LGW"];
    const CHARS: &[u8] = b"ABCDEFGHJKLMNPRSTUVWXYZ0123456789";
    let mut v = [b'0'; 17];
    v[..3].copy_from_slice(WMI[rng.random_range(0..WMI.len())].as_bytes());
    for c in v.iter_mut().skip(3) {
        *c = CHARS[rng.random_range(0..CHARS.len())];
    }
    v[9] = b"KLMNPRST"[rng.random_range(0..8)]; // model year 2019-2026
    v[8] = vin_check_digit(&v);
    String::from_utf8_lossy(&v).into_owned()
}

fn plate(rng: &mut SmallRng, prefix: &str) -> String {
    const LETTERS: &[u8] = b"ABCDEFGHJKLMNPQRSTUVWXYZ";
    let digits = |rng: &mut SmallRng, n: usize| {
        (0..n)
            .map(|_| char::from(b'0' + rng.random_range(0..10u8)))
            .collect::<String>()
    };
    if rng.random_ratio(1, 5) {
        // New-energy plate: D (pure electric) or F (hybrid) and five digits.
        let kind = if rng.random_bool(0.7) { 'D' } else { 'F' };
        format!("{prefix}{kind}{}", digits(rng, 5))
    } else {
        let letter = char::from(LETTERS[rng.random_range(0..LETTERS.len())]);
        format!("{prefix}{letter}{}", digits(rng, 4))
    }
}

/// Generates `n` policies expiring from `start` + 1 day to `start` + `days` + 60 days,
/// with each customer's renewal behaviour.
pub fn generate(
    n: usize,
    seed: u64,
    start: NaiveDate,
    days: u32,
    tz: chrono_tz::Tz,
) -> Vec<Customer> {
    let mut rng = SmallRng::seed_from_u64(seed);
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let city = &CITIES[rng.random_range(0..CITIES.len())];
        let branch = city.branches[rng.random_range(0..city.branches.len())];
        let agent = format!("{branch}-A{:02}", rng.random_range(1..=AGENTS_PER_BRANCH));
        let name = format!(
            "{}{}",
            SURNAMES[rng.random_range(0..SURNAMES.len())],
            GIVEN[rng.random_range(0..GIVEN.len())]
        );
        let mobile = format!(
            "+86{}{:08}",
            MOBILE_PREFIXES[rng.random_range(0..MOBILE_PREFIXES.len())],
            rng.random_range(0..100_000_000u32)
        );
        let birth = NaiveDate::from_ymd_opt(
            rng.random_range(1960..2003),
            rng.random_range(1..=12),
            rng.random_range(1..=28),
        )
        .unwrap_or(NaiveDate::MIN);
        let id17 = format!(
            "{}{}{:03}",
            city.id_region,
            birth.format("%Y%m%d"),
            rng.random_range(0..1000)
        );
        let id_number = format!("{id17}{}", id_check_char(&id17));
        let mut pick = rng.random_range(0..100);
        let (category, target) = CATEGORIES
            .iter()
            .find(|(_, share, _)| {
                if pick < *share {
                    true
                } else {
                    pick -= share;
                    false
                }
            })
            .map(|(c, _, t)| (*c, *t))
            .unwrap_or(("insured_last_year", 75));
        let end = start + chrono::Days::new(rng.random_range(1..=(days as u64 + 60)));
        let start_date = end - chrono::Months::new(12);
        let channel = ["dealer", "direct", "agent"][rng.random_range(0..3)];
        let policy = Policy {
            policy_no: format!("P{}{:07}", start.format("%Y"), i + 1),
            version: 1,
            customer_name: name,
            mobile,
            id_number,
            plate: plate(&mut rng, city.plate_prefix),
            vin: vin(&mut rng),
            city_code: city.code.to_owned(),
            branch_code: branch.to_owned(),
            agent_code: agent,
            channel: channel.to_owned(),
            category: category.to_owned(),
            start_date: start_date.to_string(),
            end_date: end.to_string(),
            premium_fen: rng.random_range(150_000..900_000),
            important: rng.random_ratio(1, 20),
            group_policy: rng.random_ratio(1, 33),
            // Seven agents in ten left the customer's real data at sale (they keep the
            // renewal credit for life); decided by the number, not the generator.
            real_data_at_sale: i % 10 < 7,
        };
        // Customers renew at the target rate of their category, between 45 days and
        // 1 day before expiry, in one of three daytime slots; some others after lapsing.
        let renews = rng.random_range(0..100) < target;
        let before = rng.random_range(1..=45u64);
        let slot = [11, 15, 19][rng.random_range(0..3)];
        // A quarter of those who do not renew in time come back after the lapse, 2 to
        // 14 days after expiry (the lapse rescue's catch).
        let late = !renews && rng.random_range(0..100) < 25;
        let after = rng.random_range(2..=14u64);
        let at = |day: NaiveDate| {
            renewal_platform::local_instant(
                day,
                NaiveTime::from_hms_opt(slot, 0, 0).unwrap_or(NaiveTime::MIN),
                tz,
            )
        };
        let renews_at = if renews {
            Some(at(end - chrono::Days::new(before)))
        } else if late {
            Some(at(end + chrono::Days::new(after)))
        } else {
            None
        };
        out.push(Customer { policy, renews_at });
    }
    pair_vehicles(&mut out);
    out
}

/// One customer in ten holds the compulsory policy of the car the policy before insures
/// commercially: the same customer and vehicle, expiring up to two weeks later, renewed
/// with it (one renewal case, one series of contacts).
fn pair_vehicles(customers: &mut [Customer]) {
    for i in (5..customers.len()).step_by(10) {
        let (lead, rest) = customers.split_at_mut(i);
        let lead = &lead[i - 1];
        let c = &mut rest[0];
        let p = &mut c.policy;
        let l = &lead.policy;
        for (field, from) in [
            (&mut p.customer_name, &l.customer_name),
            (&mut p.mobile, &l.mobile),
            (&mut p.id_number, &l.id_number),
            (&mut p.plate, &l.plate),
            (&mut p.vin, &l.vin),
            (&mut p.city_code, &l.city_code),
            (&mut p.branch_code, &l.branch_code),
            (&mut p.agent_code, &l.agent_code),
            (&mut p.channel, &l.channel),
            (&mut p.category, &l.category),
        ] {
            field.clone_from(from);
        }
        p.real_data_at_sale = l.real_data_at_sale;
        let end = NaiveDate::parse_from_str(&l.end_date, "%Y-%m-%d").unwrap_or_default()
            + chrono::Days::new((i % 15) as u64);
        p.end_date = end.to_string();
        p.start_date = (end - chrono::Months::new(12)).to_string();
        // The compulsory line: a fixed premium band.
        p.premium_fen = 95_000 + (i % 5) as i64 * 10_000;
        c.renews_at = lead.renews_at;
    }
}

/// The core system's quote of each policy: two months and a week before its expiry at
/// 09:00 (one in eight a fortnight after T-65 instead: a late quote), never before the
/// season starts; the premium moves against last year by the claim-free years, one in
/// four with a promotion. Sorted by when it is issued.
pub fn quotes(
    customers: &[Customer],
    seed: u64,
    start: DateTime<Utc>,
    tz: chrono_tz::Tz,
) -> Vec<(DateTime<Utc>, renewal_contract::core::QuoteIssued)> {
    use std::hash::{Hash, Hasher};
    let mut out: Vec<_> = customers
        .iter()
        .filter_map(|c| {
            let p = &c.policy;
            let end = NaiveDate::parse_from_str(&p.end_date, "%Y-%m-%d").ok()?;
            let mut h = std::collections::hash_map::DefaultHasher::new();
            (seed, &p.policy_no, "quote").hash(&mut h);
            let r = h.finish();
            let late = r.is_multiple_of(8);
            let day = end - chrono::Days::new(if late { 51 } else { 67 });
            let nine = NaiveTime::from_hms_opt(9, 0, 0).unwrap_or(NaiveTime::MIN);
            let at = renewal_platform::local_instant(day, nine, tz).max(start);
            let claim_free_years = (r / 8 % 4) as i32;
            // 0 claim-free years: 5% dearer; each year 10% cheaper, to 25% off.
            let factor = [105, 90, 80, 75][claim_free_years as usize];
            let premium = p.premium_fen * factor / 100;
            let compulsory = 95_000.min(premium / 2);
            let promotion = if (r / 32).is_multiple_of(4) {
                "赠送全年免费洗车"
            } else {
                ""
            };
            Some((
                at,
                renewal_contract::core::QuoteIssued {
                    quote_id: format!("Q{}", &p.policy_no[1..]),
                    policy_no: p.policy_no.clone(),
                    premium_fen: premium,
                    last_premium_fen: p.premium_fen,
                    claim_free_years,
                    ncd_level: -claim_free_years,
                    compulsory_fen: compulsory,
                    commercial_fen: premium - compulsory,
                    valid_until: end.to_string(),
                    promotion: promotion.into(),
                    issued_at_ms: at.timestamp_millis(),
                },
            ))
        })
        .collect();
    out.sort_by_key(|(at, q)| (*at, q.policy_no.clone()));
    out
}

/// The organisation behind the portfolio: every branch, its agents and a supervisor.
/// One agent code the portfolio uses (`CD02-A06`, left out) is unknown to the
/// organisation, so its policies go through the research queue.
pub fn org(policies: usize) -> Vec<renewal_assignment::org::OrgRow> {
    let branches: usize = CITIES.iter().map(|c| c.branches.len()).sum();
    let per_agent = policies / (branches * AGENTS_PER_BRANCH as usize).max(1);
    let capacity = (per_agent as i32 * 2).max(20);
    let mut rows = Vec::new();
    for city in CITIES {
        for branch in city.branches {
            for n in 1..=AGENTS_PER_BRANCH {
                let code = format!("{branch}-A{n:02}");
                if code == "CD02-A06" {
                    continue;
                }
                rows.push(renewal_assignment::org::OrgRow {
                    city_code: city.code.to_owned(),
                    branch_code: (*branch).to_owned(),
                    branch_name: format!("{}{}支公司", city.name, &branch[2..]),
                    agent_code: code,
                    agent_name: format!(
                        "{}{}",
                        SURNAMES[n as usize % SURNAMES.len()],
                        GIVEN[n as usize % GIVEN.len()]
                    ),
                    role: "agent".into(),
                    capacity,
                    active: true,
                });
            }
            rows.push(renewal_assignment::org::OrgRow {
                city_code: city.code.to_owned(),
                branch_code: (*branch).to_owned(),
                branch_name: format!("{}{}支公司", city.name, &branch[2..]),
                agent_code: format!("{branch}-S01"),
                agent_name: format!("{}主管", SURNAMES[0]),
                role: "supervisor".into(),
                capacity: 0,
                active: true,
            });
        }
    }
    rows
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn check_digits_match_published_examples() {
        // The worked example of the North American VIN check digit: 1M8GDM9AXKP042788.
        let vin: [u8; 17] = *b"1M8GDM9AXKP042788";
        assert_eq!(vin_check_digit(&vin), b'X');
        // GB 11643's worked example: 11010519491231002X.
        assert_eq!(id_check_char("11010519491231002"), 'X');
    }

    #[test]
    fn the_same_seed_gives_the_same_portfolio() {
        let start = NaiveDate::from_ymd_opt(2026, 12, 1).expect("date");
        let a = generate(50, 9, start, 100, chrono_tz::Asia::Shanghai);
        let b = generate(50, 9, start, 100, chrono_tz::Asia::Shanghai);
        assert_eq!(
            a.iter().map(|c| &c.policy).collect::<Vec<_>>(),
            b.iter().map(|c| &c.policy).collect::<Vec<_>>()
        );
        for c in &a {
            let vin: [u8; 17] = c.policy.vin.as_bytes().try_into().expect("17 characters");
            assert_eq!(vin_check_digit(&vin), vin[8]);
            assert!(c.policy.mobile.starts_with("+861") && c.policy.mobile.len() == 14);
            assert!(c.policy.plate.chars().count() == 7 || c.policy.plate.chars().count() == 8);
        }
    }
}
