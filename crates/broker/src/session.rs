//! Sessions: the state that outlives a network connection (MQTT section 4.1) — subscriptions,
//! queued and unacknowledged messages — and the control handle of the connection currently
//! attached to it.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use parking_lot::Mutex;
use rampart_mqtt::{Protocol, SubscriptionOptions};
use rampart_policy::Identity;
use tokio::sync::{Notify, watch};

use crate::answers::ReceiveAnswers;
use crate::inflight::Inflight;
use crate::mailbox::Mailbox;

/// A request to the connection task from outside (admin action, takeover, shutdown).
#[derive(Debug, Clone)]
pub(crate) struct Kick {
    /// MQTT 5 DISCONNECT reason code.
    pub reason: u8,
    pub why: String,
    /// Whether the connection's will is published.
    pub publish_will: bool,
}

/// Control handle of one live connection.
#[derive(Debug)]
pub(crate) struct ConnCtl {
    pub generation: u64,
    /// When the connection attached (Unix ms): a newer connection for the same client id
    /// on another node takes over only from an older one.
    pub attached_ms: u64,
    kick: Mutex<Option<Kick>>,
    wake: Notify,
    done: watch::Sender<bool>,
}

impl ConnCtl {
    pub(crate) fn new(generation: u64) -> Arc<Self> {
        Arc::new(ConnCtl {
            generation,
            attached_ms: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
            kick: Mutex::new(None),
            wake: Notify::new(),
            done: watch::Sender::new(false),
        })
    }

    /// Asks the connection to close (first request wins).
    pub(crate) fn kick(&self, k: Kick) {
        self.kick.lock().get_or_insert(k);
        self.wake.notify_one();
    }

    pub(crate) fn take_kick(&self) -> Option<Kick> {
        self.kick.lock().take()
    }

    pub(crate) fn woken(&self) -> tokio::sync::futures::Notified<'_> {
        self.wake.notified()
    }

    /// Marks the connection task as finished.
    pub(crate) fn finish(&self) {
        self.done.send_replace(true);
    }

    /// Waits until the connection task has finished, up to `timeout`.
    pub(crate) async fn wait_finished(&self, timeout: Duration) -> bool {
        let mut rx = self.done.subscribe();
        tokio::time::timeout(timeout, rx.wait_for(|d| *d))
            .await
            .is_ok()
    }
}

/// Mutable session state; touched by its own connection task, by admin actions and by the
/// subscribe path, never by the publish path of other clients.
#[derive(Debug)]
pub(crate) struct SessionState {
    pub identity: Identity,
    pub protocol: Protocol,
    pub subscriptions: HashMap<String, SubscriptionOptions>,
    /// QoS 1 messages sent and not yet acknowledged, in send order.
    pub inflight: Inflight,
    pub next_packet_id: u16,
    /// Session Expiry Interval after the connection closes.
    pub expiry: Duration,
    pub connection: Option<Arc<ConnCtl>>,
    /// Incremented every time a connection attaches; timers compare it to detect reuse.
    pub generation: u64,
    /// Set once the session is discarded; late timers and publishers see it.
    pub ended: bool,
    /// The cluster has a record of it (announced or resumed): its end is told to the peers.
    pub recorded: bool,
    /// Topics it was allowed to receive, for its current connection (`generation`) and the
    /// authorizer's current epoch (`answers`).
    pub receive_answers: ReceiveAnswers,
}

impl SessionState {
    /// Allocates a packet identifier not used by an in-flight message.
    pub(crate) fn allocate_packet_id(&mut self) -> u16 {
        loop {
            self.next_packet_id = self.next_packet_id.wrapping_add(1);
            if self.next_packet_id == 0 {
                self.next_packet_id = 1;
            }
            let id = self.next_packet_id;
            if !self.inflight.contains(id) {
                return id;
            }
        }
    }
}

/// A session.
#[derive(Debug)]
pub(crate) struct Session {
    pub client_id: Arc<str>,
    pub mailbox: Mailbox,
    pub state: Mutex<SessionState>,
    /// Parked with the other nodes of a cluster: nobody is connected, and messages that match
    /// its subscriptions go to the cluster's queue for it, not to `mailbox` (see handover).
    /// Outside the state lock: routing reads it for every match.
    pub parked: AtomicBool,
}

impl Session {
    pub(crate) fn new(
        client_id: Arc<str>,
        identity: Identity,
        protocol: Protocol,
        queue_capacity: usize,
    ) -> Arc<Session> {
        Arc::new(Session {
            client_id,
            mailbox: Mailbox::new(queue_capacity),
            state: Mutex::new(SessionState {
                identity,
                protocol,
                subscriptions: HashMap::new(),
                inflight: Inflight::default(),
                next_packet_id: 0,
                expiry: Duration::ZERO,
                connection: None,
                generation: 0,
                ended: false,
                recorded: false,
                receive_answers: ReceiveAnswers::default(),
            }),
            parked: AtomicBool::new(false),
        })
    }
}
