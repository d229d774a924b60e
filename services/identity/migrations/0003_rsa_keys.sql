-- RS256 keys, made only when a client asks for RS256 ID tokens; rotated like the ES256 keys.
CREATE TABLE rsa_signing_keys (
    kid        TEXT PRIMARY KEY,
    secret     TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    retire_at  BIGINT NOT NULL DEFAULT 0
);
