-- The SQLite twin of this migration records how far a move of its telemetry log has got, now
-- that moves write chunks. PostgreSQL has neither the log nor chunks. Kept so that both
-- directories stay numbered alike.
SELECT 1;
