-- An organisation's parent (e.g. a practice's ICB) and whether it is active: an inactive
-- organisation's clients get no tokens. Organisations are deactivated, never deleted.
ALTER TABLE organisations ADD COLUMN parent TEXT NOT NULL DEFAULT '';
ALTER TABLE organisations ADD COLUMN active INTEGER NOT NULL DEFAULT 1;
