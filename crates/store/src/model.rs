//! The records the store keeps.

use std::collections::BTreeMap;

use bytestring::ByteString;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

/// Whether a device may connect.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DeviceStatus {
    Active,
    Disabled,
}

impl DeviceStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            DeviceStatus::Active => "active",
            DeviceStatus::Disabled => "disabled",
        }
    }

    pub(crate) fn parse(s: &str) -> Option<Self> {
        match s {
            "active" => Some(DeviceStatus::Active),
            "disabled" => Some(DeviceStatus::Disabled),
            _ => None,
        }
    }
}

/// What an identity is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum IdentityKind {
    Device,
    Service,
    Claim,
}

impl IdentityKind {
    pub fn as_str(self) -> &'static str {
        match self {
            IdentityKind::Device => "device",
            IdentityKind::Service => "service",
            IdentityKind::Claim => "claim",
        }
    }

    pub(crate) fn parse(s: &str) -> Option<Self> {
        match s {
            "device" => Some(IdentityKind::Device),
            "service" => Some(IdentityKind::Service),
            "claim" => Some(IdentityKind::Claim),
            _ => None,
        }
    }
}

/// A registered identity (a device, a service or a claim).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Device {
    pub id: String,
    pub kind: IdentityKind,
    pub status: DeviceStatus,
    /// Waiting for `rampart device approve` (just-in-time registration).
    pub pending: bool,
    pub quarantined: bool,
    pub group: Option<String>,
    pub attributes: BTreeMap<String, String>,
    pub registered_via: String,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339::option")]
    pub last_seen_at: Option<OffsetDateTime>,
    pub last_address: Option<String>,
}

/// State of a certificate in the registry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CertificateStatus {
    Valid,
    Revoked,
    Retired,
}

impl CertificateStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            CertificateStatus::Valid => "valid",
            CertificateStatus::Revoked => "revoked",
            CertificateStatus::Retired => "retired",
        }
    }

    pub(crate) fn parse(s: &str) -> Option<Self> {
        match s {
            "valid" => Some(CertificateStatus::Valid),
            "revoked" => Some(CertificateStatus::Revoked),
            "retired" => Some(CertificateStatus::Retired),
            _ => None,
        }
    }
}

/// A certificate to register.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewCertificate {
    pub serial: String,
    pub fingerprint: String,
    pub not_before: OffsetDateTime,
    pub not_after: OffsetDateTime,
    pub key_algorithm: String,
    /// Fingerprint of the issuing CA.
    pub issuer: String,
}

/// An identity to register.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewIdentity {
    pub id: String,
    pub kind: IdentityKind,
    pub group: Option<String>,
    pub attributes: BTreeMap<String, String>,
    pub pending: bool,
    pub registered_via: String,
    pub certificate: NewCertificate,
}

impl NewIdentity {
    /// A device registered by the operator, active at once.
    pub fn device(id: &str, certificate: NewCertificate, registered_via: &str) -> Self {
        NewIdentity {
            id: id.to_owned(),
            kind: IdentityKind::Device,
            group: None,
            attributes: BTreeMap::new(),
            pending: false,
            registered_via: registered_via.to_owned(),
            certificate,
        }
    }
}

/// Changes to an identity; `None` leaves a field as it is.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeviceUpdate {
    /// `Some(None)` removes the group.
    pub group: Option<Option<String>>,
    pub attributes: Option<BTreeMap<String, String>>,
    pub quarantined: Option<bool>,
    pub pending: Option<bool>,
}

/// A registered certificate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CertificateRecord {
    pub serial: String,
    pub device_id: String,
    pub fingerprint: String,
    #[serde(with = "time::serde::rfc3339")]
    pub not_before: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub not_after: OffsetDateTime,
    pub key_algorithm: String,
    #[serde(with = "time::serde::rfc3339")]
    pub issued_at: OffsetDateTime,
    pub status: CertificateStatus,
    pub issuer: String,
    #[serde(with = "time::serde::rfc3339::option")]
    pub revoked_at: Option<OffsetDateTime>,
    pub revocation_reason: Option<String>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub retire_at: Option<OffsetDateTime>,
}

