-- Patients' directives (FHIR R4 Consent shaped; the provision kept as JSON).
CREATE TABLE directives (
    id         TEXT PRIMARY KEY,
    nhs_number TEXT   NOT NULL,
    status     TEXT   NOT NULL,
    provision  TEXT   NOT NULL,
    updated_at BIGINT NOT NULL
);
CREATE INDEX directives_by_patient ON directives (nhs_number);
-- The national data opt-out and the GP dissent flag.
CREATE TABLE patient_flags (
    nhs_number       TEXT PRIMARY KEY,
    national_opt_out BIGINT NOT NULL,
    gp_dissent       BIGINT NOT NULL
);
-- Legitimate relationships between an organisation and a patient.
CREATE TABLE relationships (
    id         TEXT PRIMARY KEY,
    nhs_number TEXT   NOT NULL,
    ods_code   TEXT   NOT NULL,
    kind       TEXT   NOT NULL,
    start_at   BIGINT NOT NULL,
    end_at     BIGINT NOT NULL DEFAULT 0
);
CREATE INDEX relationships_by_patient ON relationships (nhs_number);
-- Break-glass grants, kept for review.
CREATE TABLE break_glass (
    id          TEXT PRIMARY KEY,
    nhs_number  TEXT   NOT NULL,
    person_id   TEXT   NOT NULL,
    ods_code    TEXT   NOT NULL,
    reason_code TEXT   NOT NULL,
    reason_text TEXT   NOT NULL,
    start_at    BIGINT NOT NULL,
    end_at      BIGINT NOT NULL,
    reviewed    BIGINT NOT NULL DEFAULT 0
);
CREATE INDEX break_glass_by_patient ON break_glass (nhs_number);
