-- Discounts climb a ladder (issue 18): what an owner may give alone, and above it the
-- approvals a city configures (the handbook's example: 8% the seller, 10% plus a rescue
-- card the manager, 13-14% the general manager). Each request records its steps and
-- every decision; an approved one is published for lists to apply to the quote.
CREATE TABLE assignment.discount_ladders (
    city_code   text PRIMARY KEY,
    ladder      jsonb NOT NULL,
    updated_by  text NOT NULL,
    updated_at  timestamptz NOT NULL
);

CREATE TABLE assignment.discount_requests (
    request_id    uuid PRIMARY KEY,
    case_id       uuid NOT NULL REFERENCES assignment.cases (case_id),
    policy_no     text NOT NULL,
    city_code     text NOT NULL,
    branch_code   text NOT NULL,
    percent       integer NOT NULL CHECK (percent BETWEEN 1 AND 100),
    extra         text NOT NULL,
    reason        text NOT NULL,
    requested_by  text NOT NULL,
    -- The approvers above the owner it needs, in order (["supervisor", "city_admin"]).
    steps         jsonb NOT NULL,
    -- The step awaiting a decision (an index into steps).
    step          integer NOT NULL DEFAULT 0,
    step_due_at   timestamptz,
    state         text NOT NULL CHECK (state IN ('pending', 'approved', 'declined', 'expired')),
    requested_at  timestamptz NOT NULL,
    decided_at    timestamptz
);
-- One request awaiting a decision per case.
CREATE UNIQUE INDEX discount_requests_one_pending ON assignment.discount_requests (case_id)
    WHERE state = 'pending';
CREATE INDEX discount_requests_due ON assignment.discount_requests (step_due_at)
    WHERE state = 'pending';

CREATE TABLE assignment.discount_decisions (
    request_id  uuid NOT NULL REFERENCES assignment.discount_requests (request_id),
    step        integer NOT NULL,
    approver    text NOT NULL,
    decision    text NOT NULL CHECK (decision IN ('approved', 'declined', 'expired')),
    decided_by  text NOT NULL,
    reason      text NOT NULL DEFAULT '',
    decided_at  timestamptz NOT NULL,
    PRIMARY KEY (request_id, step)
);
