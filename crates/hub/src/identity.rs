//! Who is connecting: turning a verified client certificate into an identity.
//!
//! rustls has already checked the chain (to the device CA or a CA registered for
//! just-in-time registration), the validity period and the CRL. Here the registry decides:
//!
//! 1. A registered certificate (by SHA-256 fingerprint) names its identity — device, service
//!    or claim — which must be active, approved, and (for claims) within its limits; the
//!    certificate itself must be valid (not revoked, not retired after a renewal).
//! 2. An unknown certificate issued by a registered just-in-time CA registers its device on
//!    first connect, active or pending approval as that CA's template says.
//! 3. Anything else is refused with the specific reason.

use std::sync::Arc;

use parking_lot::RwLock;
use rampart_broker::{ConnectRequest, Refusal, RefusalReason};
use rampart_pki::validate_device_id;
use rampart_policy::{Identity, IdentityKind as PolicyKind, PolicyEngine};
use rampart_store::{
    AuditEntry, CertificateStatus, DeviceStatus, IdentityKind, NewCertificate, NewIdentity, Store,
    StoreError, TrustedCa,
};
use time::OffsetDateTime;

use crate::policies::facts_of;

/// A trusted CA with its DER certificate.
#[derive(Debug, Clone)]
struct JitCa {
    ca: TrustedCa,
    der: Vec<u8>,
}

/// Authenticates connections against the registry.
pub(crate) struct Authenticator {
    pub store: Arc<dyn Store>,
    pub engine: Arc<PolicyEngine>,
    /// Name of the quarantine policy (for reloading the policy set).
    pub quarantine_policy: String,
    jit: RwLock<Vec<JitCa>>,
    /// The other nodes, in a cluster: told when a registration here attaches a policy.
    peers: std::sync::OnceLock<rampart_cluster::Cluster>,
}

fn busy(e: StoreError) -> Refusal {
    Refusal::new(
        RefusalReason::ServerBusy,
        format!("registry unavailable: {e}"),
    )
}

fn policy_kind(k: IdentityKind) -> PolicyKind {
    match k {
        IdentityKind::Device => PolicyKind::Device,
        IdentityKind::Service => PolicyKind::Service,
        IdentityKind::Claim => PolicyKind::Claim,
    }
}

impl Authenticator {
    pub(crate) async fn new(
        store: Arc<dyn Store>,
        engine: Arc<PolicyEngine>,
        quarantine_policy: String,
    ) -> Result<Self, StoreError> {
        let a = Authenticator {
            store,
            engine,
            quarantine_policy,
            jit: RwLock::new(Vec::new()),
            peers: std::sync::OnceLock::new(),
        };
        a.reload_trusted_cas().await?;
        Ok(a)
    }

    /// Re-reads the CAs registered for just-in-time registration.
    pub(crate) async fn reload_trusted_cas(&self) -> Result<(), StoreError> {
        let mut list = Vec::new();
        for ca in self.store.trusted_cas().await? {
            match rampart_pki::pem_certs(&ca.certificate) {
                Ok(mut ders) if !ders.is_empty() => list.push(JitCa {
                    der: ders.remove(0),
                    ca,
                }),
                _ => {
                    tracing::error!(fingerprint = %ca.fingerprint, "stored trusted CA does not parse; ignored")
                }
            }
        }
        *self.jit.write() = list;
        Ok(())
    }

