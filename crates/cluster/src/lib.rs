//! The link between hub nodes.
//!
//! Several hub processes serve one fleet behind a TCP load balancer. They share the registry
//! and telemetry in PostgreSQL, and they reach each other through NATS — an existing
//! distributed engine, not a clustering protocol of our own. Two things travel:
//!
//! - **Routed messages.** Every message a node routes (a device's publish, a will, a message
//!   the hub itself publishes such as a rollout instruction) is forwarded on
//!   `{cluster}.msg`; every other node delivers it to its own subscribers. So a subscriber on
//!   node 2 receives what a device on node 1 publishes.
//! - **Notices.** When an operator changes the registry (disables, quarantines or revokes a
//!   device, changes policies or trusted CAs, steps a rollout), the node the CLI reached
//!   applies it and sends a notice on `{cluster}.notice`; every other node applies it too, so
//!   the change reaches whichever node holds the device's connection. A notice is an opaque
//!   byte string here; the hub defines its content.
//!
//! Connections use NATS' `no_echo`, so a node never receives its own messages; each frame
//! also carries the sending node's name, and frames from this node are dropped if they ever
//! come back. Forwarding never blocks routing: frames wait in a bounded queue for the NATS
//! writer, and what does not fit is dropped and counted.
//!
//! Persistent sessions live in JetStream while their device is away, so the device can come
//! back on any node (see [`sessions`]). Nodes say they are alive on `{cluster}.alive` every
//! second; one not heard for three seconds is taken to be gone, and the sessions it held
//! are parked by the others.
//!
//! Delivery between nodes is NATS core's: at most once, in order per sending node. What a
//! device published with QoS 1 is durable before its PUBACK because it is stored in the
//! shared database, not because of this link.

mod frame;
pub mod sessions;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt;
use tokio::sync::mpsc;

pub use frame::{FrameError, Routed};
pub use sessions::{
    Holder, SessionChange, SessionError, SessionRecord, Sessions, SubscriptionRecord, session_key,
};

/// Why the link could not be set up or used.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("cluster name {0:?}: {1}")]
    Name(String, &'static str),
    #[error("cannot connect to NATS at {url}: {source}")]
    Connect {
        url: String,
        #[source]
        source: async_nats::ConnectError,
    },
    #[error("cannot subscribe to {subject}: {source}")]
    Subscribe {
        subject: String,
        #[source]
        source: async_nats::SubscribeError,
    },
    #[error("cannot send a notice to the other nodes: {0}")]
    Notice(String),
    #[error(transparent)]
    Sessions(#[from] SessionError),
}

/// How often a node says it is alive on `{cluster}.alive`.
const HEARTBEAT: Duration = Duration::from_secs(1);
/// A node not heard for this long is taken to be gone (three heartbeats).
const SILENT_AFTER: Duration = Duration::from_secs(3);

/// Where and who this node is.
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    /// `nats://host:port` (or `tls://`), or several separated by commas.
    pub url: String,
    /// Subject prefix shared by the nodes of one fleet (one NATS may serve several).
    pub cluster: String,
    /// This node's name, unique in the cluster.
    pub node: String,
    /// Frames waiting for the NATS writer before new ones are dropped.
    pub queue: usize,
    /// Messages kept for one parked session (the oldest are dropped beyond it).
    pub session_queue: i64,
    /// How long a message waits for a parked session at most (the longest session expiry).
    pub session_max_age: Duration,
}

/// Checks a cluster or node name: one NATS subject token (letters, digits, `-`, `_`).
pub fn check_name(name: &str) -> Result<(), &'static str> {
    if name.is_empty() || name.len() > 64 {
        return Err("expected 1 to 64 characters");
    }
    if !name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        return Err("only letters, digits, - and _ are allowed");
    }
    Ok(())
}

/// What arrives from the other nodes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Incoming {
    /// A message another node routed: deliver it to local subscribers.
    Message(Routed),
    /// A registry-change notice: apply it to local sessions.
    Notice(Bytes),
    /// Another node accepted a connection for `client_id` at `at_ms` (Unix ms): a
    /// connection here for it that is older is to be closed.
    Connected { client_id: String, at_ms: u64 },
    /// Another node resumes the session of `client_id`: close its connection here, park
    /// the session, then answer through [`Cluster::answer_takeover`].
    Takeover {
        client_id: String,
        reply: Option<async_nats::Subject>,
    },
}

