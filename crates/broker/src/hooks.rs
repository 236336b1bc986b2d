//! What the broker asks of the platform around it.
//!
//! The broker knows MQTT, TLS and routing; it does not know the registry or the database. At
//! CONNECT it asks [`Hooks::authenticate`] to turn the verified certificate into an
//! [`Identity`] (or refuse it); for each PUBLISH it asks [`Hooks::on_publish`] whether the
//! message is acceptable and, if the platform stores it, for a future that resolves when it is
//! durable — the PUBACK waits for it. Authorization is a separate hook (`rampart_policy`).

use std::net::SocketAddr;

use async_trait::async_trait;
use bytes::Bytes;
use futures::future::BoxFuture;
use rampart_mqtt::{Protocol, Publish, QoS};
use rampart_pki::CertInfo;
use rampart_policy::Identity;

use crate::refusal::Refusal;

/// The client certificate presented in the TLS handshake, already verified against the
/// trusted device CA by the TLS layer.
#[derive(Debug, Clone)]
pub struct PeerCertificate {
    pub der: Vec<u8>,
    pub info: CertInfo,
}

/// A CONNECT to authenticate.
#[derive(Debug)]
pub struct ConnectRequest<'a> {
    pub client_id: &'a str,
    pub certificate: &'a PeerCertificate,
    pub address: SocketAddr,
    pub protocol: Protocol,
}

/// Resolves once an accepted message is durable; an error withholds the acknowledgement.
pub type Durable = BoxFuture<'static, Result<(), String>>;

/// The platform side of the broker.
#[async_trait]
pub trait Hooks: Send + Sync + 'static {
    /// Maps a verified certificate to an identity, or refuses the connection (unknown or
    /// disabled device, unknown certificate, ...). Client id checks belong to the authorizer.
    async fn authenticate(&self, request: &ConnectRequest<'_>) -> Result<Identity, Refusal>;

    /// Inspects an authorized PUBLISH before it is routed. `Ok(Some(durable))` when the
    /// platform stores the message: acknowledgements wait for `durable`.
    async fn on_publish(
        &self,
        identity: &Identity,
        publish: &Publish,
    ) -> Result<Option<Durable>, Refusal>;

    /// Persists (`Some`) or clears (`None`) the retained message of `topic` before the PUBLISH
    /// that set it is acknowledged.
    async fn persist_retained(&self, topic: &str, message: Option<Vec<u8>>) -> Result<(), String>;

    /// A client connected or disconnected.
    async fn on_connection_change(&self, identity: &Identity, address: SocketAddr, connected: bool);
}

/// The other hub nodes, when the hub runs as one of several (rampart-cluster over NATS).
pub trait Peers: Send + Sync + 'static {
    /// A message this node routes — from a client, a will, or the hub itself — before it is
    /// delivered locally. Must not block: routing waits for it.
    fn forward(&self, topic: &str, payload: &Bytes, qos: QoS, retain: bool);
}
