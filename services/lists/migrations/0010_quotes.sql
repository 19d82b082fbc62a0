-- Renewal quotes (issue 18): the core system's current quote of each policy
-- (`core.quote.issued` or `POST /v1/quotes:import`), with the discount approved on it.
-- A quote reaches dispatch (`lists.quote.issued`) once its policy has a case being worked;
-- `announced_at` says it has.
CREATE TABLE lists.quotes (
    policy_no         text PRIMARY KEY,
    quote_id          text NOT NULL,
    premium_fen       bigint NOT NULL CHECK (premium_fen > 0),
    last_premium_fen  bigint NOT NULL CHECK (last_premium_fen >= 0),
    claim_free_years  integer NOT NULL CHECK (claim_free_years BETWEEN 0 AND 50),
    ncd_level         integer NOT NULL CHECK (ncd_level BETWEEN -10 AND 10),
    compulsory_fen    bigint NOT NULL CHECK (compulsory_fen >= 0),
    commercial_fen    bigint NOT NULL CHECK (commercial_fen >= 0),
    valid_until       date NOT NULL,
    promotion         text NOT NULL DEFAULT '',
    issued_at         timestamptz NOT NULL,
    received_at       timestamptz NOT NULL,
    source            text NOT NULL CHECK (source IN ('nats', 'csv')),
    -- An approved discount in percent (0: none) and what came with it (a rescue card).
    discount_percent  integer NOT NULL DEFAULT 0 CHECK (discount_percent BETWEEN 0 AND 100),
    discount_extra    text NOT NULL DEFAULT '',
    announced_at      timestamptz
);

-- The cases that reached T-65 with no quote: a task was raised for the city company
-- (`lists.quote.missing`), once per case.
CREATE TABLE lists.quotes_missing (
    case_id    uuid PRIMARY KEY,
    raised_at  timestamptz NOT NULL
);
