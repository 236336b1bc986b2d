//! Retained MQTT messages.

use async_trait::async_trait;
use sqlx::Row;
use time::OffsetDateTime;

use super::PgStore;
use crate::model::to_ms;
use crate::{RetainedStore, StoreError};

#[async_trait]
impl RetainedStore for PgStore {
    async fn put_retained(&self, topic: &str, message: Option<&[u8]>) -> Result<(), StoreError> {
        match message {
            Some(m) => {
                sqlx::query(
                    "INSERT INTO retained (topic, message, updated_at) VALUES ($1, $2, $3) \
                     ON CONFLICT (topic) DO UPDATE SET message = excluded.message, \
                     updated_at = excluded.updated_at",
                )
                .bind(topic)
                .bind(m)
                .bind(to_ms(OffsetDateTime::now_utc()))
                .execute(&self.pool)
                .await?;
            }
            None => {
                sqlx::query("DELETE FROM retained WHERE topic = $1")
                    .bind(topic)
                    .execute(&self.pool)
                    .await?;
            }
        }
        Ok(())
    }

    async fn retained(&self) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        let rows = sqlx::query("SELECT topic, message FROM retained ORDER BY topic")
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| Ok((r.try_get("topic")?, r.try_get("message")?)))
            .collect()
    }
}
