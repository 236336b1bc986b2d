//! Independent MQTT clients interoperate with the hub over MQTT 3.1.1 and 5.0, within the
//! device's own namespace: the Debian mosquitto clients and Python paho-mqtt.

#![allow(clippy::unwrap_used)] // helpers outside #[test] fns; a failed unwrap fails the test

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use rampart_e2e::*;

#[test]
fn mosquitto_publish_then_subscribe_in_both_protocol_versions() {
    let hub = TestHub::start_new();
    let dev = hub.add_device("gw-a");
    for (version, flag) in [("3.1.1", "mqttv311"), ("5.0", "mqttv5")] {
        let topic = format!("devices/gw-a/note-{flag}");
        let payload = format!("retained over {version}");
        let out = hub.mosquitto_pub(
            &dev,
            &["-V", flag, "-t", &topic, "-m", &payload, "-r", "-q", "1"],
        );
        assert!(
            out.status.success(),
            "{version}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let out = Command::new("mosquitto_sub")
            .args(hub.mosquitto_args(&dev))
            .args([
                "-V",
                flag,
                "-t",
                "devices/gw-a/#",
                "-C",
                "2",
                "-W",
                "5",
                "-v",
            ])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            text.contains(&format!("{topic} {payload}")),
            "{version}: {text}"
        );
    }
}

#[test]
fn mosquitto_rr_gets_live_delivery_over_mqtt5() {
    let hub = TestHub::start_new();
    let dev = hub.add_device("gw-a");
    // mosquitto_rr subscribes to the response topic and publishes the request on one
    // connection; with both topics equal it receives its own message live.
    let out = Command::new("mosquitto_rr")
        .args(hub.mosquitto_args(&dev))
        .args([
            "-t",
            "devices/gw-a/echo",
            "-e",
            "devices/gw-a/echo",
            "-m",
            "ping",
            "-W",
            "5",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "ping");
}

#[test]
fn mosquitto_telemetry_is_validated_and_stored() {
    let hub = TestHub::start_new();
    let dev = hub.add_device("gw-a");
    let doc = r#"{"v":1,"seq":42,"ts":"2026-11-23T10:00:00Z","pack":{"voltage_v":51.2,"current_a":-12.5,"soc_pct":77.0,"soh_pct":96.0},"cells_v":[3.2,3.21],"temps_c":[24.5],"alarms":["cell_imbalance"],"source":{"kind":"mosquitto_pub"}}"#;
    let out = hub.mosquitto_pub(
        &dev,
        &["-t", "devices/gw-a/telemetry", "-m", doc, "-q", "1"],
    );
    assert!(out.status.success());
    let rows = hub.telemetry("gw-a");
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0]["seq"], 42);
    assert_eq!(rows[0]["voltage_v"], 51.2);
    assert_eq!(rows[0]["cell_max_v"], 3.21);
    assert_eq!(rows[0]["alarms"][0], "cell_imbalance");
}

#[test]
fn paho_mqtt_interoperates_over_311_and_5() {
    let hub = TestHub::start_new();
    let dev = hub.add_device("gw-paho");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/paho_roundtrip.py");
    for version in ["311", "5"] {
        let out = Command::new("python3")
            .arg(&script)
            .args(["localhost", &hub.port.to_string()])
            .arg(&dev.dir)
            .args(["gw-paho", version])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !stderr.contains("No module named 'paho'"),
            "paho-mqtt is missing: run scripts/setup (pip install paho-mqtt)"
        );
        assert!(
            out.status.success(),
            "paho {version}: {stderr}\n{}",
            String::from_utf8_lossy(&out.stdout)
        );
        let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(r["received"][0]["payload"], "hello from paho", "{r}");
        assert_eq!(r["received"][0]["qos"], 1);
        assert_eq!(r["puback"], true);
        assert_eq!(r["granted"]["devices/gw-paho/echo"], 1, "{r}");
        let denied = if version == "5" { 0x87 } else { 0x80 };
        assert_eq!(r["granted"]["devices/someone-else/echo"], denied, "{r}");
    }
    assert!(wait_until(Duration::from_secs(5), || hub
        .refusals("subscribe_denied")
        == 2));
}
