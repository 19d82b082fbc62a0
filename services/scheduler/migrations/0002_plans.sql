-- Issue 5: reminder plans as data (per city, versioned), every stage of the default
-- plan (SMS, phone tasks, supervisor alert, second assignment, lapse rescue), quiet
-- hours, outcomes that reschedule, the frequency cap and the timeline.

-- A plan per city ('*' is the default every city without its own uses). A change is a
-- new version: it applies to cases opened from then on; open cases keep theirs.
CREATE TABLE scheduler.plans (
    city_code   text NOT NULL,
    version     integer NOT NULL,
    stages      jsonb NOT NULL,
    note        text NOT NULL DEFAULT '',
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (city_code, version)
);

ALTER TABLE scheduler.cases
    ADD COLUMN city_code text,
    ADD COLUMN branch_code text,
    ADD COLUMN plan_city text,
    ADD COLUMN plan_version integer;
-- The frequency cap counts marketing SMS per customer (by mobile).
CREATE INDEX cases_by_mobile ON scheduler.cases (mobile);

ALTER TABLE scheduler.timers DROP CONSTRAINT timers_action_check;
ALTER TABLE scheduler.timers ADD CONSTRAINT timers_action_check
    CHECK (action IN ('sms', 'phone_task', 'supervisor_alert', 'confirm_owner'));
ALTER TABLE scheduler.timers
    -- When the plan wanted it, before quiet hours moved it.
    ADD COLUMN nominal_at timestamptz,
    ADD COLUMN queue text,
    ADD COLUMN marketing boolean NOT NULL DEFAULT false,
    ADD COLUMN promotion text NOT NULL DEFAULT '',
    -- Kept when the customer refuses or sold the car (the plan's lapse rescue).
    ADD COLUMN keep_after_refusal boolean NOT NULL DEFAULT false;
CREATE INDEX timers_by_case ON scheduler.timers (case_id, due_at);
CREATE INDEX timers_marketing_sms_fired ON scheduler.timers (case_id, fired_at)
    WHERE action = 'sms' AND marketing AND state = 'fired';
