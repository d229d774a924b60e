-- A one-time code an administrator issues so that a member of staff with no second factor can
-- enrol their first authenticator (only its SHA-256 is kept), and when it stops working.
ALTER TABLE people ADD COLUMN enrolment_hash TEXT NOT NULL DEFAULT '';
ALTER TABLE people ADD COLUMN enrolment_expires BIGINT NOT NULL DEFAULT 0;
