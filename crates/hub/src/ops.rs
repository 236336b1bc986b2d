//! Operator operations behind the CLI: registering devices (key + certificate bundle or a
//! device's CSR), listing, inspecting and disabling them, and reading telemetry. Each change
//! is written to the audit log, and changes that affect live sessions are sent to the running
//! hub over the control socket.

use std::path::Path;

use rampart_pki::{CheckedCsr, IssuedCert, KeyAlgorithm, PrivateKey, Validity, files};
use rampart_store::{
    AuditEntry, CertificateRecord, Device, DeviceStatus, NewCertificate, Store, TelemetryRow,
};
use serde::Serialize;
use time::OffsetDateTime;

use crate::config::HubConfig;
use crate::control::{self, Request};
use crate::datadir::DataDir;
use crate::error::HubError;

/// How the device's key comes to be.
#[derive(Debug)]
pub enum KeySource {
    /// The hub creates the key (demo, factory provisioning): it is written once into the
    /// bundle and never stored by the hub.
    Generate(KeyAlgorithm),
    /// The device created its key and sent this CSR (PEM).
    Csr(String),
}

/// A device just registered.
#[derive(Debug)]
pub struct AddedDevice {
    pub id: String,
    pub cert: IssuedCert,
    /// Present when the hub generated the key.
    pub key: Option<PrivateKey>,
    /// What the device trusts to authenticate the hub.
    pub ca_chain_pem: String,
}

/// File names inside a device bundle directory.
pub const BUNDLE_KEY: &str = "device.key";
pub const BUNDLE_CERT: &str = "device.crt";
pub const BUNDLE_CA: &str = "ca-chain.crt";

fn audit(action: &str, subject: &str, detail: String) -> AuditEntry {
    AuditEntry {
        at: OffsetDateTime::now_utc(),
        actor: "cli".into(),
        action: action.into(),
        subject: subject.into(),
        detail,
    }
}

fn new_cert(c: &IssuedCert) -> NewCertificate {
    NewCertificate {
        serial: c.info.serial.clone(),
        fingerprint: c.info.fingerprint.clone(),
        not_before: c.info.not_before,
        not_after: c.info.not_after,
        key_algorithm: c.info.key_algorithm.clone(),
    }
}

/// Issues a certificate for `id` and registers the device. If `out` is given the bundle is
/// written there first (nothing is registered if that fails, and the files are removed if the
/// registration fails).
pub async fn add_device(
    dir: &DataDir,
    cfg: &HubConfig,
    store: &dyn Store,
    id: &str,
    key_source: KeySource,
    out: Option<&Path>,
    force: bool,
) -> Result<AddedDevice, HubError> {
    rampart_pki::validate_device_id(id)
        .map_err(|why| HubError::Invalid(format!("device id {id:?}: {why}")))?;
    if store.device(id).await?.is_some() {
        return Err(HubError::Store(rampart_store::StoreError::AlreadyExists {
            what: "device",
            id: id.to_owned(),
        }));
    }
    let ca = dir.device_ca(cfg)?;
    let validity = Validity::days_from_now(cfg.pki.device_cert_days);
    let (cert, key, via) = match key_source {
        KeySource::Generate(alg) => {
            let (cert, key) = ca.issue_device(id, alg, validity)?;
            (cert, Some(key), format!("generated {alg} key"))
        }
        KeySource::Csr(pem) => {
            let csr = CheckedCsr::from_pem(&pem)?;
            let cert = ca.issue_device_from_csr(id, &csr, validity)?;
            (cert, None, format!("CSR with {} key", csr.algorithm))
        }
    };
    let ca_chain_pem =
        std::fs::read_to_string(dir.resolve(&cfg.pki.root_ca_cert)).map_err(|source| {
            HubError::Io {
                path: dir.resolve(&cfg.pki.root_ca_cert),
                source,
            }
        })?;
    let added = AddedDevice {
        id: id.to_owned(),
        cert,
        key,
        ca_chain_pem,
    };
    let written = match out {
        Some(out) => write_bundle(out, &added, force)?,
        None => Vec::new(),
    };
    if let Err(e) = store.add_device(id, &new_cert(&added.cert)).await {
        for f in written {
            let _ = std::fs::remove_file(f);
        }
        return Err(e.into());
    }
    store
        .audit(&audit(
            "device.add",
            id,
            format!("certificate {} ({via})", added.cert.info.serial),
        ))
        .await?;
    Ok(added)
}

