//! The rules a policy from the core system must pass before it joins the portfolio,
//! the same for a CSV row and a NATS message. Each failure names its column.

use chrono::NaiveDate;
use renewal_platform::names;

/// A policy's fields as text, as they arrive.
#[derive(Debug, Default, Clone)]
pub struct PolicyFields<'a> {
    pub policy_no: &'a str,
    pub customer_name: &'a str,
    pub mobile: &'a str,
    pub id_number: &'a str,
    pub plate: &'a str,
    pub vin: &'a str,
    pub city_code: &'a str,
    pub branch_code: &'a str,
    pub agent_code: &'a str,
    pub channel: &'a str,
    pub category: &'a str,
    pub start_date: &'a str,
    pub end_date: &'a str,
    pub premium: Premium<'a>,
    pub important: Flag<'a>,
    pub group_policy: Flag<'a>,
    /// The selling agent left the customer's real data at sale.
    pub real_data_at_sale: Flag<'a>,
}

#[derive(Debug, Clone, Copy)]
pub enum Premium<'a> {
    /// Yuan as written in a file: `3250`, `3250.5`, `3,250.50`.
    Yuan(&'a str),
    /// Fen, from the core system's messages.
    Fen(i64),
}

impl Default for Premium<'_> {
    fn default() -> Self {
        Premium::Fen(0)
    }
}

#[derive(Debug, Clone, Copy)]
pub enum Flag<'a> {
    Text(&'a str),
    Bool(bool),
}

impl Default for Flag<'_> {
    fn default() -> Self {
        Flag::Bool(false)
    }
}

/// A policy that passed every rule, in canonical form.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckedPolicy {
    pub policy_no: String,
    pub customer_name: String,
    /// E.164, e.g. +8613812345678.
    pub mobile: String,
    pub id_number: String,
    pub plate: String,
    pub vin: String,
    pub city_code: String,
    pub branch_code: String,
    pub agent_code: String,
    pub channel: String,
    pub category: String,
    pub start_date: NaiveDate,
    pub end_date: NaiveDate,
    pub premium_fen: i64,
    pub important: bool,
    pub group_policy: bool,
    pub real_data_at_sale: bool,
}

/// Why a field was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    pub column: &'static str,
    pub reason: String,
}

fn reject(column: &'static str, reason: impl Into<String>) -> Rejection {
    Rejection {
        column,
        reason: reason.into(),
    }
}

pub const CHANNELS: &[&str] = &["dealer", "direct", "agent"];

