-- Foundation schema: device registry, certificates, telemetry, retained messages, audit log.
-- The PostgreSQL twin of migrations/sqlite/0001_foundation.sql: same tables, columns and
-- keys, so both backends map rows to records the same way. Times are Unix milliseconds (UTC)
-- in BIGINT; identifiers and keys use the "C" collation so ordering is by bytes, as in SQLite,
-- whatever the database's default collation.

CREATE TABLE devices (
    id            TEXT COLLATE "C" PRIMARY KEY NOT NULL,
    status        TEXT    NOT NULL CHECK (status IN ('active', 'disabled')),
    created_at    BIGINT  NOT NULL,
    last_seen_at  BIGINT,
    last_address  TEXT
);

CREATE TABLE certificates (
    serial         TEXT COLLATE "C" PRIMARY KEY NOT NULL,
    device_id      TEXT COLLATE "C" NOT NULL REFERENCES devices (id) ON DELETE CASCADE,
    fingerprint    TEXT COLLATE "C" NOT NULL UNIQUE,
    not_before     BIGINT  NOT NULL,
    not_after      BIGINT  NOT NULL,
    key_algorithm  TEXT    NOT NULL,
    issued_at      BIGINT  NOT NULL,
    status         TEXT    NOT NULL DEFAULT 'valid' CHECK (status IN ('valid', 'revoked', 'retired'))
);
CREATE INDEX certificates_device ON certificates (device_id);

-- One row per reading. (device_id, seq) is the natural key: a reading re-sent after a lost
-- PUBACK carries the same seq and is stored once. Not partitioned by time: a partitioned
-- table's unique key must contain the partition column, so (device_id, seq) could no longer
-- be unique and re-sent readings would be stored twice. Time-range reads per device use the
-- (device_id, ts) B-tree; docs/storage.md has the measured alternatives.
CREATE TABLE telemetry (
    device_id    TEXT COLLATE "C" NOT NULL,
    seq          BIGINT  NOT NULL,
    ts           BIGINT  NOT NULL,
    received_at  BIGINT  NOT NULL,
    voltage_v    DOUBLE PRECISION,
    current_a    DOUBLE PRECISION,
    soc_pct      DOUBLE PRECISION,
    soh_pct      DOUBLE PRECISION,
    temp_min_c   DOUBLE PRECISION,
    temp_max_c   DOUBLE PRECISION,
    cell_min_v   DOUBLE PRECISION,
    cell_max_v   DOUBLE PRECISION,
    alarms       TEXT    NOT NULL DEFAULT '[]',
    body         TEXT    NOT NULL,
    PRIMARY KEY (device_id, seq)
);
CREATE INDEX telemetry_device_ts ON telemetry (device_id, ts);

CREATE TABLE retained (
    topic       TEXT COLLATE "C" PRIMARY KEY NOT NULL,
    message     BYTEA   NOT NULL,
    updated_at  BIGINT  NOT NULL
);

CREATE TABLE audit_log (
    id       BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at       BIGINT  NOT NULL,
    actor    TEXT    NOT NULL,
    action   TEXT    NOT NULL,
    subject  TEXT    NOT NULL,
    detail   TEXT    NOT NULL DEFAULT ''
);
