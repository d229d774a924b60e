-- WebAuthn second factors (passkeys and security keys): one row per credential, its public
-- key and signature counter as webauthn-rs serialises them. A credential id belongs to one
-- account only.
CREATE TABLE webauthn_credentials (
    cred_id    TEXT PRIMARY KEY,
    uid        TEXT NOT NULL,
    name       TEXT NOT NULL,
    passkey    TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    last_used  BIGINT NOT NULL DEFAULT 0
);
CREATE INDEX webauthn_credentials_uid ON webauthn_credentials (uid);

-- A registration or sign-in ceremony in flight: the challenge state, kept on the server and
-- taken once (a replayed response finds nothing), keyed by session and kind.
CREATE TABLE webauthn_ceremonies (
    id         TEXT PRIMARY KEY,
    uid        TEXT NOT NULL,
    state      TEXT NOT NULL,
    expires_at BIGINT NOT NULL
);
