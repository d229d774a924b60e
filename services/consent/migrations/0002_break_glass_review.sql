-- Information governance's review of a break-glass grant.
ALTER TABLE break_glass ADD COLUMN reviewed_by TEXT NOT NULL DEFAULT '';
ALTER TABLE break_glass ADD COLUMN review_note TEXT NOT NULL DEFAULT '';
