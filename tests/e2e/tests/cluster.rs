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

/// The started nodes of one test's cluster. When the test ends (also when it fails) the nodes
/// stop and the JetStream streams the cluster made (session records and queues) are deleted,
/// so test runs do not pile streams up on the NATS server.
struct Cluster {
    nodes: Vec<TestHub>,
    nats: String,
    name: String,
}

impl std::ops::Deref for Cluster {
    type Target = Vec<TestHub>;
    fn deref(&self) -> &Vec<TestHub> {
        &self.nodes
    }
}

impl std::ops::DerefMut for Cluster {
    fn deref_mut(&mut self) -> &mut Vec<TestHub> {
        &mut self.nodes
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.nodes.clear();
        let name = self.name.clone();
        delete_streams(&self.nats, move |stream| {
            stream == format!("KV_{name}_sessions") || stream == format!("{name}_session_queues")
        });
    }
}

/// Deletes the streams of the NATS server at `nats` that `doomed` picks (best effort: a
/// test's result does not depend on it).
fn delete_streams(nats: &str, doomed: impl Fn(&str) -> bool) {
    use futures::StreamExt;
    let Ok(rt) = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    else {
        return;
    };
    rt.block_on(async {
        let Ok(client) = async_nats::connect(nats).await else {
            return;
        };
        let js = async_nats::jetstream::new(client);
        let mut names = js.stream_names();
        let mut gone = Vec::new();
        while let Some(Ok(name)) = names.next().await {
            if doomed(&name) {
                gone.push(name);
            }
        }
        for name in gone {
            let _ = js.delete_stream(&name).await;
        }
    });
}

/// Whether `stream` belongs to a test cluster (named by `unique_schema("c")`: `c_{pid}_…`)
/// whose test process has ended without deleting it (killed, or from before this guard).
fn left_by_a_dead_test(stream: &str) -> bool {
    let name = stream.strip_prefix("KV_").unwrap_or(stream);
    let ours = name.ends_with("_sessions") || name.ends_with("_session_queues");
    match name.strip_prefix("c_").and_then(|r| r.split('_').next()) {
        Some(pid) if ours && !pid.is_empty() && pid.bytes().all(|b| b.is_ascii_digit()) => {
            !std::path::Path::new(&format!("/proc/{pid}")).exists()
        }
        _ => false,
    }
}

/// `n` started nodes of one new cluster (its own schema and NATS subject prefix, so tests
/// running side by side never see each other).
fn cluster(pg: &str, nats: &str, n: usize) -> Cluster {
    delete_streams(nats, left_by_a_dead_test);
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
    Cluster {
        nodes,
        nats: nats.to_owned(),
        name,
    }
}

