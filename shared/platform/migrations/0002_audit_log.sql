-- Who called what, in each service's own schema: every call to its API (state
-- changes, reads of personal data, and refusals), kept for the auditor (PIPL).
CREATE TABLE audit_log (
    seq          bigserial PRIMARY KEY,
    at           timestamptz NOT NULL,
    subject      text NOT NULL,
    role         text NOT NULL,
    method       text NOT NULL,
    route        text NOT NULL,
    target       text NOT NULL,
    request_id   text NOT NULL,
    status       smallint NOT NULL
);
-- Time ranges by BRIN: the log is written in time order, and a BRIN index costs the
-- writes next to nothing.
CREATE INDEX audit_log_at ON audit_log USING brin (at);
