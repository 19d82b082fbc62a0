-- Firing marks a timer in place; every index a fired timer touches costs on each of the
-- hundreds of thousands fired at a stage's hour. A case's timers are found through
-- UNIQUE (case_id, stage); the second index on case_id bought nothing.
DROP INDEX scheduler.timers_by_case;
