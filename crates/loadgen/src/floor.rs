//! The floor under a broker's cost: a server that does only what any MQTT broker over mutual
//! TLS must do, and none of what a broker adds (identity and revocation checks, sessions,
//! authorisation, topic matching, storage, events).
//!
//! - **Connections.** Accept the TCP connection, complete a TLS 1.3 handshake that verifies
//!   the client's certificate against the fleet CA (the same server configuration as
//!   [`crate::handshake`]'s reference), read and decode CONNECT, answer CONNACK.
//! - **Messages.** Decode each PUBLISH, answer a QoS 1 one with PUBACK, and write it on to
//!   every connection that has subscribed (to any filter: the fan-in benchmark has one
//!   subscriber, of `devices/+/telemetry`), at the lower of the two QoS, with a packet id of
//!   that connection's own. A subscriber's pending deliveries are one buffer, written whole
//!   when its task next runs, as the hub coalesces its writes; past
//!   [`MAX_QUEUED`] pending messages further ones are dropped and counted, as Mosquitto's
//!   `max_queued_messages` and the hub's queue bound do. The floor keeps no copy of a QoS 1
//!   delivery (no retransmission) and ignores the subscriber's PUBACKs.
//!
//! `rampart bench compare` runs its connection storm, and its saturation and fixed-rate message
//! phases, against it pinned to a core as the brokers are. The in-memory rustls rate leaves out
//! the kernel's TCP work, the socket reads and writes and the async runtime; this floor has
//! them, so a broker's connections per CPU-second, and its CPU per message, split into what
//! this floor costs and what the broker adds. It accepts only loopback peers and is not a
//! broker: it stores nothing and enforces nothing beyond the client certificate.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use bytes::BytesMut;
use rampart_mqtt::{
    Ack, ConnAck, ConnAckProperties, Packet, Protocol, Publish, QoS, SubAck, decode_packet,
    encode_packet, encode_publish,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

use crate::LoadError;
use crate::fleet::Fleet;
use crate::handshake::server_config;

/// Largest CONNECT accepted (a fleet device's is under 200 bytes).
const MAX_CONNECT: usize = 4096;
/// Largest packet accepted after CONNECT (the benchmark's publishes are a few hundred bytes).
const MAX_PACKET: usize = 64 * 1024;
/// Deliveries a subscriber may have pending before further ones are dropped (the bound
/// `rampart bench compare` gives Mosquitto and the hub).
pub const MAX_QUEUED: usize = 10_000;
/// How much a read asks for at least.
const READ_CHUNK: usize = 16 * 1024;

/// What the floor passes between its connections, and what it dropped.
#[derive(Default)]
struct Relay {
    subscribers: Mutex<Vec<Arc<Outbox>>>,
    /// Deliveries dropped because a subscriber had [`MAX_QUEUED`] pending.
    dropped: AtomicU64,
}

/// One subscriber's pending deliveries.
struct Outbox {
    protocol: Protocol,
    state: Mutex<Pending>,
    ready: Notify,
}

struct Pending {
    /// Encoded PUBLISH packets not yet written.
    buf: BytesMut,
    /// How many packets `buf` holds.
    queued: usize,
    /// The QoS the subscription was granted.
    qos: QoS,
    next_id: u16,
}

impl Outbox {
    fn new(protocol: Protocol, qos: QoS) -> Arc<Outbox> {
        Arc::new(Outbox {
            protocol,
            state: Mutex::new(Pending {
                buf: BytesMut::new(),
                queued: 0,
                qos,
                next_id: 0,
            }),
            ready: Notify::new(),
        })
    }

    /// Takes every pending delivery into `into` (emptied first). Swapped rather than copied:
    /// the emptied buffer takes the next ones.
    fn take(&self, into: &mut BytesMut) {
        let mut st = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        into.clear();
        std::mem::swap(&mut st.buf, into);
        st.queued = 0;
    }
}

impl Relay {
    /// Writes `p` into every subscriber's pending buffer.
    fn forward(&self, p: &Publish) {
        let subscribers = self
            .subscribers
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        for out in subscribers.iter() {
            let mut st = out.state.lock().unwrap_or_else(PoisonError::into_inner);
            if st.queued >= MAX_QUEUED {
                self.dropped.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            let qos = p.qos.min(st.qos);
            let id = (qos != QoS::AtMostOnce).then(|| {
                // Packet id 0 is not allowed; wrap from 65,535 to 1.
                st.next_id = st.next_id.checked_add(1).unwrap_or(1);
                st.next_id
            });
            encode_publish(
                &mut st.buf,
                out.protocol,
                &p.topic,
                &p.payload,
                qos,
                false,
                false,
                id,
                None,
            );
            st.queued += 1;
            // The subscriber's task takes everything pending at once: only the first
            // packet since then needs to wake it.
            let wake = st.queued == 1;
            drop(st);
            if wake {
                out.ready.notify_one();
            }
        }
    }

    fn add(&self, out: Arc<Outbox>) {
        self.subscribers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(out);
    }

    fn remove(&self, out: &Arc<Outbox>) {
        self.subscribers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .retain(|o| !Arc::ptr_eq(o, out));
    }
}

/// Accepts connections on `listener` until the process ends.
pub async fn serve(listener: TcpListener, fleet: &Fleet) -> Result<(), LoadError> {
    let acceptor = TlsAcceptor::from(server_config(fleet)?);
    let relay = Arc::new(Relay::default());
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                // Out of file descriptors, most likely: the storm goes on with those accepted.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                continue;
            }
        };
        if !peer.ip().is_loopback() {
            tracing::warn!(%peer, "refused: the floor acceptor serves loopback peers only");
            continue;
        }
        let acceptor = acceptor.clone();
        let relay = relay.clone();
        tokio::spawn(async move {
            if let Err(e) = connection(acceptor, tcp, &relay).await {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
        });
    }
}

