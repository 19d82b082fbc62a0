-- The demo harness's own schema (not a service): where the season got to, so a killed
-- demo resumes; and the mock SMS vendor's messages, so a killed vendor still pushes
-- every receipt it owes, as a real vendor would.
CREATE TABLE demo.progress (
    id                   integer PRIMARY KEY CHECK (id = 1),
    seed                 bigint NOT NULL,
    policies             integer NOT NULL,
    days                 integer NOT NULL,
    start_date           date NOT NULL,
    sim_now              timestamptz NOT NULL,
    portfolio_published  boolean NOT NULL DEFAULT false,
    finished             boolean NOT NULL DEFAULT false
);

CREATE TABLE demo.vendor_messages (
    biz_id         text PRIMARY KEY,
    out_id         text NOT NULL,
    phone          text NOT NULL,
    template_code  text NOT NULL,
    delivered      boolean NOT NULL,
    accepted_at    timestamptz NOT NULL,
    pushed_at      timestamptz
);
CREATE INDEX vendor_messages_unpushed ON demo.vendor_messages (accepted_at) WHERE pushed_at IS NULL;
CREATE INDEX vendor_messages_by_out_id ON demo.vendor_messages (out_id);
