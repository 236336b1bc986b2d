//! The agent's telemetry reaches the hub over mutual TLS, is stored, and the CLI shows it.

#![allow(clippy::unwrap_used)] // helpers outside #[test] fns; a failed unwrap fails the test

use std::process::Command;
use std::time::Duration;

use rampart_e2e::*;

fn seqs(rows: &[serde_json::Value]) -> Vec<i64> {
    rows.iter().map(|r| r["seq"].as_i64().unwrap()).collect()
}

#[test]
fn agent_telemetry_is_stored_and_shown_by_the_cli() {
    let hub = TestHub::start_new();
    let dev = hub.add_device("gw-0001");
    // mosquitto_sub uses the device's key below: keep it plain.
    let mut agent = Agent::start_with(&dev, "200ms", &[PLAIN_KEYS]);

    assert!(
        wait_until(Duration::from_secs(15), || hub.telemetry("gw-0001").len()
            >= 5),
        "no telemetry stored; agent log:\n{}\nhub log:\n{}",
        agent.logs.text(),
        hub.logs.text()
    );
    let rows = hub.telemetry("gw-0001");
    let s = seqs(&rows);
    assert_eq!(
        s,
        (1..=s.len() as i64).collect::<Vec<_>>(),
        "contiguous sequence numbers"
    );
    let r = &rows[0];
    assert_eq!(r["device_id"], "gw-0001");
    for field in [
        "voltage_v",
        "current_a",
        "soc_pct",
        "soh_pct",
        "cell_min_v",
        "temp_max_c",
    ] {
        assert!(r[field].is_number(), "{field} in {r}");
    }
    assert_eq!(r["reading"]["source"]["kind"], "simulator");
    assert_eq!(r["reading"]["cells_v"].as_array().unwrap().len(), 16);

    // Human-readable views.
    let table = hub.rampart(&["telemetry", "gw-0001"]);
    let text = String::from_utf8_lossy(&table.stdout);
    assert!(text.contains("gw-0001") && text.contains(" V "), "{text}");
    let show = hub.rampart(&["device", "show", "gw-0001"]);
    let text = String::from_utf8_lossy(&show.stdout);
    assert!(
        text.contains("status      active") && text.contains("latest      seq"),
        "{text}"
    );
    let list = hub.rampart(&["device", "list", "--json"]);
    let devices: serde_json::Value = serde_json::from_slice(&list.stdout).unwrap();
    assert!(
        wait_until(Duration::from_secs(5), || {
            let l = hub.rampart(&["device", "list", "--json"]);
            let d: serde_json::Value = serde_json::from_slice(&l.stdout).unwrap();
            d[0]["last_seen_at"].is_string()
        }),
        "last_seen recorded: {devices}"
    );

    // SIGTERM: clean exit, "offline" status retained for the device.
    let status = agent.terminate();
    assert!(
        status.success(),
        "agent exit: {status:?}\n{}",
        agent.logs.text()
    );
    assert!(agent.logs.contains("agent stopped"));
    let out = Command::new("mosquitto_sub")
        .args(hub.mosquitto_args(&dev))
        .args(["-t", "devices/gw-0001/status", "-C", "1", "-W", "5"])
        .output()
        .unwrap();
    let status_doc = String::from_utf8_lossy(&out.stdout);
    assert!(status_doc.contains("\"state\":\"offline\""), "{status_doc}");
}

#[test]
fn the_agent_process_has_no_listening_socket() {
    let hub = TestHub::start_new();
    let dev = hub.add_device("gw-ports");
    let agent = Agent::start(&dev, "200ms");
    assert!(wait_until(Duration::from_secs(15), || hub
        .telemetry("gw-ports")
        .len()
        >= 2));
    let pid = agent.pid();
    // The check sees the agent's sockets (its outbound TLS connection)...
    assert!(
        !socket_inodes(pid).is_empty(),
        "agent holds no socket at all?"
    );
    // ...and none of them listens.
    assert_eq!(listening_sockets(pid), Vec::<(String, String)>::new());
    // The same through ss(8).
    let ss = Command::new("ss")
        .args(["-ltnup"])
        .output()
        .expect("ss (iproute2)");
    let text = String::from_utf8_lossy(&ss.stdout);
    assert!(
        !text.contains(&format!("pid={pid},")),
        "agent appears in ss -ltnup:\n{text}"
    );
    // Sanity: the hub itself does listen, and the /proc check finds it.
    assert!(!listening_sockets(hub.pid()).is_empty());
}

#[test]
fn the_agent_reconnects_after_the_hub_restarts_and_numbering_continues() {
    let mut hub = TestHub::start_new();
    let dev = hub.add_device("gw-reconnect");
    let agent = Agent::start(&dev, "200ms");
    assert!(wait_until(Duration::from_secs(15), || hub
        .telemetry("gw-reconnect")
        .len()
        >= 3));
    hub.stop();
    std::thread::sleep(Duration::from_secs(2));
    hub.start();
    assert!(
        agent.logs.wait_for(
            &["connection to the hub failed", "retry_in"],
            Duration::from_secs(10)
        ),
        "{}",
        agent.logs.text()
    );
    let before = hub.telemetry("gw-reconnect").len();
    assert!(
        wait_until(Duration::from_secs(30), || hub
            .telemetry("gw-reconnect")
            .len()
            > before + 3),
        "telemetry did not resume:\n{}",
        agent.logs.text()
    );
    let s = seqs(&hub.telemetry("gw-reconnect"));
    let mut sorted = s.clone();
    sorted.dedup();
    assert_eq!(s, sorted, "each reading stored once, in order");
    assert!(agent.logs.contains("connected to the hub"));
}

/// Nice values of the hub's threads, by thread name (`/proc/PID/task/*/stat`, field 19).
fn thread_nice(pid: u32) -> Vec<(String, i64)> {
    let mut out = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let Ok(stat) = std::fs::read_to_string(task.unwrap().path().join("stat")) else {
            continue; // the thread ended meanwhile
        };
        let (open, close) = (stat.find('(').unwrap(), stat.rfind(')').unwrap());
        let fields: Vec<&str> = stat[close + 2..].split_whitespace().collect();
        out.push((
            stat[open + 1..close].to_string(),
            fields[16].parse().unwrap(),
        ));
    }
    out
}

/// The threads committing telemetry and syncing its WAL run at
/// `storage.telemetry_writer_nice` (19 by default), the threads routing messages at the
/// hub's own priority.
#[test]
fn the_telemetry_writer_thread_yields_to_routing() {
    if postgres_backend().is_some() {
        eprintln!("skipped: the telemetry writer thread is SQLite's; this run uses PostgreSQL");
        return;
    }
    let mut hub = TestHub::start_new();
    let niced = |hub: &TestHub| {
        let threads = thread_nice(hub.pid());
        let writer: Vec<i64> = ["telemetry-write", "telemetry-sync"]
            .iter()
            .flat_map(|t| threads.iter().filter(move |(name, _)| name == t))
            .map(|(_, n)| *n)
            .collect();
        assert!(
            threads
                .iter()
                .filter(|(name, _)| name.starts_with("tokio-rt"))
                .all(|(_, n)| *n == 0),
            "{threads:?}"
        );
        assert_eq!(writer.len(), 2, "{threads:?}");
        assert_eq!(writer[0], writer[1], "{threads:?}");
        writer[0]
    };
    assert_eq!(niced(&hub), 19);
    hub.stop();
    hub.configure("telemetry_writer_nice = 19", "telemetry_writer_nice = 0");
    hub.start();
    assert_eq!(niced(&hub), 0);
}
