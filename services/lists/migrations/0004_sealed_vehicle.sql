-- Issue 16: plates and VINs sealed like names and mobiles, and every sealed value bound
-- to its table, column and policy (and to the lists service's own key), so values
-- sealed before this migration do not open any more. Nothing was in production before
-- it; a database that holds policies from then must be loaded again from the core
-- system, and the migration says so rather than leave rows nobody can read.
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM lists.policies) THEN
        RAISE EXCEPTION 'lists.policies holds policies sealed before issue 16 (unbound keys, plates and VINs in clear): drop the lists schema and load the portfolio again';
    END IF;
END $$;

ALTER TABLE lists.policies
    DROP COLUMN plate,
    DROP COLUMN vin,
    ADD COLUMN plate_enc bytea NOT NULL,
    ADD COLUMN vin_enc bytea NOT NULL;
