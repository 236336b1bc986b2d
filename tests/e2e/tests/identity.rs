//! Identity lifecycle: the policy language on live sessions, just-in-time registration,
//! revocation with CRL, quarantine and session tokens.

#![allow(clippy::unwrap_used)] // helpers outside #[test] fns; a failed unwrap fails the test

use std::process::Command;
use std::time::Duration;

use bytes::Bytes;
use rampart_e2e::raw::{RawClient, Received};
use rampart_e2e::*;
use rampart_mqtt::{
    Ack, Packet, Protocol, Publish, PublishProperties, QoS, Subscribe, SubscriptionOptions, reason,
};

const T: Duration = Duration::from_secs(5);

fn publish(topic: &str, pid: u16, payload: &[u8]) -> Packet {
    Packet::Publish(Publish {
        dup: false,
        qos: QoS::AtLeastOnce,
        retain: false,
        topic: topic.into(),
        packet_id: Some(pid),
        properties: PublishProperties::default(),
        payload: Bytes::copy_from_slice(payload),
    })
}

fn subscribe(pid: u16, filter: &str) -> Packet {
    Packet::Subscribe(Subscribe {
        packet_id: pid,
        subscription_id: None,
        user_properties: vec![],
        filters: vec![(
            filter.into(),
            SubscriptionOptions::with_qos(QoS::AtLeastOnce),
        )],
    })
}

async fn puback(c: &mut RawClient, pid: u16) -> u8 {
    match c
        .expect(T, |p| matches!(p, Packet::PubAck(a) if a.packet_id == pid))
        .await
    {
        Packet::PubAck(a) => a.reason,
        _ => unreachable!(),
    }
}

