-- Why each lost case was lost (issue 18, the review): written when a case ends lost, in
-- the statement that ends it (a lapse, a call that found the customer insured elsewhere
-- or the vehicle sold), drawn from its calls. Nothing wrote the first table of this name;
-- it is replaced with the reasons the review counts.
DROP TABLE lists.lost_reasons;
CREATE TABLE lists.lost_reasons (
    policy_no    text PRIMARY KEY,
    case_id      uuid NOT NULL,
    reason       text NOT NULL CHECK (reason IN ('too_expensive', 'insured_elsewhere', 'vehicle_sold',
                                                 'unreachable', 'not_contacted_in_time', 'refused',
                                                 'promise_not_kept', 'other')),
    recorded_at  timestamptz NOT NULL
);

-- The reason code of the case's last refusal (never the customer's words: they may name
-- people), so a lapse after it knows what the customer said.
ALTER TABLE lists.cases ADD COLUMN refused_because text
    CHECK (refused_because IN ('too_expensive', 'refused'));

-- The reviews issued (the monthly analysis of each city): what was published, kept to be
-- read again as it was.
CREATE TABLE lists.reviews (
    review_id  uuid PRIMARY KEY,
    kind       text NOT NULL CHECK (kind IN ('monthly')),
    period     text NOT NULL,
    city_code  text NOT NULL,
    issued_at  timestamptz NOT NULL,
    body       jsonb NOT NULL,
    UNIQUE (kind, period, city_code)
);
