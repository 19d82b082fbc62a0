-- Dead letters: messages a service gave up on, kept with their reason until an
-- hq_admin replays them (GET /v1/dead-letters/{service}, POST .../{id}:replay).
-- A consumer's message that failed MAX_DELIVERIES times (source 'consumer', with the
-- durable consumer that failed it), and an outbox row JetStream refused as many times
-- (source 'outbox', set aside in the outbox so the relay goes on).
CREATE TABLE dead_letters (
    id             bigserial PRIMARY KEY,
    source         text NOT NULL CHECK (source IN ('consumer', 'outbox')),
    consumer       text NOT NULL DEFAULT '',
    message_id     text NOT NULL,
    subject        text NOT NULL,
    payload        bytea NOT NULL,
    traceparent    text,
    reason         text NOT NULL,
    deliveries     integer NOT NULL,
    dead_at        timestamptz NOT NULL DEFAULT now(),
    replayed_at    timestamptz,
    replayed_by    text,
    UNIQUE (source, consumer, message_id)
);
CREATE INDEX dead_letters_waiting ON dead_letters (id) WHERE replayed_at IS NULL;

-- The relay counts each row's failed publishes and sets a row aside after too many.
ALTER TABLE outbox ADD COLUMN attempts integer NOT NULL DEFAULT 0;
ALTER TABLE outbox ADD COLUMN last_error text;
ALTER TABLE outbox ADD COLUMN set_aside_at timestamptz;
DROP INDEX outbox_unpublished;
CREATE INDEX outbox_unpublished ON outbox (seq) WHERE published_at IS NULL AND set_aside_at IS NULL;
