//! One client connection, from TCP accept to close.
//!
//! The life of a connection is an explicit sequence: TLS handshake (client certificate
//! verified by rustls) → CONNECT (authenticated by the hooks, authorized by the policy) →
//! session attach (new, resumed or taken over) → CONNACK → the packet loop → exit (will,
//! session detach). Each way out is an [`Exit`] value, so every close is logged and counted in
//! one place with its reason.
//!
//! The loop is a single task: it reads packets, writes what the session's mailbox holds, and
//! sends acknowledgements in order as their messages become durable. Outbound packets are
//! batched into one write (several packets per TLS record).

use std::collections::{HashSet, VecDeque};
use std::future::Future;
use std::net::SocketAddr;
use std::pin::pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use rampart_mqtt::{
    Ack, ConnAck, ConnAckProperties, Connect, DecodeError, Disconnect, Packet, Protocol, Publish,
    PublishProperties, QoS, RetainHandling, SubAck, Subscribe, UnsubAck, Unsubscribe, Will,
    decode_packet, encode_packet, encode_publish, encoded_publish_len, reason, topic,
};
use rampart_pki::CertInfo;
use rampart_policy::{Action, Decision, Identity, IdentityKind};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

use crate::answers::PublishAnswer;
use crate::broker::Shared;
use crate::hooks::{ConnectRequest, Durable, PeerCertificate};
use crate::mailbox::Delivery;
use crate::message::Message;
use crate::metrics::Metrics;
use crate::refusal::{Refusal, RefusalReason};
use crate::router::{RouteCache, Subscriber};
use crate::session::{ConnCtl, Kick, Session};

type Stream = TlsStream<TcpStream>;

/// How many deliveries are moved from the mailbox per pass.
const DELIVERY_BATCH: usize = 256;
/// Stop encoding more deliveries once this much is waiting to be written.
const WRITE_HIGH_WATER: usize = 64 * 1024;
/// When new mail wakes a connection and fewer deliveries than this are waiting, it yields
/// once before writing: the connections the runtime already has ready run first, and what
/// they route here leaves in the same write. Without it, tokio runs a woken task next, so a
/// fan-in subscriber wrote after every publisher's read (about 4 messages per `writev` at
/// 51,000 QoS 1 msg/s), and a `writev` cost the hub about 5.6 µs on loopback whatever it
/// carried.
/// Measured: 9–11% less hub CPU per message at fixed QoS 0 and QoS 1 rates, p50 +0.1–0.5 ms
/// (docs/benchmarks.md). A longer queue writes at once: yielding on every wake-up starved a
/// saturated subscriber behind its publishers (QoS 0 deliveries fell from 230,000 to 49,000/s).
const COALESCE_BELOW: usize = 32;
/// Read granularity.
const READ_CHUNK: usize = 4096;
/// How long a connection waits at shutdown for messages it took to be stored and
/// acknowledged (the hub's stop waits 5 s for connections to close).
const SHUTDOWN_ACK_WAIT: Duration = Duration::from_secs(3);
/// A read smaller than this that leaves nothing buffered releases the read buffer for one of
/// this size. (A connection that sends nothing after CONNECT holds none.)
const IDLE_READ: usize = 512;

/// Decrements the active-connection gauge however the task ends.
struct ActiveGuard(Arc<Metrics>);

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.0.connections_active.fetch_sub(1, Ordering::Relaxed);
    }
}

fn refuse_log(shared: &Shared, addr: SocketAddr, client: Option<&str>, r: &Refusal) {
    shared.metrics.refused(r.reason);
    tracing::warn!(
        peer = %addr,
        client_id = client.unwrap_or("-"),
        reason = r.reason.as_str(),
        detail = %r.detail,
        "refused"
    );
}

/// Runs one connection to completion.
pub(crate) async fn run(
    shared: Arc<Shared>,
    tcp: TcpStream,
    addr: SocketAddr,
    acceptor: TlsAcceptor,
) {
    shared
        .metrics
        .connections_active
        .fetch_add(1, Ordering::Relaxed);
    let _guard = ActiveGuard(shared.metrics.clone());
    // Opening (TLS handshake, CONNECT, authorization, session) and closing (DISCONNECT, will,
    // parking) run in boxed futures of their own. Their state is large (several KiB) and
    // short-lived; what is inline here is held by every idle connection for its whole life.
    let Some((mut conn, will)) = Box::pin(open(shared, tcp, addr, acceptor)).await else {
        return;
    };
    conn.resend_inflight();
    let exit = conn.run_loop().await;
    Box::pin(conn.finish(exit, will)).await;
}

