//! The load generator and the side-by-side comparison, run for real at a small size: the
//! commands work from a checkout and report what they promise (a benchmark's figures are
//! not asserted here — they live in docs/benchmarks.md; this checks the machinery).

#![allow(clippy::unwrap_used)]

use std::process::Command;

use rampart_e2e::release::{ok, refused};
use rampart_e2e::{TestHub, bin, free_port, wait_until};
use serde_json::Value;

/// A JSON array of numbers.
fn floats(v: &Value) -> Vec<f64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect()
}

#[test]
fn bench_compare_runs_both_brokers_and_reports_one_ratio_per_figure() {
    let err = refused(
        Command::new(bin("rampart"))
            .args(["bench", "compare", "--rounds", "0"])
            .output()
            .unwrap(),
    );
    assert!(err.contains("--rounds") && err.contains("1..=9"), "{err}");
    let out = ok(Command::new(bin("rampart"))
        .args([
            "bench",
            "compare",
            // Two rounds: each figure must be the median round's (the lower of two).
            "--rounds",
            "2",
            "--duration",
            "1s",
            "--devices",
            "5",
            // Enough connections that the hub's CPU during the storm spans several of
            // /proc's 10 ms ticks (20 could fit in less than one, and measured 0).
            "--storm",
            "200",
            "--connections",
            "20",
            // One further QoS 1 rate: high enough that each broker's CPU over the 1 s phase
            // spans several of /proc's 10 ms ticks (at 200/s Mosquitto's measured 0), low
            // enough for a debug build's generator.
            "--rates",
            "2000",
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
        "connections_per_cpu_s_ratio",
        "connections_per_cpu_s_vs_rustls_ratio",
        "connections_per_cpu_s_vs_floor_ratio",
        "rss_per_connection_ratio",
        "qos1_cpu_per_msg_at_2000_ratio",
        "qos1_p99_latency_at_2000_ratio",
        // The floor in the message phases: against Mosquitto, and the hub against it.
        "qos0_msgs_per_s_floor_vs_mosquitto_ratio",
        "qos1_msgs_per_s_floor_vs_mosquitto_ratio",
        "qos0_cpu_per_msg_floor_vs_mosquitto_ratio",
        "qos1_cpu_per_msg_floor_vs_mosquitto_ratio",
        "qos0_cpu_per_msg_vs_floor_ratio",
        "qos1_cpu_per_msg_vs_floor_ratio",
    ] {
        let x = v["ratios"][r].as_f64().unwrap_or(-1.0);
        assert!(x > 0.0, "{r} = {x}: {out}");
    }
    assert!(v["rustls_server_handshakes_per_s"].as_f64().unwrap() > 100.0);
    // The reference is the median of three measurements, sorted.
    let measured = floats(&v["rustls_server_handshakes_per_s_measured"]);
    assert_eq!(measured.len(), 3, "{out}");
    assert!(measured.is_sorted(), "{measured:?}");
    assert_eq!(
        measured[1],
        v["rustls_server_handshakes_per_s"].as_f64().unwrap()
    );
    assert!(v["floor_connections_per_cpu_s"].as_f64().unwrap() > 0.0);
    let floor = v["floor_messages"].as_object().unwrap();
    for k in [
        "qos0_msgs_per_s",
        "qos1_msgs_per_s",
        "qos0_cpu_per_msg",
        "qos1_cpu_per_msg",
    ] {
        let x = floor[k].as_f64().unwrap_or(-1.0);
        assert!(x > 0.0, "floor {k} = {x}: {out}");
    }
    let runs = v["runs"].as_object().unwrap();
    assert_eq!(
        runs.len(),
        19,
        "7 phases × 2 brokers, and the floor's storm, saturations and fixed rates"
    );
    for phase in [
        "storm",
        "qos0_saturation",
        "qos1_saturation",
        "qos0_fixed",
        "qos1_fixed",
    ] {
        assert!(
            runs.contains_key(&format!("floor_{phase}")),
            "{phase}: {out}"
        );
    }
    // Every throughput phase and storm ran twice per broker, and its report is the round
    // with the lower figure; idle connections were measured once.
    assert_eq!(v["rounds"], 2, "{out}");
    let rounds = v["round_values"].as_object().unwrap();
    assert_eq!(
        rounds.len(),
        17,
        "6 phases × 2 brokers, and the floor's 5: {out}"
    );
    for (name, values) in rounds {
        let values = floats(values);
        assert_eq!(values.len(), 2, "{name}: {values:?}");
        let run = &runs[name];
        let kept = if name.ends_with("saturation") {
            run["received_per_s"].as_f64()
        } else if name.ends_with("storm") {
            run["connect"]["per_s"].as_f64()
        } else {
            run["target"]["cpu_us_per_msg"].as_f64()
        }
        .unwrap();
        assert_eq!(kept, values[0].min(values[1]), "{name}: {values:?} {run}");
    }
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
        if name.ends_with("qos1_fixed") || name.ends_with("qos1_at_2000") {
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

#[test]
fn the_generator_drives_another_broker_with_its_own_ca_fan_in_and_fan_out_over_both_protocols() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let fleet = d.join("fleet.json");
    ok(Command::new(bin("rampart"))
        .args(["bench", "fleet", "--devices", "5", "--out"])
        .arg(&fleet)
        .output()
        .unwrap());
    // Mosquitto trusting only the fleet's CA, each device confined to its own topics.
    let port = free_port();
    std::fs::write(
        d.join("acl"),
        "pattern readwrite devices/%u/#\nuser bench-subscriber\ntopic read devices/+/telemetry\ntopic write devices/+/inbox\n",
    )
    .unwrap();
    let conf = d.join("mosquitto.conf");
    std::fs::write(
        &conf,
        format!(
            "listener {port} 127.0.0.1\ncafile {0}/ca.pem\ncertfile {0}/server.pem\nkeyfile {0}/server.key\n\
             require_certificate true\nuse_identity_as_username true\nacl_file {0}/acl\n\
             allow_anonymous false\npersistence false\nuser root\n",
            d.display()
        ),
    )
    .unwrap();
    /// Stops the broker however the test ends (a failed assertion included).
    struct Broker(std::process::Child);
    impl Drop for Broker {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let broker = Broker(
        Command::new("mosquitto")
            .arg("-c")
            .arg(&conf)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    assert!(wait_until(std::time::Duration::from_secs(10), || {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    }));
    for (pattern, protocol, qos) in [
        ("fan-in", "5", "1"),
        ("fan-out", "3.1.1", "1"),
        ("fan-out", "5", "0"),
    ] {
        let out = ok(Command::new(bin("rampart"))
            .args(["bench", "run", "--fleet"])
            .arg(&fleet)
            .args([
                "--target",
                &format!("127.0.0.1:{port}"),
                "--devices",
                "5",
                "--pattern",
                pattern,
                "--protocol",
                protocol,
                "--qos",
                qos,
                "--rate",
                "20",
                "--duration",
                "1s",
                "--target-pid",
                &broker.0.id().to_string(),
                "--json",
            ])
            .output()
            .unwrap());
        let v: Value = serde_json::from_str(&out).unwrap();
        let what = format!("{pattern} MQTT {protocol} QoS {qos}: {v}");
        assert_eq!(v["connect"]["connected"], 5, "{what}");
        let sent = v["sent"].as_u64().unwrap();
        assert!(sent >= 50, "{what}");
        assert_eq!(v["received"].as_u64().unwrap(), sent, "{what}");
        assert_eq!(v["lost"], 0, "{what}");
        assert_eq!(v["latency"]["samples"].as_u64().unwrap(), sent, "{what}");
        // The broker's process was sampled (its CPU at this rate is below /proc's 10 ms tick).
        assert!(
            v["target"]["rss_kib_before"].as_u64().unwrap() > 0,
            "{what}"
        );
    }
}
