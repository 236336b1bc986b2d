//! The hub as one node of several: what it hands to the other nodes and what it does with
//! what they send (rampart-cluster carries both over NATS), and the persistent sessions the
//! nodes share in JetStream (the broker parks and resumes them through [`Forward`]).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use rampart_broker::{Broker, Origin, QueuedMessage, SessionImage};
use rampart_cluster::{
    Cluster, Holder, Incoming, Routed, SessionChange, SessionError, SessionRecord, Sessions,
    SubscriptionRecord, Takeover, session_key,
};
use rampart_mqtt::{Protocol, QoS, RetainHandling, SubscriptionOptions};
use rampart_policy::{Identity, IdentityKind};
use tokio::sync::{mpsc, oneshot};

use crate::control::Request;
use crate::live::Live;

/// A write to the session bucket, done in order by one task.
enum Write {
    Put(SessionRecord),
    Park(
        SessionRecord,
        Vec<QueuedMessage>,
        oneshot::Sender<Result<(), String>>,
    ),
}

/// This node's peers: forwards what the broker routes and keeps its persistent sessions in
/// the cluster.
pub(crate) struct Forward {
    cluster: Cluster,
    node: Arc<str>,
    writes: mpsc::UnboundedSender<Write>,
    /// Bounds the copies of other nodes' messages being queued for parked sessions.
    relayed: Arc<tokio::sync::Semaphore>,
}

/// Copies of other nodes' messages queued for parked sessions at once, at most.
const RELAYED_IN_FLIGHT: usize = 4096;

impl Forward {
    /// The peers of this node; starts the task that writes session records in order.
    pub(crate) fn new(cluster: Cluster) -> Forward {
        let (writes, rx) = mpsc::unbounded_channel();
        tokio::spawn(write_records(cluster.clone(), rx));
        Forward {
            node: cluster.node().into(),
            cluster,
            writes,
            relayed: Arc::new(tokio::sync::Semaphore::new(RELAYED_IN_FLIGHT)),
        }
    }

    fn record(&self, image: &SessionImage, holder: Holder) -> SessionRecord {
        SessionRecord {
            client_id: image.client_id.to_string(),
            identity: image.identity.id.to_string(),
            identity_kind: image.identity.kind.as_str().to_owned(),
            cert_serial: image.identity.cert_serial.to_string(),
            cert_fingerprint: image.identity.cert_fingerprint.to_string(),
            protocol: match image.protocol {
                Protocol::V311 => 4,
                Protocol::V5 => 5,
            },
            expiry_secs: image.expiry.as_secs(),
            subscriptions: image
                .subscriptions
                .iter()
                .map(|(filter, o)| SubscriptionRecord {
                    filter: filter.clone(),
                    qos: o.qos as u8,
                    no_local: o.no_local,
                    retain_as_published: o.retain_as_published,
                    retain_handling: o.retain_handling as u8,
                })
                .collect(),
            holder,
        }
    }

    fn attached_here(&self) -> Holder {
        Holder::Attached {
            node: self.node.to_string(),
        }
    }

    /// Asks the node holding `record` to close its connection, unless that is this node.
    async fn release_elsewhere(&self, record: &SessionRecord) -> Result<Takeover, String> {
        match &record.holder {
            Holder::Attached { node } if **node != *self.node => self
                .cluster
                .request_takeover(node, &record.client_id)
                .await
                .map_err(|e| e.to_string()),
            _ => Ok(Takeover::NodeGone),
        }
    }
}

/// The broker's image of a stored session; `None` if the record names an unknown identity
/// kind or protocol (written by a newer hub: ignored rather than misread).
fn image(record: &SessionRecord) -> Option<SessionImage> {
    let kind = match record.identity_kind.as_str() {
        "device" => IdentityKind::Device,
        "service" => IdentityKind::Service,
        "claim" => IdentityKind::Claim,
        _ => return None,
    };
    let protocol = match record.protocol {
        4 => Protocol::V311,
        5 => Protocol::V5,
        _ => return None,
    };
    let mut subscriptions = Vec::with_capacity(record.subscriptions.len());
    for s in &record.subscriptions {
        let retain_handling = match s.retain_handling {
            0 => RetainHandling::SendAtSubscribe,
            1 => RetainHandling::SendIfNew,
            2 => RetainHandling::DoNotSend,
            _ => return None,
        };
        let options = SubscriptionOptions {
            qos: QoS::from_bits(s.qos)?.min(QoS::AtLeastOnce),
            no_local: s.no_local,
            retain_as_published: s.retain_as_published,
            retain_handling,
        };
        subscriptions.push((s.filter.clone(), options));
    }
    Some(SessionImage {
        client_id: record.client_id.as_str().into(),
        identity: Identity {
            kind,
            id: record.identity.as_str().into(),
            client_id: record.client_id.as_str().into(),
            cert_serial: record.cert_serial.as_str().into(),
            cert_fingerprint: record.cert_fingerprint.as_str().into(),
        },
        protocol,
        expiry: Duration::from_secs(record.expiry_secs),
        subscriptions,
    })
}

