-- At most once to the vendor: a message is committed as 'sending' (its attempt counted)
-- before the vendor is called; an answer moves it on; a lost answer leaves it 'unknown'
-- until the vendor is asked (QuerySendDetails by number and the attempt's date).
ALTER TABLE dispatch.sms_messages DROP CONSTRAINT sms_messages_state_check;
ALTER TABLE dispatch.sms_messages ADD CONSTRAINT sms_messages_state_check
    CHECK (state IN ('queued', 'sending', 'unknown', 'sent', 'delivered', 'failed', 'dead',
                     'withdrawn', 'suppressed'));
-- The vendor's date of the last attempt (China's calendar), for asking about it.
ALTER TABLE dispatch.sms_messages ADD COLUMN sending_on date;
CREATE INDEX sms_in_doubt_by_next_attempt ON dispatch.sms_messages (next_attempt_at)
    WHERE state IN ('sending', 'unknown');

-- When a stop was noted here (the database's time), so every sender reads the ones it
-- has not seen yet (services/dispatch/src/sms/stops.rs).
-- The stops already here were noted before any batch the senders will claim (a claim
-- checks the tables themselves): none of them needs reading again.
ALTER TABLE dispatch.closed_cases ADD COLUMN noted_at timestamptz NOT NULL DEFAULT '-infinity';
ALTER TABLE dispatch.closed_cases ALTER COLUMN noted_at SET DEFAULT now();
CREATE INDEX closed_cases_by_noted_at ON dispatch.closed_cases (noted_at);
ALTER TABLE dispatch.opt_outs ADD COLUMN noted_at timestamptz NOT NULL DEFAULT '-infinity';
ALTER TABLE dispatch.opt_outs ALTER COLUMN noted_at SET DEFAULT now();
CREATE INDEX opt_outs_by_noted_at ON dispatch.opt_outs (noted_at);
