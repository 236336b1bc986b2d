//! Operator operations behind the CLI. Each one changes the registry, writes the audit log,
//! and tells the running hub (if there is one) over the control socket so live sessions
//! follow at once.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use rampart_pki::{CertInfo, CheckedCsr, IssuedCert, KeyAlgorithm, PrivateKey, Validity, files};
use rampart_policy::{AttachmentTarget, Finding as LintFinding, PolicyDocument, lint};
use rampart_store::{
    AllowEntry, AuditEntry, CaTemplate, CertificateRecord, Device, DeviceStatus, DeviceUpdate,
    IdentityKind, NewCertificate, NewIdentity, PolicyRecord, Store, StoreError, TelemetryRow,
    TrustedCa,
};
use serde::Serialize;
use time::OffsetDateTime;

use crate::config::HubConfig;
use crate::control::{self, Request, Response};
use crate::datadir::DataDir;
use crate::error::HubError;

/// How an identity's key comes to be.
#[derive(Debug)]
pub enum KeySource {
    /// The hub creates the key (demo, factory provisioning): it is written once into the
    /// bundle and never stored by the hub.
    Generate(KeyAlgorithm),
    /// The device (or service) created its key and sent this CSR (PEM).
    Csr(String),
}

/// An identity just registered.
#[derive(Debug)]
pub struct AddedDevice {
    pub id: String,
    pub cert: IssuedCert,
    /// Present when the hub generated the key.
    pub key: Option<PrivateKey>,
    /// What the device trusts to authenticate the hub.
    pub ca_chain_pem: String,
}

/// File names inside a bundle directory.
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

/// Tells the running hub; `Ok(None)` when no hub runs on this data directory.
pub async fn notify(dir: &DataDir, req: Request) -> Result<Option<Response>, HubError> {
    match control::request(&dir.socket_path(), &req).await? {
        Some(r) if !r.ok => Err(HubError::Control(
            r.error
                .unwrap_or_else(|| "the hub refused the request".into()),
        )),
        other => Ok(other),
    }
}

fn not_found(e: StoreError, id: &str) -> HubError {
    match e {
        StoreError::NotFound { .. } => HubError::DeviceNotFound(id.to_owned()),
        other => other.into(),
    }
}

/// Issues a certificate for `id` and registers it as `kind`. If `out` is given the bundle is
/// written there first (nothing is registered if that fails, and the files are removed if the
/// registration fails).
#[allow(clippy::too_many_arguments)] // one argument per CLI option
pub async fn add_identity(
    dir: &DataDir,
    cfg: &HubConfig,
    store: &dyn Store,
    kind: IdentityKind,
    id: &str,
    key_source: KeySource,
    out: Option<&Path>,
    force: bool,
    lifetime: Option<std::time::Duration>,
) -> Result<AddedDevice, HubError> {
    rampart_pki::validate_device_id(id)
        .map_err(|why| HubError::Invalid(format!("{} id {id:?}: {why}", kind.as_str())))?;
    if store.device(id).await?.is_some() {
        return Err(HubError::Store(StoreError::AlreadyExists {
            what: "identity",
            id: id.to_owned(),
        }));
    }
    let ca = dir.device_ca(cfg)?;
    let lifetime = match lifetime {
        Some(l) => l,
        None => cfg.device_cert_lifetime().map_err(HubError::Invalid)?,
    };
    let validity = Validity::for_lifetime(lifetime);
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
    let identity = NewIdentity {
        id: id.to_owned(),
        kind,
        group: None,
        attributes: BTreeMap::new(),
        pending: false,
        registered_via: if via.starts_with("CSR") {
            "csr".into()
        } else {
            "cli".into()
        },
        certificate: NewCertificate {
            serial: added.cert.info.serial.clone(),
            fingerprint: added.cert.info.fingerprint.clone(),
            not_before: added.cert.info.not_before,
            not_after: added.cert.info.not_after,
            key_algorithm: added.cert.info.key_algorithm.clone(),
            issuer: ca.info().fingerprint.clone(),
        },
    };
    if let Err(e) = store.add_identity(&identity).await {
        for f in written {
            let _ = std::fs::remove_file(f);
        }
        return Err(e.into());
    }
    store
        .audit(&audit(
            &format!("{}.add", kind.as_str()),
            id,
            format!("certificate {} ({via})", added.cert.info.serial),
        ))
        .await?;
    Ok(added)
}

