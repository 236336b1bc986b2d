//! The broker: shared state (sessions, subscription index, retained messages) and the
//! operations on it that outlive a single connection — attaching and ending sessions,
//! routing, administrative disconnects and shutdown.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use parking_lot::{Mutex, RwLock};
use rampart_mqtt::{Protocol, Publish, QoS, Will, reason};
use rampart_policy::{Action, Authorizer, Decision, Identity};
use rustls::ServerConfig;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use crate::config::BrokerConfig;
use crate::hooks::{Hooks, Origin, Peers};
use crate::mailbox::Delivery;
use crate::message::Message;
use crate::metrics::Metrics;
use crate::refusal::RefusalReason;
use crate::router::{Matches, RouteCache, Router, Subscriber, delivery_qos};
use crate::session::{ConnCtl, Kick, Session};

/// A connected client, as shown to the operator.
#[derive(Debug, Clone)]
pub struct ClientInfo {
    pub client_id: String,
    pub identity: String,
    pub protocol: &'static str,
    pub subscriptions: usize,
    pub queued: usize,
    pub inflight: usize,
    pub connected: bool,
}

pub(crate) struct Shared {
    pub config: BrokerConfig,
    /// The listener's TLS configuration; replaced when CAs or revocation lists change.
    pub tls: RwLock<Arc<ServerConfig>>,
    pub hooks: Arc<dyn Hooks>,
    pub authorizer: Arc<dyn Authorizer>,
    pub router: Router,
    pub sessions: Mutex<HashMap<Arc<str>, Arc<Session>>>,
    pub metrics: Arc<Metrics>,
    pub shutdown: CancellationToken,
    /// The other hub nodes, when this one is part of a cluster.
    pub peers: std::sync::OnceLock<Arc<dyn Peers>>,
    generation: AtomicU64,
}

/// Result of attaching a connection to a session.
pub(crate) struct Attached {
    pub session: Arc<Session>,
    pub present: bool,
    pub ctl: Arc<ConnCtl>,
    /// The connection that held the session before (to be closed: session takeover).
    pub previous: Option<Arc<ConnCtl>>,
}

/// Rampart's MQTT broker. Cheap to clone; all clones share one broker.
#[derive(Clone)]
pub struct Broker {
    pub(crate) shared: Arc<Shared>,
}

impl std::fmt::Debug for Broker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Broker")
            .field("sessions", &self.shared.sessions.lock().len())
            .finish_non_exhaustive()
    }
}

impl Broker {
    /// Creates a broker. It serves nothing until [`Broker::serve`] is called.
    pub fn new(
        config: BrokerConfig,
        tls: Arc<ServerConfig>,
        hooks: Arc<dyn Hooks>,
        authorizer: Arc<dyn Authorizer>,
    ) -> Self {
        Broker {
            shared: Arc::new(Shared {
                config,
                tls: RwLock::new(tls),
                hooks,
                authorizer,
                router: Router::default(),
                sessions: Mutex::new(HashMap::new()),
                metrics: Arc::new(Metrics::default()),
                shutdown: CancellationToken::new(),
                peers: std::sync::OnceLock::new(),
                generation: AtomicU64::new(0),
            }),
        }
    }

    /// Replaces the TLS configuration for new connections (e.g. a new revocation list or a
    /// newly trusted CA). Established connections are judged by [`Broker::disconnect_where`].
    pub fn set_tls_config(&self, tls: Arc<ServerConfig>) {
        *self.shared.tls.write() = tls;
    }

    /// Loads retained messages saved by a previous run. Corrupt or expired entries are
    /// skipped and reported. Returns how many were loaded.
    pub fn load_retained(&self, stored: Vec<(String, Vec<u8>)>) -> usize {
        let mut loaded = 0;
        for (topic, data) in stored {
            match Message::from_stored(&data) {
                Some(m) if *m.topic == *topic => {
                    let delta = self.shared.router.set_retained(Arc::new(m));
                    self.shared
                        .metrics
                        .retained_messages
                        .fetch_add(delta, Ordering::Relaxed);
                    loaded += 1;
                }
                _ => {
                    tracing::warn!(%topic, "skipping a stored retained message that is corrupt or expired")
                }
            }
        }
        loaded
    }

