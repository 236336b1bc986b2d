//! Requests devices send to the hub itself, on `$rampart/...` topics, and their answers.
//!
//! | request topic | who | answer topic |
//! |---|---|---|
//! | `$rampart/provision/{client id}/request` | claim identity | `$rampart/provision/{client id}/response` |
//! | `$rampart/devices/{id}/certs/renew` | device | `$rampart/devices/{id}/certs/renew/response` |
//! | `$rampart/devices/{id}/token/request` | device | `$rampart/devices/{id}/token/response` |
//!
//! The policy decides who may publish a request (claims only reach their own provisioning
//! topics; devices only their own `$rampart/devices/{id}/#`). Each answer carries the
//! request's `request_id`. A private key never travels: requests carry CSRs, answers carry
//! certificates.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use rampart_broker::Broker;
use rampart_mqtt::{Publish, QoS};
use rampart_pki::token::TokenKey;
use rampart_pki::{Authority, CheckedCsr, Validity};
use rampart_policy::{Identity, IdentityKind, PolicyEngine};
use rampart_store::{AuditEntry, IdentityKind as StoreKind, NewCertificate, NewIdentity, Store};
use serde::{Deserialize, Serialize};
use serde_json::json;
use time::OffsetDateTime;

use crate::policies::facts_of;
use crate::provision_hook::{self, Hook, HookRequest};

/// Prefix of all server topics.
pub const SERVER_TOPIC_ROOT: &str = "$rampart/";

/// Settings the handlers need.
#[derive(Debug, Clone)]
pub(crate) struct ServerTopicConfig {
    pub cert_lifetime: Duration,
    pub renewal: bool,
    pub rotation_overlap: Duration,
    pub token_lifetime: Duration,
    pub allowlist: bool,
    pub hook: Option<Hook>,
    pub hook_timeout: Duration,
    /// PEM of what devices trust to authenticate the hub.
    pub ca_chain_pem: String,
}

pub(crate) struct ServerTopics {
    pub store: Arc<dyn Store>,
    pub engine: Arc<PolicyEngine>,
    pub ca: Arc<Authority>,
    pub token_key: Arc<TokenKey>,
    pub config: ServerTopicConfig,
    pub broker: OnceLock<Broker>,
}

#[derive(Debug, Deserialize)]
struct ProvisionRequest {
    #[serde(default)]
    request_id: String,
    serial_number: String,
    csr: String,
    #[serde(default)]
    attributes: std::collections::BTreeMap<String, String>,
}

#[derive(Debug, Deserialize)]
struct RenewRequest {
    #[serde(default)]
    request_id: String,
    csr: String,
}

#[derive(Debug, Deserialize)]
struct TokenRequest {
    #[serde(default)]
    request_id: String,
}

#[derive(Debug, Serialize)]
struct Rejected<'a> {
    request_id: &'a str,
    status: &'static str,
    reason: String,
}

fn now_unix() -> u64 {
    u64::try_from(OffsetDateTime::now_utc().unix_timestamp()).unwrap_or(0)
}

impl ServerTopics {
    /// Handles a request in the background. Returns false if `topic` is not a request topic.
    pub(crate) fn dispatch(self: &Arc<Self>, identity: &Identity, publish: &Publish) -> bool {
        let topic = &*publish.topic;
        let Some(rest) = topic.strip_prefix(SERVER_TOPIC_ROOT) else {
            return false;
        };
        let parts: Vec<&str> = rest.split('/').collect();
        let (kind, response) = match parts.as_slice() {
            ["provision", client, "request"] if *client == &*identity.client_id => (
                Request::Provision,
                format!("{SERVER_TOPIC_ROOT}provision/{client}/response"),
            ),
            ["devices", id, "certs", "renew"] if *id == &*identity.id => {
                (Request::Renew, format!("{topic}/response"))
            }
            ["devices", id, "token", "request"] if *id == &*identity.id => (
                Request::Token,
                format!("{SERVER_TOPIC_ROOT}devices/{id}/token/response"),
            ),
            _ => return false,
        };
        let this = self.clone();
        let identity = identity.clone();
        let payload = publish.payload.clone();
        tokio::spawn(async move {
            let answer = match kind {
                Request::Provision => this.provision(&identity, &payload).await,
                Request::Renew => this.renew(&identity, &payload).await,
                Request::Token => this.token(&identity, &payload).await,
            };
            let body = match answer {
                Ok(v) => v,
                Err((request_id, reason)) => {
                    tracing::warn!(identity = %identity.id, request = kind.name(), %reason, "request rejected");
                    serde_json::to_value(Rejected {
                        request_id: &request_id,
                        status: "rejected",
                        reason,
                    })
                    .unwrap_or_default()
                }
            };
            if let Some(b) = this.broker.get() {
                b.publish(
                    &response,
                    Bytes::from(body.to_string()),
                    QoS::AtLeastOnce,
                    false,
                )
                .await;
            }
        });
        true
    }