/// TLS handshake, CONNECT, authorization and session: the connection ready for its loop,
/// with the will to publish if it ends without DISCONNECT. `None` if it was refused (logged
/// and counted).
async fn open(
    shared: Arc<Shared>,
    tcp: TcpStream,
    addr: SocketAddr,
    acceptor: TlsAcceptor,
) -> Option<(Conn, Option<Will>)> {
    let deadline = tokio::time::Instant::now() + shared.config.connect_timeout;

    let mut stream = match tokio::time::timeout_at(deadline, acceptor.accept(tcp)).await {
        Err(_) => {
            let r = Refusal::new(
                RefusalReason::TlsTimeout,
                "TLS handshake not completed in time",
            );
            refuse_log(&shared, addr, None, &r);
            return None;
        }
        Ok(Err(e)) => {
            let (reason, detail) = crate::tls::classify_handshake_error(&e);
            refuse_log(&shared, addr, None, &Refusal::new(reason, detail));
            return None;
        }
        Ok(Ok(s)) => s,
    };
    Metrics::add(&shared.metrics.tls_handshakes, 1);

    let certificate = match peer_certificate(&stream) {
        Ok(c) => c,
        Err(r) => {
            refuse_log(&shared, addr, None, &r);
            return None;
        }
    };

    let mut rbuf = BytesMut::with_capacity(1024);
    let connect = match read_connect(&shared, &mut stream, &mut rbuf, deadline).await {
        Ok(c) => c,
        Err((r, connack_level)) => {
            refuse_log(&shared, addr, None, &r);
            if let Some(protocol) = connack_level {
                send_connack_refusal(&mut stream, protocol, &r).await;
            }
            return None;
        }
    };
    let protocol = connect.protocol;
    let client_id: Arc<str> = Arc::from(&*connect.client_id);

    let identity = match authorize_connect(&shared, &connect, &certificate, addr).await {
        Ok(i) => i,
        Err(r) => {
            refuse_log(&shared, addr, Some(&client_id), &r);
            send_connack_refusal(&mut stream, protocol, &r).await;
            return None;
        }
    };

    // Session expiry: MQTT 3.1.1 persistent sessions live until the configured maximum.
    let max_expiry = shared.config.max_session_expiry;
    let requested_expiry = match protocol {
        Protocol::V311 if connect.clean_start => Duration::ZERO,
        Protocol::V311 => max_expiry,
        Protocol::V5 => Duration::from_secs(u64::from(
            connect.properties.session_expiry_interval.unwrap_or(0),
        )),
    };
    let expiry = requested_expiry.min(max_expiry);

    let attached = shared
        .open_session(
            &client_id,
            identity.clone(),
            protocol,
            connect.clean_start,
            expiry,
        )
        .await;
    if let Some(previous) = &attached.previous {
        previous.kick(Kick {
            reason: reason::SESSION_TAKEN_OVER,
            why: format!("another connection took over client id {client_id:?}"),
            publish_will: true,
        });
        if !previous.wait_finished(Duration::from_secs(5)).await {
            tracing::warn!(%client_id, "previous connection did not close within 5 s of takeover");
        }
    }

    // CONNACK.
    let mut props = ConnAckProperties::default();
    let keep_alive = if protocol == Protocol::V5 {
        props.receive_maximum = Some(shared.config.receive_maximum);
        props.retain_available = Some(true);
        props.maximum_packet_size = u32::try_from(shared.config.max_packet_size).ok();
        props.wildcard_subscription_available = Some(true);
        props.subscription_identifiers_available = Some(false);
        props.shared_subscription_available = Some(false);
        if requested_expiry != expiry {
            props.session_expiry_interval = u32::try_from(expiry.as_secs()).ok();
        }
        let max = shared.config.max_keep_alive;
        if connect.keep_alive == 0 || connect.keep_alive > max {
            props.server_keep_alive = Some(max);
            max
        } else {
            connect.keep_alive
        }
    } else {
        connect.keep_alive
    };
    let mut wbuf = BytesMut::new();
    encode_packet(
        &Packet::ConnAck(ConnAck {
            session_present: attached.present,
            code: reason::SUCCESS,
            properties: props,
        }),
        protocol,
        &mut wbuf,
    );
    Metrics::add(&shared.metrics.connects_accepted, 1);
    tracing::info!(peer = %addr, %client_id, identity = %identity.id, protocol = protocol.label(),
        session_present = attached.present, "connected");
    shared
        .hooks
        .on_connection_change(&identity, addr, true)
        .await;

    let client_receive_max = connect
        .properties
        .receive_maximum
        .unwrap_or(u16::MAX)
        .min(shared.config.max_inflight);
    let client_max_packet = connect
        .properties
        .maximum_packet_size
        .map_or(usize::MAX, |m| m as usize);

    let conn = Conn {
        shared: shared.clone(),
        session: attached.session.clone(),
        ctl: attached.ctl.clone(),
        identity: identity.clone(),
        client_id: client_id.clone(),
        protocol,
        addr,
        stream,
        // Nothing after CONNECT yet (the usual case): start the session without a read
        // buffer, as an idle connection keeps none (see IDLE_READ).
        rbuf: if rbuf.is_empty() {
            BytesMut::new()
        } else {
            rbuf
        },
        wbuf,
        keep_alive: Duration::from_secs(u64::from(keep_alive)),
        last_read: tokio::time::Instant::now(),
        pending: VecDeque::new(),
        awaiting_release: HashSet::new(),
        out_window: usize::from(client_receive_max.max(1)),
        client_max_packet,
        window_open: true,
        scratch: Vec::new(),
        publish_answer: PublishAnswer::default(),
        route_cache: RouteCache::default(),
    };
    Some((conn, connect.will))
}

fn peer_certificate(stream: &Stream) -> Result<PeerCertificate, Refusal> {
    let (_, conn) = stream.get_ref();
    let der = conn
        .peer_certificates()
        .and_then(|c| c.first())
        .ok_or_else(|| {
            Refusal::new(
                RefusalReason::TlsNoClientCertificate,
                "no client certificate after handshake",
            )
        })?
        .to_vec();
    let info = CertInfo::from_der(&der)
        .map_err(|e| Refusal::new(RefusalReason::TlsBadCertificate, e.to_string()))?;
    Ok(PeerCertificate { der, info })
}

