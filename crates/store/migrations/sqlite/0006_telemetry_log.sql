-- Telemetry is committed here first, in arrival order, and moved into `telemetry` in bulk
-- (crates/store/src/sqlite/telemetry.rs says why). Same columns, in the same order, as
-- `telemetry`; no key: rows are appended at the table's right edge, so a group commit of
-- readings from many devices writes a few adjacent pages. A row here is never also in
-- `telemetry`, nor here twice: the writer checks both before appending.
CREATE TABLE telemetry_log (
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
    body         TEXT    NOT NULL
);
