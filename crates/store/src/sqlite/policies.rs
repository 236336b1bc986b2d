//! Policies (every version kept) and attachments.

use async_trait::async_trait;
use sqlx::Row;
use time::OffsetDateTime;

use super::SqliteStore;
use crate::model::to_ms;
use crate::rows;
use crate::{PolicyRecord, PolicyStore, StoreError};

#[async_trait]
impl PolicyStore for SqliteStore {
    async fn put_policy(&self, name: &str, document: &str) -> Result<i64, StoreError> {
        let now = to_ms(OffsetDateTime::now_utc());
        let mut tx = self.write_tx().await?;
        let current: Option<i64> = sqlx::query("SELECT version FROM policies WHERE name = ?")
            .bind(name)
            .fetch_optional(&mut *tx)
            .await?
            .map(|r| r.try_get("version"))
            .transpose()?;
        let version = current.unwrap_or(0) + 1;
        sqlx::query(
            "INSERT INTO policies (name, version, document, updated_at) VALUES (?, ?, ?, ?) \
             ON CONFLICT (name) DO UPDATE SET version = excluded.version, \
             document = excluded.document, updated_at = excluded.updated_at",
        )
        .bind(name)
        .bind(version)
        .bind(document)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "INSERT INTO policy_versions (name, version, document, created_at) VALUES (?, ?, ?, ?)",
        )
        .bind(name)
        .bind(version)
        .bind(document)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(version)
    }

    async fn policy(&self, name: &str) -> Result<Option<PolicyRecord>, StoreError> {
        sqlx::query("SELECT * FROM policies WHERE name = ?")
            .bind(name)
            .fetch_optional(&self.pool)
            .await?
            .as_ref()
            .map(|r| rows::policy(r, "updated_at"))
            .transpose()
    }

    async fn policy_version(
        &self,
        name: &str,
        version: i64,
    ) -> Result<Option<PolicyRecord>, StoreError> {
        sqlx::query("SELECT * FROM policy_versions WHERE name = ? AND version = ?")
            .bind(name)
            .bind(version)
            .fetch_optional(&self.pool)
            .await?
            .as_ref()
            .map(|r| rows::policy(r, "created_at"))
            .transpose()
    }

    async fn policies(&self) -> Result<Vec<PolicyRecord>, StoreError> {
        sqlx::query("SELECT * FROM policies ORDER BY name")
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(|r| rows::policy(r, "updated_at"))
            .collect()
    }

    async fn delete_policy(&self, name: &str) -> Result<(), StoreError> {
        let r = sqlx::query("DELETE FROM policies WHERE name = ?")
            .bind(name)
            .execute(&self.pool)
            .await?;
        if r.rows_affected() == 0 {
            return Err(StoreError::NotFound {
                what: "policy",
                id: name.to_owned(),
            });
        }
        Ok(())
    }

    async fn attach_policy(&self, name: &str, target: &str) -> Result<(), StoreError> {
        if self.policy(name).await?.is_none() {
            return Err(StoreError::NotFound {
                what: "policy",
                id: name.to_owned(),
            });
        }
        sqlx::query(
            "INSERT INTO policy_attachments (policy, target) VALUES (?, ?) ON CONFLICT DO NOTHING",
        )
        .bind(name)
        .bind(target)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn detach_policy(&self, name: &str, target: &str) -> Result<(), StoreError> {
        let r = sqlx::query("DELETE FROM policy_attachments WHERE policy = ? AND target = ?")
            .bind(name)
            .bind(target)
            .execute(&self.pool)
            .await?;
        if r.rows_affected() == 0 {
            return Err(StoreError::NotFound {
                what: "attachment",
                id: format!("{name} -> {target}"),
            });
        }
        Ok(())
    }

    async fn attachments(&self) -> Result<Vec<(String, String)>, StoreError> {
        let rows =
            sqlx::query("SELECT policy, target FROM policy_attachments ORDER BY policy, target")
                .fetch_all(&self.pool)
                .await?;
        rows.iter()
            .map(|r| Ok((r.try_get("policy")?, r.try_get("target")?)))
            .collect()
    }
}
