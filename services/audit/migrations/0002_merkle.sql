-- The log as a Merkle tree (RFC 6962): each entry's dense position and leaf hash, the signed
-- tree heads, and the log's Ed25519 signing key.
ALTER TABLE entries ADD COLUMN leaf_index BIGINT;
ALTER TABLE entries ADD COLUMN leaf_hash TEXT;
-- Entries written before this migration take their place in sequence order.
UPDATE entries SET leaf_index = (SELECT COUNT(*) FROM entries e2 WHERE e2.sequence < entries.sequence);
CREATE UNIQUE INDEX entries_by_leaf ON entries (leaf_index);
CREATE TABLE tree_heads (
    tree_size    BIGINT PRIMARY KEY,
    root_hash    TEXT   NOT NULL,
    timestamp_us BIGINT NOT NULL,
    signature    TEXT   NOT NULL
);
CREATE TABLE log_keys (
    id         BIGINT PRIMARY KEY,
    pkcs8      TEXT NOT NULL,
    public_key TEXT NOT NULL
);
