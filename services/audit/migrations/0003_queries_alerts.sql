-- Queries by person and organisation (every query names a patient, a person or an organisation).
CREATE INDEX entries_by_actor ON entries (actor, time_us);
CREATE INDEX entries_by_organisation ON entries (actor_organisation, sequence);
-- Alerts raised while appending (break-glass, denied access, one person viewing many patients).
-- The id makes raising idempotent: one alert per entry, or per person and time window.
CREATE TABLE alerts (
    id                 TEXT   PRIMARY KEY,
    kind               TEXT   NOT NULL,
    actor              TEXT   NOT NULL,
    actor_organisation TEXT   NOT NULL,
    nhs_number         TEXT   NOT NULL,
    detail             TEXT   NOT NULL,
    time_us            BIGINT NOT NULL,
    leaf_index         BIGINT NOT NULL
);
CREATE INDEX alerts_by_time ON alerts (time_us);