/// Reads the CONNECT packet. On error, also says in which protocol a CONNACK can be sent.
async fn read_connect(
    shared: &Shared,
    stream: &mut Stream,
    rbuf: &mut BytesMut,
    deadline: tokio::time::Instant,
) -> Result<Box<Connect>, (Refusal, Option<Protocol>)> {
    loop {
        match decode_packet(rbuf, None, shared.config.max_packet_size) {
            Ok(Some(Packet::Connect(c))) => return Ok(c),
            Ok(Some(other)) => {
                return Err((
                    Refusal::new(
                        RefusalReason::ProtocolError,
                        format!("expected CONNECT, got {}", other.name()),
                    ),
                    None,
                ));
            }
            Ok(None) => {}
            Err(DecodeError::UnsupportedProtocolLevel(level)) => {
                // MQTT 3.1.1 section 3.1.2.2: answer with return code 1, then close.
                return Err((
                    Refusal::new(
                        RefusalReason::UnsupportedProtocol,
                        format!("protocol level {level} (supported: 4 = 3.1.1, 5 = 5.0)"),
                    ),
                    Some(Protocol::V311),
                ));
            }
            Err(e) => return Err((decode_refusal(&e), None)),
        }
        rbuf.reserve(READ_CHUNK);
        match tokio::time::timeout_at(deadline, stream.read_buf(rbuf)).await {
            Err(_) => {
                return Err((
                    Refusal::new(
                        RefusalReason::ConnectTimeout,
                        "no CONNECT within the connect timeout",
                    ),
                    None,
                ));
            }
            Ok(Ok(0)) => {
                return Err((
                    Refusal::new(
                        RefusalReason::ConnectTimeout,
                        "connection closed before CONNECT",
                    ),
                    None,
                ));
            }
            Ok(Ok(n)) => Metrics::add(&shared.metrics.bytes_received, n as u64),
            Ok(Err(e)) => {
                return Err((
                    Refusal::new(
                        RefusalReason::TlsHandshakeFailed,
                        format!("read error: {e}"),
                    ),
                    None,
                ));
            }
        }
    }
}

fn decode_refusal(e: &DecodeError) -> Refusal {
    let reason = match e {
        DecodeError::PacketTooLarge { .. } => RefusalReason::PacketTooLarge,
        e if e.reason_code() == reason::PROTOCOL_ERROR => RefusalReason::ProtocolError,
        DecodeError::UnsupportedProtocolLevel(_) | DecodeError::InvalidProtocolName(_) => {
            RefusalReason::UnsupportedProtocol
        }
        _ => RefusalReason::MalformedPacket,
    };
    Refusal::new(reason, e.to_string())
}

/// Authenticates the certificate and authorizes the CONNECT (client id and will topic).
async fn authorize_connect(
    shared: &Shared,
    connect: &Connect,
    certificate: &PeerCertificate,
    addr: SocketAddr,
) -> Result<Identity, Refusal> {
    if connect.properties.authentication_method.is_some() {
        return Err(Refusal::new(
            RefusalReason::BadAuthenticationMethod,
            "enhanced authentication is not supported; the client certificate is the credential",
        ));
    }
    let identity = shared
        .hooks
        .authenticate(&ConnectRequest {
            client_id: &connect.client_id,
            certificate,
            address: addr,
            protocol: connect.protocol,
        })
        .await?;
    if let Decision::Deny(why) =
        shared
            .authorizer
            .authorize(&identity, Action::Connect, &connect.client_id)
    {
        let reason = if identity.kind == IdentityKind::Device && *connect.client_id != *identity.id
        {
            RefusalReason::ClientIdMismatch
        } else {
            RefusalReason::ConnectNotAuthorized
        };
        return Err(Refusal::new(reason, why));
    }
    if let Some(w) = &connect.will
        && let Decision::Deny(why) =
            shared
                .authorizer
                .authorize(&identity, Action::Publish, &w.topic)
    {
        return Err(Refusal::new(
            RefusalReason::ConnectNotAuthorized,
            format!("will topic refused: {why}"),
        ));
    }
    Ok(identity)
}

async fn send_connack_refusal(stream: &mut Stream, protocol: Protocol, r: &Refusal) {
    let mut buf = BytesMut::new();
    let (code, properties) = match protocol {
        Protocol::V5 => (
            r.reason.v5_code(),
            ConnAckProperties {
                reason_string: Some(r.detail.as_str().into()),
                ..Default::default()
            },
        ),
        Protocol::V311 => (r.reason.v311_connack(), ConnAckProperties::default()),
    };
    encode_packet(
        &Packet::ConnAck(ConnAck {
            session_present: false,
            code,
            properties,
        }),
        protocol,
        &mut buf,
    );
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        stream.write_all(&buf).await?;
        stream.flush().await?;
        stream.shutdown().await
    })
    .await;
}

/// Why the packet loop ended.
enum Exit {
    /// DISCONNECT from the client; MQTT 5 reason 0x04 asks for the will to be published.
    ClientDisconnect {
        publish_will: bool,
    },
    Kicked(Kick),
    Refused(Refusal),
    Closed,
    Shutdown,
}

#[derive(Clone, Copy)]
enum AckKind {
    PubAck,
    PubRec,
}

/// An acknowledgement owed to the client. Acknowledgements go out in the order the PUBLISH
/// packets arrived (MQTT 3.1.1 section 4.6), each once its message is durable.
struct PendingAck {
    kind: AckKind,
    packet_id: u16,
    reason: u8,
    durable: Option<Durable>,
}

enum Event {
    Woken,
    Shutdown,
    Durable(Result<(), String>),
    Read(std::io::Result<usize>),
    Mail,
    KeepAliveExpired,
}

struct Conn {
    shared: Arc<Shared>,
    session: Arc<Session>,
    ctl: Arc<ConnCtl>,
    identity: Identity,
    client_id: Arc<str>,
    protocol: Protocol,
    addr: SocketAddr,
    stream: Stream,
    rbuf: BytesMut,
    wbuf: BytesMut,
    keep_alive: Duration,
    last_read: tokio::time::Instant,
    pending: VecDeque<PendingAck>,
    /// QoS 2 packet ids received and acknowledged with PUBREC, waiting for PUBREL.
    awaiting_release: HashSet<u16>,
    /// Outbound QoS 1 window (client Receive Maximum, capped by configuration).
    out_window: usize,
    client_max_packet: usize,
    window_open: bool,
    scratch: Vec<Delivery>,
    /// The last publish allowed, reused while the authorizer's epoch stands (`answers`).
    publish_answer: PublishAnswer,
    /// The subscribers of the last topic published on (`router` says why).
    route_cache: RouteCache,
}