fn ok(out: std::process::Output) -> String {
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn write_policy(hub: &TestHub, name: &str, text: &str) -> String {
    let p = hub.tmp.path().join(format!("{name}.toml"));
    std::fs::write(&p, text).unwrap();
    p.display().to_string()
}

const TELEMETRY: &[u8] = br#"{"v":1,"seq":1,"ts":"2026-11-23T10:00:00Z","pack":{"voltage_v":52.0,"current_a":1.0,"soc_pct":50.0,"soh_pct":99.0},"source":{"kind":"test"}}"#;

/// Every connection proves its identity again: the hub gives out no session to resume (no
/// TLS 1.3 tickets, no TLS 1.2 session cache), so a client that offers the last connection's
/// session still gets a full handshake, its certificate checked against the current trust and
/// revocation state. A rustls client keeps and offers sessions by default, so the later
/// connections would be resumptions if the hub allowed them.
#[test]
fn no_tls_session_is_resumed_every_connection_presents_its_certificate() {
    let hub = TestHub::start_new();
    let dev = hub.add_device("gw-a");
    tokio::runtime::Runtime::new().unwrap().block_on(async {
        let config = rampart_e2e::raw::tls_config(&dev.ca(), Some((&dev.cert(), &dev.key())));
        for attempt in 0..3 {
            let mut c = RawClient::tls(hub.addr(), config.clone()).await.unwrap();
            // Tickets sent after the handshake would arrive before the CONNACK.
            let r = c
                .send_connect(rampart_mqtt::Connect {
                    protocol: Protocol::V311,
                    clean_start: true,
                    keep_alive: 60,
                    client_id: "gw-a".into(),
                    will: None,
                    username: None,
                    password: None,
                    properties: rampart_mqtt::ConnectProperties::default(),
                })
                .await;
            assert!(
                matches!(r, Received::Packet(Packet::ConnAck(ref a)) if a.code == 0),
                "{r:?}"
            );
            assert_eq!(
                c.handshake_kind(),
                Some(rustls::HandshakeKind::Full),
                "connection {attempt}"
            );
        }
    });
}

#[test]
fn group_policy_shared_topic_explicit_deny_and_live_changes() {
    let hub = TestHub::start_new();
    let a = hub.add_device("gw-a");
    let b = hub.add_device("gw-b");
    let policy = write_policy(
        &hub,
        "berlin",
        r#"
name = "site-group"
[[statement]]
effect = "allow"
actions = ["publish", "subscribe", "receive"]
resources = ["groups/${device.group}/#"]
[[statement]]
effect = "deny"
actions = ["publish"]
resources = ["groups/${device.group}/announcements"]
"#,
    );
    ok(hub.rampart(&["policy", "put", &policy]));
    ok(hub.rampart(&["policy", "attach", "site-group", "group:berlin"]));
    for id in ["gw-a", "gw-b"] {
        ok(hub.rampart(&["device", "set", id, "--group", "berlin"]));
    }
    let show = ok(hub.rampart(&["device", "show", "gw-a"]));
    assert!(
        show.contains("fleet-default") && show.contains("site-group"),
        "{show}"
    );

    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let mut ca = RawClient::connect_ok(hub.addr(), &a, Protocol::V5).await;
        let mut cb = RawClient::connect_ok(hub.addr(), &b, Protocol::V5).await;
        ca.send(&subscribe(1, "groups/berlin/#")).await;
        let Packet::SubAck(s) = ca.expect(T, |p| matches!(p, Packet::SubAck(_))).await else {
            unreachable!()
        };
        assert_eq!(s.codes, vec![1]);
        // The group policy grants a topic shared by the group.
        cb.send(&publish("groups/berlin/chat", 1, b"hallo")).await;
        assert_eq!(puback(&mut cb, 1).await, 0);
        let Packet::Publish(m) = ca.expect(T, |p| matches!(p, Packet::Publish(_))).await else {
            unreachable!()
        };
        assert_eq!(&m.payload[..], b"hallo");
        ca.send(&Packet::PubAck(Ack {
            packet_id: m.packet_id.unwrap(),
            reason: 0,
        }))
        .await;
        // Explicit deny beats the allow.
        cb.send(&publish("groups/berlin/announcements", 2, b"x"))
            .await;
        assert_eq!(puback(&mut cb, 2).await, reason::NOT_AUTHORIZED);
        // Another group's topic: no statement matches.
        cb.send(&publish("groups/paris/chat", 3, b"x")).await;
        assert_eq!(puback(&mut cb, 3).await, reason::NOT_AUTHORIZED);

        // Live change without reconnecting: detach the policy...
        ok(hub.rampart(&["policy", "detach", "site-group", "group:berlin"]));
        cb.send(&publish("groups/berlin/chat", 4, b"after detach"))
            .await;
        assert_eq!(puback(&mut cb, 4).await, reason::NOT_AUTHORIZED);
        // ...and attach it again: the same sessions may use the topic again.
        ok(hub.rampart(&["policy", "attach", "site-group", "group:berlin"]));
        cb.send(&publish("groups/berlin/chat", 5, b"again")).await;
        assert_eq!(puback(&mut cb, 5).await, 0);
        let Packet::Publish(m) = ca.expect(T, |p| matches!(p, Packet::Publish(_))).await else {
            unreachable!()
        };
        assert_eq!(&m.payload[..], b"again");
        ca.send(&Packet::PubAck(Ack {
            packet_id: m.packet_id.unwrap(),
            reason: 0,
        }))
        .await;
        // Moving gw-a to another group stops its deliveries at once (receive is re-checked).
        ok(hub.rampart(&["device", "set", "gw-a", "--group", "paris"]));
        cb.send(&publish("groups/berlin/chat", 6, b"not for paris"))
            .await;
        assert_eq!(puback(&mut cb, 6).await, 0);
        assert_eq!(ca.recv(Duration::from_millis(500)).await, Received::Timeout);
    });
    hub.expect_refusal("publish_denied", 3);
}

