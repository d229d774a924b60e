-- The trust's own patient numbers (PID-3 identifiers other than the NHS number), each with the
-- NHS number it was last sent with in a message that was applied: an A40 that names the merged
-- patient by local number alone (MRG-1 without an NHS number) is resolved through it.
CREATE TABLE patient_numbers (
    ods        TEXT   NOT NULL,
    local_id   TEXT   NOT NULL,
    nhs_number TEXT   NOT NULL,
    updated_at BIGINT NOT NULL,
    PRIMARY KEY (ods, local_id)
);
