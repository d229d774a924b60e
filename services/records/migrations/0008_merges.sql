-- Patient merges (HL7 v2 A40, or a Patient written with a `replaced-by` link): each NHS number
-- merged into another, the survivor. Kept flat: a survivor is never itself merged (merging a
-- survivor moves its merged numbers to the new survivor), so one lookup finds a person's group.
CREATE TABLE merges (
    nhs_number       TEXT   PRIMARY KEY,
    survivor         TEXT   NOT NULL,
    -- The Patient the merged one was linked to (where reads of the merged one point).
    survivor_patient TEXT   NOT NULL,
    merged_us        BIGINT NOT NULL
);
CREATE INDEX merges_by_survivor ON merges (survivor);
