//! Every bad input is refused with a specific, logged and counted reason, and nothing refused
//! is delivered or stored.

#![allow(clippy::unwrap_used)] // helpers outside #[test] fns; a failed unwrap fails the test

use std::time::Duration;

use rampart_e2e::raw::{RawClient, Received, tls_config};
use rampart_e2e::*;
use rampart_mqtt::{
    Ack, ConnAck, ConnectProperties, Packet, Protocol, Publish, PublishProperties, QoS, SubAck,
    Subscribe, SubscriptionOptions, reason,
};
use rampart_pki::{Authority, KeyAlgorithm, Validity, files};

const T: Duration = Duration::from_secs(5);

/// A bundle whose certificate is made here with the hub's device CA (not via the CLI).
fn custom_bundle(hub: &TestHub, id: &str, validity: Validity) -> Bundle {
    let ca = Authority::load(
        &hub.data.join("pki/device-ca.crt"),
        &hub.data.join("pki/device-ca.key"),
    )
    .unwrap();
    let (cert, key) = ca
        .issue_device(id, KeyAlgorithm::EcdsaP256, validity)
        .unwrap();
    let dir = hub.tmp.path().join("custom").join(id);
    files::create_private_dir(&dir).unwrap();
    files::write_public(&dir.join("device.crt"), cert.pem.as_bytes(), false).unwrap();
    files::write_secret(&dir.join("device.key"), key.to_pem().as_bytes(), false).unwrap();
    std::fs::copy(hub.data.join("pki/ca-chain.crt"), dir.join("ca-chain.crt")).unwrap();
    Bundle { id: id.into(), dir }
}

fn publish(topic: &str, qos: QoS, payload: &[u8]) -> Packet {
    Packet::Publish(Publish {
        dup: false,
        qos,
        retain: false,
        topic: topic.into(),
        packet_id: (qos != QoS::AtMostOnce).then_some(1),
        properties: PublishProperties::default(),
        payload: bytes::Bytes::copy_from_slice(payload),
    })
}

