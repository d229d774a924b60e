-- Each person's sharing choices and care team as consent last published them (SharingState,
-- protobuf-encoded, then base64 so one query can read it beside the entries), replaced by every
-- newer one.
CREATE TABLE sharing (
    nhs_number TEXT PRIMARY KEY,
    state      TEXT   NOT NULL,
    changed_us BIGINT NOT NULL
);
