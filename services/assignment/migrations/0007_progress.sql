-- The review's rhythm (issue 18): each owner's day (calls they made on their own cases,
-- promises among them; renewals are read from the cases), counted as the calls arrive
-- (dispatch.task.completed, in the same transaction as the consumer's inbox), and the
-- daily and weekly reports issued (published as assignment.review.issued).
CREATE TABLE assignment.owner_days (
    day          date NOT NULL,
    agent_code   text NOT NULL,
    branch_code  text NOT NULL,
    calls        integer NOT NULL DEFAULT 0,
    promises     integer NOT NULL DEFAULT 0,
    PRIMARY KEY (day, agent_code)
);
CREATE INDEX owner_days_by_branch ON assignment.owner_days (branch_code, day);

CREATE TABLE assignment.reviews (
    kind         text NOT NULL CHECK (kind IN ('owner_daily', 'branch_weekly')),
    period       text NOT NULL,
    branch_code  text NOT NULL,
    issued_at    timestamptz NOT NULL,
    body         jsonb NOT NULL,
    PRIMARY KEY (kind, period, branch_code)
);

CREATE INDEX cases_closed_by_owner ON assignment.cases (closed_at) WHERE outcome IS NOT NULL;
