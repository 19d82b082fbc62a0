//! Dispatch's OpenAPI document, generated from its types: the phone-task pull API the
//! call center and the owners use (bearer tokens), and the SMS vendor's webhook (the
//! secret path token; answers in the vendor's own format). The task methods
//! (`{id}:heartbeat`, `:complete`, `:release`, `:requeue`) are served by one handler
//! and documented here, one operation each; so are the operations console's reads (the
//! queues, the dead tasks, a case's contacts, the failed and dead SMS, the opt-outs) and
//! an SMS's `:resend`.

use renewal_platform::openapi::BearerTokens;
use renewal_platform::openapi::{ProblemDocument, Refusals};
use utoipa::{OpenApi, ToSchema};

use crate::history::CaseContacts;
use crate::phone::leases::{HeartbeatRequest, LeaseRequest, ReleaseRequest, TaskView};
use crate::phone::outcomes::CompleteRequest;
use crate::phone::queues::{DeadTask, QueuesView};
use crate::sms::failures::{FailedSms, Resent};
use crate::sms::opt_outs::OptOut;
use crate::sms::receipts::SmsReport;
use crate::sms::replies::SmsUp;
use renewal_platform::paging::{Page, PageQuery};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "renewal dispatch",
        description = "The phone-task pull API (call center and owners) and the SMS vendor's webhook (delivery receipts and replies)."
    ),
    paths(lease, heartbeat, complete, release, requeue, phone_queues, dead_tasks, case_contacts,
          failed_sms, resend_sms, opt_outs, receipts, replies, audit, dead_letters, replay_dead_letter),
    components(schemas(ProblemDocument)),
    modifiers(&BearerTokens),
    tags((name = "phone tasks"), (name = "operations"), (name = "cases"), (name = "sms vendor"),
         (name = "audit"), (name = "dead letters"))
)]
pub struct ApiDoc;

pub fn document() -> utoipa::openapi::OpenApi {
    ApiDoc::openapi()
}

#[derive(ToSchema)]
#[allow(dead_code)]
struct Leased {
    /// Most urgent first; possibly none.
    tasks: Vec<TaskView>,
}

#[derive(ToSchema)]
#[allow(dead_code)]
struct TaskState {
    id: uuid::Uuid,
    /// completed, open or dead.
    state: Option<String>,
    lease_expires_at: Option<chrono::DateTime<chrono::Utc>>,
    available_at: Option<chrono::DateTime<chrono::Utc>>,
    outcome: Option<String>,
}

/// The vendor's answer format.
#[derive(ToSchema)]
#[allow(dead_code)]
struct VendorAnswer {
    /// 0: taken.
    code: i32,
    msg: String,
}

/// Lease up to `max` tasks of a queue, most urgent first, each with a fresh token.
#[utoipa::path(post, path = "/v1/phone-tasks:lease", tag = "phone tasks",
    operation_id = "lease_tasks", request_body = LeaseRequest,
    responses(
        (status = 200, body = Leased),
        (status = 400, content_type = "application/problem+json", body = ProblemDocument),
        Refusals,
        (status = 429, description = "Too many leases held or asked for", content_type = "application/problem+json", body = ProblemDocument),
        (status = 503, content_type = "application/problem+json", body = ProblemDocument)))]
#[allow(dead_code)]
fn lease() {}

/// Extend a lease.
#[utoipa::path(post, path = "/v1/phone-tasks/{id}:heartbeat", tag = "phone tasks",
    operation_id = "heartbeat_task", params(("id" = uuid::Uuid, Path)),
    request_body = HeartbeatRequest,
    responses(
        (status = 200, body = TaskState),
        (status = 400, content_type = "application/problem+json", body = ProblemDocument),
        Refusals,
        (status = 404, content_type = "application/problem+json", body = ProblemDocument),
        (status = 409, description = "The token is stale or foreign", content_type = "application/problem+json", body = ProblemDocument)))]
#[allow(dead_code)]
fn heartbeat() {}

/// Complete a task with the call's outcome (published as `dispatch.task.completed`).
#[utoipa::path(post, path = "/v1/phone-tasks/{id}:complete", tag = "phone tasks",
    operation_id = "complete_task", params(("id" = uuid::Uuid, Path)),
    request_body = CompleteRequest,
    responses(
        (status = 200, body = TaskState),
        (status = 400, content_type = "application/problem+json", body = ProblemDocument),
        Refusals,
        (status = 404, content_type = "application/problem+json", body = ProblemDocument),
        (status = 409, content_type = "application/problem+json", body = ProblemDocument)))]
