//! `rampart`: the hub and the operator CLI in one binary.
//!
//! This file only parses the command line and reports errors; each command lives in
//! `commands/`, and the work itself in the `rampart-hub` crate.

mod commands;

/// mimalloc instead of glibc's allocator: the hub allocates and frees small buffers for every
/// message (packets, rows, wake-ups), and glibc's malloc and free were about 8% of its CPU at
/// a fixed QoS 1 rate (docs/benchmarks.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Asks Linux for no transparent huge pages in this process. mimalloc advises them for its
/// arenas, and each first touch of one then zeroes 2 MiB at once: in a connection storm the
/// kernel's page zeroing was 8% of the hub's CPU (`clear_page_erms` under
/// `do_huge_pmd_anonymous_page`), and the hub spent 5–9% more CPU per connection than with
/// 4 KiB pages, at a little more memory per connection (docs/benchmarks.md). The flag is the
/// process's; it holds for pages first touched after it is set, which is nearly all of them.
fn no_transparent_huge_pages() {
    #[cfg(target_os = "linux")]
    if let Err(e) = nix::sys::prctl::set_thp_disable(true) {
        // Only a cost, never a fault: say so and go on.
        tracing::debug!(error = %e, "could not turn transparent huge pages off");
    }
}

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "rampart",
    version,
    about = "Rampart: a self-hosted platform for connected devices that meet the EU Cyber Resilience Act.",
    long_about = "Rampart runs the hub (an MQTT endpoint with mutual TLS, a device registry and \
                  certificate authority, telemetry storage) and is the operator's command line.\n\n\
                  Start with `rampart demo` to see everything run, or `rampart init --data-dir DIR` \
                  to set up a hub of your own."
)]
struct Cli {
    /// Log as JSON lines instead of human-readable text.
    #[arg(long, global = true)]
    log_json: bool,
    /// More log output (-v: debug, -vv: trace). RUST_LOG overrides it.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
    #[command(subcommand)]
    command: Command,
}

/// The data directory of a hub.
#[derive(clap::Args, Clone, Debug)]
pub struct DataDirArg {
    /// The hub's data directory (created by `rampart init`).
    #[arg(long, env = "RAMPART_DATA_DIR", value_name = "DIR")]
    pub data_dir: PathBuf,
}

