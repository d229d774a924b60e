-- Care organisations by ODS code.
CREATE TABLE organisations (
    ods_code TEXT PRIMARY KEY,
    name     TEXT NOT NULL,
    kind     TEXT NOT NULL
);
-- Staff (CIS2-style). `uid` is the 12-digit nhsid_useruid.
CREATE TABLE people (
    uid            TEXT PRIMARY KEY,
    username       TEXT NOT NULL UNIQUE,
    given_name     TEXT NOT NULL,
    family_name    TEXT NOT NULL,
    email          TEXT NOT NULL DEFAULT '',
    password_hash  TEXT NOT NULL,
    totp_secret    TEXT NOT NULL DEFAULT '',
    recovery_codes TEXT NOT NULL DEFAULT '[]',
    failed_logins  BIGINT NOT NULL DEFAULT 0,
    locked_until   BIGINT NOT NULL DEFAULT 0
);
-- A person's role profiles: organisation + national RBAC job role + activities.
CREATE TABLE role_profiles (
    id             TEXT PRIMARY KEY,
    person_uid     TEXT NOT NULL REFERENCES people(uid),
    ods_code       TEXT NOT NULL REFERENCES organisations(ods_code),
    role_code      TEXT NOT NULL,
    role_name      TEXT NOT NULL,
    activity_codes TEXT NOT NULL DEFAULT '[]'
);
CREATE INDEX role_profiles_person ON role_profiles(person_uid);
-- Patients (NHS login-style), keyed by NHS number.
CREATE TABLE patients (
    nhs_number      TEXT PRIMARY KEY,
    username        TEXT NOT NULL UNIQUE,
    given_name      TEXT NOT NULL,
    family_name     TEXT NOT NULL,
    birthdate       TEXT NOT NULL,
    proofing_level  TEXT NOT NULL,
    password_hash   TEXT NOT NULL,
    failed_logins   BIGINT NOT NULL DEFAULT 0,
    locked_until    BIGINT NOT NULL DEFAULT 0
);
-- Registered OIDC clients. Secrets are high-entropy, stored as SHA-256.
CREATE TABLE clients (
    id          TEXT PRIMARY KEY,
    name        TEXT NOT NULL,
    secret_hash TEXT NOT NULL DEFAULT '',
    settings    TEXT NOT NULL
);
-- Identity sessions (the SSO cookie). Only the cookie's hash is stored.
CREATE TABLE sessions (
    id            TEXT PRIMARY KEY,
    cookie_hash   TEXT NOT NULL UNIQUE,
    subject_kind  TEXT NOT NULL,
    subject       TEXT NOT NULL,
    auth_time     BIGINT NOT NULL,
    last_seen     BIGINT NOT NULL,
    expires_at    BIGINT NOT NULL,
    amr           TEXT NOT NULL,
    mfa_pending   BIGINT NOT NULL DEFAULT 0,
    selected_role TEXT NOT NULL DEFAULT '',
    revoked       BIGINT NOT NULL DEFAULT 0
);
CREATE INDEX sessions_subject ON sessions(subject);
-- Which clients a session signed in to, for back-channel logout.
CREATE TABLE session_clients (
    session_id TEXT NOT NULL,
    client_id  TEXT NOT NULL,
    PRIMARY KEY (session_id, client_id)
);
-- Pending authorization requests (between /authorize and the code), by opaque id.
CREATE TABLE auth_requests (
    id         TEXT PRIMARY KEY,
    params     TEXT NOT NULL,
    expires_at BIGINT NOT NULL
);
-- Authorization codes (hash), single use.
CREATE TABLE codes (
    code_hash  TEXT PRIMARY KEY,
    grant_data TEXT NOT NULL,
    expires_at BIGINT NOT NULL,
    used       BIGINT NOT NULL DEFAULT 0
);
-- Refresh tokens (hash) in rotation families; reuse of a rotated token revokes the family.
CREATE TABLE refresh_tokens (
    token_hash TEXT PRIMARY KEY,
    family     TEXT NOT NULL,
    session_id TEXT NOT NULL,
    grant_data TEXT NOT NULL,
    expires_at BIGINT NOT NULL,
    used       BIGINT NOT NULL DEFAULT 0
);
CREATE INDEX refresh_tokens_family ON refresh_tokens(family);
CREATE INDEX refresh_tokens_session ON refresh_tokens(session_id);
CREATE TABLE revoked_families (
    family     TEXT PRIMARY KEY,
    revoked_at BIGINT NOT NULL
);
-- Access tokens revoked before expiry (RFC 7009), by jti.
CREATE TABLE revoked_tokens (
    jti        TEXT PRIMARY KEY,
    expires_at BIGINT NOT NULL
);
-- Client assertion ids seen (private_key_jwt replay protection).
CREATE TABLE assertion_ids (
    jti        TEXT PRIMARY KEY,
    expires_at BIGINT NOT NULL
);
-- Signing keys. The newest is active; older ones stay published until `retire_at`.
CREATE TABLE signing_keys (
    kid        TEXT PRIMARY KEY,
    secret     TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    retire_at  BIGINT NOT NULL DEFAULT 0
);