/// One connection: handshake, CONNECT, CONNACK, then publishes and subscriptions until the
/// client closes.
async fn connection(acceptor: TlsAcceptor, tcp: TcpStream, relay: &Relay) -> Result<(), String> {
    // As the hub and Mosquitto do: CONNACK goes out at once.
    tcp.set_nodelay(true).map_err(|e| e.to_string())?;
    let mut tls = acceptor
        .accept(tcp)
        .await
        .map_err(|e| format!("TLS handshake: {e}"))?;
    let mut buf = BytesMut::with_capacity(512);
    let connect = loop {
        if let Some(p) = decode_packet(&mut buf, None, MAX_CONNECT).map_err(|e| e.to_string())? {
            break p;
        }
        if tls.read_buf(&mut buf).await.map_err(|e| e.to_string())? == 0 {
            return Err("closed before CONNECT".into());
        }
    };
    // decode_packet accepts nothing but CONNECT first (None = no protocol yet).
    let Packet::Connect(connect) = connect else {
        return Err("the first packet was not CONNECT".into());
    };
    let mut out = BytesMut::with_capacity(8);
    encode_packet(
        &Packet::ConnAck(ConnAck {
            session_present: false,
            code: 0,
            properties: ConnAckProperties::default(),
        }),
        connect.protocol,
        &mut out,
    );
    tls.write_all(&out).await.map_err(|e| e.to_string())?;
    tls.flush().await.map_err(|e| e.to_string())?;
    let mut session = Session {
        protocol: connect.protocol,
        rbuf: buf,
        wbuf: out,
        subscribed: None,
    };
    let ended = session.run(&mut tls, relay).await;
    if let Some(out) = &session.subscribed {
        relay.remove(out);
        tracing::info!(
            dropped = relay.dropped.load(Ordering::Relaxed),
            "a subscriber left; deliveries dropped so far (a subscriber's queue full)"
        );
    }
    ended
}

/// Resolves when `out` has deliveries pending; never without a subscription.
async fn ready(out: Option<&Outbox>) {
    match out {
        Some(out) => out.ready.notified().await,
        None => std::future::pending().await,
    }
}

