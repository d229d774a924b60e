-- Each person's sharing choices and care team as consent last published them (SharingState,
-- protobuf-encoded), replaced by every newer one. Portable: SQLite keeps BYTEA values as blobs.
CREATE TABLE sharing (
    nhs_number TEXT PRIMARY KEY,
    state      BYTEA  NOT NULL,
    changed_us BIGINT NOT NULL
);
