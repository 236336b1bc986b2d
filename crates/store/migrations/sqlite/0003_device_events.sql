-- Events devices report (BMS unreachable/recovered, data dropped by the outbox, ...).
-- (device_id, seq) is unique: a re-sent event is stored once.
CREATE TABLE device_events (
    device_id   TEXT    NOT NULL,
    seq         INTEGER NOT NULL,
    ts          INTEGER NOT NULL,
    received_at INTEGER NOT NULL,
    kind        TEXT    NOT NULL,
    body        TEXT    NOT NULL,
    PRIMARY KEY (device_id, seq)
);
CREATE INDEX device_events_kind ON device_events (kind, received_at);
