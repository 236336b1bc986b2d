//! What the hub acknowledged survives `kill -9`.

#![allow(clippy::unwrap_used)] // helpers outside #[test] fns; a failed unwrap fails the test

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use rampart_e2e::*;

fn telemetry_line(seq: u32) -> String {
    format!(
        r#"{{"v":1,"seq":{seq},"ts":"2026-11-23T10:00:00Z","pack":{{"voltage_v":52.0,"current_a":1.5,"soc_pct":50.0,"soh_pct":99.0}},"source":{{"kind":"test"}}}}"#
    )
}

/// Publishes a reading for each of `seqs` on gw-a's telemetry topic at `qos` with
/// `mosquitto_pub -l`, which sends one message per line and exits after the last one (at
/// QoS 1: after its PUBACK).
fn publish_telemetry(hub: &TestHub, dev: &Bundle, qos: &str, seqs: std::ops::RangeInclusive<u32>) {
    let mut child = Command::new("mosquitto_pub")
        .args(hub.mosquitto_args(dev))
        .args(["-t", "devices/gw-a/telemetry", "-q", qos, "-l"])
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    {
        let mut stdin = child.stdin.take().unwrap();
        for seq in seqs {
            writeln!(stdin, "{}", telemetry_line(seq)).unwrap();
        }
    }
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn acknowledged_qos1_telemetry_survives_kill_9() {
    let mut hub = TestHub::start_new();
    let dev = hub.add_device("gw-a");
    let n = 500;
    publish_telemetry(&hub, &dev, "1", 1..=n);
    // Every message was acknowledged. Kill the hub before it can do anything else.
    hub.kill9();
    hub.start();
    let rows = hub.telemetry("gw-a");
    let seqs: Vec<i64> = rows.iter().map(|r| r["seq"].as_i64().unwrap()).collect();
    assert_eq!(
        seqs,
        (1..=i64::from(n)).collect::<Vec<_>>(),
        "all {n} acknowledged readings stored once"
    );
}

#[test]
fn acknowledged_retained_message_survives_kill_9() {
    let mut hub = TestHub::start_new();
    let dev = hub.add_device("gw-a");
    let out = hub.mosquitto_pub(
        &dev,
        &["-t", "devices/gw-a/config", "-m", "v42", "-r", "-q", "1"],
    );
    assert!(out.status.success());
    hub.kill9();
    hub.start();
    let out = Command::new("mosquitto_sub")
        .args(hub.mosquitto_args(&dev))
        .args(["-t", "devices/gw-a/config", "-C", "1", "-W", "5"])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "v42");
    // Clearing it (empty retained payload) is durable too.
    let out = hub.mosquitto_pub(&dev, &["-t", "devices/gw-a/config", "-n", "-r", "-q", "1"]);
    assert!(out.status.success());
    hub.kill9();
    hub.start();
    let out = Command::new("mosquitto_sub")
        .args(hub.mosquitto_args(&dev))
        .args(["-t", "devices/gw-a/config", "-C", "1", "-W", "2"])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).trim().is_empty());
}

/// Telemetry sent at QoS 0 gets no PUBACK, so the hub lets it wait up to
/// `storage.qos0_commit_delay_ms` for company before committing: it is stored within that
/// delay, and a graceful stop commits what is still waiting.
#[test]
fn qos0_telemetry_is_stored_after_the_commit_delay_and_at_a_graceful_stop() {
    let mut hub = TestHub::init();
    hub.start();
    let dev = hub.add_device("gw-a");
    let publish = |hub: &TestHub, seqs| publish_telemetry(hub, &dev, "0", seqs);

    // The default delay (200 ms): stored with nothing else happening.
    publish(&hub, 1..=300);
    assert!(
        wait_until(Duration::from_secs(10), || hub.telemetry("gw-a").len()
            == 300),
        "QoS 0 telemetry not stored: {} rows",
        hub.telemetry("gw-a").len()
    );

    // The longest delay (1 s): a SIGTERM while the rows wait commits them.
    hub.stop();
    hub.configure("qos0_commit_delay_ms = 200", "qos0_commit_delay_ms = 1000");
    hub.start();
    publish(&hub, 301..=600);
    assert!(
        wait_until(Duration::from_secs(10), || {
            hub.metric("rampart_telemetry_rows_submitted_total") == 300.0
        }),
        "the hub did not take the 300 readings"
    );
    hub.stop();
    hub.start();
    let seqs: Vec<u64> = hub
        .telemetry("gw-a")
        .iter()
        .map(|r| r["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(seqs.len(), 600, "{seqs:?}");
    assert!((1..=600).all(|s| seqs.contains(&s)));
}

/// A full ingest queue holds a PUBLISH's rows back until there is room, rather than losing
/// them: with room for one row, single readings and batches (an agent draining its backlog)
/// at QoS 1 are all stored once and in order, survive `kill -9` once acknowledged, and a
/// QoS 0 batch is stored whole.
#[test]
fn readings_wait_for_room_in_a_full_ingest_queue() {
    let mut hub = TestHub::init();
    hub.configure("ingest_queue = 65536", "ingest_queue = 1");
    hub.start();
    let dev = hub.add_device("gw-a");
    let batch = |seqs: std::ops::RangeInclusive<u32>| {
        let docs: Vec<String> = seqs.map(telemetry_line).collect();
        format!("[{}]", docs.join(","))
    };
    let publish_batch = |hub: &TestHub, qos: &str, seqs| {
        let out = hub.mosquitto_pub(
            &dev,
            &[
                "-t",
                "devices/gw-a/telemetry",
                "-q",
                qos,
                "-m",
                &batch(seqs),
            ],
        );
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let seqs = |hub: &TestHub| -> Vec<i64> {
        hub.telemetry("gw-a")
            .iter()
            .map(|r| r["seq"].as_i64().unwrap())
            .collect()
    };

    publish_telemetry(&hub, &dev, "1", 1..=100);
    publish_batch(&hub, "1", 101..=150);
    publish_batch(&hub, "1", 151..=200);
    hub.kill9();
    hub.start();
    assert_eq!(seqs(&hub), (1..=200).collect::<Vec<_>>());

    publish_batch(&hub, "0", 201..=250);
    assert!(
        wait_until(Duration::from_secs(10), || seqs(&hub).len() == 250),
        "the QoS 0 batch was not stored whole: {} rows",
        seqs(&hub).len()
    );
    assert_eq!(seqs(&hub), (1..=250).collect::<Vec<_>>());
    assert_eq!(hub.metric("rampart_telemetry_rows_submitted_total"), 50.0);
}
