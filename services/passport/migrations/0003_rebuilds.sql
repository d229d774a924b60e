-- `sharedcare passport rebuild`: each run's consumer group, and how far it has applied each
-- partition of each topic (so an interrupted run resumes and knows when it has caught up).
CREATE TABLE rebuilds (
    consumer_group TEXT PRIMARY KEY,
    started_us     BIGINT NOT NULL,
    finished_us    BIGINT NOT NULL
);
CREATE TABLE rebuild_progress (
    consumer_group TEXT   NOT NULL,
    topic          TEXT   NOT NULL,
    partition_no   BIGINT NOT NULL,
    next_offset    BIGINT NOT NULL,
    PRIMARY KEY (consumer_group, topic, partition_no)
);