    pub(crate) async fn authenticate(&self, req: &ConnectRequest<'_>) -> Result<Identity, Refusal> {
        let info = &req.certificate.info;
        let cn = info.common_name.as_deref().ok_or_else(|| {
            Refusal::new(
                RefusalReason::UnknownDevice,
                "client certificate has no subject CN",
            )
        })?;
        let identity = |kind: IdentityKind| Identity {
            kind: policy_kind(kind),
            id: cn.into(),
            client_id: req.client_id.into(),
            cert_serial: info.serial.as_str().into(),
            cert_fingerprint: info.fingerprint.as_str().into(),
        };
        // The certificate and the identity its subject names, in one query.
        let Some((cert, device)) = self
            .store
            .certificate_and_identity(&info.fingerprint, cn)
            .await
            .map_err(busy)?
        else {
            return self.just_in_time(req, cn).await.map(identity);
        };
        if cert.device_id != cn {
            return Err(Refusal::new(
                RefusalReason::UnknownCertificate,
                format!(
                    "certificate {} is registered to {:?}, not {cn:?}",
                    info.serial, cert.device_id
                ),
            ));
        }
        match cert.status {
            CertificateStatus::Valid => {}
            CertificateStatus::Revoked => {
                return Err(Refusal::new(
                    RefusalReason::CertificateRevoked,
                    format!(
                        "certificate {} was revoked ({})",
                        info.serial,
                        cert.revocation_reason.as_deref().unwrap_or("unspecified")
                    ),
                ));
            }
            CertificateStatus::Retired => {
                return Err(Refusal::new(
                    RefusalReason::CertificateRetired,
                    format!(
                        "certificate {} was replaced by a renewal and retired",
                        info.serial
                    ),
                ));
            }
        }
        let device = device.ok_or_else(|| {
            Refusal::new(
                RefusalReason::UnknownDevice,
                format!("{cn:?} is not registered"),
            )
        })?;
        self.admit(&device)?;
        // Another node of a cluster may have registered the device (just in time, or by
        // provisioning) and set its facts there only: the registry row is the truth.
        let facts = facts_of(&device);
        if self.engine.facts(cn).as_ref() != Some(&facts) {
            self.engine.set_facts(cn, Some(facts));
        }
        if device.kind == IdentityKind::Claim {
            self.check_claim(cn).await?;
        }
        Ok(identity(device.kind))
    }

    /// Joins the other nodes of a cluster (set once, after the link is up).
    pub(crate) fn set_peers(&self, cluster: rampart_cluster::Cluster) {
        let _ = self.peers.set(cluster);
    }

