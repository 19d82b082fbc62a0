//! Templates per stage. The vendor holds the approved text under a template code; we
//! send the code and its parameters. Every marketing text ends with the opt-out line;
//! whether a template is marketing is the contract's (`renewal_contract::sms_templates`).
//! A reminder of a case with a quote goes under its priced code, stating the premium,
//! its change against last year and the offer (`crate::terms`); without a quote it goes
//! under the plain one, on time.

use renewal_contract::scheduler::SendSms;

use crate::terms::Terms;

pub const OPT_OUT: &str = "回TD退订";

pub struct Template {
    pub key: &'static str,
    /// The code the vendor approved the text under.
    pub code: &'static str,
    /// The approved text, for our records and the mock vendor.
    pub text: &'static str,
    /// The code and text stating the renewal terms (`${premium}`, `${change}`,
    /// `${promotion}`), for a case with a quote.
    pub priced: Option<(&'static str, &'static str)>,
}

impl Template {
    /// The code to send with these parameters: the priced one when they carry a premium.
    pub fn code_for(&self, params: &serde_json::Value) -> &'static str {
        match self.priced {
            Some((code, _)) if params.get("premium").is_some() => code,
            _ => self.code,
        }
    }
}

/// The approved text under a code (plain or priced).
pub fn text_of(code: &str) -> Option<&'static str> {
    TEMPLATES.iter().find_map(|t| match t.priced {
        _ if t.code == code => Some(t.text),
        Some((priced, text)) if priced == code => Some(text),
        _ => None,
    })
}

/// The text as the customer reads it: every `${key}` replaced by its parameter.
pub fn render(text: &str, params: &serde_json::Value) -> String {
    let mut out = text.to_owned();
    if let Some(map) = params.as_object() {
        for (key, value) in map {
            let value = value
                .as_str()
                .map_or_else(|| value.to_string(), str::to_owned);
            out = out.replace(&format!("${{{key}}}"), &value);
        }
    }
    out
}

pub const TEMPLATES: &[Template] = &[
    Template {
        key: "renewal_friendly",
        code: "SMS_RENEWAL_T60",
        text: "尊敬的${name}，您的爱车${plate}的车险将于${expiry}到期，请及时续保，如已续保请忽略。回TD退订",
        priced: Some((
            "SMS_RENEWAL_T60_TERMS",
            "尊敬的${name}，您的爱车${plate}的车险将于${expiry}到期，续保保费${premium}元，${change}${promotion}，请及时续保，如已续保请忽略。回TD退订",
        )),
    },
    Template {
        key: "renewal_campaign",
        code: "SMS_RENEWAL_T15",
        text: "尊敬的${name}，您的爱车${plate}的车险将于${expiry}到期，现在续保可享本期优惠，我们的客服将与您联系。回TD退订",
        priced: Some((
            "SMS_RENEWAL_T15_TERMS",
            "尊敬的${name}，您的爱车${plate}的车险将于${expiry}到期，续保保费${premium}元，${change}${promotion}，我们的客服将与您联系。回TD退订",
        )),
    },
    Template {
        key: "renewal_urgent",
        code: "SMS_RENEWAL_T7",
        text: "尊敬的${name}，您的爱车${plate}的车险${expiry}即将到期，脱保期间出险将无法理赔，请尽快续保。回TD退订",
        priced: Some((
            "SMS_RENEWAL_T7_TERMS",
            "尊敬的${name}，您的爱车${plate}的车险${expiry}即将到期，续保保费${premium}元，${change}${promotion}，脱保期间出险将无法理赔，请尽快续保。回TD退订",
        )),
    },
    Template {
        key: "renewal_confirmed",
        code: "SMS_RENEWAL_DONE",
        text: "尊敬的${name}，您的爱车${plate}的车险已续保成功，新保单将于${expiry}起生效。",
        priced: None,
    },
    Template {
        key: "lapse_rescue",
        code: "SMS_LAPSE_RESCUE",
        text: "尊敬的${name}，您的爱车${plate}的车险已于${expiry}到期，为保障出行安全，请尽快续保。回TD退订",
        priced: Some((
            "SMS_LAPSE_RESCUE_TERMS",
            "尊敬的${name}，您的爱车${plate}的车险已于${expiry}到期，续保保费${premium}元，${change}${promotion}，为保障出行安全，请尽快续保。回TD退订",
        )),
    },
];

