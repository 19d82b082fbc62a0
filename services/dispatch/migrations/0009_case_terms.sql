-- Each case's renewal terms as lists last announced them (`lists.quote.issued`, consumer
-- `dispatch-quotes`): the next SMS states them and every phone task shows them. No
-- personal data: a premium and an offer.
CREATE TABLE dispatch.case_terms (
    case_id           uuid PRIMARY KEY,
    quote_id          text NOT NULL,
    premium_fen       bigint NOT NULL,
    last_premium_fen  bigint NOT NULL,
    claim_free_years  integer NOT NULL,
    promotion         text NOT NULL,
    valid_until       date NOT NULL,
    discount_percent  integer NOT NULL,
    discount_extra    text NOT NULL,
    quoted_at         timestamptz NOT NULL
);