#[test]
fn policy_versions_and_lint() {
    let hub = TestHub::init();
    let bad = write_policy(
        &hub,
        "bad",
        "name = \"everyone\"\n[[statement]]\neffect = \"allow\"\nactions = [\"publish\", \"subscribe\", \"receive\"]\nresources = [\"#\"]\n",
    );
    let out = Command::new(bin("rampart"))
        .args(["policy", "lint", &bad])
        .output()
        .unwrap();
    assert!(
        !out.status.success(),
        "lint must fail on a publish-everywhere policy"
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("error: statement 1: publish/subscribe/receive on \"#\" reaches every topic of every device"), "{text}");
    let good = write_policy(&hub, "good", PolicyDocumentText::FLEET);
    let out = Command::new(bin("rampart"))
        .args(["policy", "lint", &good])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    // Versions are kept (the built-in policy is version 1).
    ok(hub.rampart(&["policy", "put", &good]));
    ok(hub.rampart(&["policy", "put", &good]));
    let list = ok(hub.rampart(&["policy", "list"]));
    assert!(
        list.lines()
            .any(|l| l.starts_with("fleet-default") && l.contains(" 3 ")),
        "{list}"
    );
    let v1 = ok(hub.rampart(&["policy", "show", "fleet-default", "--version", "1"]));
    assert!(v1.contains("version 1"));
    // A syntax error names the statement.
    let broken = write_policy(
        &hub,
        "broken",
        "name = \"p\"\n[[statement]]\neffect = \"allow\"\nactions = [\"publish\"]\nresources = [\"a/#/b\"]\n",
    );
    let out = hub.rampart(&["policy", "put", &broken]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("statement 1: resource \"a/#/b\" is not a valid topic filter")
    );
}

/// The built-in fleet policy's text, for the lint test.
struct PolicyDocumentText;
impl PolicyDocumentText {
    const FLEET: &'static str = "name = \"fleet-default\"\n[[statement]]\neffect = \"allow\"\nactions = [\"connect\"]\nresources = [\"${device.id}\"]\n[[statement]]\neffect = \"allow\"\nactions = [\"publish\", \"subscribe\", \"receive\"]\nresources = [\"devices/${device.id}/#\"]\n";
}

