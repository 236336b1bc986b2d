//! Telemetry rows.

use async_trait::async_trait;
use time::OffsetDateTime;

use super::SqliteStore;
use crate::model::to_ms;
use crate::rows::{self, to_json};
use crate::{StoreError, TelemetryRow, TelemetryStore};

/// Rows per INSERT statement.
const INSERT_ROWS: usize = 64;

#[async_trait]
impl TelemetryStore for SqliteStore {
    async fn insert_telemetry(&self, rows: &[TelemetryRow]) -> Result<u64, StoreError> {
        let mut tx = self.write_tx().await?;
        let mut inserted = 0;
        // In key order: rows of one device land on the same pages of the (device_id, seq)
        // and (device_id, ts) B-trees, so a batch touches each page once.
        let mut sorted: Vec<&TelemetryRow> = rows.iter().collect();
        sorted.sort_by(|a, b| (&a.device_id, a.seq).cmp(&(&b.device_id, b.seq)));
        // Multi-row statements: each statement is one round trip to SQLite's worker thread,
        // so a batch of 64 rows costs one instead of 64 (14 parameters a row stays well
        // under SQLite's parameter limit). Full chunks share one prepared statement.
        for chunk in sorted.chunks(INSERT_ROWS) {
            let mut alarms = Vec::with_capacity(chunk.len());
            for r in chunk {
                alarms.push(to_json(&r.alarms, "telemetry")?);
            }
            let mut q = sqlx::QueryBuilder::<sqlx::Sqlite>::new(
                "INSERT INTO telemetry (device_id, seq, ts, received_at, voltage_v, current_a, \
                 soc_pct, soh_pct, temp_min_c, temp_max_c, cell_min_v, cell_max_v, alarms, body) ",
            );
            q.push_values(chunk.iter().zip(alarms), |mut b, (r, alarms)| {
                b.push_bind(&r.device_id)
                    .push_bind(r.seq)
                    .push_bind(to_ms(r.ts))
                    .push_bind(to_ms(r.received_at))
                    .push_bind(r.voltage_v)
                    .push_bind(r.current_a)
                    .push_bind(r.soc_pct)
                    .push_bind(r.soh_pct)
                    .push_bind(r.temp_min_c)
                    .push_bind(r.temp_max_c)
                    .push_bind(r.cell_min_v)
                    .push_bind(r.cell_max_v)
                    .push_bind(alarms)
                    .push_bind(&r.body);
            });
            q.push(" ON CONFLICT (device_id, seq) DO NOTHING");
            inserted += q.build().execute(&mut *tx).await?.rows_affected();
        }
        tx.commit().await?;
        Ok(inserted)
    }

    async fn telemetry(
        &self,
        device_id: &str,
        since: OffsetDateTime,
        limit: u32,
    ) -> Result<Vec<TelemetryRow>, StoreError> {
        let mut rows = sqlx::query(
            "SELECT * FROM telemetry WHERE device_id = ? AND ts >= ? ORDER BY ts DESC, seq DESC LIMIT ?",
        )
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
}
