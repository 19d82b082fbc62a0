-- Issue 17: the end of the season as the handbooks run it.
--
-- A lapsed case stays open for lapse rescue ('lapsed' no longer ends it): it ends
-- 'rescued' (renewed after the lapse), 'insured_elsewhere' or 'vehicle_sold' (a call's
-- outcome: lost, off the lapse lists). A renewal an owner or agent reports on the phone
-- puts the case in 'renewal_reported' until the core system confirms it (then
-- 'renewed' or 'rescued'), or until the daily run reopens it unconfirmed.
ALTER TABLE lists.cases DROP CONSTRAINT cases_state_check;
ALTER TABLE lists.cases ADD CONSTRAINT cases_state_check CHECK (state IN
    ('open', 'renewal_reported', 'lapsed', 'renewed', 'rescued', 'insured_elsewhere',
     'vehicle_sold', 'cancelled'));

ALTER TABLE lists.cases
    -- When the case lapsed (its expiry day ended unrenewed), and the first day without cover.
    ADD COLUMN lapsed_at          timestamptz,
    ADD COLUMN lapsed_on          date,
    -- A renewal reported on the phone: when, the policy number given, and who.
    ADD COLUMN reported_at        timestamptz,
    ADD COLUMN reported_policy_no text,
    ADD COLUMN reported_by        text,
    -- The lapse register's "what was tried": calls completed on the case, the last
    -- one's outcome (a CallOutcome name) and when.
    ADD COLUMN calls_made         integer NOT NULL DEFAULT 0,
    ADD COLUMN last_outcome       text,
    ADD COLUMN last_outcome_at    timestamptz;

-- Cases lapsed before this migration were closed by the lapse: they go back to rescue
-- (their policy is still uninsured) with the day after their expiry as the lapse.
UPDATE lists.cases c SET lapsed_at = c.closed_at, lapsed_on = c.expiry_date + 1, closed_at = NULL
    WHERE c.state = 'lapsed';
UPDATE lists.cases c SET state = 'rescued', closed_at = COALESCE(p.renewed_at, c.lapsed_at)
    FROM lists.policies p
    WHERE p.policy_no = c.policy_no AND c.state = 'lapsed' AND p.status = 'renewed';

-- The daily run's work: reported renewals waiting for the core system's confirmation.
CREATE INDEX cases_renewal_reported ON lists.cases (time_zone, reported_at)
    WHERE state = 'renewal_reported';
