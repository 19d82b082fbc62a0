-- Issue 3: personal data encrypted at rest, the city's time zone, buckets, holidays,
-- monthly renewal and lapse lists, CSV imports and the KPIs' lost-renewal reasons.
--
-- The plaintext personal data of 0001 cannot be encrypted by SQL (the key lives in the
-- service's configuration, not in the database), so this migration refuses to run over
-- a portfolio that still holds any: load it again through intake after migrating.
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM lists.policies) THEN
        RAISE EXCEPTION 'lists.policies holds plaintext personal data from before encryption at rest; '
                        'empty it (or restore into a fresh database) and import the portfolio again';
    END IF;
END $$;

ALTER TABLE lists.policies
    DROP COLUMN customer_name,
    DROP COLUMN mobile,
    DROP COLUMN id_number,
    -- AES-256-GCM: key version byte, 12-byte nonce, ciphertext and tag.
    ADD COLUMN name_enc        bytea NOT NULL,
    ADD COLUMN mobile_enc      bytea NOT NULL,
    ADD COLUMN id_number_enc   bytea NOT NULL,
    -- Keyed blind index (HMAC-SHA-256, 16 bytes) of the mobile in E.164 form.
    ADD COLUMN mobile_index    bytea NOT NULL,
    -- Keyed digest of the whole row as loaded: tells a changed row from a repeat.
    ADD COLUMN content_digest  bytea NOT NULL,
    ADD COLUMN time_zone       text NOT NULL,
    ADD COLUMN source          text NOT NULL DEFAULT 'nats' CHECK (source IN ('nats', 'csv')),
    ADD COLUMN lapsed_on       date,
    ADD COLUMN renewed_at      timestamptz,
    -- Set when the policy's case opens (a policy has one case in its life).
    ADD COLUMN has_case        boolean NOT NULL DEFAULT false;
CREATE INDEX policies_by_mobile ON lists.policies (mobile_index);
DROP INDEX lists.policies_active_by_end;
-- The daily run's search: active policies that have no case yet, by expiry.
CREATE INDEX policies_awaiting_case ON lists.policies (time_zone, end_date)
    WHERE status = 'active' AND NOT has_case;
CREATE INDEX policies_lapsed_by_branch ON lists.policies (city_code, branch_code) WHERE status = 'lapsed';

-- Cities whose time zone is not the service's default (TIME_ZONE). Most of China keeps
-- Beijing time; Xinjiang's cities commonly keep Urumqi time.
CREATE TABLE lists.cities (
    city_code  text PRIMARY KEY,
    name       text NOT NULL,
    time_zone  text NOT NULL
);
INSERT INTO lists.cities (city_code, name, time_zone) VALUES
    ('650100', 'Urumqi', 'Asia/Urumqi'),
    ('650200', 'Karamay', 'Asia/Urumqi'),
    ('652800', 'Bayingolin', 'Asia/Urumqi'),
    ('652900', 'Aksu', 'Asia/Urumqi'),
    ('653100', 'Kashgar', 'Asia/Urumqi'),
    ('653200', 'Hotan', 'Asia/Urumqi'),
    ('654000', 'Ili', 'Asia/Urumqi');

-- The long public holidays, from the calendar data file (written at start-up). A policy
-- expiring on any day of a period is worked against `worked_before`: the last working
-- day before the period.
CREATE TABLE lists.holiday_periods (
    name           text NOT NULL,
    first_day      date NOT NULL,
    last_day       date NOT NULL,
    worked_before  date NOT NULL,
    PRIMARY KEY (first_day)
);
-- The years the calendar covers; an expiry in any other year raises an alert.
CREATE TABLE lists.calendar_years (
    year        integer PRIMARY KEY,
    provisional boolean NOT NULL DEFAULT false
);
-- Years that expiries fall in but the calendar does not cover: an alert for ops.
CREATE TABLE lists.calendar_alerts (
    year        integer PRIMARY KEY,
    first_seen  timestamptz NOT NULL,
    last_seen   timestamptz NOT NULL,
    cases       bigint NOT NULL DEFAULT 0
);

