-- Issue 3, performance: a renewal list's items in a narrow table of their own.
--
-- Issuing the month's lists used to set cases.list_id on every listed case: ~80k wide
-- rows rewritten (and every index of cases written again, list_id being in the
-- predicate of cases_unlisted) in the daily run of the issue day. An item is now one
-- narrow insert; the primary key keeps a case on one renewal list only.
CREATE TABLE lists.list_items (
    case_id  uuid PRIMARY KEY,
    list_id  uuid NOT NULL -- lists.issued_lists, written in the same transaction
);
INSERT INTO lists.list_items (case_id, list_id)
    SELECT case_id, list_id FROM lists.cases WHERE list_id IS NOT NULL;
DROP INDEX lists.cases_unlisted;
ALTER TABLE lists.cases DROP COLUMN list_id;

-- The mobile's blind index is only ever looked up by equality, and its values are
-- random: a hash index costs a CSV import less per row than a B-tree does.
DROP INDEX lists.policies_by_mobile;
CREATE INDEX policies_by_mobile ON lists.policies USING hash (mobile_index);
