-- A resend is a new message with an id of its own, which is the vendor's OutId: the
-- first attempt's late receipts, and the vendor's records of it when a doubt is
-- settled, never touch the resent one. The failed or dead message names it, and leaves
-- operations' list of the SMS that did not reach their customer.
ALTER TABLE dispatch.sms_messages ADD COLUMN resent_as uuid;
DROP INDEX dispatch.sms_failed_or_dead;
CREATE INDEX sms_failed_or_dead ON dispatch.sms_messages (created_at, id)
    WHERE state IN ('failed', 'dead') AND resent_as IS NULL;
