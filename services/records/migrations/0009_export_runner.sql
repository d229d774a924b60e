-- Which process runs an export and when it last said so (every chunk): a starting replica
-- fails only the exports it ran itself, and any replica fails one whose runner went quiet.
ALTER TABLE exports ADD COLUMN runner TEXT NOT NULL DEFAULT '';
ALTER TABLE exports ADD COLUMN heartbeat_us BIGINT NOT NULL DEFAULT 0;
