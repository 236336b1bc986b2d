//! Support for the end-to-end tests: every test starts the real `rampart` and `rampart-agent`
//! binaries as processes, on loopback ports, in a temporary data directory, and talks to them
//! with real protocol peers (the Debian mosquitto clients, Python paho-mqtt, and a raw MQTT
//! client over rustls built on Rampart's codec for byte-exact protocol checks).
//!
//! The binaries must be built first (`cargo build --workspace --bins`; `scripts/test` does it).

#![allow(clippy::unwrap_used)] // test support: a failed unwrap is a failed test
#![allow(missing_debug_implementations)] // process handles and captured output

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub mod raw;
pub mod release;

pub use nix::sys::signal::Signal;

/// Path of a workspace binary (`rampart`, `rampart-agent`).
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    // target/<profile>/deps/<test> -> target/<profile>/<name>
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target profile directory");
    let p = dir.join(name);
    assert!(
        p.exists(),
        "{} is not built: run `cargo build --workspace --bins` first (scripts/test does)",
        p.display()
    );
    p
}

/// A free TCP port on 127.0.0.1, below the kernel's ephemeral range (32768 and up on Linux).
/// A port the kernel hands out for `bind(0)` is also one it may pick as the source port of an
/// outgoing connection (to PostgreSQL, to a hub) — so a hub restarted on "its" port could
/// find it taken. Ports from 20000 to 32767 are only used by whoever binds them.
///
/// Each port handed out is also reserved for an hour with a file under the temporary
/// directory: nextest runs every test in a process of its own, and a port that is free
/// while a test restarts its hub must not go to another test meanwhile.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    let reserved = std::env::temp_dir().join("rampart-e2e-ports");
    std::fs::create_dir_all(&reserved).unwrap();
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos()
        ^ std::process::id().wrapping_mul(2_654_435_761);
    for i in 0..5000u32 {
        let n = N.fetch_add(1, Ordering::Relaxed);
        let port =
            20_000 + (seed.wrapping_add(n.wrapping_mul(7919)).wrapping_add(i) % 12_768) as u16;
        if !reserve(&reserved.join(port.to_string())) {
            continue;
        }
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port between 20000 and 32767 on 127.0.0.1")
}

/// Takes the reservation file `f` unless another test took it within the last hour.
fn reserve(f: &Path) -> bool {
    let fresh = std::fs::metadata(f)
        .and_then(|m| m.modified())
        .is_ok_and(|t| t.elapsed().is_ok_and(|age| age < Duration::from_secs(3600)));
    if fresh {
        return false;
    }
    // A stale reservation is removed first; `create_new` lets only one taker win.
    let _ = std::fs::remove_file(f);
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(f)
        .is_ok()
}

/// Polls `f` every 50 ms until it returns true or `timeout` passes.
pub fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if f() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Collects the lines a child process writes to one of its pipes.
#[derive(Clone, Default)]
pub struct Lines(Arc<Mutex<Vec<String>>>);

impl Lines {
    pub fn capture(pipe: impl Read + Send + 'static) -> Lines {
        let lines = Lines::default();
        let l = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines() {
                match line {
                    Ok(line) => l.0.lock().unwrap().push(line),
                    Err(_) => break,
                }
            }
        });
        lines
    }

    pub fn all(&self) -> Vec<String> {
        self.0.lock().unwrap().clone()
    }

    pub fn text(&self) -> String {
        self.all().join("\n")
    }

    pub fn contains(&self, needle: &str) -> bool {
        self.0.lock().unwrap().iter().any(|l| l.contains(needle))
    }

    /// Waits for a line containing every needle.
    pub fn wait_for(&self, needles: &[&str], timeout: Duration) -> bool {
        wait_until(timeout, || {
            self.0
                .lock()
                .unwrap()
                .iter()
                .any(|l| needles.iter().all(|n| l.contains(n)))
        })
    }
}

/// A device bundle written by `rampart device add --out`.
#[derive(Debug, Clone)]
pub struct Bundle {
    pub id: String,
    pub dir: PathBuf,
}

