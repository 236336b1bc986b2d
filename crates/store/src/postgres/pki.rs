//! Trusted CAs, CRL numbers and certificate usage.

use async_trait::async_trait;
use sqlx::Row;

use super::PgStore;
use crate::error::is_unique_violation;
use crate::model::to_ms;
use crate::rows;
use crate::rows::to_json;
use crate::{CertificateUsage, PkiStore, StoreError, TrustedCa};

#[async_trait]
impl PkiStore for PgStore {
    async fn add_trusted_ca(&self, ca: &TrustedCa) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO trusted_cas (fingerprint, subject, certificate, auto_activate, template, added_at) \
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(&ca.fingerprint)
        .bind(&ca.subject)
        .bind(&ca.certificate)
        .bind(i64::from(ca.auto_activate))
        .bind(to_json(&ca.template, "trusted_cas")?)
        .bind(to_ms(ca.added_at))
        .execute(&self.pool)
        .await
        .map_err(|e| {
            if is_unique_violation(&e) {
                StoreError::AlreadyExists {
                    what: "trusted CA",
                    id: ca.fingerprint.clone(),
                }
            } else {
                StoreError::Database(e)
            }
        })?;
        Ok(())
    }

    async fn trusted_cas(&self) -> Result<Vec<TrustedCa>, StoreError> {
        let rows = sqlx::query("SELECT * FROM trusted_cas ORDER BY added_at, fingerprint")
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(rows::trusted_ca).collect()
    }

    async fn remove_trusted_ca(&self, fingerprint: &str) -> Result<(), StoreError> {
        let r = sqlx::query("DELETE FROM trusted_cas WHERE fingerprint = $1")
            .bind(fingerprint)
            .execute(&self.pool)
            .await?;
        if r.rows_affected() == 0 {
            return Err(StoreError::NotFound {
                what: "trusted CA",
                id: fingerprint.to_owned(),
            });
        }
        Ok(())
    }

    async fn next_crl_number(&self, ca_fingerprint: &str) -> Result<i64, StoreError> {
        let row = sqlx::query(
            "INSERT INTO crl_numbers (ca_fingerprint, number) VALUES ($1, 1) \
             ON CONFLICT (ca_fingerprint) DO UPDATE SET number = crl_numbers.number + 1 RETURNING number",
        )
        .bind(ca_fingerprint)
        .fetch_one(&self.pool)
        .await?;
        Ok(row.try_get("number")?)
    }

    async fn record_certificate_usage(&self, usage: &[CertificateUsage]) -> Result<(), StoreError> {
        // One statement for the whole batch (arrays). Grouped first: one upsert may not
        // touch a row twice, and the batch may name a (fingerprint, client id) twice.
        let fingerprints: Vec<&str> = usage.iter().map(|u| u.fingerprint.as_str()).collect();
        let clients: Vec<&str> = usage.iter().map(|u| u.client_id.as_str()).collect();
        let first: Vec<i64> = usage.iter().map(|u| to_ms(u.first_seen)).collect();
        let last: Vec<i64> = usage.iter().map(|u| to_ms(u.last_seen)).collect();
        sqlx::query(
            "INSERT INTO certificate_usage (fingerprint, client_id, first_seen, last_seen) \
             SELECT f, c, min(fs), max(ls) \
             FROM UNNEST($1::text[], $2::text[], $3::bigint[], $4::bigint[]) AS u(f, c, fs, ls) \
             GROUP BY f, c \
             ON CONFLICT (fingerprint, client_id) \
             DO UPDATE SET last_seen = GREATEST(certificate_usage.last_seen, excluded.last_seen)",
        )
        .bind(&fingerprints)
        .bind(&clients)
        .bind(&first)
        .bind(&last)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn certificate_usage(&self) -> Result<Vec<CertificateUsage>, StoreError> {
        let rows = sqlx::query("SELECT * FROM certificate_usage ORDER BY fingerprint, client_id")
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(rows::certificate_usage).collect()
    }
}
