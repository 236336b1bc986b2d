-- A move of the telemetry log now stores a device's many readings as chunks, and records how
-- far it has got (crates/store/src/sqlite/telemetry_writer.rs says why). `telemetry_move`
-- holds the move under way, if any: the log's rows up to `last_rowid` are being moved, in key
-- order, and every one whose key is at or below `(device_id, ts, seq)` has been written to
-- `telemetry` or a chunk (all NULL before the first step). Such a row is in two places until
-- the move deletes it from the log: readings and the view skip it there. A restart resumes
-- the move from that key, so no reading is written twice.
CREATE TABLE telemetry_move (
    id          INTEGER PRIMARY KEY CHECK (id = 1),
    last_rowid  INTEGER NOT NULL,
    device_id   TEXT,
    ts          INTEGER,
    seq         INTEGER
);
-- A move that the previous release left half done has no record here; its copied rows are
-- in `telemetry` and the log both. It is finished now, the way that release moved (`OR
-- IGNORE` skips the rows already copied), so the log starts out empty.
INSERT OR IGNORE INTO telemetry (device_id, seq, ts, received_at, voltage_v, current_a,
    soc_pct, soh_pct, temp_min_c, temp_max_c, cell_min_v, cell_max_v, alarms, body)
SELECT device_id, seq, ts, received_at, voltage_v, current_a, soc_pct, soh_pct, temp_min_c,
    temp_max_c, cell_min_v, cell_max_v, alarms, body
FROM telemetry_log ORDER BY device_id, ts, seq;
DELETE FROM telemetry_log;
-- As in 0009, the log's arm skipping the rows a move has written elsewhere (row values
-- compare column by column, as the move orders keys).
DROP VIEW telemetry_readings;
CREATE VIEW telemetry_readings AS
SELECT * FROM telemetry
UNION ALL
SELECT * FROM telemetry_log AS l
WHERE NOT EXISTS (
    SELECT 1 FROM telemetry_move AS m
    WHERE l.rowid <= m.last_rowid AND (l.device_id, l.ts, l.seq) <= (m.device_id, m.ts, m.seq)
)
UNION ALL
SELECT
    c.device_id,
    json_extract(r.value, '$[0]'),
    json_extract(r.value, '$[1]'),
    json_extract(r.value, '$[2]'),
    json_extract(r.value, '$[3]'),
    json_extract(r.value, '$[4]'),
    json_extract(r.value, '$[5]'),
    json_extract(r.value, '$[6]'),
    json_extract(r.value, '$[7]'),
    json_extract(r.value, '$[8]'),
    json_extract(r.value, '$[9]'),
    json_extract(r.value, '$[10]'),
    json_extract(r.value, '$[11]'),
    json_extract(r.value, '$[12]')
FROM telemetry_chunks AS c, json_each(c.readings) AS r;
