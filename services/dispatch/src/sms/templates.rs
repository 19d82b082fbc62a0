//! Templates per stage. The vendor holds the approved text under a template code; we
//! send the code and its parameters. Every marketing text ends with the opt-out line;
//! whether a template is marketing is the contract's (`renewal_contract::sms_templates`).

use renewal_contract::scheduler::SendSms;

pub const OPT_OUT: &str = "回TD退订";

pub struct Template {
    pub key: &'static str,
    /// The code the vendor approved the text under.
    pub code: &'static str,
    /// The approved text, for our records and the mock vendor.
    pub text: &'static str,
}

pub const TEMPLATES: &[Template] = &[
    Template {
        key: "renewal_friendly",
        code: "SMS_RENEWAL_T60",
        text: "尊敬的${name}，您的爱车${plate}的车险将于${expiry}到期，请及时续保，如已续保请忽略。回TD退订",
    },
    Template {
        key: "renewal_campaign",
        code: "SMS_RENEWAL_T15",
        text: "尊敬的${name}，您的爱车${plate}的车险将于${expiry}到期，现在续保可享本期优惠，我们的客服将与您联系。回TD退订",
    },
    Template {
        key: "renewal_urgent",
        code: "SMS_RENEWAL_T7",
        text: "尊敬的${name}，您的爱车${plate}的车险${expiry}即将到期，脱保期间出险将无法理赔，请尽快续保。回TD退订",
    },
    Template {
        key: "renewal_confirmed",
        code: "SMS_RENEWAL_DONE",
        text: "尊敬的${name}，您的爱车${plate}的车险已续保成功，新保单将于${expiry}起生效。",
    },
    Template {
        key: "lapse_rescue",
        code: "SMS_LAPSE_RESCUE",
        text: "尊敬的${name}，您的爱车${plate}的车险已于${expiry}到期，为保障出行安全，请尽快续保。回TD退订",
    },
];

pub fn find(key: &str) -> Option<&'static Template> {
    TEMPLATES.iter().find(|t| t.key == key)
}

/// The template parameters for a command; an unknown template is refused.
pub fn params(command: &SendSms) -> Result<serde_json::Value, String> {
    if find(&command.template).is_none() {
        return Err(format!("unknown SMS template {:?}", command.template));
    }
    Ok(serde_json::json!({
        "name": command.customer_name,
        "plate": command.plate,
        "expiry": command.expiry_date,
    }))
}

#[cfg(test)]
mod tests {
    use renewal_contract::sms_templates::{self, Kind};

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
