//! Device events.

use async_trait::async_trait;

use super::PgStore;
use crate::model::to_ms;
use crate::rows;
use crate::{EventRow, EventStore, StoreError};

#[async_trait]
impl EventStore for PgStore {
    async fn insert_events(&self, rows: &[EventRow]) -> Result<u64, StoreError> {
        let mut tx = self.write_tx().await?;
        let mut inserted = 0;
        for e in rows {
            inserted += sqlx::query(
                "INSERT INTO device_events (device_id, seq, ts, received_at, kind, body) \
                 VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (device_id, seq) DO NOTHING",
            )
            .bind(&e.device_id)
            .bind(e.seq)
            .bind(to_ms(e.ts))
            .bind(to_ms(e.received_at))
            .bind(&e.kind)
            .bind(&e.body)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        }
        tx.commit().await?;
        Ok(inserted)
    }

    async fn events(&self, device_id: &str, limit: u32) -> Result<Vec<EventRow>, StoreError> {
        let rows = sqlx::query(
            "SELECT * FROM device_events WHERE device_id = $1 ORDER BY seq DESC LIMIT $2",
        )
        .bind(device_id)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        let mut out = rows
            .iter()
            .map(rows::event)
            .collect::<Result<Vec<_>, StoreError>>()?;
        out.reverse();
        Ok(out)
    }
}
