-- Issue 17: a lapsed customer is rescued by a new policy for the same vehicle (VIN) as
-- well as by a renewal of the lapsed policy. The VIN's blind index (HMAC under lists'
-- key, re-indexed by `renewal pii rotate`) is written when a case lapses, so a new
-- policy finds the lapse it ends without opening any VIN.
ALTER TABLE lists.policies ADD COLUMN vin_index bytea;
CREATE INDEX policies_lapsed_by_vin ON lists.policies (vin_index) WHERE status = 'lapsed';