#[derive(Subcommand)]
enum Command {
    /// Create a hub: root CA, device CA, hub certificate and a documented rampart.toml.
    Init {
        #[command(flatten)]
        dir: DataDirArg,
        /// A name devices use to reach the hub (DNS name or IP), added to the hub certificate
        /// besides localhost and 127.0.0.1. Repeatable.
        #[arg(long = "hostname", value_name = "NAME")]
        hostnames: Vec<String>,
        /// Key type of the CAs and the hub certificate.
        #[arg(long, default_value = "ecdsa-p256", value_name = "ecdsa-p256|ed25519")]
        key_type: String,
        /// Replace an existing CA and configuration (every device then needs a new certificate).
        #[arg(long)]
        force: bool,
    },
    /// Run the hub until SIGTERM or Ctrl-C.
    Hub {
        #[command(flatten)]
        dir: DataDirArg,
        /// Address of the MQTT/TLS listener (overrides mqtt.listen in rampart.toml).
        #[arg(long, value_name = "ADDR:PORT")]
        listen: Option<SocketAddr>,
    },
    /// Register, inspect, approve, quarantine, revoke and disable devices.
    #[command(subcommand)]
    Device(DeviceCommand),
    /// Service identities: backends, pipelines and tools that connect with a certificate.
    #[command(subcommand)]
    Service(ServiceCommand),
    /// Claim certificates for fleet provisioning in the factory.
    #[command(subcommand)]
    Claim(ClaimCommand),
    /// The provisioning allow-list.
    #[command(subcommand)]
    Provision(ProvisionCommand),
    /// Certificate authorities: just-in-time registration and revocation lists.
    #[command(subcommand)]
    Ca(CaCommand),
    /// Policies: who may connect, publish, subscribe and receive what.
    #[command(subcommand)]
    Policy(PolicyCommand),
    /// Run the identity audit (expiring or old certificates, revoked certificates still
    /// connected, shared certificates, weak keys, overly permissive policies).
    Audit {
        #[command(flatten)]
        dir: DataDirArg,
        /// Print JSON instead of text (for scripts).
        #[arg(long)]
        json: bool,
    },
    /// Show the audit log (every registry change, newest first).
    Log {
        #[command(flatten)]
        dir: DataDirArg,
        #[arg(long, default_value_t = 50)]
        limit: u32,
        /// Print JSON instead of text (for scripts).
        #[arg(long)]
        json: bool,
    },
    /// Show a device's stored telemetry.
    Telemetry {
        /// The device id.
        id: String,
        #[command(flatten)]
        dir: DataDirArg,
        /// How far back to look, e.g. 10m, 2h, 7d.
        #[arg(long, default_value = "24h", value_name = "DURATION")]
        since: humantime::Duration,
        /// At most this many readings (the newest ones).
        #[arg(long, default_value_t = 100)]
        limit: u32,
        /// Print JSON (one array of readings) instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Show the events a device reported: BMS unreachable/recovered, data its outbox dropped.
    Events {
        /// The device id.
        id: String,
        #[command(flatten)]
        dir: DataDirArg,
        /// At most this many events (the newest ones).
        #[arg(long, default_value_t = 100)]
        limit: u32,
        /// Print JSON (one array of events) instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Counters and connected clients of the running hub.
    Status {
        #[command(flatten)]
        dir: DataDirArg,
        /// Print JSON instead of text (for scripts).
        #[arg(long)]
        json: bool,
    },
    /// Product records (CRA): manufacturer, intended purpose, releases, Member States, support
    /// period, vulnerability disclosure contact.
    #[command(subcommand)]
    Product(commands::cra::ProductCommand),
    /// Software bills of materials: generate (Cargo, firmware manifest), ingest, export.
    #[command(subcommand)]
    Sbom(commands::sbom::SbomCommand),
    /// Vulnerabilities: import OSV advisories offline, scan SBOMs, see the fleet's exposure.
    #[command(subcommand)]
    Vuln(commands::sbom::VulnCommand),
    /// VEX: what each vulnerability means for a product; OpenVEX and CycloneDX export.
    #[command(subcommand)]
    Vex(commands::cra::VexCommand),
    /// The Cyber Resilience Act: classification, advisories, Article 14 reports, documents.
    #[command(subcommand)]
    Cra(commands::cra::CraCommand),
    /// Software updates (TUF): signing keys, staging artifacts, offline signatures, publishing.
    #[command(subcommand)]
    Release(commands::release::ReleaseCommand),
    /// Staged rollouts of a published release: waves, thresholds, approval, abort with
    /// rollback, and each device's state.
    #[command(subcommand)]
    Rollout(commands::rollout::RolloutCommand),
    /// Load and compare: simulated devices against a broker (`run`), their identities
    /// (`fleet`), and the hub beside Mosquitto under the identical load (`compare`).
    #[command(subcommand)]
    Bench(commands::bench::BenchCommand),
    /// Run a complete hub and simulated battery gateways in a temporary directory, and show
    /// their live telemetry until Ctrl-C.
    Demo {
        /// Number of simulated gateways.
        #[arg(long, default_value_t = 3)]
        devices: usize,
        /// Time between readings of each gateway.
        #[arg(long, default_value = "1s", value_name = "DURATION")]
        interval: humantime::Duration,
        /// Stop after this long instead of waiting for Ctrl-C.
        #[arg(long, value_name = "DURATION")]
        duration: Option<humantime::Duration>,
        /// Port of the MQTT/TLS listener (default: any free port on 127.0.0.1).
        #[arg(long, default_value_t = 0)]
        port: u16,
        /// Keep the temporary directory (keys, database) after the demo ends.
        #[arg(long)]
        keep: bool,
    },
}

#[derive(Subcommand)]
enum DeviceCommand {
    /// Register a device and issue its certificate.
    ///
    /// Without --csr the hub creates the device's key and writes a bundle (device.key,
    /// device.crt, ca-chain.crt, agent.toml) into --out. With --csr the device keeps its own
    /// key: only its certificate, the CA chain and agent.toml are written.
    Add {
        /// The device id (becomes the certificate CN and the MQTT client id).
        id: String,
        #[command(flatten)]
        dir: DataDirArg,
        /// Directory for the device bundle.
        #[arg(long, value_name = "DIR")]
        out: Option<PathBuf>,
        /// Sign this PKCS#10 CSR (PEM) instead of creating a key.
        #[arg(long, value_name = "FILE")]
        csr: Option<PathBuf>,
        /// Key type when the hub creates the key (default: pki.key_algorithm).
        #[arg(long, value_name = "ecdsa-p256|ed25519")]
        key_type: Option<String>,
        /// host:port the agent connects to (default: derived from mqtt.listen).
        #[arg(long, value_name = "HOST:PORT")]
        hub_address: Option<String>,
        /// Overwrite existing files in --out.
        #[arg(long)]
        force: bool,
    },
    /// List devices.
    List {
        #[command(flatten)]
        dir: DataDirArg,
        /// Print JSON instead of text (for scripts).
        #[arg(long)]
        json: bool,
    },
    /// Show a device, its certificates and its newest reading.
    Show {
        /// The device's id.
        id: String,
        #[command(flatten)]
        dir: DataDirArg,
        /// Print JSON instead of text (for scripts).
        #[arg(long)]
        json: bool,
    },
    /// Disable a device: it can no longer connect, and its live session is dropped at once.
    Disable {
        /// The device's id.
        id: String,
        #[command(flatten)]
        dir: DataDirArg,
    },
    /// Enable a disabled device again.
    Enable {
        /// The device's id.
        id: String,
        #[command(flatten)]
        dir: DataDirArg,
    },
    /// Approve a device registered just in time by a CA that requires approval.
    Approve {
        /// The device's id.
        id: String,
        #[command(flatten)]
        dir: DataDirArg,
    },
    /// Revoke all certificates of a device: the CRL is re-signed, the next handshake fails and
    /// the live session is dropped at once.
    Revoke {
        /// The device's id.
        id: String,
        #[command(flatten)]
        dir: DataDirArg,
        /// key-compromise, superseded, cessation-of-operation, affiliation-changed,
        /// privilege-withdrawn or unspecified.
        #[arg(long, default_value = "unspecified")]
        reason: String,
    },
    /// Quarantine a device: only its update and diagnostics topics stay open, applied to the
    /// live session without reconnecting.
    Quarantine {
        /// The device's id.
        id: String,
        #[command(flatten)]
        dir: DataDirArg,
    },
    /// Release a device from quarantine.
    Release {
        /// The device's id.
        id: String,
        #[command(flatten)]
        dir: DataDirArg,
    },
    /// Set a device's group and attributes (used by policies).
    Set {
        /// The device's id.
        id: String,
        #[command(flatten)]
        dir: DataDirArg,
        /// The group (policies attached to group:NAME apply).
        #[arg(long)]
        group: Option<String>,
        /// Remove the device from its group.
        #[arg(long, conflicts_with = "group")]
        no_group: bool,
        /// An attribute, NAME=VALUE (replaces all attributes when given). Repeatable.
        #[arg(long = "attr", value_name = "NAME=VALUE")]
        attrs: Vec<String>,
    },
}

#[derive(Subcommand)]
enum ServiceCommand {
    /// Register a service identity and issue its certificate (its rights come from the
    /// policies attached to service:NAME).
    Add {
        /// The service's name (its certificate's CN).
        name: String,
        #[command(flatten)]
        dir: DataDirArg,
        /// Directory for the bundle (key, certificate, CA chain).
        #[arg(long, value_name = "DIR")]
        out: Option<PathBuf>,
        /// Sign this CSR (PEM) instead of creating a key.
        #[arg(long, value_name = "FILE")]
        csr: Option<PathBuf>,
        /// Overwrite existing files.
        #[arg(long)]
        force: bool,
    },
}

#[derive(Subcommand)]
enum ClaimCommand {
    /// Create a claim certificate: shared by a production batch, it only lets a factory-fresh
    /// device ask for its own certificate.
    Add {
        /// The claim's name (e.g. the production batch).
        name: String,
        #[command(flatten)]
        dir: DataDirArg,
        /// Directory for the claim bundle (key, certificate, CA chain).
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
        /// How many devices may provision with it.
        #[arg(long)]
        max_uses: Option<i64>,
        /// How long it is valid (certificate lifetime and provisioning window), e.g. 30d.
        #[arg(long, default_value = "30d")]
        valid_for: humantime::Duration,
        /// Overwrite existing files.
        #[arg(long)]
        force: bool,
    },
}

#[derive(Subcommand)]
enum ProvisionCommand {
    /// Allow a serial number to provision (once).
    Allow {
        /// The serial number the device will present.
        serial: String,
        #[command(flatten)]
        dir: DataDirArg,
        /// The device id it gets (default: the serial number).
        #[arg(long)]
        device_id: Option<String>,
        /// The group the device joins.
        #[arg(long)]
        group: Option<String>,
        /// An attribute the device gets, NAME=VALUE. Repeatable.
        #[arg(long = "attr", value_name = "NAME=VALUE")]
        attrs: Vec<String>,
    },
}

#[derive(Subcommand)]
enum CaCommand {
    /// Trust another CA: unknown devices whose certificate it signed are registered on their
    /// first connection (just-in-time registration).
    Register {
        /// The CA certificate (PEM).
        cert: PathBuf,
        #[command(flatten)]
        dir: DataDirArg,
        /// Register new devices as pending until `rampart device approve` (default: active).
        #[arg(long)]
        pending: bool,
        /// Group new devices join.
        #[arg(long)]
        group: Option<String>,
        /// Policy attached to each new device.
        #[arg(long)]
        policy: Option<String>,
        /// An attribute taken from the certificate subject, NAME=FIELD (FIELD: CN, O, OU, L,
        /// ST, C, serialNumber). Repeatable.
        #[arg(long = "attr", value_name = "NAME=FIELD")]
        attrs: Vec<String>,
    },
    /// List trusted CAs.
    List {
        #[command(flatten)]
        dir: DataDirArg,
        /// Print JSON instead of text (for scripts).
        #[arg(long)]
        json: bool,
    },
    /// Re-sign the device CA's certificate revocation list and print it (or write it).
    Crl {
        #[command(flatten)]
        dir: DataDirArg,
        /// Where to write it (default: standard output).
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum PolicyCommand {
    /// Create or update a policy from a TOML or JSON file (applies to live sessions at once).
    Put {
        /// The policy file (TOML or JSON; see docs/policies.md).
        file: PathBuf,
        #[command(flatten)]
        dir: DataDirArg,
    },
    /// List policies and where they are attached.
    List {
        #[command(flatten)]
        dir: DataDirArg,
    },
    /// Print a policy (the current version, or --version N).
    Show {
        /// The policy's name.
        name: String,
        #[command(flatten)]
        dir: DataDirArg,
        #[arg(long)]
        version: Option<i64>,
    },
    /// Attach a policy to fleet, claims, device:ID, group:NAME, service:NAME or claim:NAME.
    Attach {
        /// The policy's name.
        name: String,
        /// fleet, claims, device:ID, group:NAME, service:NAME or claim:NAME.
        target: String,
        #[command(flatten)]
        dir: DataDirArg,
    },
    /// Detach a policy.
    Detach {
        /// The policy's name.
        name: String,
        /// Where it is attached (as for attach).
        target: String,
        #[command(flatten)]
        dir: DataDirArg,
    },
    /// Delete a policy and its attachments.
    Delete {
        /// The policy's name.
        name: String,
        #[command(flatten)]
        dir: DataDirArg,
    },
    /// Check a policy file: syntax, overly permissive statements, statements that never match.
    /// Exits 1 if it finds an error or a warning.
    Lint { file: PathBuf },
}

/// A failed command: the error and, where one helps, what to do about it.
#[derive(Debug)]
pub struct CliError {
    message: String,
    hint: Option<String>,
}

impl CliError {
    pub fn new(message: impl Into<String>, hint: Option<&str>) -> Self {
        CliError {
            message: message.into(),
            hint: hint.map(str::to_owned),
        }
    }
}

impl From<rampart_hub::HubError> for CliError {
    fn from(e: rampart_hub::HubError) -> Self {
        CliError::new(e.to_string(), e.hint())
    }
}

impl From<rampart_agent::AgentError> for CliError {
    fn from(e: rampart_agent::AgentError) -> Self {
        CliError::new(e.to_string(), e.hint())
    }
}

impl From<rampart_store::StoreError> for CliError {
    fn from(e: rampart_store::StoreError) -> Self {
        rampart_hub::HubError::from(e).into()
    }
}

fn init_logging(json: bool, verbose: u8, quiet_default: bool) {
    let default = match (verbose, quiet_default) {
        (0, true) => "warn",
        (0, false) => "info",
        (1, _) => "debug",
        _ => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    // The demo prints its own live view; keep logs to warnings unless asked.
    let quiet = matches!(cli.command, Command::Demo { .. });
    init_logging(cli.log_json, cli.verbose, quiet);
    no_transparent_huge_pages();
    let result = match cli.command {
        Command::Init {
            dir,
            hostnames,
            key_type,
            force,
        } => commands::init::run(&dir.data_dir, &hostnames, &key_type, force),
        Command::Hub { dir, listen } => commands::hub::run(&dir.data_dir, listen).await,
        Command::Device(cmd) => match cmd {
            DeviceCommand::Add {
                id,
                dir,
                out,
                csr,
                key_type,
                hub_address,
                force,
            } => {
                commands::device::add(
                    &dir.data_dir,
                    &id,
                    out.as_deref(),
                    csr.as_deref(),
                    key_type.as_deref(),
                    hub_address.as_deref(),
                    force,
                )
                .await
            }
            DeviceCommand::List { dir, json } => commands::device::list(&dir.data_dir, json).await,
            DeviceCommand::Show { id, dir, json } => {
                commands::device::show(&dir.data_dir, &id, json).await
            }
            DeviceCommand::Disable { id, dir } => {
                commands::device::disable(&dir.data_dir, &id).await
            }
            DeviceCommand::Enable { id, dir } => commands::device::enable(&dir.data_dir, &id).await,
            DeviceCommand::Approve { id, dir } => {
                commands::device::approve(&dir.data_dir, &id).await
            }
            DeviceCommand::Revoke { id, dir, reason } => {
                commands::device::revoke(&dir.data_dir, &id, &reason).await
            }
            DeviceCommand::Quarantine { id, dir } => {
                commands::device::quarantine(&dir.data_dir, &id, true).await
            }
            DeviceCommand::Release { id, dir } => {
                commands::device::quarantine(&dir.data_dir, &id, false).await
            }
            DeviceCommand::Set {
                id,
                dir,
                group,
                no_group,
                attrs,
            } => commands::device::set(&dir.data_dir, &id, group, no_group, &attrs).await,
        },
        Command::Service(ServiceCommand::Add {
            name,
            dir,
            out,
            csr,
            force,
        }) => {
            commands::identity::add_service(
                &dir.data_dir,
                &name,
                out.as_deref(),
                csr.as_deref(),
                force,
            )
            .await
        }
        Command::Claim(ClaimCommand::Add {
            name,
            dir,
            out,
            max_uses,
            valid_for,
            force,
        }) => {
            commands::identity::add_claim(
                &dir.data_dir,
                &name,
                &out,
                max_uses,
                valid_for.into(),
                force,
            )
            .await
        }
        Command::Provision(ProvisionCommand::Allow {
            serial,
            dir,
            device_id,
            group,
            attrs,
        }) => commands::identity::allow(&dir.data_dir, &serial, device_id, group, &attrs).await,
        Command::Ca(cmd) => match cmd {
            CaCommand::Register {
                cert,
                dir,
                pending,
                group,
                policy,
                attrs,
            } => commands::ca::register(&dir.data_dir, &cert, pending, group, policy, &attrs).await,
            CaCommand::List { dir, json } => commands::ca::list(&dir.data_dir, json).await,
            CaCommand::Crl { dir, out } => commands::ca::crl(&dir.data_dir, out.as_deref()).await,
        },
        Command::Policy(cmd) => match cmd {
            PolicyCommand::Put { file, dir } => commands::policy::put(&dir.data_dir, &file).await,
            PolicyCommand::List { dir } => commands::policy::list(&dir.data_dir).await,
            PolicyCommand::Show { name, dir, version } => {
                commands::policy::show(&dir.data_dir, &name, version).await
            }
            PolicyCommand::Attach { name, target, dir } => {
                commands::policy::attach(&dir.data_dir, &name, &target, true).await
            }
            PolicyCommand::Detach { name, target, dir } => {
                commands::policy::attach(&dir.data_dir, &name, &target, false).await
            }
            PolicyCommand::Delete { name, dir } => {
                commands::policy::delete(&dir.data_dir, &name).await
            }
            PolicyCommand::Lint { file } => commands::policy::lint(&file),
        },
        Command::Audit { dir, json } => commands::audit::run(&dir.data_dir, json).await,
        Command::Log { dir, limit, json } => commands::audit::log(&dir.data_dir, limit, json).await,
        Command::Telemetry {
            id,
            dir,
            since,
            limit,
            json,
        } => commands::telemetry::run(&dir.data_dir, &id, since.into(), limit, json).await,
        Command::Events {
            id,
            dir,
            limit,
            json,
        } => commands::events::run(&dir.data_dir, &id, limit, json).await,
        Command::Status { dir, json } => commands::status::run(&dir.data_dir, json).await,
        Command::Product(cmd) => commands::cra::product(cmd).await,
        Command::Sbom(cmd) => commands::sbom::run(cmd).await,
        Command::Vuln(cmd) => commands::sbom::vuln(cmd).await,
        Command::Vex(cmd) => commands::cra::vex_cmd(cmd).await,
        Command::Cra(cmd) => commands::cra::run(cmd).await,
        Command::Release(cmd) => commands::release::run(cmd),
        Command::Rollout(cmd) => commands::rollout::run(cmd).await,
        Command::Bench(cmd) => commands::bench::run(cmd).await,
        Command::Demo {
            devices,
            interval,
            duration,
            port,
            keep,
        } => {
            commands::demo::run(commands::demo::DemoOptions {
                devices,
                interval: interval.into(),
                duration: duration.map(Into::into),
                port,
                keep,
            })
            .await
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", e.message);
            if let Some(h) = e.hint {
                eprintln!("hint: {h}");
            }
            ExitCode::FAILURE
        }
    }
}
