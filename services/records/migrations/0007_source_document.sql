-- Where a version came from when the writer said (e.g. the HL7 v2 message a feed mapped it
-- from, `hl7v2:<sender>:<control id>`), named as an entity of its Provenance.
ALTER TABLE resources ADD COLUMN source_document TEXT NOT NULL DEFAULT '';
