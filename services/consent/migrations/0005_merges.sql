-- Patient merges records has made (a RecordChanged with merged_into): each merged NHS number
-- and its survivor, kept flat like records' own table. A decision about any number of a group
-- reads the facts of every number in it: relationships, representatives and break-glass
-- grants of all apply, and each number's own directives and flags are decided separately,
-- the strictest answer winning.
CREATE TABLE merges (
    nhs_number TEXT   PRIMARY KEY,
    survivor   TEXT   NOT NULL
);
CREATE INDEX merges_by_survivor ON merges (survivor);
