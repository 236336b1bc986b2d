//! The identity audit (`rampart audit`, and on a schedule in the hub): checks that find what
//! an attacker or a forgetful operator leaves behind. Each finding has a severity and a hint.
//!
//! | check | finds |
//! |---|---|
//! | `ca_expiring` | the root, device or a just-in-time CA expiring soon or expired |
//! | `certificate_expiring` | valid device certificates expiring soon or expired |
//! | `certificate_too_old` | valid certificates older than the maximum age |
//! | `revoked_still_connected` | live sessions whose certificate is revoked or retired, or whose identity is disabled |
//! | `shared_certificate` | one device certificate used with several client ids |
//! | `weak_key` | keys below current recommendations (RSA < 3072 bits per BSI TR-02102-1) |
//! | `permissive_policy` | policies the linter flags as overly permissive |

use std::collections::{BTreeMap, BTreeSet, HashMap};

use rampart_pki::CertInfo;
use rampart_policy::{Identity, PolicyDocument, Severity as LintSeverity, lint};
use rampart_store::{CertificateStatus, DeviceStatus, IdentityKind, Store};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::config::HubConfig;
use crate::datadir::DataDir;
use crate::error::HubError;

/// How urgent a finding is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Low,
    Medium,
    High,
    Critical,
}

/// One finding.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Finding {
    pub check: String,
    pub severity: Severity,
    pub subject: String,
    pub message: String,
    pub hint: String,
}

fn finding(
    check: &str,
    severity: Severity,
    subject: impl Into<String>,
    message: String,
    hint: &str,
) -> Finding {
    Finding {
        check: check.into(),
        severity,
        subject: subject.into(),
        message,
        hint: hint.into(),
    }
}

fn days(d: time::Duration) -> i64 {
    d.whole_days()
}