/// One stored telemetry reading: the pack-level values as typed columns (for queries) and the
/// whole document as received (for everything else).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TelemetryRow {
    /// Shared text rather than a `String`: the hub's rows are slices of the PUBLISH they came
    /// in (its topic and payload), not copies. A copy was an allocation on the runtime's
    /// thread freed on the writer's, twice a reading: without them the hub took 4% less CPU
    /// per message at a fixed QoS 0 rate and delivered more at QoS 0 saturation
    /// (docs/benchmarks.md, run AT). A row waiting for its commit holds the buffer its
    /// PUBLISH was read into.
    pub device_id: ByteString,
    /// Per-device sequence number assigned by the agent.
    pub seq: i64,
    /// When the reading was taken (device clock).
    #[serde(with = "time::serde::rfc3339")]
    pub ts: OffsetDateTime,
    /// When the hub received it.
    #[serde(with = "time::serde::rfc3339")]
    pub received_at: OffsetDateTime,
    pub voltage_v: Option<f64>,
    pub current_a: Option<f64>,
    pub soc_pct: Option<f64>,
    pub soh_pct: Option<f64>,
    pub temp_min_c: Option<f64>,
    pub temp_max_c: Option<f64>,
    pub cell_min_v: Option<f64>,
    pub cell_max_v: Option<f64>,
    /// Active alarm names.
    pub alarms: Vec<String>,
    /// The full JSON document.
    pub body: ByteString,
}

/// A stored policy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PolicyRecord {
    pub name: String,
    pub version: i64,
    pub document: String,
    #[serde(with = "time::serde::rfc3339")]
    pub updated_at: OffsetDateTime,
}

/// How a just-in-time CA registers unknown devices.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct CaTemplate {
    /// Group new devices join.
    pub group: Option<String>,
    /// Policy attached to each new device (in addition to fleet-wide policies).
    pub policy: Option<String>,
    /// Attribute name → certificate subject field (`O`, `OU`, `L`, `ST`, `C`, `serialNumber`).
    pub attributes: BTreeMap<String, String>,
}

/// A CA trusted for just-in-time registration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TrustedCa {
    pub fingerprint: String,
    pub subject: String,
    /// PEM.
    pub certificate: String,
    /// Register devices as active (`true`) or pending approval (`false`).
    pub auto_activate: bool,
    pub template: CaTemplate,
    #[serde(with = "time::serde::rfc3339")]
    pub added_at: OffsetDateTime,
}

/// A certificate seen with a client id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CertificateUsage {
    pub fingerprint: String,
    pub client_id: String,
    #[serde(with = "time::serde::rfc3339")]
    pub first_seen: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub last_seen: OffsetDateTime,
}

/// Usage limits and count of a claim identity.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ClaimRecord {
    pub name: String,
    pub max_uses: Option<i64>,
    pub uses: i64,
    #[serde(with = "time::serde::rfc3339::option")]
    pub not_after: Option<OffsetDateTime>,
}

/// A serial number allowed to provision.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AllowEntry {
    pub serial_number: String,
    /// Device id to give it (default: the serial number).
    pub device_id: Option<String>,
    pub group: Option<String>,
    pub attributes: BTreeMap<String, String>,
}

/// A device seen connecting or disconnecting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seen {
    pub device_id: String,
    pub at: OffsetDateTime,
    pub address: String,
}

/// An event a device reported.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EventRow {
    pub device_id: String,
    /// Per-device event sequence number assigned by the agent.
    pub seq: i64,
    /// When it happened (device clock).
    #[serde(with = "time::serde::rfc3339")]
    pub ts: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub received_at: OffsetDateTime,
    /// `bms_unreachable`, `bms_recovered`, `data_dropped`, ...
    pub kind: String,
    /// The full JSON document.
    pub body: String,
}

/// An audit log entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AuditEntry {
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
    /// Who acted: "cli", "hub", an operator name.
    pub actor: String,
    /// What was done, e.g. "device.add", "device.disable".
    pub action: String,
    /// On what, e.g. a device id.
    pub subject: String,
    pub detail: String,
}

/// A staged rollout (the plan is JSON that `rampart-update::rollout` validates and reads).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RolloutRow {
    pub id: String,
    /// The signed target it installs, e.g. `releases/1.2.0/app.tar`.
    pub target: String,
    pub version: String,
    pub plan: String,
    /// `running`, `awaiting_approval`, `paused`, `aborted`, `completed`.
    pub state: String,
    /// The wave in progress (0-based).
    pub wave: i64,
    /// Failures in the current wave an operator accepted (`rampart rollout resume`).
    pub accepted_failures: i64,
    /// Why it is paused or aborted.
    pub reason: Option<String>,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub updated_at: OffsetDateTime,
}

