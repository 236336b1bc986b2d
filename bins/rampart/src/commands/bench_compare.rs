//! `rampart bench compare`: the hub and Mosquitto under the identical load, in one run.
//!
//! Both brokers get the same fleet (one CA made for the run, a certificate per device), the
//! same authorization (each device confined to `devices/{its id}/#`; the subscriber may read
//! every device's telemetry) and the same queue bound (10,000 messages per client; Mosquitto
//! with `max_inflight_messages 0` as BENCHMARKS.md sets it, the hub with its 1,024). Mosquitto keeps no persistence (`persistence false`, its default); the hub
//! stores every telemetry message in SQLite (`synchronous = full`) before its PUBACK. Each
//! broker runs pinned to core 0 (`taskset -c 0`); the generator runs as its own process
//! pinned to core 1, and each phase starts a fresh broker.
//!
//! Phases, each for both brokers: saturation at QoS 0 and QoS 1 (delivered messages/s and
//! loss); a fixed rate both sustain at QoS 0 and QoS 1 (broker CPU per delivered message;
//! the QoS 1 rate is half of Mosquitto's maximum, where latency is compared too); a
//! connection storm (mTLS connections/s, also against the in-memory rustls handshake rate);
//! idle connections held (resident memory per connection).
//!
//! The saturation, fixed-rate and storm phases also run against the floor of
//! `rampart_loadgen::floor`: a server on the hub's own stack (tokio, rustls, the `mqtt` codec)
//! that does only the TCP, TLS and MQTT framing work every broker does — CONNACK, PUBACK, each
//! PUBLISH written on to the subscriber — and nothing a broker adds. Its figures say how much of
//! a broker's cost the stack itself sets, and how much is the hub's own work.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use clap::Args;
use rampart_loadgen::fleet::{Fleet, SUBSCRIBER_ID};
use rampart_loadgen::scenario::Report;
use serde::Serialize;

use crate::CliError;

#[derive(Args, Clone, Debug)]
pub struct CompareArgs {
    /// How long messages flow in each throughput phase.
    #[arg(long, default_value = "10s")]
    pub duration: humantime::Duration,
    /// Publishing devices (fan-in to one subscriber).
    #[arg(long, default_value_t = 100)]
    pub devices: usize,
    /// Connections opened as fast as possible in the connection storm.
    #[arg(long, default_value_t = 2000)]
    pub storm: usize,
    /// Idle connections held to measure memory per connection.
    #[arg(long, default_value_t = 10_000)]
    pub connections: usize,
    /// Payload size in bytes.
    #[arg(long, default_value_t = 128)]
    pub payload: usize,
    /// Further QoS 1 rates (messages/s in all) at which to compare CPU per message and
    /// latency, besides half of Mosquitto's maximum: a broker's cost per message grows as
    /// the load falls (fewer messages share each wake-up, write and commit). Comma-separated;
    /// "" for none.
    #[arg(long, default_value = "10000")]
    pub rates: Rates,
    /// Rounds of each throughput phase and connection storm, the brokers taking turns; each
    /// figure takes the median round. A shared machine's speed drifts by a fifth within
    /// minutes (BENCHMARKS.md): taking turns spreads the drift over both brokers, and the
    /// median drops a round caught in a slow moment. Idle connections are measured once.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=9))]
    pub rounds: u32,
    /// Keep the working directory (configurations, logs, the fleet) for inspection.
    #[arg(long)]
    pub keep: bool,
    /// Print the result as JSON (one ratio per figure).
    #[arg(long)]
    pub json: bool,
}

/// The `--rates` list: comma-separated messages/s, or an empty string for none (clap's
/// own delimiter handling reads "" as one empty, unparsable value).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rates(pub Vec<u32>);

impl std::str::FromStr for Rates {
    type Err = String;