/// Waits for `line` in a node's log; fails with `what` and the log when it does not come.
fn expect_log(node: &TestHub, line: &str, what: &str) {
    assert!(
        node.logs.wait_for(&[line], T),
        "{what}: {}",
        node.logs.text()
    );
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

/// A service identity allowed to read every device's telemetry, added and given its policy
/// through `n1`; returns once `n2` has applied the change.
fn telemetry_reader(n1: &TestHub, n2: &TestHub) -> Bundle {
    let svc_dir = n1.tmp.path().join("pipeline");
    ok(n1.rampart(&[
        "service",
        "add",
        "pipeline",
        "--out",
        svc_dir.to_str().unwrap(),
    ]));
    let policy = n1.tmp.path().join("reader.toml");
    std::fs::write(
        &policy,
        "name = \"telemetry-reader\"\n[[statement]]\neffect = \"allow\"\nactions = [\"connect\"]\nresources = [\"*\"]\n[[statement]]\neffect = \"allow\"\nactions = [\"subscribe\", \"receive\"]\nresources = [\"devices/+/telemetry\"]\n",
    )
    .unwrap();
    ok(n1.rampart(&["policy", "put", policy.to_str().unwrap()]));
    ok(n1.rampart(&["policy", "attach", "telemetry-reader", "service:pipeline"]));
    expect_log(
        n2,
        "applied a change from another node",
        "node 2 did not reload the policies",
    );
    Bundle {
        id: "pipeline".into(),
        dir: svc_dir,
    }
}

/// `d` sends reading `seq` to `node` with QoS 1 (mosquitto_pub); panics unless acknowledged.
fn send_reading(node: &TestHub, d: &Bundle, seq: u64) {
    let out = node.mosquitto_pub(
        d,
        &[
            "-t",
            &format!("devices/{}/telemetry", d.id),
            "-q",
            "1",
            "-m",
            &telemetry(seq),
        ],
    );
    assert!(out.status.success(), "{out:?}");
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
    let svc = telemetry_reader(n1, n2);
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
    send_reading(n1, &a, 1);
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

/// The telemetry sequence number in a PUBLISH the hub delivered.
fn seq_of(p: &rampart_mqtt::Publish) -> i64 {
    let v: serde_json::Value = serde_json::from_slice(&p.payload).unwrap();
    v["seq"].as_i64().unwrap()
}

/// Reads `n` QoS 1 PUBLISHes (acknowledging each) and returns their sequence numbers.
async fn receive_seqs(c: &mut rampart_e2e::raw::RawClient, n: usize) -> Vec<i64> {
    use rampart_mqtt::{Ack, Packet};
    let mut seqs = Vec::new();
    while seqs.len() < n {
        let p = c.expect(T, |p| matches!(p, Packet::Publish(_))).await;
        let Packet::Publish(m) = p else {
            unreachable!()
        };
        assert_eq!(m.qos, rampart_mqtt::QoS::AtLeastOnce, "{m:?}");
        c.send(&Packet::PubAck(Ack {
            packet_id: m.packet_id.unwrap(),
            reason: 0,
        }))
        .await;
        seqs.push(seq_of(&m));
    }
    seqs
}

#[test]
fn a_persistent_session_moves_between_nodes_and_outlives_a_node_killed() {
    use rampart_e2e::raw::{RawClient, Received};
    use rampart_mqtt::{ConnectProperties, Protocol};

    let Some((pg, nats)) = services("cluster persistent sessions") else {
        return;
    };
    let mut nodes = cluster(&pg, &nats, 2);
    let svc = telemetry_reader(&nodes[0], &nodes[1]);
    let a = nodes[0].add_device("gw-a");
    let publish = |node: &TestHub, seq: u64| send_reading(node, &a, seq);
    let queued = |nodes: &[TestHub]| -> f64 {
        nodes
            .iter()
            .map(|n| n.metric("rampart_cluster_session_messages_queued_total"))
            .sum()
    };

    // A persistent subscriber (MQTT 3.1.1, clean session 0) on node 1, which then goes away.
    let (mut sub, lines) = nodes[0].mosquitto_sub(
        &svc,
        &["-c", "-q", "1", "-t", "devices/+/telemetry", "-v", "-d"],
    );
    assert!(lines.wait_for(&["SUBACK"], T), "{}", lines.text());
    let _ = sub.kill();
    let _ = sub.wait();
    expect_log(
        &nodes[0],
        "persistent session parked with the cluster",
        "node 1 did not park the session",
    );

    // While it is away the device publishes through node 2, then through node 1: both are
    // queued for it in JetStream.
    publish(&nodes[1], 1);
    publish(&nodes[0], 2);
    assert!(
        wait_until(T, || queued(&nodes) >= 2.0),
        "nothing queued for the parked session: node 1 {}\nnode 2 {}",
        nodes[0].logs.text(),
        nodes[1].logs.text()
    );

    // It comes back on node 2 without subscribing again: the session is there, with what was
    // queued, in order, and its subscription delivers what is published next on node 1.
    let rt = tokio::runtime::Runtime::new().unwrap();
    let addr2 = nodes[1].addr();
    let mut client = rt.block_on(async {
        let (mut c, present) = RawClient::connect_session(
            addr2,
            &svc,
            Protocol::V311,
            "pipeline",
            false,
            ConnectProperties::default(),
        )
        .await;
        assert!(present, "the session was not resumed");
        assert_eq!(receive_seqs(&mut c, 2).await, vec![1, 2]);
        c
    });
    assert!(nodes[1].metric("rampart_cluster_sessions_resumed_total") >= 1.0);
    publish(&nodes[0], 3);
    rt.block_on(async {
        assert_eq!(receive_seqs(&mut client, 1).await, vec![3]);
    });

    // The same client connects to node 1 while node 2 holds its session: node 2 closes its
    // connection and hands the session over. The new connection subscribes to something
    // else only, so what it receives next comes through the subscription that moved.
    let (mut on_n1, lines) = nodes[0].mosquitto_sub(
        &svc,
        &["-c", "-q", "1", "-t", "devices/none/telemetry", "-v", "-d"],
    );
    assert!(lines.wait_for(&["SUBACK"], T), "{}", lines.text());
    rt.block_on(async {
        assert_eq!(
            client.recv(T).await,
            Received::Closed,
            "node 2 kept the old connection"
        );
    });
    assert!(
        nodes[0]
            .logs
            .wait_for(&["resumed a persistent session from the cluster"], T),
        "{}",
        nodes[0].logs.text()
    );
    publish(&nodes[1], 4);
    assert!(
        lines.wait_for(&["devices/gw-a/telemetry {\"v\":1,\"seq\":4"], T),
        "the session taken over delivered nothing: {}\nnode 1: {}",
        lines.text(),
        nodes[0].logs.text()
    );

    // Node 1, which holds the session now, is killed. Node 2 stops hearing it and parks the
    // sessions it held; what is published meanwhile waits in JetStream. The client comes
    // back on node 2: the session is there (node 1 cannot be asked; its record is claimed as
    // it stands), with that message, and then live ones.
    nodes[0].kill9();
    assert!(
        wait_child(&mut on_n1, T).is_some(),
        "mosquitto_sub kept running"
    );
    expect_log(
        &nodes[1],
        "but is gone: they are parked here",
        "node 2 did not notice node 1 was gone",
    );
    publish(&nodes[1], 5);
    let addr2 = nodes[1].addr();
    let held = rt.block_on(async {
        let (mut c, present) = RawClient::connect_session(
            addr2,
            &svc,
            Protocol::V5,
            "pipeline",
            false,
            ConnectProperties {
                session_expiry_interval: Some(600),
                ..ConnectProperties::default()
            },
        )
        .await;
        assert!(present, "after node 1 was killed");
        assert_eq!(receive_seqs(&mut c, 1).await, vec![5]);
        let sent = tokio::task::spawn_blocking({
            let n2 = nodes[1].mosquitto_args(&a);
            move || {
                std::process::Command::new("mosquitto_pub")
                    .args(n2)
                    .args([
                        "-t",
                        "devices/gw-a/telemetry",
                        "-q",
                        "1",
                        "-m",
                        &telemetry(6),
                    ])
                    .output()
                    .unwrap()
            }
        })
        .await
        .unwrap();
        assert!(sent.status.success(), "{sent:?}");
        assert_eq!(receive_seqs(&mut c, 1).await, vec![6]);
        c
    });

    // Node 1 comes back. Node 2, holding the session, is killed and restarted: the record
    // still names it, it answers that it holds no connection, and node 1 claims the session.
    nodes[0].start();
    assert!(nodes[0].logs.wait_for(&["joined the cluster"], T));
    nodes[1].kill9();
    drop(held);
    nodes[1].start();
    assert!(nodes[1].logs.wait_for(&["joined the cluster"], T));
    let addr1 = nodes[0].addr();
    rt.block_on(async {
        let (_c, present) = RawClient::connect_session(
            addr1,
            &svc,
            Protocol::V311,
            "pipeline",
            false,
            ConnectProperties::default(),
        )
        .await;
        assert!(present, "after node 2 restarted");
    });
    expect_log(
        &nodes[1],
        "another node resumed this client's session",
        "node 2 was not asked",
    );

    // A clean start ends the cluster's session: the next resume finds none.
    rt.block_on(async {
        for clean in [true, false] {
            let (_c, present) = RawClient::connect_session(
                addr2,
                &svc,
                Protocol::V311,
                "pipeline",
                clean,
                ConnectProperties::default(),
            )
            .await;
            assert!(!present, "clean start {clean}: a session was present");
        }
    });
}

#[test]
fn a_node_whose_nats_has_no_jetstream_does_not_start() {
    let Some((pg, _)) = services("cluster without JetStream") else {
        return;
    };
    // A NATS server of the test's own, on loopback, without JetStream (-js not given).
    let port = free_port();
    let mut nats = std::process::Command::new("nats-server")
        .args(["-a", "127.0.0.1", "-p", &port.to_string()])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("nats-server (Debian package nats-server) is installed");
    assert!(
        wait_until(T, || TcpStream::connect(("127.0.0.1", port)).is_ok()),
        "nats-server did not listen"
    );
    let hub = TestHub::init_on(Some(PgTarget {
        url: pg,
        schema: unique_schema("cluster"),
        owner: true,
    }));
    hub.join_cluster(&format!("nats://127.0.0.1:{port}"), "c", "n1");
    let out = std::process::Command::new(bin("rampart"))
        .args(["hub", "--data-dir"])
        .arg(&hub.data)
        .output()
        .unwrap();
    let _ = nats.kill();
    let _ = nats.wait();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("JetStream is not available"), "{err}");
    assert!(
        err.contains("hint: persistent sessions are kept in JetStream"),
        "{err}"
    );
}

#[test]
fn a_device_registered_just_in_time_on_one_node_has_its_rights_on_the_others() {
    let Some((pg, nats)) = services("cluster just-in-time registration") else {
        return;
    };
    let nodes = cluster(&pg, &nats, 2);
    let (n1, n2) = (&nodes[0], &nodes[1]);
    // A vendor CA trusted through node 1: its devices register on first connection, join
    // group "acme" and get a policy that lets them read every device's telemetry.
    let policy = n1.tmp.path().join("acme-reader.toml");
    std::fs::write(
        &policy,
        "name = \"acme-reader\"\n[[statement]]\neffect = \"allow\"\nactions = [\"subscribe\", \"receive\"]\nresources = [\"devices/+/telemetry\"]\n",
    )
    .unwrap();
    ok(n1.rampart(&["policy", "put", policy.to_str().unwrap()]));
    let acme = VendorCa::create(&n1.tmp.path().join("vendors"), "acme-ca", "ec", 365);
    ok(n1.rampart(&[
        "ca",
        "register",
        acme.cert().to_str().unwrap(),
        "--group",
        "acme",
        "--policy",
        "acme-reader",
    ]));
    expect_log(n2, "TrustChanged", "node 2 did not hear of the new CA");
    // Both devices register through node 1.
    let reader = acme.issue(n1, "acme-gw-1", "/O=Acme/CN=acme-gw-1", "ec");
    let writer = acme.issue(n1, "acme-gw-2", "/O=Acme/CN=acme-gw-2", "ec");
    for (d, seq) in [(&reader, 1), (&writer, 2)] {
        send_reading(n1, d, seq);
    }
    expect_log(
        n2,
        "PoliciesChanged",
        "node 2 was not told of the attached policy",
    );
    // On node 2 the reader has the template's policy, and the writer's telemetry published
    // on node 1 reaches it.
    let (mut sub, lines) = n2.mosquitto_sub(
        &reader,
        &["-t", "devices/+/telemetry", "-q", "1", "-v", "-d"],
    );
    assert!(lines.wait_for(&["SUBACK"], T), "{}", lines.text());
    send_reading(n1, &writer, 3);
    assert!(
        lines.wait_for(&["devices/acme-gw-2/telemetry {\"v\":1,\"seq\":3"], T),
        "the reader on node 2 got nothing: {}\nnode 2: {}",
        lines.text(),
        n2.logs.text()
    );
    let _ = sub.kill();
}

#[test]
fn a_client_id_connecting_to_another_node_takes_over_from_the_older_connection() {
    let Some((pg, nats)) = services("cluster takeover of clean sessions") else {
        return;
    };
    let nodes = cluster(&pg, &nats, 2);
    let (n1, n2) = (&nodes[0], &nodes[1]);
    let d = n1.add_device("gw-d");
    // A clean session on node 2 (MQTT 5, so the close says why).
    let (mut old, lines) = n2.mosquitto_sub(&d, &["-t", "devices/gw-d/#", "-V", "5", "-d"]);
    assert!(lines.wait_for(&["SUBACK"], T), "{}", lines.text());
    // The same client id connects to node 1: node 2 closes the older connection.
    send_reading(n1, &d, 1);
    assert!(
        wait_child(&mut old, T).is_some(),
        "node 2 kept the older connection: {}",
        n2.logs.text()
    );
    assert!(
        n2.logs
            .wait_for(&["its older connection here is closed"], T),
        "{}",
        n2.logs.text()
    );
    assert!(
        lines.wait_for(&["DISCONNECT"], T) && lines.text().contains("142"),
        "the client was not told 0x8E (session taken over): {}",
        lines.text()
    );
}