/// The MQTT 5 properties to send with a delivery now (none for MQTT 3.1.1).
fn properties_for(protocol: Protocol, d: &Delivery, now: Instant) -> Option<PublishProperties> {
    if protocol == Protocol::V5 {
        d.msg.properties_at(now)
    } else {
        None
    }
}

/// Writes one delivery as a PUBLISH packet.
fn encode_delivery(
    wbuf: &mut BytesMut,
    protocol: Protocol,
    d: &Delivery,
    packet_id: Option<u16>,
    dup: bool,
    props: Option<&PublishProperties>,
) {
    encode_publish(
        wbuf,
        protocol,
        &d.msg.topic,
        &d.msg.payload,
        d.qos,
        d.retain,
        dup,
        packet_id,
        props,
    );
}

/// Settles, without waiting, the acknowledgements whose messages are already durable,
/// from the front of the queue up to the first one still waiting.
///
/// The messages of one read are usually committed by the same transaction; without this,
/// each of their completions would wake the connection once and leave in a write of its
/// own (a `writev` per PUBACK was the largest single cost of a QoS 1 message). Polling with
/// a no-op waker is sound here: the first acknowledgement left waiting is the front, and the
/// connection's next `select!` polls it again with its own waker.
fn settle_durable(pending: &mut VecDeque<PendingAck>) {
    let mut cx = Context::from_waker(Waker::noop());
    for p in pending.iter_mut() {
        let Some(d) = p.durable.as_mut() else {
            continue;
        };
        match d.as_mut().poll(&mut cx) {
            Poll::Ready(Ok(())) => p.durable = None,
            Poll::Ready(Err(e)) => {
                // A finished future must not be polled again: keep its failure as a ready
                // one, reported in order when it reaches the front (no acknowledgement).
                p.durable = Some(Box::pin(std::future::ready(Err(e))));
                break;
            }
            Poll::Pending => break,
        }
    }
}

fn front_durable(
    pending: &mut VecDeque<PendingAck>,
) -> impl Future<Output = Result<(), String>> + '_ {
    std::future::poll_fn(
        move |cx| match pending.front_mut().and_then(|p| p.durable.as_mut()) {
            Some(d) => d.as_mut().poll(cx),
            None => Poll::Pending,
        },
    )
}

impl Conn {
    fn v5(&self) -> bool {
        self.protocol == Protocol::V5
    }

    async fn run_loop(&mut self) -> Exit {
        // The futures a connection waits on besides its socket live as long as the loop and
        // are made anew only once they have completed. Made anew on every turn, each turn
        // registered and removed two waiters on notifiers, a cancellation waiter and a timer
        // in the runtime's wheel: about 3% of the hub's CPU samples at the compare's fixed
        // QoS 1 rate, where a device's loop turns once or twice a message
        // (docs/benchmarks.md).
        let (ctl, shared, session) = (
            Arc::clone(&self.ctl),
            Arc::clone(&self.shared),
            Arc::clone(&self.session),
        );
        let mut woken = pin!(ctl.woken());
        let mut shutdown = pin!(shared.shutdown.cancelled());
        let mut mail = pin!(session.mailbox.notified());
        // The keep-alive timer is set for the last read as of when it was set, and only
        // looks at the reads since when it fires: a read does not touch the timer wheel.
        let ka = !self.keep_alive.is_zero();
        let ka_span = self.keep_alive.mul_f32(1.5);
        let mut ka_timer = pin!(tokio::time::sleep_until(self.last_read + ka_span));
        loop {
            self.fill_outbound();
            if !self.wbuf.is_empty()
                && let Err(exit) = self.flush().await
            {
                return exit;
            }
            // Stop reading while too many acknowledgements are owed: the client waits, and
            // TCP carries the back-pressure to it.
            let can_read = self.pending.len() < usize::from(self.shared.config.receive_maximum);
            let durable_waiting = self.pending.front().is_some_and(|p| p.durable.is_some());
            let event = tokio::select! {
                biased;
                () = woken.as_mut() => {
                    woken.set(ctl.woken());
                    Event::Woken
                }
                () = shutdown.as_mut() => Event::Shutdown,
                r = front_durable(&mut self.pending), if durable_waiting => Event::Durable(r),
                r = self.stream.read_buf(&mut self.rbuf), if can_read => Event::Read(r),
                () = mail.as_mut(), if self.window_open => {
                    mail.set(session.mailbox.notified());
                    Event::Mail
                }
                () = ka_timer.as_mut(), if ka => {
                    let deadline = self.last_read + ka_span;
                    if deadline <= tokio::time::Instant::now() {
                        Event::KeepAliveExpired
                    } else {
                        ka_timer.as_mut().reset(deadline);
                        continue;
                    }
                }
            };
            match event {
                Event::Woken => {
                    if let Some(k) = self.ctl.take_kick() {
                        return Exit::Kicked(k);
                    }
                }
                Event::Shutdown => {
                    self.finish_pending().await;
                    return Exit::Shutdown;
                }
                Event::Durable(Ok(())) => self.front_durable_done(),
                Event::Durable(Err(e)) => {
                    return Exit::Refused(Refusal::new(
                        RefusalReason::StorageFailed,
                        format!(
                            "message could not be stored ({e}); closing without acknowledgement so the client resends"
                        ),
                    ));
                }
                Event::Read(Ok(0)) => return Exit::Closed,
                Event::Read(Ok(n)) => {
                    Metrics::add(&self.shared.metrics.bytes_received, n as u64);
                    self.last_read = tokio::time::Instant::now();
                    let dropped = self.queue_full_drops();
                    if let Err(exit) = self.process_input().await {
                        return exit;
                    }
                    // A subscriber's queue overflowed while this input was routed: the hub
                    // takes in more than it can write out. Give way, so that the connections
                    // writing out get their turn before this one reads more.
                    if self.queue_full_drops() != dropped {
                        tokio::task::yield_now().await;
                    }
                    if self.rbuf.is_empty() && n < IDLE_READ {
                        // A small read, all of it consumed: a device sending a reading at
                        // a time, or an idle one (a ping). Give the buffer back (the
                        // readings just decoded share it) and take a small one that such a
                        // read fits whole: idle connections are most of a fleet, and their
                        // memory is what limits a hub's connections. With no buffer at all,
                        // the next read got `BytesMut`'s least, 64 bytes, and a reading took
                        // two turns of this loop and a 4 KiB buffer: about 4% more hub CPU
                        // per message at a fixed QoS 0 rate (docs/benchmarks.md, run AE).
                        self.rbuf = BytesMut::with_capacity(IDLE_READ);
                    } else {
                        self.rbuf.reserve(READ_CHUNK);
                    }
                }
                Event::Read(Err(e)) => {
                    tracing::debug!(client_id = %self.client_id, error = %e, "read error");
                    return Exit::Closed;
                }
                Event::Mail => {
                    if self.session.mailbox.len() < COALESCE_BELOW {
                        tokio::task::yield_now().await;
                    }
                }
                Event::KeepAliveExpired => {
                    return Exit::Refused(Refusal::new(
                        RefusalReason::KeepAliveTimeout,
                        format!(
                            "nothing received for 1.5 x keep-alive ({} s)",
                            self.keep_alive.as_secs()
                        ),
                    ));
                }
            }
        }
    }

