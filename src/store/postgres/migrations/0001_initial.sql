-- The tables of the PostgreSQL store; see src/store/postgres.rs.
-- Keys are the sled store's: a case key is `source \0 id` (bytea, so it
-- sorts as sled's does), a contact is 32 bytes of HMAC, instants are
-- milliseconds since the epoch.

-- Generated once and shared by every replica: the contact salt, the
-- unsubscribe key.
CREATE TABLE settings (
    name  text PRIMARY KEY,
    value bytea NOT NULL
);

-- One key per case; every value of the case is sealed under it. Erasing
-- the case deletes the row in the erasure's transaction.
CREATE TABLE case_keys (
    case_key bytea PRIMARY KEY,
    id       bytea NOT NULL UNIQUE,
    key      bytea NOT NULL
);

-- The case record (sealed). The lease columns are for replicas claiming
-- work (owner, until, fencing number); nothing uses them yet.
CREATE TABLE cases (
    case_key     bytea PRIMARY KEY,
    key_id       bytea,
    value        bytea NOT NULL,
    lease_owner  text,
    lease_until  bigint,
    fencing      bigint NOT NULL DEFAULT 0
);

-- The schedule index: when the scheduler looks at a case next.
CREATE TABLE schedule (
    due_ms   bigint NOT NULL,
    case_key bytea NOT NULL,
    PRIMARY KEY (due_ms, case_key)
);
CREATE INDEX schedule_by_case ON schedule (case_key);

-- Messages waiting to go (sealed), by when they are due.
CREATE TABLE outbox (
    id              uuid PRIMARY KEY,
    case_key        bytea NOT NULL,
    key_id          bytea,
    value           bytea NOT NULL,
    next_attempt_ms bigint NOT NULL,
    lease_owner     text,
    lease_until     bigint,
    fencing         bigint NOT NULL DEFAULT 0
);
CREATE INDEX outbox_due ON outbox (next_attempt_ms, id);
CREATE INDEX outbox_by_case ON outbox (case_key);

-- A provider's acceptance, recorded the moment it arrives.
CREATE TABLE delivered (
    id    uuid PRIMARY KEY,
    value bytea NOT NULL
);

-- Stored API answers (sealed), by the hash of the idempotency key.
CREATE TABLE idempotency (
    key      bytea PRIMARY KEY,
    case_key bytea NOT NULL,
    key_id   bytea,
    value    bytea NOT NULL,
    at_ms    bigint NOT NULL
);
CREATE INDEX idempotency_by_case ON idempotency (case_key);

-- The cases of one recipient (and of one short page link).
CREATE TABLE recipients (
    contact  bytea NOT NULL,
    case_key bytea NOT NULL,
    PRIMARY KEY (contact, case_key)
);
CREATE INDEX recipients_by_case ON recipients (case_key);

-- Opt-outs, kept when cases are erased.
CREATE TABLE optouts (
    contact bytea PRIMARY KEY,
    value   bytea NOT NULL
);

-- When we last sent to a recipient (pacing).
CREATE TABLE contacts (
    contact bytea PRIMARY KEY,
    last_ms bigint NOT NULL
);
