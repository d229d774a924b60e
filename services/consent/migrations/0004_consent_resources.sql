-- Directives as FHIR R4 Consent resources: the resource as written (with id and meta) beside
-- the provision the policy reads, and every version kept for vread and history. Directives
-- stored before this (version 0) are rendered as Consents when the service starts.
ALTER TABLE directives ADD COLUMN version BIGINT NOT NULL DEFAULT 0;
ALTER TABLE directives ADD COLUMN resource TEXT NOT NULL DEFAULT '';
CREATE INDEX directives_unversioned ON directives (version);
CREATE TABLE directive_versions (
    id         TEXT   NOT NULL,
    version    BIGINT NOT NULL,
    nhs_number TEXT   NOT NULL,
    status     TEXT   NOT NULL,
    resource   TEXT   NOT NULL,
    updated_at BIGINT NOT NULL,
    PRIMARY KEY (id, version)
);
