-- The SQLite twin of this migration adds `telemetry_chunks`, where a commit holding many
-- readings of a device stores them as one row: SQLite's work per row (a descent of the key's
-- B-tree, a record) was the largest item of the hub's CPU per message. PostgreSQL loads a
-- batch with one COPY into its heap, and keeps a row per reading. Kept so that both
-- directories stay numbered alike.
SELECT 1;
