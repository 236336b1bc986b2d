-- Foundation schema: device registry, certificates, telemetry, retained messages, audit log.
-- Times are Unix milliseconds (UTC).

CREATE TABLE devices (
    id            TEXT    PRIMARY KEY NOT NULL,
    status        TEXT    NOT NULL CHECK (status IN ('active', 'disabled')),
    created_at    INTEGER NOT NULL,
    last_seen_at  INTEGER,
    last_address  TEXT
);

CREATE TABLE certificates (
    serial         TEXT    PRIMARY KEY NOT NULL,
    device_id      TEXT    NOT NULL REFERENCES devices (id) ON DELETE CASCADE,
    fingerprint    TEXT    NOT NULL UNIQUE,
    not_before     INTEGER NOT NULL,
    not_after      INTEGER NOT NULL,
    key_algorithm  TEXT    NOT NULL,
    issued_at      INTEGER NOT NULL,
    status         TEXT    NOT NULL DEFAULT 'valid' CHECK (status IN ('valid', 'revoked', 'retired'))
);
CREATE INDEX certificates_device ON certificates (device_id);

-- One row per reading. (device_id, seq) is the natural key: a reading re-sent after a lost
-- PUBACK carries the same seq and is stored once.
CREATE TABLE telemetry (
    device_id    TEXT    NOT NULL,
    seq          INTEGER NOT NULL,
    ts           INTEGER NOT NULL,
    received_at  INTEGER NOT NULL,
    voltage_v    REAL,
    current_a    REAL,
    soc_pct      REAL,
    soh_pct      REAL,
    temp_min_c   REAL,
    temp_max_c   REAL,
    cell_min_v   REAL,
    cell_max_v   REAL,
    alarms       TEXT    NOT NULL DEFAULT '[]',
    body         TEXT    NOT NULL,
    PRIMARY KEY (device_id, seq)
) WITHOUT ROWID;
CREATE INDEX telemetry_device_ts ON telemetry (device_id, ts);

CREATE TABLE retained (
    topic       TEXT    PRIMARY KEY NOT NULL,
    message     BLOB    NOT NULL,
    updated_at  INTEGER NOT NULL
);

CREATE TABLE audit_log (
    id       INTEGER PRIMARY KEY AUTOINCREMENT,
    at       INTEGER NOT NULL,
    actor    TEXT    NOT NULL,
    action   TEXT    NOT NULL,
    subject  TEXT    NOT NULL,
    detail   TEXT    NOT NULL DEFAULT ''
);
