-- Which day's work the branch staff and the call center have done, so a resumed demo
-- neither repeats nor skips it.
ALTER TABLE demo.progress ADD COLUMN staff_worked_on date, ADD COLUMN calls_made_on date;

-- The simulated call center's own record of every lease it took, in the order taken.
CREATE TABLE demo.call_center_leases (
    seq               bigserial,
    task_id           uuid NOT NULL,
    lease_token       uuid NOT NULL,
    agent_id          text NOT NULL,
    leased_at         timestamptz NOT NULL,
    lease_expires_at  timestamptz NOT NULL,
    ended_at          timestamptz,
    ended_seq         bigint,
    -- the outcome reported, or why the report was refused
    outcome           text,
    PRIMARY KEY (task_id, lease_token)
);
