//! MQTT behaviour of the hub, checked byte-exactly with a raw client: QoS levels, persistent
//! sessions, will messages, keep-alive, session takeover and the MQTT 5 CONNACK properties.

#![allow(clippy::unwrap_used)] // helpers outside #[test] fns; a failed unwrap fails the test

use std::time::Duration;

use bytes::Bytes;
use rampart_e2e::raw::{RawClient, Received};
use rampart_e2e::*;
use rampart_mqtt::{
    Ack, ConnAck, ConnectProperties, Packet, Protocol, Publish, PublishProperties, QoS, Subscribe,
    SubscriptionOptions, Will, WillProperties, reason,
};

const T: Duration = Duration::from_secs(5);

fn publish(topic: &str, qos: QoS, pid: u16, payload: &'static [u8]) -> Packet {
    Packet::Publish(Publish {
        dup: false,
        qos,
        retain: false,
        topic: topic.into(),
        packet_id: (qos != QoS::AtMostOnce).then_some(pid),
        properties: PublishProperties::default(),
        payload: Bytes::from_static(payload),
    })
}

fn subscribe(pid: u16, filter: &str, qos: QoS) -> Packet {
    Packet::Subscribe(Subscribe {
        packet_id: pid,
        subscription_id: None,
        user_properties: vec![],
        filters: vec![(filter.into(), SubscriptionOptions::with_qos(qos))],
    })
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Runtime::new().unwrap()
}

#[test]
fn qos0_qos1_and_qos2_publishes_are_delivered() {
    let hub = TestHub::start_new();
    let dev = hub.add_device("gw-a");
    runtime().block_on(async {
        for protocol in [Protocol::V311, Protocol::V5] {
            let mut c = RawClient::connect_ok(hub.addr(), &dev, protocol).await;
            c.send(&subscribe(1, "devices/gw-a/+", QoS::ExactlyOnce))
                .await;
            let p = c.expect(T, |p| matches!(p, Packet::SubAck(_))).await;
            // QoS 2 subscriptions are granted QoS 1 (the hub's outbound maximum).
            let Packet::SubAck(s) = p else { unreachable!() };
            assert_eq!(s.codes, vec![1]);

            c.send(&publish("devices/gw-a/q0", QoS::AtMostOnce, 0, b"zero"))
                .await;
            let p = c.expect(T, |p| matches!(p, Packet::Publish(_))).await;
            let Packet::Publish(m) = p else {
                unreachable!()
            };
            assert_eq!(
                (&*m.topic, m.qos, &m.payload[..]),
                ("devices/gw-a/q0", QoS::AtMostOnce, &b"zero"[..])
            );

            c.send(&publish("devices/gw-a/q1", QoS::AtLeastOnce, 10, b"one"))
                .await;
            let mut got_ack = false;
            let mut got_msg = None;
            while !(got_ack && got_msg.is_some()) {
                match c.recv(T).await {
                    Received::Packet(Packet::PubAck(a)) => {
                        assert_eq!(
                            a,
                            Ack {
                                packet_id: 10,
                                reason: 0
                            }
                        );
                        got_ack = true;
                    }
                    Received::Packet(Packet::Publish(m)) => got_msg = Some(m),
                    other => panic!("{other:?}"),
                }
            }
            let m = got_msg.unwrap();
            assert_eq!(m.qos, QoS::AtLeastOnce);
            c.send(&Packet::PubAck(Ack {
                packet_id: m.packet_id.unwrap(),
                reason: 0,
            }))
            .await;

            // QoS 2 inbound: PUBREC, PUBREL, PUBCOMP; a re-sent PUBLISH is delivered once.
            let mut deliveries = 0;
            let mut log = Vec::new();
            let step = |p: Packet, deliveries: &mut i32, log: &mut Vec<Packet>| {
                if let Packet::Publish(m) = &p
                    && &*m.topic == "devices/gw-a/q2"
                {
                    *deliveries += 1;
                    assert_eq!(m.qos, QoS::AtLeastOnce);
                }
                log.push(p);
            };
            c.send(&publish("devices/gw-a/q2", QoS::ExactlyOnce, 20, b"two"))
                .await;
            let mut dup = publish("devices/gw-a/q2", QoS::ExactlyOnce, 20, b"two");
            if let Packet::Publish(p) = &mut dup {
                p.dup = true;
            }
            c.send(&dup).await;
            c.send(&Packet::PubRel(Ack {
                packet_id: 20,
                reason: 0,
            }))
            .await;
            loop {
                match c.recv(Duration::from_millis(700)).await {
                    Received::Packet(p) => step(p, &mut deliveries, &mut log),
                    Received::Timeout => break,
                    Received::Closed => panic!("closed: {log:?}"),
                }
            }
            let recs = log
                .iter()
                .filter(|p| {
                    matches!(
                        p,
                        Packet::PubRec(Ack {
                            packet_id: 20,
                            reason: 0
                        })
                    )
                })
                .count();
            assert_eq!(recs, 2, "one PUBREC per PUBLISH: {log:?}");
            assert!(
                log.contains(&Packet::PubComp(Ack {
                    packet_id: 20,
                    reason: 0
                })),
                "{log:?}"
            );
            assert_eq!(
                deliveries, 1,
                "{protocol:?}: exactly one delivery of the QoS 2 message"
            );
        }
    });
}

