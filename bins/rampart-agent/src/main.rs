//! `rampart-agent`: runs on the gateway, reads the battery's BMS and sends its data to the
//! Rampart hub over mutual TLS. It only ever connects out; it never listens on a port.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand};
use rampart_agent::{AgentConfig, AgentStats};
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(
    name = "rampart-agent",
    version,
    about = "The Rampart device agent: reads the battery's BMS and calls home to the hub over mutual TLS.",
    long_about = None
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

#[derive(Subcommand)]
enum Command {
    /// Run the agent until SIGTERM or Ctrl-C.
    Run {
        /// The agent configuration (written by `rampart device add ID --out DIR`).
        /// The agent's configuration file.
        #[arg(long, short, default_value = "agent.toml")]
        config: PathBuf,
    },
    /// Check a configuration file and its credentials without connecting.
    Check {
        /// The agent's configuration file.
        #[arg(long, short, default_value = "agent.toml")]
        config: PathBuf,
    },
    /// Show what the running agent is doing: connection, last reading, outbox depth and age,
    /// certificate expiry, versions (read from STATE/status.json; no network involved).
    Status {
        /// The agent's configuration file.
        #[arg(long, short, default_value = "agent.toml")]
        config: PathBuf,
        /// Print the status document as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Print the current session token for the hub's HTTPS endpoints (it is stored sealed).
    Token {
        /// The agent's configuration file.
        #[arg(long, short, default_value = "agent.toml")]
        config: PathBuf,
    },
    /// The TUF client on its own, with the command line TUF conformance suites drive:
    /// `tuf --metadata-dir D init ROOT`, `tuf --metadata-dir D --metadata-url U refresh`,
    /// `tuf ... --target-name N --target-base-url U --target-dir T download`.
    /// Exit status 0 on success, 1 on any refusal or error (the reason on stderr).
    Tuf {
        #[command(flatten)]
        args: TufArgs,
        #[command(subcommand)]
        action: TufAction,
    },
    /// Erase the device's data, keys and credentials and return it to its factory state
    /// (see docs/operations.md). The agent must be stopped.
    Reset {
        /// The agent's configuration file.
        #[arg(long, short, default_value = "agent.toml")]
        config: PathBuf,
        /// Required: confirms a factory reset is meant.
        #[arg(long)]
        factory: bool,
        /// Do not ask for confirmation.
        #[arg(long)]
        yes: bool,
    },
}

#[derive(Subcommand)]
enum TufAction {
    /// Trust ROOT (a root.json signed by its own root keys) from now on.
    Init {
        /// The trusted root metadata file.
        trusted_root: PathBuf,
    },
    /// Update the trusted metadata from --metadata-url.
    Refresh,
    /// Refresh, then download --target-name verified into --target-dir.
    Download,
}

#[derive(clap::Args)]
struct TufArgs {
    /// Directory holding the trusted metadata (root.json, timestamp.json, ...).
    #[arg(long, global = true, value_name = "DIR")]
    metadata_dir: Option<PathBuf>,
    /// Base URL of the repository's metadata (http:// or https://).
    #[arg(long, global = true, value_name = "URL")]
    metadata_url: Option<String>,
    /// The target to download.
    #[arg(long, global = true, value_name = "NAME")]
    target_name: Option<String>,
    /// Base URL of the repository's targets.
    #[arg(long, global = true, value_name = "URL")]
    target_base_url: Option<String>,
    /// Where the downloaded target is written (as its percent-encoded name).
    #[arg(long, global = true, value_name = "DIR")]
    target_dir: Option<PathBuf>,
    /// For https:// URLs (the hub's device API): the agent configuration whose device
    /// certificate and session token authenticate the requests.
    #[arg(long, global = true, value_name = "FILE")]
    config: Option<PathBuf>,
}

fn fail(message: impl std::fmt::Display, hint: Option<&str>) -> ExitCode {
    eprintln!("error: {message}");
    if let Some(h) = hint {
        eprintln!("hint: {h}");
    }
    ExitCode::FAILURE
}

fn required<'a, T>(v: &'a Option<T>, flag: &str) -> Result<&'a T, ExitCode> {
    v.as_ref()
        .ok_or_else(|| fail(format!("{flag} is required for this command"), None))
}

/// HTTP client for the repository: the device's mTLS identity and token for https URLs.
fn tuf_client(
    a: &TufArgs,
    https: bool,
) -> Result<rampart_agent::update::http::HttpClient, ExitCode> {
    use rampart_agent::update::http::HttpClient;
    if !https {
        return Ok(HttpClient::new(None, None));
    }
    let config = required(&a.config, "--config (device credentials for https)")?;
    let cfg = load(config)?;
    let (cert, key, ca) = (
        cfg.resolve(&cfg.hub.cert),
        cfg.resolve(&cfg.hub.key),
        cfg.resolve(&cfg.hub.ca),
    );
    let pem = key_pem(&cfg, &key).map_err(|e| report(&e))?;
    let tls = rampart_agent::tls::client_config(&ca, &cert, &pem, &key).map_err(|e| report(&e))?;
    let token = key_pem(&cfg, &cfg.state_dir().join("token"))
        .map(|t| String::from_utf8_lossy(&t).trim().to_owned())
        .map_err(|e| report(&e))?;
    Ok(HttpClient::new(Some(tls), Some(token)))
}

