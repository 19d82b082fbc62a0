-- When a reported renewal was last reopened unconfirmed (the daily run), for the
-- season's review.
ALTER TABLE lists.cases ADD COLUMN reopened_at timestamptz;
