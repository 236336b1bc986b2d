//! The records the store keeps.

use serde::Serialize;
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

/// A registered device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Device {
    pub id: String,
    pub status: DeviceStatus,
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
}

/// One stored telemetry reading: the pack-level values as typed columns (for queries) and the
/// whole document as received (for everything else).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TelemetryRow {
    pub device_id: String,
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
    pub body: String,
}

/// A device seen connecting or disconnecting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seen {
    pub device_id: String,
    pub at: OffsetDateTime,
    pub address: String,
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

pub(crate) fn to_ms(t: OffsetDateTime) -> i64 {
    (t.unix_timestamp_nanos() / 1_000_000) as i64
}

pub(crate) fn from_ms(ms: i64, table: &'static str) -> Result<OffsetDateTime, crate::StoreError> {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000).map_err(|e| {
        crate::StoreError::Corrupt {
            table,
            why: format!("timestamp {ms}: {e}"),
        }
    })
}
