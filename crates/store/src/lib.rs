//! Rampart's storage.
//!
//! The storage contract is a set of small traits, one per concern, gathered by [`Store`]:
//!
//! | trait | holds |
//! |---|---|
//! | [`Registry`] | identities (devices, services, claims), their certificates, revocation, rotation |
//! | [`TelemetryStore`] | telemetry readings |
//! | [`RetainedStore`] | retained MQTT messages |
//! | [`PolicyStore`] | policies (versioned) and where they are attached |
//! | [`PkiStore`] | trusted CAs for just-in-time registration, CRL numbers, certificate usage |
//! | [`ProvisioningStore`] | claim limits and the provisioning allow-list |
//! | [`AuditStore`] | the append-only audit log |
//! | [`EventStore`] | events devices report |
//! | [`ComplianceStore`] | CRA records, their history, SBOM components, OSV advisories, device releases |
//!
//! [`SqliteStore`] implements all of them (the embedded default), and so does [`PgStore`]
//! (PostgreSQL, for large fleets and several hub nodes sharing one registry). Both map rows
//! to records through one module (`rows`) and their schemas come from twin migration
//! directories, `migrations/sqlite` and `migrations/postgres`, numbered alike. [`IngestQueue`] batches telemetry from many connections into
//! one transaction (group commit) and tells each submitter when its row is durable.

mod error;
mod ingest;
mod model;
mod postgres;
mod rows;
mod sqlite;

pub use bytestring::ByteString;
pub use error::StoreError;
pub use ingest::{Batching, IngestQueue, IngestStats, Ticket};
pub use model::*;
pub use postgres::{PgOptions, PgStore, check_schema};
pub use sqlite::{
    CHUNK_READINGS, DIRECT_ROWS_PER_DEVICE, MOVE_CHUNK_MIN_READINGS, MOVE_STEP_ROWS, SqliteOptions,
    SqliteStore, Synchronous, TELEMETRY_LOG_ROWS, encode_telemetry_chunk,
};

use async_trait::async_trait;
use time::OffsetDateTime;

/// Identities and their certificates.
#[async_trait]
pub trait Registry: Send + Sync {
    /// Registers a new identity with its first certificate. [`StoreError::AlreadyExists`] if
    /// the id or the certificate is taken.
    async fn add_identity(&self, identity: &NewIdentity) -> Result<(), StoreError>;
    /// Adds another certificate to an existing identity.
    async fn add_certificate(&self, id: &str, cert: &NewCertificate) -> Result<(), StoreError>;
    async fn device(&self, id: &str) -> Result<Option<Device>, StoreError>;
    /// Identities of one kind (all kinds with `None`), ordered by id.
    async fn identities(&self, kind: Option<IdentityKind>) -> Result<Vec<Device>, StoreError>;
    /// Devices (kind `device`), ordered by id.
    async fn devices(&self) -> Result<Vec<Device>, StoreError> {
        self.identities(Some(IdentityKind::Device)).await
    }
    /// Changes an identity's status; [`StoreError::NotFound`] if it does not exist.
    async fn set_device_status(&self, id: &str, status: DeviceStatus) -> Result<(), StoreError>;
    /// Changes group, attributes, quarantine or approval of an identity.
    async fn update_device(&self, id: &str, update: &DeviceUpdate) -> Result<(), StoreError>;
    async fn certificates(&self, id: &str) -> Result<Vec<CertificateRecord>, StoreError>;
    async fn all_certificates(&self) -> Result<Vec<CertificateRecord>, StoreError>;
    async fn certificate_by_fingerprint(
        &self,
        fingerprint: &str,
    ) -> Result<Option<CertificateRecord>, StoreError>;
    /// What a CONNECT checks, in one query: the certificate with `fingerprint` (`None` if it
    /// is not registered) and the identity `id` named by its subject.
    async fn certificate_and_identity(
        &self,
        fingerprint: &str,
        id: &str,
    ) -> Result<Option<(CertificateRecord, Option<Device>)>, StoreError> {
        let Some(cert) = self.certificate_by_fingerprint(fingerprint).await? else {
            return Ok(None);
        };
        Ok(Some((cert, self.device(id).await?)))
    }
    /// Revokes every valid or retiring certificate of `id`; returns what was revoked.
    async fn revoke_certificates(
        &self,
        id: &str,
        reason: &str,
    ) -> Result<Vec<CertificateRecord>, StoreError>;
    /// Revoked certificates issued by the CA with `issuer` fingerprint (for its CRL).
    async fn revoked_certificates(
        &self,
        issuer: &str,
    ) -> Result<Vec<CertificateRecord>, StoreError>;
    /// Marks a certificate to be retired at `at` (end of a renewal's overlap window).
    async fn schedule_retirement(&self, serial: &str, at: OffsetDateTime)
    -> Result<(), StoreError>;
    /// Retires certificates whose overlap window has ended; returns them.
    async fn retire_due(&self, now: OffsetDateTime) -> Result<Vec<CertificateRecord>, StoreError>;
    /// Records connection events in one transaction.
    async fn record_seen_many(&self, seen: &[Seen]) -> Result<(), StoreError>;
    /// Records that a device connected now, from `address`.
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
}