#[test]
fn just_in_time_registration_active_pending_and_unregistered() {
    let hub = TestHub::start_new();
    let vendors = hub.tmp.path().join("vendors");
    // An active CA with a template.
    let acme = VendorCa::create(&vendors, "acme-ca", "ec", 365);
    ok(hub.rampart(&[
        "ca",
        "register",
        acme.cert().to_str().unwrap(),
        "--group",
        "acme",
        "--attr",
        "plant=O",
    ]));
    let dev = acme.issue(&hub, "acme-gw-1", "/O=Plant 7/CN=acme-gw-1", "ec");
    let out = hub.mosquitto_pub(
        &dev,
        &["-t", "devices/acme-gw-1/hello", "-m", "hi", "-q", "1"],
    );
    assert!(
        out.status.success(),
        "first connect registers the device: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let show = ok(hub.rampart(&["device", "show", "acme-gw-1", "--json"]));
    let d: serde_json::Value = serde_json::from_str(&show).unwrap();
    assert_eq!(d["group"], "acme");
    assert_eq!(d["attributes"]["plant"], "Plant 7");
    assert!(d["registered_via"].as_str().unwrap().starts_with("jit:"));
    assert_eq!(d["pending"], false);

    // A CA whose devices wait for approval.
    let beta = VendorCa::create(&vendors, "beta-ca", "ec", 365);
    ok(hub.rampart(&["ca", "register", beta.cert().to_str().unwrap(), "--pending"]));
    let dev = beta.issue(&hub, "beta-gw-1", "/CN=beta-gw-1", "ec");
    let out = hub.mosquitto_pub(&dev, &["-t", "devices/beta-gw-1/x", "-m", "x", "-q", "1"]);
    assert!(!out.status.success());
    hub.expect_refusal("device_pending", 1);
    let list = ok(hub.rampart(&["device", "list"]));
    assert!(
        list.lines()
            .any(|l| l.starts_with("beta-gw-1") && l.contains("pending")),
        "{list}"
    );
    ok(hub.rampart(&["device", "approve", "beta-gw-1"]));
    let out = hub.mosquitto_pub(&dev, &["-t", "devices/beta-gw-1/x", "-m", "x", "-q", "1"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // A CA nobody registered: refused in the handshake, nothing registered.
    let rogue = VendorCa::create(&vendors, "rogue-ca", "ec", 365);
    let dev = rogue.issue(&hub, "rogue-gw-1", "/CN=rogue-gw-1", "ec");
    let out = hub.mosquitto_pub(&dev, &["-t", "devices/rogue-gw-1/x", "-m", "x", "-q", "1"]);
    assert!(!out.status.success());
    hub.expect_refusal("tls_unknown_ca", 1);
    assert!(
        !hub.rampart(&["device", "show", "rogue-gw-1"])
            .status
            .success()
    );
    let log = ok(hub.rampart(&["log"]));
    assert!(
        log.contains("device.jit_register") && log.contains("ca.register"),
        "{log}"
    );
}

#[test]
fn revocation_drops_the_live_session_and_the_crl_verifies() {
    let hub = TestHub::start_new();
    let dev = hub.add_device("gw-r");
    let (mut sub, lines) = hub.mosquitto_sub(&dev, &["-t", "devices/gw-r/#", "-V", "5", "-d"]);
    assert!(lines.wait_for(&["SUBACK"], T), "{}", lines.text());
    let serial = {
        let show: serde_json::Value =
            serde_json::from_str(&ok(hub.rampart(&["device", "show", "gw-r", "--json"]))).unwrap();
        show["certificates"][0]["serial"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let t0 = std::time::Instant::now();
    let out = ok(hub.rampart(&["device", "revoke", "gw-r", "--reason", "key-compromise"]));
    assert!(out.contains("closed 1 live connection"), "{out}");
    assert!(
        wait_until(Duration::from_secs(1), || sub.try_wait().unwrap().is_some()),
        "session not dropped within 1 s"
    );
    assert!(t0.elapsed() < Duration::from_secs(2));
    let _ = sub.kill();
    // The next handshake fails: the CRL now lists the certificate.
    let out = hub.mosquitto_pub(&dev, &["-t", "devices/gw-r/x", "-m", "x", "-q", "1"]);
    assert!(!out.status.success());
    hub.expect_refusal("tls_certificate_revoked", 1);
    // The CRL verifies with OpenSSL against the device CA and lists the serial.
    let crl = hub.data.join("pki/device-ca.crl");
    let v = Command::new("openssl")
        .args(["crl", "-noout", "-in"])
        .arg(&crl)
        .arg("-CAfile")
        .arg(hub.data.join("pki/device-ca.crt"))
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&v.stderr).contains("verify OK"),
        "{}",
        String::from_utf8_lossy(&v.stderr)
    );
    let text = ok(Command::new("openssl")
        .args(["crl", "-noout", "-text", "-in"])
        .arg(&crl)
        .output()
        .unwrap());
    assert!(
        text.to_lowercase().contains(&serial.to_lowercase()),
        "{text}"
    );
    assert!(text.contains("Key Compromise"), "{text}");
    // `rampart ca crl` re-signs it with a higher CRL number.
    let out_file = hub.tmp.path().join("crl.pem");
    ok(hub.rampart(&["ca", "crl", "--out", out_file.to_str().unwrap()]));
    let v = Command::new("openssl")
        .args(["crl", "-noout", "-in"])
        .arg(&out_file)
        .arg("-CAfile")
        .arg(hub.data.join("pki/device-ca.crt"))
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&v.stderr).contains("verify OK"));
}

async fn token(c: &mut RawClient, id: &str) -> String {
    c.send(&subscribe(
        90,
        &format!("$rampart/devices/{id}/token/response"),
    ))
    .await;
    c.expect(T, |p| matches!(p, Packet::SubAck(_))).await;
    c.send(&publish(
        &format!("$rampart/devices/{id}/token/request"),
        91,
        br#"{"request_id":"t1"}"#,
    ))
    .await;
    loop {
        if let Packet::Publish(m) = c.expect(T, |p| matches!(p, Packet::Publish(_))).await {
            if let Some(pid) = m.packet_id {
                c.send(&Packet::PubAck(Ack {
                    packet_id: pid,
                    reason: 0,
                }))
                .await;
            }
            let v: serde_json::Value = serde_json::from_slice(&m.payload).unwrap();
            assert_eq!(v["status"], "accepted", "{v}");
            return v["token"].as_str().unwrap().to_string();
        }
    }
}

#[test]
fn quarantine_blocks_telemetry_but_keeps_updates_open_on_the_live_session() {
    let hub = TestHub::start_new();
    let dev = hub.add_device("gw-q");
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let mut c = RawClient::connect_ok(hub.addr(), &dev, Protocol::V5).await;
        c.send(&subscribe(1, "devices/gw-q/update/#")).await;
        c.expect(T, |p| matches!(p, Packet::SubAck(_))).await;
        c.send(&publish("devices/gw-q/telemetry", 2, TELEMETRY))
            .await;
        assert_eq!(puback(&mut c, 2).await, 0);

        ok(hub.rampart(&["device", "quarantine", "gw-q"]));
        // Same connection, no reconnect: telemetry is refused...
        c.send(&publish("devices/gw-q/telemetry", 3, TELEMETRY))
            .await;
        assert_eq!(puback(&mut c, 3).await, reason::NOT_AUTHORIZED);
        // ...update topics still work...
        c.send(&publish("devices/gw-q/update/notice", 4, b"v2"))
            .await;
        assert_eq!(puback(&mut c, 4).await, 0);
        let Packet::Publish(m) = c.expect(T, |p| matches!(p, Packet::Publish(_))).await else {
            unreachable!()
        };
        assert_eq!(&*m.topic, "devices/gw-q/update/notice");
        c.send(&Packet::PubAck(Ack {
            packet_id: m.packet_id.unwrap(),
            reason: 0,
        }))
        .await;
        // ...and update downloads over HTTPS (token, then the device API).
        let t = token(&mut c, "gw-q").await;
        let (code, body) = hub.api_get(&dev, "/v1/device/whoami", Some(&t));
        assert_eq!(code, 200, "{body}");

        ok(hub.rampart(&["device", "release", "gw-q"]));
        let mut doc = String::from_utf8_lossy(TELEMETRY).into_owned();
        doc = doc.replace("\"seq\":1", "\"seq\":2");
        c.send(&publish("devices/gw-q/telemetry", 5, doc.as_bytes()))
            .await;
        assert_eq!(puback(&mut c, 5).await, 0);
    });
    let list = ok(hub.rampart(&["device", "list"]));
    assert!(!list.contains("quarantined"), "{list}");
    assert_eq!(
        hub.telemetry("gw-q").len(),
        2,
        "only the readings sent outside quarantine are stored"
    );
}

