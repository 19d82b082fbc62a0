-- A message is written three times on its way (queued -> sending -> sent -> delivered),
-- and each write adds an entry to every index the row is in (`state` changes, so no
-- write is a HOT update). Two of the indexes serve lookups that only ever look for rows
-- in some states: the close handler withdraws a case's queued messages, and a receipt
-- without our OutId finds its message by the vendor's id, which a message has only once
-- it was sent. Partial, they are written once each instead of at every step: four of
-- the ten index entries a message's way to its receipt wrote are gone.
DROP INDEX dispatch.sms_by_case;
CREATE INDEX sms_queued_by_case ON dispatch.sms_messages (case_id) WHERE state = 'queued';
DROP INDEX dispatch.sms_by_vendor_id;
CREATE INDEX sms_by_vendor_id ON dispatch.sms_messages (vendor_message_id)
    WHERE vendor_message_id IS NOT NULL;
