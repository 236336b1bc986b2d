//! Staged rollouts.

use async_trait::async_trait;
use sqlx::Row;
use sqlx::sqlite::SqliteRow;
use time::OffsetDateTime;

use super::{SqliteStore, is_unique_violation};
use crate::model::{from_ms, to_ms};
use crate::{RolloutDeviceRow, RolloutRow, RolloutStore, StoreError};

fn rollout_row(r: &SqliteRow) -> Result<RolloutRow, StoreError> {
    Ok(RolloutRow {
        id: r.try_get("id")?,
        target: r.try_get("target")?,
        version: r.try_get("version")?,
        plan: r.try_get("plan")?,
        state: r.try_get("state")?,
        wave: r.try_get("wave")?,
        accepted_failures: r.try_get("accepted_failures")?,
        reason: r.try_get("reason")?,
        created_at: from_ms(r.try_get("created_at")?, "rollouts")?,
        updated_at: from_ms(r.try_get("updated_at")?, "rollouts")?,
    })
}

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
            .map(rollout_row)
            .transpose()
    }

    async fn rollouts(&self) -> Result<Vec<RolloutRow>, StoreError> {
        sqlx::query("SELECT * FROM rollouts ORDER BY created_at DESC, id")
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(rollout_row)
            .collect()
    }

    async fn rollout_devices(&self, id: &str) -> Result<Vec<RolloutDeviceRow>, StoreError> {
        sqlx::query("SELECT * FROM rollout_devices WHERE rollout_id = ? ORDER BY wave, device_id")
            .bind(id)
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(|r| {
                Ok(RolloutDeviceRow {
                    device_id: r.try_get("device_id")?,
                    wave: r.try_get("wave")?,
                    state: r.try_get("state")?,
                    command: r.try_get("command")?,
                    detail: r.try_get("detail")?,
                    last_seq: r.try_get("last_seq")?,
                    updated_at: from_ms(r.try_get("updated_at")?, "rollout_devices")?,
                })
            })
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
    ) -> Result<(), StoreError> {
        let done = sqlx::query(
            "UPDATE rollout_devices SET state = ?, command = COALESCE(?, command), \
             updated_at = ? WHERE rollout_id = ? AND device_id = ?",
        )
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