    async fn audit(&self, action: &str, subject: &str, detail: String) {
        let _ = self
            .store
            .audit(&AuditEntry {
                at: OffsetDateTime::now_utc(),
                actor: "hub".into(),
                action: action.into(),
                subject: subject.into(),
                detail,
            })
            .await;
    }

    fn new_certificate(&self, cert: &rampart_pki::IssuedCert) -> NewCertificate {
        NewCertificate {
            serial: cert.info.serial.clone(),
            fingerprint: cert.info.fingerprint.clone(),
            not_before: cert.info.not_before,
            not_after: cert.info.not_after,
            key_algorithm: cert.info.key_algorithm.clone(),
            issuer: self.ca.info().fingerprint.clone(),
        }
    }

    fn validity(&self) -> Validity {
        Validity::for_lifetime(self.config.cert_lifetime)
    }

    /// Fleet provisioning: a claim identity trades a CSR for a device certificate.
    async fn provision(
        &self,
        identity: &Identity,
        payload: &[u8],
    ) -> Result<serde_json::Value, (String, String)> {
        let req: ProvisionRequest = serde_json::from_slice(payload)
            .map_err(|e| (String::new(), format!("not a provisioning request: {e}")))?;
        let rid = req.request_id.clone();
        let fail = |reason: String| (rid.clone(), reason);
        if identity.kind != IdentityKind::Claim {
            return Err(fail("only claim certificates may provision".into()));
        }
        // The CSR's subject is the device's guess; the hub decides the id, so only the key
        // is used. Its self-signature proves the device holds the key.
        let csr = CheckedCsr::from_pem(&req.csr)
            .map_err(|e| fail(e.to_string()))?
            .without_subject();
        let serial = req.serial_number.trim().to_owned();
        if serial.is_empty() {
            return Err(fail("serial_number is empty".into()));
        }
        // Allow-list first, then the hook.
        let mut decision = None;
        if self.config.allowlist
            && let Some(entry) = self
                .store
                .take_allowed_serial(&serial, &identity.id)
                .await
                .map_err(|e| fail(e.to_string()))?
        {
            decision = Some((
                entry.device_id.unwrap_or_else(|| serial.clone()),
                entry.group,
                entry.attributes,
            ));
        }
        if decision.is_none()
            && let Some(hook) = &self.config.hook
        {
            let d = provision_hook::ask(
                hook,
                &HookRequest {
                    serial_number: serial.clone(),
                    claim: identity.id.to_string(),
                    client_id: identity.client_id.to_string(),
                    attributes: req.attributes.clone(),
                },
                self.config.hook_timeout,
            )
            .await
            .map_err(fail)?;
            if !d.allow {
                self.audit(
                    "device.provision_denied",
                    &serial,
                    format!(
                        "claim {}: hook: {}",
                        identity.id,
                        d.reason.clone().unwrap_or_default()
                    ),
                )
                .await;
                return Err(fail(format!(
                    "serial number {serial:?} is not allowed to provision: {}",
                    d.reason
                        .unwrap_or_else(|| "the provisioning hook refused it".into())
                )));
            }
            decision = Some((
                d.device_id.unwrap_or_else(|| serial.clone()),
                d.group,
                d.attributes,
            ));
        }
        let Some((device_id, group, attributes)) = decision else {
            self.audit(
                "device.provision_denied",
                &serial,
                format!("claim {}: not on the allow-list", identity.id),
            )
            .await;
            return Err(fail(format!(
                "serial number {serial:?} is not allowed to provision (not on the allow-list{})",
                if self.config.hook.is_some() {
                    ", and the hook refused it"
                } else {
                    ""
                }
            )));
        };
        rampart_pki::validate_device_id(&device_id)
            .map_err(|why| fail(format!("device id {device_id:?}: {why}")))?;
        if self
            .store
            .device(&device_id)
            .await
            .map_err(|e| fail(e.to_string()))?
            .is_some()
        {
            return Err(fail(format!("device {device_id:?} is already registered")));
        }
        let claim = self
            .store
            .consume_claim(&identity.id, OffsetDateTime::now_utc())
            .await
            .map_err(|e| fail(e.to_string()))?;
        let cert = self
            .ca
            .issue_device_from_csr(&device_id, &csr, self.validity())
            .map_err(|e| fail(e.to_string()))?;
        let new = NewIdentity {
            id: device_id.clone(),
            kind: StoreKind::Device,
            group,
            attributes,
            pending: false,
            registered_via: format!("claim:{}", identity.id),
            certificate: self.new_certificate(&cert),
        };
        self.store
            .add_identity(&new)
            .await
            .map_err(|e| fail(e.to_string()))?;
        if let Ok(Some(d)) = self.store.device(&device_id).await {
            self.engine.set_facts(&device_id, Some(facts_of(&d)));
        }
        // What arrived is kept for the audit trail: serial, claim, and the CSR (public data).
        self.audit(
            "device.provision",
            &device_id,
            json!({
                "claim": &*identity.id,
                "claim_uses": claim.uses,
                "serial_number": serial,
                "certificate_serial": cert.info.serial,
                "request": String::from_utf8_lossy(payload),
            })
            .to_string(),
        )
        .await;
        tracing::info!(device = %device_id, claim = %identity.id, %serial, "device provisioned");
        Ok(json!({
            "request_id": rid,
            "status": "accepted",
            "device_id": device_id,
            "certificate": cert.pem,
            "ca_chain": self.config.ca_chain_pem,
        }))
    }

