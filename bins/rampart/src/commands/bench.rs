//! `rampart bench`: the fleet load generator (`run`), its identities (`fleet`), and the
//! side-by-side comparison of the hub with Mosquitto (`compare`, in `bench_compare`).
//!
//! The work is `rampart_loadgen`; this module parses arguments and prints.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Subcommand};
use rampart_loadgen::client::Target;
use rampart_loadgen::fleet::Fleet;
use rampart_loadgen::scenario::{self, Pattern, Rate, Report, Scenario};

use crate::CliError;

#[derive(Subcommand)]
#[allow(clippy::large_enum_variant)] // parsed once per process from the command line
pub enum BenchCommand {
    /// Create the simulated fleet's identities: a CA of its own and one certificate per
    /// device, in one file; also writes ca.pem, server.pem and server.key next to it for a
    /// broker under test (trust ca.pem for client certificates).
    Fleet {
        /// How many devices.
        #[arg(long, default_value_t = 100)]
        devices: usize,
        /// Where to write the fleet file (0600: it holds the devices' keys).
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
    },
    /// Run simulated devices against a broker and report connection rate, messages sent
    /// and received, loss, latency, errors and the broker's CPU and memory.
    Run(RunArgs),
    /// Run the identical load against Mosquitto and the Rampart hub on this machine, each
    /// pinned to one core with the generator on another, and print both figures and their
    /// ratios (BENCHMARKS.md).
    Compare(super::bench_compare::CompareArgs),
    /// Serve the floor under a broker's cost: accept mutual-TLS connections from the fleet's
    /// devices, answer CONNECT, SUBSCRIBE and QoS 1 PUBLISH, write each PUBLISH on to every
    /// subscriber, and do nothing else (no authorization, topic matching or storage) until
    /// stopped. `bench compare` runs its storm and message phases against it too.
    Floor {
        /// The fleet file from `rampart bench fleet` (its server certificate and CA).
        #[arg(long, value_name = "FILE")]
        fleet: PathBuf,
        /// Loopback address to listen on.
        #[arg(long, default_value = "127.0.0.1:8883")]
        listen: std::net::SocketAddr,
    },
}

