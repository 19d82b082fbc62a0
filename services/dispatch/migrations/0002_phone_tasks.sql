-- Phone tasks: the queue the call center and the owners pull from, with leases.
-- A task is 'open' (waiting, from available_at), 'leased' (to leased_by until
-- available_at; once that passes it can be leased again), 'completed' (with its
-- outcome), 'withdrawn' (its case closed) or 'dead' (too many leases without an outcome).
CREATE TABLE dispatch.phone_tasks (
    id                 uuid PRIMARY KEY,          -- the CreatePhoneTask command id
    case_id            uuid NOT NULL,
    policy_no          text NOT NULL,
    stage              text NOT NULL,
    queue              text NOT NULL CHECK (queue IN ('owner', 'branch', 'campaign', 'hq')),
    owner_agent        text NOT NULL DEFAULT '',
    -- Made for the case owner: follows the case to a new owner (or to the branch
    -- while the case has none).
    owner_task         boolean NOT NULL DEFAULT false,
    branch_code        text NOT NULL,
    city_code          text NOT NULL,
    promotion          text NOT NULL DEFAULT '',
    customer_name      text NOT NULL,
    mobile             text NOT NULL,
    plate              text NOT NULL,
    expiry_date        text NOT NULL,
    time_zone          text NOT NULL,
    -- Priority: lower is more urgent.
    days_to_expiry     integer NOT NULL,
    state              text NOT NULL DEFAULT 'open'
                       CHECK (state IN ('open', 'leased', 'completed', 'withdrawn', 'dead')),
    -- open: when it may be leased; leased: when the lease runs out.
    available_at       timestamptz NOT NULL,
    lease_token        uuid,
    leased_by          text,
    leases             integer NOT NULL DEFAULT 0,
    outcome            text,
    outcome_detail     jsonb,
    completed_at       timestamptz,
    last_error         text,
    created_at         timestamptz NOT NULL,
    traceparent        text
);
CREATE INDEX phone_tasks_ready ON dispatch.phone_tasks (queue, days_to_expiry, available_at)
    WHERE state IN ('open', 'leased');
-- Leases running out (dead letter after the last one).
CREATE INDEX phone_tasks_leases ON dispatch.phone_tasks (available_at) WHERE state = 'leased';
CREATE INDEX phone_tasks_by_case ON dispatch.phone_tasks (case_id);

-- The latest owner of each case as assignment announced it, so a task made from an
-- older command goes to the owner of the moment.
CREATE TABLE dispatch.case_owners (
    case_id        uuid PRIMARY KEY,
    owner_agent    text NOT NULL,
    branch_code    text NOT NULL,
    assigned_at    timestamptz NOT NULL
);

-- Numbers an agent found wrong: the customer's contact data is to be corrected.
CREATE TABLE dispatch.contact_corrections (
    task_id        uuid PRIMARY KEY,
    case_id        uuid NOT NULL,
    policy_no      text NOT NULL,
    mobile         text NOT NULL,
    reported_by    text NOT NULL,
    reported_at    timestamptz NOT NULL
);

-- Replies the vendor pushed (SmsUp); kept once each.
CREATE TABLE dispatch.sms_replies (
    id             bigserial PRIMARY KEY,
    mobile         text NOT NULL,
    content        text NOT NULL,
    send_time      text NOT NULL,
    sequence_id    text NOT NULL,
    opt_out        boolean NOT NULL,
    received_at    timestamptz NOT NULL,
    UNIQUE (mobile, send_time, sequence_id, content)
);
