-- Events devices report (BMS unreachable/recovered, data dropped by the outbox, ...).
-- (device_id, seq) is unique: a re-sent event is stored once.
-- (PostgreSQL twin of migrations/sqlite/0003_device_events.sql.)
CREATE TABLE device_events (
    device_id   TEXT COLLATE "C" NOT NULL,
    seq         BIGINT  NOT NULL,
    ts          BIGINT  NOT NULL,
    received_at BIGINT  NOT NULL,
    kind        TEXT COLLATE "C" NOT NULL,
    body        TEXT    NOT NULL,
    PRIMARY KEY (device_id, seq)
);
CREATE INDEX device_events_kind ON device_events (kind, received_at);
