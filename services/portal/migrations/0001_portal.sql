-- The portal's own state (portable SQL: Postgres and SQLite alike). Patient data is never
-- stored here: it stays in records and the passport, and every page asks them again.
--
-- Signed-in browsers. The cookie holds a random token; only its SHA-256 is kept. `sid` is
-- identity's session id (from the ID token), by which a back-channel logout finds the rows.
CREATE TABLE sessions (
    id_hash    TEXT PRIMARY KEY,
    sid        TEXT NOT NULL,
    -- JSON: who (kind, names, role, organisation), tokens, CSRF token, break-glass patients
    body       TEXT NOT NULL,
    created_us BIGINT NOT NULL,
    -- last use; idle sessions end
    seen_us    BIGINT NOT NULL
);
CREATE INDEX sessions_by_sid ON sessions (sid);
-- Sign-ins under way: the PKCE verifier and nonce of each authorization request, by `state`,
-- taken (read and deleted) by the callback so a replayed callback finds nothing.
CREATE TABLE logins (
    state      TEXT PRIMARY KEY,
    body       TEXT NOT NULL,
    created_us BIGINT NOT NULL
);
-- Break-glass notices a patient has seen (the passport shows each until then).
CREATE TABLE notices_seen (
    nhs_number TEXT NOT NULL,
    notice     TEXT NOT NULL,
    seen_us    BIGINT NOT NULL,
    PRIMARY KEY (nhs_number, notice)
);
