//! Policies (every version kept) and attachments.

use async_trait::async_trait;
use sqlx::Row;
use time::OffsetDateTime;

use super::PgStore;
use crate::model::to_ms;
use crate::rows;
use crate::{PolicyRecord, PolicyStore, StoreError};

#[async_trait]
impl PolicyStore for PgStore {
    async fn put_policy(&self, name: &str, document: &str) -> Result<i64, StoreError> {
        let now = to_ms(OffsetDateTime::now_utc());
        let mut tx = self.write_tx().await?;
        // One statement picks the next version: two nodes storing the same policy at once
        // get versions n and n+1 (the second waits on the first's row lock), never both n.
        let version: i64 = sqlx::query(
            "INSERT INTO policies (name, version, document, updated_at) VALUES ($1, 1, $2, $3) \
             ON CONFLICT (name) DO UPDATE SET version = policies.version + 1, \
             document = excluded.document, updated_at = excluded.updated_at RETURNING version",
        )
        .bind(name)
        .bind(document)
        .bind(now)
        .fetch_one(&mut *tx)
        .await?
        .try_get("version")?;
        sqlx::query(
            "INSERT INTO policy_versions (name, version, document, created_at) VALUES ($1, $2, $3, $4)",
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
        sqlx::query("SELECT * FROM policies WHERE name = $1")
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
        sqlx::query("SELECT * FROM policy_versions WHERE name = $1 AND version = $2")
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
        let r = sqlx::query("DELETE FROM policies WHERE name = $1")
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
            "INSERT INTO policy_attachments (policy, target) VALUES ($1, $2) ON CONFLICT DO NOTHING",
        )
        .bind(name)
        .bind(target)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn detach_policy(&self, name: &str, target: &str) -> Result<(), StoreError> {
        let r = sqlx::query("DELETE FROM policy_attachments WHERE policy = $1 AND target = $2")
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