    fn from_str(s: &str) -> Result<Rates, String> {
        s.split(',')
            .map(str::trim)
            .filter(|r| !r.is_empty())
            .map(|r| match r.parse::<u32>() {
                Ok(0) => Err("a rate must be at least 1 message/s".to_owned()),
                Ok(n) => Ok(n),
                Err(_) => Err(format!(
                    "{r:?} is not a rate: give messages/s as whole numbers, e.g. 2000,10000"
                )),
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Rates)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
enum Broker {
    Mosquitto,
    Rampart,
    /// Not a broker: the floor (`rampart bench floor`) of the message and storm phases.
    Floor,
}

impl Broker {
    fn name(self) -> &'static str {
        match self {
            Broker::Mosquitto => "mosquitto",
            Broker::Rampart => "rampart",
            Broker::Floor => "floor",
        }
    }
}

fn fail(e: impl std::fmt::Display) -> CliError {
    CliError::new(e.to_string(), None)
}

/// The working directory and what the phases share.
struct Bench {
    dir: PathBuf,
    fleet_path: PathBuf,
    exe: PathBuf,
    pin: bool,
    port: u16,
}

/// Whether this process runs as root (read from /proc: no unsafe call needed).
fn running_as_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|v| v.split_whitespace().nth(1).map(|e| e == "0"))
        })
        .unwrap_or(false)
}

fn free_port() -> Result<u16, CliError> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").map_err(fail)?;
    Ok(l.local_addr().map_err(fail)?.port())
}

