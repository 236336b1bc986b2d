//! The agent reading real protocol peers: a JBD BMS emulated on a pseudo-terminal, a Modbus
//! TCP server (Python pymodbus, an independent implementation), and a recorded CAN log; and
//! data minimisation on what leaves the device.

#![allow(clippy::unwrap_used)] // helpers outside #[test] fns; a failed unwrap fails the test

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use rampart_e2e::*;

/// A helper process that announces itself with one line on stdout.
struct Peer {
    child: Child,
    first_line: String,
}

impl Peer {
    fn start(script: &str, args: &[&str]) -> Peer {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("scripts")
            .join(script);
        let mut child = Command::new("python3")
            .arg(path)
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("python3 (scripts/setup installs it)");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let first_line = rx
            .recv_timeout(Duration::from_secs(15))
            .unwrap_or_default()
            .trim()
            .to_string();
        assert!(
            !first_line.is_empty(),
            "{script} did not start (for pymodbus: run scripts/setup)"
        );
        Peer { child, first_line }
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Replaces the `[bms]` section (the last one of agent.toml) and optionally the `[[send]]`
/// groups.
fn configure(dev: &Bundle, bms: &str, send: Option<&str>) {
    let path = dev.agent_toml();
    let text = std::fs::read_to_string(&path).unwrap();
    let cut = text.find("\n[bms]").expect("agent.toml has [bms]");
    let mut text = format!("{}\n{bms}\n", &text[..cut]);
    if let Some(send) = send {
        let start = text.find("[[send]]\nfields").expect("template send group");
        let end = start + text[start..].find("aggregate = \"last\"\n").unwrap() + 19;
        text.replace_range(start..end, send);
    }
    std::fs::write(&path, text).unwrap();
}

fn events_of(hub: &TestHub, id: &str, kind: &str) -> Vec<serde_json::Value> {
    hub.events(id)
        .into_iter()
        .filter(|e| e["kind"] == kind)
        .collect()
}

fn set_mode(file: &Path, mode: &str) {
    std::fs::write(file, mode).unwrap();
}

fn stats(file: &Path) -> Vec<u64> {
    let mut p = file.as_os_str().to_owned();
    p.push(".stats");
    std::fs::read_to_string(PathBuf::from(p))
        .unwrap_or_default()
        .split_whitespace()
        .map(|n| n.parse().unwrap())
        .collect()
}

#[test]
fn a_jbd_bms_on_a_uart_gives_the_public_vector_values_and_its_silence_is_reported() {
    let hub = TestHub::start_new();
    let dev = hub.add_device("gw-jbd");
    let mode = hub.tmp.path().join("jbd-mode");
    set_mode(&mode, "normal");
    let bms = Peer::start("jbd_emulator.py", &[mode.to_str().unwrap()]);
    let port = bms.first_line.strip_prefix("port ").unwrap().to_string();
    configure(
        &dev,
        &format!(
            "[bms]\nkind = \"jbd\"\nport = \"{port}\"\nbaud = 9600\ntimeout = \"300ms\"\nretries = 1\n"
        ),
        None,
    );
    let agent = Agent::start(&dev, "400ms");
    assert!(
        wait_until(Duration::from_secs(20), || hub.telemetry("gw-jbd").len()
            >= 2),
        "no readings from the JBD emulator:\n{}",
        agent.logs.text()
    );
    let r = &hub.telemetry("gw-jbd")[0]["reading"];
    assert_eq!(r["pack"]["voltage_v"], 15.6);
    assert_eq!(r["pack"]["current_a"], 0.0);
    assert_eq!(r["pack"]["soc_pct"], 100.0);
    assert_eq!(r["pack"]["remaining_ah"], 4.98);
    assert_eq!(r["pack"]["full_ah"], 5.0);
    assert_eq!(r["pack"]["cycles"], 0);
    assert_eq!(
        r["cells_v"],
        serde_json::json!([3.909, 3.901, 3.895, 3.901])
    );
    assert_eq!(r["temps_c"], serde_json::json!([22.4, 22.3, 21.7]));
    assert_eq!(
        r["fets"],
        serde_json::json!({"charge": true, "discharge": true})
    );
    assert_eq!(r["alarms"], serde_json::json!([]));
    assert_eq!(r["source"]["kind"], "jbd-uart");
    assert_eq!(r["source"]["manufactured"], "2022-03-28");

    // Wrong checksums and answers arriving in pieces: the retry gets a good frame, readings
    // continue and nothing is reported.
    set_mode(&mode, "flaky");
    let before = hub.telemetry("gw-jbd").len();
    assert!(wait_until(Duration::from_secs(20), || hub
        .telemetry("gw-jbd")
        .len()
        >= before + 4));
    let s = stats(&mode);
    assert!(s[1] >= 4, "corrupted frames were sent: {s:?}");
    assert!(events_of(&hub, "gw-jbd", "bms_unreachable").is_empty());

    // A silent BMS: reported after three failed readings, and its return too.
    set_mode(&mode, "silent");
    assert!(
        wait_until(Duration::from_secs(20), || !events_of(
            &hub,
            "gw-jbd",
            "bms_unreachable"
        )
        .is_empty()),
        "no bms_unreachable:\n{}",
        agent.logs.text()
    );
    let ev = &events_of(&hub, "gw-jbd", "bms_unreachable")[0];
    assert!(
        ev["error"].as_str().unwrap().contains("did not answer"),
        "{ev}"
    );
    assert_eq!(ev["failed_reads"], 3);
    assert_eq!(ev["source"], format!("jbd {port}"));
    assert!(
        wait_until(
            Duration::from_secs(5),
            || agent_status(&dev)["bms"]["state"] == "unreachable"
        ),
        "{}",
        agent_status(&dev)
    );

    // Corrupted and cut-short answers are failures with their own reasons.
    set_mode(&mode, "corrupt");
    assert!(wait_until(Duration::from_secs(10), || agent
        .logs
        .contains("checksum")));
    set_mode(&mode, "short");
    assert!(wait_until(Duration::from_secs(10), || agent
        .logs
        .contains("incomplete answer")));

    set_mode(&mode, "normal");
    assert!(
        wait_until(Duration::from_secs(20), || !events_of(
            &hub,
            "gw-jbd",
            "bms_recovered"
        )
        .is_empty()),
        "no bms_recovered:\n{}",
        agent.logs.text()
    );
    let ev = &events_of(&hub, "gw-jbd", "bms_recovered")[0];
    assert!(ev["failed_reads"].as_u64().unwrap() >= 3, "{ev}");
    assert!(ev["down_s"].as_f64().unwrap() > 0.5, "{ev}");
    assert_eq!(
        events_of(&hub, "gw-jbd", "bms_unreachable").len(),
        1,
        "once per outage"
    );
    assert!(wait_until(
        Duration::from_secs(5),
        || agent_status(&dev)["bms"]["state"] == "ok"
    ));
}

#[test]
fn modbus_registers_from_pymodbus_map_to_the_reading() {
    let hub = TestHub::start_new();
    let dev = hub.add_device("gw-modbus");
    let port = free_port();
    let regs = [
        "hr=0:5230,1:0xFF85,2:81,3:97,10:3301,11:3305,12:3298,20:235,21:0xFFCE,30:0x0008",
        "ir=40:12",
    ];
    let mut args = vec![port.to_string(), "7".into()];
    args.extend(regs.iter().map(|s| s.to_string()));
    let arg_refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let server = Peer::start("modbus_server.py", &arg_refs);
    assert_eq!(server.first_line, format!("ready {port}"));
    let map = [
        ("pack.voltage_v", 0, "u16", 0.01, "holding"),
        ("pack.current_a", 1, "i16", 0.1, "holding"),
        ("pack.soc_pct", 2, "u16", 1.0, "holding"),
        ("pack.soh_pct", 3, "u16", 1.0, "holding"),
        ("cells_v[0]", 10, "u16", 0.001, "holding"),
        ("cells_v[1]", 11, "u16", 0.001, "holding"),
        ("cells_v[2]", 12, "u16", 0.001, "holding"),
        ("temps_c[0]", 20, "i16", 0.1, "holding"),
        ("temps_c[1]", 21, "i16", 0.1, "holding"),
        ("pack.cycles", 40, "u16", 1.0, "input"),
    ];
    let mut bms = format!(
        "[bms]\nkind = \"modbus\"\ntransport = \"tcp\"\naddress = \"127.0.0.1:{port}\"\nunit = 7\ntimeout = \"500ms\"\n"
    );
    for (field, addr, ty, scale, table) in map {
        bms += &format!(
            "[[bms.registers]]\nfield = \"{field}\"\naddress = {addr}\ntype = \"{ty}\"\nscale = {scale}\ntable = \"{table}\"\n"
        );
    }
    bms += "[[bms.registers]]\nfield = \"alarms\"\naddress = 30\n[bms.registers.bits]\n\"0\" = \"cell_over_voltage\"\n\"3\" = \"over_temperature\"\n";
    configure(&dev, &bms, None);
    let out = agent_cli(&dev, &["check"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let agent = Agent::start(&dev, "300ms");
    assert!(
        wait_until(Duration::from_secs(20), || !hub
            .telemetry("gw-modbus")
            .is_empty()),
        "no readings over Modbus:\n{}",
        agent.logs.text()
    );
    let r = &hub.telemetry("gw-modbus")[0]["reading"];
    assert_eq!(r["pack"]["voltage_v"], 52.3);
    assert_eq!(r["pack"]["current_a"], -12.3);
    assert_eq!(r["pack"]["soc_pct"], 81.0);
    assert_eq!(r["pack"]["soh_pct"], 97.0);
    assert_eq!(r["pack"]["cycles"], 12);
    assert_eq!(r["cells_v"], serde_json::json!([3.301, 3.305, 3.298]));
    assert_eq!(r["temps_c"], serde_json::json!([23.5, -5.0]));
    assert_eq!(r["alarms"], serde_json::json!(["over_temperature"]));
    assert_eq!(r["source"]["kind"], "modbus");

    // The server goes away: reported; it comes back (same port): the agent reconnects.
    drop(server);
    assert!(
        wait_until(Duration::from_secs(20), || !events_of(
            &hub,
            "gw-modbus",
            "bms_unreachable"
        )
        .is_empty()),
        "{}",
        agent.logs.text()
    );
    let server = Peer::start("modbus_server.py", &arg_refs);
    assert!(!server.first_line.is_empty());
    assert!(
        wait_until(Duration::from_secs(20), || !events_of(
            &hub,
            "gw-modbus",
            "bms_recovered"
        )
        .is_empty()),
        "{}",
        agent.logs.text()
    );
}

#[test]
fn a_bad_register_map_is_refused_at_start() {
    let hub = TestHub::init();
    let dev = hub.add_device("gw-badmap");
    configure(
        &dev,
        "[bms]\nkind = \"modbus\"\naddress = \"127.0.0.1:502\"\n[[bms.registers]]\nfield = \"pack.voltage\"\naddress = 0\n",
        None,
    );
    let out = agent_cli(&dev, &["check"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("unknown field \"pack.voltage\""), "{err}");
    configure(&dev, "[bms]\nkind = \"jbd\"\n", None);
    let err = String::from_utf8_lossy(&agent_cli(&dev, &["check"]).stderr).into_owned();
    assert!(err.contains("port"), "{err}");
    configure(
        &dev,
        "[bms]\nkind = \"pylontech_can\"\ninterface = \"can0\"\n",
        None,
    );
    let err = String::from_utf8_lossy(&agent_cli(&dev, &["check"]).stderr).into_owned();
    assert!(err.contains("without SocketCAN support"), "{err}");
}

fn can_log() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../crates/bms/tests/data/pylontech-us2000-2modules.log")
        .canonicalize()
        .unwrap()
}

#[test]
fn a_recorded_can_log_replays_through_the_agent_and_its_end_is_reported() {
    let hub = TestHub::start_new();
    let dev = hub.add_device("gw-can");
    configure(
        &dev,
        &format!(
            "[bms]\nkind = \"candump\"\nfile = \"{}\"\nrepeat = false\n[bms.conventions]\ncurrent_sign = \"charging\"\n",
            can_log().display()
        ),
        None,
    );
    let agent = Agent::start(&dev, "200ms");
    assert!(
        wait_until(Duration::from_secs(20), || !events_of(
            &hub,
            "gw-can",
            "bms_unreachable"
        )
        .is_empty()),
        "{}",
        agent.logs.text()
    );
    let rows = hub.telemetry("gw-can");
    let v: Vec<f64> = rows
        .iter()
        .map(|r| r["voltage_v"].as_f64().unwrap())
        .collect();
    assert_eq!(v, vec![53.2, 53.18, 53.25]);
    let last = &rows[2]["reading"];
    assert_eq!(last["pack"]["current_a"], 5.0);
    assert_eq!(last["alarms"], serde_json::json!(["pack_under_voltage"]));
    assert_eq!(last["requests"]["full_charge"], true);
    assert_eq!(last["source"]["manufacturer"], "PYLON");
    assert_eq!(last["limits"]["charge_voltage_v"], 56.8);
}

#[test]
fn only_the_configured_fields_leave_the_device() {
    let hub = TestHub::start_new();
    let dev = hub.add_device("gw-min");
    configure(
        &dev,
        &format!(
            "[bms]\nkind = \"candump\"\nfile = \"{}\"\nrepeat = true\n",
            can_log().display()
        ),
        Some(
            "[[send]]\nfields = [\"pack.voltage_v\", \"pack.soc_pct\", \"alarms\"]\n\
             [[send]]\nfields = [\"temps_c\", \"pack.current_a\"]\nevery = \"600ms\"\naggregate = \"min_max_mean\"\n",
        ),
    );
    let agent = Agent::start(&dev, "200ms");
    assert!(
        wait_until(Duration::from_secs(20), || hub
            .telemetry("gw-min")
            .iter()
            .filter(|r| r["reading"]["window"].is_object())
            .count()
            >= 2),
        "{}",
        agent.logs.text()
    );
    let rows = hub.telemetry("gw-min");
    for r in &rows {
        let doc = &r["reading"];
        let keys: Vec<&str> = doc
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        for k in &keys {
            assert!(
                ["v", "seq", "ts", "pack", "alarms", "temps_c", "window"].contains(k),
                "{k} left the device: {doc}"
            );
        }
        let pack_keys: Vec<&str> = doc["pack"]
            .as_object()
            .map(|p| p.keys().map(String::as_str).collect())
            .unwrap_or_default();
        assert!(!pack_keys.contains(&"soh_pct"), "{doc}");
    }
    let windowed: Vec<&serde_json::Value> = rows
        .iter()
        .map(|r| &r["reading"])
        .filter(|d| d["window"].is_object())
        .collect();
    let w = &windowed[0]["window"];
    assert_eq!(w["samples"], 3);
    assert_eq!(w["aggregate"], "min_max_mean");
    let (min, max) = (
        w["min"]["pack"]["current_a"].as_f64().unwrap(),
        w["max"]["pack"]["current_a"].as_f64().unwrap(),
    );
    let mean = windowed[0]["pack"]["current_a"].as_f64().unwrap();
    assert!(min <= mean && mean <= max, "{w}");
    assert!(
        windowed[0]["alarms"].is_null(),
        "alarms are not in this group"
    );
    // The every-reading group carries exactly its three fields.
    let plain = rows
        .iter()
        .map(|r| &r["reading"])
        .find(|d| !d["window"].is_object())
        .unwrap();
    assert!(plain["pack"]["voltage_v"].is_number() && plain["pack"]["current_a"].is_null());
}
