//! Staged rollouts.

use async_trait::async_trait;
use time::OffsetDateTime;

use super::{SqliteStore, is_unique_violation};
use crate::model::to_ms;
use crate::rows;
use crate::{RolloutDeviceRow, RolloutRow, RolloutStore, StoreError};

#[async_trait]
impl RolloutStore for SqliteStore {
    async fn create_rollout(
        &self,
        r: &RolloutRow,
        devices: &[RolloutDeviceRow],
    ) -> Result<(), StoreError> {
        let mut tx = self.write_tx().await?;
        let inserted = sqlx::query(
            "INSERT INTO rollouts (id, target, version, plan, state, wave, accepted_failures, \
             reason, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(&r.id)
        .bind(&r.target)
        .bind(&r.version)
        .bind(&r.plan)
        .bind(&r.state)
        .bind(r.wave)
        .bind(r.accepted_failures)
        .bind(&r.reason)
        .bind(to_ms(r.created_at))
        .bind(to_ms(r.updated_at))
        .execute(&mut *tx)
        .await;
        match inserted {
            Err(e) if is_unique_violation(&e) => {
                return Err(StoreError::AlreadyExists {
                    what: "rollout",
                    id: r.id.clone(),
                });
            }
            other => other?,
        };
        for d in devices {
            sqlx::query(
                "INSERT INTO rollout_devices (rollout_id, device_id, wave, state, command, \
                 detail, last_seq, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            )
            .bind(&r.id)
            .bind(&d.device_id)
            .bind(d.wave)
            .bind(&d.state)
            .bind(&d.command)
            .bind(&d.detail)
            .bind(d.last_seq)
            .bind(to_ms(d.updated_at))
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn rollout(&self, id: &str) -> Result<Option<RolloutRow>, StoreError> {
        sqlx::query("SELECT * FROM rollouts WHERE id = ?")
            .bind(id)
            .fetch_optional(&self.pool)
            .await?
            .as_ref()
            .map(rows::rollout)
            .transpose()
    }

    async fn rollouts(&self) -> Result<Vec<RolloutRow>, StoreError> {
        sqlx::query("SELECT * FROM rollouts ORDER BY created_at DESC, id")
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(rows::rollout)
            .collect()
    }

    async fn rollout_devices(&self, id: &str) -> Result<Vec<RolloutDeviceRow>, StoreError> {
        sqlx::query("SELECT * FROM rollout_devices WHERE rollout_id = ? ORDER BY wave, device_id")
            .bind(id)
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(rows::rollout_device)
            .collect()
    }

    async fn set_rollout_state(&self, r: &RolloutRow) -> Result<(), StoreError> {
        let done = sqlx::query(
            "UPDATE rollouts SET state = ?, wave = ?, accepted_failures = ?, reason = ?, \
             updated_at = ? WHERE id = ?",
        )
        .bind(&r.state)
        .bind(r.wave)
        .bind(r.accepted_failures)
        .bind(&r.reason)
        .bind(to_ms(OffsetDateTime::now_utc()))
        .bind(&r.id)
        .execute(&self.pool)
        .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound {
                what: "rollout",
                id: r.id.clone(),
            });
        }
        Ok(())
    }

    async fn set_rollout_device(
        &self,
        id: &str,
        device_id: &str,
        state: &str,
        command: Option<&str>,
        seen_seq: i64,
    ) -> Result<(), StoreError> {
        let done = sqlx::query(
            "UPDATE rollout_devices SET state = CASE WHEN last_seq = ? THEN ? ELSE state END, \
             command = COALESCE(?, command), updated_at = ? \
             WHERE rollout_id = ? AND device_id = ?",
        )
        .bind(seen_seq)
        .bind(state)
        .bind(command)
        .bind(to_ms(OffsetDateTime::now_utc()))
        .bind(id)
        .bind(device_id)
        .execute(&self.pool)
        .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound {
                what: "rollout device",
                id: format!("{id}/{device_id}"),
            });
        }
        Ok(())
    }

    async fn rollout_report(
        &self,
        id: &str,
        device_id: &str,
        seq: i64,
        state: &str,
        detail: Option<&str>,
    ) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "UPDATE rollout_devices SET state = ?, detail = ?, last_seq = ?, updated_at = ? \
             WHERE rollout_id = ? AND device_id = ? AND last_seq < ?",
        )
        .bind(state)
        .bind(detail)
        .bind(seq)
        .bind(to_ms(OffsetDateTime::now_utc()))
        .bind(id)
        .bind(device_id)
        .bind(seq)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }
}