#[allow(dead_code)]
fn complete() {}

/// Give a task back without an outcome, optionally until `retry_at`.
#[utoipa::path(post, path = "/v1/phone-tasks/{id}:release", tag = "phone tasks",
    operation_id = "release_task", params(("id" = uuid::Uuid, Path)),
    request_body = ReleaseRequest,
    responses(
        (status = 200, body = TaskState),
        (status = 400, content_type = "application/problem+json", body = ProblemDocument),
        Refusals,
        (status = 404, content_type = "application/problem+json", body = ProblemDocument),
        (status = 409, content_type = "application/problem+json", body = ProblemDocument)))]
#[allow(dead_code)]
fn release() {}

/// What a requeue did.
#[derive(ToSchema)]
#[allow(dead_code)]
struct Requeued {
    id: uuid::Uuid,
    /// open.
    state: String,
    /// 0: the task has its 5 leases again.
    leases: i32,
    available_at: chrono::DateTime<chrono::Utc>,
}

/// Put a dead task back in its queue, available now, with its leases again (`hq_admin`;
/// audited). 409 `not_dead` for a task that is not dead (a second requeue included);
/// 409 `case_stopped` for one whose case no longer wants calls (closed, renewed or lost
/// on a later call, a wrong number not corrected yet).
#[utoipa::path(post, path = "/v1/phone-tasks/{id}:requeue", tag = "operations",
    operation_id = "requeue_task", params(("id" = uuid::Uuid, Path)),
    responses(
        (status = 200, body = Requeued),
        Refusals,
        (status = 404, content_type = "application/problem+json", body = ProblemDocument),
        (status = 409, description = "Not dead, or its case wants no more calls", content_type = "application/problem+json", body = ProblemDocument)))]
#[allow(dead_code)]
fn requeue() {}

/// Each queue's open, leased and dead tasks and its oldest open task (`hq_admin`: every
/// city, or `city`; `city_admin`: their city, naming another 403). No personal data.
#[utoipa::path(get, path = "/v1/phone-queues", tag = "operations",
    operation_id = "phone_queues",
    params(("city" = Option<String>, Query, description = "Only this city's tasks")),
    responses(
        (status = 200, body = QueuesView),
        (status = 400, content_type = "application/problem+json", body = ProblemDocument),
        Refusals))]
#[allow(dead_code)]
fn phone_queues() {}

/// The dead tasks, oldest first, paged (`hq_admin`). No personal data.
#[utoipa::path(get, path = "/v1/phone-tasks", tag = "operations",
    operation_id = "dead_tasks",
    params(("state" = Option<String>, Query, description = "dead (the default and the only state listed)"),
           PageQuery),
    responses(
        (status = 200, body = Page<DeadTask>),
        (status = 400, content_type = "application/problem+json", body = ProblemDocument),
        Refusals))]
#[allow(dead_code)]
fn dead_tasks() {}

/// A case's SMS with their receipts and its phone tasks with their outcomes, oldest
/// first (the case's owner; supervisor, branch_admin of its branch; city_admin of its
/// city; hq_admin). No names, mobiles or plates.
#[utoipa::path(get, path = "/v1/cases/{policy_no}/contacts", tag = "cases",
    operation_id = "case_contacts", params(("policy_no" = String, Path)),
    responses(
        (status = 200, body = CaseContacts),
        (status = 404, description = "No case for the policy", content_type = "application/problem+json", body = ProblemDocument),
        Refusals))]
#[allow(dead_code)]
fn case_contacts() {}

/// The SMS that did not reach their customer, oldest first, paged (`hq_admin`): failed
/// (refused by the vendor, or its receipt said so) or dead (the vendor unreachable for
/// five attempts). The number masked; never the name, plate or parameters.
#[utoipa::path(get, path = "/v1/sms", tag = "operations",
    operation_id = "failed_sms",
    params(("state" = String, Query, description = "failed or dead"), PageQuery),
    responses(
        (status = 200, body = Page<FailedSms>),
        (status = 400, content_type = "application/problem+json", body = ProblemDocument),
        Refusals))]
#[allow(dead_code)]
fn failed_sms() {}

