//! The console's words in Chinese (the default) and English. Templates say
//! `{{ t("claims.title") }}`; the table below has every key in both languages, and a
//! test fails when a template uses a key it does not have. A small table of our own:
//! the console has a few hundred words, and a catalogue crate (fluent, gettext) would
//! add a build step for no gain.

use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Lang {
    #[default]
    Zh,
    En,
}

impl Lang {
    pub fn parse(text: &str) -> Option<Lang> {
        match text {
            "zh" | "zh-CN" => Some(Lang::Zh),
            "en" => Some(Lang::En),
            _ => None,
        }
    }

    pub fn code(self) -> &'static str {
        match self {
            Lang::Zh => "zh",
            Lang::En => "en",
        }
    }

    pub fn html(self) -> &'static str {
        match self {
            Lang::Zh => "zh-CN",
            Lang::En => "en",
        }
    }
}

/// Key, Chinese, English.
const WORDS: &[(&str, &str, &str)] = &[
    ("app.name", "车险续保工作台", "Renewal console"),
    ("app.lang", "English", "中文"),
    ("app.sign_out", "退出", "Sign out"),
    ("app.signed_in_as", "当前用户", "Signed in as"),
    ("app.search_case", "保单号", "Policy number"),
    ("app.open_case", "查看案件", "Open case"),
    ("app.none", "暂无", "None"),
    ("app.refused", "操作被拒绝", "Refused"),
    ("app.done", "已完成", "Done"),
    ("nav.season", "续保季", "Season"),
    ("nav.claims", "认领", "Claims"),
    ("nav.pool", "城市池", "Pool"),
    ("nav.research", "归属调查", "Research"),
    ("nav.workbench", "工作台", "Workbench"),
    ("nav.supervisor", "主管", "Supervisor"),
    ("nav.operations", "运营", "Operations"),
    ("nav.plans", "提醒计划", "Plans"),
    ("nav.organisation", "组织", "Organisation"),
    ("nav.case", "案件", "Case"),
    ("sign_in.title", "登录", "Sign in"),
    (
        "sign_in.lead",
        "使用公司账号登录续保工作台。",
        "Sign in with your company account.",
    ),
    ("sign_in.button", "登录", "Sign in"),
    ("sign_in.failed", "登录失败", "Sign-in failed"),
    ("dev.title", "开发环境登录", "Development sign-in"),
    (
        "dev.lead",
        "开发用身份签发者：选择角色和范围。",
        "The development issuer: pick a role and a scope.",
    ),
    ("dev.role", "角色", "Role"),
    ("dev.agent", "业务员代码", "Agent code"),
    ("dev.branch", "机构代码", "Branch code"),
    ("dev.city", "城市代码", "City code"),
    ("dev.issue", "签发并登录", "Issue and sign in"),
    ("season.title", "续保季概览", "The season"),
    ("season.funnel", "漏斗", "Funnel"),
    ("season.by_branch", "各机构续保率", "Renewal rate by branch"),
    (
        "season.by_category",
        "各客户类别续保率",
        "Renewal rate by customer category",
    ),
    ("season.trend", "每周趋势", "Weekly trend"),
    ("season.range", "到期日范围", "Expiring between"),
    ("col.key", "分组", "Group"),
    ("col.due", "应续", "Due"),
    ("col.open", "在办", "Open"),
    ("col.renewed", "已续保", "Renewed"),
    ("col.rescued", "脱保挽回", "Rescued"),
    ("col.lapsed", "脱保", "Lapsed"),
    ("col.rate", "续保率", "Renewal rate"),
    ("col.target", "目标", "Target"),
    ("col.gap", "差距", "Gap"),
    ("col.policy", "保单号", "Policy"),
    ("col.expiry", "到期日", "Expiry"),
    ("col.deadline", "认领截止", "Claim deadline"),
    ("col.time_left", "剩余时间", "Time left"),
    ("col.credited", "出单业务员", "Originator"),
    ("col.owner", "负责人", "Owner"),
    ("col.branch", "机构", "Branch"),
    ("col.city", "城市", "City"),
    ("col.phase", "阶段", "Phase"),
    ("col.state", "状态", "State"),
    ("col.stage", "环节", "Stage"),
    ("col.queue", "队列", "Queue"),
    ("col.when", "时间", "When"),
    ("col.outcome", "结果", "Outcome"),
    ("col.agent", "业务员", "Agent"),
    ("col.capacity", "容量", "Capacity"),
    ("col.active", "在岗", "Active"),
    ("col.calls", "通话", "Calls"),
    ("col.promises", "承诺", "Promises"),
    ("col.renewals", "续保", "Renewals"),
    ("col.depth", "待办", "Waiting"),
    ("col.leased", "处理中", "Leased"),
    ("col.dead", "失败", "Dead"),
    ("col.oldest", "最早", "Oldest"),
    ("col.leases", "领取次数", "Leases"),
    ("col.channel", "渠道", "Channel"),
    ("col.template", "模板", "Template"),
    ("col.receipt", "回执", "Receipt"),
    ("col.alert", "提醒", "Alert"),
    ("col.last_call", "最近通话", "Last call"),
    ("claims.title", "待认领案件", "Pending claims"),
    ("claims.branch", "机构", "Branch"),
    ("claims.owner", "指定负责人", "Owner"),
    ("claims.claim", "认领所选", "Claim selected"),
    ("claims.decline", "退回所选", "Decline selected"),
    ("claims.reason", "退回原因", "Reason to decline"),
    ("claims.claimed", "已认领", "Claimed"),
    ("claims.declined", "已退回", "Declined"),
    ("claims.select", "选择", "Select"),
    (
        "claims.pick_one",
        "请至少选择一个案件。",
        "Select at least one case.",
    ),
    ("pool.title", "城市池", "City pool"),
    ("research.title", "归属调查", "Origins to research"),
    ("research.resolve", "归属到该机构", "Route to this branch"),
    ("operations.replay", "重放", "Replay"),
    ("operations.replayed", "已重放", "Replayed"),
    ("case.title", "案件", "Case"),
    ("case.policy", "保单", "Policy"),
    ("case.customer", "客户", "Customer"),
    ("case.mobile", "手机", "Mobile"),
    ("case.plate", "车牌", "Plate"),
    ("case.history", "负责人与流转", "Owner and routing"),
    (
        "case.timeline",
        "联系计划",
        "Contacts planned, fired and cancelled",
    ),
    ("case.sms", "短信", "SMS"),
    ("case.tasks", "电话任务", "Phone tasks"),
    ("workbench.title", "工作台", "Workbench"),
    ("workbench.next", "下一个电话", "Next call"),
    (
        "workbench.empty",
        "现在没有需要拨打的电话。",
        "No call is waiting now.",
    ),
    ("workbench.customer", "客户", "Customer"),
    ("workbench.terms", "续保报价", "Renewal terms"),
    ("workbench.premium", "保费", "Premium"),
    ("workbench.change", "较去年", "Against last year"),
    ("workbench.promotion", "优惠", "Offer"),
    ("workbench.valid_until", "有效期至", "Valid until"),
    ("workbench.history", "之前的通话", "Earlier calls"),
    ("workbench.record", "记录结果", "Record the outcome"),
    ("workbench.promised_date", "承诺日期", "Promised date"),
    ("workbench.call_back_at", "回拨时间", "Call back at"),
    ("workbench.new_policy", "新保单号", "New policy number"),
    ("workbench.reason", "原因", "Reason"),
    ("workbench.save", "保存", "Save"),
    ("workbench.release", "放回队列", "Put back"),
    ("workbench.recorded", "结果已记录", "Outcome recorded"),
    ("workbench.lease_until", "锁定至", "Held until"),
    ("outcome.promised", "承诺续保", "Promised"),
    ("outcome.renewed", "已续保", "Renewed"),
    ("outcome.call_back", "稍后回拨", "Call back"),
    ("outcome.refused", "拒绝", "Refused"),
    ("outcome.unreachable", "无法接通", "Unreachable"),
    ("outcome.wrong_number", "号码错误", "Wrong number"),
    (
        "outcome.insured_elsewhere",
        "已在他处投保",
        "Insured elsewhere",
    ),
    ("outcome.vehicle_sold", "车辆已出售", "Vehicle sold"),
    (
        "outcome.cannot_renew_in_time",
        "无法按时续保（升级）",
        "Cannot renew in time (escalate)",
    ),
    (
        "outcome.high_risk_of_loss",
        "流失风险高（升级）",
        "High risk of loss (escalate)",
    ),
    ("supervisor.title", "主管视图", "Supervisor"),
    (
        "supervisor.alerts",
        "风险案件（T-10 提醒）",
        "At-risk cases (T-10 alerts)",
    ),
    ("supervisor.progress", "业务员进度", "Owners' progress"),
    ("operations.title", "运营", "Operations"),
    ("operations.queues", "电话任务队列", "Phone-task queues"),
    ("operations.dead", "失败的电话任务", "Dead phone tasks"),
    ("operations.requeue", "重新排队", "Requeue"),
    ("operations.requeued", "已重新排队", "Requeued"),
    ("operations.sms", "未送达的短信", "SMS not delivered"),
    ("operations.resend", "重发", "Resend"),
    (
        "operations.resent",
        "已重新排队发送",
        "Queued to send again",
    ),
    (
        "operations.opt_outs",
        "退订的号码",
        "Numbers that opted out",
    ),
    ("col.mobile", "手机号", "Mobile"),
    ("col.owned", "已有负责人", "Owned"),
    ("col.contacted", "已联系", "Contacted"),
    ("operations.import", "导入保单", "Import policies"),
    ("operations.upload", "上传 CSV", "Upload CSV"),
    ("operations.imported", "导入完成", "Imported"),
    ("operations.rows", "行", "rows"),
    ("operations.rejected", "被拒绝的行", "rows rejected"),
    (
        "operations.download",
        "下载被拒绝的行",
        "Download the rejected rows",
    ),
    ("operations.dead_letters", "死信", "Dead letters"),
    ("plans.title", "提醒计划", "Reminder plans"),
    ("plans.city", "城市", "City"),
    ("plans.preview", "预览差异", "Preview the difference"),
    ("plans.save", "保存计划", "Save the plan"),
    ("plans.saved", "计划已保存", "Plan saved"),
    ("plans.unchanged", "没有变化", "Nothing changed"),
    ("org.title", "组织", "Organisation"),
    ("org.deactivate", "停用", "Deactivate"),
    ("org.save_capacity", "保存容量", "Save capacity"),
    ("org.activate", "启用", "Activate"),
];

/// The word for `key` in `lang` (the key itself when the table lacks it).
pub fn text(lang: Lang, key: &str) -> &str {
    match WORDS.iter().find(|(k, _, _)| *k == key) {
        Some((_, zh, en)) => match lang {
            Lang::Zh => zh,
            Lang::En => en,
        },
        None => key,
    }
}

pub fn known(key: &str) -> bool {
    WORDS.iter().any(|(k, _, _)| *k == key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_key_is_once_in_the_table_with_both_languages() {
        let mut seen = std::collections::BTreeSet::new();
        for (key, zh, en) in WORDS {
            assert!(seen.insert(*key), "{key} twice");
            assert!(!zh.is_empty() && !en.is_empty(), "{key}");
        }
        assert_eq!(text(Lang::Zh, "nav.claims"), "认领");
        assert_eq!(text(Lang::En, "nav.claims"), "Claims");
        assert_eq!(text(Lang::En, "no.such.key"), "no.such.key");
    }
}
