-- Several replicas on one database.
-- A case's revision: a commit decided on an older one is refused, and the
-- writer decides again on what is stored now.
ALTER TABLE cases ADD COLUMN rev bigint NOT NULL DEFAULT 1;
-- The fencing numbers of claims (on due cases and outbox entries): every
-- claim takes a larger one, so a replica whose lease was taken over finds
-- its number gone.
CREATE SEQUENCE fencing_numbers;