#[test]
fn tokens_expired_forged_and_of_another_device_are_refused() {
    let mut hub = TestHub::init();
    hub.configure("token_lifetime = \"1h\"", "token_lifetime = \"3s\"");
    hub.start();
    let a = hub.add_device("gw-a");
    let b = hub.add_device("gw-b");
    let rt = tokio::runtime::Runtime::new().unwrap();
    let good = rt.block_on(async {
        let mut c = RawClient::connect_ok(hub.addr(), &a, Protocol::V5).await;
        token(&mut c, "gw-a").await
    });
    let (code, body) = hub.api_get(&a, "/v1/device/whoami", Some(&good));
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("\"device_id\":\"gw-a\""), "{body}");

    // No token.
    let (code, body) = hub.api_get(&a, "/v1/device/whoami", None);
    assert_eq!(code, 401);
    assert!(body.contains("token_missing"));
    // Another device's token: refused even with a valid certificate.
    let (code, body) = hub.api_get(&b, "/v1/device/whoami", Some(&good));
    assert_eq!(code, 401);
    assert!(body.contains("token_wrong_device"), "{body}");
    // Forged: signed by a key that is not the hub's.
    let (forger, _) = rampart_pki::token::TokenKey::generate().unwrap();
    let cert_der = rampart_pki::pem_certs(&std::fs::read_to_string(a.cert()).unwrap())
        .unwrap()
        .remove(0);
    let now = u64::try_from(time::OffsetDateTime::now_utc().unix_timestamp()).unwrap();
    let (forged, _) = forger.issue("gw-a", &cert_der, now, 600).unwrap();
    let (code, body) = hub.api_get(&a, "/v1/device/whoami", Some(&forged));
    assert_eq!(code, 401);
    assert!(body.contains("token_forged"), "{body}");
    // Expired: the hub's own key, but the lifetime is over (the 3 s token above, too).
    std::thread::sleep(Duration::from_millis(3200));
    let (code, body) = hub.api_get(&a, "/v1/device/whoami", Some(&good));
    assert_eq!(code, 401);
    assert!(body.contains("token_expired"), "{body}");
    let m = hub.metrics();
    for (name, n) in [
        ("rampart_device_api_token_missing_total", 1.0),
        ("rampart_device_api_token_wrong_device_total", 1.0),
        ("rampart_device_api_token_forged_total", 1.0),
        ("rampart_device_api_token_expired_total", 1.0),
    ] {
        assert_eq!(m.get(name).copied(), Some(n), "{name}");
    }
    // A certificate the registry refuses gets no HTTP at all.
    ok(hub.rampart(&["device", "disable", "gw-b"]));
    let (code, _) = hub.api_get(&b, "/v1/device/whoami", Some(&good));
    assert_eq!(code, 0, "connection closed without an HTTP answer");
}