-- Buckets by days to the effective expiry in the city's time zone: 30 (0-30), 60
-- (31-60), 90 (61-90); the daily run moves cases and publishes each move.
ALTER TABLE lists.cases
    ADD COLUMN time_zone      text NOT NULL,
    ADD COLUMN city_code      text NOT NULL,
    ADD COLUMN branch_code    text NOT NULL,
    ADD COLUMN agent_code     text NOT NULL,
    ADD COLUMN category       text NOT NULL,
    ADD COLUMN important      boolean NOT NULL DEFAULT false,
    ADD COLUMN group_policy   boolean NOT NULL DEFAULT false,
    ADD COLUMN bucket         smallint CHECK (bucket IN (30, 60, 90)),
    ADD COLUMN holiday        text,
    ADD COLUMN calendar_known boolean NOT NULL DEFAULT true,
    -- The renewal list the case was issued on: one list only.
    ADD COLUMN list_id        uuid;
CREATE INDEX cases_open_by_zone ON lists.cases (time_zone, effective_expiry_date) WHERE state = 'open';
CREATE INDEX cases_unlisted ON lists.cases (time_zone, effective_expiry_date) WHERE state = 'open' AND list_id IS NULL;
CREATE INDEX cases_by_expiry ON lists.cases (expiry_date);

ALTER TABLE lists.daily_runs DROP CONSTRAINT daily_runs_pkey;
ALTER TABLE lists.daily_runs
    ADD COLUMN time_zone      text NOT NULL,
    ADD COLUMN bucket_moves   integer NOT NULL DEFAULT 0,
    ADD COLUMN lists_issued   integer NOT NULL DEFAULT 0,
    ADD PRIMARY KEY (time_zone, run_date);

-- Renewal lists (each branch's policies due for work) and lapse lists (its lapsed,
-- not yet renewed customers). Renewal list items are the cases with that list_id;
-- lapse lists repeat a customer every month until a renewal arrives.
CREATE TABLE lists.issued_lists (
    list_id      uuid PRIMARY KEY,
    kind         text NOT NULL CHECK (kind IN ('renewal', 'lapse')),
    trigger      text NOT NULL CHECK (trigger IN ('monthly', 'on_demand')),
    city_code    text NOT NULL,
    branch_code  text NOT NULL,
    issued_on    date NOT NULL,
    issued_at    timestamptz NOT NULL,
    items        integer NOT NULL
);
CREATE INDEX issued_lists_by_branch ON lists.issued_lists (city_code, branch_code, issued_on);
CREATE UNIQUE INDEX issued_lists_monthly_once ON lists.issued_lists (kind, city_code, branch_code, issued_on)
    WHERE trigger = 'monthly';
CREATE TABLE lists.lapse_list_items (
    list_id    uuid NOT NULL REFERENCES lists.issued_lists (list_id),
    policy_no  text NOT NULL,
    PRIMARY KEY (list_id, policy_no)
);

-- CSV imports: one row each, and every rejected row with its reason.
CREATE TABLE lists.imports (
    import_id     uuid PRIMARY KEY,
    file_name     text NOT NULL,
    started_at    timestamptz NOT NULL,
    finished_at   timestamptz NOT NULL,
    encoding      text NOT NULL,
    rows_read     bigint NOT NULL,
    inserted      bigint NOT NULL,
    updated       bigint NOT NULL,
    unchanged     bigint NOT NULL,
    stale         bigint NOT NULL,
    rejected      bigint NOT NULL,
    -- Set once the cases the import made due are opened (by the import or the service).
    cases_opened_at timestamptz
);
CREATE TABLE lists.import_rejections (
    import_id  uuid NOT NULL REFERENCES lists.imports (import_id),
    row_no     bigint NOT NULL,
    column_name text NOT NULL,
    reason     text NOT NULL,
    PRIMARY KEY (import_id, row_no, column_name)
);

-- Why renewals were lost, as owners and the call center record them (issue 6 feeds it).
CREATE TABLE lists.lost_reasons (
    policy_no    text PRIMARY KEY,
    reason       text NOT NULL CHECK (reason IN ('no_follow_up', 'too_expensive', 'switched_insurer',
                                                 'vehicle_sold', 'unreachable', 'refused', 'other')),
    recorded_at  timestamptz NOT NULL
);
