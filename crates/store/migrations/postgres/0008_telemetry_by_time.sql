-- Telemetry keyed by (device_id, ts, seq), as on SQLite (its 0008 says why there): the key
-- is the B-tree time-range reads per device walk, so the separate (device_id, ts) index goes.
-- A document re-sent after a lost PUBACK carries the same ts and seq, so it is still stored
-- once. (With ts in the key, partitioning by time would also be possible now; it is not
-- done: docs/storage.md.)
ALTER TABLE telemetry DROP CONSTRAINT telemetry_pkey;
ALTER TABLE telemetry ADD PRIMARY KEY (device_id, ts, seq);
DROP INDEX telemetry_device_ts;
