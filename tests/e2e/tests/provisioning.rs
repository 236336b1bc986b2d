//! Fleet provisioning by claim certificate, from a factory-fresh agent to telemetry.

#![allow(clippy::unwrap_used)] // helpers outside #[test] fns; a failed unwrap fails the test

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use rampart_e2e::*;

fn ok(out: std::process::Output) -> String {
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A claim bundle made by `rampart claim add`.
fn claim(hub: &TestHub, name: &str, extra: &[&str]) -> std::path::PathBuf {
    let dir = hub.tmp.path().join("claims").join(name);
    let mut args = vec!["claim", "add", name, "--out", dir.to_str().unwrap()];
    args.extend_from_slice(extra);
    ok(hub.rampart(&args));
    dir
}

/// A factory-fresh device: the claim bundle copied, its serial number set.
fn fresh_device(hub: &TestHub, claim_dir: &Path, serial: &str) -> Bundle {
    let dir = hub.tmp.path().join("factory").join(serial);
    std::fs::create_dir_all(&dir).unwrap();
    for f in ["claim.crt", "claim.key", "ca-chain.crt"] {
        std::fs::copy(claim_dir.join(f), dir.join(f)).unwrap();
    }
    let cfg = std::fs::read_to_string(claim_dir.join("agent.toml"))
        .unwrap()
        .replace(
            "serial_number = \"SERIAL\"",
            &format!("serial_number = \"{serial}\""),
        )
        .replace("initial_backoff = \"1s\"", "initial_backoff = \"200ms\"")
        .replace("max_backoff = \"60s\"", "max_backoff = \"2s\"");
    std::fs::write(dir.join("agent.toml"), cfg).unwrap();
    Bundle {
        id: serial.into(),
        dir,
    }
}

#[test]
fn a_factory_fresh_agent_provisions_itself_and_sends_telemetry() {
    let hub = TestHub::start_new();
    let claim_dir = claim(&hub, "factory-2026", &["--max-uses", "10"]);
    ok(hub.rampart(&["provision", "allow", "SN-0001", "--group", "line-3"]));
    let dev = fresh_device(&hub, &claim_dir, "SN-0001");
    assert!(!dev.key().exists());
    let agent = Agent::start(&dev, "200ms");
    assert!(
        wait_until(Duration::from_secs(20), || hub.telemetry("SN-0001").len()
            >= 3),
        "no telemetry from the provisioned device:\n{}\n{}",
        agent.logs.text(),
        hub.logs.text()
    );
    // The key was made on the device and stored 0600; the certificate names the device.
    assert_eq!(
        std::fs::metadata(dev.key()).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let show: serde_json::Value =
        serde_json::from_str(&ok(hub.rampart(&["device", "show", "SN-0001", "--json"]))).unwrap();
    assert_eq!(show["group"], "line-3");
    assert_eq!(show["registered_via"], "claim:factory-2026");
    // The private key never crossed the wire: what the hub received (kept in the audit log)
    // holds a CSR and nothing of the key.
    let log: serde_json::Value =
        serde_json::from_str(&ok(hub.rampart(&["log", "--json"]))).unwrap();
    let entry = log
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["action"] == "device.provision")
        .expect("provisioning is in the audit log");
    let detail = entry["detail"].as_str().unwrap();
    assert!(detail.contains("BEGIN CERTIFICATE REQUEST"), "{detail}");
    assert!(!detail.contains("PRIVATE KEY"), "{detail}");
    // The key is sealed with the device's storage key: no PEM on disk, nothing the hub saw.
    let key_file = std::fs::read(dev.key()).unwrap();
    assert!(key_file.starts_with(b"RAMPART-SEALED-1\n"));
    assert!(!key_file.windows(11).any(|w| w == b"PRIVATE KEY"));
    assert!(!detail.contains("PRIVATE KEY"));
    // The claim certificate itself cannot publish telemetry, for any client id.
    let claim_bundle = Bundle {
        id: "SN-0002".into(),
        dir: claim_dir.clone(),
    };
    std::fs::copy(claim_dir.join("claim.crt"), claim_dir.join("device.crt")).unwrap();
    std::fs::copy(claim_dir.join("claim.key"), claim_dir.join("device.key")).unwrap();
    let out = hub.mosquitto_pub(
        &claim_bundle,
        &[
            "-t",
            "devices/SN-0002/telemetry",
            "-m",
            "{}",
            "-q",
            "1",
            "-V",
            "5",
            "-d",
        ],
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("RC:135"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    // Nor reach another device's provisioning exchange.
    let out = hub.mosquitto_pub(
        &claim_bundle,
        &[
            "-t",
            "$rampart/provision/SN-0001/request",
            "-m",
            "{}",
            "-q",
            "1",
            "-V",
            "5",
            "-d",
        ],
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("RC:135"));
}

#[test]
fn a_denied_serial_gets_a_clear_error_and_claims_are_limited() {
    let hub = TestHub::start_new();
    let claim_dir = claim(&hub, "batch-7", &["--max-uses", "1"]);
    // Not on the allow-list.
    let denied = fresh_device(&hub, &claim_dir, "SN-NOPE");
    let agent = Agent::start(&denied, "1s");
    assert!(
        agent.logs.wait_for(
            &[
                "provisioning rejected",
                "not allowed to provision (not on the allow-list)"
            ],
            Duration::from_secs(15)
        ),
        "{}",
        agent.logs.text()
    );
    drop(agent);
    assert!(!hub.rampart(&["device", "show", "SN-NOPE"]).status.success());
    // One use: the first allowed device provisions, the second is refused.
    ok(hub.rampart(&["provision", "allow", "SN-A"]));
    ok(hub.rampart(&["provision", "allow", "SN-B"]));
    let a = Agent::start(&fresh_device(&hub, &claim_dir, "SN-A"), "500ms");
    assert!(
        wait_until(Duration::from_secs(20), || !hub
            .telemetry("SN-A")
            .is_empty()),
        "{}",
        a.logs.text()
    );
    let b = Agent::start(&fresh_device(&hub, &claim_dir, "SN-B"), "500ms");
    // The spent claim is refused at CONNECT, with the reason counted and logged at the hub.
    hub.expect_refusal("claim_exhausted", 1);
    assert!(
        hub.logs.contains("all 1 uses are spent"),
        "{}",
        hub.logs.text()
    );
    assert!(
        b.logs.wait_for(
            &["provisioning rejected", "refused the connection"],
            Duration::from_secs(15)
        ),
        "{}",
        b.logs.text()
    );
    assert!(!hub.rampart(&["device", "show", "SN-B"]).status.success());
}

#[test]
fn a_provisioning_hook_decides_for_serials_not_on_the_allow_list() {
    let mut hub = TestHub::init();
    let script = hub.tmp.path().join("hook.sh");
    std::fs::write(
        &script,
        "#!/bin/sh\nread -r req\ncase \"$req\" in\n  *'\"serial_number\":\"OK-'*) echo '{\"allow\":true,\"group\":\"hooked\",\"attributes\":{\"line\":\"4\"}}' ;;\n  *) echo '{\"allow\":false,\"reason\":\"unknown to the ERP\"}' ;;\nesac\n",
    )
    .unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    hub.configure(
        "hook_command = \"\"",
        &format!("hook_command = \"{}\"", script.display()),
    );
    hub.start();
    let claim_dir = claim(&hub, "batch-hook", &[]);
    let good = Agent::start(&fresh_device(&hub, &claim_dir, "OK-77"), "500ms");
    assert!(
        wait_until(Duration::from_secs(20), || !hub
            .telemetry("OK-77")
            .is_empty()),
        "{}",
        good.logs.text()
    );
    let show: serde_json::Value =
        serde_json::from_str(&ok(hub.rampart(&["device", "show", "OK-77", "--json"]))).unwrap();
    assert_eq!(show["group"], "hooked");
    assert_eq!(show["attributes"]["line"], "4");
    let bad = Agent::start(&fresh_device(&hub, &claim_dir, "XX-1"), "500ms");
    assert!(
        bad.logs
            .wait_for(&["unknown to the ERP"], Duration::from_secs(15)),
        "{}",
        bad.logs.text()
    );
}

#[test]
fn an_http_provisioning_hook_is_asked_over_the_network() {
    // An independent HTTP peer: Python's http.server, answering like a manufacturer's ERP.
    let port = free_port();
    let script = format!(
        r#"
import json, http.server
class H(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        req = json.loads(self.rfile.read(int(self.headers['Content-Length'])))
        ok = req['serial_number'].startswith('ERP-')
        body = json.dumps({{'allow': ok, 'device_id': 'gw-' + req['serial_number'].lower(), 'reason': 'not in the ERP'}}).encode()
        self.send_response(200); self.send_header('Content-Type', 'application/json')
        self.send_header('Content-Length', str(len(body))); self.end_headers(); self.wfile.write(body)
    def log_message(self, *a): pass
http.server.HTTPServer(('127.0.0.1', {port}), H).serve_forever()
"#
    );
    let mut server = std::process::Command::new("python3")
        .args(["-c", &script])
        .spawn()
        .unwrap();
    assert!(wait_until(Duration::from_secs(5), || {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    }));
    let mut hub = TestHub::init();
    hub.configure("allowlist = true", "allowlist = false");
    hub.configure(
        "hook_url = \"\"",
        &format!("hook_url = \"http://127.0.0.1:{port}/provision\""),
    );
    hub.start();
    let claim_dir = claim(&hub, "batch-http", &[]);
    let agent = Agent::start(&fresh_device(&hub, &claim_dir, "ERP-9"), "500ms");
    let ok_seen = wait_until(Duration::from_secs(20), || {
        !hub.telemetry("gw-erp-9").is_empty()
    });
    let _ = server.kill();
    let _ = server.wait();
    assert!(ok_seen, "{}\n{}", agent.logs.text(), hub.logs.text());
}

#[test]
fn a_claim_certificate_stops_working_when_its_lifetime_ends() {
    let hub = TestHub::start_new();
    let claim_dir = claim(&hub, "short-lived", &["--valid-for", "3s"]);
    std::thread::sleep(Duration::from_secs(4));
    ok(hub.rampart(&["provision", "allow", "SN-LATE"]));
    let agent = Agent::start(&fresh_device(&hub, &claim_dir, "SN-LATE"), "500ms");
    hub.expect_refusal("tls_certificate_expired", 1);
    assert!(
        agent
            .logs
            .wait_for(&["provisioning rejected"], Duration::from_secs(10)),
        "{}",
        agent.logs.text()
    );
    assert!(hub.telemetry("SN-LATE").is_empty());
}

#[test]
fn a_factory_reset_returns_a_provisioned_gateway_to_its_provisioning_state() {
    let hub = TestHub::start_new();
    let claim_dir = claim(&hub, "factory-reset", &["--max-uses", "10"]);
    ok(hub.rampart(&["provision", "allow", "SN-RESET"]));
    let dev = fresh_device(&hub, &claim_dir, "SN-RESET");
    let mut agent = Agent::start(&dev, "200ms");
    assert!(wait_until(Duration::from_secs(20), || hub
        .telemetry("SN-RESET")
        .len()
        >= 2));
    assert!(agent.terminate().success());
    let out = agent_cli(&dev, &["reset", "--factory", "--yes"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("provisions itself with its claim certificate"),
        "{text}"
    );
    // Exactly the factory files are left.
    let mut left: Vec<String> = std::fs::read_dir(&dev.dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    left.sort();
    assert_eq!(
        left,
        ["agent.toml", "ca-chain.crt", "claim.crt", "claim.key"]
    );
    // Started again, it behaves as a factory-fresh device: it asks to be provisioned. Whether
    // it may is the hub's decision: its allow-list entry was used up, so it is refused, with
    // the reason.
    let agent = Agent::run(&dev);
    assert!(
        agent.logs.wait_for(
            &["no device certificate yet: provisioning with the claim certificate"],
            Duration::from_secs(15)
        ),
        "{}",
        agent.logs.text()
    );
    assert!(
        agent.logs.wait_for(
            &[
                "provisioning rejected",
                "SN-RESET",
                "not allowed to provision"
            ],
            Duration::from_secs(15)
        ),
        "{}",
        agent.logs.text()
    );
}