#[test]
fn persistent_session_resends_unacknowledged_messages_with_dup() {
    let hub = TestHub::start_new();
    let dev = hub.add_device("gw-a");
    runtime().block_on(async {
        let (mut c, r) = RawClient::connect(
            hub.addr(),
            &dev,
            Protocol::V311,
            "gw-a",
            false,
            60,
            None,
            ConnectProperties::default(),
        )
        .await;
        assert!(matches!(
            r,
            Received::Packet(Packet::ConnAck(ConnAck {
                session_present: false,
                code: 0,
                ..
            }))
        ));
        c.send(&subscribe(1, "devices/gw-a/cmd", QoS::AtLeastOnce))
            .await;
        c.expect(T, |p| matches!(p, Packet::SubAck(_))).await;
        c.send(&publish("devices/gw-a/cmd", QoS::AtLeastOnce, 7, b"reboot"))
            .await;
        // Receive the delivery but never acknowledge it, then drop the connection.
        let p = c.expect(T, |p| matches!(p, Packet::Publish(_))).await;
        let Packet::Publish(first) = p else {
            unreachable!()
        };
        assert!(!first.dup);
        drop(c);

        let (mut c, present) = RawClient::connect_session(
            hub.addr(),
            &dev,
            Protocol::V311,
            "gw-a",
            false,
            ConnectProperties::default(),
        )
        .await;
        assert!(present, "the session was not kept");
        let p = c.expect(T, |p| matches!(p, Packet::Publish(_))).await;
        let Packet::Publish(again) = p else {
            unreachable!()
        };
        assert!(again.dup, "re-sent with DUP");
        assert_eq!(again.packet_id, first.packet_id);
        assert_eq!(&again.payload[..], b"reboot");
        c.send(&Packet::PubAck(Ack {
            packet_id: again.packet_id.unwrap(),
            reason: 0,
        }))
        .await;
        // The subscription survived too: a new message arrives without re-subscribing.
        c.send(&publish("devices/gw-a/cmd", QoS::AtMostOnce, 0, b"ping"))
            .await;
        c.expect(
            T,
            |p| matches!(p, Packet::Publish(m) if &m.payload[..] == b"ping"),
        )
        .await;

        // A clean start discards the session.
        drop(c);
        let (_c, r) = RawClient::connect(
            hub.addr(),
            &dev,
            Protocol::V311,
            "gw-a",
            true,
            60,
            None,
            ConnectProperties::default(),
        )
        .await;
        assert!(matches!(
            r,
            Received::Packet(Packet::ConnAck(ConnAck {
                session_present: false,
                ..
            }))
        ));
    });
}

fn will(payload: &'static [u8]) -> Option<Will> {
    Some(Will {
        topic: "devices/gw-a/status".into(),
        payload: Bytes::from_static(payload),
        qos: QoS::AtLeastOnce,
        retain: true,
        properties: WillProperties::default(),
    })
}

async fn retained_status(hub: &TestHub, dev: &Bundle) -> Option<Bytes> {
    let mut c = RawClient::connect_ok(hub.addr(), dev, Protocol::V5).await;
    c.send(&subscribe(1, "devices/gw-a/status", QoS::AtMostOnce))
        .await;
    c.expect(T, |p| matches!(p, Packet::SubAck(_))).await;
    match c.recv(Duration::from_millis(500)).await {
        Received::Packet(Packet::Publish(p)) => Some(p.payload),
        _ => None,
    }
}

