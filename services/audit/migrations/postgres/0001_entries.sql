-- The append-only audit log (FHIR AuditEvent / IHE BALP shaped). Rows are never updated.
CREATE TABLE entries (
    sequence           BIGSERIAL PRIMARY KEY,
    event_id           TEXT   NOT NULL UNIQUE,
    nhs_number         TEXT   NOT NULL,
    actor              TEXT   NOT NULL,
    actor_organisation TEXT   NOT NULL,
    actor_role         TEXT   NOT NULL,
    action             TEXT   NOT NULL,
    resources          TEXT   NOT NULL,
    purpose            TEXT   NOT NULL,
    reason             TEXT   NOT NULL,
    outcome            TEXT   NOT NULL,
    time_us            BIGINT NOT NULL,
    trace_id           TEXT   NOT NULL,
    service            TEXT   NOT NULL
);
CREATE INDEX entries_by_patient ON entries (nhs_number, sequence);
