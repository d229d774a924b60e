-- The passport's read model: the newest version of each resource about a patient, with what
-- the view shows of it. Built from records' RecordState events; portable SQL (Postgres and
-- SQLite alike).
CREATE TABLE entries (
    resource_type       TEXT NOT NULL,
    id                  TEXT NOT NULL,
    version             BIGINT NOT NULL,
    nhs_number          TEXT NOT NULL,
    -- problems | medications | allergies | alerts | care_plans | encounters | documents |
    -- observations | demographics
    section             TEXT NOT NULL,
    summary             TEXT NOT NULL,
    clinical_date       TEXT NOT NULL,
    status              TEXT NOT NULL,
    source_organisation TEXT NOT NULL,
    -- meta.security codes, comma-separated
    labels              TEXT NOT NULL,
    body                TEXT NOT NULL,
    -- 1 when the newest version leaves the view (entered in error)
    hidden              BIGINT NOT NULL,
    updated_us          BIGINT NOT NULL,
    PRIMARY KEY (resource_type, id)
);
CREATE INDEX entries_by_patient ON entries (nhs_number, section);