/// Checks every field and returns every failure, not only the first.
pub fn check(f: &PolicyFields<'_>) -> Result<CheckedPolicy, Vec<Rejection>> {
    let mut bad = Vec::new();
    let required = |column: &'static str, value: &str, bad: &mut Vec<Rejection>| {
        let value = value.trim();
        if value.is_empty() {
            bad.push(reject(column, "is required"));
        }
        value.to_owned()
    };
    let policy_no = required("policy_no", f.policy_no, &mut bad);
    if policy_no.len() > 64 || policy_no.chars().any(char::is_whitespace) {
        bad.push(reject(
            "policy_no",
            "must be at most 64 characters without spaces",
        ));
    }
    let customer_name = required("customer_name", f.customer_name, &mut bad);
    shaped(
        &mut bad,
        "customer_name",
        &customer_name,
        names::person_name,
    );
    let mobile = match mobile_e164(f.mobile) {
        Ok(m) => m,
        Err(reason) => {
            bad.push(reject("mobile", reason));
            String::new()
        }
    };
    let id_number = f.id_number.trim().to_ascii_uppercase();
    if !id_number.is_empty() && !id_number_shape_ok(&id_number) {
        bad.push(reject(
            "id_number",
            "must be 15 digits, or 17 digits and a digit or X",
        ));
    }
    let vin = f.vin.trim().to_ascii_uppercase();
    if !vin.is_empty()
        && let Err(reason) = vin_ok(&vin)
    {
        bad.push(reject("vin", reason));
    }
    let plate = f.plate.trim().to_owned();
    shaped(&mut bad, "plate", &plate, names::plate);
    let city_code = required("city_code", f.city_code, &mut bad);
    shaped(&mut bad, "city_code", &city_code, names::code);
    let branch_code = required("branch_code", f.branch_code, &mut bad);
    shaped(&mut bad, "branch_code", &branch_code, names::code);
    let agent_code = required("agent_code", f.agent_code, &mut bad);
    shaped(&mut bad, "agent_code", &agent_code, names::code);
    let channel = f.channel.trim().to_ascii_lowercase();
    if !CHANNELS.contains(&channel.as_str()) {
        bad.push(reject("channel", "must be dealer, direct or agent"));
    }
    let category = f.category.trim().to_owned();
    if !crate::categories::is_known(&category) {
        bad.push(reject("category", "is not a known customer category"));
    }
    let start = parse_date(f.start_date).map_err(|r| bad.push(reject("start_date", r)));
    let end = parse_date(f.end_date).map_err(|r| bad.push(reject("end_date", r)));
    if let (Ok(start), Ok(end)) = (start, end)
        && end < start
    {
        bad.push(reject("end_date", "is before start_date"));
    }
    let premium_fen = match f.premium {
        Premium::Fen(fen) if fen >= 0 => fen,
        Premium::Fen(_) => {
            bad.push(reject("premium", "must not be negative"));
            0
        }
        Premium::Yuan(text) => yuan_to_fen(text)
            .map_err(|r| bad.push(reject("premium", r)))
            .unwrap_or(0),
    };
    let important = flag(f.important).map_err(|r| bad.push(reject("important", r)));
    let group_policy = flag(f.group_policy).map_err(|r| bad.push(reject("group_policy", r)));
    let real_data_at_sale =
        flag(f.real_data_at_sale).map_err(|r| bad.push(reject("real_data_at_sale", r)));
    match (start, end, important, group_policy, real_data_at_sale) {
        (Ok(start_date), Ok(end_date), Ok(important), Ok(group_policy), Ok(real_data_at_sale))
            if bad.is_empty() =>
        {
            Ok(CheckedPolicy {
                policy_no,
                customer_name,
                mobile,
                id_number,
                plate,
                vin,
                city_code,
                branch_code,
                agent_code,
                channel,
                category,
                start_date,
                end_date,
                premium_fen,
                important,
                group_policy,
                real_data_at_sale,
            })
        }
        _ => Err(bad),
    }
}

/// A value given must have the shape `rule` wants (an empty one is `required`'s).
fn shaped(
    bad: &mut Vec<Rejection>,
    column: &'static str,
    value: &str,
    rule: fn(&str) -> Result<(), &'static str>,
) {
    if !value.is_empty()
        && let Err(reason) = rule(value)
    {
        bad.push(reject(column, reason));
    }
}

/// Dates as the core system's exports write them. Anything else is refused rather
/// than guessed (01/02/2026 could be either month).
pub fn parse_date(text: &str) -> Result<NaiveDate, String> {
    let text = text.trim();
    if text.is_empty() {
        return Err("is required".into());
    }
    for format in ["%Y-%m-%d", "%Y/%m/%d", "%Y%m%d", "%Y年%m月%d日", "%Y.%m.%d"] {
        if let Ok(date) = NaiveDate::parse_from_str(text, format) {
            return Ok(date);
        }
    }
    Err(format!(
        "{text:?} is not a date in a known format (YYYY-MM-DD, YYYY/MM/DD, YYYYMMDD, YYYY年MM月DD日)"
    ))
}

fn flag(value: Flag<'_>) -> Result<bool, String> {
    match value {
        Flag::Bool(b) => Ok(b),
        Flag::Text(text) => match text.trim().to_ascii_lowercase().as_str() {
            "" | "0" | "false" | "n" | "no" | "否" => Ok(false),
            "1" | "true" | "y" | "yes" | "是" => Ok(true),
            other => Err(format!(
                "{other:?} is not yes/no (1/0, true/false, Y/N, 是/否)"
            )),
        },
    }
}