    /// Messages dropped for a full subscriber queue, by any connection of the hub.
    fn queue_full_drops(&self) -> u64 {
        self.shared
            .metrics
            .dropped_queue_full
            .load(Ordering::Relaxed)
    }

    async fn flush(&mut self) -> Result<(), Exit> {
        let n = self.wbuf.len();
        let write = async {
            self.stream.write_all(&self.wbuf).await?;
            self.stream.flush().await
        };
        match tokio::time::timeout(self.shared.config.write_timeout, write).await {
            Ok(Ok(())) => {
                Metrics::add(&self.shared.metrics.bytes_sent, n as u64);
                self.wbuf.clear();
                if self.wbuf.capacity() > 4 * WRITE_HIGH_WATER {
                    self.wbuf = BytesMut::new();
                }
                Ok(())
            }
            Ok(Err(e)) => {
                tracing::debug!(client_id = %self.client_id, error = %e, "write error");
                Err(Exit::Closed)
            }
            Err(_) => {
                tracing::warn!(client_id = %self.client_id, "client stopped reading; closing stalled connection");
                Err(Exit::Closed)
            }
        }
    }

    /// Re-sends unacknowledged QoS 1 messages of a resumed session, with DUP set.
    fn resend_inflight(&mut self) {
        let st = self.session.state.lock();
        let now = Instant::now();
        for (pid, d) in st.inflight.iter() {
            let props = properties_for(self.protocol, d, now);
            encode_delivery(
                &mut self.wbuf,
                self.protocol,
                d,
                Some(*pid),
                true,
                props.as_ref(),
            );
        }
    }

    /// Moves deliveries from the mailbox into the write buffer while the outbound window has
    /// room.
    fn fill_outbound(&mut self) {
        let mut delivered = 0u64;
        let now = Instant::now();
        let mut st = self.session.state.lock();
        while self.wbuf.len() < WRITE_HIGH_WATER {
            let room = self.out_window.saturating_sub(st.inflight.len());
            if room == 0 {
                break;
            }
            self.scratch.clear();
            self.session
                .mailbox
                .pop_into(&mut self.scratch, room.min(DELIVERY_BATCH));
            if self.scratch.is_empty() {
                break;
            }
            for d in self.scratch.drain(..) {
                if d.msg.is_expired(now) {
                    Metrics::add(&self.shared.metrics.dropped_expired, 1);
                    continue;
                }
                let props = properties_for(self.protocol, &d, now);
                let size = encoded_publish_len(
                    self.protocol,
                    &d.msg.topic,
                    d.msg.payload.len(),
                    d.qos,
                    props.as_ref(),
                );
                if size > self.client_max_packet {
                    // MQTT 5 section 3.1.2.11.4: never send more than the client accepts.
                    Metrics::add(&self.shared.metrics.dropped_too_large_for_client, 1);
                    continue;
                }
                let pid = if d.qos == QoS::AtMostOnce {
                    None
                } else {
                    Some(st.allocate_packet_id())
                };
                encode_delivery(
                    &mut self.wbuf,
                    self.protocol,
                    &d,
                    pid,
                    false,
                    props.as_ref(),
                );
                if let Some(pid) = pid {
                    st.inflight.push_back(pid, d);
                }
                delivered += 1;
            }
        }
        self.window_open = st.inflight.len() < self.out_window;
        drop(st);
        if delivered > 0 {
            Metrics::add(&self.shared.metrics.messages_delivered, delivered);
        }
    }