#[test]
fn no_client_certificate() {
    let hub = TestHub::start_new();
    let dev = hub.add_device("gw-a");
    let out = std::process::Command::new("mosquitto_pub")
        .args(["-h", "localhost", "-p", &hub.port.to_string(), "--cafile"])
        .arg(dev.ca())
        .args(["-i", "gw-a", "-t", "devices/gw-a/x", "-m", "x", "-q", "1"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    hub.expect_refusal("tls_no_client_certificate", 1);
}

#[test]
fn certificate_from_another_ca() {
    let hub = TestHub::start_new();
    let other = TestHub::init();
    let foreign = other.add_device("gw-a");
    // Trust the right hub, present a certificate from the other hub's CA.
    std::fs::copy(hub.data.join("pki/ca-chain.crt"), foreign.ca()).unwrap();
    let out = hub.mosquitto_pub(&foreign, &["-t", "devices/gw-a/x", "-m", "x", "-q", "1"]);
    assert!(!out.status.success());
    hub.expect_refusal("tls_unknown_ca", 1);
}

#[test]
fn certificate_from_a_forged_ca_with_the_same_name() {
    let hub = TestHub::start_new();
    let real = Authority::load(
        &hub.data.join("pki/device-ca.crt"),
        &hub.data.join("pki/device-ca.key"),
    )
    .unwrap();
    let name = real.info().common_name.clone().unwrap();
    let forged = Authority::create_root(
        &name,
        Some("Rampart"),
        KeyAlgorithm::EcdsaP256,
        Validity::days_from_now(10),
    )
    .unwrap();
    let (cert, key) = forged
        .issue_device("gw-a", KeyAlgorithm::EcdsaP256, Validity::days_from_now(1))
        .unwrap();
    hub.add_device("gw-a");
    let dir = hub.tmp.path().join("forged");
    files::create_private_dir(&dir).unwrap();
    files::write_public(&dir.join("device.crt"), cert.pem.as_bytes(), false).unwrap();
    files::write_secret(&dir.join("device.key"), key.to_pem().as_bytes(), false).unwrap();
    std::fs::copy(hub.data.join("pki/ca-chain.crt"), dir.join("ca-chain.crt")).unwrap();
    let out = hub.mosquitto_pub(
        &Bundle {
            id: "gw-a".into(),
            dir,
        },
        &["-t", "devices/gw-a/x", "-m", "x", "-q", "1"],
    );
    assert!(!out.status.success());
    hub.expect_refusal("tls_unknown_ca", 1);
}

#[test]
fn expired_certificate() {
    let hub = TestHub::start_new();
    let now = time::OffsetDateTime::now_utc();
    let expired = custom_bundle(
        &hub,
        "gw-old",
        Validity::between(
            now - time::Duration::days(30),
            now - time::Duration::days(1),
        )
        .unwrap(),
    );
    let out = hub.mosquitto_pub(&expired, &["-t", "devices/gw-old/x", "-m", "x", "-q", "1"]);
    assert!(!out.status.success());
    hub.expect_refusal("tls_certificate_expired", 1);
}

#[test]
fn certificate_signed_by_the_ca_but_never_registered() {
    let hub = TestHub::start_new();
    let rogue = custom_bundle(&hub, "gw-rogue", Validity::days_from_now(1));
    let out = hub.mosquitto_pub(&rogue, &["-t", "devices/gw-rogue/x", "-m", "x", "-q", "1"]);
    assert!(!out.status.success());
    hub.expect_refusal("unknown_device", 1);
    // A registered device presenting a second, unregistered certificate is refused too.
    hub.add_device("gw-b");
    let second = custom_bundle(&hub, "gw-b", Validity::days_from_now(1));
    let out = hub.mosquitto_pub(&second, &["-t", "devices/gw-b/x", "-m", "x", "-q", "1"]);
    assert!(!out.status.success());
    hub.expect_refusal("unknown_certificate", 1);
}

#[test]
fn client_id_must_equal_the_certificate_cn() {
    let hub = TestHub::start_new();
    let dev = hub.add_device("gw-a");
    hub.add_device("gw-b");
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        for (protocol, expected) in [
            (Protocol::V311, reason::v311::NOT_AUTHORIZED),
            (Protocol::V5, reason::NOT_AUTHORIZED),
        ] {
            let (mut c, r) = RawClient::connect(
                hub.addr(),
                &dev,
                protocol,
                "gw-b",
                true,
                30,
                None,
                ConnectProperties::default(),
            )
            .await;
            match r {
                Received::Packet(Packet::ConnAck(ConnAck { code, .. })) => {
                    assert_eq!(code, expected, "{protocol:?}")
                }
                other => panic!("{other:?}"),
            }
            assert_eq!(c.recv(T).await, Received::Closed);
        }
    });
    hub.expect_refusal("client_id_mismatch", 2);
}