    /// Accepts connections on `listener` until [`Broker::shutdown`].
    pub async fn serve(&self, listener: TcpListener) -> std::io::Result<()> {
        let shared = &self.shared;
        loop {
            let accepted = tokio::select! {
                r = listener.accept() => r,
                _ = shared.shutdown.cancelled() => return Ok(()),
            };
            let (tcp, addr) = match accepted {
                Ok(x) => x,
                Err(e) => {
                    // Out of file descriptors and similar: back off instead of spinning.
                    tracing::error!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            Metrics::add(&shared.metrics.connections_accepted, 1);
            let active = shared.metrics.connections_active.load(Ordering::Relaxed);
            if active >= i64::try_from(shared.config.max_connections).unwrap_or(i64::MAX) {
                shared.metrics.refused(RefusalReason::ServerBusy);
                tracing::warn!(peer = %addr, limit = shared.config.max_connections,
                    "refused connection: server_busy: connection limit reached");
                continue;
            }
            let _ = tcp.set_nodelay(true);
            let sock = socket2::SockRef::from(&tcp);
            // Detects half-open connections of clients that use keep-alive 0.
            let _ = sock.set_tcp_keepalive(
                &socket2::TcpKeepalive::new()
                    .with_time(Duration::from_secs(120))
                    .with_interval(Duration::from_secs(30)),
            );
            let acceptor = TlsAcceptor::from(shared.tls.read().clone());
            tokio::spawn(crate::connection::run(shared.clone(), tcp, addr, acceptor));
        }
    }

    /// Closes every live connection whose certificate identity is `identity_id` (e.g. when a
    /// device is disabled). Returns how many connections were closed.
    pub fn disconnect_identity(&self, identity_id: &str, why: &str) -> usize {
        self.disconnect_where(|i| &*i.id == identity_id, why)
    }

    /// Closes every live connection whose identity satisfies `pred` (MQTT 5 clients get
    /// DISCONNECT 0x98, administrative action). Returns how many were closed.
    pub fn disconnect_where(&self, pred: impl Fn(&Identity) -> bool, why: &str) -> usize {
        let sessions: Vec<Arc<Session>> = self.shared.sessions.lock().values().cloned().collect();
        let mut n = 0;
        for s in sessions {
            let st = s.state.lock();
            if let Some(c) = &st.connection
                && pred(&st.identity)
            {
                c.kick(Kick {
                    reason: reason::ADMINISTRATIVE_ACTION,
                    why: why.to_owned(),
                    publish_will: false,
                });
                n += 1;
            }
        }
        n
    }

    /// Identities of the live connections (for audits such as "revoked but still connected").
    pub fn connected_identities(&self) -> Vec<Identity> {
        let sessions: Vec<Arc<Session>> = self.shared.sessions.lock().values().cloned().collect();
        sessions
            .iter()
            .filter_map(|s| {
                let st = s.state.lock();
                st.connection.as_ref().map(|_| st.identity.clone())
            })
            .collect()
    }

    /// Publishes a message from the hub itself (responses on `$rampart/...` topics, for
    /// instance): routed to subscribers like any message, retained if asked.
    pub async fn publish(&self, topic: &str, payload: Bytes, qos: QoS, retain: bool) {
        let msg = Message::bare(topic, payload, qos, retain);
        if retain && let Err(e) = self.shared.retain(&msg).await {
            tracing::error!(%topic, error = %e, "could not store retained message");
        }
        self.shared.route(msg).await;
    }

    /// Joins this broker to other hub nodes: from now on every message it routes is also
    /// handed to `peers`. Set once; false if peers were set already.
    pub fn set_peers(&self, peers: Arc<dyn Peers>) -> bool {
        self.shared.peers.set(peers).is_ok()
    }

    /// Delivers a message another node routed to this node's subscribers. A retained message
    /// replaces the retained message of its topic in memory only: the node that received it
    /// stored it in the shared database. Not handed back to the peers.
    pub async fn publish_from_peer(
        &self,
        topic: &str,
        payload: Bytes,
        qos: QoS,
        retain: bool,
        origin: Origin,
    ) {
        let msg = Message::bare(topic, payload, qos, retain);
        if retain {
            let delta = self.shared.router.set_retained(msg.clone());
            self.shared
                .metrics
                .retained_messages
                .fetch_add(delta, Ordering::Relaxed);
        }
        self.shared.route_local(msg, Some(&origin), None).await;
    }

    /// Stops accepting and closes every connection (MQTT 5 clients are told "server shutting
    /// down").
    pub fn shutdown(&self) {
        self.shared.shutdown.cancel();
    }

    /// The broker's counters.
    pub fn metrics(&self) -> Arc<Metrics> {
        self.shared.metrics.clone()
    }

    /// Sessions and their state, for the operator. Parked copies of a cluster's sessions
    /// are not this node's and are left out.
    pub fn clients(&self) -> Vec<ClientInfo> {
        let sessions: Vec<Arc<Session>> = self
            .shared
            .sessions
            .lock()
            .values()
            .filter(|s| !s.parked.load(Ordering::Acquire))
            .cloned()
            .collect();
        let mut out: Vec<ClientInfo> = sessions
            .iter()
            .map(|s| {
                let st = s.state.lock();
                ClientInfo {
                    client_id: s.client_id.to_string(),
                    identity: st.identity.id.to_string(),
                    protocol: st.protocol.label(),
                    subscriptions: st.subscriptions.len(),
                    queued: s.mailbox.len(),
                    inflight: st.inflight.len(),
                    connected: st.connection.is_some(),
                }
            })
            .collect();
        out.sort_by(|a, b| a.client_id.cmp(&b.client_id));
        out
    }
}

impl Shared {
    pub(crate) fn next_generation(&self) -> u64 {
        self.generation.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// Attaches a new connection to the session of `client_id`, creating, resuming or
    /// replacing it as `clean_start` says.
    pub(crate) fn attach(
        &self,
        client_id: &str,
        identity: Identity,
        protocol: Protocol,
        clean_start: bool,
        expiry: Duration,
    ) -> Attached {
        let generation = self.next_generation();
        let ctl = ConnCtl::new(generation);
        let mut discarded = None;
        let mut previous = None;
        let mut map = self.sessions.lock();
        if let Some(existing) = map.get(client_id).cloned() {
            let mut st = existing.state.lock();
            previous = st.connection.take();
            if !clean_start {
                st.identity = identity;
                st.protocol = protocol;
                st.expiry = expiry;
                st.generation = generation;
                st.connection = Some(ctl.clone());
                drop(st);
                return Attached {
                    session: existing,
                    present: true,
                    ctl,
                    previous,
                };
            }
            st.ended = true;
            let filters: Vec<String> = st.subscriptions.drain().map(|(f, _)| f).collect();
            st.inflight.clear();
            drop(st);
            discarded = Some((existing, filters));
        }
        let session = Session::new(
            client_id.into(),
            identity,
            protocol,
            self.config.max_queued_messages,
        );
        {
            let mut st = session.state.lock();
            st.generation = generation;
            st.expiry = expiry;
            st.connection = Some(ctl.clone());
        }
        map.insert(session.client_id.clone(), session.clone());
        drop(map);
        if let Some((old, filters)) = discarded {
            self.drop_subscriptions(&old, &filters);
            old.mailbox.clear();
            if old.parked.load(Ordering::Acquire) {
                // A parked copy was never counted as a session of this node.
                self.metrics.sessions.fetch_add(1, Ordering::Relaxed);
            }
        } else {
            self.metrics.sessions.fetch_add(1, Ordering::Relaxed);
        }
        Attached {
            session,
            present: false,
            ctl,
            previous,
        }
    }

    pub(crate) fn drop_subscriptions(&self, session: &Arc<Session>, filters: &[String]) {
        for f in filters {
            if self.router.unsubscribe(f, session) {
                self.metrics.subscriptions.fetch_sub(1, Ordering::Relaxed);
            }
        }
    }

    /// Called when the connection of generation `generation` has ended. In a cluster a
    /// persistent session is parked with the peers (see handover).
    pub(crate) async fn detach(self: &Arc<Self>, session: &Arc<Session>, generation: u64) {
        let (expiry, recorded) = {
            let mut st = session.state.lock();
            if st.generation != generation || st.ended {
                return; // a newer connection owns the session, or it was discarded
            }
            st.connection = None;
            (st.expiry, st.recorded)
        };
        let peers = self.peers.get().cloned();
        if expiry.is_zero() {
            self.end_session(session, generation);
            if let (Some(peers), true) = (peers, recorded) {
                peers.discard(&session.client_id).await;
            }
            return;
        }
        if let Some(peers) = peers
            && self.park(&peers, session, generation).await
        {
            return;
        }
        let shared = self.clone();
        let session = session.clone();
        tokio::spawn(async move {
            tokio::time::sleep(expiry).await;
            shared.end_session(&session, generation);
        });
    }

    /// Discards a detached session that has not been resumed since `generation`.
    pub(crate) fn end_session(&self, session: &Arc<Session>, generation: u64) {
        let filters = {
            let mut map = self.sessions.lock();
            let mut st = session.state.lock();
            if st.generation != generation
                || st.connection.is_some()
                || st.ended
                || session.parked.load(Ordering::Acquire)
            {
                return;
            }
            Self::unlink(&mut map, session, &mut st)
        };
        self.drop_subscriptions(session, &filters);
        session.mailbox.clear();
        self.metrics.sessions.fetch_sub(1, Ordering::Relaxed);
    }

    /// Marks `session` ended and takes it out of the session map (if it is still the one
    /// there). Returns its subscription filters, to be dropped from the index once the
    /// locks are released.
    pub(crate) fn unlink(
        map: &mut HashMap<Arc<str>, Arc<Session>>,
        session: &Arc<Session>,
        st: &mut crate::session::SessionState,
    ) -> Vec<String> {
        st.ended = true;
        st.inflight.clear();
        if map
            .get(&session.client_id)
            .is_some_and(|s| Arc::ptr_eq(s, session))
        {
            map.remove(&session.client_id);
        }
        st.subscriptions.drain().map(|(f, _)| f).collect()
    }

    /// Delivers `msg` to every matching subscriber's queue. QoS 0 is dropped for a full queue;
    /// QoS 1 waits up to the enqueue timeout (back-pressure on the publisher), then drops.
    /// Routes a message to this node's subscribers and, in a cluster, to the other nodes.
    pub(crate) async fn route(&self, msg: Arc<Message>) {
        self.route_with(msg, None).await;
    }

    /// As [`Shared::route`], with the subscribers of a topic kept in `cache` from one message
    /// to the next (a connection's).
    pub(crate) async fn route_with(&self, msg: Arc<Message>, cache: Option<&mut RouteCache>) {
        let origin = self
            .peers
            .get()
            .map(|peers| peers.forward(&msg.topic, &msg.payload, msg.qos, msg.retain));
        self.route_local(msg, origin.as_ref(), cache).await;
    }

    /// Routes a message to this node's subscribers only (and, for parked sessions of a
    /// cluster, to their queue in the cluster).
    pub(crate) async fn route_local(
        &self,
        msg: Arc<Message>,
        origin: Option<&Origin>,
        cache: Option<&mut RouteCache>,
    ) {
        // Without a cache to keep them in, the matches stay on the stack, as they are kept
        // for nothing.
        let (kept, mut found);
        let matches: &[Subscriber] = match cache {
            Some(cache) => {
                kept = self.router.matches_cached(&msg.topic, cache);
                &kept
            }
            None => {
                found = Matches::new();
                self.router.matches(&msg.topic, &mut found);
                &found
            }
        };
        if matches.is_empty() {
            return;
        }
        let check_receive = self.authorizer.checks_receive();
        for sub in matches.iter() {
            if sub.options.no_local && msg.publisher.as_deref() == Some(&*sub.session.client_id) {
                continue;
            }
            if sub.session.parked.load(Ordering::Acquire) {
                // Receive rights are checked when the session is resumed.
                self.enqueue_parked(sub, &msg, origin).await;
                continue;
            }
            if check_receive {
                // An allow this session already got for the topic, at this epoch and on this
                // connection, stands (`answers`); otherwise ask, outside the session's lock.
                let epoch = self.authorizer.epoch();
                let asked = {
                    let st = sub.session.state.lock();
                    (!st.receive_answers.allows(epoch, st.generation, &msg.topic))
                        .then(|| (st.identity.clone(), st.generation))
                };
                if let Some((identity, generation)) = asked {
                    if !self
                        .authorizer
                        .authorize(&identity, Action::Receive, &msg.topic)
                        .is_allowed()
                    {
                        continue;
                    }
                    let mut st = sub.session.state.lock();
                    // Kept for the connection it was asked for only.
                    if st.generation == generation {
                        st.receive_answers.allowed(epoch, generation, &msg.topic);
                    }
                }
            }
            let qos = delivery_qos(msg.qos, sub.options.qos);
            let d = Delivery {
                msg: msg.clone(),
                qos,
                retain: sub.options.retain_as_published && msg.retain,
            };
            let queued = if qos == QoS::AtMostOnce {
                sub.session.mailbox.try_push(d).is_ok()
            } else {
                sub.session
                    .mailbox
                    .push_wait(d, self.config.enqueue_timeout)
                    .await
            };
            if !queued {
                let n = self
                    .metrics
                    .dropped_queue_full
                    .fetch_add(1, Ordering::Relaxed);
                if n.is_power_of_two() {
                    tracing::warn!(client_id = %sub.session.client_id, topic = %msg.topic,
                        dropped_total = n + 1,
                        "subscriber queue full: message dropped for this subscriber");
                }
            }
        }
    }

    /// Queues `msg` for a parked session in the cluster; returns once it is durable there.
    async fn enqueue_parked(&self, sub: &Subscriber, msg: &Message, origin: Option<&Origin>) {
        let Some(peers) = self.peers.get() else {
            return;
        };
        let queued = crate::hooks::QueuedMessage {
            topic: msg.topic.to_string(),
            payload: msg.payload.clone(),
            qos: delivery_qos(msg.qos, sub.options.qos),
            retain: sub.options.retain_as_published && msg.retain,
        };
        match peers.enqueue(&sub.session.client_id, origin, queued).await {
            Ok(()) => Metrics::add(&self.metrics.cluster_enqueued, 1),
            Err(e) => {
                let n = self
                    .metrics
                    .cluster_enqueue_failures
                    .fetch_add(1, Ordering::Relaxed);
                if n.is_power_of_two() {
                    tracing::warn!(client_id = %sub.session.client_id, topic = %msg.topic,
                        error = %e, failed_total = n + 1,
                        "message for a parked session could not be queued in the cluster: lost for it");
                }
            }
        }
    }

    /// Stores or clears a retained message, in memory and through the persistence hook.
    pub(crate) async fn retain(&self, msg: &Arc<Message>) -> Result<(), String> {
        let stored = (!msg.payload.is_empty()).then(|| msg.to_stored());
        self.hooks.persist_retained(&msg.topic, stored).await?;
        let delta = self.router.set_retained(msg.clone());
        self.metrics
            .retained_messages
            .fetch_add(delta, Ordering::Relaxed);
        Ok(())
    }

    /// Publishes a will message (re-authorized at publication time: rights may have changed).
    pub(crate) async fn publish_will(
        &self,
        identity: &Identity,
        client_id: &Arc<str>,
        will: Will,
        address: SocketAddr,
    ) {
        if let Decision::Deny(why) =
            self.authorizer
                .authorize(identity, Action::Publish, &will.topic)
        {
            self.metrics.refused(RefusalReason::PublishDenied);
            tracing::warn!(%client_id, topic = %will.topic, %why, "will message not published: publish_denied");
            return;
        }
        let properties = will.properties.to_publish_properties();
        let publish = Publish {
            dup: false,
            qos: will.qos,
            retain: will.retain,
            topic: will.topic.clone(),
            packet_id: (will.qos != QoS::AtMostOnce).then_some(1),
            properties: properties.clone(),
            payload: will.payload.clone(),
        };
        if let Err(r) = self.hooks.on_publish(identity, &publish).await {
            self.metrics.refused(r.reason);
            tracing::warn!(%client_id, peer = %address, reason = r.reason.as_str(), detail = %r.detail,
                "will message not published");
            return;
        }
        let msg = Arc::new(Message {
            expires_at: properties
                .message_expiry_interval
                .map(|s| Instant::now() + Duration::from_secs(u64::from(s))),
            properties: (!properties.is_empty()).then(|| Box::new(properties)),
            topic: will.topic,
            payload: will.payload,
            qos: will.qos,
            retain: will.retain,
            publisher: Some(client_id.clone()),
        });
        if msg.retain
            && let Err(e) = self.retain(&msg).await
        {
            tracing::error!(%client_id, error = %e, "could not store retained will message");
        }
        tracing::debug!(%client_id, topic = %msg.topic, "publishing will message");
        self.route(msg).await;
    }
}