    /// Sends acknowledgements at the front of the queue whose messages are durable.
    /// At shutdown: messages already taken are being stored; wait for them (bounded) and
    /// acknowledge those that were, so a client never counts as lost — and drops from its
    /// own buffer — what the hub kept. Nothing more is read.
    async fn finish_pending(&mut self) {
        let deadline = tokio::time::Instant::now() + SHUTDOWN_ACK_WAIT;
        while self.pending.front().is_some_and(|p| p.durable.is_some()) {
            match tokio::time::timeout_at(deadline, front_durable(&mut self.pending)).await {
                Ok(Ok(())) => self.front_durable_done(),
                // Not stored, or not in time: no acknowledgement, the client sends it again.
                Ok(Err(_)) | Err(_) => break,
            }
        }
        self.flush_ready_acks();
        if !self.wbuf.is_empty() {
            let _ = self.flush().await;
        }
    }

    /// The front acknowledgement's message is durable (its future has completed and must
    /// not be polled again): settle it and those behind it already durable, and encode
    /// their acknowledgements.
    fn front_durable_done(&mut self) {
        if let Some(front) = self.pending.front_mut() {
            front.durable = None;
        }
        settle_durable(&mut self.pending);
        self.flush_ready_acks();
    }

    fn flush_ready_acks(&mut self) {
        while self.pending.front().is_some_and(|p| p.durable.is_none()) {
            let Some(p) = self.pending.pop_front() else {
                break;
            };
            let ack = Ack {
                packet_id: p.packet_id,
                reason: if self.v5() { p.reason } else { 0 },
            };
            let packet = match p.kind {
                AckKind::PubAck => Packet::PubAck(ack),
                AckKind::PubRec => Packet::PubRec(ack),
            };
            encode_packet(&packet, self.protocol, &mut self.wbuf);
        }
    }

    async fn process_input(&mut self) -> Result<(), Exit> {
        loop {
            let packet = match decode_packet(
                &mut self.rbuf,
                Some(self.protocol),
                self.shared.config.max_packet_size,
            ) {
                Ok(Some(p)) => p,
                Ok(None) => break,
                Err(e) => return Err(Exit::Refused(decode_refusal(&e))),
            };
            self.handle_packet(packet).await?;
        }
        self.flush_ready_acks();
        Ok(())
    }

    async fn handle_packet(&mut self, packet: Packet) -> Result<(), Exit> {
        match packet {
            Packet::Publish(p) => self.handle_publish(p).await,
            Packet::PubAck(a) => {
                let mut st = self.session.state.lock();
                if st.inflight.remove(a.packet_id) {
                    self.window_open = true;
                }
                Ok(())
            }
            Packet::PubRel(a) => {
                let found = self.awaiting_release.remove(&a.packet_id);
                let reason = if found || !self.v5() {
                    reason::SUCCESS
                } else {
                    reason::PACKET_IDENTIFIER_NOT_FOUND
                };
                encode_packet(
                    &Packet::PubComp(Ack {
                        packet_id: a.packet_id,
                        reason,
                    }),
                    self.protocol,
                    &mut self.wbuf,
                );
                Ok(())
            }
            Packet::Subscribe(s) => {
                let r = self.handle_subscribe(s);
                // The cluster's record follows the session's subscriptions.
                self.shared.announce(&self.session);
                r
            }
            Packet::Unsubscribe(u) => {
                self.handle_unsubscribe(u);
                self.shared.announce(&self.session);
                Ok(())
            }
            Packet::PingReq => {
                encode_packet(&Packet::PingResp, self.protocol, &mut self.wbuf);
                Ok(())
            }
            Packet::Disconnect(d) => {
                if let Some(secs) = d.session_expiry_interval {
                    let mut st = self.session.state.lock();
                    if st.expiry.is_zero() && secs > 0 {
                        // MQTT 5 section 3.14.2.2.2.
                        return Err(Exit::Refused(Refusal::new(
                            RefusalReason::ProtocolError,
                            "DISCONNECT sets a session expiry after CONNECT asked for none",
                        )));
                    }
                    st.expiry = Duration::from_secs(u64::from(secs))
                        .min(self.shared.config.max_session_expiry);
                }
                Err(Exit::ClientDisconnect {
                    publish_will: d.reason == reason::DISCONNECT_WITH_WILL,
                })
            }
            other => Err(Exit::Refused(Refusal::new(
                RefusalReason::ProtocolError,
                format!("{} is not valid from a client here", other.name()),
            ))),
        }
    }

    /// Refuses a PUBLISH: MQTT 5 QoS 1/2 get a negative acknowledgement and the connection
    /// stays up; otherwise the connection is closed (MQTT 3.1.1 has no negative PUBACK).
    fn refuse_publish(&mut self, p: &Publish, r: Refusal) -> Result<(), Exit> {
        if self.v5()
            && let Some(pid) = p.packet_id
        {
            refuse_log(&self.shared, self.addr, Some(&self.client_id), &r);
            self.pending.push_back(PendingAck {
                kind: if p.qos == QoS::ExactlyOnce {
                    AckKind::PubRec
                } else {
                    AckKind::PubAck
                },
                packet_id: pid,
                reason: r.reason.v5_code(),
                durable: None,
            });
            return Ok(());
        }
        Err(Exit::Refused(r))
    }