impl Bundle {
    pub fn cert(&self) -> PathBuf {
        self.dir.join("device.crt")
    }
    pub fn key(&self) -> PathBuf {
        self.dir.join("device.key")
    }
    pub fn ca(&self) -> PathBuf {
        self.dir.join("ca-chain.crt")
    }
    pub fn agent_toml(&self) -> PathBuf {
        self.dir.join("agent.toml")
    }
}

/// A hub data directory and, while started, its `rampart hub` process.
pub struct TestHub {
    pub tmp: tempfile::TempDir,
    pub data: PathBuf,
    pub port: u16,
    pub metrics_port: u16,
    pub api_port: u16,
    child: Option<Child>,
    pub logs: Lines,
    /// The PostgreSQL server and schema this hub stores in (on PostgreSQL runs and in
    /// cluster tests).
    pub pg: Option<PgTarget>,
}

/// Where a test hub stores on PostgreSQL.
#[derive(Debug, Clone)]
pub struct PgTarget {
    pub url: String,
    pub schema: String,
    /// Whether this hub drops the schema when it goes (the first node of a cluster does).
    pub owner: bool,
}

/// The PostgreSQL server the end-to-end suite stores in, when `RAMPART_TEST_BACKEND` is
/// `postgres` (`scripts/test` runs the suite a second time so, with
/// `RAMPART_TEST_POSTGRES_URL` set); `None` for the embedded SQLite default.
pub fn postgres_backend() -> Option<String> {
    match std::env::var("RAMPART_TEST_BACKEND").as_deref() {
        Ok("postgres") => Some(
            std::env::var("RAMPART_TEST_POSTGRES_URL")
                .expect("RAMPART_TEST_BACKEND=postgres needs RAMPART_TEST_POSTGRES_URL"),
        ),
        Ok("sqlite") | Err(_) => None,
        Ok(other) => panic!("RAMPART_TEST_BACKEND={other}: expected sqlite or postgres"),
    }
}

/// rampart.toml with the MQTT, metrics and device API listeners moved from `from` to
/// loopback `ports`.
fn move_listeners(cfg: &str, from: [impl AsRef<str>; 3], ports: [u16; 3]) -> String {
    let mut cfg = cfg.to_owned();
    for (from, port) in from.iter().zip(ports) {
        cfg = cfg.replace(
            &format!("listen = \"{}\"", from.as_ref()),
            &format!("listen = \"127.0.0.1:{port}\""),
        );
    }
    cfg
}

/// A schema name no other test (or earlier run) uses.
pub fn unique_schema(prefix: &str) -> String {
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!(
        "{prefix}_{}_{}_{nanos}",
        std::process::id(),
        N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    )
}

/// `psql` on `schema` of the server at `url`: tuples only, unaligned, stops at the first error.
pub fn psql(url: &str, schema: &str, statement: &str) -> Output {
    Command::new("psql")
        .env("PGOPTIONS", format!("-c search_path={schema}"))
        .args([
            url,
            "-X",
            "-q",
            "-At",
            "-v",
            "ON_ERROR_STOP=1",
            "-c",
            statement,
        ])
        .output()
        .expect("psql is installed")
}

impl TestHub {
    /// `rampart init` in a fresh directory, listeners moved to free loopback ports; on
    /// PostgreSQL runs (`RAMPART_TEST_BACKEND=postgres`) storing in a schema of its own.
    pub fn init() -> TestHub {
        TestHub::init_on(postgres_backend().map(|url| PgTarget {
            url,
            schema: unique_schema("e2e"),
            owner: true,
        }))
    }

