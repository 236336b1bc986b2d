//! The hub as one node of several: what it hands to the other nodes and what it does with
//! what they send (rampart-cluster carries both over NATS).

use std::sync::Arc;

use bytes::Bytes;
use rampart_cluster::{Cluster, Incoming};
use rampart_mqtt::QoS;
use tokio::sync::mpsc;

use crate::control::Request;
use crate::live::Live;

/// Hands every message this node's broker routes to the other nodes.
pub(crate) struct Forward(pub Cluster);

impl rampart_broker::Peers for Forward {
    fn forward(&self, topic: &str, payload: &Bytes, qos: QoS, retain: bool) {
        // The hub's own request/response topics are answered by the node the client is
        // connected to; no other node has anything to do with them.
        if topic.starts_with("$rampart/") {
            return;
        }
        self.0.forward(topic, payload, qos as u8, retain);
    }
}

/// Delivers what the other nodes route to this node's subscribers, and applies their
/// registry-change notices to this node's sessions.
pub(crate) async fn receive(mut rx: mpsc::Receiver<Incoming>, live: Arc<Live>) {
    while let Some(incoming) = rx.recv().await {
        match incoming {
            Incoming::Message(m) => {
                let qos = QoS::from_bits(m.qos).unwrap_or(QoS::AtMostOnce);
                live.broker
                    .publish_from_peer(&m.topic, m.payload, qos, m.retain)
                    .await;
            }
            Incoming::Notice(bytes) => match serde_json::from_slice::<Request>(&bytes) {
                Ok(req) => live.handle_from_peer(req).await,
                Err(e) => {
                    tracing::warn!(error = %e, "unreadable notice from another node: ignored")
                }
            },
        }
    }
}
