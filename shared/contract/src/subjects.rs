//! Subject and stream names. Subjects are `<service>.<entity>.<event>` for facts and
//! `<service>.cmd.<verb>` for commands, where `<service>` is the namespace the subject
//! lives in: the producer for facts, the executing service for commands. Each namespace
//! has one JetStream stream named after it.

/// Subject names without prefix. Use [`Subjects::subject`] to get the wire name.
pub mod subject {
    pub const CORE_POLICY_UPSERTED: &str = "core.policy.upserted";
    pub const CORE_POLICY_RENEWED: &str = "core.policy.renewed";
    pub const CORE_POLICY_CANCELLED: &str = "core.policy.cancelled";
    pub const CORE_QUOTE_ISSUED: &str = "core.quote.issued";

    pub const LISTS_CASE_OPENED: &str = "lists.case.opened";
    pub const LISTS_CASE_CLOSED: &str = "lists.case.closed";
    pub const LISTS_CASE_LAPSED: &str = "lists.case.lapsed";
    pub const LISTS_CASE_REOPENED: &str = "lists.case.reopened";
    pub const LISTS_CASE_CHANGED: &str = "lists.case.changed";
    pub const LISTS_CASE_BUCKET_CHANGED: &str = "lists.case.bucket_changed";
    pub const LISTS_LIST_ISSUED: &str = "lists.list.issued";
    pub const LISTS_QUOTE_ISSUED: &str = "lists.quote.issued";
    pub const LISTS_QUOTE_MISSING: &str = "lists.quote.missing";
    pub const LISTS_REVIEW_ISSUED: &str = "lists.review.issued";

    pub const ASSIGNMENT_OWNER_ASSIGNED: &str = "assignment.owner.assigned";
    pub const ASSIGNMENT_CASE_ROUTED: &str = "assignment.case.routed";
    pub const ASSIGNMENT_DISCOUNT_APPROVED: &str = "assignment.discount.approved";
    pub const ASSIGNMENT_REVIEW_ISSUED: &str = "assignment.review.issued";
    pub const ASSIGNMENT_CMD_CONFIRM_OWNER: &str = "assignment.cmd.confirm_owner";
    pub const ASSIGNMENT_CMD_ERASE_PERSONAL_DATA: &str = "assignment.cmd.erase_personal_data";
    pub const ASSIGNMENT_ERASURE_DONE: &str = "assignment.erasure.done";

    pub const SCHEDULER_CASE_SUPERVISOR_ALERT: &str = "scheduler.case.supervisor_alert";
    pub const SCHEDULER_CMD_ERASE_PERSONAL_DATA: &str = "scheduler.cmd.erase_personal_data";
    pub const SCHEDULER_ERASURE_DONE: &str = "scheduler.erasure.done";

    pub const DISPATCH_CMD_SEND_SMS: &str = "dispatch.cmd.send_sms";
    pub const DISPATCH_CMD_CREATE_PHONE_TASK: &str = "dispatch.cmd.create_phone_task";
    pub const DISPATCH_TASK_COMPLETED: &str = "dispatch.task.completed";
    pub const DISPATCH_SMS_SENT: &str = "dispatch.sms.sent";
    pub const DISPATCH_SMS_DELIVERED: &str = "dispatch.sms.delivered";
    pub const DISPATCH_SMS_FAILED: &str = "dispatch.sms.failed";
    pub const DISPATCH_SMS_OPTED_OUT: &str = "dispatch.sms.opted_out";
    pub const DISPATCH_CMD_ERASE_PERSONAL_DATA: &str = "dispatch.cmd.erase_personal_data";
    pub const DISPATCH_ERASURE_DONE: &str = "dispatch.erasure.done";
}

/// One JetStream stream per subject namespace.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Stream {
    Core,
    Lists,
    Assignment,
    Scheduler,
    Dispatch,
}

impl Stream {
    pub const ALL: [Stream; 5] = [
        Stream::Core,
        Stream::Lists,
        Stream::Assignment,
        Stream::Scheduler,
        Stream::Dispatch,
    ];

    /// The namespace (first subject token) this stream captures.
    pub fn namespace(self) -> &'static str {
        match self {
            Stream::Core => "core",
            Stream::Lists => "lists",
            Stream::Assignment => "assignment",
            Stream::Scheduler => "scheduler",
            Stream::Dispatch => "dispatch",
        }
    }
}

/// Wire names for one deployment: every subject and stream carries the prefix.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Subjects {
    prefix: String,
}

impl Subjects {
    /// `prefix` is empty for production, or a token such as `t3f9a` for a test. It must
    /// be a single subject token made of ASCII letters, digits, `-` or `_`.
    pub fn new(prefix: &str) -> Result<Self, InvalidPrefix> {
        let valid = prefix
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
        if !valid {
            return Err(InvalidPrefix(prefix.to_owned()));
        }
        Ok(Self {
            prefix: prefix.to_owned(),
        })
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The wire subject for a name from [`subject`].
    pub fn subject(&self, name: &str) -> String {
        if self.prefix.is_empty() {
            name.to_owned()
        } else {
            format!("{}.{name}", self.prefix)
        }
    }

    /// The name without the prefix, if `wire` carries this deployment's prefix.
    pub fn strip<'a>(&self, wire: &'a str) -> Option<&'a str> {
        if self.prefix.is_empty() {
            Some(wire)
        } else {
            wire.strip_prefix(self.prefix.as_str())?.strip_prefix('.')
        }
    }

    /// The JetStream stream name, e.g. `LISTS` or `T3F9A_LISTS`.
    pub fn stream(&self, stream: Stream) -> String {
        let base = stream.namespace().to_ascii_uppercase();
        if self.prefix.is_empty() {
            base
        } else {
            format!(
                "{}_{base}",
                self.prefix.to_ascii_uppercase().replace('-', "_")
            )
        }
    }

    /// The subject filter a stream captures, e.g. `lists.>`.
    pub fn stream_filter(&self, stream: Stream) -> String {
        self.subject(&format!("{}.>", stream.namespace()))
    }
}

#[derive(Debug, PartialEq, Eq)]
pub struct InvalidPrefix(pub String);

impl std::fmt::Display for InvalidPrefix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "subject prefix {:?} must be one token of ASCII letters, digits, '-' or '_'",
            self.0
        )
    }
}

impl std::error::Error for InvalidPrefix {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_applies_to_subjects_and_streams() {
        let s = Subjects::new("t1a").expect("valid prefix");
        assert_eq!(
            s.subject(subject::LISTS_CASE_OPENED),
            "t1a.lists.case.opened"
        );
        assert_eq!(s.stream(Stream::Lists), "T1A_LISTS");
        assert_eq!(s.stream_filter(Stream::Dispatch), "t1a.dispatch.>");
        assert_eq!(s.strip("t1a.lists.case.opened"), Some("lists.case.opened"));
        assert_eq!(s.strip("other.lists.case.opened"), None);
    }

    #[test]
    fn empty_prefix_is_production() {
        let s = Subjects::default();
        assert_eq!(
            s.subject(subject::DISPATCH_CMD_SEND_SMS),
            "dispatch.cmd.send_sms"
        );
        assert_eq!(s.stream(Stream::Core), "CORE");
    }

    #[test]
    fn prefix_with_dot_is_refused() {
        assert!(Subjects::new("a.b").is_err());
    }
}
