//! Staged rollouts end to end: a release rolled out wave by wave to a group of 20 real
//! agents, manual approval between waves, an automatic pause when injected failures cross the
//! threshold, an abort that rolls the updated devices back; install instructions a device
//! must refuse (other hardware, a downgrade); and the operator's mistakes refused by the CLI.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use rampart_e2e::release::{Keys, enable_updates, ok, package, refused};
use rampart_e2e::{Agent, Bundle, PLAIN_KEYS, TestHub, wait_until};
use serde_json::Value;

fn status(hub: &TestHub, id: &str) -> Value {
    serde_json::from_str(&ok(hub.rampart(&["rollout", "status", id, "--json"]))).unwrap()
}

fn device_states(s: &Value) -> Vec<(String, String)> {
    s["devices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            (
                d["device_id"].as_str().unwrap().to_owned(),
                d["state"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

fn count(s: &Value, state: &str) -> u64 {
    s["counts"][state].as_u64().unwrap_or(0)
}

fn wait_state(hub: &TestHub, id: &str, state: &str, secs: u64) -> Value {
    let mut last = Value::Null;
    let reached = wait_until(Duration::from_secs(secs), || {
        last = status(hub, id);
        last["state"] == state
    });
    assert!(reached, "rollout {id} never {state}: {last:#}");
    last
}

fn current(dev: &Bundle) -> Option<String> {
    std::fs::read_link(dev.dir.join("app/current"))
        .ok()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
}

fn installed(dev: &Bundle) -> Option<String> {
    let bytes = std::fs::read(dev.dir.join("state/update/installed.json")).ok()?;
    let v: Value = serde_json::from_slice(&bytes).unwrap();
    v["version"].as_str().map(str::to_owned)
}

/// A device with updates on (feature releases wait for a rollout), checking the repository
/// rarely so only the rollout's instruction starts an install.
fn updatable(hub: &TestHub, id: &str, health: &str) -> Bundle {
    let dev = hub.add_device(id);
    enable_updates(hub, &dev, &format!("health_command = \"{health}\""));
    let cfg = std::fs::read_to_string(dev.agent_toml())
        .unwrap()
        .replace("check_interval = \"1s\"", "check_interval = \"1h\"");
    std::fs::write(dev.agent_toml(), cfg).unwrap();
    dev
}

#[test]
fn a_rollout_to_20_devices_waits_for_approval_pauses_at_its_failure_threshold_and_an_abort_rolls_back()
 {
    let mut hub = TestHub::init();
    hub.start();
    let keys = Keys::new(&hub);
    keys.publish_empty(&hub);
    let pkg = package(
        hub.tmp.path(),
        "app-1.1.0",
        &[("bin/app", b"#!/bin/sh\necho 1.1.0\n")],
    );
    let target = keys.release(&hub, &pkg, "1.1.0", &[]);

    // gw-01..gw-20 in group "fleet"; waves exponential:2:2 are 2, 4, 8 and 6 devices, so
    // wave 3 is gw-07..gw-14. Three of them fail their health check after switching.
    let failing = ["gw-08", "gw-10", "gw-13"];
    let mut devices = Vec::new();
    let mut agents = Vec::new();
    for i in 1..=20 {
        let id = format!("gw-{i:02}");
        let health = if failing.contains(&id.as_str()) {
            "echo injected failure >&2; false"
        } else {
            "test -f \\\"$RAMPART_UPDATE_DIR/bin/app\\\""
        };
        let dev = updatable(&hub, &id, health);
        ok(hub.rampart(&["device", "set", &id, "--group", "fleet"]));
        agents.push(Agent::start(&dev, "30s"));
        devices.push(dev);
    }
    // A device outside the group is not part of the rollout.
    let outsider = updatable(&hub, "gw-other", "true");
    let _outsider_agent = Agent::start(&outsider, "30s");
    assert!(
        wait_until(Duration::from_secs(60), || hub.metric("rampart_sessions")
            >= 21.0),
        "agents connected: {}",
        hub.metric("rampart_sessions")
    );

    let started = ok(hub.rampart(&[
        "rollout",
        "start",
        "fleet-1.1.0",
        "--target",
        &target,
        "--group",
        "fleet",
        "--waves",
        "exponential:2:2",
        "--success-threshold",
        "75",
        "--failure-threshold",
        "25",
        "--manual-approval",
    ]));
    assert!(started.contains("wave     1 of 4"), "{started}");

    // Wave 1 (2 devices) succeeds; the rollout waits for approval and nobody else moved.
    let s = wait_state(&hub, "fleet-1.1.0", "awaiting_approval", 90);
    assert_eq!(s["per_wave"][0]["succeeded"], 2, "{s:#}");
    assert_eq!(count(&s, "pending"), 18, "{s:#}");
    for dev in &devices[..2] {
        assert_eq!(current(dev).as_deref(), Some("1.1.0"), "{}", dev.id);
    }
    for dev in &devices[2..] {
        assert_eq!(current(dev), None, "{} was not in wave 1", dev.id);
    }
    // Approving twice in a row: the second is refused (the rollout is running again).
    ok(hub.rampart(&["rollout", "approve", "fleet-1.1.0"]));
    let again = refused(hub.rampart(&["rollout", "approve", "fleet-1.1.0"]));
    assert!(
        again.contains("only a rollout awaiting approval"),
        "{again}"
    );

    // 75 % of 4: the wave is done at its third success, the fourth may still be going.
    let s = wait_state(&hub, "fleet-1.1.0", "awaiting_approval", 90);
    assert!(
        s["per_wave"][1]["succeeded"].as_u64().unwrap() >= 3,
        "{s:#}"
    );
    assert_eq!(s["wave"], 2);
    ok(hub.rampart(&["rollout", "approve", "fleet-1.1.0"]));

    // Wave 3: the third failure of 8 (37.5 % > 25 %) pauses the rollout by itself.
    let s = wait_state(&hub, "fleet-1.1.0", "paused", 120);
    let reason = s["reason"].as_str().unwrap();
    assert!(
        reason.contains("wave 3") && reason.contains("3 of 8"),
        "{reason}"
    );
    assert_eq!(s["per_wave"][2]["failed"], 3, "{s:#}");
    assert_eq!(s["per_wave"][3]["pending"], 6, "wave 4 untouched: {s:#}");
    assert!(hub.metric("rampart_rollout_automatic_pauses_total") >= 1.0);
    for (id, state) in device_states(&s) {
        if failing.contains(&id.as_str()) {
            assert_eq!(state, "rolled_back", "{id}: {s:#}");
        }
    }
    for dev in &devices {
        if failing.contains(&dev.id.as_str()) {
            assert_eq!(
                current(dev),
                None,
                "{} rolled back to the factory version",
                dev.id
            );
        }
    }
    for dev in &devices[14..] {
        assert_eq!(current(dev), None, "{} is in wave 4", dev.id);
    }
    // Each failing device said why, and the hub shows it.
    let gw08 = s["devices"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["device_id"] == "gw-08")
        .unwrap();
    assert!(
        gw08["detail"]
            .as_str()
            .unwrap()
            .contains("injected failure"),
        "{gw08}"
    );
    let human = ok(hub.rampart(&["rollout", "status", "fleet-1.1.0"]));
    assert!(
        human.contains("paused") && human.contains("gw-08"),
        "{human}"
    );

    // Wait until every device of wave 3 has finished, then abort: the updated ones are told
    // to roll back, wave 4 is cancelled.
    let s = {
        let mut last = Value::Null;
        assert!(
            wait_until(Duration::from_secs(60), || {
                last = status(&hub, "fleet-1.1.0");
                (0..3).all(|w| last["per_wave"][w]["in_progress"] == 0)
            }),
            "{last:#}"
        );
        last
    };
    let updated = count(&s, "succeeded");
    assert_eq!(updated, 2 + 4 + 5, "{s:#}");
    let aborted = ok(hub.rampart(&[
        "rollout",
        "abort",
        "fleet-1.1.0",
        "--reason",
        "health checks fail on 1.1.0",
    ]));
    assert!(aborted.contains("aborted"), "{aborted}");
    let mut last = Value::Null;
    assert!(
        wait_until(Duration::from_secs(90), || {
            last = status(&hub, "fleet-1.1.0");
            count(&last, "rolled_back") == 14 && count(&last, "cancelled") == 6
        }),
        "{last:#}"
    );
    assert_eq!(
        hub.metric("rampart_rollout_rollback_commands_total"),
        updated as f64
    );
    for dev in &devices[..14] {
        // Updated devices record the return to 1.0.0; failing ones never committed 1.1.0.
        let expected = if failing.contains(&dev.id.as_str()) {
            None
        } else {
            Some("1.0.0")
        };
        assert_eq!(
            installed(dev).as_deref(),
            expected,
            "{} back on the version before the rollout",
            dev.id
        );
        assert_eq!(current(dev), None, "{}", dev.id);
    }
    let gw01 = last["devices"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["device_id"] == "gw-01")
        .unwrap();
    assert!(
        gw01["detail"]
            .as_str()
            .unwrap()
            .contains("aborted: back to 1.0.0"),
        "{gw01}"
    );
    // An aborted rollout cannot be resumed or aborted again; the audit log has each step.
    let e = refused(hub.rampart(&["rollout", "resume", "fleet-1.1.0"]));
    assert!(e.contains("only a paused rollout"), "{e}");
    let log = ok(hub.rampart(&["log", "--limit", "200"]));
    for action in [
        "rollout.start",
        "rollout.approve",
        "rollout.paused",
        "rollout.abort",
    ] {
        assert!(log.contains(action), "{action} in the audit log:\n{log}");
    }
    assert_eq!(current(&outsider), None, "the outsider was never told");
    hub.stop();
}

#[test]
fn install_instructions_for_other_hardware_or_an_older_version_are_refused_by_the_device() {
    let mut hub = TestHub::init();
    hub.start();
    let keys = Keys::new(&hub);
    keys.publish_empty(&hub);
    let other_hw = keys.release_for(
        &hub,
        &package(hub.tmp.path(), "app-2.0.0", &[("bin/app", b"gw-2 build")]),
        "2.0.0",
        "gw-2",
        &[],
    );
    let older = keys.release(
        &hub,
        &package(hub.tmp.path(), "app-0.9.0", &[("bin/app", b"old")]),
        "0.9.0",
        &[],
    );
    let dev = updatable(&hub, "gw-solo", "true");
    // Plain keys: mosquitto_pub connects as the device below.
    let _agent = Agent::start_with(&dev, "30s", &[PLAIN_KEYS]);
    assert!(wait_until(Duration::from_secs(30), || hub
        .metric("rampart_sessions")
        >= 1.0));

    for (id, target, why) in [
        ("other-hw", &other_hw, "gw-2"),
        ("downgrade", &older, "0.9.0"),
    ] {
        ok(hub.rampart(&[
            "rollout",
            "start",
            id,
            "--target",
            target,
            "--devices",
            "gw-solo",
            "--waves",
            "fixed:1",
            "--success-threshold",
            "100",
            "--failure-threshold",
            "0",
        ]));
        let s = wait_state(&hub, id, "paused", 60);
        let d = &s["devices"][0];
        assert_eq!(d["state"], "failed", "{s:#}");
        let detail = d["detail"].as_str().unwrap();
        assert!(detail.contains(why), "{id}: {detail}");
        assert!(s["reason"].as_str().unwrap().contains("1 of 1"), "{s:#}");
        assert_eq!(current(&dev), None, "{id}: nothing installed");
        assert_eq!(installed(&dev), None, "{id}: still the factory version");
    }
    let events = hub.events("gw-solo");
    let refusals: Vec<&str> = events
        .iter()
        .filter(|e| e["kind"] == "update" && e["stage"] == "failed")
        .filter_map(|e| e["detail"].as_str())
        .collect();
    assert!(
        refusals.iter().any(|d| d.contains("hardware"))
            && refusals
                .iter()
                .any(|d| d.contains("downgrade") || d.contains("not newer")),
        "{refusals:?}"
    );

    // Only the hub sends instructions: the device's own publish there is refused.
    let before = hub.refusals("publish_denied");
    let _ = hub.mosquitto_pub(
        &dev,
        &[
            "-V",
            "mqttv5",
            "-q",
            "1",
            "-t",
            "devices/gw-solo/update/command",
            "-m",
            r#"{"v":1,"id":"x/rollback","action":"rollback","rollout":"x"}"#,
        ],
    );
    hub.expect_refusal("publish_denied", before + 1);

    // The operator's mistakes, each refused with the reason and nothing stored.
    for (args, why) in [
        (
            vec![
                "--target",
                "releases/9.9.9/none.tar",
                "--devices",
                "gw-solo",
            ],
            "not a published",
        ),
        (
            vec!["--target", &older, "--devices", "gw-nobody"],
            "not found",
        ),
        (
            vec!["--target", &older, "--devices", "gw-solo,gw-solo"],
            "listed twice",
        ),
        (
            vec!["--target", &older, "--group", "empty"],
            "no active devices",
        ),
        (
            vec![
                "--target",
                &older,
                "--devices",
                "gw-solo",
                "--waves",
                "fixed:0",
            ],
            "at least one device",
        ),
        (
            vec![
                "--target",
                &older,
                "--devices",
                "gw-solo",
                "--success-threshold",
                "100",
                "--failure-threshold",
                "10",
            ],
            "no room",
        ),
    ] {
        let mut full = vec!["rollout", "start", "bad"];
        full.extend(args);
        let e = refused(hub.rampart(&full));
        assert!(e.contains(why), "{full:?}: {e}");
    }
    let e = refused(hub.rampart(&[
        "rollout",
        "start",
        "a/b",
        "--target",
        &older,
        "--devices",
        "gw-solo",
    ]));
    assert!(e.contains("rollout id"), "{e}");
    let e = refused(hub.rampart(&[
        "rollout",
        "start",
        "other-hw",
        "--target",
        &older,
        "--devices",
        "gw-solo",
    ]));
    assert!(e.contains("already exists"), "{e}");
    let e = refused(hub.rampart(&["rollout", "status", "bad"]));
    assert!(e.contains("not found"), "{e}");
    let list = ok(hub.rampart(&["rollout", "list"]));
    assert!(
        list.contains("other-hw") && list.contains("downgrade") && !list.contains("bad"),
        "{list}"
    );
    hub.stop();
}

#[test]
fn a_rollout_started_while_the_hub_is_down_is_carried_out_when_it_starts() {
    let mut hub = TestHub::init();
    hub.start();
    let keys = Keys::new(&hub);
    keys.publish_empty(&hub);
    let target = keys.release(
        &hub,
        &package(hub.tmp.path(), "app-1.2.0", &[("bin/app", b"1.2.0")]),
        "1.2.0",
        &[],
    );
    let dev = updatable(&hub, "gw-late", "true");
    let agent = Agent::start(&dev, "30s");
    hub.stop();
    let out = hub.rampart(&[
        "rollout",
        "start",
        "late",
        "--target",
        &target,
        "--devices",
        "gw-late",
        "--waves",
        "fixed:1",
    ]);
    let text = ok(out);
    assert!(text.contains("pending 1"), "{text}");
    hub.start();
    let s = wait_state(&hub, "late", "completed", 90);
    assert_eq!(count(&s, "succeeded"), 1, "{s:#}");
    assert_eq!(
        current(&dev).as_deref(),
        Some("1.2.0"),
        "{}",
        agent.logs.text()
    );
    hub.stop();
}
