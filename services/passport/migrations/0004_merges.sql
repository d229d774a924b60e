-- Patient merges records has made (RecordState.merged_into), kept flat: the passport of a
-- merged person shows the entries of every NHS number of theirs, each number's entries only
-- where consent permits that number's (see views.rs).
CREATE TABLE merges (
    nhs_number TEXT PRIMARY KEY,
    survivor   TEXT NOT NULL
);
CREATE INDEX merges_by_survivor ON merges (survivor);
