//! The operator CLI: CSR-based issuance (the key never leaves the device), safe file handling,
//! and clear errors.

#![allow(clippy::unwrap_used)] // helpers outside #[test] fns; a failed unwrap fails the test

use std::os::unix::fs::PermissionsExt;
use std::process::Command;
use std::time::Duration;

use rampart_e2e::*;

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn a_device_key_made_by_openssl_gets_a_certificate_from_its_csr() {
    let hub = TestHub::start_new();
    let dev_dir = hub.tmp.path().join("field-device");
    std::fs::create_dir_all(&dev_dir).unwrap();
    let key = dev_dir.join("device.key");
    let csr = dev_dir.join("device.csr");
    // The device makes its own P-256 key and CSR.
    let keygen = Command::new("openssl")
        .args([
            "req",
            "-new",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-subj",
            "/CN=gw-field",
        ])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&csr)
        .output()
        .unwrap();
    assert!(keygen.status.success(), "{}", stderr(&keygen));
    let key_before = std::fs::read(&key).unwrap();

    let out = hub.rampart(&[
        "device",
        "add",
        "gw-field",
        "--csr",
        csr.to_str().unwrap(),
        "--out",
        dev_dir.to_str().unwrap(),
        "--hub-address",
        &format!("127.0.0.1:{}", hub.port),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("the key stays on the device"));
    // The hub wrote the certificate and CA chain, and did not touch the key.
    assert_eq!(std::fs::read(&key).unwrap(), key_before);
    assert!(dev_dir.join("device.crt").exists() && dev_dir.join("ca-chain.crt").exists());
    // The certificate verifies against the device CA and carries the device id.
    let verify = Command::new("openssl")
        .args(["verify", "-CAfile"])
        .arg(hub.data.join("pki/root-ca.crt"))
        .arg("-untrusted")
        .arg(hub.data.join("pki/device-ca.crt"))
        .arg(dev_dir.join("device.crt"))
        .output()
        .unwrap();
    assert!(
        verify.status.success(),
        "{}",
        String::from_utf8_lossy(&verify.stdout)
    );
    // And it works: the device connects with its own key.
    let bundle = Bundle {
        id: "gw-field".into(),
        dir: dev_dir.clone(),
    };
    let out = hub.mosquitto_pub(
        &bundle,
        &["-t", "devices/gw-field/hello", "-m", "hi", "-q", "1"],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let agent = Agent::start(&bundle, "200ms");
    assert!(
        wait_until(Duration::from_secs(15), || !hub
            .telemetry("gw-field")
            .is_empty()),
        "{}",
        agent.logs.text()
    );

    // A CSR for another device id is refused with a clear error, and nothing is registered.
    let out = hub.rampart(&["device", "add", "gw-other", "--csr", csr.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("CSR asks for subject CN \"gw-field\""),
        "{}",
        stderr(&out)
    );
    let show = hub.rampart(&["device", "show", "gw-other"]);
    assert!(!show.status.success());
    assert!(stderr(&show).contains("not found") && stderr(&show).contains("hint:"));
    // Garbage is not a CSR.
    std::fs::write(dev_dir.join("bad.csr"), "not a csr").unwrap();
    let out = hub.rampart(&[
        "device",
        "add",
        "gw-x",
        "--csr",
        dev_dir.join("bad.csr").to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("CSR is not a valid PKCS#10 request"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn bundles_are_private_and_never_overwritten_without_force() {
    let hub = TestHub::init();
    let bundle = hub.add_device("gw-a");
    let mode = std::fs::metadata(bundle.key())
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600);
    let dir_mode = std::fs::metadata(&bundle.dir).unwrap().permissions().mode() & 0o777;
    assert_eq!(dir_mode, 0o700);
    let key_before = std::fs::read(bundle.key()).unwrap();
    // Same id again: refused by the registry.
    let out = hub.rampart(&[
        "device",
        "add",
        "gw-a",
        "--out",
        bundle.dir.to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("already exists"), "{}", stderr(&out));
    // Another id into the same directory: refused, the existing key untouched, nothing registered.
    let out = hub.rampart(&[
        "device",
        "add",
        "gw-b",
        "--out",
        bundle.dir.to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("--force"), "{}", stderr(&out));
    assert_eq!(std::fs::read(bundle.key()).unwrap(), key_before);
    assert!(!hub.rampart(&["device", "show", "gw-b"]).status.success());
    // With --force it is replaced.
    let out = hub.rampart(&[
        "device",
        "add",
        "gw-b",
        "--out",
        bundle.dir.to_str().unwrap(),
        "--force",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_ne!(std::fs::read(bundle.key()).unwrap(), key_before);
    // init refuses an existing data directory.
    let out = Command::new(bin("rampart"))
        .args(["init", "--data-dir"])
        .arg(&hub.data)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(stderr(&out).contains("--force"));
    // Ed25519 devices work as well as P-256 ones.
    let out = hub.rampart(&[
        "device",
        "add",
        "gw-ed",
        "--key-type",
        "ed25519",
        "--out",
        hub.tmp.path().join("ed").to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
}

#[test]
fn ed25519_device_connects() {
    let hub = TestHub::start_new();
    let dir = hub.tmp.path().join("ed");
    let out = hub.rampart(&[
        "device",
        "add",
        "gw-ed",
        "--key-type",
        "ed25519",
        "--out",
        dir.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let b = Bundle {
        id: "gw-ed".into(),
        dir,
    };
    let out = hub.mosquitto_pub(
        &b,
        &["-t", "devices/gw-ed/x", "-m", "x", "-q", "1", "-V", "5"],
    );
    assert!(out.status.success(), "{}", stderr(&out));
}

#[test]
fn a_broken_configuration_stops_the_hub_with_a_message_naming_the_field() {
    let hub = TestHub::init();
    let b = hub.add_device("gw-a");
    hub.configure("max_packet_size = 262144", "max_packet_size = 12");
    let out = Command::new(bin("rampart"))
        .args(["hub", "--data-dir"])
        .arg(&hub.data)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let e = stderr(&out);
    assert!(
        e.contains("mqtt.max_packet_size = 12 is out of range"),
        "{e}"
    );
    assert!(e.contains("hint: see docs/configuration.md"), "{e}");
    // An uninitialised directory.
    let out = Command::new(bin("rampart"))
        .args(["hub", "--data-dir", "/nonexistent/rampart"])
        .output()
        .unwrap();
    assert!(
        stderr(&out).contains("not a Rampart data directory")
            && stderr(&out).contains("rampart init")
    );
    // A broken agent configuration.
    let cfg = std::fs::read_to_string(b.agent_toml())
        .unwrap()
        .replace("interval = \"5s\"", "interval = \"often\"");
    std::fs::write(b.agent_toml(), cfg).unwrap();
    let out = Command::new(bin("rampart-agent"))
        .args(["run", "--config"])
        .arg(b.agent_toml())
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(stderr(&out).contains("interval"), "{}", stderr(&out));
}

#[test]
fn status_shows_counters_and_clients_of_the_running_hub() {
    let hub = TestHub::start_new();
    let b = hub.add_device("gw-a");
    let agent = Agent::start(&b, "200ms");
    assert!(
        wait_until(Duration::from_secs(15), || !hub
            .telemetry("gw-a")
            .is_empty()),
        "{}",
        agent.logs.text()
    );
    let status = || {
        let out = hub.rampart(&["status", "--json"]);
        assert!(out.status.success(), "{}", stderr(&out));
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()
    };
    let committed = |s: &serde_json::Value| {
        s["metrics"]["values"]["rampart_telemetry_rows_committed_total"]
            .as_i64()
            .unwrap()
    };
    // A committed reading is readable before the WAL sync that makes it durable returns, and
    // the counter counts rows once that sync has returned: it may lag the table briefly.
    assert!(
        wait_until(Duration::from_secs(15), || committed(&status()) >= 1),
        "{}",
        status()
    );
    let s = status();
    assert_eq!(s["clients"][0]["client_id"], "gw-a");
    assert_eq!(s["clients"][0]["connected"], true);
    // Also exported for Prometheus.
    let body = http_get(hub.metrics_port, "/metrics");
    assert!(body.contains("# TYPE rampart_connections_active gauge"));
    assert!(body.contains("rampart_refusals_total{reason=\"tls_unknown_ca\"} 0"));
}