/// Registers a device (see [`add_identity`]).
pub async fn add_device(
    dir: &DataDir,
    cfg: &HubConfig,
    store: &dyn Store,
    id: &str,
    key_source: KeySource,
    out: Option<&Path>,
    force: bool,
) -> Result<AddedDevice, HubError> {
    add_identity(
        dir,
        cfg,
        store,
        IdentityKind::Device,
        id,
        key_source,
        out,
        force,
        None,
    )
    .await
}

/// Writes `device.key` (0600, if the hub generated it), `device.crt` and `ca-chain.crt`.
pub fn write_bundle(out: &Path, d: &AddedDevice, force: bool) -> Result<Vec<PathBuf>, HubError> {
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

/// An identity with its certificates, policies and newest reading.
#[derive(Debug, Serialize)]
pub struct DeviceDetails {
    #[serde(flatten)]
    pub device: Device,
    pub certificates: Vec<CertificateRecord>,
    pub policies: Vec<String>,
    pub latest: Option<TelemetryRow>,
}

pub async fn show_device(
    cfg: &HubConfig,
    store: &dyn Store,
    id: &str,
) -> Result<DeviceDetails, HubError> {
    let device = store
        .device(id)
        .await?
        .ok_or_else(|| HubError::DeviceNotFound(id.to_owned()))?;
    let certificates = store.certificates(id).await?;
    let engine = crate::policies::load_engine(store, cfg).await?;
    let kind = match device.kind {
        IdentityKind::Device => rampart_policy::IdentityKind::Device,
        IdentityKind::Service => rampart_policy::IdentityKind::Service,
        IdentityKind::Claim => rampart_policy::IdentityKind::Claim,
    };
    let policies = engine.applicable_policies(kind, id);
    let latest = store
        .telemetry(id, OffsetDateTime::UNIX_EPOCH, 1)
        .await?
        .pop();
    Ok(DeviceDetails {
        device,
        certificates,
        policies,
        latest,
    })
}

/// What a change did to the running hub.
#[derive(Debug, Serialize)]
pub struct LiveOutcome {
    /// Live connections closed; `None` if no hub was running.
    pub disconnected: Option<usize>,
    pub hub_running: bool,
}

fn outcome(r: Option<Response>) -> LiveOutcome {
    LiveOutcome {
        hub_running: r.is_some(),
        disconnected: r.and_then(|r| r.disconnected),
    }
}

async fn device_changed(dir: &DataDir, id: &str) -> Result<LiveOutcome, HubError> {
    Ok(outcome(
        notify(dir, Request::DeviceChanged { id: id.to_owned() }).await?,
    ))
}

/// Disables an identity and, if the hub is running, drops its live sessions at once.
pub async fn disable_device(
    dir: &DataDir,
    store: &dyn Store,
    id: &str,
) -> Result<LiveOutcome, HubError> {
    set_status(store, id, DeviceStatus::Disabled, "device.disable").await?;
    device_changed(dir, id).await
}

/// Re-enables a disabled identity.
pub async fn enable_device(
    dir: &DataDir,
    store: &dyn Store,
    id: &str,
) -> Result<LiveOutcome, HubError> {
    set_status(store, id, DeviceStatus::Active, "device.enable").await?;
    device_changed(dir, id).await
}

async fn set_status(
    store: &dyn Store,
    id: &str,
    status: DeviceStatus,
    action: &str,
) -> Result<(), HubError> {
    store
        .set_device_status(id, status)
        .await
        .map_err(|e| not_found(e, id))?;
    store.audit(&audit(action, id, String::new())).await?;
    Ok(())
}

/// Changes group, attributes, quarantine or approval of an identity and applies it live.
pub async fn update_device(
    dir: &DataDir,
    store: &dyn Store,
    id: &str,
    update: DeviceUpdate,
    action: &str,
) -> Result<LiveOutcome, HubError> {
    store
        .update_device(id, &update)
        .await
        .map_err(|e| not_found(e, id))?;
    store
        .audit(&audit(action, id, format!("{update:?}")))
        .await?;
    device_changed(dir, id).await
}

/// Revokes every valid certificate of an identity, re-signs the CRL and drops its live
/// sessions. Returns the revoked certificates.
pub async fn revoke_device(
    dir: &DataDir,
    cfg: &HubConfig,
    store: &dyn Store,
    id: &str,
    reason: rampart_pki::RevocationReason,
) -> Result<(Vec<CertificateRecord>, LiveOutcome), HubError> {
    let revoked = store
        .revoke_certificates(id, reason.as_str())
        .await
        .map_err(|e| not_found(e, id))?;
    crate::pki_state::publish_crl(dir, cfg, store).await?;
    store
        .audit(&audit(
            "device.revoke",
            id,
            format!(
                "{} certificate(s) revoked ({}): {}",
                revoked.len(),
                reason.as_str(),
                revoked
                    .iter()
                    .map(|c| c.serial.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        ))
        .await?;
    let serials = revoked.iter().map(|c| c.serial.clone()).collect();
    let r = notify(dir, Request::CertificatesRevoked { serials }).await?;
    Ok((revoked, outcome(r)))
}

/// Re-signs the device CA's CRL (and loads it into the running hub). Returns the PEM.
pub async fn publish_crl(
    dir: &DataDir,
    cfg: &HubConfig,
    store: &dyn Store,
) -> Result<String, HubError> {
    let crl = crate::pki_state::publish_crl(dir, cfg, store).await?;
    notify(dir, Request::TrustChanged).await?;
    Ok(crl.pem)
}

/// Parses, validates and lints a policy document.
pub fn check_policy(text: &str) -> Result<(PolicyDocument, Vec<LintFinding>), HubError> {
    let doc = PolicyDocument::parse(text).map_err(|e| HubError::Invalid(e.to_string()))?;
    let findings = lint(&doc);
    Ok((doc, findings))
}

/// Stores a policy (a new version if it exists) and applies it to live sessions.
pub async fn put_policy(
    dir: &DataDir,
    store: &dyn Store,
    text: &str,
) -> Result<(PolicyDocument, i64, Vec<LintFinding>), HubError> {
    let (doc, findings) = check_policy(text)?;
    let version = store.put_policy(&doc.name, text).await?;
    store
        .audit(&audit(
            "policy.put",
            &doc.name,
            format!("version {version}, {} lint finding(s)", findings.len()),
        ))
        .await?;
    notify(dir, Request::PoliciesChanged).await?;
    Ok((doc, version, findings))
}

pub async fn list_policies(
    store: &dyn Store,
) -> Result<Vec<(PolicyRecord, Vec<String>)>, HubError> {
    let attachments = store.attachments().await?;
    Ok(store
        .policies()
        .await?
        .into_iter()
        .map(|p| {
            let t = attachments
                .iter()
                .filter(|(n, _)| *n == p.name)
                .map(|(_, t)| t.clone())
                .collect();
            (p, t)
        })
        .collect())
}

pub async fn show_policy(
    store: &dyn Store,
    name: &str,
    version: Option<i64>,
) -> Result<PolicyRecord, HubError> {
    let p = match version {
        Some(v) => store.policy_version(name, v).await?,
        None => store.policy(name).await?,
    };
    p.ok_or_else(|| {
        HubError::Invalid(format!(
            "no policy {name:?}{}",
            version.map(|v| format!(" version {v}")).unwrap_or_default()
        ))
    })
}

/// Attaches (`attach = true`) or detaches a policy and applies it to live sessions.
pub async fn attach_policy(
    dir: &DataDir,
    store: &dyn Store,
    name: &str,
    target: &str,
    attach: bool,
) -> Result<(), HubError> {
    let t = AttachmentTarget::parse(target).map_err(HubError::Invalid)?;
    let target = t.to_string();
    if attach {
        store
            .attach_policy(name, &target)
            .await
            .map_err(|e| match e {
                StoreError::NotFound { .. } => HubError::Invalid(format!("no policy {name:?}")),
                other => other.into(),
            })?;
    } else {
        store.detach_policy(name, &target).await?;
    }
    store
        .audit(&audit(
            if attach {
                "policy.attach"
            } else {
                "policy.detach"
            },
            name,
            target,
        ))
        .await?;
    notify(dir, Request::PoliciesChanged).await?;
    Ok(())
}

pub async fn delete_policy(dir: &DataDir, store: &dyn Store, name: &str) -> Result<(), HubError> {
    store.delete_policy(name).await.map_err(|e| match e {
        StoreError::NotFound { .. } => HubError::Invalid(format!("no policy {name:?}")),
        other => other.into(),
    })?;
    store
        .audit(&audit("policy.delete", name, String::new()))
        .await?;
    notify(dir, Request::PoliciesChanged).await?;
    Ok(())
}

/// Registers a CA for just-in-time registration of the devices it certified.
pub async fn register_ca(
    dir: &DataDir,
    store: &dyn Store,
    pem: &str,
    auto_activate: bool,
    template: CaTemplate,
) -> Result<TrustedCa, HubError> {
    let info = CertInfo::from_pem(pem)?;
    if !info.is_ca {
        return Err(HubError::Invalid(
            "the certificate is not a CA certificate (basicConstraints CA:FALSE or absent)".into(),
        ));
    }
    if info.not_after <= OffsetDateTime::now_utc() {
        return Err(HubError::Invalid(format!(
            "the CA certificate expired on {}",
            info.not_after.date()
        )));
    }
    if let Some(p) = &template.policy
        && store.policy(p).await?.is_none()
    {
        return Err(HubError::Invalid(format!(
            "template policy {p:?} does not exist"
        )));
    }
    for field in template.attributes.values() {
        if !["CN", "O", "OU", "L", "ST", "C", "serialNumber"].contains(&field.as_str()) {
            return Err(HubError::Invalid(format!(
                "template attribute field {field:?}: use CN, O, OU, L, ST, C or serialNumber"
            )));
        }
    }
    let ca = TrustedCa {
        fingerprint: info.fingerprint.clone(),
        subject: info.subject.clone(),
        certificate: pem.to_owned(),
        auto_activate,
        template,
        added_at: OffsetDateTime::now_utc(),
    };
    store.add_trusted_ca(&ca).await?;
    store
        .audit(&audit(
            "ca.register",
            &info.subject,
            format!(
                "sha256:{} ({})",
                info.fingerprint,
                if auto_activate {
                    "auto-activate"
                } else {
                    "pending approval"
                }
            ),
        ))
        .await?;
    notify(dir, Request::TrustChanged).await?;
    Ok(ca)
}

/// Adds a serial number to the provisioning allow-list.
pub async fn allow_serial(store: &dyn Store, entry: AllowEntry) -> Result<(), HubError> {
    if let Some(id) = &entry.device_id {
        rampart_pki::validate_device_id(id)
            .map_err(|why| HubError::Invalid(format!("device id {id:?}: {why}")))?;
    }
    store.allow_serial(&entry).await?;
    store
        .audit(&audit(
            "provision.allow",
            &entry.serial_number,
            format!("{:?}", entry.device_id),
        ))
        .await?;
    Ok(())
}

/// Runs the identity audit: through the running hub (which knows the live sessions) when
/// there is one, else from the registry alone.
pub async fn run_audit(
    dir: &DataDir,
    cfg: &HubConfig,
    store: &dyn Store,
) -> Result<(Vec<crate::audit::Finding>, bool), HubError> {
    match notify(dir, Request::Audit).await? {
        Some(r) => Ok((r.findings.unwrap_or_default(), true)),
        None => Ok((crate::audit::run(dir, cfg, store, None).await?, false)),
    }
}

/// The newest `limit` events a device reported, oldest first.
pub async fn events(
    store: &dyn Store,
    id: &str,
    limit: u32,
) -> Result<Vec<rampart_store::EventRow>, HubError> {
    if store.device(id).await?.is_none() {
        return Err(HubError::DeviceNotFound(id.to_owned()));
    }
    Ok(store.events(id, limit).await?)
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