fn wait_port(port: u16, child: &mut Child, what: &str) -> Result<(), CliError> {
    let until = Instant::now() + Duration::from_secs(30);
    while Instant::now() < until {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Ok(());
        }
        if let Ok(Some(status)) = child.try_wait() {
            return Err(CliError::new(
                format!("{what} exited ({status}) before listening on port {port}"),
                Some("run with --keep and read the broker's log in the working directory"),
            ));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Err(fail(format!(
        "{what} did not listen on port {port} within 30 s"
    )))
}

fn stop(mut child: Child) {
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let until = Instant::now() + Duration::from_secs(15);
    while Instant::now() < until {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
}

impl Bench {
    fn pinned(&self, core: u32, program: &Path) -> Command {
        if self.pin {
            let mut c = Command::new("taskset");
            c.arg("-c").arg(core.to_string()).arg(program);
            c
        } else {
            Command::new(program)
        }
    }

    fn mosquitto_setup(&self) -> Result<PathBuf, CliError> {
        let d = self.dir.join("mosquitto");
        std::fs::create_dir_all(&d).map_err(fail)?;
        let acl = d.join("acl");
        std::fs::write(
            &acl,
            format!(
                "# every device: its own namespace only\npattern readwrite devices/%u/#\n\n\
                 # the subscriber reads all telemetry and writes every inbox (fan-out)\n\
                 user {SUBSCRIBER_ID}\ntopic read devices/+/telemetry\ntopic write devices/+/inbox\n"
            ),
        )
        .map_err(fail)?;
        let conf = d.join("mosquitto.conf");
        std::fs::write(
            &conf,
            format!(
                "per_listener_settings false\n\
                 listener {port} 127.0.0.1\n\
                 cafile {dir}/ca.pem\ncertfile {dir}/server.pem\nkeyfile {dir}/server.key\n\
                 tls_version tlsv1.3\n\
                 require_certificate true\nuse_identity_as_username true\n\
                 acl_file {acl}\n\
                 allow_anonymous false\n\
                 # BENCHMARKS.md: no in-flight limit (Mosquitto's default drops QoS 1 under\n\
                 # load); the hub's queue bound of 10000 messages per client\n\
                 max_inflight_messages 0\nmax_queued_messages 10000\n\
                 # no persistence (Mosquitto's default); the hub stores telemetry before PUBACK\n\
                 persistence false\n\
                 log_dest file {log}\nlog_type error\nlog_type warning\n\
                 max_connections -1\n{user}",
                // Started as root, Mosquitto switches to the `mosquitto` user, which cannot
                // read this private working directory: stay the user that owns it.
                user = if running_as_root() { "user root\n" } else { "" },
                port = self.port,
                dir = self.dir.display(),
                acl = acl.display(),
                log = d.join("mosquitto.log").display(),
            ),
        )
        .map_err(fail)?;
        Ok(conf)
    }

    async fn rampart_setup(&self, fleet: &Fleet) -> Result<PathBuf, CliError> {
        use rampart_hub::DataDir;
        let d = self.dir.join("hub");
        let dir = DataDir::new(&d);
        rampart_hub::datadir::init(&dir, &[], rampart_pki::KeyAlgorithm::EcdsaP256, false)
            .map_err(fail)?;
        // The bench port, no metrics or device API listener.
        let cfg_path = dir.config_path();
        let text = std::fs::read_to_string(&cfg_path).map_err(fail)?;
        let mut out = String::new();
        let mut section = String::new();
        for line in text.lines() {
            if line.starts_with('[') {
                section = line.to_owned();
            }
            if line.starts_with("listen = ") {
                match section.as_str() {
                    "[mqtt]" => out.push_str(&format!("listen = \"127.0.0.1:{}\"\n", self.port)),
                    _ => out.push_str("listen = \"\"\n"),
                }
                continue;
            }
            out.push_str(line);
            out.push('\n');
        }
        std::fs::write(&cfg_path, out).map_err(fail)?;
        let cfg = dir.load_config().map_err(fail)?;
        // Opened once the way the hub opens it (migrations, the built-in policies devices
        // connect under), then for registration with relaxed fsync for speed; the hub
        // itself runs with its default, `synchronous = full`.
        rampart_hub::run::open_store(&dir, &cfg)
            .await
            .map_err(fail)?
            .close()
            .await;
        let mut opts = rampart_store::SqliteOptions::new(dir.resolve(&cfg.storage.sqlite_path));
        opts.synchronous = rampart_store::Synchronous::Normal;
        let store = rampart_store::SqliteStore::open(&opts)
            .await
            .map_err(fail)?;
        rampart_hub::ops::register_ca(
            &dir,
            &store,
            &fleet.ca_pem,
            false,
            rampart_store::CaTemplate::default(),
        )
        .await
        .map_err(fail)?;
        let cert = |i: &rampart_loadgen::fleet::Identity| rampart_store::NewCertificate {
            serial: i.serial.clone(),
            fingerprint: i.fingerprint.clone(),
            not_before: i.not_before,
            not_after: i.not_after,
            key_algorithm: "ecdsa-p256".into(),
            issuer: fleet.ca_fingerprint.clone(),
        };
        use rampart_store::Registry;
        for d in &fleet.devices {
            store
                .add_identity(&rampart_store::NewIdentity::device(&d.id, cert(d), "bench"))
                .await
                .map_err(fail)?;
        }
        let mut sub =
            rampart_store::NewIdentity::device(SUBSCRIBER_ID, cert(&fleet.subscriber), "bench");
        sub.kind = rampart_store::IdentityKind::Service;
        store.add_identity(&sub).await.map_err(fail)?;
        let policy = "name = \"bench-subscriber\"\n\
            [[statement]]\neffect = \"allow\"\nactions = [\"connect\"]\nresources = [\"bench-subscriber\"]\n\
            [[statement]]\neffect = \"allow\"\nactions = [\"subscribe\", \"receive\"]\nresources = [\"devices/+/telemetry\"]\n\
            [[statement]]\neffect = \"allow\"\nactions = [\"publish\"]\nresources = [\"devices/+/inbox\"]\n";
        rampart_hub::ops::put_policy(&dir, &store, policy)
            .await
            .map_err(fail)?;
        rampart_hub::ops::attach_policy(
            &dir,
            &store,
            "bench-subscriber",
            &format!("service:{SUBSCRIBER_ID}"),
            true,
        )
        .await
        .map_err(fail)?;
        store.close().await;
        Ok(d)
    }

    fn start(&self, broker: Broker, conf: &Path) -> Result<Child, CliError> {
        let log =
            std::fs::File::create(self.dir.join(format!("{}.out", broker.name()))).map_err(fail)?;
        let mut cmd = match broker {
            Broker::Mosquitto => {
                let mut c = self.pinned(0, Path::new("mosquitto"));
                c.arg("-c").arg(conf);
                c
            }
            Broker::Rampart => {
                let mut c = self.pinned(0, &self.exe);
                c.arg("hub").arg("--data-dir").arg(conf);
                c
            }
            Broker::Floor => {
                let mut c = self.pinned(0, &self.exe);
                // Its configuration is the fleet file (server certificate and CA).
                c.args(["bench", "floor", "--fleet"])
                    .arg(conf)
                    .arg("--listen")
                    .arg(format!("127.0.0.1:{}", self.port));
                c
            }
        };
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|e| {
                CliError::new(
                    format!("cannot start {}: {e}", broker.name()),
                    Some("Mosquitto comes from the Debian package `mosquitto` (scripts/setup installs it)"),
                )
            })?;
        wait_port(self.port, &mut child, broker.name())?;
        Ok(child)
    }

    /// One phase against one broker: a fresh broker, the generator pinned to core 1.
    fn phase(&self, broker: Broker, conf: &Path, args: &[String]) -> Result<Report, CliError> {
        // Mosquitto's certificate (and the floor's) is the fleet CA's; the hub's is its own
        // root CA's.
        let server_ca = match broker {
            Broker::Mosquitto | Broker::Floor => self.dir.join("ca.pem"),
            Broker::Rampart => conf.join("pki/root-ca.crt"),
        };
        let child = self.start(broker, conf)?;
        // The generator reads the broker's own process, not taskset's (taskset execs).
        let pid = child.id();
        let out = self
            .pinned(1, &self.exe)
            .arg("bench")
            .arg("run")
            .arg("--fleet")
            .arg(&self.fleet_path)
            .arg("--target")
            .arg(format!("127.0.0.1:{}", self.port))
            .arg("--server-ca")
            .arg(&server_ca)
            .arg("--target-pid")
            .arg(pid.to_string())
            .arg("--json")
            .args(args)
            .stderr(Stdio::inherit())
            .output()
            .map_err(fail)?;
        stop(child);
        if !out.status.success() {
            return Err(fail(format!(
                "the generator failed against {}: {}",
                broker.name(),
                String::from_utf8_lossy(&out.stdout)
            )));
        }
        serde_json::from_slice(&out.stdout).map_err(fail)
    }
}

/// One figure for both brokers and their ratio (Rampart ÷ Mosquitto).
#[derive(Debug, Serialize)]
struct Figure {
    mosquitto: f64,
    rampart: f64,
    ratio: f64,
    unit: &'static str,
    /// What "better" means for the ratio.
    better: &'static str,
}

fn figure(m: f64, r: f64, unit: &'static str, better: &'static str) -> Figure {
    Figure {
        mosquitto: m,
        rampart: r,
        ratio: if m > 0.0 { r / m } else { 0.0 },
        unit,
        better,
    }
}

#[derive(Debug, Serialize)]
struct Comparison {
    machine: String,
    date: String,
    devices: usize,
    payload_bytes: usize,
    seconds_per_phase: f64,
    pinned: bool,
    figures: BTreeMap<String, Figure>,
    /// The headline ratios, one per figure, flat (for scripts).
    ratios: BTreeMap<String, f64>,
    /// The median of the three measurements below.
    rustls_server_handshakes_per_s: f64,
    /// The in-memory rustls rate measured at the start, before the storms and after them,
    /// sorted.
    rustls_server_handshakes_per_s_measured: Vec<f64>,
    connections_per_s_vs_rustls: f64,
    /// The floor acceptor's connections per second of its CPU in the same storm: TCP, the
    /// mutual-TLS handshake and CONNECT/CONNACK, nothing else (`rampart bench floor`).
    floor_connections_per_cpu_s: f64,
    /// The floor's figures in the message phases (`rampart bench floor`: TLS, framing,
    /// PUBACK and forwarding only): delivered msgs/s at saturation and CPU µs per delivered
    /// message at the fixed rates, named as in `figures`.
    floor_messages: BTreeMap<String, f64>,
    /// Rounds of each throughput phase and storm (`--rounds`).
    rounds: u32,
    /// Each phase's figure in every round, in the order run: delivered msgs/s at
    /// saturation, broker CPU µs per message at a fixed rate, connections/s in a storm.
    round_values: BTreeMap<String, Vec<f64>>,
    /// Every phase's full report: with several rounds, the median round's.
    runs: BTreeMap<String, Report>,
    notes: Vec<String>,
}

pub async fn run(args: CompareArgs) -> Result<(), CliError> {
    let tmp = tempfile::Builder::new()
        .prefix("rampart-bench-")
        .tempdir()
        .map_err(fail)?;
    // With --keep the directory outlives the run, also a failed one.
    let (dir, _cleanup) = if args.keep {
        let kept = tmp.keep();
        eprintln!("working directory (kept): {}", kept.display());
        (kept, None)
    } else {
        (tmp.path().to_path_buf(), Some(tmp))
    };
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let pin = cores >= 2
        && Command::new("taskset")
            .arg("-V")
            .output()
            .is_ok_and(|o| o.status.success());
    let bench = Bench {
        fleet_path: dir.join("fleet.json"),
        exe: std::env::current_exe().map_err(fail)?,
        pin,
        port: free_port()?,
        dir: dir.clone(),
    };
    let n = args.devices.max(args.storm).max(args.connections);
    eprintln!("issuing {n} device certificates ...");
    let fleet = tokio::task::spawn_blocking(move || Fleet::issue(n))
        .await
        .map_err(fail)?
        .map_err(fail)?;
    fleet.save(&bench.fleet_path).map_err(fail)?;
    fleet.write_server_files(&dir).map_err(fail)?;
    // The rustls reference, measured three times: now, just before the connection storms and
    // just after them. On a shared machine the rate of the same loop moved by ±20% within
    // minutes; the median of three taken around the storms compares them with the reference
    // of the same moments.
    let reference = |fleet: &Fleet| {
        let f = fleet.clone();
        async move {
            tokio::task::spawn_blocking(move || {
                rampart_loadgen::handshake::server_rate(&f, Duration::from_secs(2), 20_000)
            })
            .await
            .map_err(fail)?
            .map_err(fail)
            .map(|h| h.server_per_s)
        }
    };
    let mut handshake_rates = vec![reference(&fleet).await?];
    eprintln!("setting up Mosquitto and the hub in {} ...", dir.display());
    let mosq = bench.mosquitto_setup()?;
    let hub = bench.rampart_setup(&fleet).await?;
    let conf = |b: Broker| match b {
        Broker::Mosquitto => mosq.clone(),
        Broker::Rampart => hub.clone(),
        Broker::Floor => bench.fleet_path.clone(),
    };
    let secs = Duration::from(args.duration).as_secs_f64();
    let common = |qos: u8, rate: String| -> Vec<String> {
        vec![
            "--devices".into(),
            args.devices.to_string(),
            "--payload".into(),
            args.payload.to_string(),
            "--qos".into(),
            qos.to_string(),
            "--rate".into(),
            rate,
            "--duration".into(),
            format!("{secs}s"),
        ]
    };
    let mut runs: BTreeMap<String, Report> = BTreeMap::new();
    let mut round_values: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    let both = [Broker::Mosquitto, Broker::Rampart];
    // The phases the floor runs too: the saturations, the two fixed rates and the storm.
    let with_floor = [Broker::Mosquitto, Broker::Rampart, Broker::Floor];
    let blocking = |b: &Bench, broker: Broker, a: Vec<String>| b.phase(broker, &conf(broker), &a);
    let rounds = args.rounds.max(1);
    // One phase against each of `brokers`, `rounds` times, the brokers taking turns; each
    // broker's median round by `key` goes into `runs` as "{broker}_{what}", and every
    // round's `key` into `round_values`.
    let mut alternate = |brokers: &[Broker],
                         what: &str,
                         label: &str,
                         a: Vec<String>,
                         key: fn(&Report) -> f64,
                         runs: &mut BTreeMap<String, Report>|
     -> Result<(), CliError> {
        let mut got: Vec<Vec<Report>> = brokers.iter().map(|_| Vec::new()).collect();
        for round in 1..=rounds {
            for (b, reports) in brokers.iter().zip(&mut got) {
                if rounds > 1 {
                    eprintln!("{label}, {} (round {round} of {rounds}) ...", b.name());
                } else {
                    eprintln!("{label}, {} ...", b.name());
                }
                reports.push(blocking(&bench, *b, a.clone())?);
            }
        }
        for (b, mut reports) in brokers.iter().zip(got) {
            let name = format!("{}_{what}", b.name());
            round_values.insert(name.clone(), reports.iter().map(key).collect());
            reports.sort_by(|x, y| key(x).total_cmp(&key(y)));
            // `rounds` ≥ 1, so the middle report exists: the lower middle one when even.
            let median = reports.swap_remove((reports.len() - 1) / 2);
            runs.insert(name, median);
        }
        Ok(())
    };
    let delivered: fn(&Report) -> f64 = |r| r.received_per_s;
    let cpu_per_msg: fn(&Report) -> f64 = |r| r.target.as_ref().map_or(0.0, |t| t.cpu_us_per_msg);
    for qos in [0u8, 1] {
        alternate(
            &with_floor,
            &format!("qos{qos}_saturation"),
            &format!("saturation, QoS {qos}"),
            common(qos, "max".into()),
            delivered,
            &mut runs,
        )?;
    }
    fn saturation(runs: &BTreeMap<String, Report>, b: Broker, qos: u8) -> f64 {
        runs.get(&format!("{}_qos{qos}_saturation", b.name()))
            .map_or(0.0, |r| r.received_per_s)
    }
    let sat = |b: Broker, qos: u8| saturation(&runs, b, qos);
    // A rate both sustain: half the lower saturation (QoS 0); half of Mosquitto's maximum
    // (QoS 1, where latency is compared), unless the hub's is lower.
    let fixed = [
        (
            0u8,
            0.5 * sat(Broker::Mosquitto, 0).min(sat(Broker::Rampart, 0)),
            "qos0_fixed".to_owned(),
            &with_floor[..],
        ),
        (
            1u8,
            (0.5 * sat(Broker::Mosquitto, 1)).min(0.9 * sat(Broker::Rampart, 1)),
            "qos1_fixed".to_owned(),
            &with_floor[..],
        ),
    ];
    // Then the QoS 1 rates asked for with --rates.
    let asked = args
        .rates
        .0
        .iter()
        .map(|&total| (1u8, f64::from(total), format!("qos1_at_{total}"), &both[..]));
    for (qos, total, what, brokers) in fixed.into_iter().chain(asked) {
        let per_device = (total / args.devices as f64).max(0.1);
        alternate(
            brokers,
            &what,
            &format!("fixed rate {total:.0}/s, QoS {qos}"),
            common(qos, format!("{per_device:.3}")),
            cpu_per_msg,
            &mut runs,
        )?;
    }
    eprintln!("rustls handshakes in memory ...");
    handshake_rates.push(reference(&fleet).await?);
    let connections_per_s: fn(&Report) -> f64 = |r| r.connect.per_s;
    alternate(
        &with_floor,
        "storm",
        &format!("connection storm, {} connections", args.storm),
        vec![
            "--devices".into(),
            args.storm.to_string(),
            "--connect-concurrency".into(),
            "256".into(),
            "--idle".into(),
            "2s".into(),
        ],
        connections_per_s,
        &mut runs,
    )?;
    eprintln!("rustls handshakes in memory ...");
    handshake_rates.push(reference(&fleet).await?);
    for b in both {
        eprintln!("{} idle connections, {} ...", args.connections, b.name());
        let r = blocking(
            &bench,
            b,
            vec![
                "--devices".into(),
                args.connections.to_string(),
                "--connect-concurrency".into(),
                "128".into(),
                "--idle".into(),
                "5s".into(),
            ],
        )?;
        runs.insert(format!("{}_idle", b.name()), r);
    }
    handshake_rates.sort_by(f64::total_cmp);
    // Three rates, sorted: the middle one.
    let handshake_per_s = handshake_rates[1];
    let sat = |b: Broker, qos: u8| saturation(&runs, b, qos);
    let get = |b: Broker, what: &str| &runs[&format!("{}_{what}", b.name())];
    let (m, r) = (Broker::Mosquitto, Broker::Rampart);
    let cpu = |b, what: &str| {
        get(b, what)
            .target
            .as_ref()
            .map_or(0.0, |t| t.cpu_us_per_msg)
    };
    let rss = |b, what: &str| {
        get(b, what)
            .target
            .as_ref()
            .map_or(0.0, |t| t.rss_kib_per_connection)
    };
    let mut figures = BTreeMap::new();
    for qos in [0u8, 1] {
        let key: &'static str = if qos == 0 {
            "qos0_msgs_per_s"
        } else {
            "qos1_msgs_per_s"
        };
        figures.insert(
            key.into(),
            figure(
                sat(m, qos),
                sat(r, qos),
                "delivered msgs/s at saturation",
                "higher",
            ),
        );
        let key: &'static str = if qos == 0 {
            "qos0_cpu_per_msg"
        } else {
            "qos1_cpu_per_msg"
        };
        let what = format!("qos{qos}_fixed");
        figures.insert(
            key.into(),
            figure(
                cpu(m, &what),
                cpu(r, &what),
                "broker CPU µs per delivered msg at a fixed rate",
                "lower",
            ),
        );
        let key: &'static str = if qos == 0 { "qos0_loss" } else { "qos1_loss" };
        let lost = |b| (get(b, &format!("qos{qos}_saturation")).lost + get(b, &what).lost) as f64;
        figures.insert(
            key.into(),
            figure(
                lost(m),
                lost(r),
                "messages lost (saturation + fixed)",
                "zero",
            ),
        );
    }
    let lat = |b, p99: bool| {
        let l = get(b, "qos1_fixed").latency;
        (if p99 { l.p99_us } else { l.p50_us }) as f64 / 1000.0
    };
    figures.insert(
        "p50_latency".into(),
        figure(
            lat(m, false),
            lat(r, false),
            "ms, QoS 1 at the fixed rate",
            "lower",
        ),
    );
    figures.insert(
        "p99_latency".into(),
        figure(
            lat(m, true),
            lat(r, true),
            "ms, QoS 1 at the fixed rate",
            "lower",
        ),
    );
    figures.insert(
        "connections_per_s".into(),
        figure(
            get(m, "storm").connect.per_s,
            get(r, "storm").connect.per_s,
            "mTLS connections/s",
            "higher",
        ),
    );
    let per_cpu_s = |b| {
        get(b, "storm").target.as_ref().map_or(0.0, |t| {
            if t.connect_cpu_us_per_connection > 0.0 {
                1e6 / t.connect_cpu_us_per_connection
            } else {
                0.0
            }
        })
    };
    figures.insert(
        "connections_per_cpu_s".into(),
        figure(
            per_cpu_s(m),
            per_cpu_s(r),
            "mTLS connections per second of broker CPU (storm)",
            "higher",
        ),
    );
    figures.insert(
        "rss_per_connection".into(),
        figure(
            rss(m, "idle"),
            rss(r, "idle"),
            "KiB per idle mTLS connection",
            "lower",
        ),
    );
    for &total in &args.rates.0 {
        let what = format!("qos1_at_{total}");
        figures.insert(
            format!("qos1_cpu_per_msg_at_{total}"),
            figure(
                cpu(m, &what),
                cpu(r, &what),
                "broker CPU µs per delivered msg, QoS 1 at this rate",
                "lower",
            ),
        );
        let p99 = |b| get(b, &what).latency.p99_us as f64 / 1000.0;
        figures.insert(
            format!("qos1_p99_latency_at_{total}"),
            figure(p99(m), p99(r), "ms, QoS 1 at this rate", "lower"),
        );
    }
    let mut ratios: BTreeMap<String, f64> = figures
        .iter()
        .map(|(k, f)| (format!("{k}_ratio"), f.ratio))
        .collect();
    let vs_rustls = get(r, "storm").connect.per_s / handshake_per_s.max(1e-9);
    ratios.insert("connections_per_s_vs_rustls_ratio".into(), vs_rustls);
    // The hub's own connection cost against rustls' handshake cost, whatever limited the
    // rate (the generator does the client side of every handshake on one core).
    ratios.insert(
        "connections_per_cpu_s_vs_rustls_ratio".into(),
        per_cpu_s(r) / handshake_per_s.max(1e-9),
    );
    // What the hub adds to the floor every broker pays (kernel TCP, TLS over sockets, the
    // runtime), per CPU-second.
    let floor = per_cpu_s(Broker::Floor);
    ratios.insert(
        "connections_per_cpu_s_vs_floor_ratio".into(),
        per_cpu_s(r) / floor.max(1e-9),
    );
    // The floor in the message phases: how far the stack alone is from Mosquitto, and how
    // much the hub adds to it.
    let f = Broker::Floor;
    let mut floor_messages = BTreeMap::new();
    for qos in [0u8, 1] {
        let sat_key = format!("qos{qos}_msgs_per_s");
        let cpu_key = format!("qos{qos}_cpu_per_msg");
        let fixed = format!("qos{qos}_fixed");
        let (fs, fc) = (sat(f, qos), cpu(f, &fixed));
        ratios.insert(
            format!("{sat_key}_floor_vs_mosquitto_ratio"),
            fs / sat(m, qos).max(1e-9),
        );
        ratios.insert(
            format!("{cpu_key}_floor_vs_mosquitto_ratio"),
            fc / cpu(m, &fixed).max(1e-9),
        );
        ratios.insert(
            format!("{cpu_key}_vs_floor_ratio"),
            cpu(r, &fixed) / fc.max(1e-9),
        );
        floor_messages.insert(sat_key, fs);
        floor_messages.insert(cpu_key, fc);
    }
    let mut notes = Vec::new();
    if !pin {
        notes.push("not pinned: fewer than 2 cores or no taskset; figures share cores".into());
    }
    for (name, rep) in &runs {
        if rep.generator_cpu_cores > 0.9 {
            notes.push(format!(
                "{name}: the generator used {:.2} cores: it, not the broker, may have been the limit",
                rep.generator_cpu_cores
            ));
        }
        if rep.connect.connected < rep.connect.attempted {
            notes.push(format!(
                "{name}: {} of {} connections failed: {:?}",
                rep.connect.attempted - rep.connect.connected,
                rep.connect.attempted,
                rep.connect.first_errors
            ));
        }
    }
    let cmp = Comparison {
        machine: format!(
            "{} CPUs, {}",
            cores,
            std::fs::read_to_string("/proc/cpuinfo")
                .ok()
                .and_then(|c| c.lines().find_map(|l| l
                    .strip_prefix("model name")
                    .map(|v| v.trim_start_matches([' ', '\t', ':']).to_owned())))
                .unwrap_or_default()
        ),
        date: super::when(Some(time::OffsetDateTime::now_utc())),
        devices: args.devices,
        payload_bytes: args.payload,
        seconds_per_phase: secs,
        pinned: pin,
        figures,
        ratios,
        rustls_server_handshakes_per_s: handshake_per_s,
        rustls_server_handshakes_per_s_measured: handshake_rates,
        connections_per_s_vs_rustls: vs_rustls,
        floor_connections_per_cpu_s: floor,
        floor_messages,
        rounds,
        round_values,
        runs,
        notes,
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&cmp).map_err(fail)?);
        return Ok(());
    }
    println!(
        "machine: {} ({}); {}",
        cmp.machine,
        if pin {
            "brokers on core 0, generator on core 1"
        } else {
            "not pinned"
        },
        cmp.date
    );
    println!(
        "{} devices → 1 subscriber, {}-byte payloads, {:.0} s per phase{}\n",
        cmp.devices,
        cmp.payload_bytes,
        secs,
        if rounds > 1 {
            format!("; each figure the median of {rounds} rounds, the brokers taking turns")
        } else {
            String::new()
        }
    );
    println!(
        "{:22} {:>14} {:>14} {:>8}  UNIT (better)",
        "FIGURE", "MOSQUITTO", "RAMPART", "RATIO"
    );
    for (k, f) in &cmp.figures {
        println!(
            "{:22} {:>14.2} {:>14.2} {:>8.2}  {} ({})",
            k, f.mosquitto, f.rampart, f.ratio, f.unit, f.better
        );
    }
    println!(
        "\nrustls server-side full mTLS handshakes in memory: {:.0}/s (median of {}); hub \
         connections/s ÷ that: {:.2}",
        cmp.rustls_server_handshakes_per_s,
        cmp.rustls_server_handshakes_per_s_measured
            .iter()
            .map(|r| format!("{r:.0}"))
            .collect::<Vec<_>>()
            .join(", "),
        cmp.connections_per_s_vs_rustls
    );
    println!(
        "floor acceptor (TCP + mTLS + CONNACK only): {:.0} connections per CPU-second; hub ÷ that: {:.2}",
        cmp.floor_connections_per_cpu_s,
        cmp.ratios
            .get("connections_per_cpu_s_vs_floor_ratio")
            .copied()
            .unwrap_or_default()
    );
    println!("floor (TLS, MQTT framing, PUBACK and forwarding only), ÷ Mosquitto and hub ÷ floor:");
    for (k, v) in &cmp.floor_messages {
        println!(
            "  {k:20} {v:>12.2}   floor ÷ Mosquitto {:.2}   hub ÷ floor {:.2}",
            cmp.ratios
                .get(&format!("{k}_floor_vs_mosquitto_ratio"))
                .copied()
                .unwrap_or_default(),
            cmp.figures.get(k).map_or(0.0, |fig| fig.rampart) / v.max(1e-9),
        );
    }
    if rounds > 1 {
        println!("\nrounds (delivered msgs/s, CPU µs/msg or connections/s, in the order run):");
        for (k, v) in &cmp.round_values {
            let v: Vec<String> = v.iter().map(|x| format!("{x:.2}")).collect();
            println!("  {k:32} {}", v.join(", "));
        }
    }
    for n in &cmp.notes {
        println!("note: {n}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::Rates;

    #[test]
    fn rates_parse_lists_and_the_empty_string() {
        assert_eq!("10000".parse(), Ok(Rates(vec![10_000])));
        assert_eq!("2000, 10000".parse(), Ok(Rates(vec![2_000, 10_000])));
        assert_eq!("".parse(), Ok(Rates(vec![])));
        let zero = "0".parse::<Rates>().unwrap_err();
        assert!(zero.contains("at least 1"), "{zero}");
        let word = "2000,fast".parse::<Rates>().unwrap_err();
        assert!(word.contains("\"fast\" is not a rate"), "{word}");
    }
}
