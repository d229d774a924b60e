-- FHIR Bulk Data exports: one row per kick-off (owned by the client that started it), and
-- the NDJSON files it wrote (one per resource type, on the records service's disk).
CREATE TABLE exports (
    id             TEXT   PRIMARY KEY,
    client_id      TEXT   NOT NULL,
    request        TEXT   NOT NULL,
    status         TEXT   NOT NULL,
    error          TEXT   NOT NULL,
    transaction_us BIGINT NOT NULL,
    finished_us    BIGINT NOT NULL,
    patients       BIGINT NOT NULL,
    resources      BIGINT NOT NULL
);
CREATE TABLE export_files (
    export_id     TEXT   NOT NULL,
    resource_type TEXT   NOT NULL,
    count         BIGINT NOT NULL,
    PRIMARY KEY (export_id, resource_type)
);
