//! Persistent sessions that move between the nodes of a cluster.
//!
//! On one node a persistent session outlives its connection in memory. In a cluster the
//! device may come back through the load balancer to another node, so the session has to
//! outlive the node too. This module is the broker's half of that; the other half (where the
//! sessions are kept) is behind [`Peers`]:
//!
//! - **Opening.** A CONNECT that asks to resume, on a node that does not hold the session
//!   itself, resumes it from the peers: they close the connection another node holds for it
//!   and hand over its subscriptions and queued messages. A clean start discards the
//!   cluster's session. A persistent session that is held here is announced to the peers,
//!   and announced again whenever its subscriptions change.
//! - **Parking.** When the connection of a persistent session ends, the session is parked
//!   with the peers: its subscriptions, and what was queued or unacknowledged, in order. The
//!   local session stays as a *parked copy*: still in the subscription index, but what
//!   matches it goes to [`Peers::enqueue`]. If the peers cannot take it, it stays on this node
//!   as a detached session, as without a cluster.
//! - **Parked copies** of sessions other nodes parked are installed with
//!   [`Broker::park_remote`], so a message published on any node is queued for a parked
//!   session even when the node that parked it is gone. They are removed when the session is
//!   resumed somewhere ([`Broker::unpark`]) or expires.
//!
//! What is resumed is checked again: a subscription the identity may no longer make is
//! dropped, and a queued message it may no longer receive is not delivered.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use rampart_mqtt::{Protocol, QoS, reason};
use rampart_policy::{Action, Identity};

use crate::broker::{Attached, Broker, Shared};
use crate::hooks::{Peers, QueuedMessage, SessionImage};
use crate::mailbox::Delivery;
use crate::message::Message;
use crate::metrics::Metrics;
use crate::router::Subscriber;
use crate::session::{Kick, Session, SessionState};

fn image_of(session: &Session, st: &SessionState) -> SessionImage {
    SessionImage {
        client_id: session.client_id.clone(),
        identity: st.identity.clone(),
        protocol: st.protocol,
        expiry: st.expiry,
        subscriptions: st
            .subscriptions
            .iter()
            .map(|(f, o)| (f.clone(), *o))
            .collect(),
    }
}

fn queued_of(d: Delivery) -> QueuedMessage {
    QueuedMessage {
        topic: d.msg.topic.to_string(),
        payload: d.msg.payload.clone(),
        qos: d.qos,
        retain: d.retain,
    }
}

impl Shared {
    /// Opens the session for a connection that has just been authorized: locally, or — in a
    /// cluster — resumed from or discarded with the peers.
    pub(crate) async fn open_session(
        &self,
        client_id: &Arc<str>,
        identity: Identity,
        protocol: Protocol,
        clean_start: bool,
        expiry: Duration,
    ) -> Attached {
        let Some(peers) = self.peers.get().cloned() else {
            return self.attach(client_id, identity, protocol, clean_start, expiry);
        };
        let attached = self
            .open_cluster_session(&peers, client_id, identity, protocol, clean_start, expiry)
            .await;
        peers.connected(client_id, attached.ctl.attached_ms);
        attached
    }

    /// [`Shared::open_session`] in a cluster: resumes, discards or announces the session.
    async fn open_cluster_session(
        &self,
        peers: &Arc<dyn Peers>,
        client_id: &Arc<str>,
        identity: Identity,
        protocol: Protocol,
        clean_start: bool,
        expiry: Duration,
    ) -> Attached {
        if clean_start {
            let attached = self.attach(client_id, identity, protocol, true, expiry);
            peers.discard(client_id).await;
            self.announce(&attached.session);
            return attached;
        }
        let held_here = self
            .sessions
            .lock()
            .get(&**client_id)
            .is_some_and(|s| !s.parked.load(Ordering::Acquire));
        if held_here {
            // Detached here, or a takeover of a connection to this node: as without a cluster.
            return self.attach(client_id, identity, protocol, false, expiry);
        }
        let resumed = match peers.resume(client_id, &identity).await {
            Ok(r) => r,
            Err(e) => {
                Metrics::add(&self.metrics.cluster_resume_failures, 1);
                tracing::warn!(%client_id, error = %e,
                    "could not resume the session from the cluster: starting a new one");
                None
            }
        };
        let attached = match resumed {
            Some((image, queued)) => {
                self.attach_resumed(client_id, identity, protocol, expiry, image, queued)
            }
            None => self.attach(client_id, identity, protocol, true, expiry),
        };
        self.announce(&attached.session);
        attached
    }

