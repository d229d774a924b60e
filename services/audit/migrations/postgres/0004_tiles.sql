-- The Merkle tree as tiles (C2SP tlog-tiles, height 8): each row is one tile's hashes, 32 bytes
-- apiece, at most 256. Full tiles never change; the partial tile at each level's right edge is
-- rewritten as the log grows, in the appending transaction. Existing logs are converted from
-- entries.leaf_hash when the service starts (no root changes); new entries leave it empty.
CREATE TABLE tiles (
    level  BIGINT NOT NULL,
    idx    BIGINT NOT NULL,
    hashes BYTEA  NOT NULL,
    PRIMARY KEY (level, idx)
);
