//! Identities and certificates.

use async_trait::async_trait;
use time::OffsetDateTime;

use super::{SqliteStore, is_unique_violation};
use crate::model::to_ms;
use crate::rows::{self, to_json};
use crate::{
    CertificateRecord, Device, DeviceStatus, DeviceUpdate, IdentityKind, NewCertificate,
    NewIdentity, Registry, Seen, StoreError,
};

async fn insert_cert(
    tx: &mut sqlx::Transaction<'_, sqlx::Sqlite>,
    id: &str,
    cert: &NewCertificate,
    now: i64,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO certificates \
         (serial, device_id, fingerprint, not_before, not_after, key_algorithm, issued_at, status, issuer) \
         VALUES (?, ?, ?, ?, ?, ?, ?, 'valid', ?)",
    )
    .bind(&cert.serial)
    .bind(id)
    .bind(&cert.fingerprint)
    .bind(to_ms(cert.not_before))
    .bind(to_ms(cert.not_after))
    .bind(&cert.key_algorithm)
    .bind(now)
    .bind(&cert.issuer)
    .execute(&mut **tx)
    .await
    .map_err(|e| {
        if is_unique_violation(&e) {
            StoreError::AlreadyExists {
                what: "certificate",
                id: cert.serial.clone(),
            }
        } else {
            StoreError::Database(e)
        }
    })?;
    Ok(())
}

fn not_found(id: &str) -> StoreError {
    StoreError::NotFound {
        what: "identity",
        id: id.to_owned(),
    }
}

