//! The running hub's mutable state and what it does when the registry changes under it:
//! re-reading facts and policies, rebuilding the TLS configuration (trusted CAs, CRL),
//! dropping sessions that lost their right to exist, running the audit with live sessions.
//! Reached from the CLI through the control socket and from the hub's own timers.

use std::collections::HashSet;
use std::sync::Arc;

use parking_lot::RwLock;
use rampart_broker::Broker;
use rampart_policy::PolicyEngine;
use rampart_store::Store;
use rustls::ServerConfig;

use crate::config::HubConfig;
use crate::control::{ClientReport, Request, Response};
use crate::datadir::DataDir;
use crate::error::HubError;
use crate::identity::Authenticator;
use crate::metrics::MetricsSnapshot;
use crate::policies::{facts_of, load_set};

pub(crate) struct Live {
    pub dir: DataDir,
    pub cfg: HubConfig,
    pub broker: Broker,
    pub store: Arc<dyn Store>,
    pub engine: Arc<PolicyEngine>,
    pub auth: Arc<Authenticator>,
    pub tls: Arc<RwLock<Arc<ServerConfig>>>,
    pub snapshot: Arc<dyn Fn() -> MetricsSnapshot + Send + Sync>,
    pub rollouts: Arc<crate::rollouts::Engine>,
    /// The other hub nodes, when this hub is one of several.
    pub cluster: Option<rampart_cluster::Cluster>,
}

impl Live {
    /// A request from the operator CLI on this node: applied here, and a change is passed on
    /// to the other nodes so it reaches whichever node holds the device's connection.
    pub(crate) async fn handle_from_operator(&self, req: Request) -> Response {
        let mut response = self.handle(req.clone()).await;
        if let Some(cluster) = &self.cluster
            && response.ok
            && req.is_change()
        {
            let notice = match serde_json::to_vec(&req) {
                Ok(v) => v,
                Err(e) => return Response::error(e),
            };
            if let Err(e) = cluster.notify(notice.into()).await {
                tracing::error!(error = %e, request = ?req, "change applied on this node only: the other nodes were not told");
                response.ok = false;
                response.error = Some(format!(
                    "applied on this node, but the other nodes could not be told ({e}); they apply it when they restart — check NATS and run the command again"
                ));
            }
        }
        response
    }

    /// A change another node applied (its operator's request): applied here too. The CRL
    /// file is this node's own, so it is signed again from the shared registry first.
    pub(crate) async fn handle_from_peer(&self, req: Request) {
        if !req.is_change() {
            tracing::warn!(request = ?req, "a peer sent a question as a notice: ignored");
            return;
        }
        if matches!(
            req,
            Request::CertificatesRevoked { .. } | Request::TrustChanged
        ) && let Err(e) = crate::pki_state::publish_crl(&self.dir, &self.cfg, &*self.store).await
        {
            tracing::error!(error = %e, "could not re-sign the CRL after a peer's change");
        }
        let r = self.handle(req.clone()).await;
        if r.ok {
            tracing::info!(request = ?req, disconnected = r.disconnected.unwrap_or(0), "applied a change from another node");
        } else {
            tracing::error!(request = ?req, error = ?r.error, "could not apply a change from another node");
        }
    }

    pub(crate) async fn handle(&self, req: Request) -> Response {
        let result = match req {
            Request::DeviceChanged { id } => self.device_changed(&id).await,
            Request::PoliciesChanged => self.policies_changed().await.map(|()| Response::ok()),
            Request::TrustChanged => self.trust_changed().await.map(|()| Response::ok()),
            Request::CertificatesRevoked { serials } => self.revoked(&serials).await,
            Request::Audit => self.audit().await,
            Request::Status => Ok(self.status()),
            Request::RolloutChanged { id } => {
                self.rollouts.evaluate(&id).await.map(|()| Response::ok())
            }
        };
        result.unwrap_or_else(Response::error)
    }

    /// Applies an identity's registry entry to live sessions: new facts (group, attributes,
    /// quarantine) take effect at the next packet; a disabled, pending or removed identity
    /// loses its sessions at once.
    pub(crate) async fn device_changed(&self, id: &str) -> Result<Response, HubError> {
        let device = self.store.device(id).await?;
        self.engine.set_facts(id, device.as_ref().map(facts_of));
        let cut_off = match &device {
            None => Some("identity removed"),
            Some(d) if d.status == rampart_store::DeviceStatus::Disabled => {
                Some("device disabled by the operator")
            }
            Some(d) if d.pending => Some("device pending approval"),
            _ => None,
        };
        let n = match cut_off {
            Some(why) => {
                let n = self.broker.disconnect_identity(id, why);
                tracing::info!(device = %id, connections = n, why, "device disabled: live sessions closed");
                n
            }
            None => 0,
        };
        Ok(Response {
            ok: true,
            disconnected: Some(n),
            ..Default::default()
        })
    }

    pub(crate) async fn policies_changed(&self) -> Result<(), HubError> {
        self.engine
            .replace_policies(load_set(&*self.store, &self.cfg.policy.quarantine).await?);
        tracing::info!("policies reloaded; live sessions follow them from their next packet");
        Ok(())
    }

    /// Rebuilds the TLS configuration of the MQTT listener and the device API.
    pub(crate) async fn trust_changed(&self) -> Result<(), HubError> {
        self.auth.reload_trusted_cas().await?;
        let tls = crate::pki_state::tls_config(&self.dir, &self.cfg, &*self.store).await?;
        *self.tls.write() = tls.clone();
        self.broker.set_tls_config(tls);
        tracing::info!("TLS configuration rebuilt (trusted CAs and CRL)");
        Ok(())
    }

    async fn revoked(&self, serials: &[String]) -> Result<Response, HubError> {
        self.trust_changed().await?;
        let set: HashSet<&str> = serials.iter().map(String::as_str).collect();
        let n = self
            .broker
            .disconnect_where(|i| set.contains(&*i.cert_serial), "certificate revoked");
        tracing::info!(
            certificates = serials.len(),
            connections = n,
            "certificates revoked: live sessions closed"
        );
        Ok(Response {
            ok: true,
            disconnected: Some(n),
            ..Default::default()
        })
    }

    pub(crate) async fn audit(&self) -> Result<Response, HubError> {
        let connected = self.broker.connected_identities();
        let findings =
            crate::audit::run(&self.dir, &self.cfg, &*self.store, Some(&connected)).await?;
        Ok(Response {
            ok: true,
            findings: Some(findings),
            ..Default::default()
        })
    }

    fn status(&self) -> Response {
        Response {
            ok: true,
            metrics: Some((self.snapshot)()),
            clients: Some(
                self.broker
                    .clients()
                    .into_iter()
                    .map(|c| ClientReport {
                        client_id: c.client_id,
                        identity: c.identity,
                        protocol: c.protocol.to_string(),
                        connected: c.connected,
                        subscriptions: c.subscriptions,
                        queued: c.queued,
                        inflight: c.inflight,
                    })
                    .collect(),
            ),
            ..Default::default()
        }
    }
}
