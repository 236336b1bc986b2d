//! `rampart demo --devices 3` shows telemetry from three devices within 15 seconds.

#![allow(clippy::unwrap_used)] // helpers outside #[test] fns; a failed unwrap fails the test

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use rampart_e2e::*;

#[test]
fn demo_shows_three_devices_within_15_seconds() {
    let mut child = Command::new(bin("rampart"))
        .args(["demo", "--devices", "3"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let out = Lines::capture(child.stdout.take().unwrap());
    let err = Lines::capture(child.stderr.take().unwrap());
    let t0 = Instant::now();
    let ids = ["demo-gw-01", "demo-gw-02", "demo-gw-03"];
    let seen_all = wait_until(Duration::from_secs(15), || {
        ids.iter().all(|id| {
            out.all()
                .iter()
                .any(|l| l.contains(id) && l.contains(" V ") && l.contains(" %"))
        })
    });
    let elapsed = t0.elapsed();
    // Ctrl-C ends it cleanly.
    signal(child.id(), Signal::SIGINT);
    let status = wait_child(&mut child, Duration::from_secs(20));
    assert!(
        seen_all,
        "not all devices reported within 15 s:\n{}\n{}",
        out.text(),
        err.text()
    );
    assert!(elapsed < Duration::from_secs(15));
    assert!(
        status.is_some_and(|s| s.success()),
        "demo exit: {status:?}\n{}",
        err.text()
    );
    assert!(out.contains("reading(s) stored"), "{}", out.text());
}
