-- Kit tables in every service's schema: the transactional outbox and the consumer inbox.
CREATE TABLE IF NOT EXISTS kit_outbox (
    seq        BIGSERIAL PRIMARY KEY,
    event_id   TEXT NOT NULL UNIQUE,
    topic      TEXT NOT NULL,
    event_key  TEXT NOT NULL,
    payload    BYTEA NOT NULL,
    created_us BIGINT NOT NULL
);
CREATE TABLE IF NOT EXISTS kit_inbox (
    consumer     TEXT NOT NULL,
    event_id     TEXT NOT NULL,
    topic        TEXT NOT NULL,
    partition_no INTEGER NOT NULL,
    event_offset BIGINT NOT NULL,
    applied_us   BIGINT NOT NULL,
    PRIMARY KEY (consumer, event_id)
);
