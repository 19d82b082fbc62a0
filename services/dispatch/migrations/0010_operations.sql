-- The operations console's reads (src/phone/queues.rs, src/history.rs).
--
-- Each case as lists opened it (`lists.case.opened`, a newer branch or city from
-- `lists.case.changed`): its policy number, branch and city, so a case is found by its
-- policy number and a caller's scope checked against it. No personal data. The cases
-- dispatch already holds are taken from their tasks (branch and city) or, with none,
-- their messages (branch and city unknown: NULL, which no branch or city reaches).
CREATE TABLE dispatch.case_scopes (
    case_id      uuid PRIMARY KEY,
    policy_no    text NOT NULL,
    branch_code  text,
    city_code    text,
    opened_at    timestamptz NOT NULL
);
CREATE INDEX case_scopes_by_policy ON dispatch.case_scopes (policy_no);
INSERT INTO dispatch.case_scopes (case_id, policy_no, branch_code, city_code, opened_at)
SELECT DISTINCT ON (case_id) case_id, policy_no, branch_code, city_code, created_at
FROM (SELECT case_id, policy_no, branch_code, city_code, created_at, 0 AS pick
      FROM dispatch.phone_tasks
      UNION ALL
      SELECT case_id, policy_no, NULL, NULL, created_at, 1 FROM dispatch.sms_messages) known
ORDER BY case_id, pick, created_at DESC
ON CONFLICT (case_id) DO NOTHING;

-- A case's messages in every state. Queued ones are found by `sms_queued_by_case` and
-- the few in doubt (sending, unknown) by `sms_in_doubt_by_next_attempt`; this index
-- holds the rest, so a message writes an entry here when it is sent and when it gets
-- its receipt (two, not the four a plain index on case_id would take; see 0004).
CREATE INDEX sms_settled_by_case ON dispatch.sms_messages (case_id)
    WHERE state NOT IN ('queued', 'sending', 'unknown');

-- A message's receipts (a receipt is written once and never updated).
CREATE INDEX sms_receipts_by_message ON dispatch.sms_receipts (message_id)
    WHERE message_id IS NOT NULL;

-- Dead tasks, oldest first (a task is written here once, when it goes dead).
CREATE INDEX phone_tasks_dead ON dispatch.phone_tasks (created_at, id) WHERE state = 'dead';