#[async_trait]
impl Registry for SqliteStore {
    async fn add_identity(&self, n: &NewIdentity) -> Result<(), StoreError> {
        let now = to_ms(OffsetDateTime::now_utc());
        let mut tx = self.write_tx().await?;
        let inserted = sqlx::query(
            "INSERT INTO devices (id, kind, status, pending, group_name, attributes, registered_via, created_at) \
             VALUES (?, ?, 'active', ?, ?, ?, ?, ?) ON CONFLICT (id) DO NOTHING",
        )
        .bind(&n.id)
        .bind(n.kind.as_str())
        .bind(i64::from(n.pending))
        .bind(&n.group)
        .bind(to_json(&n.attributes, "devices")?)
        .bind(&n.registered_via)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        if inserted.rows_affected() == 0 {
            return Err(StoreError::AlreadyExists {
                what: "identity",
                id: n.id.clone(),
            });
        }
        insert_cert(&mut tx, &n.id, &n.certificate, now).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn add_certificate(&self, id: &str, cert: &NewCertificate) -> Result<(), StoreError> {
        let now = to_ms(OffsetDateTime::now_utc());
        let mut tx = self.write_tx().await?;
        let exists = sqlx::query("SELECT 1 FROM devices WHERE id = ?")
            .bind(id)
            .fetch_optional(&mut *tx)
            .await?;
        if exists.is_none() {
            return Err(not_found(id));
        }
        insert_cert(&mut tx, id, cert, now).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn device(&self, id: &str) -> Result<Option<Device>, StoreError> {
        sqlx::query("SELECT * FROM devices WHERE id = ?")
            .bind(id)
            .fetch_optional(&self.pool)
            .await?
            .as_ref()
            .map(rows::device)
            .transpose()
    }

    async fn identities(&self, kind: Option<IdentityKind>) -> Result<Vec<Device>, StoreError> {
        let rows = match kind {
            Some(k) => {
                sqlx::query("SELECT * FROM devices WHERE kind = ? ORDER BY id")
                    .bind(k.as_str())
                    .fetch_all(&self.pool)
                    .await?
            }
            None => {
                sqlx::query("SELECT * FROM devices ORDER BY id")
                    .fetch_all(&self.pool)
                    .await?
            }
        };
        rows.iter().map(rows::device).collect()
    }

    async fn set_device_status(&self, id: &str, status: DeviceStatus) -> Result<(), StoreError> {
        let r = sqlx::query("UPDATE devices SET status = ? WHERE id = ?")
            .bind(status.as_str())
            .bind(id)
            .execute(&self.pool)
            .await?;
        if r.rows_affected() == 0 {
            return Err(not_found(id));
        }
        Ok(())
    }

    async fn update_device(&self, id: &str, u: &DeviceUpdate) -> Result<(), StoreError> {
        let mut tx = self.write_tx().await?;
        let row = sqlx::query("SELECT * FROM devices WHERE id = ?")
            .bind(id)
            .fetch_optional(&mut *tx)
            .await?
            .ok_or_else(|| not_found(id))?;
        let d = u.apply(rows::device(&row)?);
        sqlx::query(
            "UPDATE devices SET group_name = ?, attributes = ?, quarantined = ?, pending = ? WHERE id = ?",
        )
        .bind(&d.group)
        .bind(to_json(&d.attributes, "devices")?)
        .bind(i64::from(d.quarantined))
        .bind(i64::from(d.pending))
        .bind(id)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn certificates(&self, id: &str) -> Result<Vec<CertificateRecord>, StoreError> {
        sqlx::query("SELECT * FROM certificates WHERE device_id = ? ORDER BY issued_at, serial")
            .bind(id)
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(rows::certificate)
            .collect()
    }

    async fn all_certificates(&self) -> Result<Vec<CertificateRecord>, StoreError> {
        sqlx::query("SELECT * FROM certificates ORDER BY device_id, issued_at, serial")
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(rows::certificate)
            .collect()
    }

    async fn certificate_by_fingerprint(
        &self,
        fingerprint: &str,
    ) -> Result<Option<CertificateRecord>, StoreError> {
        sqlx::query("SELECT * FROM certificates WHERE fingerprint = ?")
            .bind(fingerprint)
            .fetch_optional(&self.pool)
            .await?
            .as_ref()
            .map(rows::certificate)
            .transpose()
    }

    async fn certificate_and_identity(
        &self,
        fingerprint: &str,
        id: &str,
    ) -> Result<Option<(CertificateRecord, Option<Device>)>, StoreError> {
        // One query where two were, on the calling thread (`inline`): every CONNECT asks it.
        self.inline.read(|conn| {
            let mut query = conn.prepare_cached(concat!(
                "SELECT ",
                rows::certificate_as_cert!(),
                ", d.* FROM certificates AS c LEFT JOIN devices AS d ON d.id = ?2 \
                 WHERE c.fingerprint = ?1"
            ))?;
            let mut found = query.query((fingerprint, id))?;
            found.next()?.map(rows::certificate_and_device).transpose()
        })
    }

    async fn revoke_certificates(
        &self,
        id: &str,
        reason: &str,
    ) -> Result<Vec<CertificateRecord>, StoreError> {
        let now = to_ms(OffsetDateTime::now_utc());
        let mut tx = self.write_tx().await?;
        let exists = sqlx::query("SELECT 1 FROM devices WHERE id = ?")
            .bind(id)
            .fetch_optional(&mut *tx)
            .await?;
        if exists.is_none() {
            return Err(not_found(id));
        }
        let rows = sqlx::query(
            "UPDATE certificates SET status = 'revoked', revoked_at = ?, revocation_reason = ? \
             WHERE device_id = ? AND status = 'valid' RETURNING *",
        )
        .bind(now)
        .bind(reason)
        .bind(id)
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        rows.iter().map(rows::certificate).collect()
    }

    async fn revoked_certificates(
        &self,
        issuer: &str,
    ) -> Result<Vec<CertificateRecord>, StoreError> {
        sqlx::query(
            "SELECT * FROM certificates WHERE status = 'revoked' AND issuer = ? ORDER BY revoked_at, serial",
        )
        .bind(issuer)
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(rows::certificate)
        .collect()
    }

    async fn schedule_retirement(
        &self,
        serial: &str,
        at: OffsetDateTime,
    ) -> Result<(), StoreError> {
        let r = sqlx::query(
            "UPDATE certificates SET retire_at = ? WHERE serial = ? AND status = 'valid'",
        )
        .bind(to_ms(at))
        .bind(serial)
        .execute(&self.pool)
        .await?;
        if r.rows_affected() == 0 {
            return Err(StoreError::NotFound {
                what: "valid certificate",
                id: serial.to_owned(),
            });
        }
        Ok(())
    }

    async fn retire_due(&self, now: OffsetDateTime) -> Result<Vec<CertificateRecord>, StoreError> {
        let rows = sqlx::query(
            "UPDATE certificates SET status = 'retired' \
             WHERE status = 'valid' AND retire_at IS NOT NULL AND retire_at <= ? RETURNING *",
        )
        .bind(to_ms(now))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(rows::certificate).collect()
    }

    async fn record_seen_many(&self, seen: &[Seen]) -> Result<(), StoreError> {
        let mut tx = self.write_tx().await?;
        // One statement per chunk, not per device: after a connection storm the batch holds
        // every device that connected, and each statement is a round trip to SQLite's thread.
        for chunk in seen.chunks(super::ROWS_PER_STATEMENT) {
            let mut q = sqlx::QueryBuilder::<sqlx::Sqlite>::new(
                "UPDATE devices SET last_seen_at = v.column2, last_address = v.column3 FROM (",
            );
            q.push_values(chunk, |mut b, s| {
                b.push_bind(&s.device_id)
                    .push_bind(to_ms(s.at))
                    .push_bind(&s.address);
            });
            q.push(
                ") AS v WHERE devices.id = v.column1 \
                 AND (devices.last_seen_at IS NULL OR devices.last_seen_at <= v.column2)",
            );
            q.build().execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(())
    }
}
