-- Issue 16: erasure on request and after retention (services/lists/src/erasures.rs).
--
-- An ID number is found by a keyed blind index, as a mobile is. Rows written before
-- this migration have none yet (NULL): the retention job indexes them in batches (their
-- ID numbers are sealed, and the key is not in the database). '\x' marks a policy with
-- no ID number, or an erased one.
ALTER TABLE lists.policies
    ADD COLUMN id_number_index bytea,
    -- When the policy's personal data was erased (its sealed columns emptied).
    ADD COLUMN erased_at timestamptz;
CREATE INDEX policies_by_id_number ON lists.policies USING hash (id_number_index);
CREATE INDEX policies_id_number_unindexed ON lists.policies (policy_no) WHERE id_number_index IS NULL;

-- The retention job's search: closed cases by when they closed.
CREATE INDEX cases_closed_at ON lists.cases (closed_at) WHERE closed_at IS NOT NULL;

-- One row per erasure: a customer's request (by mobile or ID number, from an hq_admin)
-- or a retention batch. Names no customer: the cases do.
CREATE TABLE lists.erasures (
    erasure_id    uuid PRIMARY KEY,
    reason        text NOT NULL CHECK (reason IN ('request', 'retention')),
    -- The token subject of the hq_admin who asked, or 'retention'.
    requested_by  text NOT NULL,
    requested_at  timestamptz NOT NULL,
    policies      integer NOT NULL,
    case_ids      uuid[] NOT NULL
);
CREATE INDEX erasures_by_time ON lists.erasures (requested_at);

-- What each service says it erased (lists' own row is written with the erasure).
CREATE TABLE lists.erasure_answers (
    erasure_id  uuid NOT NULL REFERENCES lists.erasures (erasure_id),
    service     text NOT NULL CHECK (service IN ('lists', 'assignment', 'scheduler', 'dispatch')),
    erased      jsonb NOT NULL,
    kept        jsonb NOT NULL,
    done_at     timestamptz NOT NULL,
    PRIMARY KEY (erasure_id, service)
);