/// Send a failed or dead SMS again (`hq_admin`; audited): a new message with its own
/// id (the vendor's OutId), queued now, to the case's current number. The sender still
/// withdraws it for a closed case, suppresses a reminder to an opted-out number and
/// holds it until the morning at night. Asked again, it sends nothing more and answers
/// where the resend got to. 409 `not_resendable` for any other state, `case_stopped`
/// for a case that wants no more contacts (closed, erased, renewed or lost on a call, a
/// wrong number not corrected), `opted_out` for a reminder to a number that opted out,
/// `unreadable` for a number that does not open.
#[utoipa::path(post, path = "/v1/sms/{id}:resend", tag = "operations",
    operation_id = "resend_sms", params(("id" = uuid::Uuid, Path)),
    responses(
        (status = 200, body = Resent),
        (status = 400, content_type = "application/problem+json", body = ProblemDocument),
        Refusals,
        (status = 404, content_type = "application/problem+json", body = ProblemDocument),
        (status = 409, description = "Not failed or dead, its case wants no more contacts, or the number opted out", content_type = "application/problem+json", body = ProblemDocument)))]
#[allow(dead_code)]
fn resend_sms() {}

/// The numbers that opted out of reminders, newest first, masked, paged (`hq_admin`).
#[utoipa::path(get, path = "/v1/opt-outs", tag = "operations",
    operation_id = "opt_outs", params(PageQuery),
    responses(
        (status = 200, body = Page<OptOut>),
        (status = 400, content_type = "application/problem+json", body = ProblemDocument),
        Refusals))]
#[allow(dead_code)]
fn opt_outs() {}

/// The vendor's delivery receipts (`SmsReport`), an array per push.
#[utoipa::path(post, path = "/v1/webhooks/sms/{token}/report", tag = "sms vendor",
    operation_id = "sms_receipts", security(()),
    params(("token" = String, Path, description = "The secret path token")),
    request_body = Vec<SmsReport>,
    responses(
        (status = 200, body = VendorAnswer),
        (status = 400, body = VendorAnswer),
        (status = 401, description = "Not one of our tokens", body = VendorAnswer),
        (status = 403, description = "A source the allow-list does not admit", body = VendorAnswer),
        (status = 503, body = VendorAnswer)))]
#[allow(dead_code)]
fn receipts() {}

/// The customers' replies (`SmsUp`); `TD`, `退订`, `STOP`, ... opt the number out.
#[utoipa::path(post, path = "/v1/webhooks/sms/{token}/up", tag = "sms vendor",
    operation_id = "sms_replies", security(()),
    params(("token" = String, Path, description = "The secret path token")),
    request_body = Vec<SmsUp>,
    responses(
        (status = 200, body = VendorAnswer),
        (status = 400, body = VendorAnswer),
        (status = 401, body = VendorAnswer),
        (status = 403, body = VendorAnswer),
        (status = 503, body = VendorAnswer)))]
#[allow(dead_code)]
fn replies() {}

/// Who called dispatch's API (`auditor`, `hq_admin`).
#[utoipa::path(get, path = "/v1/audit/dispatch", tag = "audit",
    params(renewal_platform::audit::AuditQuery),
    responses((status = 200, body = renewal_platform::openapi::AuditPage), Refusals))]
#[allow(dead_code)]
fn audit() {}

/// Messages dispatch gave up on (`hq_admin`), newest first; `waiting=false` shows the
/// replayed ones too. Never the payload.
#[utoipa::path(get, path = "/v1/dead-letters/dispatch", tag = "dead letters",
    params(renewal_platform::dead_letters::DeadLetterQuery),
    responses((status = 200, body = renewal_platform::openapi::DeadLetterPage), Refusals))]
#[allow(dead_code)]
fn dead_letters() {}

/// Replays a dead letter (`hq_admin`): a consumer's message through the consumer that
/// failed it, in a transaction with its inbox (200; 409 if it fails again, kept with
/// the new reason); an event back in the relay's line (202).
#[utoipa::path(post, path = "/v1/dead-letters/dispatch/{id}:replay", tag = "dead letters",
    params(("id" = i64, Path, description = "the dead letter's id")),
    responses(
        (status = 200, body = renewal_platform::openapi::ReplayAnswer),
        (status = 202, body = renewal_platform::openapi::ReplayAnswer),
        (status = 404, body = ProblemDocument, content_type = "application/problem+json"),
        (status = 409, body = ProblemDocument, content_type = "application/problem+json"),
        Refusals))]
#[allow(dead_code)]
fn replay_dead_letter() {}
