-- Issue 16: the scheduler keeps no personal data in clear. Each case's contact (name,
-- mobile, plate) is one sealed JSON value, bound to its case and to the scheduler's own
-- key (src/contact.rs), and the frequency cap finds a customer's cases by a blind index
-- of the mobile instead of the mobile. Nothing was in production before it; a database
-- whose cases hold contacts in clear cannot be sealed by a migration (it has no key),
-- so the migration stops and says so rather than leave them there.
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM scheduler.cases
               WHERE customer_name IS NOT NULL OR mobile IS NOT NULL OR plate IS NOT NULL) THEN
        RAISE EXCEPTION 'scheduler.cases holds customers'' contacts in clear (from before issue 16): nothing before it was in production, and it holds no key to seal them: start again from an empty database';
    END IF;
END $$;

DROP INDEX scheduler.cases_by_mobile;
-- Nullable like the columns they replace: a case closed before its opening arrived is
-- recorded without a contact.
ALTER TABLE scheduler.cases
    DROP COLUMN customer_name,
    DROP COLUMN mobile,
    DROP COLUMN plate,
    ADD COLUMN contact_enc bytea,
    ADD COLUMN mobile_index bytea;
-- The frequency cap counts marketing SMS per customer (by the mobile's blind index).
CREATE INDEX cases_by_mobile ON scheduler.cases (mobile_index);