/// What `rampart bench run` does.
#[derive(Args, Clone, Debug)]
pub struct RunArgs {
    /// The fleet file from `rampart bench fleet`.
    #[arg(long, value_name = "FILE")]
    pub fleet: PathBuf,
    /// The broker's MQTT over TLS address (loopback only).
    #[arg(long, default_value = "127.0.0.1:8883", value_name = "ADDR:PORT")]
    pub target: SocketAddr,
    /// Where the subscriber (fan-in) or the publisher (fan-out) connects instead of
    /// --target: another node of a multi-node hub, to measure delivery across nodes
    /// (loopback only).
    #[arg(long, value_name = "ADDR:PORT")]
    pub other_target: Option<SocketAddr>,
    /// The CA that signed the broker's certificate (PEM; default: the fleet's CA, which
    /// signed the server.pem `rampart bench fleet` writes).
    #[arg(long, value_name = "FILE")]
    pub server_ca: Option<PathBuf>,
    /// The name the broker's certificate must carry.
    #[arg(long, default_value = "localhost")]
    pub server_name: String,
    /// Devices to simulate (the first ones of the fleet).
    #[arg(long, default_value_t = 100)]
    pub devices: usize,
    /// MQTT version: 3.1.1 or 5.
    #[arg(long, default_value = "3.1.1", value_parser = parse_protocol)]
    pub protocol: rampart_mqtt::Protocol,
    /// QoS of publishes and of the subscription: 0 or 1.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(0..=1))]
    pub qos: u8,
    /// Payload size in bytes (a telemetry document padded with JSON whitespace).
    #[arg(long, default_value_t = 128)]
    pub payload: usize,
    /// Messages per second per device, or "max": as fast as the broker acknowledges.
    #[arg(long, default_value = "1")]
    pub rate: String,
    /// Messages in flight per device at --rate max with QoS 1 (at most; more are sent once a
    /// quarter of them are acknowledged, several per write).
    #[arg(long, default_value_t = 64)]
    pub window: u16,
    /// fan-in (devices → one subscriber) or fan-out (one publisher → each device).
    #[arg(long, default_value = "fan-in", value_parser = parse_pattern)]
    pub pattern: Pattern,
    /// Connections per second while connecting (default: as fast as possible).
    #[arg(long)]
    pub connect_rate: Option<f64>,
    /// Connection attempts in progress at once.
    #[arg(long, default_value_t = 64)]
    pub connect_concurrency: usize,
    /// How long messages flow.
    #[arg(long, default_value = "10s")]
    pub duration: humantime::Duration,
    /// Stop after this many messages.
    #[arg(long, default_value_t = 50_000_000)]
    pub max_messages: u64,
    /// How long to wait for messages still in flight at the end.
    #[arg(long, default_value = "3s")]
    pub drain: humantime::Duration,
    /// Only connect and hold the sessions this long (memory per connection).
    #[arg(long)]
    pub idle: Option<humantime::Duration>,
    /// The broker's process id: its CPU time and memory are read from /proc.
    #[arg(long)]
    pub target_pid: Option<u32>,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

fn parse_protocol(s: &str) -> Result<rampart_mqtt::Protocol, String> {
    match s {
        "3.1.1" | "3" | "4" => Ok(rampart_mqtt::Protocol::V311),
        "5" | "5.0" => Ok(rampart_mqtt::Protocol::V5),
        other => Err(format!("{other:?}: 3.1.1 or 5")),
    }
}

fn parse_pattern(s: &str) -> Result<Pattern, String> {
    match s {
        "fan-in" => Ok(Pattern::FanIn),
        "fan-out" => Ok(Pattern::FanOut),
        other => Err(format!("{other:?}: fan-in or fan-out")),
    }
}

impl RunArgs {
    fn scenario(&self) -> Result<Scenario, CliError> {
        let rate = if self.rate == "max" {
            Rate::Max {
                window: self.window,
            }
        } else {
            Rate::PerDevice(self.rate.parse().map_err(|_| {
                CliError::new(
                    format!("--rate {:?} is not a number", self.rate),
                    Some("messages per second per device, e.g. 10 or 0.5, or max"),
                )
            })?)
        };
        let server_name = rustls_name(&self.server_name)?;
        let server_ca_pem =
            match &self.server_ca {
                Some(p) => Some(std::fs::read_to_string(p).map_err(|e| {
                    CliError::new(format!("--server-ca {}: {e}", p.display()), None)
                })?),
                None => None,
            };
        Ok(Scenario {
            server_ca_pem,
            target: Target {
                addr: self.target,
                server_name: server_name.clone(),
            },
            other_target: self.other_target.map(|addr| Target {
                addr,
                server_name: server_name.clone(),
            }),
            devices: self.devices,
            protocol: self.protocol,
            qos: rampart_mqtt::QoS::from_bits(self.qos).unwrap_or(rampart_mqtt::QoS::AtLeastOnce),
            payload: self.payload,
            rate,
            pattern: self.pattern,
            connect_rate: self.connect_rate,
            connect_concurrency: self.connect_concurrency,
            connect_timeout: Duration::from_secs(30),
            duration: self.duration.into(),
            max_messages: self.max_messages,
            drain: self.drain.into(),
            idle: self.idle.map(Into::into),
            target_pid: self.target_pid,
            progress: std::io::IsTerminal::is_terminal(&std::io::stderr()),
        })
    }
}

fn rustls_name(s: &str) -> Result<rustls_pki_types::ServerName<'static>, CliError> {
    rustls_pki_types::ServerName::try_from(s.to_owned())
        .map_err(|e| CliError::new(format!("--server-name {s:?}: {e}"), None))
}