/// A connection past CONNACK.
struct Session {
    protocol: Protocol,
    rbuf: BytesMut,
    wbuf: BytesMut,
    subscribed: Option<Arc<Outbox>>,
}

impl Session {
    async fn run(&mut self, tls: &mut TlsStream<TcpStream>, relay: &Relay) -> Result<(), String> {
        loop {
            self.wbuf.clear();
            tokio::select! {
                r = tls.read_buf(&mut self.rbuf) => {
                    if r.map_err(|e| e.to_string())? == 0 {
                        return Ok(());
                    }
                    if !self.packets(relay)? {
                        return Ok(());
                    }
                    self.rbuf.reserve(READ_CHUNK);
                }
                () = ready(self.subscribed.as_deref()) => {
                    if let Some(out) = &self.subscribed {
                        out.take(&mut self.wbuf);
                    }
                }
            }
            if !self.wbuf.is_empty() {
                tls.write_all(&self.wbuf).await.map_err(|e| e.to_string())?;
                tls.flush().await.map_err(|e| e.to_string())?;
            }
        }
    }

    /// Handles every whole packet read; `false` once the client sent DISCONNECT.
    fn packets(&mut self, relay: &Relay) -> Result<bool, String> {
        while let Some(p) = decode_packet(&mut self.rbuf, Some(self.protocol), MAX_PACKET)
            .map_err(|e| e.to_string())?
        {
            match p {
                Packet::Publish(p) => {
                    relay.forward(&p);
                    if let (QoS::AtLeastOnce, Some(id)) = (p.qos, p.packet_id) {
                        let ack = Packet::PubAck(Ack {
                            packet_id: id,
                            reason: 0,
                        });
                        encode_packet(&ack, self.protocol, &mut self.wbuf);
                    }
                }
                Packet::Subscribe(s) => {
                    let granted: Vec<QoS> = s
                        .filters
                        .iter()
                        .map(|(_, o)| o.qos.min(QoS::AtLeastOnce))
                        .collect();
                    let qos = granted.iter().copied().max().unwrap_or(QoS::AtMostOnce);
                    let codes = granted.into_iter().map(|q| q as u8).collect();
                    if self.subscribed.is_none() {
                        let out = Outbox::new(self.protocol, qos);
                        relay.add(out.clone());
                        self.subscribed = Some(out);
                    }
                    let ack = Packet::SubAck(SubAck {
                        packet_id: s.packet_id,
                        reason_string: None,
                        codes,
                    });
                    encode_packet(&ack, self.protocol, &mut self.wbuf);
                }
                // A subscriber's acknowledgements: the floor keeps nothing to release.
                Packet::PubAck(_) => {}
                Packet::PingReq => encode_packet(&Packet::PingResp, self.protocol, &mut self.wbuf),
                Packet::Disconnect(_) => return Ok(false),
                other => return Err(format!("{} is not handled by the floor", other.name())),
            }
        }
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use rampart_mqtt::{Connect, ConnectProperties, Protocol};
    use rustls::pki_types::ServerName;
    use tokio_rustls::TlsConnector;

    use super::*;
    use crate::client::tls_config;

    async fn connect(
        port: u16,
        config: Arc<rustls::ClientConfig>,
        protocol: Protocol,
    ) -> Result<Packet, String> {
        let tcp = TcpStream::connect(("127.0.0.1", port))
            .await
            .map_err(|e| e.to_string())?;
        let name = ServerName::try_from("localhost").map_err(|e| e.to_string())?;
        let mut tls = TlsConnector::from(config)
            .connect(name, tcp)
            .await
            .map_err(|e| e.to_string())?;
        let mut out = BytesMut::new();
        encode_packet(
            &Packet::Connect(Box::new(Connect {
                protocol,
                clean_start: true,
                keep_alive: 30,
                client_id: "floor-test".into(),
                will: None,
                username: None,
                password: None,
                properties: ConnectProperties::default(),
            })),
            protocol,
            &mut out,
        );
        tls.write_all(&out).await.map_err(|e| e.to_string())?;
        let mut buf = BytesMut::new();
        loop {
            if let Some(p) =
                decode_packet(&mut buf, Some(protocol), 1024).map_err(|e| e.to_string())?
            {
                return Ok(p);
            }
            if tls.read_buf(&mut buf).await.map_err(|e| e.to_string())? == 0 {
                return Err("closed before CONNACK".into());
            }
        }
    }

    /// A fleet of `devices` and a floor serving it on a loopback port.
    async fn start(devices: usize) -> (Fleet, u16) {
        let fleet = Fleet::issue(devices).unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let served = fleet.clone();
        tokio::spawn(async move { serve(listener, &served).await });
        (fleet, port)
    }

    /// A fleet device gets CONNACK over 3.1.1 and 5.0; a client whose certificate another CA
    /// issued does not get past the handshake.
    #[tokio::test]
    async fn answers_fleet_devices_and_refuses_other_certificates() {
        let (fleet, port) = start(1).await;
        let d = &fleet.devices[0];
        let trust = crate::trust::ServerTrust::from_pem(&fleet.ca_pem).unwrap();
        let good = tls_config(&trust, &d.cert_pem, &d.key_pem).unwrap();
        for protocol in [Protocol::V311, Protocol::V5] {
            match connect(port, good.clone(), protocol).await.unwrap() {
                Packet::ConnAck(a) => assert_eq!(a.code, 0),
                other => panic!("expected CONNACK, got {other:?}"),
            }
        }
        let other = Fleet::issue(1).unwrap();
        let o = &other.devices[0];
        // Trusts the server (the first fleet's CA), presents a certificate of another CA.
        let bad = tls_config(&trust, &o.cert_pem, &o.key_pem).unwrap();
        let refused = connect(port, bad, Protocol::V311).await;
        assert!(refused.is_err(), "{refused:?}");
    }

    async fn session(
        fleet: &Fleet,
        port: u16,
        device: usize,
        protocol: Protocol,
    ) -> crate::client::Conn {
        let trust = crate::trust::ServerTrust::from_pem(&fleet.ca_pem).unwrap();
        let d = &fleet.devices[device];
        let target = crate::client::Target {
            addr: ([127, 0, 0, 1], port).into(),
            server_name: ServerName::try_from("localhost").unwrap(),
        };
        crate::client::connect(
            &target,
            tls_config(&trust, &d.cert_pem, &d.key_pem).unwrap(),
            None,
            &d.id,
            protocol,
            std::time::Duration::from_secs(10),
        )
        .await
        .unwrap()
    }

    async fn send(conn: &mut crate::client::Conn, packet: Packet) {
        let mut out = BytesMut::new();
        encode_packet(&packet, conn.protocol, &mut out);
        conn.writer.write_all(&out).await.unwrap();
    }

    async fn next(conn: &mut crate::client::Conn) -> Vec<Packet> {
        let mut got = Vec::new();
        tokio::time::timeout(
            std::time::Duration::from_secs(10),
            conn.reader.read_packets(&mut got),
        )
        .await
        .expect("a packet within 10 s")
        .unwrap();
        got
    }

    fn publish(qos: QoS, id: Option<u16>, payload: &'static [u8]) -> Packet {
        Packet::Publish(Publish {
            dup: false,
            qos,
            retain: false,
            topic: "devices/d0/telemetry".into(),
            packet_id: id,
            properties: Default::default(),
            payload: bytes::Bytes::from_static(payload),
        })
    }

    /// What the floor does for the message phases, over real mutual-TLS sessions: SUBACK
    /// with the QoS granted, PUBACK to a QoS 1 publisher with its packet id, each PUBLISH
    /// written on to the subscriber at the lower QoS with a packet id of the subscriber's own,
    /// PINGRESP; over 3.1.1 and 5.0.
    #[tokio::test]
    async fn relays_publishes_to_the_subscriber_and_acknowledges_qos_1() {
        let (fleet, port) = start(2).await;
        for protocol in [Protocol::V311, Protocol::V5] {
            let mut sub = session(&fleet, port, 0, protocol).await;
            send(
                &mut sub,
                Packet::Subscribe(rampart_mqtt::Subscribe {
                    packet_id: 9,
                    subscription_id: None,
                    user_properties: Vec::new(),
                    filters: vec![(
                        "devices/+/telemetry".into(),
                        rampart_mqtt::SubscriptionOptions::with_qos(QoS::AtLeastOnce),
                    )],
                }),
            )
            .await;
            match next(&mut sub).await.as_slice() {
                [Packet::SubAck(a)] => assert_eq!((a.packet_id, a.codes.as_slice()), (9, &[1][..])),
                other => panic!("expected SUBACK, got {other:?}"),
            }
            let mut publisher = session(&fleet, port, 1, protocol).await;
            send(&mut publisher, publish(QoS::AtLeastOnce, Some(77), b"one")).await;
            match next(&mut publisher).await.as_slice() {
                [Packet::PubAck(a)] => assert_eq!(a.packet_id, 77),
                other => panic!("expected PUBACK 77, got {other:?}"),
            }
            send(&mut publisher, publish(QoS::AtMostOnce, None, b"two")).await;
            send(&mut publisher, Packet::PingReq).await;
            assert_eq!(next(&mut publisher).await, vec![Packet::PingResp]);
            let mut delivered = Vec::new();
            while delivered.len() < 2 {
                delivered.extend(next(&mut sub).await);
            }
            match delivered.as_slice() {
                [Packet::Publish(a), Packet::Publish(b)] => {
                    assert_eq!(
                        (a.qos, a.packet_id, &a.topic[..], &a.payload[..]),
                        (
                            QoS::AtLeastOnce,
                            Some(1),
                            "devices/d0/telemetry",
                            &b"one"[..]
                        )
                    );
                    assert_eq!(
                        (b.qos, b.packet_id, &b.payload[..]),
                        (QoS::AtMostOnce, None, &b"two"[..])
                    );
                }
                other => panic!("expected the two publishes, got {other:?}"),
            }
            // The subscriber leaves; a publish after that reaches nobody and is still
            // acknowledged.
            send(
                &mut sub,
                Packet::Disconnect(rampart_mqtt::Disconnect {
                    reason: 0,
                    session_expiry_interval: None,
                    reason_string: None,
                }),
            )
            .await;
            drop(sub);
            send(
                &mut publisher,
                publish(QoS::AtLeastOnce, Some(78), b"three"),
            )
            .await;
            match next(&mut publisher).await.as_slice() {
                [Packet::PubAck(a)] => assert_eq!(a.packet_id, 78),
                other => panic!("expected PUBACK 78, got {other:?}"),
            }
        }
    }

    /// A subscriber with `MAX_QUEUED` deliveries pending gets no more: the next is dropped
    /// and counted, and once its task has taken the pending ones, deliveries queue again.
    #[test]
    fn a_full_subscriber_queue_drops_and_counts() {
        let relay = Relay::default();
        let out = Outbox::new(Protocol::V311, QoS::AtMostOnce);
        relay.add(out.clone());
        let Packet::Publish(p) = publish(QoS::AtLeastOnce, Some(1), b"x") else {
            unreachable!()
        };
        for _ in 0..MAX_QUEUED + 3 {
            relay.forward(&p);
        }
        assert_eq!(relay.dropped.load(Ordering::Relaxed), 3);
        assert_eq!(out.state.lock().unwrap().queued, MAX_QUEUED);
        let mut taken = BytesMut::new();
        out.take(&mut taken);
        // Granted QoS 0: delivered at QoS 0, no packet id (2 + 20 topic + 1 payload bytes).
        assert_eq!(taken.len(), MAX_QUEUED * (2 + 22 + 1));
        relay.forward(&p);
        assert_eq!(relay.dropped.load(Ordering::Relaxed), 3);
        relay.remove(&out);
        relay.forward(&p);
        assert_eq!(out.state.lock().unwrap().queued, 1);
    }
}
