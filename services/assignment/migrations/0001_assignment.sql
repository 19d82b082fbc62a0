-- The assignment service's schema: who owns each renewal case, who keeps the credit,
-- and every change of owner.
CREATE TABLE assignment.cases (
    case_id         uuid PRIMARY KEY,
    policy_no       text NOT NULL UNIQUE,
    city_code       text NOT NULL,
    branch_code     text NOT NULL,
    -- The originating agent: credited with the renewal for life.
    credited_agent  text NOT NULL,
    owner_agent     text,
    expiry_date     date NOT NULL,
    important       boolean NOT NULL,
    group_policy    boolean NOT NULL,
    state           text NOT NULL DEFAULT 'open' CHECK (state IN ('open', 'closed')),
    opened_at       timestamptz NOT NULL,
    closed_at       timestamptz
);

CREATE TABLE assignment.owner_history (
    id              bigserial PRIMARY KEY,
    case_id         uuid NOT NULL REFERENCES assignment.cases (case_id),
    owner_agent     text NOT NULL,
    previous_owner  text,
    reason          text NOT NULL,
    assigned_by     text NOT NULL,
    assigned_at     timestamptz NOT NULL
);
CREATE INDEX owner_history_by_case ON assignment.owner_history (case_id, id);

-- A case closed before its opening arrived (messages can be reordered on redelivery).
CREATE TABLE assignment.closed_early (
    case_id    uuid PRIMARY KEY,
    closed_at  timestamptz NOT NULL
);

-- outbox and inbox: created by the platform's own migration (shared/platform/migrations).