    /// Tells the other nodes of a registry change made here.
    async fn tell_peers(&self, req: crate::control::Request) {
        let Some(cluster) = self.peers.get() else {
            return;
        };
        let sent = match serde_json::to_vec(&req) {
            Ok(notice) => cluster
                .notify(notice.into())
                .await
                .map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        if let Err(e) = sent {
            tracing::error!(request = ?req, error = %e,
                "the other nodes were not told of a registration here; they apply it when they restart, or at the next policy change");
        }
    }

    /// Refuses identities that may not connect now.
    fn admit(&self, d: &rampart_store::Device) -> Result<(), Refusal> {
        if d.status == DeviceStatus::Disabled {
            return Err(Refusal::new(
                RefusalReason::DeviceDisabled,
                format!("{} {:?} is disabled", d.kind.as_str(), d.id),
            ));
        }
        if d.pending {
            return Err(Refusal::new(
                RefusalReason::DevicePending,
                format!(
                    "device {:?} is registered and waits for `rampart device approve {}`",
                    d.id, d.id
                ),
            ));
        }
        Ok(())
    }

    async fn check_claim(&self, name: &str) -> Result<(), Refusal> {
        let now = OffsetDateTime::now_utc();
        match self.store.claim(name).await.map_err(busy)? {
            Some(c) if c.not_after.is_some_and(|t| t <= now) => Err(Refusal::new(
                RefusalReason::ClaimExhausted,
                format!("claim {name:?}: its lifetime has ended"),
            )),
            Some(c) if c.max_uses.is_some_and(|m| c.uses >= m) => Err(Refusal::new(
                RefusalReason::ClaimExhausted,
                format!("claim {name:?}: all {} uses are spent", c.uses),
            )),
            _ => Ok(()),
        }
    }

    /// Registers an unknown device whose certificate a just-in-time CA issued.
    async fn just_in_time(
        &self,
        req: &ConnectRequest<'_>,
        cn: &str,
    ) -> Result<IdentityKind, Refusal> {
        let info = &req.certificate.info;
        let issuer = self
            .jit
            .read()
            .iter()
            .find(|j| rampart_pki::issued_by(&req.certificate.der, &j.der))
            .cloned();
        let Some(jit) = issuer else {
            // Signed by the device CA but never recorded.
            if self.store.device(cn).await.map_err(busy)?.is_some() {
                return Err(Refusal::new(
                    RefusalReason::UnknownCertificate,
                    format!(
                        "certificate {} (CN {cn:?}) is signed by the device CA but not registered for it",
                        info.serial
                    ),
                ));
            }
            return Err(Refusal::new(
                RefusalReason::UnknownDevice,
                format!("device {cn:?} is not registered"),
            ));
        };
        validate_device_id(cn).map_err(|why| {
            Refusal::new(
                RefusalReason::UnknownDevice,
                format!("CN {cn:?} is not a usable device id: {why}"),
            )
        })?;
        if let Some(existing) = self.store.device(cn).await.map_err(busy)? {
            // A known device presenting a new certificate from a vendor CA: an operator decides.
            self.admit(&existing)?;
            return Err(Refusal::new(
                RefusalReason::UnknownCertificate,
                format!(
                    "device {cn:?} exists; certificate {} from {} is not registered for it",
                    info.serial, jit.ca.subject
                ),
            ));
        }
        let mut attributes = std::collections::BTreeMap::new();
        for (attr, field) in &jit.ca.template.attributes {
            if let Some(v) = info.subject_fields.get(field) {
                attributes.insert(attr.clone(), v.clone());
            }
        }
        let new = NewIdentity {
            id: cn.to_owned(),
            kind: IdentityKind::Device,
            group: jit.ca.template.group.clone(),
            attributes,
            pending: !jit.ca.auto_activate,
            registered_via: format!("jit:{}", jit.ca.fingerprint),
            certificate: NewCertificate {
                serial: info.serial.clone(),
                fingerprint: info.fingerprint.clone(),
                not_before: info.not_before,
                not_after: info.not_after,
                key_algorithm: info.key_algorithm.clone(),
                issuer: jit.ca.fingerprint.clone(),
            },
        };
        match self.store.add_identity(&new).await {
            Ok(()) => {}
            // Two first connects at once: the other one registered it.
            Err(StoreError::AlreadyExists { .. }) => {
                return Err(Refusal::new(
                    RefusalReason::ServerBusy,
                    format!("device {cn:?} is being registered; retry"),
                ));
            }
            Err(e) => return Err(busy(e)),
        }
        if let Some(policy) = &jit.ca.template.policy
            && let Err(e) = self
                .store
                .attach_policy(policy, &format!("device:{cn}"))
                .await
        {
            tracing::error!(device = %cn, %policy, error = %e, "template policy could not be attached");
        }
        let _ = self
            .store
            .audit(&AuditEntry {
                at: OffsetDateTime::now_utc(),
                actor: "hub".into(),
                action: "device.jit_register".into(),
                subject: cn.to_owned(),
                detail: format!(
                    "certificate {} from {} ({}); {}",
                    info.serial,
                    jit.ca.subject,
                    jit.ca.fingerprint,
                    if new.pending {
                        "pending approval"
                    } else {
                        "active"
                    }
                ),
            })
            .await;
        if let Ok(Some(d)) = self.store.device(cn).await {
            self.engine.set_facts(cn, Some(facts_of(&d)));
        }
        tracing::info!(device = %cn, ca = %jit.ca.subject, pending = new.pending, "device registered just in time");
        if new.pending {
            return Err(Refusal::new(
                RefusalReason::DevicePending,
                format!(
                    "device {cn:?} registered from {}; it waits for `rampart device approve {cn}`",
                    jit.ca.subject
                ),
            ));
        }
        if jit.ca.template.policy.is_some() {
            // The template attached a policy: the device's rights include it from now on,
            // on this node and on the others (which may see its next connection).
            self.tell_peers(crate::control::Request::PoliciesChanged)
                .await;
            match crate::policies::load_set(&*self.store, &self.quarantine_policy).await {
                Ok(set) => self.engine.replace_policies(set),
                Err(e) => {
                    tracing::error!(error = %e, "could not reload policies after a just-in-time registration")
                }
            }
        }
        Ok(IdentityKind::Device)
    }
}