/// Runs the generator with these arguments and returns its report.
pub async fn run_generator(args: &RunArgs) -> Result<Report, CliError> {
    let fleet = Fleet::load(&args.fleet).map_err(|e| {
        CliError::new(
            e.to_string(),
            Some("create one with `rampart bench fleet --devices N --out FILE`"),
        )
    })?;
    let sc = args.scenario()?;
    scenario::run(&fleet, &sc)
        .await
        .map_err(|e| CliError::new(e.to_string(), None))
}

pub fn print_report(r: &Report) {
    println!(
        "connections  {} of {} in {:.2} s ({:.0}/s){}",
        r.connect.connected,
        r.connect.attempted,
        r.connect.seconds,
        r.connect.per_s,
        if r.connect.errors.is_empty() {
            String::new()
        } else {
            format!(
                ", errors {:?} first {:?}",
                r.connect.errors, r.connect.first_errors
            )
        }
    );
    if r.seconds > 0.0 {
        println!(
            "messages     sent {} ({:.0}/s), acknowledged {}, received {} ({:.0}/s), lost {}",
            r.sent, r.sent_per_s, r.acked, r.received, r.received_per_s, r.lost
        );
        println!(
            "latency      p50 {:.2} ms, p90 {:.2} ms, p99 {:.2} ms, max {:.2} ms ({} samples)",
            r.latency.p50_us as f64 / 1e3,
            r.latency.p90_us as f64 / 1e3,
            r.latency.p99_us as f64 / 1e3,
            r.latency.max_us as f64 / 1e3,
            r.latency.samples
        );
        println!("generator    {:.2} cores", r.generator_cpu_cores);
    }
    if !r.errors.is_empty() {
        println!("errors       {:?}", r.errors);
    }
    if let Some(t) = &r.target {
        println!(
            "target       {:.2} cores, {:.2} µs CPU per delivered message, RSS {} → {} KiB ({:.1} KiB per connection)",
            t.cpu_cores,
            t.cpu_us_per_msg,
            t.rss_kib_before,
            t.rss_kib_after_connect,
            t.rss_kib_per_connection
        );
    }
}

pub async fn run(cmd: BenchCommand) -> Result<(), CliError> {
    match cmd {
        BenchCommand::Fleet { devices, out } => {
            let fleet = tokio::task::spawn_blocking(move || Fleet::issue(devices))
                .await
                .map_err(|e| CliError::new(e.to_string(), None))?
                .map_err(|e| CliError::new(e.to_string(), None))?;
            fleet
                .save(&out)
                .map_err(|e| CliError::new(e.to_string(), None))?;
            let dir = out
                .parent()
                .map(std::path::Path::to_path_buf)
                .unwrap_or_default();
            fleet
                .write_server_files(&dir)
                .map_err(|e| CliError::new(e.to_string(), None))?;
            println!(
                "{} devices in {}; broker files ca.pem, server.pem, server.key in {}",
                devices,
                out.display(),
                dir.display()
            );
            Ok(())
        }
        BenchCommand::Run(args) => {
            let r = run_generator(&args).await?;
            if args.json {
                let text = serde_json::to_string_pretty(&r)
                    .map_err(|e| CliError::new(e.to_string(), None))?;
                println!("{text}");
            } else {
                print_report(&r);
            }
            Ok(())
        }
        BenchCommand::Compare(args) => super::bench_compare::run(args).await,
        BenchCommand::Floor { fleet, listen } => {
            if !listen.ip().is_loopback() {
                return Err(CliError::new(
                    format!("{listen} is not a loopback address"),
                    Some("the floor acceptor is a benchmark reference: listen on 127.0.0.1 or ::1"),
                ));
            }
            let fleet = Fleet::load(&fleet).map_err(|e| CliError::new(e.to_string(), None))?;
            let listener = tokio::net::TcpListener::bind(listen).await.map_err(|e| {
                CliError::new(
                    format!("cannot listen on {listen}: {e}"),
                    Some("pick a free port with --listen"),
                )
            })?;
            rampart_loadgen::floor::serve(listener, &fleet)
                .await
                .map_err(|e| CliError::new(e.to_string(), None))
        }
    }
}
