//! Telemetry rows.

use async_trait::async_trait;
use sqlx::Row;
use sqlx::sqlite::SqliteRow;
use time::OffsetDateTime;

use super::{SqliteStore, corrupt, to_json};
use crate::model::{from_ms, to_ms};
use crate::{StoreError, TelemetryRow, TelemetryStore};

fn telemetry_from_row(row: &SqliteRow) -> Result<TelemetryRow, StoreError> {
    let alarms: String = row.try_get("alarms")?;
    Ok(TelemetryRow {
        device_id: row.try_get("device_id")?,
        seq: row.try_get("seq")?,
        ts: from_ms(row.try_get("ts")?, "telemetry")?,
        received_at: from_ms(row.try_get("received_at")?, "telemetry")?,
        voltage_v: row.try_get("voltage_v")?,
        current_a: row.try_get("current_a")?,
        soc_pct: row.try_get("soc_pct")?,
        soh_pct: row.try_get("soh_pct")?,
        temp_min_c: row.try_get("temp_min_c")?,
        temp_max_c: row.try_get("temp_max_c")?,
        cell_min_v: row.try_get("cell_min_v")?,
        cell_max_v: row.try_get("cell_max_v")?,
        alarms: serde_json::from_str(&alarms)
            .map_err(|e| corrupt("telemetry", format!("alarms: {e}")))?,
        body: row.try_get("body")?,
    })
}

#[async_trait]
impl TelemetryStore for SqliteStore {
    async fn insert_telemetry(&self, rows: &[TelemetryRow]) -> Result<u64, StoreError> {
        let mut tx = self.write_tx().await?;
        let mut inserted = 0;
        for r in rows {
            inserted += sqlx::query(
                "INSERT INTO telemetry (device_id, seq, ts, received_at, voltage_v, current_a, \
                 soc_pct, soh_pct, temp_min_c, temp_max_c, cell_min_v, cell_max_v, alarms, body) \
                 VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) \
                 ON CONFLICT (device_id, seq) DO NOTHING",
            )
            .bind(&r.device_id)
            .bind(r.seq)
            .bind(to_ms(r.ts))
            .bind(to_ms(r.received_at))
            .bind(r.voltage_v)
            .bind(r.current_a)
            .bind(r.soc_pct)
            .bind(r.soh_pct)
            .bind(r.temp_min_c)
            .bind(r.temp_max_c)
            .bind(r.cell_min_v)
            .bind(r.cell_max_v)
            .bind(to_json(&r.alarms, "telemetry")?)
            .bind(&r.body)
            .execute(&mut *tx)
            .await?
            .rows_affected();
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
        .map(telemetry_from_row)
        .collect::<Result<Vec<_>, _>>()?;
        rows.reverse();
        Ok(rows)
    }
}