/// Runs every check. `connected` are the live identities when the hub is running (the
/// `revoked_still_connected` check needs them).
pub async fn run(
    dir: &DataDir,
    cfg: &HubConfig,
    store: &dyn Store,
    connected: Option<&[Identity]>,
) -> Result<Vec<Finding>, HubError> {
    let (cert_warning, max_age, ca_warning) = cfg.audit_thresholds().map_err(HubError::Invalid)?;
    let now = OffsetDateTime::now_utc();
    let mut out = Vec::new();

    // CAs.
    let mut cas: Vec<(String, CertInfo)> = Vec::new();
    for (label, path) in [
        ("root CA", &cfg.pki.root_ca_cert),
        ("device CA", &cfg.pki.device_ca_cert),
    ] {
        cas.push((label.into(), CertInfo::read(&dir.resolve(path))?.0));
    }
    for ca in store.trusted_cas().await? {
        if let Ok(info) = CertInfo::from_pem(&ca.certificate) {
            cas.push((format!("just-in-time CA {}", ca.subject), info));
        }
    }
    for (label, info) in &cas {
        let left = info.not_after - now;
        if left <= time::Duration::ZERO {
            out.push(finding(
                "ca_expiring",
                Severity::Critical,
                label.clone(),
                format!("{label} expired on {}", info.not_after.date()),
                "issue a new CA and re-issue the certificates it signed",
            ));
        } else if left < ca_warning {
            out.push(finding(
                "ca_expiring",
                Severity::High,
                label.clone(),
                format!(
                    "{label} expires in {} days ({})",
                    days(left),
                    info.not_after.date()
                ),
                "plan the CA rollover now: new CA, overlap, re-issue device certificates",
            ));
        }
    }

    // Certificates.
    let identities: HashMap<String, rampart_store::Device> = store
        .identities(None)
        .await?
        .into_iter()
        .map(|d| (d.id.clone(), d))
        .collect();
    let certs = store.all_certificates().await?;
    for c in certs
        .iter()
        .filter(|c| c.status == CertificateStatus::Valid)
    {
        let subject = format!("{} (certificate {})", c.device_id, c.serial);
        let left = c.not_after - now;
        if left <= time::Duration::ZERO {
            out.push(finding("certificate_expiring", Severity::High, subject.clone(),
                format!("certificate expired on {}", c.not_after.date()),
                "the device cannot connect: re-provision it or issue a new certificate from its CSR"));
        } else if left < cert_warning {
            out.push(finding(
                "certificate_expiring",
                Severity::Medium,
                subject.clone(),
                format!("certificate expires in {} days", days(left)),
                "check that the agent renews (pki.renewal = true) and that it is online",
            ));
        }
        let age = now - c.not_before;
        if age > max_age {
            out.push(finding(
                "certificate_too_old",
                Severity::Medium,
                subject.clone(),
                format!(
                    "certificate is {} days old (maximum {} days)",
                    days(age),
                    max_age.as_secs() / 86_400
                ),
                "rotate it: the agent renews by CSR, or issue a new certificate",
            ));
        }
        let alg = c.key_algorithm.as_str();
        let weak = match alg.strip_prefix("rsa-").and_then(|b| b.parse::<u32>().ok()) {
            Some(bits) if bits < 3072 => Some(format!(
                "RSA key of {bits} bits (BSI TR-02102-1 asks for at least 3072)"
            )),
            Some(_) => None,
            None if matches!(alg, "ed25519" | "ecdsa-p256" | "ecdsa-p384") => None,
            None => Some(format!("key algorithm {alg} is not one Rampart recommends")),
        };
        if let Some(why) = weak {
            out.push(finding(
                "weak_key",
                Severity::High,
                subject.clone(),
                why,
                "replace the key: let the device renew with ECDSA P-256 or Ed25519",
            ));
        }
    }

    // Live sessions that should not be.
    if let Some(connected) = connected {
        let by_fp: HashMap<&str, &rampart_store::CertificateRecord> =
            certs.iter().map(|c| (c.fingerprint.as_str(), c)).collect();
        for i in connected {
            let cert = by_fp.get(&*i.cert_fingerprint);
            let problem = match cert.map(|c| c.status) {
                Some(CertificateStatus::Revoked) => Some("its certificate is revoked"),
                Some(CertificateStatus::Retired) => Some("its certificate is retired"),
                None => Some("its certificate is not registered"),
                Some(CertificateStatus::Valid) => match identities.get(&*i.id) {
                    Some(d) if d.status == DeviceStatus::Disabled => {
                        Some("the identity is disabled")
                    }
                    None => Some("the identity is not registered"),
                    _ => None,
                },
            };
            if let Some(p) = problem {
                out.push(finding("revoked_still_connected", Severity::Critical,
                    format!("{} (client id {})", i.id, i.client_id),
                    format!("a live session is open although {p}"),
                    "disconnect it: `rampart device revoke ID` or `rampart device disable ID` drops live sessions"));
            }
        }
    }

    // One device certificate, several client ids.
    let mut clients: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for u in store.certificate_usage().await? {
        clients
            .entry(u.fingerprint)
            .or_default()
            .insert(u.client_id);
    }
    for c in &certs {
        let Some(ids) = clients.get(&c.fingerprint) else {
            continue;
        };
        let kind = identities.get(&c.device_id).map(|d| d.kind);
        if ids.len() > 1 && kind == Some(IdentityKind::Device) {
            out.push(finding("shared_certificate", Severity::High,
                format!("{} (certificate {})", c.device_id, c.serial),
                format!("one device certificate was used with {} client ids: {}", ids.len(), ids.iter().cloned().collect::<Vec<_>>().join(", ")),
                "a device key was copied: revoke the certificate and re-provision the devices involved"));
        }
    }

    // Policies.
    let attachments = store.attachments().await?;
    for p in store.policies().await? {
        let Ok(doc) = PolicyDocument::parse(&p.document) else {
            continue;
        };
        let targets: Vec<&str> = attachments
            .iter()
            .filter(|(n, _)| *n == p.name)
            .map(|(_, t)| t.as_str())
            .collect();
        for f in lint(&doc) {
            let severity = match f.severity {
                LintSeverity::Error => Severity::High,
                LintSeverity::Warning => Severity::Medium,
                LintSeverity::Info => continue,
            };
            // A policy only a service uses may legitimately reach across devices.
            if f.message.contains("cross-device")
                && !targets.is_empty()
                && targets.iter().all(|t| t.starts_with("service:"))
            {
                continue;
            }
            if f.message.contains("any client id")
                && !targets.is_empty()
                && targets
                    .iter()
                    .all(|t| t.starts_with("service:") || *t == "claims" || t.starts_with("claim:"))
            {
                continue;
            }
            out.push(finding(
                "permissive_policy",
                severity,
                format!(
                    "policy {} {} (attached to {})",
                    p.name,
                    f.statement,
                    if targets.is_empty() {
                        "nothing".into()
                    } else {
                        targets.join(", ")
                    }
                ),
                f.message,
                &f.hint,
            ));
        }
    }

    out.sort_by(|a, b| {
        b.severity
            .cmp(&a.severity)
            .then(a.check.cmp(&b.check))
            .then(a.subject.cmp(&b.subject))
    });
    Ok(out)
}
