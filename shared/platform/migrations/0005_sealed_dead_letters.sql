-- A service that keeps personal data (lists, scheduler, dispatch) seals each dead
-- letter's payload with its own key: `sealed_payload` holds it and `payload` is empty.
-- Letters kept before, and a service's that holds no key (assignment: its letters are
-- kept with every personal field cleared), keep `payload` and an empty `sealed_payload`.
ALTER TABLE dead_letters ADD COLUMN sealed_payload bytea NOT NULL DEFAULT '';
