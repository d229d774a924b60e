-- Each signed tree head also as a C2SP tlog-checkpoint signed-note (heads signed before this
-- migration get theirs when the service starts).
ALTER TABLE tree_heads ADD COLUMN checkpoint TEXT;
