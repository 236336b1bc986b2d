-- Telemetry keyed by (device_id, ts, seq): one B-tree, in the order reads want, instead of a
-- key on (device_id, seq) and an index on (device_id, ts) beside it. Every reading was
-- written into both; measured, the second tree cost about 40% of SQLite's work per row
-- (docs/storage.md). A document re-sent after a lost PUBACK carries the same ts and seq, so
-- it is still stored once.
DROP VIEW telemetry_readings;
CREATE TABLE telemetry_by_time (
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
    PRIMARY KEY (device_id, ts, seq)
) WITHOUT ROWID;
INSERT INTO telemetry_by_time SELECT * FROM telemetry ORDER BY device_id, ts, seq;
DROP TABLE telemetry;
ALTER TABLE telemetry_by_time RENAME TO telemetry;
-- As in 0007, with the new key.
CREATE VIEW telemetry_readings AS
SELECT * FROM telemetry
UNION ALL
SELECT * FROM telemetry_log AS l
WHERE NOT EXISTS (
    SELECT 1 FROM telemetry AS t
    WHERE t.device_id = l.device_id AND t.ts = l.ts AND t.seq = l.seq
);