/// `3250`, `3250.5`, `3,250.50` yuan into fen.
pub fn yuan_to_fen(text: &str) -> Result<i64, String> {
    let clean: String = text.trim().chars().filter(|c| *c != ',').collect();
    let bad = || format!("{:?} is not an amount in yuan like 3250.50", text.trim());
    let (whole, frac) = clean.split_once('.').unwrap_or((&clean, ""));
    if whole.is_empty()
        || !whole.bytes().all(|b| b.is_ascii_digit())
        || frac.len() > 2
        || !frac.bytes().all(|b| b.is_ascii_digit())
    {
        return Err(bad());
    }
    let whole: i64 = whole.parse().map_err(|_| bad())?;
    let frac: i64 = format!("{frac:0<2}").parse().map_err(|_| bad())?;
    whole
        .checked_mul(100)
        .and_then(|w| w.checked_add(frac))
        .ok_or_else(bad)
}

/// A mainland China mobile in E.164 (`+86` and 11 digits), valid per libphonenumber's
/// metadata for CN (PhoneNumberMetadata.xml 9.0.x, territory CN, `mobile`:
/// `1740[0-5]\d{6}|1(?:[38]\d|4[57]|[59][0-35-9]|6[25-7]|7[0-35-8])\d{8}`, length 11).
/// Spaces, dashes, dots and brackets are ignored; `+86`, `0086` and `86` prefixes are
/// accepted. The SMS vendor reaches mainland mobiles only.
pub fn mobile_e164(text: &str) -> Result<String, String> {
    let text = text.trim();
    if text.is_empty() {
        return Err("is required".into());
    }
    let mut digits = String::with_capacity(16);
    for (i, c) in text.chars().enumerate() {
        match c {
            '0'..='9' => digits.push(c),
            '+' if i == 0 => {}
            ' ' | '-' | '.' | '(' | ')' => {}
            _ => return Err("contains characters that are not part of a phone number".into()),
        }
    }
    let national = if text.starts_with('+') {
        digits
            .strip_prefix("86")
            .ok_or("is not a mainland China number (+86)")?
    } else if let Some(rest) = digits.strip_prefix("0086") {
        rest
    } else if digits.len() == 13 {
        digits
            .strip_prefix("86")
            .ok_or("is not a valid mainland China mobile number")?
    } else {
        &digits
    };
    if national.len() != 11 {
        return Err(format!(
            "has {} digits; a mainland China mobile has 11",
            national.len()
        ));
    }
    if !cn_mobile_prefix_ok(national.as_bytes()) {
        return Err("is not a valid mainland China mobile number".into());
    }
    Ok(format!("+86{national}"))
}

/// libphonenumber's CN mobile pattern, for an 11-digit national number.
fn cn_mobile_prefix_ok(n: &[u8]) -> bool {
    if n.len() != 11 || n[0] != b'1' {
        return false;
    }
    let (b, c) = (n[1], n[2]);
    if b == b'7' && c == b'4' {
        // 1740[0-5]\d{6}
        return n[3] == b'0' && (b'0'..=b'5').contains(&n[4]);
    }
    match b {
        b'3' | b'8' => true,
        b'4' => matches!(c, b'5' | b'7'),
        b'5' | b'9' => c != b'4',
        b'6' => matches!(c, b'2' | b'5' | b'6' | b'7'),
        b'7' => matches!(c, b'0'..=b'3' | b'5'..=b'8'),
        _ => false,
    }
}

fn id_number_shape_ok(id: &str) -> bool {
    let b = id.as_bytes();
    match b.len() {
        15 => b.iter().all(u8::is_ascii_digit),
        18 => b[..17].iter().all(u8::is_ascii_digit) && (b[17].is_ascii_digit() || b[17] == b'X'),
        _ => false,
    }
}

/// ISO 3779 / GB 16735: 17 characters without I, O or Q, check digit in position 9.
pub fn vin_ok(vin: &str) -> Result<(), String> {
    let b = vin.as_bytes();
    if b.len() != 17 {
        return Err(format!("has {} characters; a VIN has 17", b.len()));
    }
    if !b
        .iter()
        .all(|c| c.is_ascii_digit() || (c.is_ascii_uppercase() && !b"IOQ".contains(c)))
    {
        return Err("may only hold digits and the letters A-Z except I, O and Q".into());
    }
    let expected = vin_check_digit(b);
    if b[8] != expected {
        return Err(format!(
            "check digit (9th character) is {} but should be {}",
            b[8] as char, expected as char
        ));
    }
    Ok(())
}