    /// `rampart init` storing in `pg` (or in SQLite with `None`).
    pub fn init_on(pg: Option<PgTarget>) -> TestHub {
        let tmp = tempfile::tempdir().unwrap();
        let data = tmp.path().join("hub");
        let out = Command::new(bin("rampart"))
            .args(["init", "--data-dir"])
            .arg(&data)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "init: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let port = free_port();
        let metrics_port = free_port();
        let api_port = free_port();
        let cfg_path = data.join("rampart.toml");
        let cfg = move_listeners(
            &std::fs::read_to_string(&cfg_path).unwrap(),
            ["0.0.0.0:8883", "127.0.0.1:9883", "0.0.0.0:8443"],
            [port, metrics_port, api_port],
        );
        let cfg = match &pg {
            Some(PgTarget { url, schema, .. }) => cfg
                .replace("backend = \"sqlite\"", "backend = \"postgres\"")
                .replace("postgres_url = \"\"", &format!("postgres_url = \"{url}\""))
                .replace(
                    "postgres_schema = \"rampart\"",
                    &format!("postgres_schema = \"{schema}\""),
                )
                .replace(
                    "postgres_max_connections = 16",
                    "postgres_max_connections = 4",
                ),
            None => cfg,
        };
        std::fs::write(&cfg_path, cfg).unwrap();
        TestHub {
            tmp,
            data,
            port,
            metrics_port,
            api_port,
            child: None,
            logs: Lines::default(),
            pg,
        }
    }

    /// Another node of this hub: a copy of its data directory (CA and keys, configuration,
    /// release workspace) with listeners on free ports of its own, storing in the same
    /// PostgreSQL schema. Not started.
    pub fn another_node(&self) -> TestHub {
        let pg = self.pg.clone().map(|p| PgTarget { owner: false, ..p });
        assert!(pg.is_some(), "nodes of a cluster share PostgreSQL");
        let tmp = tempfile::tempdir().unwrap();
        let data = tmp.path().join("hub");
        run_ok(Command::new("cp").arg("-a").arg(&self.data).arg(&data));
        for stale in ["hub.sock", "hub.pid"] {
            let _ = std::fs::remove_file(data.join(stale));
        }
        let (port, metrics_port, api_port) = (free_port(), free_port(), free_port());
        let cfg_path = data.join("rampart.toml");
        let cfg = move_listeners(
            &std::fs::read_to_string(&cfg_path).unwrap(),
            [self.port, self.metrics_port, self.api_port].map(|p| format!("127.0.0.1:{p}")),
            [port, metrics_port, api_port],
        );
        std::fs::write(&cfg_path, cfg).unwrap();
        TestHub {
            tmp,
            data,
            port,
            metrics_port,
            api_port,
            child: None,
            logs: Lines::default(),
            pg,
        }
    }

    /// Live MQTT connections (the `rampart_connections_active` gauge).
    pub fn clients_connected(&self) -> usize {
        self.metric("rampart_connections_active") as usize
    }

    /// Makes this hub node `node` of cluster `cluster` meeting at `nats` (before `start`).
    pub fn join_cluster(&self, nats: &str, cluster: &str, node: &str) {
        self.configure("nats_url = \"\"", &format!("nats_url = \"{nats}\""));
        self.configure("name = \"rampart\"", &format!("name = \"{cluster}\""));
        self.configure("node = \"\"", &format!("node = \"{node}\""));
    }

    /// A hub that is initialised and running.
    pub fn start_new() -> TestHub {
        let mut h = TestHub::init();
        h.start();
        h
    }

    /// Replaces a setting in rampart.toml (before `start`).
    pub fn configure(&self, from: &str, to: &str) {
        let p = self.data.join("rampart.toml");
        let cfg = std::fs::read_to_string(&p).unwrap();
        assert!(cfg.contains(from), "rampart.toml has no {from:?}");
        std::fs::write(&p, cfg.replace(from, to)).unwrap();
    }