async fn tuf(a: TufArgs, action: TufAction) -> Result<(), ExitCode> {
    use rampart_agent::update::http::Url;
    use rampart_agent::update::store::MetadataStore;
    use rampart_agent::update::tuf::{self, Remote};
    let dir = required(&a.metadata_dir, "--metadata-dir")?;
    let store = MetadataStore::new(dir);
    let limits = rampart_update::client::Limits::default();
    if let TufAction::Init { trusted_root } = &action {
        let root = std::fs::read(trusted_root)
            .map_err(|e| fail(format!("{}: {e}", trusted_root.display()), None))?;
        store.init(&root, &limits).map_err(|e| {
            fail(
                e,
                Some("ROOT must be a root.json signed by a threshold of its own root keys"),
            )
        })?;
        println!("trusting {} in {}", trusted_root.display(), dir.display());
        return Ok(());
    }
    if !store.is_initialised() {
        return Err(fail(
            format!("{} holds no trusted root.json", dir.display()),
            Some("run `rampart-agent tuf --metadata-dir DIR init ROOT` first"),
        ));
    }
    let url = |v: &Option<String>, flag: &str| -> Result<Url, ExitCode> {
        Url::parse(required(v, flag)?).map_err(|e| fail(e, None))
    };
    let metadata_url = url(&a.metadata_url, "--metadata-url")?;
    let targets_url = match &action {
        TufAction::Download => url(&a.target_base_url, "--target-base-url")?,
        _ => metadata_url.clone(),
    };
    let remote = Remote {
        client: tuf_client(&a, metadata_url.https || targets_url.https)?,
        metadata_url,
        targets_url,
    };
    let now = time::OffsetDateTime::now_utc();
    match action {
        TufAction::Init { .. } => Ok(()),
        TufAction::Refresh => {
            let state = tuf::refresh(&store, &remote, now, limits)
                .await
                .map_err(|e| fail(e, None))?;
            println!(
                "refreshed: root v{}, timestamp v{}, {} target(s)",
                state.root().common.version,
                state.timestamp().map_or(0, |t| t.common.version),
                state.all_targets().len()
            );
            Ok(())
        }
        TufAction::Download => {
            let name = required(&a.target_name, "--target-name")?;
            let target_dir = required(&a.target_dir, "--target-dir")?;
            std::fs::create_dir_all(target_dir)
                .map_err(|e| fail(format!("{}: {e}", target_dir.display()), None))?;
            let path = tuf::download_to_dir(&store, &remote, name, target_dir, now)
                .await
                .map_err(|e| fail(e, None))?;
            println!("downloaded and verified {name}: {}", path.display());
            Ok(())
        }
    }
}

