//! Claim limits and the provisioning allow-list.

use async_trait::async_trait;
use time::OffsetDateTime;

use super::SqliteStore;
use crate::model::{claim_exhausted, to_ms};
use crate::rows::{self, to_json};
use crate::{AllowEntry, ClaimRecord, ProvisioningStore, StoreError};

#[async_trait]
impl ProvisioningStore for SqliteStore {
    async fn set_claim_limits(
        &self,
        name: &str,
        max_uses: Option<i64>,
        not_after: Option<OffsetDateTime>,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO claims (name, max_uses, not_after) VALUES (?, ?, ?) \
             ON CONFLICT (name) DO UPDATE SET max_uses = excluded.max_uses, not_after = excluded.not_after",
        )
        .bind(name)
        .bind(max_uses)
        .bind(not_after.map(to_ms))
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn claim(&self, name: &str) -> Result<Option<ClaimRecord>, StoreError> {
        sqlx::query("SELECT * FROM claims WHERE name = ?")
            .bind(name)
            .fetch_optional(&self.pool)
            .await?
            .as_ref()
            .map(rows::claim)
            .transpose()
    }

    async fn consume_claim(
        &self,
        name: &str,
        now: OffsetDateTime,
    ) -> Result<ClaimRecord, StoreError> {
        // One statement: the check and the increment cannot be separated by another provisioning.
        let row = sqlx::query(
            "UPDATE claims SET uses = uses + 1 WHERE name = ? \
             AND (max_uses IS NULL OR uses < max_uses) AND (not_after IS NULL OR not_after > ?) \
             RETURNING *",
        )
        .bind(name)
        .bind(to_ms(now))
        .fetch_optional(&self.pool)
        .await?;
        match row {
            Some(r) => rows::claim(&r),
            None => Err(claim_exhausted(name, self.claim(name).await?, now)),
        }
    }

    async fn allow_serial(&self, e: &AllowEntry) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO provisioning_allowlist (serial_number, device_id, group_name, attributes, added_at) \
             VALUES (?, ?, ?, ?, ?) ON CONFLICT (serial_number) DO UPDATE SET device_id = excluded.device_id, \
             group_name = excluded.group_name, attributes = excluded.attributes",
        )
        .bind(&e.serial_number)
        .bind(&e.device_id)
        .bind(&e.group)
        .bind(to_json(&e.attributes, "provisioning_allowlist")?)
        .bind(to_ms(OffsetDateTime::now_utc()))
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn take_allowed_serial(
        &self,
        serial_number: &str,
        device_id: &str,
    ) -> Result<Option<AllowEntry>, StoreError> {
        let row = sqlx::query(
            "UPDATE provisioning_allowlist SET used_at = ?, used_by = ? \
             WHERE serial_number = ? AND used_at IS NULL RETURNING *",
        )
        .bind(to_ms(OffsetDateTime::now_utc()))
        .bind(device_id)
        .bind(serial_number)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(rows::allow_entry).transpose()
    }
}
