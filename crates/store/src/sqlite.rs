//! The embedded SQLite backend.
//!
//! WAL journal, one writer at a time (SQLite's rule; sqlx serialises through the pool), and a
//! configurable `synchronous` level: `full` (the default) fsyncs the WAL on every commit, so a
//! reading acknowledged to a device survives a power cut; `normal` survives a crash of the hub
//! process but may lose the last commits on power loss.

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::Row;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteRow,
    SqliteSynchronous,
};
use time::OffsetDateTime;

use crate::model::{from_ms, to_ms};
use crate::{
    AuditEntry, CertificateRecord, CertificateStatus, Device, DeviceStatus, NewCertificate, Seen,
    Store, StoreError, TelemetryRow,
};

/// Durability level of commits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Synchronous {
    /// fsync on every commit: durable across power loss.
    #[default]
    Full,
    /// fsync at checkpoints only: durable across process crashes.
    Normal,
}

impl FromStr for Synchronous {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "full" => Ok(Synchronous::Full),
            "normal" => Ok(Synchronous::Normal),
            other => Err(format!(
                "unknown synchronous level {other:?} (full or normal)"
            )),
        }
    }
}

/// How to open the database.
#[derive(Debug, Clone)]
pub struct SqliteOptions {
    pub path: PathBuf,
    pub synchronous: Synchronous,
    /// Connections in the pool (readers; writes are serialised by SQLite).
    pub max_connections: u32,
}

impl SqliteOptions {
    pub fn new(path: impl Into<PathBuf>) -> Self {
        SqliteOptions {
            path: path.into(),
            synchronous: Synchronous::Full,
            max_connections: 4,
        }
    }
}

/// SQLite implementation of [`Store`].
#[derive(Debug, Clone)]
pub struct SqliteStore {
    pool: SqlitePool,
    path: PathBuf,
}

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");

impl SqliteStore {
    /// Opens (creating if needed) the database and applies pending migrations.
    pub async fn open(options: &SqliteOptions) -> Result<SqliteStore, StoreError> {
        let connect = SqliteConnectOptions::new()
            .filename(&options.path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(match options.synchronous {
                Synchronous::Full => SqliteSynchronous::Full,
                Synchronous::Normal => SqliteSynchronous::Normal,
            })
            .foreign_keys(true)
            .busy_timeout(Duration::from_secs(10));
        let pool = SqlitePoolOptions::new()
            .max_connections(options.max_connections.max(1))
            .connect_with(connect)
            .await?;
        MIGRATOR.run(&pool).await?;
        Ok(SqliteStore {
            pool,
            path: options.path.clone(),
        })
    }

    /// Path of the database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Closes the pool, waiting for connections to finish.
    pub async fn close(&self) {
        self.pool.close().await;
    }
}

fn device_from_row(row: &SqliteRow) -> Result<Device, StoreError> {
    let status: String = row.try_get("status")?;
    Ok(Device {
        id: row.try_get("id")?,
        status: DeviceStatus::parse(&status).ok_or_else(|| StoreError::Corrupt {
            table: "devices",
            why: format!("status {status:?}"),
        })?,
        created_at: from_ms(row.try_get("created_at")?, "devices")?,
        last_seen_at: row
            .try_get::<Option<i64>, _>("last_seen_at")?
            .map(|ms| from_ms(ms, "devices"))
            .transpose()?,
        last_address: row.try_get("last_address")?,
    })
}

fn cert_from_row(row: &SqliteRow) -> Result<CertificateRecord, StoreError> {
    let status: String = row.try_get("status")?;
    Ok(CertificateRecord {
        serial: row.try_get("serial")?,
        device_id: row.try_get("device_id")?,
        fingerprint: row.try_get("fingerprint")?,
        not_before: from_ms(row.try_get("not_before")?, "certificates")?,
        not_after: from_ms(row.try_get("not_after")?, "certificates")?,
        key_algorithm: row.try_get("key_algorithm")?,
        issued_at: from_ms(row.try_get("issued_at")?, "certificates")?,
        status: CertificateStatus::parse(&status).ok_or_else(|| StoreError::Corrupt {
            table: "certificates",
            why: format!("status {status:?}"),
        })?,
    })
}

fn telemetry_from_row(row: &SqliteRow) -> Result<TelemetryRow, StoreError> {
    let alarms: String = row.try_get("alarms")?;
    Ok(TelemetryRow {
        device_id: row.try_get("device_id")?,
        seq: row.try_get("seq")?,
        ts: from_ms(row.try_get("ts")?, "telemetry")?,
        received_at: from_ms(row.try_get("received_at")?, "telemetry")?,
        voltage_v: row.try_get("voltage_v")?,
        current_a: row.try_get("current_a")?,
        soc_pct: row.try_get("soc_pct")?,
        soh_pct: row.try_get("soh_pct")?,
        temp_min_c: row.try_get("temp_min_c")?,
        temp_max_c: row.try_get("temp_max_c")?,
        cell_min_v: row.try_get("cell_min_v")?,
        cell_max_v: row.try_get("cell_max_v")?,
        alarms: serde_json::from_str(&alarms).map_err(|e| StoreError::Corrupt {
            table: "telemetry",
            why: format!("alarms: {e}"),
        })?,
        body: row.try_get("body")?,
    })
}

fn is_unique_violation(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(db) if db.is_unique_violation())
}

