-- Issue 16, part 3: erasure of a customer's personal data (on request, or when a closed
-- case has been kept past the retention period; lists asks with
-- `scheduler.cmd.erase_personal_data`). An erased case keeps its row and its timers
-- (the figures stay), its contact blanked to the empty value ('\x', which a key
-- rotation passes over) and no mobile index, and says when it was erased: an erased
-- case's timers never fire (src/erasure.rs), and an opening that arrives after its
-- erasure stores no contact and plans only cancelled timers.
ALTER TABLE scheduler.cases ADD COLUMN erased_at timestamptz;
