-- Sign-in attempts per source address and minute, shared by every replica (the per-address
-- throttle); a successful attempt is taken back, so what stays counts failures.
CREATE TABLE address_attempts (
    address  TEXT NOT NULL,
    minute   BIGINT NOT NULL,
    attempts BIGINT NOT NULL,
    PRIMARY KEY (address, minute)
);
