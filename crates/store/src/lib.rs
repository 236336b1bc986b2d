//! Rampart's storage.
//!
//! [`Store`] is the storage contract the rest of the platform depends on: the device registry
//! (devices and their certificates), telemetry, retained MQTT messages and the audit log.
//! [`SqliteStore`] is the embedded default; a PostgreSQL backend implements the same trait.
//!
//! [`IngestQueue`] sits in front of a store on the publish path: it batches telemetry rows from
//! many connections into one transaction (group commit) and tells each submitter when its row
//! is durable, so the broker can send PUBACK only after the commit.

mod error;
mod ingest;
mod model;
mod sqlite;

pub use error::StoreError;
pub use ingest::{IngestQueue, IngestStats, Ticket};
pub use model::*;
pub use sqlite::{SqliteOptions, SqliteStore, Synchronous};

use async_trait::async_trait;
use time::OffsetDateTime;

/// The storage contract. Every method is a complete unit of work (its own transaction).
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Registers a new device with its first certificate. Fails with
    /// [`StoreError::AlreadyExists`] if the id is taken.
    async fn add_device(&self, device_id: &str, cert: &NewCertificate) -> Result<(), StoreError>;
    /// Adds another certificate to an existing device.
    async fn add_certificate(
        &self,
        device_id: &str,
        cert: &NewCertificate,
    ) -> Result<(), StoreError>;
    async fn device(&self, device_id: &str) -> Result<Option<Device>, StoreError>;
    async fn devices(&self) -> Result<Vec<Device>, StoreError>;
    /// Changes a device's status; [`StoreError::NotFound`] if it does not exist.
    async fn set_device_status(
        &self,
        device_id: &str,
        status: DeviceStatus,
    ) -> Result<(), StoreError>;
    async fn certificates(&self, device_id: &str) -> Result<Vec<CertificateRecord>, StoreError>;
    async fn certificate_by_fingerprint(
        &self,
        fingerprint: &str,
    ) -> Result<Option<CertificateRecord>, StoreError>;
    /// Records that a device connected (or disconnected) now, from `address`.
    async fn record_seen(
        &self,
        device_id: &str,
        at: OffsetDateTime,
        address: &str,
    ) -> Result<(), StoreError> {
        self.record_seen_many(&[Seen {
            device_id: device_id.to_owned(),
            at,
            address: address.to_owned(),
        }])
        .await
    }
    /// Records many connection events in one transaction (the hub batches them so a connect
    /// storm does not become a write storm).
    async fn record_seen_many(&self, seen: &[Seen]) -> Result<(), StoreError>;

    /// Stores telemetry rows in one transaction; rows already stored (same device and seq)
    /// are skipped. Returns the number of new rows.
    async fn insert_telemetry(&self, rows: &[TelemetryRow]) -> Result<u64, StoreError>;
    /// Telemetry of one device with `ts >= since`, oldest first, at most `limit` rows (the
    /// newest ones when there are more).
    async fn telemetry(
        &self,
        device_id: &str,
        since: OffsetDateTime,
        limit: u32,
    ) -> Result<Vec<TelemetryRow>, StoreError>;

    /// Sets (`Some`) or clears (`None`) the retained message of `topic`.
    async fn put_retained(&self, topic: &str, message: Option<&[u8]>) -> Result<(), StoreError>;
    /// All retained messages, for the broker to load at start.
    async fn retained(&self) -> Result<Vec<(String, Vec<u8>)>, StoreError>;

    /// Appends to the audit log.
    async fn audit(&self, entry: &AuditEntry) -> Result<(), StoreError>;
    /// The newest `limit` audit entries, newest first.
    async fn audit_log(&self, limit: u32) -> Result<Vec<AuditEntry>, StoreError>;
}
