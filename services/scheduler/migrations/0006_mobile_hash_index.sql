-- The frequency cap finds a customer's cases by the mobile's blind index, only ever by
-- equality. A hash index keeps a 4-byte code per case where the B-tree kept the whole
-- 32-byte index (32 MB against 50 MB for a million cases): firing reads it once per
-- marketing SMS, at random, so its size is buffer misses (issue 16: the scheduler's
-- figure with sealing on).
DROP INDEX scheduler.cases_by_mobile;
CREATE INDEX cases_by_mobile ON scheduler.cases USING hash (mobile_index);
