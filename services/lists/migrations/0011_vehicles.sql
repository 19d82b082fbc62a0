-- One vehicle, one contact series (issue 18): the compulsory and commercial policies of
-- one vehicle (same VIN) expiring within VEHICLE_WINDOW_DAYS of each other form one
-- renewal case. The case is opened for the first of them (its lead policy); the others
-- join it here and open no case of their own. Policies written from now on carry their
-- VIN's blind index (HMAC under lists' key, kept by `renewal pii rotate`); cases opened
-- before are unchanged.
CREATE TABLE lists.vehicle_policies (
    policy_no  text PRIMARY KEY REFERENCES lists.policies (policy_no),
    case_id    uuid NOT NULL REFERENCES lists.cases (case_id),
    joined_at  timestamptz NOT NULL
);
CREATE INDEX vehicle_policies_by_case ON lists.vehicle_policies (case_id);

-- A case keeps its lead policy's VIN index, so a policy of the same vehicle finds the
-- open case without an index over the whole portfolio (it would cost every import).
ALTER TABLE lists.cases ADD COLUMN vin_index bytea;
CREATE INDEX cases_open_by_vin ON lists.cases (vin_index)
    WHERE vin_index IS NOT NULL AND state IN ('open', 'renewal_reported');

-- Attribution as the handbook states it: the selling agent keeps the renewal credit for
-- life only where they left the customer's real data at sale (a flag on intake);
-- otherwise the owner who renews it is credited.
ALTER TABLE lists.policies ADD COLUMN real_data_at_sale boolean NOT NULL DEFAULT false;
ALTER TABLE lists.cases ADD COLUMN originator_keeps_credit boolean NOT NULL DEFAULT false;
