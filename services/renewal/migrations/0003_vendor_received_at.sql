-- When the mock vendor got each request on the wall clock (accepted_at is business
-- time, which the simulation may hold or move): how late a contact was made is measured
-- against when its stop was noted (dispatch.closed_cases.noted_at).
ALTER TABLE demo.vendor_messages ADD COLUMN received_at timestamptz;
CREATE INDEX vendor_messages_by_phone ON demo.vendor_messages (phone, accepted_at);
