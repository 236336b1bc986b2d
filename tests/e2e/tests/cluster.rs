//! Several hub nodes: two or three `rampart hub` processes sharing one PostgreSQL schema and
//! meeting on the local NATS server. Needs `RAMPART_TEST_POSTGRES_URL` and
//! `RAMPART_TEST_NATS_URL` (`.ci/run` sets both through scripts/services); without them each
//! test says it is skipped.

#![allow(clippy::unwrap_used)] // helpers outside #[test] fns; a failed unwrap fails the test

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use rampart_e2e::*;

const T: Duration = Duration::from_secs(15);

/// The services, or `None` (and a note) when one is missing.
fn services(test: &str) -> Option<(String, String)> {
    match (
        std::env::var("RAMPART_TEST_POSTGRES_URL"),
        std::env::var("RAMPART_TEST_NATS_URL"),
    ) {
        (Ok(pg), Ok(nats)) => Some((pg, nats)),
        _ => {
            eprintln!(
                "skipped {test}: needs RAMPART_TEST_POSTGRES_URL and RAMPART_TEST_NATS_URL (eval \"$(scripts/services)\")"
            );
            None
        }
    }
}

/// `n` started nodes of one new cluster (its own schema and NATS subject prefix, so tests
/// running side by side never see each other).
fn cluster(pg: &str, nats: &str, n: usize) -> Vec<TestHub> {
    let first = TestHub::init_on(Some(PgTarget {
        url: pg.to_owned(),
        schema: unique_schema("cluster"),
        owner: true,
    }));
    let name = unique_schema("c");
    let mut nodes = vec![first];
    for _ in 1..n {
        let next = nodes[0].another_node();
        nodes.push(next);
    }
    for (i, node) in nodes.iter_mut().enumerate() {
        node.join_cluster(nats, &name, &format!("n{}", i + 1));
        node.start();
        assert!(
            node.logs.wait_for(&["joined the cluster"], T),
            "node {} did not join: {}",
            i + 1,
            node.logs.text()
        );
    }
    nodes
}

