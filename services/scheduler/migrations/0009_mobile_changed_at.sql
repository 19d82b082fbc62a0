-- When the case's mobile was last replaced (lists.case.changed): a wrong-number call
-- that ended before it dialled the old number, and holds nothing (the new number came
-- in first when the two events crossed).
ALTER TABLE scheduler.cases ADD COLUMN mobile_changed_at timestamptz;