/// Telemetry.
#[async_trait]
pub trait TelemetryStore: Send + Sync {
    /// Stores rows in one transaction; rows already stored (same device and seq) are skipped.
    /// Returns the number of new rows once they are durable: [`commit_telemetry`]
    /// (Self::commit_telemetry), waited for.
    async fn insert_telemetry(&self, rows: &[TelemetryRow]) -> Result<u64, StoreError> {
        let (inserted, durable) = self.commit_telemetry(rows.to_vec()).await?;
        durable.await?;
        Ok(inserted)
    }
    /// Telemetry of one device with `ts >= since`, oldest first, at most `limit` rows (the
    /// newest ones when there are more).
    async fn telemetry(
        &self,
        device_id: &str,
        since: OffsetDateTime,
        limit: u32,
    ) -> Result<Vec<TelemetryRow>, StoreError>;
    /// Background steps of storage upkeep that have failed since the store opened (SQLite:
    /// steps moving telemetry from its log into its table; the readings involved stay
    /// stored and readable). Zero for a backend without any.
    fn telemetry_upkeep_failures(&self) -> u64 {
        0
    }
    /// Stores rows as [`insert_telemetry`](Self::insert_telemetry) does, but returns once
    /// they are written, with the number of new rows and a future that resolves once they
    /// are committed and durable. The caller may write the next batch meanwhile: SQLite's
    /// writer commits, then syncs its WAL on a thread of its own while it commits the next
    /// batch; PostgreSQL's COPY leaves its transaction's COMMIT to the future, and the next
    /// batch loads on another pooled connection. A backend whose commit is durable when it
    /// returns gives a future already done.
    ///
    /// The future must be awaited before anyone is told the rows are stored: until it
    /// resolves they may be invisible to readers, and dropping it may undo the batch.
    ///
    /// The rows are given, not lent: a backend that writes on a thread of its own takes them
    /// there without copying each reading's strings.
    async fn commit_telemetry(&self, rows: Vec<TelemetryRow>)
    -> Result<(u64, Durable), StoreError>;
}

/// Resolves once a committed batch of telemetry is durable (or its sync failed).
pub type Durable =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), StoreError>> + Send>>;

/// Retained MQTT messages.
#[async_trait]
pub trait RetainedStore: Send + Sync {
    /// Sets (`Some`) or clears (`None`) the retained message of `topic`.
    async fn put_retained(&self, topic: &str, message: Option<&[u8]>) -> Result<(), StoreError>;
    /// All retained messages, for the broker to load at start.
    async fn retained(&self) -> Result<Vec<(String, Vec<u8>)>, StoreError>;
}

/// Policies and their attachments.
#[async_trait]
pub trait PolicyStore: Send + Sync {
    /// Creates or updates a policy; returns its new version (1 for a new policy).
    async fn put_policy(&self, name: &str, document: &str) -> Result<i64, StoreError>;
    async fn policy(&self, name: &str) -> Result<Option<PolicyRecord>, StoreError>;
    async fn policy_version(
        &self,
        name: &str,
        version: i64,
    ) -> Result<Option<PolicyRecord>, StoreError>;
    async fn policies(&self) -> Result<Vec<PolicyRecord>, StoreError>;
    async fn delete_policy(&self, name: &str) -> Result<(), StoreError>;
    async fn attach_policy(&self, name: &str, target: &str) -> Result<(), StoreError>;
    async fn detach_policy(&self, name: &str, target: &str) -> Result<(), StoreError>;
    /// (policy, target) pairs.
    async fn attachments(&self) -> Result<Vec<(String, String)>, StoreError>;
}