    /// Certificate renewal: a device trades a CSR for a new key for a new certificate; its
    /// current certificate stays valid for the overlap window, then retires.
    async fn renew(
        &self,
        identity: &Identity,
        payload: &[u8],
    ) -> Result<serde_json::Value, (String, String)> {
        let req: RenewRequest = serde_json::from_slice(payload)
            .map_err(|e| (String::new(), format!("not a renewal request: {e}")))?;
        let rid = req.request_id.clone();
        let fail = |reason: String| (rid.clone(), reason);
        if identity.kind != IdentityKind::Device {
            return Err(fail("only devices renew certificates this way".into()));
        }
        if !self.config.renewal {
            return Err(fail(
                "certificate renewal is disabled on this hub (pki.renewal = false)".into(),
            ));
        }
        let csr = CheckedCsr::from_pem(&req.csr).map_err(|e| fail(e.to_string()))?;
        let cert = self
            .ca
            .issue_device_from_csr(&identity.id, &csr, self.validity())
            .map_err(|e| fail(e.to_string()))?;
        if cert.info.fingerprint == *identity.cert_fingerprint {
            return Err(fail(
                "the CSR carries the current key; renew with a new key".into(),
            ));
        }
        self.store
            .add_certificate(&identity.id, &self.new_certificate(&cert))
            .await
            .map_err(|e| fail(e.to_string()))?;
        let retire_at = OffsetDateTime::now_utc() + self.config.rotation_overlap;
        self.store
            .schedule_retirement(&identity.cert_serial, retire_at)
            .await
            .map_err(|e| fail(e.to_string()))?;
        self.audit(
            "certificate.renew",
            &identity.id,
            format!(
                "new {} replaces {} (retires {retire_at})",
                cert.info.serial, identity.cert_serial
            ),
        )
        .await;
        tracing::info!(device = %identity.id, new = %cert.info.serial, old = %identity.cert_serial, "certificate renewed");
        Ok(json!({
            "request_id": rid,
            "status": "accepted",
            "certificate": cert.pem,
            "ca_chain": self.config.ca_chain_pem,
            "not_after": cert.info.not_after.unix_timestamp(),
        }))
    }

    /// A session token bound to the device and the certificate of this connection.
    async fn token(
        &self,
        identity: &Identity,
        payload: &[u8],
    ) -> Result<serde_json::Value, (String, String)> {
        let req: TokenRequest = serde_json::from_slice(payload).unwrap_or(TokenRequest {
            request_id: String::new(),
        });
        let rid = req.request_id;
        if identity.kind != IdentityKind::Device {
            return Err((rid, "only devices get session tokens".into()));
        }
        let fp = hex_to_bytes(&identity.cert_fingerprint)
            .ok_or_else(|| (rid.clone(), "bad fingerprint".to_string()))?;
        let (token, claims) = self
            .token_key
            .issue_for_digest(
                &identity.id,
                &fp,
                now_unix(),
                self.config.token_lifetime.as_secs(),
            )
            .map_err(|e| (rid.clone(), e.to_string()))?;
        Ok(json!({
            "request_id": rid,
            "status": "accepted",
            "token": token,
            "expires_at": claims.exp,
        }))
    }
}

fn hex_to_bytes(h: &str) -> Option<Vec<u8>> {
    (0..h.len())
        .step_by(2)
        .map(|i| h.get(i..i + 2).and_then(|b| u8::from_str_radix(b, 16).ok()))
        .collect()
}

#[derive(Debug, Clone, Copy)]
enum Request {
    Provision,
    Renew,
    Token,
}

impl Request {
    fn name(self) -> &'static str {
        match self {
            Request::Provision => "provision",
            Request::Renew => "renew",
            Request::Token => "token",
        }
    }
}
