-- Firing marks a timer in place; every index a fired timer touches costs on each of the
-- hundreds of thousands fired at a stage's hour. A case's timers are found through
-- UNIQUE (case_id, stage); the second index on case_id bought nothing.
DROP INDEX scheduler.timers_by_case;

-- The timer's id is its command's id (a UUIDv7, written once) and nothing looks a timer
-- up by it: firing updates the rows it has locked by their row address. A case's stage
-- is the key; dropping the id's index spares a random index insert per fired timer.
ALTER TABLE scheduler.timers DROP CONSTRAINT timers_pkey;
ALTER TABLE scheduler.timers DROP CONSTRAINT timers_case_id_stage_key;
ALTER TABLE scheduler.timers ADD PRIMARY KEY (case_id, stage);

