-- When each contact last wrote to us (WhatsApp's 24-hour window), keyed
-- like opt-outs: a salted hash of the address, never the address.
CREATE TABLE inbound (
    contact BYTEA PRIMARY KEY,
    last_ms BIGINT NOT NULL
);
