//! Certificate rotation: renewal by CSR over MQTT, an overlap window, retirement, and the
//! failure paths (renewal refused, renewed pair unusable).

#![allow(clippy::unwrap_used)] // helpers outside #[test] fns; a failed unwrap fails the test

use std::time::Duration;

use rampart_e2e::*;

fn seqs(hub: &TestHub, id: &str) -> Vec<i64> {
    hub.telemetry(id)
        .iter()
        .map(|r| r["seq"].as_i64().unwrap())
        .collect()
}

fn certificates(hub: &TestHub, id: &str) -> Vec<serde_json::Value> {
    let out = hub.rampart(&["device", "show", id, "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    v["certificates"].as_array().unwrap().clone()
}

#[test]
fn an_agent_with_a_two_minute_certificate_renews_without_losing_a_reading() {
    let mut hub = TestHub::init();
    hub.configure(
        "device_cert_lifetime = \"90d\"",
        "device_cert_lifetime = \"2m\"",
    );
    hub.configure("rotation_overlap = \"24h\"", "rotation_overlap = \"15s\"");
    hub.start();
    let dev = hub.add_device("gw-rot");
    let old_cert = std::fs::read_to_string(dev.cert()).unwrap();
    // The previous key is handed to mosquitto_pub below: keep keys plain.
    let mut agent = Agent::start_with(&dev, "250ms", &[PLAIN_KEYS]);
    // Renewal at 2/3 of 120 s.
    assert!(
        agent.logs.wait_for(
            &["renewed certificate works and is now in use"],
            Duration::from_secs(120)
        ),
        "no renewal:\n{}",
        agent.logs.text()
    );
    assert_ne!(
        std::fs::read_to_string(dev.cert()).unwrap(),
        old_cert,
        "device.crt replaced"
    );
    assert_eq!(
        std::fs::read_to_string(dev.dir.join("device.crt.old")).unwrap(),
        old_cert,
        "old pair kept"
    );
    // Both valid during the overlap window, then the old one retires.
    let certs = certificates(&hub, "gw-rot");
    assert_eq!(certs.len(), 2, "{certs:?}");
    assert!(certs[0]["retire_at"].is_string(), "{certs:?}");
    assert!(
        wait_until(Duration::from_secs(40), || certificates(&hub, "gw-rot")[0]
            ["status"]
            == "retired"),
        "old certificate not retired after the overlap: {:?}",
        certificates(&hub, "gw-rot")
    );
    assert_eq!(certificates(&hub, "gw-rot")[1]["status"], "valid");
    // Readings keep coming after the switch, and none was lost or stored twice.
    let before = seqs(&hub, "gw-rot").len();
    assert!(wait_until(Duration::from_secs(10), || seqs(&hub, "gw-rot")
        .len()
        > before + 4));
    assert!(agent.terminate().success());
    let s = seqs(&hub, "gw-rot");
    assert_eq!(
        s,
        (1..=s.len() as i64).collect::<Vec<_>>(),
        "every reading exactly once"
    );
    assert_eq!(
        agent
            .logs
            .all()
            .iter()
            .filter(|l| l.contains("reading dropped"))
            .count(),
        0
    );
    // The old certificate no longer connects.
    let out = hub.mosquitto_pub(
        &{
            let d = hub.tmp.path().join("old-pair");
            std::fs::create_dir_all(&d).unwrap();
            std::fs::write(d.join("device.crt"), &old_cert).unwrap();
            std::fs::copy(dev.dir.join("device.key.old"), d.join("device.key")).unwrap();
            std::fs::copy(dev.ca(), d.join("ca-chain.crt")).unwrap();
            Bundle {
                id: "gw-rot".into(),
                dir: d,
            }
        },
        &["-t", "devices/gw-rot/x", "-m", "x", "-q", "1"],
    );
    assert!(!out.status.success());
    hub.expect_refusal("certificate_retired", 1);
}

#[test]
fn a_refused_renewal_keeps_the_old_credentials_working() {
    let mut hub = TestHub::init();
    hub.configure(
        "device_cert_lifetime = \"90d\"",
        "device_cert_lifetime = \"2m\"",
    );
    hub.configure("renewal = true", "renewal = false");
    hub.start();
    let dev = hub.add_device("gw-norenew");
    let cert = std::fs::read_to_string(dev.cert()).unwrap();
    let agent = Agent::start_with(&dev, "250ms", &[("renew_at = 0.667", "renew_at = 0.2")]);
    assert!(
        agent.logs.wait_for(
            &[
                "certificate renewal rejected by the hub",
                "renewal is disabled"
            ],
            Duration::from_secs(60)
        ),
        "{}",
        agent.logs.text()
    );
    let after_rejection = seqs(&hub, "gw-norenew").len();
    assert!(
        wait_until(Duration::from_secs(10), || seqs(&hub, "gw-norenew").len()
            > after_rejection + 4),
        "telemetry stopped after the refused renewal"
    );
    assert_eq!(
        std::fs::read_to_string(dev.cert()).unwrap(),
        cert,
        "credentials unchanged"
    );
    assert!(!dev.dir.join("device.crt.new").exists());
    assert_eq!(certificates(&hub, "gw-norenew").len(), 1);
}

#[test]
fn a_renewed_pair_that_cannot_connect_is_discarded() {
    let hub = TestHub::start_new();
    let dev = hub.add_device("gw-rollback");
    // A pending pair left behind (as by a crash mid-renewal) that the hub will not accept:
    // a certificate from another CA.
    let other = TestHub::init();
    let foreign = other.add_device("gw-rollback");
    std::fs::copy(foreign.cert(), dev.dir.join("device.crt.new")).unwrap();
    std::fs::copy(foreign.key(), dev.dir.join("device.key.new")).unwrap();
    let agent = Agent::start(&dev, "250ms");
    assert!(
        agent.logs.wait_for(
            &["the renewed certificate does not work; back to the current one"],
            Duration::from_secs(15)
        ),
        "{}",
        agent.logs.text()
    );
    assert!(
        wait_until(Duration::from_secs(15), || seqs(&hub, "gw-rollback").len()
            >= 3),
        "{}",
        agent.logs.text()
    );
    assert!(
        !dev.dir.join("device.crt.new").exists(),
        "pending pair discarded"
    );
}
