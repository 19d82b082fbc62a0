-- Each case's contact as lists opened it (`lists.case.opened`, consumer
-- `dispatch-contacts`): dispatch's own copy, so the scheduler keeps none and its
-- commands name the case only (src/contacts.rs). Sealed with dispatch's key as the array
-- [name, mobile, plate], bound to the case; the empty value once the case is erased.
CREATE TABLE dispatch.case_contacts (
    case_id     uuid PRIMARY KEY,
    contact_enc bytea NOT NULL,
    opened_at   timestamptz NOT NULL DEFAULT now()
);
