-- Issue 17: a timer can be held: a renewal reported on the phone stops the case's
-- contacts at once, but the core system has not confirmed it yet; if it never does,
-- the case is reopened and its held timers resume (or are skipped when their time
-- has passed). A held timer never fires.
ALTER TABLE scheduler.timers DROP CONSTRAINT timers_state_check;
ALTER TABLE scheduler.timers ADD CONSTRAINT timers_state_check
    CHECK (state IN ('pending', 'held', 'fired', 'cancelled', 'skipped'));
CREATE INDEX timers_held ON scheduler.timers (case_id) WHERE state = 'held';
