-- The scheduler keeps no contact of new cases (dispatch does, from the case's opening),
-- only the mobile's blind index for the frequency cap, and beside it the mobile sealed
-- with the scheduler's key (bound to the case): a key rotation opens it to compute the
-- index under the new key, so one customer's cases still match after the old key is
-- dropped. Firing never reads it. Cases opened before keep their sealed contact.
ALTER TABLE scheduler.cases ADD COLUMN mobile_enc bytea;
