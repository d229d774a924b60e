-- Kit tables in every service's database: the transactional outbox and the consumer inbox.
CREATE TABLE IF NOT EXISTS kit_outbox (
    seq        INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id   TEXT NOT NULL UNIQUE,
    topic      TEXT NOT NULL,
    event_key  TEXT NOT NULL,
    payload    BLOB NOT NULL,
    created_us INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS kit_inbox (
    consumer     TEXT NOT NULL,
    event_id     TEXT NOT NULL,
    topic        TEXT NOT NULL,
    partition_no INTEGER NOT NULL,
    event_offset INTEGER NOT NULL,
    applied_us   INTEGER NOT NULL,
    PRIMARY KEY (consumer, event_id)
);