    /// Starts `rampart hub` and waits until it listens.
    pub fn start(&mut self) {
        assert!(self.child.is_none(), "already running");
        let mut child = Command::new(bin("rampart"))
            .args(["--log-json", "hub", "--data-dir"])
            .arg(&self.data)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let logs = Lines::capture(child.stderr.take().unwrap());
        self.logs = logs.clone();
        self.child = Some(child);
        assert!(
            logs.wait_for(&["hub started"], Duration::from_secs(20)),
            "hub did not start:\n{}",
            logs.text()
        );
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// Stops the hub with SIGTERM and waits for it.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            signal(c.id(), nix::sys::signal::Signal::SIGTERM);
            let status = wait_child(&mut c, Duration::from_secs(15));
            assert!(status.is_some(), "hub did not stop after SIGTERM");
        }
    }

    /// Kills the hub with SIGKILL: no chance to flush anything.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill().unwrap();
            c.wait().unwrap();
        }
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// Runs `rampart ARGS --data-dir DATA`.
    pub fn rampart(&self, args: &[&str]) -> Output {
        Command::new(bin("rampart"))
            .args(args)
            .arg("--data-dir")
            .arg(&self.data)
            .output()
            .unwrap()
    }

    /// Registers a device and writes its bundle (hub-generated key).
    pub fn add_device(&self, id: &str) -> Bundle {
        let dir = self.tmp.path().join("devices").join(id);
        let out = self.rampart(&[
            "device",
            "add",
            id,
            "--out",
            dir.to_str().unwrap(),
            "--hub-address",
            &format!("127.0.0.1:{}", self.port),
        ]);
        assert!(
            out.status.success(),
            "device add {id}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Bundle {
            id: id.to_string(),
            dir,
        }
    }

    /// All metrics from GET /metrics (labels kept in the name).
    pub fn metrics(&self) -> HashMap<String, f64> {
        let body = http_get(self.metrics_port, "/metrics");
        body.lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
            .filter_map(|l| {
                let (k, v) = l.rsplit_once(' ')?;
                Some((k.to_string(), v.parse().ok()?))
            })
            .collect()
    }

    pub fn metric(&self, name: &str) -> f64 {
        self.metrics().get(name).copied().unwrap_or(0.0)
    }

    /// The refusal counter for `reason`.
    pub fn refusals(&self, reason: &str) -> u64 {
        self.metric(&format!("rampart_refusals_total{{reason=\"{reason}\"}}")) as u64
    }

    /// Waits until the refusal counter for `reason` reaches `n` and a log line names it.
    pub fn expect_refusal(&self, reason: &str, n: u64) {
        let ok = wait_until(Duration::from_secs(10), || self.refusals(reason) >= n);
        assert!(
            ok,
            "refusal {reason} not counted {n} time(s) (count {}); log:\n{}",
            self.refusals(reason),
            self.logs.text()
        );
        // The log line is read from the hub's stderr by another thread: give it a moment.
        let needle = format!("\"reason\":\"{reason}\"");
        assert!(
            wait_until(Duration::from_secs(5), || self.logs.contains(&needle)),
            "refusal {reason} not logged:\n{}",
            self.logs.text()
        );
    }

    /// `rampart telemetry ID --json`.
    pub fn telemetry(&self, id: &str) -> Vec<serde_json::Value> {
        let out = self.rampart(&[
            "telemetry",
            id,
            "--json",
            "--limit",
            "100000",
            "--since",
            // Replayed CAN logs carry their recording time.
            "3650d",
        ]);
        let err = String::from_utf8_lossy(&out.stderr);
        if !out.status.success() && err.contains("not found") {
            return Vec::new(); // not registered (yet)
        }
        assert!(out.status.success(), "telemetry: {err}");
        serde_json::from_slice::<Vec<serde_json::Value>>(&out.stdout).unwrap()
    }

    /// `rampart events ID --json`.
    pub fn events(&self, id: &str) -> Vec<serde_json::Value> {
        let out = self.rampart(&["events", id, "--json", "--limit", "10000"]);
        if !out.status.success() {
            return Vec::new();
        }
        serde_json::from_slice::<Vec<serde_json::Value>>(&out.stdout).unwrap_or_default()
    }

    /// Arguments that make a mosquitto client connect as `bundle`'s device.
    pub fn mosquitto_args(&self, bundle: &Bundle) -> Vec<String> {
        vec![
            "-h".into(),
            "localhost".into(),
            "-p".into(),
            self.port.to_string(),
            "--cafile".into(),
            bundle.ca().display().to_string(),
            "--cert".into(),
            bundle.cert().display().to_string(),
            "--key".into(),
            bundle.key().display().to_string(),
            "-i".into(),
            bundle.id.clone(),
        ]
    }

    /// Runs mosquitto_pub as `bundle`'s device with extra arguments.
    pub fn mosquitto_pub(&self, bundle: &Bundle, args: &[&str]) -> Output {
        Command::new("mosquitto_pub")
            .args(self.mosquitto_args(bundle))
            .args(args)
            .output()
            .expect("mosquitto_pub (Debian package mosquitto-clients) is installed")
    }

    /// Starts mosquitto_sub as `bundle`'s device; its output lines are captured.
    pub fn mosquitto_sub(&self, bundle: &Bundle, args: &[&str]) -> (Child, Lines) {
        // stdbuf: mosquitto_sub block-buffers stdout into a pipe; the tests read it live.
        let mut child = Command::new("stdbuf")
            .args(["-oL", "-eL", "mosquitto_sub"])
            .args(self.mosquitto_args(bundle))
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("mosquitto_sub (Debian package mosquitto-clients) is installed");
        let out = Lines::capture(child.stdout.take().unwrap());
        let err = Lines::capture(child.stderr.take().unwrap());
        // Merge stderr into the same view after the fact.
        let merged = out.clone();
        std::thread::spawn(move || {
            loop {
                std::thread::sleep(Duration::from_millis(20));
                let e = err.all();
                if !e.is_empty() {
                    let mut m = merged.0.lock().unwrap();
                    for l in e {
                        if !m.contains(&l) {
                            m.push(l);
                        }
                    }
                }
            }
        });
        (child, out)
    }
}

