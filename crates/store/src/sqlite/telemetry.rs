//! Telemetry rows: written by the telemetry writer's thread (`telemetry_writer`, which says
//! how the log and the table share them), read here through the pool.

use async_trait::async_trait;
use time::OffsetDateTime;

use super::SqliteStore;
use crate::model::to_ms;
use crate::rows;
use crate::{Durable, StoreError, TelemetryRow, TelemetryStore};

/// The table's columns, in the order of both tables and of `rows::telemetry`.
const COLUMNS: &str = "device_id, seq, ts, received_at, voltage_v, current_a, soc_pct, \
    soh_pct, temp_min_c, temp_max_c, cell_min_v, cell_max_v, alarms, body";

impl SqliteStore {
    /// Moves every row of the log into `telemetry` (finishing a move under way first);
    /// returns how many rows left the log. The writer moves rows by itself as it commits.
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
        // `telemetry_readings` (migration 0007) is a compound SELECT of both tables, the log's
        // arm skipping rows a move has copied; SQLite pushes the conditions into both arms
        // and merges them in order, walking `telemetry` down its (device_id, ts) index and
        // stopping at the limit.
        let mut rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM telemetry_readings WHERE device_id = ?1 AND ts >= ?2 \
             ORDER BY ts DESC, seq DESC LIMIT ?3"
        )))
        .bind(device_id)
        .bind(to_ms(since))
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(rows::telemetry)
        .collect::<Result<Vec<_>, _>>()?;
        rows.reverse();
        Ok(rows)
    }

    fn telemetry_upkeep_failures(&self) -> u64 {
        self.telemetry_writer.move_failures()
    }
}
