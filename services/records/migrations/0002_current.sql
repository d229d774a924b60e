-- The current version of each resource, with what search filters on.
CREATE TABLE current_resources (
    resource_type    TEXT   NOT NULL,
    id               TEXT   NOT NULL,
    version          BIGINT NOT NULL,
    nhs_number       TEXT   NOT NULL DEFAULT '',
    -- Clinical date (µs since the epoch); 0 = the resource has none.
    clinical_date_us BIGINT NOT NULL DEFAULT 0,
    -- Codes as " system|code system|code " (space-delimited, with leading and trailing spaces).
    codes            TEXT   NOT NULL DEFAULT ' ',
    -- meta.security codes, comma-separated (read without parsing the body).
    labels           TEXT   NOT NULL DEFAULT '',
    PRIMARY KEY (resource_type, id)
);
CREATE INDEX current_by_patient ON current_resources (nhs_number, resource_type, id);
-- Resources written before this table existed are searchable by patient and type.
INSERT INTO current_resources (resource_type, id, version, nhs_number)
SELECT r.resource_type, r.id, r.version, r.nhs_number FROM resources r
WHERE r.version = (SELECT MAX(x.version) FROM resources x WHERE x.resource_type = r.resource_type AND x.id = r.id);
-- Provenance: who wrote each version (person or client id), beside the writing organisation.
ALTER TABLE resources ADD COLUMN author TEXT NOT NULL DEFAULT '';