    /// A new session carrying the subscriptions and queued messages of `image`.
    fn attach_resumed(
        &self,
        client_id: &Arc<str>,
        identity: Identity,
        protocol: Protocol,
        expiry: Duration,
        image: SessionImage,
        queued: Vec<QueuedMessage>,
    ) -> Attached {
        let mut attached = self.attach(client_id, identity.clone(), protocol, true, expiry);
        let session = attached.session.clone();
        let mut dropped_subscriptions = 0;
        for (filter, options) in image.subscriptions {
            if !self
                .authorizer
                .authorize(&identity, Action::Subscribe, &filter)
                .is_allowed()
            {
                dropped_subscriptions += 1;
                continue;
            }
            let sub = Subscriber {
                session: session.clone(),
                options,
            };
            if self.router.subscribe(&filter, sub) {
                self.metrics.subscriptions.fetch_add(1, Ordering::Relaxed);
            }
            session.state.lock().subscriptions.insert(filter, options);
        }
        let check_receive = self.authorizer.checks_receive();
        let (mut delivered, mut refused) = (0usize, 0usize);
        for m in queued {
            if check_receive
                && !self
                    .authorizer
                    .authorize(&identity, Action::Receive, &m.topic)
                    .is_allowed()
            {
                refused += 1;
                continue;
            }
            let d = Delivery {
                msg: Message::bare(&m.topic, m.payload, m.qos, m.retain),
                qos: m.qos.min(QoS::AtLeastOnce),
                retain: m.retain,
            };
            if session.mailbox.try_push(d).is_ok() {
                delivered += 1;
            } else {
                Metrics::add(&self.metrics.dropped_queue_full, 1);
            }
        }
        session.state.lock().recorded = true;
        Metrics::add(&self.metrics.cluster_sessions_resumed, 1);
        tracing::info!(%client_id, queued = delivered, refused_by_policy = refused,
            subscriptions_no_longer_allowed = dropped_subscriptions,
            "resumed a persistent session from the cluster");
        attached.present = true;
        attached
    }

    /// Tells the peers this node holds `session` now (or its subscriptions changed), if it is
    /// persistent.
    pub(crate) fn announce(&self, session: &Arc<Session>) {
        let Some(peers) = self.peers.get() else {
            return;
        };
        let image = {
            let mut st = session.state.lock();
            if st.expiry.is_zero() || st.ended {
                return;
            }
            st.recorded = true;
            image_of(session, &st)
        };
        peers.session_attached(image);
    }

    /// Parks `session` with the peers after its connection of `generation` ended. False if
    /// the peers could not take it; it then stays on this node.
    pub(crate) async fn park(
        &self,
        peers: &Arc<dyn Peers>,
        session: &Arc<Session>,
        generation: u64,
    ) -> bool {
        let (image, mut queued) = {
            let st = session.state.lock();
            if st.generation != generation || st.connection.is_some() || st.ended {
                return true; // resumed or discarded meanwhile: nothing to park
            }
            // From here on, what matches the session goes to the cluster's queue.
            session.parked.store(true, Ordering::Release);
            let unacked: Vec<QueuedMessage> = st
                .inflight
                .iter()
                .map(|(_, d)| queued_of(d.clone()))
                .collect();
            (image_of(session, &st), unacked)
        };
        let mut waiting = Vec::new();
        session.mailbox.pop_into(&mut waiting, usize::MAX);
        let now = Instant::now();
        queued.extend(
            waiting
                .iter()
                .filter(|d| !d.msg.is_expired(now))
                .cloned()
                .map(queued_of),
        );
        let client_id = session.client_id.clone();
        match peers.park(image, queued).await {
            Ok(()) => {
                session.state.lock().inflight.clear();
                self.metrics.sessions.fetch_sub(1, Ordering::Relaxed);
                Metrics::add(&self.metrics.cluster_sessions_parked, 1);
                // A message routed just before the flag was set may have reached the mailbox.
                let mut late = Vec::new();
                session.mailbox.pop_into(&mut late, usize::MAX);
                for d in late {
                    if let Err(e) = peers.enqueue(&client_id, None, queued_of(d)).await {
                        Metrics::add(&self.metrics.cluster_enqueue_failures, 1);
                        tracing::warn!(%client_id, error = %e, "message for a parked session lost");
                    }
                }
                tracing::info!(%client_id, "persistent session parked with the cluster");
                true
            }
            Err(e) => {
                session.parked.store(false, Ordering::Release);
                for d in waiting {
                    if session.mailbox.try_push(d).is_err() {
                        Metrics::add(&self.metrics.dropped_queue_full, 1);
                    }
                }
                Metrics::add(&self.metrics.cluster_park_failures, 1);
                tracing::warn!(%client_id, error = %e,
                    "could not park the session with the cluster: it stays on this node only");
                false
            }
        }
    }