fn routed(origin: &str, seq: u64, m: QueuedMessage) -> Routed {
    Routed {
        origin: origin.to_owned(),
        seq,
        topic: m.topic,
        payload: m.payload,
        qos: m.qos as u8,
        retain: m.retain,
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Writes session records in the order the broker asked for them: a park must not be
/// overtaken by an earlier subscription change of the same session.
async fn write_records(cluster: Cluster, mut rx: mpsc::UnboundedReceiver<Write>) {
    let sessions = cluster.sessions().clone();
    while let Some(w) = rx.recv().await {
        match w {
            Write::Put(record) => {
                if let Err(e) = sessions.put(&record).await {
                    tracing::warn!(client_id = %record.client_id, error = %e,
                        "could not record a persistent session in the cluster");
                }
            }
            Write::Park(record, queued, done) => {
                let result = async {
                    for m in queued {
                        let seq = cluster.next_seq();
                        let dedup = format!(
                            "{}.u{seq}.{}",
                            cluster.node(),
                            session_key(&record.client_id)
                        );
                        sessions
                            .enqueue(&record.client_id, &dedup, &routed(cluster.node(), seq, m))
                            .await?;
                    }
                    sessions.put(&record).await.map(|_| ())
                }
                .await;
                let _ = done.send(result.map_err(|e| e.to_string()));
            }
        }
    }
}

#[async_trait]
impl rampart_broker::Peers for Forward {
    fn forward(&self, topic: &str, payload: &Bytes, qos: QoS, retain: bool) -> Origin {
        // The hub's own request/response topics are answered by the node the client is
        // connected to; no other node has anything to do with them.
        let seq = if topic.starts_with("$rampart/") {
            self.cluster.next_seq()
        } else {
            self.cluster.forward(topic, payload, qos as u8, retain)
        };
        Origin {
            node: self.node.clone(),
            seq,
        }
    }

    fn connected(&self, client_id: &str, attached_ms: u64) {
        self.cluster.announce_connected(client_id, attached_ms);
    }

    fn session_attached(&self, image: SessionImage) {
        let record = self.record(&image, self.attached_here());
        // The writer lives as long as the cluster link; a send fails only at shutdown.
        let _ = self.writes.send(Write::Put(record));
    }

    async fn park(&self, image: SessionImage, queued: Vec<QueuedMessage>) -> Result<(), String> {
        let record = Sessions::parked(self.record(&image, self.attached_here()), &self.node);
        let (tx, rx) = oneshot::channel();
        self.writes
            .send(Write::Park(record, queued, tx))
            .map_err(|_| "the cluster link is shutting down".to_string())?;
        rx.await
            .map_err(|_| "the cluster link is shutting down".to_string())?
    }

    async fn resume(
        &self,
        client_id: &str,
        identity: &Identity,
    ) -> Result<Option<(SessionImage, Vec<QueuedMessage>)>, String> {
        let sessions = self.cluster.sessions();
        for _ in 0..4 {
            let Some((record, revision)) =
                sessions.get(client_id).await.map_err(|e| e.to_string())?
            else {
                return Ok(None);
            };
            if record.identity != *identity.id {
                tracing::warn!(%client_id, owner = %record.identity, identity = %identity.id,
                    "the cluster's session for this client id belongs to another identity: not resumed");
                return Ok(None);
            }
            if record.parked_until_ms().is_some_and(|t| t <= now_ms()) {
                let _ = sessions.remove(client_id, Some(revision)).await;
                return Ok(None);
            }
            if self.release_elsewhere(&record).await? == Takeover::Released {
                continue; // the other node parked it: read it again
            }
            let Some(image) = image(&record) else {
                return Err(format!(
                    "the session record of {client_id:?} is not readable by this hub"
                ));
            };
            let claimed = self.record(&image, self.attached_here());
            match sessions.claim(&claimed, Some(revision)).await {
                Ok(_) => {}
                Err(SessionError::Conflict) => continue,
                Err(e) => return Err(e.to_string()),
            }
            let (messages, malformed, below) =
                sessions.drain(client_id).await.map_err(|e| e.to_string())?;
            if malformed > 0 {
                tracing::warn!(%client_id, malformed, "unreadable queued messages skipped");
            }
            if let Some(below) = below {
                sessions
                    .purge_queue(client_id, Some(below))
                    .await
                    .map_err(|e| e.to_string())?;
            }
            let queued = messages
                .into_iter()
                .filter_map(|r| {
                    Some(QueuedMessage {
                        topic: r.topic,
                        payload: r.payload,
                        qos: QoS::from_bits(r.qos)?,
                        retain: r.retain,
                    })
                })
                .collect();
            return Ok(Some((image, queued)));
        }
        Err("other nodes kept changing the session record".into())
    }

    async fn discard(&self, client_id: &str) {
        let sessions = self.cluster.sessions();
        let result = async {
            let Some((record, _)) = sessions.get(client_id).await? else {
                return Ok(());
            };
            if let Err(e) = self.release_elsewhere(&record).await {
                tracing::warn!(%client_id, error = %e, "the node holding the old session did not close it");
            }
            sessions.remove(client_id, None).await
        }
        .await;
        if let Err(e) = result {
            tracing::warn!(%client_id, error = %e,
                "could not discard the cluster's session for this client id");
        }
    }

    async fn enqueue(
        &self,
        client_id: &str,
        origin: Option<&Origin>,
        message: QueuedMessage,
    ) -> Result<(), String> {
        let (node, seq, dedup) = match origin {
            Some(o) => (
                o.node.clone(),
                o.seq,
                format!("{}.{}.{}", o.node, o.seq, session_key(client_id)),
            ),
            None => {
                let seq = self.cluster.next_seq();
                let dedup = format!("{}.u{seq}.{}", self.node, session_key(client_id));
                (self.node.clone(), seq, dedup)
            }
        };
        let sessions = self.cluster.sessions().clone();
        let routed = routed(&node, seq, message);
        if *node != *self.node {
            // Another node's message. Its origin queues it too, before its publisher's
            // PUBACK; this copy covers an origin that has not yet seen the session parked,
            // or died. It must not hold up what this node receives from the others, so it
            // is not waited for — and skipped when too many are in flight already.
            let Ok(permit) = self.relayed.clone().try_acquire_owned() else {
                tracing::debug!(%client_id, "relay copy for a parked session skipped: too many in flight");
                return Ok(());
            };
            let client_id = client_id.to_owned();
            tokio::spawn(async move {
                if let Err(e) = sessions.enqueue(&client_id, &dedup, &routed).await {
                    tracing::warn!(%client_id, error = %e,
                        "could not queue another node's message for a parked session");
                }
                drop(permit);
            });
            return Ok(());
        }
        sessions
            .enqueue(client_id, &dedup, &routed)
            .await
            .map_err(|e| e.to_string())
    }
}

/// Removes the session of `record` when its expiry passes, unless it changed meanwhile.
/// Every node tries; the revision lets only one succeed, and none if it was resumed.
fn end_on_expiry(sessions: &Sessions, record: &SessionRecord, revision: u64, ttl: Duration) {
    let (sessions, client_id) = (sessions.clone(), record.client_id.clone());
    tokio::spawn(async move {
        tokio::time::sleep(ttl).await;
        if sessions.remove(&client_id, Some(revision)).await.is_ok() {
            tracing::info!(%client_id, "parked session expired");
        }
    });
}

/// Keeps this node's parked copies of the cluster's parked sessions in step with the
/// session bucket, and removes sessions whose expiry passed while parked.
///
/// A session attached to a node that has gone silent (killed, cut off) is parked here too:
/// from then on what matches it is queued for its device, which will come back on another
/// node. So is a session the record says this node holds when this node does not (it
/// restarted since).
pub(crate) async fn watch_sessions(cluster: Cluster, broker: Broker) {
    let sessions = cluster.sessions().clone();
    let changes = match sessions.watch().await {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "cannot watch the cluster's sessions: messages for sessions parked by other nodes are not queued by this node");
            return;
        }
    };
    tokio::pin!(changes);
    let mut records: HashMap<String, (SessionRecord, u64)> = HashMap::new();
    // Sessions of silent nodes parked here, by key.
    let mut adopted: std::collections::HashSet<String> = std::collections::HashSet::new();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            change = changes.next() => {
                let Some(change) = change else { return };
                match change {
                    SessionChange::Put { key, record, revision } => {
                        adopted.remove(&key);
                        match record.parked_until_ms() {
                            None => broker.unpark(&record.client_id),
                            Some(until) => {
                                let ttl = Duration::from_millis(until.saturating_sub(now_ms()));
                                match image(&record) {
                                    Some(img) if !ttl.is_zero() => broker.park_remote(img, ttl),
                                    Some(_) => {}
                                    None => tracing::warn!(client_id = %record.client_id,
                                        "session record not readable by this hub: not kept here"),
                                }
                                end_on_expiry(&sessions, &record, revision, ttl);
                            }
                        }
                        records.insert(key, (record, revision));
                    }
                    SessionChange::Removed { key } => {
                        adopted.remove(&key);
                        if let Some((record, _)) = records.remove(&key) {
                            broker.unpark(&record.client_id);
                        }
                    }
                }
            }
            _ = tick.tick() => {
                // A node heard again (this node's own link to NATS was down, or the node
                // restarted and parks what it no longer holds itself): its sessions are its
                // own again.
                adopted.retain(|key| {
                    let Some((record, _)) = records.get(key) else { return false };
                    match &record.holder {
                        Holder::Attached { node }
                            if node != cluster.node() && !cluster.is_silent(node) =>
                        {
                            broker.unpark(&record.client_id);
                            false
                        }
                        _ => true,
                    }
                });
                let mut by_node: HashMap<&str, usize> = HashMap::new();
                for (key, (record, revision)) in &records {
                    let Holder::Attached { node } = &record.holder else { continue };
                    if adopted.contains(key) {
                        continue;
                    }
                    let gone = if node == cluster.node() {
                        !broker.holds(&record.client_id)
                    } else {
                        cluster.is_silent(node)
                    };
                    let Some(img) = image(record).filter(|_| gone) else { continue };
                    let ttl = Duration::from_secs(record.expiry_secs);
                    broker.park_remote(img, ttl);
                    end_on_expiry(&sessions, record, *revision, ttl);
                    adopted.insert(key.clone());
                    *by_node.entry(node.as_str()).or_default() += 1;
                }
                for (node, n) in by_node {
                    tracing::warn!(%node, sessions = n,
                        "node holds persistent sessions but is gone: they are parked here until their devices come back");
                }
            }
        }
    }
}

