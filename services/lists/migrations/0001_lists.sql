-- The lists service's schema: the portfolio as the rest of the system sees it, and the
-- renewal cases opened from it. (Personal data is encrypted at rest from issue 3 on.)
CREATE TABLE lists.policies (
    policy_no       text PRIMARY KEY,
    version         bigint NOT NULL,
    customer_name   text NOT NULL,
    mobile          text NOT NULL,
    id_number       text NOT NULL,
    plate           text NOT NULL,
    vin             text NOT NULL,
    city_code       text NOT NULL,
    branch_code     text NOT NULL,
    agent_code      text NOT NULL,
    channel         text NOT NULL,
    category        text NOT NULL,
    start_date      date NOT NULL,
    end_date        date NOT NULL,
    premium_fen     bigint NOT NULL,
    important       boolean NOT NULL,
    group_policy    boolean NOT NULL,
    status          text NOT NULL DEFAULT 'active'
                    CHECK (status IN ('active', 'renewed', 'lapsed', 'cancelled')),
    renewed_to      text,
    updated_at      timestamptz NOT NULL
);
CREATE INDEX policies_active_by_end ON lists.policies (end_date) WHERE status = 'active';

CREATE TABLE lists.cases (
    case_id               uuid PRIMARY KEY,
    policy_no             text NOT NULL UNIQUE REFERENCES lists.policies (policy_no),
    expiry_date           date NOT NULL,
    effective_expiry_date date NOT NULL,
    state                 text NOT NULL DEFAULT 'open'
                          CHECK (state IN ('open', 'renewed', 'lapsed', 'cancelled')),
    opened_at             timestamptz NOT NULL,
    closed_at             timestamptz,
    new_policy_no         text
);
CREATE INDEX cases_open_by_expiry ON lists.cases (expiry_date) WHERE state = 'open';

-- One row per business day the daily run has done; the insert is the run's lock.
CREATE TABLE lists.daily_runs (
    run_date      date PRIMARY KEY,
    ran_at        timestamptz NOT NULL,
    cases_opened  integer NOT NULL DEFAULT 0,
    cases_lapsed  integer NOT NULL DEFAULT 0
);

-- outbox and inbox: created by the platform's own migration (shared/platform/migrations).
