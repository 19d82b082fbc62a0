-- The dispatch service's schema: SMS messages and what the vendor said about them,
-- opt-outs, and closed cases (never send for one).
CREATE TABLE dispatch.sms_messages (
    id                 uuid PRIMARY KEY,          -- the SendSms command id; OutId at the vendor
    case_id            uuid NOT NULL,
    policy_no          text NOT NULL,
    stage              text NOT NULL,
    template           text NOT NULL,
    mobile             text NOT NULL,
    template_params    jsonb NOT NULL,
    time_zone          text NOT NULL,
    marketing          boolean NOT NULL,
    state              text NOT NULL DEFAULT 'queued'
                       CHECK (state IN ('queued', 'sent', 'delivered', 'failed', 'dead', 'withdrawn', 'suppressed')),
    attempts           integer NOT NULL DEFAULT 0,
    next_attempt_at    timestamptz NOT NULL,
    vendor_message_id  text,
    vendor_code        text,
    last_error         text,
    created_at         timestamptz NOT NULL,
    sent_at            timestamptz,
    receipt_at         timestamptz,
    -- The trace of the command; sending and receipts continue it.
    traceparent        text
);
CREATE INDEX sms_queued_by_next_attempt ON dispatch.sms_messages (next_attempt_at) WHERE state = 'queued';
CREATE INDEX sms_by_vendor_id ON dispatch.sms_messages (vendor_message_id);
CREATE INDEX sms_by_case ON dispatch.sms_messages (case_id);

-- Every delivery receipt the vendor pushed, matched or not (kept for reconciliation).
CREATE TABLE dispatch.sms_receipts (
    id                 bigserial PRIMARY KEY,
    out_id             text NOT NULL,
    biz_id             text NOT NULL,
    success            boolean NOT NULL,
    err_code           text NOT NULL,
    report_time        text NOT NULL,
    message_id         uuid,
    received_at        timestamptz NOT NULL,
    UNIQUE (out_id, biz_id, err_code, report_time)
);

CREATE TABLE dispatch.opt_outs (
    mobile         text PRIMARY KEY,
    opted_out_at   timestamptz NOT NULL
);

CREATE TABLE dispatch.closed_cases (
    case_id     uuid PRIMARY KEY,
    closed_at   timestamptz NOT NULL
);

-- outbox and inbox: created by the platform's own migration (shared/platform/migrations).
