-- Every stored reading once, for SQL written against the database (reports, exports): the
-- hub commits telemetry to `telemetry_log` and moves it into `telemetry` in steps, and while
-- a move is under way its rows are in both tables (crates/store/src/sqlite/telemetry.rs).
-- PostgreSQL has a view of the same name over its one table, so such SQL runs on both.
CREATE VIEW telemetry_readings AS
SELECT * FROM telemetry
UNION ALL
SELECT * FROM telemetry_log AS l
WHERE NOT EXISTS (
    SELECT 1 FROM telemetry AS t WHERE t.device_id = l.device_id AND t.seq = l.seq
);
