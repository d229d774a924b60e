-- FHIR delete: a new version marked deleted (its history is kept; reads answer 410 Gone).
ALTER TABLE resources ADD COLUMN deleted BIGINT NOT NULL DEFAULT 0;
ALTER TABLE current_resources ADD COLUMN deleted BIGINT NOT NULL DEFAULT 0;
