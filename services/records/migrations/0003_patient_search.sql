-- Patient search by name, birth date, gender and postcode (FHIR Patient search parameters).
-- A birth date is kept as the first and last day it can be (YYYY-MM-DD), so partial dates
-- search as ranges; postcodes upper case without spaces, one per address, space-delimited.
ALTER TABLE patients ADD COLUMN birth_lo TEXT NOT NULL DEFAULT '';
ALTER TABLE patients ADD COLUMN birth_hi TEXT NOT NULL DEFAULT '';
ALTER TABLE patients ADD COLUMN gender TEXT NOT NULL DEFAULT '';
ALTER TABLE patients ADD COLUMN postcodes TEXT NOT NULL DEFAULT ' ';
-- The Patient version these columns and its names come from; 0 = not indexed yet (patients
-- written before this migration are indexed when the service starts).
ALTER TABLE patients ADD COLUMN indexed_version BIGINT NOT NULL DEFAULT 0;
CREATE INDEX patients_by_birth ON patients (birth_lo);
CREATE INDEX patients_unindexed ON patients (indexed_version);
-- Each family and given name of each patient: folded (lower case) for starts-with and
-- contains, as written for :exact; with the patient's birth date range, so that a search by
-- name and birth date is answered from this index alone (no lookup per namesake).
CREATE TABLE patient_names (
    patient_id TEXT NOT NULL,
    part       TEXT NOT NULL,
    folded     TEXT NOT NULL,
    exact      TEXT NOT NULL,
    birth_lo   TEXT NOT NULL,
    birth_hi   TEXT NOT NULL
);
CREATE INDEX patient_names_by_name ON patient_names (folded, part, birth_lo, birth_hi, patient_id);
CREATE INDEX patient_names_by_patient ON patient_names (patient_id);