impl Drop for TestHub {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        // A passing test's schema goes with it; a failing one's stays for inspection.
        if let Some(p) = &self.pg
            && p.owner
            && !std::thread::panicking()
        {
            let _ = psql(
                &p.url,
                "public",
                &format!("DROP SCHEMA IF EXISTS {} CASCADE", p.schema),
            );
        }
    }
}

/// Sends a signal to a process (ignoring one that has already exited).
pub fn signal(pid: u32, sig: nix::sys::signal::Signal) {
    let pid = nix::unistd::Pid::from_raw(i32::try_from(pid).unwrap());
    let _ = nix::sys::signal::kill(pid, sig);
}

/// Waits for a child to exit.
pub fn wait_child(c: &mut Child, timeout: Duration) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(s) = c.try_wait().unwrap() {
            return Some(s);
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
}

/// A minimal HTTP/1.1 GET on loopback.
pub fn http_get(port: u16, path: &str) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    let (head, body) = resp.split_once("\r\n\r\n").unwrap_or((&resp, ""));
    assert!(head.starts_with("HTTP/1.1 200"), "GET {path}: {head}");
    if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(body)
    } else {
        body.to_string()
    }
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 {
            break;
        }
        out.push_str(&rest[..n]);
        body = &rest[n + 2..];
    }
    out
}

