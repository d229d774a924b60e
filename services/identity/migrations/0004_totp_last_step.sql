-- The last TOTP time step accepted for each person: a code cannot be used twice.
ALTER TABLE people ADD COLUMN totp_last_step BIGINT NOT NULL DEFAULT 0;