/// PKI state beyond certificates.
#[async_trait]
pub trait PkiStore: Send + Sync {
    async fn add_trusted_ca(&self, ca: &TrustedCa) -> Result<(), StoreError>;
    async fn trusted_cas(&self) -> Result<Vec<TrustedCa>, StoreError>;
    async fn remove_trusted_ca(&self, fingerprint: &str) -> Result<(), StoreError>;
    /// Increments and returns the CRL number of a CA (RFC 5280 5.2.3: monotonically increasing).
    async fn next_crl_number(&self, ca_fingerprint: &str) -> Result<i64, StoreError>;
    /// Records which client ids certificates were used with.
    async fn record_certificate_usage(&self, usage: &[CertificateUsage]) -> Result<(), StoreError>;
    async fn certificate_usage(&self) -> Result<Vec<CertificateUsage>, StoreError>;
}

/// Claim limits and the provisioning allow-list.
#[async_trait]
pub trait ProvisioningStore: Send + Sync {
    async fn set_claim_limits(
        &self,
        name: &str,
        max_uses: Option<i64>,
        not_after: Option<OffsetDateTime>,
    ) -> Result<(), StoreError>;
    async fn claim(&self, name: &str) -> Result<Option<ClaimRecord>, StoreError>;
    /// Uses a claim once: fails with [`StoreError::Exhausted`] when its use count or lifetime
    /// is spent. Atomic.
    async fn consume_claim(
        &self,
        name: &str,
        now: OffsetDateTime,
    ) -> Result<ClaimRecord, StoreError>;
    async fn allow_serial(&self, entry: &AllowEntry) -> Result<(), StoreError>;
    /// Takes an unused allow-list entry (marking it used by `device_id`); `None` if the serial
    /// is not listed or already used.
    async fn take_allowed_serial(
        &self,
        serial_number: &str,
        device_id: &str,
    ) -> Result<Option<AllowEntry>, StoreError>;
}

/// The append-only audit log.
#[async_trait]
pub trait AuditStore: Send + Sync {
    async fn audit(&self, entry: &AuditEntry) -> Result<(), StoreError>;
    /// The newest `limit` entries, newest first.
    async fn audit_log(&self, limit: u32) -> Result<Vec<AuditEntry>, StoreError>;
}

/// Events reported by devices.
#[async_trait]
pub trait EventStore: Send + Sync {
    /// Stores events in one transaction; events already stored (same device and seq) are
    /// skipped. Returns the number of new events.
    async fn insert_events(&self, rows: &[EventRow]) -> Result<u64, StoreError>;
    /// The newest `limit` events of a device, oldest first.
    async fn events(&self, device_id: &str, limit: u32) -> Result<Vec<EventRow>, StoreError>;
}

/// CRA compliance records (rampart-compliance validates them; this stores them).
#[async_trait]
pub trait ComplianceStore: Send + Sync {
    /// Creates or replaces the record `(kind, key)` and appends `action`/`detail` to its
    /// history, in one transaction.
    async fn put_record(
        &self,
        kind: &str,
        key: &str,
        body: &str,
        action: &str,
        detail: &str,
    ) -> Result<(), StoreError>;
    async fn record(&self, kind: &str, key: &str) -> Result<Option<String>, StoreError>;
    /// All records of a kind, ordered by key: (key, body).
    async fn records(&self, kind: &str) -> Result<Vec<(String, String)>, StoreError>;
    /// Appends to a record's history without changing it.
    async fn append_history(
        &self,
        kind: &str,
        key: &str,
        action: &str,
        detail: &str,
    ) -> Result<(), StoreError>;
    /// The history of a record, oldest first.
    async fn history(&self, kind: &str, key: &str) -> Result<Vec<HistoryEntry>, StoreError>;
    /// Replaces the stored components of a release's SBOM.
    async fn put_sbom_components(
        &self,
        product: &str,
        release: &str,
        rows: &[SbomComponentRow],
    ) -> Result<(), StoreError>;
    /// Releases (product, release) whose SBOM holds `ecosystem`/`package` at `version`.
    async fn releases_with(
        &self,
        ecosystem: &str,
        package: &str,
        version: &str,
    ) -> Result<Vec<(String, String)>, StoreError>;
    /// Stores advisories in one transaction (replacing same ids); returns how many were new.
    async fn import_advisories(&self, rows: &[AdvisoryRow]) -> Result<u64, StoreError>;
    /// The advisories that name `ecosystem`/`package`.
    async fn advisories_for(
        &self,
        ecosystem: &str,
        package: &str,
    ) -> Result<Vec<String>, StoreError>;
    /// The advisories that name any of `packages` in `ecosystem`, as (package, advisory id,
    /// body) rows, fetched in a few batched queries: a scan of a large SBOM costs a handful
    /// of round trips, and memory for the advisories it touches only.
    async fn advisories_for_packages(
        &self,
        ecosystem: &str,
        packages: &[String],
    ) -> Result<Vec<(String, String, String)>, StoreError>;
    async fn advisory_count(&self) -> Result<u64, StoreError>;
    async fn set_device_release(&self, release: &DeviceRelease) -> Result<(), StoreError>;
    async fn device_releases(&self) -> Result<Vec<DeviceRelease>, StoreError>;
}

