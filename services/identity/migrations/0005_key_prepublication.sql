-- When each signing key starts signing: scheduled rotations publish the next key this long
-- before it signs anything, so relying parties that cache the JWK Set already hold it.
-- `seq` orders keys made in the same second.
ALTER TABLE signing_keys ADD COLUMN active_from BIGINT NOT NULL DEFAULT 0;
ALTER TABLE signing_keys ADD COLUMN seq BIGINT NOT NULL DEFAULT 0;
ALTER TABLE rsa_signing_keys ADD COLUMN active_from BIGINT NOT NULL DEFAULT 0;
ALTER TABLE rsa_signing_keys ADD COLUMN seq BIGINT NOT NULL DEFAULT 0;
