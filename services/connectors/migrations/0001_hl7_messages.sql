-- Every HL7 v2 message a sender delivered and the ACK it got, keyed by the sender and the
-- message control id (MSH-10): a resend is answered from here and changes nothing. The raw
-- message is kept for connectors.retention_days.
CREATE TABLE hl7_messages (
    sender       TEXT   NOT NULL,
    control_id   TEXT   NOT NULL,
    received_at  BIGINT NOT NULL,
    message_type TEXT   NOT NULL,
    nhs_number   TEXT   NOT NULL DEFAULT '',
    ack_code     TEXT   NOT NULL,
    ack          TEXT   NOT NULL,
    produced     TEXT   NOT NULL DEFAULT '',
    raw          TEXT   NOT NULL,
    PRIMARY KEY (sender, control_id)
);
CREATE INDEX hl7_messages_by_time ON hl7_messages (received_at);
