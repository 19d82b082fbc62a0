-- Issue 16: dispatch keeps no personal data in clear (services/dispatch/src/sealed.rs).
-- Mobiles, names, plates, template parameters and replies are sealed with dispatch's
-- key, bound to their table, column and row; numbers are found by a keyed blind index
-- of their E.164 form. Values in clear cannot be sealed in SQL: a database holding
-- dispatch's rows from before must be emptied (the scheduler sends its commands again)
-- rather than left with rows nobody can read, and the migration says so.
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM dispatch.sms_messages)
       OR EXISTS (SELECT 1 FROM dispatch.phone_tasks)
       OR EXISTS (SELECT 1 FROM dispatch.opt_outs)
       OR EXISTS (SELECT 1 FROM dispatch.contact_corrections)
       OR EXISTS (SELECT 1 FROM dispatch.sms_replies) THEN
        RAISE EXCEPTION 'dispatch holds SMS, phone tasks, opt-outs, contact corrections or replies with mobiles, names and plates in clear (before issue 16): they cannot be sealed in SQL; drop the dispatch schema (or empty these tables) and let the scheduler send its commands again';
    END IF;
END $$;

-- One sealed contact per message ({mobile, template_params}): the sender opens it once,
-- after the claim. The blind index is not indexed: an index on it would be written at
-- every step of a message (queued, sending, sent, delivered; none is a HOT update),
-- and the only lookup by number is an opt-out's (rare) listing of the number's cases.
ALTER TABLE dispatch.sms_messages
    DROP COLUMN mobile,
    DROP COLUMN template_params,
    ADD COLUMN contact_enc bytea NOT NULL,
    ADD COLUMN mobile_index bytea NOT NULL;

-- One sealed contact per task ({customer_name, mobile, plate}), opened once per lease.
ALTER TABLE dispatch.phone_tasks
    DROP COLUMN customer_name,
    DROP COLUMN mobile,
    DROP COLUMN plate,
    ADD COLUMN contact_enc bytea NOT NULL;

-- A correction's number is its task's (task_id is the task's id).
ALTER TABLE dispatch.contact_corrections DROP COLUMN mobile;

-- (Dropping a column drops the keys and constraints it was part of.)
-- Opt-outs by blind index, one row per number (whatever key indexed it); the sealed
-- number lets a rotation index it again. `id` is the sealed value's row key (the
-- index changes with the key).
ALTER TABLE dispatch.opt_outs
    DROP COLUMN mobile,
    ADD COLUMN id uuid NOT NULL,
    ADD COLUMN mobile_index bytea NOT NULL,
    ADD COLUMN mobile_enc bytea NOT NULL,
    ADD PRIMARY KEY (id),
    ADD CONSTRAINT opt_outs_mobile_index_key UNIQUE (mobile_index);

-- Replies: number and text sealed together ({mobile, content}); kept once each by the
-- number's index and a keyed digest of the text. The id is made by dispatch (a uuid),
-- so the row key is known before the row is written.
ALTER TABLE dispatch.sms_replies
    DROP COLUMN id,
    DROP COLUMN mobile,
    DROP COLUMN content,
    ADD COLUMN id uuid PRIMARY KEY,
    ADD COLUMN mobile_index bytea NOT NULL,
    ADD COLUMN content_digest bytea NOT NULL,
    ADD COLUMN reply_enc bytea NOT NULL,
    ADD CONSTRAINT sms_replies_once UNIQUE (mobile_index, send_time, sequence_id, content_digest);