/// Staged rollouts and the per-device state the hub keeps for them.
#[async_trait]
pub trait RolloutStore: Send + Sync {
    /// Stores a new rollout with its devices, in one transaction; `AlreadyExists` if the id
    /// is taken.
    async fn create_rollout(
        &self,
        rollout: &RolloutRow,
        devices: &[RolloutDeviceRow],
    ) -> Result<(), StoreError>;
    async fn rollout(&self, id: &str) -> Result<Option<RolloutRow>, StoreError>;
    /// All rollouts, newest first.
    async fn rollouts(&self) -> Result<Vec<RolloutRow>, StoreError>;
    /// The devices of a rollout, by wave then device id.
    async fn rollout_devices(&self, id: &str) -> Result<Vec<RolloutDeviceRow>, StoreError>;
    /// Writes a rollout's `state`, `wave`, `accepted_failures` and `reason` (the rest is
    /// fixed at creation); `NotFound` if there is no such rollout.
    async fn set_rollout_state(&self, rollout: &RolloutRow) -> Result<(), StoreError>;
    /// Sets what the hub did to one device of a rollout (queued with an install, asked to
    /// roll back, cancelled). The hub sends the command before it writes the row, so the
    /// device's answer can be applied first: `state` is written only if the row's `last_seq`
    /// is still `seen_seq` (what the hub read), so a report that came in between is never
    /// overwritten; `command` is always written.
    async fn set_rollout_device(
        &self,
        id: &str,
        device_id: &str,
        state: &str,
        command: Option<&str>,
        seen_seq: i64,
    ) -> Result<(), StoreError>;
    /// Applies a device's report (event number `seq`) to its row, unless an equal or later
    /// report was applied already or the device is not part of the rollout; true if applied.
    async fn rollout_report(
        &self,
        id: &str,
        device_id: &str,
        seq: i64,
        state: &str,
        detail: Option<&str>,
    ) -> Result<bool, StoreError>;
}

/// Which database a store is, and closing it.
#[async_trait]
pub trait Backend: Send + Sync {
    /// `sqlite` or `postgres`.
    fn backend(&self) -> &'static str;
    /// Where the data is, for logs: the SQLite file, or the PostgreSQL server and schema
    /// (never the password).
    fn location(&self) -> String;
    /// Closes the connections, waiting for running statements to finish.
    async fn close(&self);
}

#[async_trait]
impl Backend for SqliteStore {
    fn backend(&self) -> &'static str {
        "sqlite"
    }
    fn location(&self) -> String {
        self.path().display().to_string()
    }
    async fn close(&self) {
        SqliteStore::close(self).await
    }
}

#[async_trait]
impl Backend for PgStore {
    fn backend(&self) -> &'static str {
        "postgres"
    }
    fn location(&self) -> String {
        self.location().to_owned()
    }
    async fn close(&self) {
        PgStore::close(self).await
    }
}

/// Everything the hub stores.
pub trait Store:
    Backend
    + Registry
    + TelemetryStore
    + RetainedStore
    + PolicyStore
    + PkiStore
    + ProvisioningStore
    + AuditStore
    + EventStore
    + ComplianceStore
    + RolloutStore
    + 'static
{
}

impl<T> Store for T where
    T: Backend
        + Registry
        + TelemetryStore
        + RetainedStore
        + PolicyStore
        + PkiStore
        + ProvisioningStore
        + AuditStore
        + EventStore
        + ComplianceStore
        + RolloutStore
        + 'static
{
}
