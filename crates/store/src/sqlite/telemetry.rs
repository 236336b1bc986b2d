//! Telemetry rows: written by the telemetry writer's thread (`telemetry_writer`, which says
//! how the log, the table and the chunks share them), read here through the pool.

use async_trait::async_trait;
use futures::TryStreamExt;
use sqlx::Row;
use time::OffsetDateTime;

use super::SqliteStore;
use super::chunks::{self, Newest, Stored};
use crate::model::to_ms;
use crate::rows;
use crate::{Durable, StoreError, TelemetryRow, TelemetryStore};

/// The table's columns, in the order of both tables and of `rows::telemetry`.
const COLUMNS: &str = "device_id, seq, ts, received_at, voltage_v, current_a, soc_pct, \
    soh_pct, temp_min_c, temp_max_c, cell_min_v, cell_max_v, alarms, body";

impl SqliteStore {
    /// Moves every row of the log into `telemetry` or its chunks (finishing a move under way
    /// first); returns how many rows left the log. The writer moves rows by itself as it
    /// commits.
    pub async fn compact_telemetry(&self) -> Result<u64, StoreError> {
        self.telemetry_writer.compact().await
    }
}

#[async_trait]
impl TelemetryStore for SqliteStore {
    async fn commit_telemetry(
        &self,
        rows: Vec<TelemetryRow>,
    ) -> Result<(u64, Durable), StoreError> {
        // The writer's thread takes the batch as it is: a copy of every reading (three
        // allocations each, freed again on that thread) was 3-5% of the hub's CPU at QoS 0
        // saturation.
        self.telemetry_writer.insert(rows).await
    }

    async fn telemetry(
        &self,
        device_id: &str,
        since: OffsetDateTime,
        limit: u32,
    ) -> Result<Vec<TelemetryRow>, StoreError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let since = to_ms(since);
        // One read transaction, so both statements see the same commit: a move's step writes
        // a reading into a chunk or the table and records that the log's copy is to be
        // skipped in one commit; seen half before and half after it, the reading would be
        // read twice or not at all.
        let mut tx = self.pool.begin().await?;
        // The table and the log, the log's arm skipping rows a move has written elsewhere
        // (as the `telemetry_readings` view does): SQLite merges the two arms in order,
        // walking `telemetry` down its key and stopping at the limit.
        let found = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM telemetry WHERE device_id = ?1 AND ts >= ?2 \
             UNION ALL \
             SELECT {COLUMNS} FROM telemetry_log AS l WHERE device_id = ?1 AND ts >= ?2 \
             AND NOT EXISTS (SELECT 1 FROM telemetry_move AS m WHERE l.rowid <= m.last_rowid \
                 AND (l.device_id, l.ts, l.seq) <= (m.device_id, m.ts, m.seq)) \
             ORDER BY ts DESC, seq DESC LIMIT ?3"
        )))
        .bind(device_id)
        .bind(since)
        .bind(i64::from(limit))
        .fetch_all(&mut *tx)
        .await?
        .iter()
        .map(rows::telemetry)
        .collect::<Result<Vec<_>, _>>()?;
        // Then the chunks, newest first, until the rest are all older than the newest
        // `limit` found (`Newest` says when). Not through the view: it would expand every
        // chunk of the device since `since` before sorting.
        let mut newest = Newest::new(found, limit as usize);
        {
            let mut chunks = sqlx::query(
                "SELECT ts_last, seq_last, readings, typeof(readings) AS kind \
                 FROM telemetry_chunks \
                 WHERE device_id = ?1 AND ts_last >= ?2 ORDER BY ts_last DESC, seq_last DESC",
            )
            .bind(device_id)
            .bind(since)
            .fetch(&mut *tx);
            while let Some(row) = chunks.try_next().await? {
                let last = (row.try_get("ts_last")?, row.try_get("seq_last")?);
                if !newest.wants(last) {
                    break;
                }
                let kind: &str = row.try_get("kind")?;
                let stored = if kind == "blob" {
                    Stored::Jsonb(row.try_get("readings")?)
                } else {
                    Stored::Text(row.try_get("readings")?)
                };
                newest.add(chunks::decode(device_id, stored, since)?);
            }
        }
        tx.commit().await?;
        Ok(newest.finish())
    }

    fn telemetry_upkeep_failures(&self) -> u64 {
        self.telemetry_writer.move_failures()
    }
}