    /// Removes the parked copy `session` if it is still the one installed at `generation`
    /// (`None`: whichever).
    pub(crate) fn drop_parked(&self, session: &Arc<Session>, generation: Option<u64>) {
        let filters = {
            let mut map = self.sessions.lock();
            let mut st = session.state.lock();
            if !session.parked.load(Ordering::Acquire)
                || st.ended
                || generation.is_some_and(|g| g != st.generation)
            {
                return;
            }
            Self::unlink(&mut map, session, &mut st)
        };
        self.drop_subscriptions(session, &filters);
        session.mailbox.clear();
    }
}

impl Broker {
    /// Installs or refreshes the parked copy of a session parked in the cluster: messages
    /// that match its subscriptions are queued for it through the peers. Removed by
    /// [`Broker::unpark`], or after `ttl` (the session's expiry). A session this node holds
    /// is left alone: the record it sees was written before this node took it.
    pub fn park_remote(&self, image: SessionImage, ttl: Duration) {
        let shared = &self.shared;
        let generation = shared.next_generation();
        let session = {
            let mut map = shared.sessions.lock();
            match map.get(&*image.client_id) {
                Some(s) if !s.parked.load(Ordering::Acquire) => return,
                Some(s) => s.clone(),
                None => {
                    let s = Session::new(
                        image.client_id.clone(),
                        image.identity.clone(),
                        image.protocol,
                        1,
                    );
                    s.parked.store(true, Ordering::Release);
                    map.insert(s.client_id.clone(), s.clone());
                    s
                }
            }
        };
        let (removed, added) = {
            let mut st = session.state.lock();
            st.generation = generation;
            st.expiry = image.expiry;
            st.identity = image.identity;
            let new: HashMap<String, rampart_mqtt::SubscriptionOptions> =
                image.subscriptions.into_iter().collect();
            let removed: Vec<String> = st
                .subscriptions
                .keys()
                .filter(|f| !new.contains_key(*f))
                .cloned()
                .collect();
            let added: Vec<(String, rampart_mqtt::SubscriptionOptions)> = new
                .iter()
                .filter(|(f, o)| st.subscriptions.get(*f) != Some(o))
                .map(|(f, o)| (f.clone(), *o))
                .collect();
            st.subscriptions = new;
            (removed, added)
        };
        shared.drop_subscriptions(&session, &removed);
        for (filter, options) in added {
            let sub = Subscriber {
                session: session.clone(),
                options,
            };
            if shared.router.subscribe(&filter, sub) {
                shared.metrics.subscriptions.fetch_add(1, Ordering::Relaxed);
            }
        }
        let shared = shared.clone();
        tokio::spawn(async move {
            tokio::time::sleep(ttl).await;
            shared.drop_parked(&session, Some(generation));
        });
    }

    /// Removes the parked copy of `client_id`'s session (it was resumed or ended).
    pub fn unpark(&self, client_id: &str) {
        let session = self.shared.sessions.lock().get(client_id).cloned();
        if let Some(s) = session {
            self.shared.drop_parked(&s, None);
        }
    }

    /// Closes this node's connection for `client_id` because another node resumes its
    /// session, and waits until the session is parked. False if no connection was open.
    pub async fn release(&self, client_id: &str) -> bool {
        match self.close_for_another_node(client_id, u64::MAX) {
            Some(ctl) => ctl.wait_finished(Duration::from_secs(8)).await,
            None => false,
        }
    }

    /// Another node accepted a connection for `client_id` at `attached_ms` (Unix ms): a
    /// connection here for the same client id that attached before is closed (MQTT 5:
    /// DISCONNECT 0x8E, session taken over). True if one was.
    pub fn taken_over_elsewhere(&self, client_id: &str, attached_ms: u64) -> bool {
        self.close_for_another_node(client_id, attached_ms)
            .is_some()
    }

    /// Asks this node's connection for `client_id`, if it attached before `before_ms`, to
    /// close because the client is on another node now.
    fn close_for_another_node(
        &self,
        client_id: &str,
        before_ms: u64,
    ) -> Option<Arc<crate::session::ConnCtl>> {
        let ctl = self
            .shared
            .sessions
            .lock()
            .get(client_id)
            .filter(|s| !s.parked.load(Ordering::Acquire))
            .and_then(|s| s.state.lock().connection.clone())
            .filter(|c| c.attached_ms < before_ms)?;
        ctl.kick(Kick {
            reason: reason::SESSION_TAKEN_OVER,
            why: format!("client id {client_id:?} connected to another node"),
            publish_will: true,
        });
        Some(ctl)
    }

    /// Whether this node holds the session of `client_id` (connected, or detached here).
    pub fn holds(&self, client_id: &str) -> bool {
        self.shared
            .sessions
            .lock()
            .get(client_id)
            .is_some_and(|s| !s.parked.load(Ordering::Acquire))
    }
}
