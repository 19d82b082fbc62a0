-- Issue 17: escalations are work items.
-- The city company's support queue: an important customer or group policy escalated
-- while its owner keeps the case.
ALTER TABLE dispatch.phone_tasks DROP CONSTRAINT phone_tasks_queue_check;
ALTER TABLE dispatch.phone_tasks ADD CONSTRAINT phone_tasks_queue_check
    CHECK (queue IN ('owner', 'branch', 'campaign', 'hq', 'city'));

-- A wrong number is corrected when the core system sends the case a new mobile
-- (lists.case.changed): the mark says when.
ALTER TABLE dispatch.contact_corrections ADD COLUMN corrected_at timestamptz;
