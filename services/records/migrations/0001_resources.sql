-- Every version of every resource; the newest version is the current one.
CREATE TABLE resources (
    resource_type       TEXT   NOT NULL,
    id                  TEXT   NOT NULL,
    version             BIGINT NOT NULL,
    last_updated_us     BIGINT NOT NULL,
    nhs_number          TEXT   NOT NULL DEFAULT '',
    source_organisation TEXT   NOT NULL DEFAULT '',
    body                TEXT   NOT NULL,
    PRIMARY KEY (resource_type, id, version)
);
-- Which NHS number each Patient resource carries, to key events about the patient's data.
CREATE TABLE patients (
    id         TEXT PRIMARY KEY,
    nhs_number TEXT NOT NULL
);
