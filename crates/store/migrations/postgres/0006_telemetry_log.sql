-- The SQLite twin of this migration adds `telemetry_log`, where its telemetry is committed
-- before moving into `telemetry` in bulk: SQLite writes every changed page whole to its WAL,
-- and a group commit of readings from many devices changes a leaf page per device.
-- PostgreSQL needs none of it: its heap is appended in arrival order, and its WAL records
-- the rows and index entries written, not whole pages (besides a page's first change after
-- a checkpoint). Kept so that both directories stay numbered alike.
SELECT 1;
