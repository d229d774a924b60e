-- Patient merges records has made (RecordChanged.merged_into), kept flat: a patient's trail
-- is the trail of every NHS number of their person, so both trails appear under the survivor.
CREATE TABLE merges (
    nhs_number TEXT PRIMARY KEY,
    survivor   TEXT NOT NULL
);
CREATE INDEX merges_by_survivor ON merges (survivor);
