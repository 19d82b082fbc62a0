-- Issue 4: the organisation, branch claims with deadlines, the city research queue and
-- pool, automatic assignment, the T-5 second assignment and lifetime attribution.

CREATE TABLE assignment.branches (
    branch_code  text PRIMARY KEY,
    city_code    text NOT NULL,
    branch_name  text NOT NULL
);
CREATE INDEX branches_by_city ON assignment.branches (city_code);

-- Agents and supervisors. A name is staff data: shown to ops, never logged.
CREATE TABLE assignment.agents (
    agent_code   text PRIMARY KEY,
    branch_code  text NOT NULL REFERENCES assignment.branches (branch_code),
    city_code    text NOT NULL,
    agent_name   text NOT NULL,
    role         text NOT NULL CHECK (role IN ('agent', 'supervisor')),
    -- How many open cases the agent can own at once.
    capacity     integer NOT NULL CHECK (capacity >= 0),
    active       boolean NOT NULL,
    updated_at   timestamptz NOT NULL
);
CREATE INDEX agents_by_city ON assignment.agents (city_code) WHERE active;

-- Per-city deadlines; a city without a row uses the defaults.
CREATE TABLE assignment.city_settings (
    city_code       text PRIMARY KEY,
    claim_days      integer NOT NULL DEFAULT 5 CHECK (claim_days BETWEEN 1 AND 31),
    pool_days       integer NOT NULL DEFAULT 3 CHECK (pool_days BETWEEN 1 AND 31),
    -- The second assignment's steps (confirm, branch, city), each this many hours.
    step_hours      integer NOT NULL DEFAULT 24 CHECK (step_hours BETWEEN 1 AND 72)
);

-- Where each case is worked:
--   awaiting_list    opened, not on a list yet (no owner)
--   research         origin untraceable, in the city's research queue (no owner)
--   branch           on its branch's list, waiting to be claimed (no owner)
--   pool             open to every branch of the city (no owner)
--   owned            has an owner
--   confirming       T-5: the owner must confirm it can still be renewed
--   branch_reassign  the owner cannot renew it: any agent of the branch may take it
--   city_reassign    still not taken: any branch of the city may take it
--   hq               HQ's centralized outbound team owns it
--   city_company     an important customer or group policy escalated to the city company
ALTER TABLE assignment.cases
    ADD COLUMN phase text NOT NULL DEFAULT 'awaiting_list' CHECK (phase IN
        ('awaiting_list', 'research', 'branch', 'pool', 'owned', 'confirming',
         'branch_reassign', 'city_reassign', 'hq', 'city_company')),
    -- When the current phase ends if nobody acts.
    ADD COLUMN phase_due_at timestamptz,
    -- The last moment the case may still be without an owner (T-31, local midnight).
    ADD COLUMN owner_by timestamptz,
    ADD COLUMN time_zone text,
    ADD COLUMN effective_expiry_date date,
    ADD COLUMN list_id uuid,
    ADD COLUMN owner_branch text,
    ADD COLUMN outcome text,
    ADD COLUMN renewed_by text;

-- The sweep's work: phases with a deadline, and ownerless cases.
CREATE INDEX cases_phase_due ON assignment.cases (phase_due_at) WHERE state = 'open' AND phase_due_at IS NOT NULL;
CREATE INDEX cases_ownerless ON assignment.cases (owner_by)
    WHERE state = 'open' AND phase IN ('awaiting_list', 'research', 'branch', 'pool');
CREATE INDEX cases_by_branch_phase ON assignment.cases (branch_code, phase) WHERE state = 'open';
CREATE INDEX cases_by_city_phase ON assignment.cases (city_code, phase) WHERE state = 'open';
CREATE INDEX cases_by_owner ON assignment.cases (owner_agent) WHERE state = 'open';

-- Declines, kept for the review.
CREATE TABLE assignment.declines (
    id           bigserial PRIMARY KEY,
    case_id      uuid NOT NULL REFERENCES assignment.cases (case_id),
    branch_code  text NOT NULL,
    reason       text NOT NULL,
    declined_by  text NOT NULL,
    declined_at  timestamptz NOT NULL
);

-- Every change of where a case is worked (the owner changes are in owner_history).
-- Written only next to the case it names, in the same transaction; no foreign key, so
-- a list of 1,000 claims does not pay 1,000 key checks.
CREATE TABLE assignment.routing_history (
    id          bigserial PRIMARY KEY,
    case_id     uuid NOT NULL,
    step        text NOT NULL,
    reason      text NOT NULL,
    routed_by   text NOT NULL,
    routed_at   timestamptz NOT NULL,
    deadline    timestamptz
);
CREATE INDEX routing_history_by_case ON assignment.routing_history (case_id, id);

-- A release leaves the case without an owner: history rows may name none.
ALTER TABLE assignment.owner_history ALTER COLUMN owner_agent DROP NOT NULL;

-- Cases the walking skeleton already gave to their originating agent stay owned.
UPDATE assignment.cases SET phase = 'owned' WHERE owner_agent IS NOT NULL;