    async fn handle_publish(&mut self, p: Publish) -> Result<(), Exit> {
        Metrics::add(&self.shared.metrics.messages_received, 1);
        if p.properties.topic_alias.is_some() {
            return Err(Exit::Refused(Refusal::new(
                RefusalReason::TopicAliasInvalid,
                "topic aliases are not accepted (Topic Alias Maximum is 0)",
            )));
        }
        if !p.properties.subscription_identifiers.is_empty() {
            return Err(Exit::Refused(Refusal::new(
                RefusalReason::ProtocolError,
                "a client must not send Subscription Identifier in PUBLISH",
            )));
        }
        if p.qos != QoS::AtMostOnce
            && self.v5()
            && self.pending.len() >= usize::from(self.shared.config.receive_maximum)
        {
            return Err(Exit::Refused(Refusal::new(
                RefusalReason::ReceiveMaximumExceeded,
                format!(
                    "more than {} unacknowledged QoS 1/2 PUBLISH packets",
                    self.shared.config.receive_maximum
                ),
            )));
        }
        if p.qos == QoS::ExactlyOnce
            && let Some(pid) = p.packet_id
            && self.awaiting_release.contains(&pid)
        {
            // Re-sent before our PUBREC arrived: acknowledge again, deliver once.
            self.pending.push_back(PendingAck {
                kind: AckKind::PubRec,
                packet_id: pid,
                reason: reason::SUCCESS,
                durable: None,
            });
            return Ok(());
        }
        // The epoch is read before asking: an answer given after a change is kept as of
        // the epoch before it, and asked again next time.
        let epoch = self.shared.authorizer.epoch();
        if !self.publish_answer.allows(epoch, &p.topic) {
            if let Decision::Deny(why) =
                self.shared
                    .authorizer
                    .authorize(&self.identity, Action::Publish, &p.topic)
            {
                return self.refuse_publish(&p, Refusal::new(RefusalReason::PublishDenied, why));
            }
            self.publish_answer.allowed(epoch, &p.topic);
        }
        let durable = match self.shared.hooks.on_publish(&self.identity, &p).await {
            Ok(d) => d,
            Err(r) => return self.refuse_publish(&p, r),
        };
        let Publish {
            qos,
            retain,
            topic,
            packet_id,
            properties,
            payload,
            ..
        } = p;
        let msg = Arc::new(Message {
            expires_at: properties
                .message_expiry_interval
                .map(|s| Instant::now() + Duration::from_secs(u64::from(s))),
            properties: (!properties.is_empty()).then(|| Box::new(properties)),
            topic,
            payload,
            qos,
            retain,
            publisher: Some(self.client_id.clone()),
        });
        if retain && let Err(e) = self.shared.retain(&msg).await {
            return Err(Exit::Refused(Refusal::new(
                RefusalReason::StorageFailed,
                format!("retained message could not be stored: {e}"),
            )));
        }
        self.shared
            .route_with(msg, Some(&mut self.route_cache))
            .await;
        if let Some(pid) = packet_id {
            let kind = if qos == QoS::ExactlyOnce {
                self.awaiting_release.insert(pid);
                AckKind::PubRec
            } else {
                AckKind::PubAck
            };
            self.pending.push_back(PendingAck {
                kind,
                packet_id: pid,
                reason: reason::SUCCESS,
                durable,
            });
        }
        Ok(())
    }

    fn handle_subscribe(&mut self, s: Subscribe) -> Result<(), Exit> {
        if s.subscription_id.is_some() {
            return Err(Exit::Refused(Refusal::new(
                RefusalReason::ProtocolError,
                "subscription identifiers are not supported (announced in CONNACK)",
            )));
        }
        let v5 = self.v5();
        let failure = |code: u8| {
            if v5 {
                code
            } else {
                reason::v311::SUBACK_FAILURE
            }
        };
        let mut codes = Vec::with_capacity(s.filters.len());
        let now = Instant::now();
        for (filter, mut options) in s.filters {
            if topic::validate_topic_filter(&filter).is_err() {
                self.shared.metrics.refused(RefusalReason::ProtocolError);
                tracing::warn!(client_id = %self.client_id, %filter, "refused subscription: invalid topic filter");
                codes.push(failure(reason::TOPIC_FILTER_INVALID));
                continue;
            }
            if filter.starts_with("$share/") {
                codes.push(failure(reason::SHARED_SUBSCRIPTIONS_NOT_SUPPORTED));
                continue;
            }
            if let Decision::Deny(why) =
                self.shared
                    .authorizer
                    .authorize(&self.identity, Action::Subscribe, &filter)
            {
                let r = Refusal::new(RefusalReason::SubscribeDenied, why);
                refuse_log(&self.shared, self.addr, Some(&self.client_id), &r);
                codes.push(failure(reason::NOT_AUTHORIZED));
                continue;
            }
            // The broker delivers at most QoS 1 (QoS 2 is accepted inbound only).
            options.qos = options.qos.min(QoS::AtLeastOnce);
            let is_new = self.shared.router.subscribe(
                &filter,
                Subscriber {
                    session: self.session.clone(),
                    options,
                },
            );
            if is_new {
                self.shared
                    .metrics
                    .subscriptions
                    .fetch_add(1, Ordering::Relaxed);
            }
            self.session
                .state
                .lock()
                .subscriptions
                .insert(filter.to_string(), options);
            codes.push(options.qos as u8);
            let send_retained = match options.retain_handling {
                RetainHandling::SendAtSubscribe => true,
                RetainHandling::SendIfNew => is_new,
                RetainHandling::DoNotSend => false,
            };
            if send_retained {
                for m in self.shared.router.retained_for(&filter, now) {
                    let d = Delivery {
                        qos: crate::router::delivery_qos(m.qos, options.qos),
                        retain: true,
                        msg: m,
                    };
                    if self.session.mailbox.try_push(d).is_err() {
                        Metrics::add(&self.shared.metrics.dropped_queue_full, 1);
                    }
                }
            }
        }
        encode_packet(
            &Packet::SubAck(SubAck {
                packet_id: s.packet_id,
                reason_string: None,
                codes,
            }),
            self.protocol,
            &mut self.wbuf,
        );
        Ok(())
    }