fn ok(out: std::process::Output) -> String {
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn telemetry(seq: u64) -> String {
    format!(
        r#"{{"v":1,"seq":{seq},"ts":"2026-11-26T10:00:00Z","pack":{{"voltage_v":52.0,"current_a":1.0,"soc_pct":50.0,"soh_pct":99.0}},"source":{{"kind":"test"}}}}"#
    )
}

#[test]
fn messages_cross_nodes_and_disable_and_revoke_reach_the_node_holding_the_connection() {
    let Some((pg, nats)) = services("cluster delivery") else {
        return;
    };
    let nodes = cluster(&pg, &nats, 2);
    let (n1, n2) = (&nodes[0], &nodes[1]);

    // A service reading every device's telemetry, connected to node 2. Its policy is stored
    // through node 1: node 2 hears of it and reloads.
    let svc_dir = n1.tmp.path().join("pipeline");
    ok(n1.rampart(&[
        "service",
        "add",
        "pipeline",
        "--out",
        svc_dir.to_str().unwrap(),
    ]));
    let svc = Bundle {
        id: "pipeline".into(),
        dir: svc_dir,
    };
    let policy = n1.tmp.path().join("reader.toml");
    std::fs::write(
        &policy,
        "name = \"telemetry-reader\"\n[[statement]]\neffect = \"allow\"\nactions = [\"connect\"]\nresources = [\"*\"]\n[[statement]]\neffect = \"allow\"\nactions = [\"subscribe\", \"receive\"]\nresources = [\"devices/+/telemetry\"]\n",
    )
    .unwrap();
    ok(n1.rampart(&["policy", "put", policy.to_str().unwrap()]));
    ok(n1.rampart(&["policy", "attach", "telemetry-reader", "service:pipeline"]));
    assert!(
        n2.logs.wait_for(&["applied a change from another node"], T),
        "node 2 did not reload the policies: {}",
        n2.logs.text()
    );
    let (mut sub, lines) = n2.mosquitto_sub(
        &svc,
        &[
            "-t",
            "devices/+/telemetry",
            "-q",
            "1",
            "-v",
            "-V",
            "5",
            "-d",
        ],
    );
    assert!(lines.wait_for(&["SUBACK"], T), "{}", lines.text());

    // A device publishes on node 1 at QoS 1; the subscriber on node 2 receives it, and it
    // is stored once in the shared database.
    let a = n1.add_device("gw-a");
    let out = n1.mosquitto_pub(
        &a,
        &[
            "-t",
            "devices/gw-a/telemetry",
            "-q",
            "1",
            "-m",
            &telemetry(1),
        ],
    );
    assert!(out.status.success(), "{out:?}");
    assert!(
        lines.wait_for(&["devices/gw-a/telemetry {\"v\":1,\"seq\":1"], T),
        "the subscriber on node 2 got nothing: {}\nnode 1: {}\nnode 2: {}",
        lines.text(),
        n1.logs.text(),
        n2.logs.text()
    );
    assert_eq!(n2.telemetry("gw-a").len(), 1);
    assert!(n1.metric("rampart_cluster_forwarded_total") >= 1.0);
    assert!(n2.metric("rampart_cluster_received_total") >= 1.0);
    let _ = sub.kill();

    // Disabled through node 1 while connected to node 2: node 2 closes the session.
    let b = n1.add_device("gw-b");
    let (mut b_sub, b_lines) = n2.mosquitto_sub(&b, &["-t", "devices/gw-b/#", "-V", "5", "-d"]);
    assert!(b_lines.wait_for(&["SUBACK"], T), "{}", b_lines.text());
    ok(n1.rampart(&["device", "disable", "gw-b"]));
    assert!(
        wait_child(&mut b_sub, T).is_some(),
        "node 2 kept the disabled device connected: {}",
        n2.logs.text()
    );
    // The log line may reach the test's reader after the client saw the close.
    assert!(
        n2.logs
            .wait_for(&["device disabled: live sessions closed"], T)
    );
    let out = n2.mosquitto_pub(&b, &["-t", "devices/gw-b/telemetry", "-m", "x"]);
    assert!(
        !out.status.success(),
        "a disabled device connected to node 2"
    );

    // Revoked through node 1 while connected to node 2: node 2 closes the session, and
    // neither node lets the certificate in again.
    let c = n1.add_device("gw-c");
    let (mut c_sub, c_lines) = n2.mosquitto_sub(&c, &["-t", "devices/gw-c/#", "-V", "5", "-d"]);
    assert!(c_lines.wait_for(&["SUBACK"], T), "{}", c_lines.text());
    ok(n1.rampart(&["device", "revoke", "gw-c", "--reason", "key-compromise"]));
    assert!(
        wait_child(&mut c_sub, T).is_some(),
        "node 2 kept the revoked certificate connected: {}",
        n2.logs.text()
    );
    assert!(
        n2.logs
            .wait_for(&["certificates revoked: live sessions closed"], T)
    );
    for node in [n1, n2] {
        let out = node.mosquitto_pub(&c, &["-t", "devices/gw-c/telemetry", "-m", "x"]);
        assert!(!out.status.success(), "a revoked certificate connected");
    }
}

/// A TCP load balancer in front of the nodes, as in a deployment: each new connection goes
/// to the first backend that accepts it, so while node 1 lives every device is on node 1.
struct Balancer {
    port: u16,
    stop: Arc<AtomicBool>,
}

impl Balancer {
    fn start(backends: Vec<u16>) -> Balancer {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let stop = Arc::new(AtomicBool::new(false));
        let done = stop.clone();
        std::thread::spawn(move || {
            for client in listener.incoming() {
                if done.load(Ordering::Relaxed) {
                    return;
                }
                let Ok(client) = client else { continue };
                let Some(server) = backends.iter().find_map(|p| {
                    TcpStream::connect_timeout(
                        &std::net::SocketAddr::from(([127, 0, 0, 1], *p)),
                        Duration::from_secs(1),
                    )
                    .ok()
                }) else {
                    continue;
                };
                for (mut from, mut to) in [
                    (client.try_clone().unwrap(), server.try_clone().unwrap()),
                    (server, client),
                ] {
                    std::thread::spawn(move || {
                        let mut buf = [0u8; 16 * 1024];
                        while let Ok(n) = from.read(&mut buf) {
                            if n == 0 || to.write_all(&buf[..n]).is_err() {
                                break;
                            }
                        }
                        let _ = to.shutdown(Shutdown::Both);
                        let _ = from.shutdown(Shutdown::Both);
                    });
                }
            }
        });
        Balancer { port, stop }
    }
}

impl Drop for Balancer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

fn stored_seqs(node: &TestHub, id: &str) -> Vec<i64> {
    let mut v: Vec<i64> = node
        .telemetry(id)
        .iter()
        .map(|r| r["seq"].as_i64().unwrap())
        .collect();
    v.sort_unstable();
    v
}

#[test]
fn a_node_killed_with_kill_9_loses_no_acknowledged_reading_while_devices_move_to_the_others() {
    let Some((pg, nats)) = services("cluster kill -9") else {
        return;
    };
    let mut nodes = cluster(&pg, &nats, 3);
    let lb = Balancer::start(nodes.iter().map(|n| n.port).collect());
    let mut devices = Vec::new();
    let mut agents = Vec::new();
    for i in 0..3 {
        let id = format!("gw-k{i}");
        let dir = nodes[0].tmp.path().join("devices").join(&id);
        ok(nodes[0].rampart(&[
            "device",
            "add",
            &id,
            "--out",
            dir.to_str().unwrap(),
            "--hub-address",
            &format!("127.0.0.1:{}", lb.port),
        ]));
        let bundle = Bundle { id, dir };
        agents.push(Agent::start(&bundle, "50ms"));
        devices.push(bundle);
    }
    let observer = nodes.len() - 1;
    for d in &devices {
        assert!(
            wait_until(Duration::from_secs(30), || stored_seqs(
                &nodes[observer],
                &d.id
            )
            .len()
                >= 20),
            "{} stored too little before the kill",
            d.id
        );
    }
    assert!(
        nodes[0].clients_connected() >= 3,
        "the balancer sends every device to node 1 while it lives"
    );
    let before: Vec<usize> = devices
        .iter()
        .map(|d| stored_seqs(&nodes[observer], &d.id).len())
        .collect();
    nodes[0].kill9();
    // The devices reconnect through the balancer to the surviving nodes and go on.
    for (d, n) in devices.iter().zip(&before) {
        assert!(
            wait_until(Duration::from_secs(60), || stored_seqs(
                &nodes[observer],
                &d.id
            )
            .len()
                >= n + 40),
            "{} made no progress after node 1 died: {}",
            d.id,
            nodes[observer].logs.text()
        );
    }
    let moved: usize = nodes[1..].iter().map(|n| n.clients_connected()).sum();
    assert!(moved >= 3, "the devices moved to nodes 2 and 3 ({moved})");
    for a in &mut agents {
        assert!(a.terminate().success());
    }
    // Every reading each agent took is stored exactly once: the ones node 1 acknowledged
    // before it died, and the ones it had not (sent again to the other nodes).
    for d in &devices {
        let last = agent_status(d)["next_telemetry_seq"].as_i64().unwrap() - 1;
        let stored = stored_seqs(&nodes[observer], &d.id);
        let want: Vec<i64> = (1..=last).collect();
        assert_eq!(stored, want, "{}: stored {} of {last}", d.id, stored.len());
    }
}

#[test]
fn a_node_that_cannot_reach_nats_does_not_start() {
    let Some((pg, _)) = services("cluster without NATS") else {
        return;
    };
    let hub = TestHub::init_on(Some(PgTarget {
        url: pg,
        schema: unique_schema("cluster"),
        owner: true,
    }));
    // Nothing listens on a port we just bound and released.
    let closed = free_port();
    hub.join_cluster(&format!("nats://127.0.0.1:{closed}"), "c", "n1");
    let out = std::process::Command::new(bin("rampart"))
        .args(["hub", "--data-dir"])
        .arg(&hub.data)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("cannot connect to NATS"), "{err}");
    assert!(err.contains("hint: is NATS running"), "{err}");
}
