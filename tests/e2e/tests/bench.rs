//! The load generator and the side-by-side comparison, run for real at a small size: the
//! commands work from a checkout and report what they promise (a benchmark's figures are
//! not asserted here — they live in docs/benchmarks.md; this checks the machinery).

#![allow(clippy::unwrap_used)]

use std::process::Command;

use rampart_e2e::release::{ok, refused};
use rampart_e2e::{TestHub, bin};
use serde_json::Value;

#[test]
fn bench_compare_runs_both_brokers_and_reports_one_ratio_per_figure() {
    let out = ok(Command::new(bin("rampart"))
        .args([
            "bench",
            "compare",
            "--duration",
            "1s",
            "--devices",
            "5",
            "--storm",
            "20",
            "--connections",
            "20",
            "--json",
        ])
        .output()
        .unwrap());
    let v: Value = serde_json::from_str(&out).unwrap();
    for r in [
        "qos0_msgs_per_s_ratio",
        "qos1_msgs_per_s_ratio",
        "qos0_cpu_per_msg_ratio",
        "qos1_cpu_per_msg_ratio",
        "p50_latency_ratio",
        "p99_latency_ratio",
        "connections_per_s_ratio",
        "connections_per_s_vs_rustls_ratio",
        "rss_per_connection_ratio",
    ] {
        let x = v["ratios"][r].as_f64().unwrap_or(-1.0);
        assert!(x > 0.0, "{r} = {x}: {out}");
    }
    assert!(v["rustls_server_handshakes_per_s"].as_f64().unwrap() > 100.0);
    let runs = v["runs"].as_object().unwrap();
    assert_eq!(runs.len(), 12, "6 phases × 2 brokers");
    for (name, run) in runs {
        assert_eq!(
            run["connect"]["connected"], run["connect"]["attempted"],
            "{name}: every connection succeeds: {run}"
        );
        if !name.ends_with("storm") && !name.ends_with("idle") {
            assert!(run["received"].as_u64().unwrap() > 0, "{name}: {run}");
            assert!(run["latency"]["samples"].as_u64().unwrap() > 0, "{name}");
            assert!(
                run["target"]["cpu_us_per_msg"].as_f64().unwrap() > 0.0,
                "{name}"
            );
        }
        if name.ends_with("qos1_fixed") {
            // Acknowledged at a rate both sustain: nothing may be lost.
            assert_eq!(run["lost"], 0, "{name}: {run}");
        }
    }
}

#[test]
fn the_generator_reports_refused_connections_by_kind_and_only_targets_loopback() {
    let mut hub = TestHub::init();
    hub.start();
    let dir = hub.tmp.path().join("bench");
    std::fs::create_dir_all(&dir).unwrap();
    let fleet = dir.join("fleet.json");
    let text = ok(Command::new(bin("rampart"))
        .args(["bench", "fleet", "--devices", "3", "--out"])
        .arg(&fleet)
        .output()
        .unwrap());
    assert!(text.contains("3 devices"), "{text}");
    for f in ["ca.pem", "server.pem", "server.key"] {
        assert!(dir.join(f).exists(), "{f}");
    }
    // The hub does not trust the fleet's CA: every handshake is refused, and counted.
    let out = ok(Command::new(bin("rampart"))
        .args(["bench", "run", "--fleet"])
        .arg(&fleet)
        .args(["--target", &hub.addr().to_string(), "--server-ca"])
        .arg(hub.data.join("pki/root-ca.crt"))
        .args(["--devices", "3", "--idle", "1s", "--json"])
        .output()
        .unwrap());
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["connect"]["connected"], 0, "{v}");
    assert_eq!(v["connect"]["errors"]["tls"], 3, "{v}");
    hub.expect_refusal("tls_unknown_ca", 3);

    let e = refused(
        Command::new(bin("rampart"))
            .args(["bench", "run", "--fleet"])
            .arg(&fleet)
            .args(["--target", "192.0.2.1:8883"])
            .output()
            .unwrap(),
    );
    assert!(e.contains("not a loopback address"), "{e}");
    let e = refused(
        Command::new(bin("rampart"))
            .args(["bench", "run", "--fleet"])
            .arg(&fleet)
            .args(["--devices", "4"])
            .output()
            .unwrap(),
    );
    assert!(e.contains("the fleet has 3"), "{e}");
    let e = refused(
        Command::new(bin("rampart"))
            .args(["bench", "run", "--fleet"])
            .arg(&fleet)
            .args(["--rate", "fast"])
            .output()
            .unwrap(),
    );
    assert!(e.contains("--rate"), "{e}");
    hub.stop();
}