const INSERT_CERT: &str = "INSERT INTO certificates \
     (serial, device_id, fingerprint, not_before, not_after, key_algorithm, issued_at, status) \
     VALUES (?, ?, ?, ?, ?, ?, ?, 'valid')";

#[async_trait]
impl Store for SqliteStore {
    async fn add_device(&self, device_id: &str, cert: &NewCertificate) -> Result<(), StoreError> {
        let now = to_ms(OffsetDateTime::now_utc());
        let mut tx = self.pool.begin().await?;
        let inserted = sqlx::query(
            "INSERT INTO devices (id, status, created_at) VALUES (?, 'active', ?) \
             ON CONFLICT (id) DO NOTHING",
        )
        .bind(device_id)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        if inserted.rows_affected() == 0 {
            return Err(StoreError::AlreadyExists {
                what: "device",
                id: device_id.to_owned(),
            });
        }
        insert_cert(&mut tx, device_id, cert, now).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn add_certificate(
        &self,
        device_id: &str,
        cert: &NewCertificate,
    ) -> Result<(), StoreError> {
        let now = to_ms(OffsetDateTime::now_utc());
        let mut tx = self.pool.begin().await?;
        let exists = sqlx::query("SELECT 1 FROM devices WHERE id = ?")
            .bind(device_id)
            .fetch_optional(&mut *tx)
            .await?;
        if exists.is_none() {
            return Err(StoreError::NotFound {
                what: "device",
                id: device_id.to_owned(),
            });
        }
        insert_cert(&mut tx, device_id, cert, now).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn device(&self, device_id: &str) -> Result<Option<Device>, StoreError> {
        sqlx::query("SELECT * FROM devices WHERE id = ?")
            .bind(device_id)
            .fetch_optional(&self.pool)
            .await?
            .as_ref()
            .map(device_from_row)
            .transpose()
    }

    async fn devices(&self) -> Result<Vec<Device>, StoreError> {
        sqlx::query("SELECT * FROM devices ORDER BY id")
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(device_from_row)
            .collect()
    }

    async fn set_device_status(
        &self,
        device_id: &str,
        status: DeviceStatus,
    ) -> Result<(), StoreError> {
        let r = sqlx::query("UPDATE devices SET status = ? WHERE id = ?")
            .bind(status.as_str())
            .bind(device_id)
            .execute(&self.pool)
            .await?;
        if r.rows_affected() == 0 {
            return Err(StoreError::NotFound {
                what: "device",
                id: device_id.to_owned(),
            });
        }
        Ok(())
    }

    async fn certificates(&self, device_id: &str) -> Result<Vec<CertificateRecord>, StoreError> {
        sqlx::query("SELECT * FROM certificates WHERE device_id = ? ORDER BY issued_at, serial")
            .bind(device_id)
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(cert_from_row)
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
            .map(cert_from_row)
            .transpose()
    }

    async fn record_seen_many(&self, seen: &[Seen]) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        for s in seen {
            sqlx::query(
                "UPDATE devices SET last_seen_at = ?, last_address = ? WHERE id = ? \
                 AND (last_seen_at IS NULL OR last_seen_at <= ?)",
            )
            .bind(to_ms(s.at))
            .bind(&s.address)
            .bind(&s.device_id)
            .bind(to_ms(s.at))
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn insert_telemetry(&self, rows: &[TelemetryRow]) -> Result<u64, StoreError> {
        let mut tx = self.pool.begin().await?;
        let mut inserted = 0;
        for r in rows {
            let alarms = serde_json::to_string(&r.alarms).map_err(|e| StoreError::Corrupt {
                table: "telemetry",
                why: e.to_string(),
            })?;
            inserted += sqlx::query(
                "INSERT INTO telemetry (device_id, seq, ts, received_at, voltage_v, current_a, \
                 soc_pct, soh_pct, temp_min_c, temp_max_c, cell_min_v, cell_max_v, alarms, body) \
                 VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) \
                 ON CONFLICT (device_id, seq) DO NOTHING",
            )
            .bind(&r.device_id)
            .bind(r.seq)
            .bind(to_ms(r.ts))
            .bind(to_ms(r.received_at))
            .bind(r.voltage_v)
            .bind(r.current_a)
            .bind(r.soc_pct)
            .bind(r.soh_pct)
            .bind(r.temp_min_c)
            .bind(r.temp_max_c)
            .bind(r.cell_min_v)
            .bind(r.cell_max_v)
            .bind(alarms)
            .bind(&r.body)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        }
        tx.commit().await?;
        Ok(inserted)
    }

    async fn telemetry(
        &self,
        device_id: &str,
        since: OffsetDateTime,
        limit: u32,
    ) -> Result<Vec<TelemetryRow>, StoreError> {
        let mut rows = sqlx::query(
            "SELECT * FROM telemetry WHERE device_id = ? AND ts >= ? ORDER BY ts DESC, seq DESC LIMIT ?",
        )
        .bind(device_id)
        .bind(to_ms(since))
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(telemetry_from_row)
        .collect::<Result<Vec<_>, _>>()?;
        rows.reverse();
        Ok(rows)
    }

    async fn put_retained(&self, topic: &str, message: Option<&[u8]>) -> Result<(), StoreError> {
        match message {
            Some(m) => {
                sqlx::query(
                    "INSERT INTO retained (topic, message, updated_at) VALUES (?, ?, ?) \
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
                sqlx::query("DELETE FROM retained WHERE topic = ?")
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
        rows.iter()
            .map(|r| {
                Ok(AuditEntry {
                    at: from_ms(r.try_get("at")?, "audit_log")?,
                    actor: r.try_get("actor")?,
                    action: r.try_get("action")?,
                    subject: r.try_get("subject")?,
                    detail: r.try_get("detail")?,
                })
            })
            .collect()
    }
}

async fn insert_cert(
    tx: &mut sqlx::Transaction<'_, sqlx::Sqlite>,
    device_id: &str,
    cert: &NewCertificate,
    now: i64,
) -> Result<(), StoreError> {
    sqlx::query(INSERT_CERT)
        .bind(&cert.serial)
        .bind(device_id)
        .bind(&cert.fingerprint)
        .bind(to_ms(cert.not_before))
        .bind(to_ms(cert.not_after))
        .bind(&cert.key_algorithm)
        .bind(now)
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
