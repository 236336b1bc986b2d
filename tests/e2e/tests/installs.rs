//! Installs end to end: a package and an A/B image released on the hub, found, downloaded,
//! verified, installed and health-checked by a real agent; failing health checks roll back;
//! security fixes install by default while feature releases wait; and the agent killed at
//! every step of an install always comes back on a verified version.

#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use rampart_e2e::release::{Keys, enable_updates, package};
use rampart_e2e::{Agent, Bundle, TestHub, bin, wait_until};
use sha2_free::sha256_hex;

/// SHA-256 of a file with the system's sha256sum (the test's own check, independent of the
/// code under test).
mod sha2_free {
    pub fn sha256_hex(path: &std::path::Path) -> Option<String> {
        let out = std::process::Command::new("sha256sum")
            .arg(path)
            .output()
            .ok()?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        text.split_whitespace().next().map(str::to_owned)
    }
}

/// Update events of a device: (stage, version).
fn update_events(hub: &TestHub, id: &str) -> Vec<(String, String)> {
    hub.events(id)
        .iter()
        .filter(|e| e["kind"] == "update")
        .map(|e| {
            (
                e["stage"].as_str().unwrap_or("").to_owned(),
                e["version"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect()
}

fn has_event(hub: &TestHub, id: &str, stage: &str, version: &str) -> bool {
    update_events(hub, id)
        .iter()
        .any(|(s, v)| s == stage && v == version)
}

fn current(dev: &Bundle) -> Option<String> {
    std::fs::read_link(dev.dir.join("app/current"))
        .ok()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
}

#[test]
fn a_package_update_installs_end_to_end_and_a_failing_health_check_rolls_back() {
    let mut hub = TestHub::init();
    hub.start();
    let keys = Keys::new(&hub);
    keys.publish_empty(&hub);
    let dev = hub.add_device("gw-pkg");
    enable_updates(
        &hub,
        &dev,
        "feature_auto_install = true\nhealth_command = \"test -f \\\"$RAMPART_UPDATE_DIR/healthy\\\"\"",
    );
    let agent = Agent::start(&dev, "1s");
    let p1 = package(
        hub.tmp.path(),
        "app-1.1.0",
        &[("bin/app", b"#!/bin/sh\necho 1.1.0\n"), ("healthy", b"yes")],
    );
    keys.release(&hub, &p1, "1.1.0", &[]);
    assert!(
        wait_until(Duration::from_secs(60), || has_event(
            &hub,
            "gw-pkg",
            "succeeded",
            "1.1.0"
        )),
        "1.1.0 not committed: {:?}\n{}",
        update_events(&hub, "gw-pkg"),
        agent.logs.text()
    );
    assert_eq!(current(&dev).as_deref(), Some("1.1.0"));
    assert_eq!(
        std::fs::read(dev.dir.join("app/current/bin/app")).unwrap(),
        b"#!/bin/sh\necho 1.1.0\n"
    );
    let stages: Vec<String> = update_events(&hub, "gw-pkg")
        .into_iter()
        .map(|(s, _)| s)
        .collect();
    for s in ["downloading", "installing", "verifying", "succeeded"] {
        assert!(stages.iter().any(|x| x == s), "{s} reported: {stages:?}");
    }
    // The fleet view learns the new version at the next connection (agent restart here).
    // 1.2.0 lacks the file the health check wants: it is switched to, fails, rolls back.
    let p2 = package(hub.tmp.path(), "app-1.2.0", &[("bin/app", b"broken")]);
    keys.release(&hub, &p2, "1.2.0", &[]);
    assert!(
        wait_until(Duration::from_secs(60), || has_event(
            &hub,
            "gw-pkg",
            "rolled_back",
            "1.2.0"
        )),
        "1.2.0 not rolled back: {:?}\n{}",
        update_events(&hub, "gw-pkg"),
        agent.logs.text()
    );
    assert_eq!(current(&dev).as_deref(), Some("1.1.0"), "back on 1.1.0");
    assert!(hub.metric("rampart_device_updates_rolled_back_total") >= 1.0);
    let installed: serde_json::Value = serde_json::from_slice(
        &std::fs::read(dev.dir.join("state/update/installed.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(installed["version"], "1.1.0");
    hub.stop();
}

#[test]
fn security_fixes_install_by_default_while_feature_releases_wait_for_a_rollout() {
    let mut hub = TestHub::init();
    hub.start();
    let keys = Keys::new(&hub);
    keys.publish_empty(&hub);
    let dev = hub.add_device("gw-sec");
    enable_updates(&hub, &dev, "");
    let postponed = hub.add_device("gw-sec-later");
    enable_updates(&hub, &postponed, "security_postpone = \"3d\"");
    let agents = [Agent::start(&dev, "1s"), Agent::start(&postponed, "1s")];
    let feature = package(hub.tmp.path(), "app-2.0.0", &[("f", b"feature")]);
    keys.release(&hub, &feature, "2.0.0", &[]);
    let fix = package(hub.tmp.path(), "app-1.0.1", &[("f", b"fix")]);
    keys.release(&hub, &fix, "1.0.1", &["--security"]);
    assert!(
        wait_until(Duration::from_secs(60), || has_event(
            &hub,
            "gw-sec",
            "succeeded",
            "1.0.1"
        )),
        "the security fix was not installed: {:?}\n{}",
        update_events(&hub, "gw-sec"),
        agents[0].logs.text()
    );
    assert_eq!(current(&dev).as_deref(), Some("1.0.1"));
    // Both updates were reported as available; the feature release was not installed.
    let available: Vec<serde_json::Value> = hub
        .events("gw-sec")
        .into_iter()
        .filter(|e| e["kind"] == "update_available")
        .collect();
    assert!(
        available.iter().any(|e| e["version"] == "2.0.0"
            && e["security"] == false
            && e.get("install_at").is_none()),
        "{available:?}"
    );
    assert!(
        available
            .iter()
            .any(|e| e["version"] == "1.0.1" && e["security"] == true),
        "{available:?}"
    );
    assert!(!has_event(&hub, "gw-sec", "downloading", "2.0.0"));
    // The postponing device reports when it will install, three days out, and waits.
    assert!(wait_until(Duration::from_secs(30), || hub
        .events("gw-sec-later")
        .iter()
        .any(|e| e["kind"] == "update_available"
            && e["version"] == "1.0.1"
            && e["install_at"].is_string())));
    assert_eq!(current(&postponed), None, "postponed, not installed");
    hub.stop();
}

/// A device whose slot a holds image 1 and boots from it.
fn image_device(hub: &TestHub, id: &str, extra: &str, v1: &[u8]) -> Bundle {
    let dev = hub.add_device(id);
    std::fs::create_dir_all(dev.dir.join("slots")).unwrap();
    std::fs::write(dev.dir.join("slots/a.img"), v1).unwrap();
    enable_updates(hub, &dev, &format!("feature_auto_install = true\n{extra}"));
    dev
}

fn active_slot(dev: &Bundle) -> std::path::PathBuf {
    let boot: serde_json::Value = std::fs::read(dev.dir.join("slots/boot.json"))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or(serde_json::json!({"active": "a"}));
    dev.dir
        .join(format!("slots/{}.img", boot["active"].as_str().unwrap()))
}

fn image(byte: u8) -> Vec<u8> {
    (0..3_000_000u32).map(|i| (i % 251) as u8 ^ byte).collect()
}

/// A running hub with an empty published repository, images 1 and 2, and image 2 written
/// to a file ready for `rampart release add`.
fn hub_with_images() -> (TestHub, Keys, Vec<u8>, Vec<u8>, std::path::PathBuf) {
    let mut hub = TestHub::init();
    hub.start();
    let keys = Keys::new(&hub);
    keys.publish_empty(&hub);
    let (v1, v2) = (image(1), image(2));
    let img = hub.tmp.path().join("gw-2.0.0.img");
    std::fs::write(&img, &v2).unwrap();
    (hub, keys, v1, v2, img)
}

#[test]
fn an_ab_image_update_switches_slots_and_a_failing_health_check_rolls_back() {
    let (mut hub, keys, v1, v2, img) = hub_with_images();
    let good = image_device(&hub, "gw-ab", "", &v1);
    let bad = image_device(&hub, "gw-ab-bad", "health_command = \"exit 3\"", &v1);
    let _agents = [Agent::start(&good, "1s"), Agent::start(&bad, "1s")];
    keys.release(&hub, &img, "2.0.0", &["--kind", "image"]);
    assert!(wait_until(Duration::from_secs(60), || has_event(
        &hub,
        "gw-ab",
        "succeeded",
        "2.0.0"
    )));
    assert_eq!(active_slot(&good), good.dir.join("slots/b.img"));
    assert_eq!(std::fs::read(good.dir.join("slots/b.img")).unwrap(), v2);
    assert!(wait_until(Duration::from_secs(60), || has_event(
        &hub,
        "gw-ab-bad",
        "rolled_back",
        "2.0.0"
    )));
    assert_eq!(active_slot(&bad), bad.dir.join("slots/a.img"));
    assert_eq!(
        std::fs::read(bad.dir.join("slots/a.img")).unwrap(),
        v1,
        "slot a untouched"
    );
    let rolled = hub
        .events("gw-ab-bad")
        .into_iter()
        .find(|e| e["stage"] == "rolled_back")
        .unwrap();
    assert!(
        rolled["detail"].as_str().unwrap().contains("exit"),
        "{rolled}"
    );
    hub.stop();
}

/// Runs the agent with RAMPART_AGENT_CRASH_AT=step and waits for it to abort there.
fn crash_at(dev: &Bundle, step: &str) {
    let mut child = Command::new(bin("rampart-agent"))
        .args(["run", "--config"])
        .arg(dev.agent_toml())
        .env("RAMPART_AGENT_CRASH_AT", step)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let status = rampart_e2e::wait_child(&mut child, Duration::from_secs(60));
    let status = status.unwrap_or_else(|| {
        let _ = child.kill();
        panic!("the agent never reached {step}")
    });
    assert!(!status.success(), "aborted at {step}");
}

/// Starts the agent again after a crash at `step` and waits until it commits `version`.
fn restart_until_committed(hub: &TestHub, dev: &Bundle, version: &str, step: &str) -> Agent {
    let agent = Agent::run(dev);
    assert!(
        wait_until(Duration::from_secs(60), || has_event(
            hub,
            &dev.id,
            "succeeded",
            version
        )),
        "no commit after a crash at {step}: {:?}\n{}",
        update_events(hub, &dev.id),
        agent.logs.text()
    );
    agent
}

fn verified_image(path: &Path, allowed: &[&str]) -> bool {
    sha256_hex(path).is_some_and(|h| allowed.contains(&h.as_str()))
}

#[test]
fn killing_the_agent_at_every_install_step_never_leaves_an_unverified_version_active() {
    let (mut hub, keys, v1, _v2, img) = hub_with_images();
    std::fs::write(hub.tmp.path().join("v1.img"), &v1).unwrap();
    let (h1, h2) = (
        sha256_hex(&hub.tmp.path().join("v1.img")).unwrap(),
        sha256_hex(&img).unwrap(),
    );
    keys.release(&hub, &img, "2.0.0", &["--kind", "image"]);
    let pkg = package(
        hub.tmp.path(),
        "app-1.5.0",
        &[("bin/app", b"v1.5"), ("etc/conf", b"c")],
    );
    // Packages on their own channel, so image devices see only the image and vice versa.
    keys.release(&hub, &pkg, "1.5.0", &["--channel", "pkg"]);

    let image_steps = [
        "image.writing",
        "image.written",
        "image.switching",
        "image.switched",
        "image.trial",
        "trial.finishing",
    ];
    for (i, step) in image_steps.iter().enumerate() {
        let dev = image_device(&hub, &format!("gw-crash-img-{i}"), "", &v1);
        crash_at(&dev, step);
        assert!(
            verified_image(&active_slot(&dev), &[&h1, &h2]),
            "after a crash at {step}, the active slot holds a verified image"
        );
        let agent = restart_until_committed(&hub, &dev, "2.0.0", step);
        assert_eq!(sha256_hex(&active_slot(&dev)).unwrap(), h2, "{step}");
        drop(agent);
    }

    let package_steps = [
        "package.unpacking",
        "package.unpacked",
        "package.switching",
        "package.switched",
        "package.trial",
        "trial.finishing",
    ];
    for (i, step) in package_steps.iter().enumerate() {
        let dev = hub.add_device(&format!("gw-crash-pkg-{i}"));
        enable_updates(&hub, &dev, "feature_auto_install = true\nchannel = \"pkg\"");
        crash_at(&dev, step);
        // `current` is absent (factory version) or a complete, unpacked release.
        if let Some(v) = current(&dev) {
            assert_eq!(v, "1.5.0", "{step}");
            assert_eq!(
                std::fs::read(dev.dir.join("app/current/bin/app")).unwrap(),
                b"v1.5",
                "{step}"
            );
            assert_eq!(
                std::fs::read(dev.dir.join("app/current/etc/conf")).unwrap(),
                b"c",
                "{step}"
            );
        }
        let agent = restart_until_committed(&hub, &dev, "1.5.0", step);
        assert_eq!(current(&dev).as_deref(), Some("1.5.0"), "{step}");
        drop(agent);
    }
    hub.stop();
}
