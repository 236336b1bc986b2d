//! Counters the operator sees (rendered by the hub in Prometheus format).
//!
//! Plain atomics: the publish path only ever increments, never locks.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

use crate::refusal::RefusalReason;

/// Broker counters and gauges.
#[derive(Debug)]
pub struct Metrics {
    pub connections_accepted: AtomicU64,
    pub connections_active: AtomicI64,
    pub tls_handshakes: AtomicU64,
    pub connects_accepted: AtomicU64,
    pub sessions: AtomicI64,
    pub subscriptions: AtomicI64,
    pub retained_messages: AtomicI64,
    pub messages_received: AtomicU64,
    pub messages_delivered: AtomicU64,
    pub bytes_received: AtomicU64,
    pub bytes_sent: AtomicU64,
    /// Messages dropped because a subscriber's queue stayed full.
    pub dropped_queue_full: AtomicU64,
    /// Messages dropped because their MQTT 5 expiry passed before delivery.
    pub dropped_expired: AtomicU64,
    /// Messages not sent because they exceed the client's Maximum Packet Size.
    pub dropped_too_large_for_client: AtomicU64,
    /// Persistent sessions parked with the other nodes of a cluster at disconnect.
    pub cluster_sessions_parked: AtomicU64,
    /// Persistent sessions resumed from the cluster at CONNECT.
    pub cluster_sessions_resumed: AtomicU64,
    /// Sessions that could not be parked (they stayed on this node).
    pub cluster_park_failures: AtomicU64,
    /// CONNECTs whose session could not be resumed from the cluster (a new one was started).
    pub cluster_resume_failures: AtomicU64,
    /// Messages queued in the cluster for parked sessions.
    pub cluster_enqueued: AtomicU64,
    /// Messages for parked sessions that could not be queued (lost for that session).
    pub cluster_enqueue_failures: AtomicU64,
    refusals: Vec<AtomicU64>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            connections_accepted: AtomicU64::new(0),
            connections_active: AtomicI64::new(0),
            tls_handshakes: AtomicU64::new(0),
            connects_accepted: AtomicU64::new(0),
            sessions: AtomicI64::new(0),
            subscriptions: AtomicI64::new(0),
            retained_messages: AtomicI64::new(0),
            messages_received: AtomicU64::new(0),
            messages_delivered: AtomicU64::new(0),
            bytes_received: AtomicU64::new(0),
            bytes_sent: AtomicU64::new(0),
            dropped_queue_full: AtomicU64::new(0),
            dropped_expired: AtomicU64::new(0),
            dropped_too_large_for_client: AtomicU64::new(0),
            cluster_sessions_parked: AtomicU64::new(0),
            cluster_sessions_resumed: AtomicU64::new(0),
            cluster_park_failures: AtomicU64::new(0),
            cluster_resume_failures: AtomicU64::new(0),
            cluster_enqueued: AtomicU64::new(0),
            cluster_enqueue_failures: AtomicU64::new(0),
            refusals: RefusalReason::ALL
                .iter()
                .map(|_| AtomicU64::new(0))
                .collect(),
        }
    }
}

impl Metrics {
    pub(crate) fn refused(&self, reason: RefusalReason) {
        self.refusals[reason.index()].fetch_add(1, Ordering::Relaxed);
    }

    /// How many times `reason` was refused.
    pub fn refusals(&self, reason: RefusalReason) -> u64 {
        self.refusals[reason.index()].load(Ordering::Relaxed)
    }

    pub(crate) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }
}