fn init_logging(json: bool, verbose: u8) {
    let default = match verbose {
        0 => "info",
        1 => "debug",
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

fn load(config: &std::path::Path) -> Result<AgentConfig, ExitCode> {
    AgentConfig::load(config).map_err(|e| report(&e))
}

/// The key of `pair`, opened with the storage key if sealed.
fn key_pem(cfg: &AgentConfig, key: &std::path::Path) -> Result<Vec<u8>, rampart_agent::AgentError> {
    if rampart_agent::vault::is_sealed(key) {
        let vault = rampart_agent::vault::Vault::open(&cfg.key_source())?;
        Ok(vault.read_secret(key)?.to_vec())
    } else {
        std::fs::read(key).map_err(|source| rampart_agent::AgentError::Read {
            path: key.to_path_buf(),
            source,
        })
    }
}

fn check(config: &std::path::Path) -> Result<(), ExitCode> {
    let cfg = load(config)?;
    let cert = cfg.resolve(&cfg.hub.cert);
    let key = cfg.resolve(&cfg.hub.key);
    let ca = cfg.resolve(&cfg.hub.ca);
    if cert.exists() {
        let pem = key_pem(&cfg, &key).map_err(|e| report(&e))?;
        rampart_agent::tls::client_config(&ca, &cert, &pem, &key).map_err(|e| report(&e))?;
        let id = rampart_agent::credentials::Pair { cert, key }
            .info()
            .ok()
            .and_then(|i| i.common_name)
            .unwrap_or_default();
        println!(
            "{}: ok (device {id}, hub {}, bms {})",
            config.display(),
            cfg.hub.address,
            cfg.bms.kind()
        );
    } else if let Some(p) = &cfg.provisioning {
        let (claim_cert, claim_key) = (cfg.resolve(&p.claim_cert), cfg.resolve(&p.claim_key));
        let pem = key_pem(&cfg, &claim_key).map_err(|e| report(&e))?;
        rampart_agent::tls::client_config(&ca, &claim_cert, &pem, &claim_key)
            .map_err(|e| report(&e))?;
        println!(
            "{}: ok (no device certificate yet; will provision as serial {} with {}, hub {})",
            config.display(),
            p.serial_number,
            claim_cert.display(),
            cfg.hub.address
        );
    } else {
        eprintln!(
            "error: no device certificate at {} and no [provisioning] section",
            cert.display()
        );
        eprintln!("hint: `rampart device add ID --out DIR` on the hub writes a complete bundle");
        return Err(ExitCode::FAILURE);
    }
    Ok(())
}

fn status(config: &std::path::Path, json: bool) -> Result<(), ExitCode> {
    let cfg = load(config)?;
    let s = rampart_agent::status::read(&cfg.state_dir()).map_err(|e| {
        eprintln!("error: {e}");
        eprintln!("hint: the agent writes it every second while it runs (`rampart-agent run`)");
        ExitCode::FAILURE
    })?;
    if json {
        println!("{}", serde_json::to_string_pretty(&s).unwrap_or_default());
    } else {
        print!("{}", rampart_agent::status::render(&s));
    }
    if rampart_agent::status::is_running(&s) {
        Ok(())
    } else {
        Err(ExitCode::from(3))
    }
}

fn token(config: &std::path::Path) -> Result<(), ExitCode> {
    let cfg = load(config)?;
    let path = cfg.state_dir().join("token");
    let text = key_pem(&cfg, &path).map_err(|e| report(&e))?;
    println!("{}", String::from_utf8_lossy(&text).trim());
    Ok(())
}

fn reset(config: &std::path::Path, factory: bool, yes: bool) -> Result<(), ExitCode> {
    if !factory {
        eprintln!("error: `reset` only does a factory reset; say so with --factory");
        return Err(ExitCode::from(2));
    }
    let cfg = load(config)?;
    if let Ok(s) = rampart_agent::status::read(&cfg.state_dir())
        && rampart_agent::status::is_running(&s)
    {
        eprintln!(
            "error: the agent is running (pid {}); stop it first (systemctl stop rampart-agent)",
            s.pid
        );
        return Err(ExitCode::FAILURE);
    }
    if !yes {
        eprint!(
            "This erases the outbox (readings not yet sent), the storage key, the device \
             certificate and key, and the session token of {}.\nType 'erase' to continue: ",
            config.display()
        );
        let mut answer = String::new();
        let _ = std::io::stdin().read_line(&mut answer);
        if answer.trim() != "erase" {
            eprintln!("not erased");
            return Err(ExitCode::FAILURE);
        }
    }
    let report = rampart_agent::reset::factory_reset(&cfg).map_err(|e| report(&e))?;
    for f in &report.erased {
        println!("erased  {}", f.display());
    }
    for d in &report.removed_dirs {
        println!("removed {}", d.display());
    }
    if let Some(c) = &report.erase_command {
        println!("ran     {c}");
    }
    if cfg.provisioning.is_some() {
        println!(
            "factory state: the agent provisions itself with its claim certificate at the next start"
        );
    } else {
        println!(
            "factory state: the device has no credentials; install a new bundle (`rampart device add`) to use it again"
        );
    }
    Ok(())
}

fn report(e: &rampart_agent::AgentError) -> ExitCode {
    eprintln!("error: {e}");
    if let Some(h) = e.hint() {
        eprintln!("hint: {h}");
    }
    ExitCode::FAILURE
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_json, cli.verbose);
    match cli.command {
        Command::Check { config } => check(&config).err().unwrap_or(ExitCode::SUCCESS),
        Command::Status { config, json } => {
            status(&config, json).err().unwrap_or(ExitCode::SUCCESS)
        }
        Command::Token { config } => token(&config).err().unwrap_or(ExitCode::SUCCESS),
        Command::Tuf { args, action } => tuf(args, action).await.err().unwrap_or(ExitCode::SUCCESS),
        Command::Reset {
            config,
            factory,
            yes,
        } => reset(&config, factory, yes)
            .err()
            .unwrap_or(ExitCode::SUCCESS),
        Command::Run { config } => {
            let cfg = match AgentConfig::load(&config) {
                Ok(c) => c,
                Err(e) => return report(&e),
            };
            let shutdown = CancellationToken::new();
            let signals = {
                let shutdown = shutdown.clone();
                tokio::spawn(async move {
                    let mut term = match tokio::signal::unix::signal(
                        tokio::signal::unix::SignalKind::terminate(),
                    ) {
                        Ok(s) => s,
                        Err(e) => {
                            tracing::error!(error = %e, "cannot install SIGTERM handler");
                            return;
                        }
                    };
                    tokio::select! {
                        _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
                        _ = tokio::signal::ctrl_c() => tracing::info!("interrupt: shutting down"),
                    }
                    shutdown.cancel();
                })
            };
            let result = rampart_agent::run(cfg, shutdown, Arc::new(AgentStats::default())).await;
            signals.abort();
            match result {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => report(&e),
            }
        }
    }
}
