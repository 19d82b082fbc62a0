-- The operations console's SMS (src/sms/failures.rs, src/sms/opt_outs.rs).
--
-- When HQ last sent a failed or dead message again (`POST /v1/sms/{id}:resend`): a
-- message resent and not failed since is not sent again by another resend.
ALTER TABLE dispatch.sms_messages ADD COLUMN resent_at timestamptz;

-- Failed and dead messages, oldest first. A message enters this index once, when it
-- fails or dies; the sending path's other steps never write it.
CREATE INDEX sms_failed_or_dead ON dispatch.sms_messages (created_at, id)
    WHERE state IN ('failed', 'dead');

-- Opt-outs, newest first (a row is written once per number).
CREATE INDEX opt_outs_by_time ON dispatch.opt_outs (opted_out_at, id);