/// A connection accepted by one node, as told to the others.
#[derive(serde::Serialize, serde::Deserialize)]
struct ConnectedNotice {
    client_id: String,
    at_ms: u64,
}

/// What asking another node to give up a session found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Takeover {
    /// The node closed the connection and parked the session: read the record again.
    Released,
    /// The node holds no connection for it (it restarted since, or its park failed and the
    /// connection is gone): the record is claimed as it stands.
    NotHeld,
    /// The node is gone (no answer): the record is claimed as it stands.
    NodeGone,
}

/// Counters of the link.
#[derive(Debug, Default)]
pub struct ClusterStats {
    /// Messages sent to the other nodes.
    pub forwarded: AtomicU64,
    /// Messages not sent because the queue to NATS was full.
    pub dropped: AtomicU64,
    /// Messages received from the other nodes.
    pub received: AtomicU64,
    /// Frames received that could not be decoded (dropped).
    pub malformed: AtomicU64,
    pub notices_sent: AtomicU64,
    pub notices_received: AtomicU64,
}

/// This node's end of the link. Cheap to clone.
#[derive(Clone)]
pub struct Cluster {
    client: async_nats::Client,
    node: Arc<str>,
    msg_subject: Arc<str>,
    notice_subject: Arc<str>,
    out: mpsc::Sender<Bytes>,
    stats: Arc<ClusterStats>,
    /// Sequence number of the next routed message (see the frame).
    seq: Arc<AtomicU64>,
    takeover_prefix: Arc<str>,
    connected_subject: Arc<str>,
    sessions: Sessions,
    /// When each other node was last heard (heartbeats).
    alive: Arc<Mutex<HashMap<String, Instant>>>,
    started: Instant,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("node", &self.node)
            .field("subject", &self.msg_subject)
            .finish_non_exhaustive()
    }
}

