-- Provenance: each stored version gets the id of the Provenance resource that describes it
-- (who wrote it, for which organisation, when). Versions stored before this get theirs when
-- the service starts.
ALTER TABLE resources ADD COLUMN provenance_id TEXT NOT NULL DEFAULT '';
CREATE INDEX resources_by_provenance ON resources (provenance_id);