/// Runs a command, panicking with its output if it fails.
pub fn run_ok(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// The workspace's root directory.
pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// `../shared/data` beside the workspace: the RustSec database and its OSV export.
pub fn shared_data() -> PathBuf {
    workspace().join("../shared/data")
}

/// A copy of the RustSec advisory database in `dir`, committed as a git repository, which is
/// how `cargo audit --db` wants it.
pub fn rustsec_db_snapshot(dir: &Path) -> PathBuf {
    let db = dir.join("advisory-db");
    run_ok(
        Command::new("cp")
            .arg("-r")
            .arg(shared_data().join("rustsec-advisory-db"))
            .arg(&db),
    );
    for args in [
        &["init", "-q"][..],
        &["add", "-A"][..],
        &[
            "-c",
            "user.email=test@localhost",
            "-c",
            "user.name=test",
            "commit",
            "-qm",
            "snapshot",
        ][..],
    ] {
        run_ok(Command::new("git").current_dir(&db).args(args));
    }
    db
}

/// A CA made with OpenSSL, as another vendor would have it.
pub struct VendorCa {
    pub dir: PathBuf,
    pub name: String,
}

impl VendorCa {
    /// Creates a CA certificate and key in `dir` (`key_spec`: "ec" or "rsa:2048").
    pub fn create(dir: &Path, name: &str, key_spec: &str, days: u32) -> VendorCa {
        std::fs::create_dir_all(dir).unwrap();
        let mut cmd = Command::new("openssl");
        cmd.current_dir(dir)
            .args(["req", "-x509", "-newkey", key_spec]);
        if key_spec == "ec" {
            cmd.args(["-pkeyopt", "ec_paramgen_curve:P-256"]);
        }
        cmd.args([
            "-nodes",
            "-keyout",
            &format!("{name}.key"),
            "-out",
            &format!("{name}.crt"),
        ])
        .args([
            "-subj",
            &format!("/O=Vendor/CN={name}"),
            "-days",
            &days.to_string(),
        ])
        .args(["-addext", "basicConstraints=critical,CA:TRUE"])
        .args(["-addext", "keyUsage=critical,keyCertSign,cRLSign"]);
        run_ok(&mut cmd);
        VendorCa {
            dir: dir.to_path_buf(),
            name: name.into(),
        }
    }

    pub fn cert(&self) -> PathBuf {
        self.dir.join(format!("{}.crt", self.name))
    }

    /// Issues a device certificate with subject `subj` (e.g. "/O=Acme/CN=gw-1") into a bundle
    /// directory that trusts `hub`'s root for the server.
    pub fn issue(&self, hub: &TestHub, id: &str, subj: &str, key_spec: &str) -> Bundle {
        let dir = self.dir.join(id);
        std::fs::create_dir_all(&dir).unwrap();
        let mut cmd = Command::new("openssl");
        cmd.current_dir(&dir)
            .args(["req", "-new", "-newkey", key_spec]);
        if key_spec == "ec" {
            cmd.args(["-pkeyopt", "ec_paramgen_curve:P-256"]);
        }
        cmd.args([
            "-nodes",
            "-keyout",
            "device.key",
            "-out",
            "device.csr",
            "-subj",
            subj,
        ]);
        run_ok(&mut cmd);
        std::fs::write(
            dir.join("ext.cnf"),
            "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=clientAuth\n",
        )
        .unwrap();
        run_ok(
            Command::new("openssl")
                .current_dir(&dir)
                .args(["x509", "-req", "-in", "device.csr", "-CA"])
                .arg(self.cert())
                .arg("-CAkey")
                .arg(self.dir.join(format!("{}.key", self.name)))
                .args([
                    "-CAcreateserial",
                    "-out",
                    "device.crt",
                    "-days",
                    "30",
                    "-extfile",
                    "ext.cnf",
                ]),
        );
        std::fs::copy(hub.data.join("pki/ca-chain.crt"), dir.join("ca-chain.crt")).unwrap();
        Bundle { id: id.into(), dir }
    }
}

impl TestHub {
    /// `curl` against the device API with a bundle's certificate and a bearer token.
    /// Returns (HTTP status, body).
    pub fn api_get(&self, bundle: &Bundle, path: &str, token: Option<&str>) -> (u16, String) {
        let mut cmd = Command::new("curl");
        cmd.args([
            "-s",
            "-o",
            "-",
            "-w",
            "\n%{http_code}",
            "--max-time",
            "10",
            "--cacert",
        ])
        .arg(bundle.ca())
        .arg("--cert")
        .arg(bundle.cert())
        .arg("--key")
        .arg(bundle.key());
        if let Some(t) = token {
            cmd.args(["-H", &format!("Authorization: Bearer {t}")]);
        }
        cmd.arg(format!("https://localhost:{}{path}", self.api_port));
        let out = cmd.output().expect("curl is installed");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
        (code.trim().parse().unwrap_or(0), body.to_string())
    }

    /// Runs SQL on the hub's database with its own client (`sqlite3` or `psql`): stdout is
    /// the result, one row a line, columns separated by `|`.
    pub fn query(&self, statement: &str) -> Output {
        match &self.pg {
            Some(p) => psql(&p.url, &p.schema, statement),
            None => Command::new("sqlite3")
                // A busy timeout, as the hub writes concurrently (last-seen batches, telemetry).
                .args(["-cmd", ".timeout 10000"])
                .arg(self.data.join("rampart.db"))
                .arg(statement)
                .output()
                .expect("sqlite3 is installed"),
        }
    }

    /// Runs SQL that must succeed (crafting registry states for audit tests).
    pub fn sql(&self, statement: &str) {
        let out = self.query(statement);
        assert!(
            out.status.success(),
            "{statement}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// agent.toml edit for tests that hand the device's key to another program (mosquitto, curl)
/// after the agent ran: keys stay plain PEM instead of sealed with the storage key.
pub const PLAIN_KEYS: (&str, &str) = ("encrypt_credentials = true", "encrypt_credentials = false");

/// A running `rampart-agent`.
pub struct Agent {
    pub child: Child,
    pub logs: Lines,
}

impl Agent {
    /// Starts `rampart-agent run` for a bundle, with the telemetry interval replaced.
    pub fn start(bundle: &Bundle, interval: &str) -> Agent {
        Agent::start_with(bundle, interval, &[])
    }

    /// Like [`Agent::start`], replacing `from` with `to` in agent.toml for each pair.
    pub fn start_with(bundle: &Bundle, interval: &str, edits: &[(&str, &str)]) -> Agent {
        let mut cfg = std::fs::read_to_string(bundle.agent_toml())
            .unwrap()
            .replace("interval = \"5s\"", &format!("interval = \"{interval}\""));
        for (from, to) in edits {
            assert!(cfg.contains(from), "agent.toml has no {from:?}");
            cfg = cfg.replace(from, to);
        }
        std::fs::write(bundle.agent_toml(), cfg).unwrap();
        Agent::run(bundle)
    }

    /// Starts `rampart-agent run` with agent.toml as it is (a restart).
    pub fn run(bundle: &Bundle) -> Agent {
        let mut child = Command::new(bin("rampart-agent"))
            .args(["--log-json", "run", "--config"])
            .arg(bundle.agent_toml())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let logs = Lines::capture(child.stderr.take().unwrap());
        Agent { child, logs }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGTERM and wait; returns the exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        signal(self.child.id(), nix::sys::signal::Signal::SIGTERM);
        wait_child(&mut self.child, Duration::from_secs(15)).expect("agent exits after SIGTERM")
    }

    /// SIGKILL: no chance to flush or close anything.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `rampart-agent ARGS --config BUNDLE/agent.toml`.
pub fn agent_cli(bundle: &Bundle, args: &[&str]) -> Output {
    Command::new(bin("rampart-agent"))
        .args(args)
        .arg("--config")
        .arg(bundle.agent_toml())
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

/// `rampart-agent status --json` of a bundle (`Null` while there is no status yet).
pub fn agent_status(bundle: &Bundle) -> serde_json::Value {
    let out = agent_cli(bundle, &["status", "--json"]);
    serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null)
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Inodes of the sockets a process holds open (from /proc/PID/fd).
pub fn socket_inodes(pid: u32) -> Vec<u64> {
    let mut v = Vec::new();
    if let Ok(entries) = std::fs::read_dir(format!("/proc/{pid}/fd")) {
        for e in entries.flatten() {
            if let Ok(target) = std::fs::read_link(e.path()) {
                let t = target.to_string_lossy();
                if let Some(n) = t.strip_prefix("socket:[").and_then(|s| s.strip_suffix(']'))
                    && let Ok(n) = n.parse()
                {
                    v.push(n);
                }
            }
        }
    }
    v
}

/// Listening TCP sockets and bound UDP sockets owned by `pid`, found by matching its socket
/// inodes against /proc/net/{tcp,tcp6,udp,udp6}. Returns (table, local address) pairs.
pub fn listening_sockets(pid: u32) -> Vec<(String, String)> {
    let inodes = socket_inodes(pid);
    let mut found = Vec::new();
    for table in ["tcp", "tcp6", "udp", "udp6"] {
        let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/net/{table}")) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let cols: Vec<&str> = line.split_whitespace().collect();
            if cols.len() < 10 {
                continue;
            }
            let state = cols[3];
            let inode: u64 = cols[9].parse().unwrap_or(0);
            // TCP state 0A = LISTEN; any UDP socket is a bound receiver (07 = unconnected).
            let listening = if table.starts_with("tcp") {
                state == "0A"
            } else {
                state == "07"
            };
            if listening && inodes.contains(&inode) {
                found.push((table.to_string(), cols[1].to_string()));
            }
        }
    }
    found
}