#[test]
fn will_is_published_on_abnormal_disconnect_only() {
    let hub = TestHub::start_new();
    let dev = hub.add_device("gw-a");
    runtime().block_on(async {
        // Clean DISCONNECT: no will.
        let (mut c, _) = RawClient::connect(
            hub.addr(),
            &dev,
            Protocol::V5,
            "gw-a",
            true,
            60,
            will(b"clean"),
            ConnectProperties::default(),
        )
        .await;
        c.send(&Packet::Disconnect(rampart_mqtt::Disconnect {
            reason: 0,
            session_expiry_interval: None,
            reason_string: None,
        }))
        .await;
        let _ = c.recv(T).await;
        assert_eq!(retained_status(&hub, &dev).await, None);

        // Connection dropped without DISCONNECT: the will is published (and retained here).
        let (c, _) = RawClient::connect(
            hub.addr(),
            &dev,
            Protocol::V311,
            "gw-a",
            true,
            60,
            will(b"lost"),
            ConnectProperties::default(),
        )
        .await;
        drop(c);
        assert!(hub.logs.wait_for(&["disconnected", "gw-a"], T));
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(
            retained_status(&hub, &dev).await.as_deref(),
            Some(&b"lost"[..])
        );

        // A will outside the device namespace is refused at CONNECT.
        let bad = Some(Will {
            topic: "devices/gw-b/status".into(),
            payload: Bytes::from_static(b"x"),
            qos: QoS::AtMostOnce,
            retain: false,
            properties: WillProperties::default(),
        });
        let (_, r) = RawClient::connect(
            hub.addr(),
            &dev,
            Protocol::V5,
            "gw-a",
            true,
            60,
            bad,
            ConnectProperties::default(),
        )
        .await;
        assert!(
            matches!(
                r,
                Received::Packet(Packet::ConnAck(ConnAck {
                    code: reason::NOT_AUTHORIZED,
                    ..
                }))
            ),
            "{r:?}"
        );
    });
    hub.expect_refusal("connect_not_authorized", 1);
}

#[test]
fn silent_client_is_dropped_after_one_and_a_half_keep_alives() {
    let hub = TestHub::start_new();
    let dev = hub.add_device("gw-a");
    runtime().block_on(async {
        let (mut c, r) = RawClient::connect(
            hub.addr(),
            &dev,
            Protocol::V5,
            "gw-a",
            true,
            1,
            None,
            ConnectProperties::default(),
        )
        .await;
        assert!(matches!(r, Received::Packet(Packet::ConnAck(_))));
        let t0 = std::time::Instant::now();
        let seen = c.closed_after(Duration::from_secs(5)).await;
        let waited = t0.elapsed();
        assert!(
            waited >= Duration::from_millis(1400) && waited < Duration::from_secs(3),
            "{waited:?}"
        );
        assert!(
            seen.iter().any(
                |p| matches!(p, Packet::Disconnect(d) if d.reason == reason::KEEP_ALIVE_TIMEOUT)
            ),
            "{seen:?}"
        );
        // PINGREQ keeps a connection alive.
        let (mut c, _) = RawClient::connect(
            hub.addr(),
            &dev,
            Protocol::V311,
            "gw-a",
            true,
            1,
            None,
            ConnectProperties::default(),
        )
        .await;
        for _ in 0..4 {
            tokio::time::sleep(Duration::from_millis(700)).await;
            c.send(&Packet::PingReq).await;
            assert_eq!(c.recv(T).await, Received::Packet(Packet::PingResp));
        }
    });
    hub.expect_refusal("keep_alive_timeout", 1);
}

#[test]
fn a_second_connection_takes_the_session_over() {
    let hub = TestHub::start_new();
    let dev = hub.add_device("gw-a");
    runtime().block_on(async {
        let mut first = RawClient::connect_ok(hub.addr(), &dev, Protocol::V5).await;
        let _second = RawClient::connect_ok(hub.addr(), &dev, Protocol::V5).await;
        let seen = first.closed_after(T).await;
        assert!(
            seen.iter().any(
                |p| matches!(p, Packet::Disconnect(d) if d.reason == reason::SESSION_TAKEN_OVER)
            ),
            "{seen:?}"
        );
    });
}

#[test]
fn mqtt5_connack_announces_the_hub_limits() {
    let hub = TestHub::start_new();
    let dev = hub.add_device("gw-a");
    runtime().block_on(async {
        let (_c, r) = RawClient::connect(
            hub.addr(),
            &dev,
            Protocol::V5,
            "gw-a",
            true,
            0,
            None,
            ConnectProperties {
                session_expiry_interval: Some(u32::MAX),
                ..Default::default()
            },
        )
        .await;
        let Received::Packet(Packet::ConnAck(ack)) = r else {
            panic!("{r:?}")
        };
        let p = ack.properties;
        assert_eq!(ack.code, 0);
        assert_eq!(p.maximum_packet_size, Some(262_144));
        assert_eq!(p.receive_maximum, Some(1024));
        assert_eq!(p.retain_available, Some(true));
        assert_eq!(p.shared_subscription_available, Some(false));
        assert_eq!(p.subscription_identifiers_available, Some(false));
        // Keep-alive 0 is replaced by the hub's maximum; the session expiry is capped.
        assert_eq!(p.server_keep_alive, Some(1200));
        assert_eq!(p.session_expiry_interval, Some(7 * 24 * 3600));
    });
}