impl Cluster {
    /// Connects to NATS and subscribes to the cluster's subjects. Returns the link and the
    /// stream of what the other nodes send.
    pub async fn connect(
        cfg: &ClusterConfig,
    ) -> Result<(Cluster, mpsc::Receiver<Incoming>), ClusterError> {
        check_name(&cfg.cluster).map_err(|e| ClusterError::Name(cfg.cluster.clone(), e))?;
        check_name(&cfg.node).map_err(|e| ClusterError::Name(cfg.node.clone(), e))?;
        let client = async_nats::ConnectOptions::new()
            .name(format!("rampart-hub {}", cfg.node))
            .no_echo()
            .connection_timeout(Duration::from_secs(5))
            // Keep reconnecting for as long as the hub runs; routing goes on locally.
            .max_reconnects(None)
            .connect(cfg.url.as_str())
            .await
            .map_err(|source| ClusterError::Connect {
                url: cfg.url.clone(),
                source,
            })?;
        let msg_subject: Arc<str> = format!("{}.msg", cfg.cluster).into();
        let notice_subject: Arc<str> = format!("{}.notice", cfg.cluster).into();
        let subscribe = |subject: Arc<str>| {
            let client = client.clone();
            async move {
                client
                    .subscribe(subject.to_string())
                    .await
                    .map_err(|source| ClusterError::Subscribe {
                        subject: subject.to_string(),
                        source,
                    })
            }
        };
        let mut msgs = subscribe(msg_subject.clone()).await?;
        let mut notices = subscribe(notice_subject.clone()).await?;
        let takeover_prefix: Arc<str> = format!("{}.takeover", cfg.cluster).into();
        let mut takeovers = subscribe(format!("{takeover_prefix}.{}", cfg.node).into()).await?;
        let alive_subject: Arc<str> = format!("{}.alive", cfg.cluster).into();
        let mut beats = subscribe(alive_subject.clone()).await?;
        let connected_subject: Arc<str> = format!("{}.connected", cfg.cluster).into();
        let mut connects = subscribe(connected_subject.clone()).await?;
        let sessions = Sessions::open(
            client.clone(),
            &cfg.cluster,
            cfg.session_queue,
            cfg.session_max_age,
        )
        .await?;
        // Both subscriptions registered at the server before anyone relies on this node.
        client
            .flush()
            .await
            .map_err(|e| ClusterError::Notice(e.to_string()))?;

        let stats = Arc::new(ClusterStats::default());
        let node: Arc<str> = cfg.node.as_str().into();
        let (in_tx, in_rx) = mpsc::channel(cfg.queue.max(1));
        {
            let (stats, node, in_tx) = (stats.clone(), node.clone(), in_tx.clone());
            tokio::spawn(async move {
                while let Some(m) = msgs.next().await {
                    match frame::decode(&m.payload) {
                        Ok(r) if *r.origin == *node => {}
                        Ok(r) => {
                            stats.received.fetch_add(1, Ordering::Relaxed);
                            if in_tx.send(Incoming::Message(r)).await.is_err() {
                                return;
                            }
                        }
                        Err(e) => {
                            let n = stats.malformed.fetch_add(1, Ordering::Relaxed);
                            if n.is_power_of_two() {
                                tracing::warn!(error = %e, dropped = n + 1, "malformed frame from the cluster dropped");
                            }
                        }
                    }
                }
            });
        }
        {
            let (stats, in_tx) = (stats.clone(), in_tx.clone());
            tokio::spawn(async move {
                while let Some(m) = notices.next().await {
                    stats.notices_received.fetch_add(1, Ordering::Relaxed);
                    if in_tx.send(Incoming::Notice(m.payload)).await.is_err() {
                        return;
                    }
                }
            });
        }
        let alive: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
        {
            let alive = alive.clone();
            tokio::spawn(async move {
                while let Some(m) = beats.next().await {
                    if let Ok(node) = std::str::from_utf8(&m.payload)
                        && let Ok(mut map) = alive.lock()
                    {
                        map.insert(node.to_owned(), Instant::now());
                    }
                }
            });
        }
        {
            let (client, name) = (client.clone(), Bytes::from(cfg.node.clone()));
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(HEARTBEAT);
                loop {
                    tick.tick().await;
                    if client
                        .publish(alive_subject.to_string(), name.clone())
                        .await
                        .is_err()
                    {
                        return; // the client is closed: the hub is stopping
                    }
                }
            });
        }
        {
            let in_tx = in_tx.clone();
            tokio::spawn(async move {
                while let Some(m) = connects.next().await {
                    let Ok(c) = serde_json::from_slice::<ConnectedNotice>(&m.payload) else {
                        tracing::warn!("unreadable connection notice from another node: ignored");
                        continue;
                    };
                    let n = Incoming::Connected {
                        client_id: c.client_id,
                        at_ms: c.at_ms,
                    };
                    if in_tx.send(n).await.is_err() {
                        return;
                    }
                }
            });
        }
        tokio::spawn(async move {
            while let Some(m) = takeovers.next().await {
                let Ok(client_id) = String::from_utf8(m.payload.to_vec()) else {
                    tracing::warn!("takeover request with a client id that is not UTF-8: ignored");
                    continue;
                };
                let t = Incoming::Takeover {
                    client_id,
                    reply: m.reply,
                };
                if in_tx.send(t).await.is_err() {
                    return;
                }
            }
        });
        let (out, mut out_rx) = mpsc::channel::<Bytes>(cfg.queue.max(1));
        {
            let (client, subject) = (client.clone(), msg_subject.clone());
            tokio::spawn(async move {
                while let Some(frame) = out_rx.recv().await {
                    // Fails only when the client is closed; NATS buffers while reconnecting.
                    if let Err(e) = client.publish(subject.to_string(), frame).await {
                        tracing::warn!(error = %e, "cluster link closed: messages are routed locally only");
                        return;
                    }
                }
            });
        }
        tracing::info!(url = %cfg.url, cluster = %cfg.cluster, node = %cfg.node, "joined the cluster");
        Ok((
            Cluster {
                client,
                node,
                msg_subject,
                notice_subject,
                out,
                stats,
                seq: Arc::new(AtomicU64::new(1)),
                takeover_prefix,
                connected_subject,
                sessions,
                alive,
                started: Instant::now(),
            },
            in_rx,
        ))
    }

    /// Sends a message this node routed to the other nodes. Never waits: when the queue to
    /// NATS is full the message is dropped for the other nodes and counted. Returns the
    /// message's sequence number, which with this node's name identifies it in the cluster.
    pub fn forward(&self, topic: &str, payload: &Bytes, qos: u8, retain: bool) -> u64 {
        let seq = self.seq.fetch_add(1, Ordering::Relaxed);
        let frame = frame::encode(&self.node, seq, topic, payload, qos, retain);
        match self.out.try_send(frame) {
            Ok(()) => {
                self.stats.forwarded.fetch_add(1, Ordering::Relaxed);
            }
            Err(_) => {
                let n = self.stats.dropped.fetch_add(1, Ordering::Relaxed);
                if n.is_power_of_two() {
                    tracing::warn!(
                        dropped = n + 1,
                        "the queue to the other nodes is full: messages dropped for them"
                    );
                }
            }
        }
        seq
    }

    /// Sends a registry-change notice to the other nodes and waits until NATS has it.
    pub async fn notify(&self, notice: Bytes) -> Result<(), ClusterError> {
        self.client
            .publish(self.notice_subject.to_string(), notice)
            .await
            .map_err(|e| ClusterError::Notice(e.to_string()))?;
        self.client
            .flush()
            .await
            .map_err(|e| ClusterError::Notice(e.to_string()))?;
        self.stats.notices_sent.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Tells the other nodes that a connection for `client_id` attached here at `at_ms`, so
    /// that one of theirs for the same client id, if older, is closed. Never waits.
    pub fn announce_connected(&self, client_id: &str, at_ms: u64) {
        let notice = ConnectedNotice {
            client_id: client_id.to_owned(),
            at_ms,
        };
        let Ok(body) = serde_json::to_vec(&notice) else {
            return;
        };
        let (client, subject) = (self.client.clone(), self.connected_subject.to_string());
        tokio::spawn(async move {
            if let Err(e) = client.publish(subject, body.into()).await {
                tracing::debug!(error = %e, "connection notice not sent");
            }
        });
    }

    /// A sequence number for a message this node does not forward (it still needs a name
    /// when it is queued for a parked session).
    pub fn next_seq(&self) -> u64 {
        self.seq.fetch_add(1, Ordering::Relaxed)
    }

    /// Asks `node` to close its connection for `client_id` and park the session, and waits
    /// for it (up to 10 s). A node that is not there answers at once ("no responders").
    pub async fn request_takeover(
        &self,
        node: &str,
        client_id: &str,
    ) -> Result<Takeover, ClusterError> {
        let subject = format!("{}.{node}", self.takeover_prefix);
        let request = self
            .client
            .request(subject, Bytes::copy_from_slice(client_id.as_bytes()));
        match tokio::time::timeout(Duration::from_secs(10), request).await {
            Ok(Ok(answer)) if &answer.payload[..] == b"parked" => Ok(Takeover::Released),
            Ok(Ok(_)) => Ok(Takeover::NotHeld),
            Ok(Err(e)) if e.kind() == async_nats::client::RequestErrorKind::NoResponders => {
                Ok(Takeover::NodeGone)
            }
            Ok(Err(e)) => Err(ClusterError::Notice(format!(
                "asking node {node} to release session {client_id:?}: {e}"
            ))),
            Err(_) => Err(ClusterError::Notice(format!(
                "node {node} did not release session {client_id:?} within 10 s"
            ))),
        }
    }

    /// Answers a takeover request: `released` if this node closed a connection for the
    /// session (and parked it), false if it held none.
    pub async fn answer_takeover(&self, reply: async_nats::Subject, released: bool) {
        let answer: &'static [u8] = if released { b"parked" } else { b"not held" };
        if let Err(e) = self.client.publish(reply, Bytes::from_static(answer)).await {
            tracing::warn!(error = %e, "could not answer a takeover request");
        }
    }

    /// Whether `node` has not been heard for three heartbeats, and is taken to be gone. A
    /// node never heard counts as silent once this node has listened that long.
    pub fn is_silent(&self, node: &str) -> bool {
        let last = self
            .alive
            .lock()
            .ok()
            .and_then(|m| m.get(node).copied())
            .unwrap_or(self.started);
        last.elapsed() > SILENT_AFTER
    }

    /// The persistent sessions of the cluster.
    pub fn sessions(&self) -> &Sessions {
        &self.sessions
    }

    /// This node's name.
    pub fn node(&self) -> &str {
        &self.node
    }

    /// The subject routed messages travel on.
    pub fn subject(&self) -> &str {
        &self.msg_subject
    }

    pub fn stats(&self) -> Arc<ClusterStats> {
        self.stats.clone()
    }

    /// Whether the NATS connection is up right now.
    pub fn connected(&self) -> bool {
        self.client.connection_state() == async_nats::connection::State::Connected
    }
}

#[cfg(test)]
mod tests {
    use super::check_name;

    #[test]
    fn names_are_single_subject_tokens() {
        for good in ["rampart", "node-1", "eu_west_2", "A9"] {
            assert_eq!(check_name(good), Ok(()), "{good}");
        }
        for bad in ["", "a.b", "a b", "*", ">", "nöde", &"x".repeat(65)] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
    }
}
