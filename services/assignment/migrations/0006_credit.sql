-- Attribution as the handbook states it (issue 18): the originating agent keeps the
-- renewal credit for life only where they left the customer's real data at sale (the
-- flag lists' `lists.case.opened` carries); otherwise the owner who renews it is
-- credited. Cases opened before the flag existed keep the originating agent's credit.
ALTER TABLE assignment.cases ADD COLUMN originator_keeps_credit boolean NOT NULL DEFAULT true;
