-- The scheduler's schema: its copy of each case (what a reminder needs), the case's
-- owner, and the durable timers.
CREATE TABLE scheduler.cases (
    case_id                uuid PRIMARY KEY,
    policy_no              text NOT NULL,
    expiry_date            date,
    effective_expiry_date  date,
    time_zone              text,
    customer_name          text,
    mobile                 text,
    plate                  text,
    state                  text NOT NULL DEFAULT 'open' CHECK (state IN ('open', 'closed')),
    closed_reason          text,
    closed_at              timestamptz
);

CREATE TABLE scheduler.owners (
    case_id      uuid PRIMARY KEY,
    owner_agent  text NOT NULL,
    assigned_at  timestamptz NOT NULL
);

CREATE TABLE scheduler.timers (
    id          uuid PRIMARY KEY,
    case_id     uuid NOT NULL REFERENCES scheduler.cases (case_id),
    stage       text NOT NULL,
    action      text NOT NULL CHECK (action IN ('sms')),
    template    text NOT NULL,
    due_at      timestamptz NOT NULL,
    state       text NOT NULL DEFAULT 'pending'
                CHECK (state IN ('pending', 'fired', 'cancelled', 'skipped')),
    fired_at    timestamptz,
    note        text,
    -- The trace that planned the timer; its command continues it.
    traceparent text,
    UNIQUE (case_id, stage)
);
CREATE INDEX timers_pending_by_due ON scheduler.timers (due_at) WHERE state = 'pending';

-- outbox and inbox: created by the platform's own migration (shared/platform/migrations).