/// Delivers what the other nodes route to this node's subscribers, applies their
/// registry-change notices to this node's sessions, and gives up sessions they resume.
pub(crate) async fn receive(mut rx: mpsc::Receiver<Incoming>, live: Arc<Live>) {
    while let Some(incoming) = rx.recv().await {
        match incoming {
            Incoming::Message(m) => {
                let qos = QoS::from_bits(m.qos).unwrap_or(QoS::AtMostOnce);
                let origin = Origin {
                    node: m.origin.as_str().into(),
                    seq: m.seq,
                };
                live.broker
                    .publish_from_peer(&m.topic, m.payload, qos, m.retain, origin)
                    .await;
            }
            Incoming::Notice(bytes) => match serde_json::from_slice::<Request>(&bytes) {
                Ok(req) => live.handle_from_peer(req).await,
                Err(e) => {
                    tracing::warn!(error = %e, "unreadable notice from another node: ignored")
                }
            },
            Incoming::Connected { client_id, at_ms } => {
                if live.broker.taken_over_elsewhere(&client_id, at_ms) {
                    tracing::info!(%client_id,
                        "the client connected to another node: its older connection here is closed");
                }
            }
            Incoming::Takeover { client_id, reply } => {
                let live = live.clone();
                tokio::spawn(async move {
                    let closed = live.broker.release(&client_id).await;
                    tracing::info!(%client_id, closed,
                        "another node resumed this client's session");
                    if let (Some(reply), Some(cluster)) = (reply, &live.cluster) {
                        cluster.answer_takeover(reply, closed).await;
                    }
                });
            }
        }
    }
}
