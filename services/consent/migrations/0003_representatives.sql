-- Authorised representatives (e.g. lasting power of attorney for health and welfare): a person
-- who may see and manage a patient's record and sharing choices on their behalf.
CREATE TABLE representatives (
    id                 TEXT   PRIMARY KEY,
    nhs_number         TEXT   NOT NULL,
    representative_nhs TEXT   NOT NULL,
    kind               TEXT   NOT NULL,
    start_at           BIGINT NOT NULL,
    end_at             BIGINT NOT NULL DEFAULT 0
);
CREATE INDEX representatives_by_patient ON representatives (nhs_number);