/// One device of a rollout.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RolloutDeviceRow {
    pub device_id: String,
    pub wave: i64,
    /// `pending`, `queued`, `downloading`, `installing`, `verifying`, `succeeded`, `failed`,
    /// `rolled_back`, `cancelled`.
    pub state: String,
    /// The last instruction sent: `install` or `rollback`.
    pub command: Option<String>,
    /// What the device said with its last report (an error, a reason).
    pub detail: Option<String>,
    /// The device's event number of the last report applied (-1: none).
    pub last_seq: i64,
    #[serde(with = "time::serde::rfc3339")]
    pub updated_at: OffsetDateTime,
}

impl DeviceUpdate {
    /// `device` with this update's changes; fields the update leaves out keep their value.
    pub(crate) fn apply(&self, mut device: Device) -> Device {
        if let Some(g) = &self.group {
            device.group = g.clone();
        }
        if let Some(a) = &self.attributes {
            device.attributes = a.clone();
        }
        device.quarantined = self.quarantined.unwrap_or(device.quarantined);
        device.pending = self.pending.unwrap_or(device.pending);
        device
    }
}

/// Why claim `name` could not be used at `now`, given what the store holds for it.
pub(crate) fn claim_exhausted(
    name: &str,
    claim: Option<ClaimRecord>,
    now: OffsetDateTime,
) -> crate::StoreError {
    let why = match claim {
        None => "no such claim".to_string(),
        Some(c) if c.not_after.is_some_and(|t| t <= now) => "its lifetime has ended".into(),
        Some(c) => format!("all {} uses are spent", c.max_uses.unwrap_or(0)),
    };
    crate::StoreError::Exhausted {
        what: "claim",
        id: name.to_owned(),
        why,
    }
}

/// Milliseconds since the Unix epoch, truncated toward zero (as stored since the first
/// migration). Computed from whole seconds and the nanosecond rather than as
/// `unix_timestamp_nanos() / 1_000_000`: that is a 128-bit division, a library call, for
/// every time of every reading the writer stores.
pub(crate) fn to_ms(t: OffsetDateTime) -> i64 {
    let nanos = t.nanosecond();
    let floor = t.unix_timestamp() * 1000 + i64::from(nanos / 1_000_000);
    // Before the epoch, a part of a millisecond makes truncation one more than the floor.
    if floor < 0 && !nanos.is_multiple_of(1_000_000) {
        floor + 1
    } else {
        floor
    }
}

pub(crate) fn from_ms(ms: i64, table: &'static str) -> Result<OffsetDateTime, crate::StoreError> {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000).map_err(|e| {
        crate::StoreError::Corrupt {
            table,
            why: format!("timestamp {ms}: {e}"),
        }
    })
}

/// One entry of the append-only compliance history.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct HistoryEntry {
    pub id: i64,
    pub kind: String,
    pub key: String,
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
    pub action: String,
    pub detail: String,
}

/// A component of a release's SBOM, as stored for fleet joins.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SbomComponentRow {
    pub bom_ref: String,
    /// OSV ecosystem and package, when the component's purl maps to one.
    pub ecosystem: Option<String>,
    pub package: Option<String>,
    pub version: String,
}

/// An OSV advisory to store, with the packages it names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdvisoryRow {
    pub id: String,
    pub modified: String,
    pub body: String,
    /// (ecosystem, package) pairs from `affected[]`.
    pub packages: Vec<(String, String)>,
}

/// The release a device reported it runs.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct DeviceRelease {
    pub device_id: String,
    pub product: String,
    pub release: String,
    #[serde(with = "time::serde::rfc3339")]
    pub reported_at: OffsetDateTime,
}

#[cfg(test)]
mod tests {
    use time::OffsetDateTime;

    use super::{from_ms, to_ms};

    #[test]
    fn milliseconds_truncate_toward_zero_on_both_sides_of_the_epoch() {
        let cases: [i128; 14] = [
            0,
            1,
            999_999,
            1_000_000,
            1_500_000,
            -1,
            -500_000,
            -999_999,
            -1_000_000,
            -1_000_001,
            -1_000_500_000,
            1_764_000_000_123_456_789,
            -62_000_000_000_987_654_321,
            253_402_300_799_999_999_999,
        ];
        for nanos in cases {
            let t = OffsetDateTime::from_unix_timestamp_nanos(nanos).unwrap();
            assert_eq!(
                i128::from(to_ms(t)),
                nanos / 1_000_000,
                "{nanos} ns since the epoch"
            );
        }
        // Whole milliseconds go and come back unchanged.
        for ms in [-86_400_001_i64, -1, 0, 1, 1_764_000_000_123] {
            assert_eq!(to_ms(from_ms(ms, "t").unwrap()), ms);
        }
    }
}