/// Writes `device.key` (0600, if the hub generated it), `device.crt` and `ca-chain.crt`.
pub fn write_bundle(
    out: &Path,
    d: &AddedDevice,
    force: bool,
) -> Result<Vec<std::path::PathBuf>, HubError> {
    files::create_private_dir(out)?;
    let key_path = out.join(BUNDLE_KEY);
    let cert_path = out.join(BUNDLE_CERT);
    let ca_path = out.join(BUNDLE_CA);
    // Check everything first so a refusal leaves no partial bundle behind.
    if !force {
        for p in [&key_path, &cert_path, &ca_path] {
            if p.exists() && (p != &key_path || d.key.is_some()) {
                return Err(rampart_pki::PkiError::AlreadyExists { path: p.clone() }.into());
            }
        }
    }
    let mut written = Vec::new();
    if let Some(key) = &d.key {
        files::write_secret(&key_path, key.to_pem().as_bytes(), force)?;
        written.push(key_path);
    }
    files::write_public(&cert_path, d.cert.pem.as_bytes(), force)?;
    written.push(cert_path);
    files::write_public(&ca_path, d.ca_chain_pem.as_bytes(), force)?;
    written.push(ca_path);
    Ok(written)
}

/// A device with its certificates and newest reading.
#[derive(Debug, Serialize)]
pub struct DeviceDetails {
    #[serde(flatten)]
    pub device: Device,
    pub certificates: Vec<CertificateRecord>,
    pub latest: Option<TelemetryRow>,
}

pub async fn show_device(store: &dyn Store, id: &str) -> Result<DeviceDetails, HubError> {
    let device = store
        .device(id)
        .await?
        .ok_or_else(|| HubError::DeviceNotFound(id.to_owned()))?;
    let certificates = store.certificates(id).await?;
    let latest = store
        .telemetry(id, OffsetDateTime::UNIX_EPOCH, 1)
        .await?
        .pop();
    Ok(DeviceDetails {
        device,
        certificates,
        latest,
    })
}

/// Outcome of `device disable`.
#[derive(Debug, Serialize)]
pub struct DisableOutcome {
    /// Live connections closed by the running hub; `None` if no hub was running.
    pub disconnected: Option<usize>,
}

/// Disables a device and, if the hub is running, drops its live session at once.
pub async fn disable_device(
    dir: &DataDir,
    store: &dyn Store,
    id: &str,
) -> Result<DisableOutcome, HubError> {
    set_status(store, id, DeviceStatus::Disabled, "device.disable").await?;
    let response = control::request(
        &dir.socket_path(),
        &Request::DeviceChanged { id: id.to_owned() },
    )
    .await?;
    match response {
        Some(r) if r.ok => Ok(DisableOutcome {
            disconnected: r.disconnected,
        }),
        Some(r) => Err(HubError::Control(
            r.error.unwrap_or_else(|| "hub refused the request".into()),
        )),
        None => Ok(DisableOutcome { disconnected: None }),
    }
}

/// Re-enables a disabled device.
pub async fn enable_device(store: &dyn Store, id: &str) -> Result<(), HubError> {
    set_status(store, id, DeviceStatus::Active, "device.enable").await
}

/// Changes a device's status and records it in the audit log.
async fn set_status(
    store: &dyn Store,
    id: &str,
    status: DeviceStatus,
    action: &str,
) -> Result<(), HubError> {
    store
        .set_device_status(id, status)
        .await
        .map_err(|e| match e {
            rampart_store::StoreError::NotFound { .. } => HubError::DeviceNotFound(id.to_owned()),
            other => other.into(),
        })?;
    store.audit(&audit(action, id, String::new())).await?;
    Ok(())
}

/// Telemetry of a device since `since`, oldest first.
pub async fn telemetry(
    store: &dyn Store,
    id: &str,
    since: OffsetDateTime,
    limit: u32,
) -> Result<Vec<TelemetryRow>, HubError> {
    if store.device(id).await?.is_none() {
        return Err(HubError::DeviceNotFound(id.to_owned()));
    }
    Ok(store.telemetry(id, since, limit).await?)
}
