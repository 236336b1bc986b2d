-- Every stored reading once, for SQL written against the database (reports, exports). On
-- SQLite this view merges `telemetry` with the log its readings pass through first; here
-- there is only the table, and the view lets the same SQL run on both backends.
CREATE VIEW telemetry_readings AS SELECT * FROM telemetry;
