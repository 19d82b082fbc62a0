-- Issue 16, part 3: erasure of a customer's personal data (on request, or when a closed
-- case has been kept past the retention period; lists asks with
-- `dispatch.cmd.erase_personal_data`, src/erasure.rs). An erased case is a closed case
-- that also says when it was erased: nothing is sent or called for it again, and a
-- command for it that arrives later is kept withdrawn without its contact. Erased rows
-- stay for the figures, their sealed values and blind indexes the empty value ('\x',
-- which a key rotation passes over).
ALTER TABLE dispatch.closed_cases ADD COLUMN erased_at timestamptz;