#[test]
fn disabled_device_is_refused_and_its_live_session_dropped_at_once() {
    let hub = TestHub::start_new();
    let dev = hub.add_device("gw-a");
    let (mut sub, lines) = hub.mosquitto_sub(&dev, &["-t", "devices/gw-a/#", "-V", "5", "-d"]);
    assert!(lines.wait_for(&["SUBACK"], T), "{}", lines.text());
    let t0 = std::time::Instant::now();
    let out = hub.rampart(&["device", "disable", "gw-a"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("closed 1 live connection"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    // mosquitto_sub sees the server's DISCONNECT (administrative action) and exits.
    let exited = wait_until(Duration::from_secs(1), || sub.try_wait().unwrap().is_some());
    let elapsed = t0.elapsed();
    let _ = sub.kill();
    assert!(
        exited,
        "live session not dropped within 1 s:\n{}",
        lines.text()
    );
    assert!(elapsed < Duration::from_secs(2));
    assert!(hub.logs.contains("device disabled: live sessions closed"));

    // A new connection is refused with a specific reason.
    let out = hub.mosquitto_pub(
        &dev,
        &["-t", "devices/gw-a/x", "-m", "x", "-q", "1", "-V", "5"],
    );
    assert!(!out.status.success());
    hub.expect_refusal("device_disabled", 1);
    // Enabled again, it connects.
    assert!(hub.rampart(&["device", "enable", "gw-a"]).status.success());
    let out = hub.mosquitto_pub(&dev, &["-t", "devices/gw-a/x", "-m", "x", "-q", "1"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn cross_device_publish_and_subscribe_are_refused_and_never_delivered_or_stored() {
    let hub = TestHub::start_new();
    let a = hub.add_device("gw-a");
    let b = hub.add_device("gw-b");
    // gw-b listens on its own namespace for the whole test.
    let (mut b_sub, b_lines) =
        hub.mosquitto_sub(&b, &["-t", "devices/gw-b/#", "-v", "-V", "5", "-d"]);
    assert!(b_lines.wait_for(&["SUBACK"], T));

    let telemetry = br#"{"v":1,"seq":1,"ts":"2026-11-23T10:00:00Z","pack":{"voltage_v":52.0,"current_a":1.0,"soc_pct":50.0,"soh_pct":99.0},"source":{"kind":"test"}}"#;
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        // MQTT 5: negative PUBACK 0x87, the connection stays up.
        let mut c = RawClient::connect_ok(hub.addr(), &a, Protocol::V5).await;
        c.send(&publish(
            "devices/gw-b/telemetry",
            QoS::AtLeastOnce,
            telemetry,
        ))
        .await;
        let p = c.expect(T, |p| matches!(p, Packet::PubAck(_))).await;
        assert_eq!(
            p,
            Packet::PubAck(Ack {
                packet_id: 1,
                reason: reason::NOT_AUTHORIZED
            })
        );
        // Subscribing into gw-b's namespace: 0x87 in MQTT 5 ...
        c.send(&Packet::Subscribe(Subscribe {
            packet_id: 2,
            subscription_id: None,
            user_properties: vec![],
            filters: vec![
                (
                    "devices/gw-b/#".into(),
                    SubscriptionOptions::with_qos(QoS::AtLeastOnce),
                ),
                (
                    "devices/gw-a/#".into(),
                    SubscriptionOptions::with_qos(QoS::AtLeastOnce),
                ),
                ("#".into(), SubscriptionOptions::with_qos(QoS::AtMostOnce)),
            ],
        }))
        .await;
        let p = c.expect(T, |p| matches!(p, Packet::SubAck(_))).await;
        assert_eq!(
            p,
            Packet::SubAck(SubAck {
                packet_id: 2,
                reason_string: None,
                codes: vec![reason::NOT_AUTHORIZED, 1, reason::NOT_AUTHORIZED],
            })
        );

        // ... and 0x80 in MQTT 3.1.1.
        let mut c = RawClient::connect_ok(hub.addr(), &a, Protocol::V311).await;
        c.send(&Packet::Subscribe(Subscribe {
            packet_id: 3,
            subscription_id: None,
            user_properties: vec![],
            filters: vec![(
                "devices/gw-b/telemetry".into(),
                SubscriptionOptions::with_qos(QoS::AtMostOnce),
            )],
        }))
        .await;
        let p = c.expect(T, |p| matches!(p, Packet::SubAck(_))).await;
        assert_eq!(
            p,
            Packet::SubAck(SubAck {
                packet_id: 3,
                reason_string: None,
                codes: vec![0x80]
            })
        );
        // MQTT 3.1.1 has no negative PUBACK: the hub disconnects.
        c.send(&publish(
            "devices/gw-b/telemetry",
            QoS::AtLeastOnce,
            telemetry,
        ))
        .await;
        let seen = c.closed_after(T).await;
        assert!(
            !seen.iter().any(|p| matches!(p, Packet::PubAck(_))),
            "{seen:?}"
        );
    });
    hub.expect_refusal("publish_denied", 2);
    hub.expect_refusal("subscribe_denied", 3);

    std::thread::sleep(Duration::from_millis(300));
    let _ = b_sub.kill();
    assert!(
        !b_lines.contains("devices/gw-b/telemetry"),
        "refused message was delivered:\n{}",
        b_lines.text()
    );
    assert!(
        hub.telemetry("gw-b").is_empty(),
        "refused message was stored"
    );
}

#[test]
fn malformed_and_oversized_packets() {
    let mut hub = TestHub::init();
    hub.configure("max_packet_size = 262144", "max_packet_size = 4096");
    hub.start();
    let dev = hub.add_device("gw-a");
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        // A PUBLISH whose topic length runs past the end of the packet.
        let mut c = RawClient::connect_ok(hub.addr(), &dev, Protocol::V5).await;
        c.send_raw(&[0x30, 0x03, 0x00, 0x09, b'a']).await;
        let seen = c.closed_after(T).await;
        assert!(
            seen.iter().any(
                |p| matches!(p, Packet::Disconnect(d) if d.reason == reason::MALFORMED_PACKET)
            ),
            "{seen:?}"
        );
        // A packet larger than max_packet_size: refused from its header alone.
        let mut c = RawClient::connect_ok(hub.addr(), &dev, Protocol::V5).await;
        let big = vec![b'x'; 8192];
        c.send(&publish("devices/gw-a/big", QoS::AtLeastOnce, &big))
            .await;
        let seen = c.closed_after(T).await;
        assert!(
            seen.iter().any(
                |p| matches!(p, Packet::Disconnect(d) if d.reason == reason::PACKET_TOO_LARGE)
            ),
            "{seen:?}"
        );
        assert!(!seen.iter().any(|p| matches!(p, Packet::PubAck(_))));
        // Garbage instead of CONNECT.
        let mut c = RawClient::tls_as(hub.addr(), &dev).await;
        c.send_raw(b"GET / HTTP/1.1\r\n\r\n").await;
        assert_eq!(c.recv(T).await, Received::Closed);
        // A telemetry document that does not validate: MQTT 5 PUBACK 0x99, not stored.
        let mut c = RawClient::connect_ok(hub.addr(), &dev, Protocol::V5).await;
        c.send(&publish(
            "devices/gw-a/telemetry",
            QoS::AtLeastOnce,
            b"{\"v\":1,\"seq\":\"x\"}",
        ))
        .await;
        let p = c.expect(T, |p| matches!(p, Packet::PubAck(_))).await;
        assert_eq!(
            p,
            Packet::PubAck(Ack {
                packet_id: 1,
                reason: reason::PAYLOAD_FORMAT_INVALID
            })
        );
    });
    hub.expect_refusal("malformed_packet", 1);
    hub.expect_refusal("packet_too_large", 1);
    hub.expect_refusal("protocol_error", 1);
    hub.expect_refusal("payload_invalid", 1);
    assert!(hub.telemetry("gw-a").is_empty());
}

#[test]
fn unsupported_protocol_version_gets_return_code_1() {
    let hub = TestHub::start_new();
    let dev = hub.add_device("gw-a");
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let mut c = RawClient::tls(
            hub.addr(),
            tls_config(&dev.ca(), Some((&dev.cert(), &dev.key()))),
        )
        .await
        .unwrap();
        // MQTT 3.1 CONNECT ("MQIsdp", level 3).
        let mut pkt = vec![0x10, 17, 0, 6];
        pkt.extend_from_slice(b"MQIsdp");
        pkt.extend_from_slice(&[3, 0x02, 0, 60, 0, 3]);
        pkt.extend_from_slice(b"g-a");
        c.send_raw(&pkt).await;
        match c.recv(T).await {
            Received::Packet(Packet::ConnAck(ConnAck { code, .. })) => assert_eq!(code, 1),
            other => panic!("{other:?}"),
        }
    });
    hub.expect_refusal("unsupported_protocol", 1);
}
