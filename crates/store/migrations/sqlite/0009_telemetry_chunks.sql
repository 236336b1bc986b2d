-- Readings of a dense commit stored as one row per device (crates/store/src/sqlite/chunks.rs
-- says why and how `readings` is laid out): `ts_last` and `seq_last` are the key of its
-- newest reading, `ts_first` the ts of its oldest, `n_readings` how many it holds. The
-- columns before `readings` sit on the row's first page, so looking a chunk up by its range
-- never reads the overflow pages its readings fill. The writer drops, before writing, any
-- reading a chunk, `telemetry` or `telemetry_log` already holds: a reading is in one place.
CREATE TABLE telemetry_chunks (
    device_id   TEXT    NOT NULL,
    ts_last     INTEGER NOT NULL,
    seq_last    INTEGER NOT NULL,
    ts_first    INTEGER NOT NULL,
    n_readings  INTEGER NOT NULL,
    readings    TEXT    NOT NULL
);
-- Reads walk a device's chunks newest first and stop once the rest are older than what they
-- need; the key is unique because no reading is stored twice.
CREATE UNIQUE INDEX telemetry_chunks_by_time ON telemetry_chunks (device_id, ts_last, seq_last);
-- As in 0008, with each chunk expanded to a row per reading. json_extract, not `->>`: a
-- view SQLite cannot parse breaks every query on the database, and `->>` needs SQLite 3.38,
-- newer than some systems' `sqlite3` shell.
DROP VIEW telemetry_readings;
CREATE VIEW telemetry_readings AS
SELECT * FROM telemetry
UNION ALL
SELECT * FROM telemetry_log AS l
WHERE NOT EXISTS (
    SELECT 1 FROM telemetry AS t
    WHERE t.device_id = l.device_id AND t.ts = l.ts AND t.seq = l.seq
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