    fn handle_unsubscribe(&mut self, u: Unsubscribe) {
        let mut codes = Vec::with_capacity(u.filters.len());
        for filter in u.filters {
            let existed = self
                .session
                .state
                .lock()
                .subscriptions
                .remove(&*filter)
                .is_some();
            if existed && self.shared.router.unsubscribe(&filter, &self.session) {
                self.shared
                    .metrics
                    .subscriptions
                    .fetch_sub(1, Ordering::Relaxed);
            }
            codes.push(if existed {
                reason::SUCCESS
            } else {
                reason::NO_SUBSCRIPTION_EXISTED
            });
        }
        encode_packet(
            &Packet::UnsubAck(UnsubAck {
                packet_id: u.packet_id,
                codes: if self.v5() { codes } else { Vec::new() },
            }),
            self.protocol,
            &mut self.wbuf,
        );
    }

    /// Logs and counts the exit, tells an MQTT 5 client why, publishes the will when the
    /// specification says so, and detaches the session.
    async fn finish(mut self, exit: Exit, will: Option<Will>) {
        let (disconnect_reason, publish_will, why) = match &exit {
            Exit::ClientDisconnect { publish_will } => {
                (None, *publish_will, "client disconnected".to_string())
            }
            Exit::Kicked(k) => (Some(k.reason), k.publish_will, k.why.clone()),
            Exit::Refused(r) => {
                refuse_log(&self.shared, self.addr, Some(&self.client_id), r);
                (Some(r.reason.v5_code()), true, r.to_string())
            }
            Exit::Closed => (
                None,
                true,
                "connection closed by the client or the network".into(),
            ),
            Exit::Shutdown => (
                Some(reason::SERVER_SHUTTING_DOWN),
                false,
                "hub shutting down".into(),
            ),
        };
        if let (Some(code), true) = (disconnect_reason, self.v5()) {
            encode_packet(
                &Packet::Disconnect(Disconnect {
                    reason: code,
                    session_expiry_interval: None,
                    reason_string: Some(why.as_str().into()),
                }),
                self.protocol,
                &mut self.wbuf,
            );
        }
        if !self.wbuf.is_empty() && !matches!(exit, Exit::Closed) {
            let _ = tokio::time::timeout(Duration::from_secs(2), async {
                self.stream.write_all(&self.wbuf).await?;
                self.stream.flush().await
            })
            .await;
        }
        let _ = tokio::time::timeout(Duration::from_secs(1), self.stream.shutdown()).await;
        tracing::info!(peer = %self.addr, client_id = %self.client_id, %why, "disconnected");

        if let (Some(will), true) = (will, publish_will) {
            let delay =
                Duration::from_secs(u64::from(will.properties.will_delay_interval.unwrap_or(0)));
            let (expiry, generation) = {
                let st = self.session.state.lock();
                (st.expiry, st.generation)
            };
            if delay.is_zero() || expiry.is_zero() {
                self.shared
                    .publish_will(&self.identity, &self.client_id, will, self.addr)
                    .await;
            } else {
                // MQTT 5 section 3.1.3.2.2: wait; a resumed session cancels the will.
                let shared = self.shared.clone();
                let session = self.session.clone();
                let identity = self.identity.clone();
                let client_id = self.client_id.clone();
                let addr = self.addr;
                tokio::spawn(async move {
                    tokio::time::sleep(delay.min(expiry)).await;
                    let resumed = {
                        let st = session.state.lock();
                        !st.ended && st.generation != generation
                    };
                    if !resumed {
                        shared.publish_will(&identity, &client_id, will, addr).await;
                    }
                });
            }
        }
        self.shared.detach(&self.session, self.ctl.generation).await;
        self.shared
            .hooks
            .on_connection_change(&self.identity, self.addr, false)
            .await;
        self.ctl.finish();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn owed(packet_id: u16, durable: Option<Durable>) -> PendingAck {
        PendingAck {
            kind: AckKind::PubAck,
            packet_id,
            reason: 0,
            durable,
        }
    }

    fn ready(r: Result<(), String>) -> Option<Durable> {
        Some(Box::pin(std::future::ready(r)))
    }

    #[test]
    fn settling_stops_at_the_first_acknowledgement_still_waiting() {
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let waiting: Durable = Box::pin(async move { rx.await.map_err(|e| e.to_string()) });
        let mut pending: VecDeque<PendingAck> = [
            owed(1, ready(Ok(()))),
            owed(2, None),
            owed(3, ready(Ok(()))),
            owed(4, Some(waiting)),
            owed(5, ready(Ok(()))),
        ]
        .into();
        settle_durable(&mut pending);
        let settled: Vec<bool> = pending.iter().map(|p| p.durable.is_none()).collect();
        // 1-3 are durable; 4 is not yet, so 5 waits behind it (acknowledgements go in order).
        assert_eq!(settled, [true, true, true, false, false]);
        drop(tx);
    }

    #[test]
    fn a_failed_store_stays_owed_and_reports_its_failure_when_polled_again() {
        let mut pending: VecDeque<PendingAck> = [
            owed(1, ready(Ok(()))),
            owed(2, ready(Err("disk full".into()))),
            owed(3, ready(Ok(()))),
        ]
        .into();
        settle_durable(&mut pending);
        assert!(pending[0].durable.is_none());
        // Never acknowledged: the failure is kept, and what follows it is not settled.
        assert!(pending[1].durable.is_some());
        assert!(pending[2].durable.is_some());
        pending.pop_front();
        let mut cx = Context::from_waker(Waker::noop());
        let again = pending[0]
            .durable
            .as_mut()
            .map(|d| d.as_mut().poll(&mut cx));
        assert_eq!(again, Some(Poll::Ready(Err("disk full".to_string()))));
    }
}
