//! The identity audit: every check triggered by a situation crafted for it.

#![allow(clippy::unwrap_used)] // helpers outside #[test] fns; a failed unwrap fails the test

use std::time::Duration;

use rampart_e2e::*;

fn findings(hub: &TestHub) -> Vec<serde_json::Value> {
    let out = hub.rampart(&["audit", "--json"]);
    serde_json::from_slice::<Vec<serde_json::Value>>(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stderr)))
}

fn has(f: &[serde_json::Value], check: &str, severity: &str, subject_part: &str) -> bool {
    f.iter().any(|x| {
        x["check"] == check
            && x["severity"] == severity
            && x["subject"].as_str().unwrap().contains(subject_part)
    })
}

#[test]
fn each_audit_check_finds_its_crafted_situation() {
    let mut hub = TestHub::init();
    // Thresholds that make the freshly made certificates "expiring" and "too old".
    hub.configure(
        "certificate_expiry_warning = \"14d\"",
        "certificate_expiry_warning = \"100d\"",
    );
    hub.configure(
        "max_certificate_age = \"365d\"",
        "max_certificate_age = \"1s\"",
    );
    hub.start();

    // A clean registry has only the findings the thresholds above cause.
    let clean = hub.add_device("gw-clean");
    std::thread::sleep(Duration::from_millis(1500));

    // ca_expiring + weak_key: a vendor CA with 10 days left and an RSA-2048 device from it.
    let vendors = hub.tmp.path().join("vendors");
    let old_ca = VendorCa::create(&vendors, "old-vendor-ca", "rsa:2048", 10);
    assert!(
        hub.rampart(&["ca", "register", old_ca.cert().to_str().unwrap()])
            .status
            .success()
    );
    let rsa_dev = old_ca.issue(&hub, "rsa-gw-1", "/CN=rsa-gw-1", "rsa:2048");
    let out = hub.mosquitto_pub(
        &rsa_dev,
        &["-t", "devices/rsa-gw-1/x", "-m", "x", "-q", "1"],
    );
    assert!(
        out.status.success(),
        "RSA device registers just in time: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    // shared_certificate: the genuine device, and its certificate presented by a clone under
    // another client id.
    let shared = hub.add_device("gw-shared");
    assert!(
        hub.mosquitto_pub(
            &shared,
            &["-t", "devices/gw-shared/x", "-m", "x", "-q", "1"]
        )
        .status
        .success()
    );
    let mut clone = hub.mosquitto_args(&shared);
    let i = clone.iter().position(|a| a == "-i").unwrap();
    clone[i + 1] = "gw-shared-clone".into();
    let _ = std::process::Command::new("mosquitto_pub")
        .args(&clone)
        .args(["-t", "devices/gw-shared/x", "-m", "x", "-q", "1"])
        .output()
        .unwrap();

    // revoked_still_connected: the registry says revoked while a session is open (a change the
    // running hub was not told about).
    let stale = hub.add_device("gw-stale");
    let (mut sub, lines) = hub.mosquitto_sub(&stale, &["-t", "devices/gw-stale/#", "-d"]);
    assert!(lines.wait_for(&["SUBACK"], Duration::from_secs(5)));
    hub.sql(
        "UPDATE certificates SET status = 'revoked', revoked_at = 0 WHERE device_id = 'gw-stale'",
    );

    // permissive_policy: publish-everywhere attached to the fleet.
    let p = hub.tmp.path().join("everything.toml");
    std::fs::write(&p, "name = \"everything\"\n[[statement]]\neffect = \"allow\"\nactions = [\"publish\"]\nresources = [\"#\"]\n").unwrap();
    assert!(
        hub.rampart(&["policy", "put", p.to_str().unwrap()])
            .status
            .success()
    );
    assert!(
        hub.rampart(&["policy", "attach", "everything", "fleet"])
            .status
            .success()
    );

    // Usage is recorded once a second.
    std::thread::sleep(Duration::from_millis(1500));
    let f = findings(&hub);
    let _ = sub.kill();
    let show = |f: &[serde_json::Value]| serde_json::to_string_pretty(f).unwrap();
    assert!(
        has(&f, "ca_expiring", "high", "old-vendor-ca"),
        "{}",
        show(&f)
    );
    assert!(has(&f, "weak_key", "high", "rsa-gw-1"), "{}", show(&f));
    assert!(
        has(&f, "shared_certificate", "high", "gw-shared"),
        "{}",
        show(&f)
    );
    assert!(
        has(&f, "revoked_still_connected", "critical", "gw-stale"),
        "{}",
        show(&f)
    );
    assert!(
        has(&f, "permissive_policy", "high", "everything"),
        "{}",
        show(&f)
    );
    assert!(
        has(&f, "certificate_expiring", "medium", &clean.id),
        "{}",
        show(&f)
    );
    assert!(
        has(&f, "certificate_too_old", "medium", &clean.id),
        "{}",
        show(&f)
    );
    // Every finding says how to fix it, and the command fails on high findings.
    assert!(f.iter().all(|x| !x["hint"].as_str().unwrap().is_empty()));
    assert!(!hub.rampart(&["audit"]).status.success());
    // A device that is neither shared, weak, revoked nor a CA has no finding of those kinds.
    assert!(!f.iter().any(|x| {
        x["subject"].as_str().unwrap().contains("gw-clean")
            && ["shared_certificate", "weak_key", "revoked_still_connected"]
                .contains(&x["check"].as_str().unwrap())
    }));
}

#[test]
fn the_hub_runs_the_audit_on_a_schedule_and_exports_the_counts() {
    let mut hub = TestHub::init();
    hub.configure("interval = \"24h\"", "interval = \"1s\"");
    hub.configure(
        "max_certificate_age = \"365d\"",
        "max_certificate_age = \"1s\"",
    );
    hub.start();
    hub.add_device("gw-a");
    assert!(
        wait_until(Duration::from_secs(10), || hub
            .metric("rampart_audit_findings_medium")
            >= 1.0),
        "{}",
        hub.logs.text()
    );
    assert!(hub.logs.contains("audit finding"));
}

/// A restart is followed by every device reconnecting at once, and the audit reads the whole
/// registry on the hub's core: the first scheduled run waits one interval (at most a minute)
/// rather than running at the start.
#[test]
fn the_first_scheduled_audit_waits_one_interval_after_the_start() {
    let mut hub = TestHub::init();
    hub.configure("interval = \"24h\"", "interval = \"3s\"");
    hub.start();
    assert!(
        hub.logs
            .wait_for(&["scheduled audit done"], Duration::from_secs(20)),
        "{}",
        hub.logs.text()
    );
    let logged_at = |needle: &str| {
        let line = hub
            .logs
            .all()
            .into_iter()
            .find(|l| l.contains(needle))
            .unwrap_or_else(|| panic!("no {needle:?} in the log"));
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        let ts = v["timestamp"].as_str().unwrap().to_owned();
        time::OffsetDateTime::parse(&ts, &time::format_description::well_known::Rfc3339).unwrap()
    };
    let waited = logged_at("scheduled audit done") - logged_at("hub started");
    assert!(
        waited >= time::Duration::milliseconds(2_500) && waited < time::Duration::seconds(15),
        "the first audit ran {waited} after the start; expected one interval (3 s)"
    );
}
