-- Our private_key_jwt keys as a relying party of each upstream provider (brokering).
CREATE TABLE rp_keys (
    upstream TEXT PRIMARY KEY,
    secret   TEXT NOT NULL
);
