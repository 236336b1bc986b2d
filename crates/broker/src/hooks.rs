//! What the broker asks of the platform around it.
//!
//! The broker knows MQTT, TLS and routing; it does not know the registry or the database. At
//! CONNECT it asks [`Hooks::authenticate`] to turn the verified certificate into an
//! [`Identity`] (or refuse it); for each PUBLISH it asks [`Hooks::on_publish`] whether the
//! message is acceptable and, if the platform stores it, for a future that resolves when it is
//! durable — the PUBACK waits for it. Authorization is a separate hook (`rampart_policy`).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures::future::BoxFuture;
use rampart_mqtt::{Protocol, Publish, QoS, SubscriptionOptions};
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

/// A message's name in a cluster: the node that first routed it and its sequence number
/// there. Nodes that each queue the message for a parked session use it so that it is queued
/// once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    pub node: Arc<str>,
    pub seq: u64,
}

/// A persistent session as it moves between nodes: what it is and what it subscribed to.
#[derive(Debug, Clone)]
pub struct SessionImage {
    pub client_id: Arc<str>,
    pub identity: Identity,
    pub protocol: Protocol,
    /// Session Expiry Interval after the connection closes.
    pub expiry: Duration,
    pub subscriptions: Vec<(String, SubscriptionOptions)>,
}

/// A message waiting for a session, at the QoS and RETAIN flag it is to be delivered with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueuedMessage {
    pub topic: String,
    pub payload: Bytes,
    pub qos: QoS,
    pub retain: bool,
}

/// The other hub nodes, when the hub runs as one of several (rampart-cluster over NATS).
///
/// Besides forwarding messages, the peers keep the cluster's persistent sessions: a session
/// whose connection ends is *parked* with them (subscriptions and queued messages), and any
/// node may *resume* it when the device comes back. While a session is parked, every node
/// keeps a parked copy of it in its subscription index, and messages that match it are
/// handed to [`Peers::enqueue`] instead of a local queue.
#[async_trait]
pub trait Peers: Send + Sync + 'static {
    /// A message this node routes — from a client, a will, or the hub itself — before it is
    /// delivered locally. Must not block: routing waits for it. Returns the message's name.
    fn forward(&self, topic: &str, payload: &Bytes, qos: QoS, retain: bool) -> Origin;

    /// A connection for `client_id` attached here at `attached_ms` (Unix ms): a connection
    /// another node holds for the same client id, opened before, is to be closed (MQTT's
    /// session takeover, across nodes). Must not block.
    fn connected(&self, client_id: &str, attached_ms: u64);

    /// A persistent session is held by this node now, or its subscriptions changed. Must not
    /// block; the peers record it in order with [`Peers::park`].
    fn session_attached(&self, image: SessionImage);

    /// Parks a persistent session whose connection ended here, with what was queued for it
    /// (in order). On `Ok` the session lives in the cluster; on `Err` it stays on this node.
    async fn park(&self, image: SessionImage, queued: Vec<QueuedMessage>) -> Result<(), String>;

    /// Claims the cluster's session of `client_id` for this node, if `identity` owns one:
    /// the node holding it closes its connection first. Returns it with its queued messages.
    async fn resume(
        &self,
        client_id: &str,
        identity: &Identity,
    ) -> Result<Option<(SessionImage, Vec<QueuedMessage>)>, String>;

    /// Ends the cluster's session of `client_id` (a clean start, or a session without
    /// expiry that closed); a connection another node holds for it is closed.
    async fn discard(&self, client_id: &str);

    /// Queues `message` for the parked session of `client_id`, and returns once it is
    /// durable. `origin` names a routed message (`None`: a message only this node has).
    async fn enqueue(
        &self,
        client_id: &str,
        origin: Option<&Origin>,
        message: QueuedMessage,
    ) -> Result<(), String>;
}