pub fn find(key: &str) -> Option<&'static Template> {
    TEMPLATES.iter().find(|t| t.key == key)
}

/// The template parameters for a command, with the case's terms where its template has
/// a priced text; an unknown template is refused.
pub fn params(command: &SendSms, terms: Option<&Terms>) -> Result<serde_json::Value, String> {
    let Some(template) = find(&command.template) else {
        return Err(format!("unknown SMS template {:?}", command.template));
    };
    let mut params = serde_json::json!({
        "name": command.customer_name,
        "plate": command.plate,
        "expiry": command.expiry_date,
    });
    if let (Some(terms), Some(_)) = (terms, template.priced) {
        for (key, value) in terms.sms_params() {
            params[key] = value.into();
        }
    }
    Ok(params)
}

#[cfg(test)]
mod tests {
    use renewal_contract::sms_templates::{self, Kind};

    #[test]
    fn a_quoted_reminder_reads_with_its_terms_and_an_unquoted_one_without() {
        let command = super::SendSms {
            template: "renewal_friendly".into(),
            customer_name: "王芳".into(),
            plate: "沪AD12345".into(),
            expiry_date: "2027-02-14".into(),
            ..Default::default()
        };
        let terms = crate::terms::Terms {
            quote_id: "Q1".into(),
            premium_fen: 420_000,
            last_premium_fen: 452_000,
            change_fen: -32_000,
            claim_free_years: 2,
            promotion: "赠送道路救援卡".into(),
            valid_until: chrono::NaiveDate::from_ymd_opt(2027, 2, 14).expect("date"),
            discount_percent: 0,
            discount_extra: String::new(),
        };
        let t = super::find("renewal_friendly").expect("template");
        let priced = super::params(&command, Some(&terms)).expect("params");
        let code = t.code_for(&priced);
        assert_eq!(code, "SMS_RENEWAL_T60_TERMS");
        assert_eq!(
            super::render(super::text_of(code).expect("text"), &priced),
            "尊敬的王芳，您的爱车沪AD12345的车险将于2027-02-14到期，续保保费4200.00元，比去年少320.00元，赠送道路救援卡，请及时续保，如已续保请忽略。回TD退订"
        );
        let plain = super::params(&command, None).expect("params");
        assert_eq!(t.code_for(&plain), "SMS_RENEWAL_T60");
        let confirmed = super::SendSms {
            template: "renewal_confirmed".into(),
            ..command
        };
        let params = super::params(&confirmed, Some(&terms)).expect("params");
        assert!(params.get("premium").is_none(), "a notice states no price");
    }

    #[test]
    fn every_template_is_in_the_catalog_and_only_marketing_offers_the_opt_out() {
        for t in super::TEMPLATES {
            let kind = sms_templates::kind(t.key);
            assert!(kind.is_some(), "{} is not in the contract's catalog", t.key);
            assert_eq!(
                kind == Some(Kind::Marketing),
                t.text.ends_with(super::OPT_OUT),
                "{}: a marketing text ends with the opt-out line, a notice does not",
                t.key
            );
            if let Some((code, text)) = t.priced {
                assert!(text.ends_with(super::OPT_OUT) == t.text.ends_with(super::OPT_OUT));
                assert!(
                    text.contains("${premium}") && text.contains("${change}"),
                    "{code}"
                );
                assert_eq!(super::text_of(code), Some(text));
            }
            assert_eq!(super::text_of(t.code), Some(t.text));
        }
        assert_eq!(super::TEMPLATES.len(), sms_templates::CATALOG.len());
    }

    #[test]
    fn every_sms_template_of_the_default_plan_exists() {
        let plan: serde_json::Value =
            serde_json::from_str(include_str!("../../../scheduler/data/default-plan.json"))
                .expect("the default plan is JSON");
        let mut checked = 0;
        for stage in plan["stages"].as_array().expect("stages") {
            if let Some(key) = stage["template"].as_str() {
                assert!(super::find(key).is_some(), "no SMS template {key}");
                checked += 1;
            }
        }
        assert!(checked >= 3, "the default plan sends at least three SMS");
    }
}
