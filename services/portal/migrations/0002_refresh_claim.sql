-- One replica at a time refreshes a session's tokens: the time (µs) a replica claimed it, 0
-- when nobody holds a claim (see Sessions::claim_refresh).
ALTER TABLE sessions ADD COLUMN refresh_claim_us BIGINT NOT NULL DEFAULT 0;
