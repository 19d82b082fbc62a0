-- A sweep assigns thousands of cases at once (issue 4's benchmark: 20,000 in one
-- sweep), and each case leaving an ownerless phase costs less when:
-- the owner history has no foreign key: like routing_history, it is written only next
-- to the case it names, in the same transaction, so 20,000 rows need not pay 20,000
-- key checks (each locking the case row);
ALTER TABLE assignment.owner_history DROP CONSTRAINT IF EXISTS owner_history_case_id_fkey;

-- and the queue indexes hold only the phases their queries read (a branch's pending
-- claims; a city's research queue and pool), so a case that gets an owner adds no entry
-- to them.
DROP INDEX assignment.cases_by_branch_phase;
CREATE INDEX cases_by_branch_phase ON assignment.cases (branch_code, phase)
    WHERE state = 'open' AND phase IN ('branch', 'branch_reassign');
DROP INDEX assignment.cases_by_city_phase;
CREATE INDEX cases_by_city_phase ON assignment.cases (city_code, phase)
    WHERE state = 'open' AND phase IN ('research', 'pool', 'city_reassign');
