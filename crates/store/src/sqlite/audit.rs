//! The audit log.

use async_trait::async_trait;

use super::SqliteStore;
use crate::model::to_ms;
use crate::rows;
use crate::{AuditEntry, AuditStore, StoreError};

#[async_trait]
impl AuditStore for SqliteStore {
    async fn audit(&self, e: &AuditEntry) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO audit_log (at, actor, action, subject, detail) VALUES (?, ?, ?, ?, ?)",
        )
        .bind(to_ms(e.at))
        .bind(&e.actor)
        .bind(&e.action)
        .bind(&e.subject)
        .bind(&e.detail)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn audit_log(&self, limit: u32) -> Result<Vec<AuditEntry>, StoreError> {
        let rows = sqlx::query("SELECT * FROM audit_log ORDER BY id DESC LIMIT ?")
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(rows::audit).collect()
    }
}
