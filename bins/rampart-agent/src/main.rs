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
        #[arg(long, short, default_value = "agent.toml")]
        config: PathBuf,
    },
    /// Check a configuration file and its credentials without connecting.
    Check {
        #[arg(long, short, default_value = "agent.toml")]
        config: PathBuf,
    },
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
        Command::Check { config } => {
            let cfg = match AgentConfig::load(&config) {
                Ok(c) => c,
                Err(e) => return report(&e),
            };
            let cert = cfg.resolve(&cfg.hub.cert);
            let key = cfg.resolve(&cfg.hub.key);
            let ca = cfg.resolve(&cfg.hub.ca);
            if cert.exists() {
                if let Err(e) = rampart_agent::tls::client_config(&ca, &cert, &key) {
                    return report(&e);
                }
                let id = rampart_agent::credentials::Pair { cert, key }
                    .info()
                    .ok()
                    .and_then(|i| i.common_name)
                    .unwrap_or_default();
                println!(
                    "{}: ok (device {id}, hub {})",
                    config.display(),
                    cfg.hub.address
                );
            } else if let Some(p) = &cfg.provisioning {
                let (claim_cert, claim_key) =
                    (cfg.resolve(&p.claim_cert), cfg.resolve(&p.claim_key));
                if let Err(e) = rampart_agent::tls::client_config(&ca, &claim_cert, &claim_key) {
                    return report(&e);
                }
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
                return ExitCode::FAILURE;
            }
            ExitCode::SUCCESS
        }
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