pub fn vin_check_digit(vin: &[u8]) -> u8 {
    const WEIGHTS: [u32; 17] = [8, 7, 6, 5, 4, 3, 2, 10, 0, 9, 8, 7, 6, 5, 4, 3, 2];
    let value = |c: u8| -> u32 {
        match c {
            b'0'..=b'9' => (c - b'0') as u32,
            b'A' | b'J' => 1,
            b'B' | b'K' | b'S' => 2,
            b'C' | b'L' | b'T' => 3,
            b'D' | b'M' | b'U' => 4,
            b'E' | b'N' | b'V' => 5,
            b'F' | b'W' => 6,
            b'G' | b'P' | b'X' => 7,
            b'H' | b'Y' => 8,
            b'R' | b'Z' => 9,
            _ => 0,
        }
    };
    let sum: u32 = vin.iter().zip(WEIGHTS).map(|(c, w)| value(*c) * w).sum();
    match sum % 11 {
        10 => b'X',
        n => b'0' + n as u8,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn good() -> PolicyFields<'static> {
        PolicyFields {
            policy_no: "P1",
            customer_name: "张三",
            mobile: "138 1234 5678",
            id_number: "11010519491231002X",
            plate: "京A12345",
            vin: "1M8GDM9AXKP042788",
            city_code: "110100",
            branch_code: "B01",
            agent_code: "A001",
            channel: "Dealer",
            category: "insured_last_year",
            start_date: "2025/12/01",
            end_date: "2026年11月30日",
            premium: Premium::Yuan("3,250.5"),
            important: Flag::Text("是"),
            group_policy: Flag::Text(""),
            real_data_at_sale: Flag::Text("Y"),
        }
    }

    #[test]
    fn a_good_policy_comes_out_canonical() {
        let p = check(&good()).expect("good");
        assert_eq!(p.mobile, "+8613812345678");
        assert_eq!(p.channel, "dealer");
        assert_eq!(p.premium_fen, 325_050);
        assert!(p.important && !p.group_policy);
        assert_eq!(
            p.end_date,
            NaiveDate::from_ymd_opt(2026, 11, 30).expect("date")
        );
    }

    #[test]
    fn every_failure_is_named_by_its_column() {
        let mut f = good();
        f.mobile = "12345678901";
        f.vin = "1M8GDM9A1KP042788";
        f.start_date = "01/12/2025";
        f.end_date = "2020-01-01";
        f.premium = Premium::Yuan("abc");
        let bad = check(&f).expect_err("bad");
        let columns: Vec<_> = bad.iter().map(|r| r.column).collect();
        assert_eq!(columns, ["mobile", "vin", "start_date", "premium"]);
        let mut f = good();
        f.start_date = "2026-01-01";
        f.end_date = "2025-12-31";
        let bad = check(&f).expect_err("bad");
        assert_eq!(bad[0].column, "end_date");
        assert!(bad[0].reason.contains("before"), "{:?}", bad[0]);
    }

    #[test]
    fn mobiles_follow_libphonenumber_cn_metadata() {
        for ok in [
            "13123456789",
            "+86 139-1234-5678",
            "008617400123456",
            "8619912345678",
            "16212345678",
            "17012345678",
        ] {
            assert!(mobile_e164(ok).is_ok(), "{ok}");
        }
        for bad in [
            "1381234567",
            "12012345678",
            "14012345678",
            "15412345678",
            "17412345678",
            "17406123456",
            "16012345678",
            "+85291234567",
            "0755-12345678",
            "138x2345678",
            "",
        ] {
            assert!(mobile_e164(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn vin_check_digits_follow_iso_3779() {
        assert!(vin_ok("1M8GDM9AXKP042788").is_ok());
        assert!(vin_ok("11111111111111111").is_ok());
        assert!(vin_ok("1M8GDM9A1KP042788").is_err());
        assert!(vin_ok("1M8GDM9AXKP04278").is_err());
        assert!(vin_ok("IM8GDM9AXKP042788").is_err());
    }

    #[test]
    fn amounts_and_dates_refuse_what_they_cannot_read() {
        assert_eq!(yuan_to_fen("100"), Ok(10_000));
        assert_eq!(yuan_to_fen("0.05"), Ok(5));
        assert!(yuan_to_fen("1.005").is_err());
        assert!(yuan_to_fen("-3").is_err());
        assert!(parse_date("2026-02-30").is_err());
        assert!(parse_date("20260228").is_ok());
    }
}
