-- The platform's tables, created in each service's own schema (the migration runs with
-- search_path set to it): the transactional outbox and the inbox.

-- Events written in the same transaction as the state change; the relay publishes each
-- with Nats-Msg-Id = id and marks it after JetStream acknowledged it.
CREATE TABLE outbox (
    seq           bigserial PRIMARY KEY,
    id            uuid NOT NULL UNIQUE,
    subject       text NOT NULL,
    payload       bytea NOT NULL,
    traceparent   text,
    created_at    timestamptz NOT NULL DEFAULT now(),
    published_at  timestamptz
);
CREATE INDEX outbox_unpublished ON outbox (seq) WHERE published_at IS NULL;

-- Every message id a consumer has handled (in the transaction of its effect), and the
-- messages it refused as malformed, kept with the reason.
CREATE TABLE inbox (
    message_id        text PRIMARY KEY,
    subject           text NOT NULL,
    received_at       timestamptz NOT NULL DEFAULT now(),
    rejected_reason   text,
    rejected_payload  bytea
);