#[test]
fn the_agent_renews_its_token_in_band_and_it_works() {
    let mut hub = TestHub::init();
    hub.configure("token_lifetime = \"1h\"", "token_lifetime = \"4s\"");
    hub.start();
    let dev = hub.add_device("gw-t");
    // curl uses the device's key for the mutual-TLS call below: keep it plain.
    let agent = Agent::start_with(&dev, "500ms", &[PLAIN_KEYS]);
    assert!(
        wait_until(Duration::from_secs(20), || agent
            .logs
            .all()
            .iter()
            .filter(|l| l.contains("session token renewed"))
            .count()
            >= 3),
        "{}",
        agent.logs.text()
    );
    // The token as the agent shows it to programs on the gateway.
    let out = Command::new(bin("rampart-agent"))
        .args(["token", "--config"])
        .arg(dev.agent_toml())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let token = String::from_utf8(out.stdout).unwrap();
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(dev.dir.join("state/token"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o600
    );
    let (code, body) = hub.api_get(&dev, "/v1/device/whoami", Some(token.trim()));
    assert_eq!(code, 200, "{body}");
}

#[test]
fn a_service_identity_reads_across_devices_under_its_own_client_ids() {
    let hub = TestHub::start_new();
    let dev = hub.add_device("gw-s");
    let svc_dir = hub.tmp.path().join("pipeline");
    ok(hub.rampart(&[
        "service",
        "add",
        "pipeline",
        "--out",
        svc_dir.to_str().unwrap(),
    ]));
    let svc = Bundle {
        id: "pipeline".into(),
        dir: svc_dir,
    };
    // Without a policy the service has no rights at all.
    let out = hub.mosquitto_pub(&svc, &["-t", "x", "-m", "x"]);
    assert!(!out.status.success());
    hub.expect_refusal("connect_not_authorized", 1);
    let policy = write_policy(
        &hub,
        "reader",
        r#"
name = "telemetry-reader"
[[statement]]
effect = "allow"
actions = ["connect"]
resources = ["*"]
[[statement]]
effect = "allow"
actions = ["subscribe", "receive"]
resources = ["devices/+/telemetry"]
"#,
    );
    ok(hub.rampart(&["policy", "put", &policy]));
    ok(hub.rampart(&["policy", "attach", "telemetry-reader", "service:pipeline"]));
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        // Two workers of the same service, each with its own client id.
        let (mut w1, r1) = RawClient::connect(
            hub.addr(),
            &svc,
            Protocol::V5,
            "pipeline-worker-1",
            true,
            30,
            None,
            Default::default(),
        )
        .await;
        let (mut w2, r2) = RawClient::connect(
            hub.addr(),
            &svc,
            Protocol::V5,
            "pipeline-worker-2",
            true,
            30,
            None,
            Default::default(),
        )
        .await;
        for r in [r1, r2] {
            assert!(
                matches!(r, Received::Packet(Packet::ConnAck(ref a)) if a.code == 0),
                "{r:?}"
            );
        }
        w1.send(&subscribe(1, "devices/+/telemetry")).await;
        let Packet::SubAck(s) = w1.expect(T, |p| matches!(p, Packet::SubAck(_))).await else {
            unreachable!()
        };
        assert_eq!(s.codes, vec![1]);
        // It may read, not write.
        w2.send(&publish("devices/gw-s/telemetry", 2, TELEMETRY))
            .await;
        assert_eq!(puback(&mut w2, 2).await, reason::NOT_AUTHORIZED);
        let mut d = RawClient::connect_ok(hub.addr(), &dev, Protocol::V311).await;
        d.send(&publish("devices/gw-s/telemetry", 3, TELEMETRY))
            .await;
        let Packet::Publish(m) = w1.expect(T, |p| matches!(p, Packet::Publish(_))).await else {
            unreachable!()
        };
        assert_eq!(&*m.topic, "devices/gw-s/telemetry");
    });
}
