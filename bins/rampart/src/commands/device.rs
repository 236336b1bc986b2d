//! `rampart device ...`.

use std::net::SocketAddr;
use std::path::Path;

use rampart_agent::AgentConfig;
use rampart_hub::HubConfig;
use rampart_hub::ops::{self, KeySource};
use rampart_pki::{KeyAlgorithm, files};
use rampart_store::Store;

use super::{num, when};
use crate::CliError;

/// The address agents should dial, derived from the listener when not given.
pub fn default_hub_address(cfg: &HubConfig) -> String {
    match cfg.mqtt.listen.parse::<SocketAddr>() {
        Ok(a) if a.ip().is_unspecified() => format!("localhost:{}", a.port()),
        Ok(a) => a.to_string(),
        Err(_) => "localhost:8883".into(),
    }
}

pub async fn add(
    data_dir: &Path,
    id: &str,
    out: Option<&Path>,
    csr: Option<&Path>,
    key_type: Option<&str>,
    hub_address: Option<&str>,
    force: bool,
) -> Result<(), CliError> {
    let (dir, cfg, store) = super::open(data_dir).await?;
    let key_source = match csr {
        Some(path) => {
            if key_type.is_some() {
                return Err(CliError::new(
                    "--key-type cannot be used with --csr: the device chose its key",
                    None,
                ));
            }
            let pem = std::fs::read_to_string(path).map_err(|e| {
                CliError::new(format!("cannot read CSR {}: {e}", path.display()), None)
            })?;
            KeySource::Csr(pem)
        }
        None => {
            if out.is_none() {
                return Err(CliError::new(
                    "--out DIR is required when the hub creates the device key",
                    Some("the key is written only into the bundle; or send a CSR with --csr FILE"),
                ));
            }
            let alg: KeyAlgorithm = match key_type {
                Some(k) => k.parse().map_err(|e: String| CliError::new(e, None))?,
                None => cfg.key_algorithm().map_err(|e| CliError::new(e, None))?,
            };
            KeySource::Generate(alg)
        }
    };
    let added = ops::add_device(&dir, &cfg, &store, id, key_source, out, force).await?;
    let address = hub_address
        .map(str::to_owned)
        .unwrap_or_else(|| default_hub_address(&cfg));
    match out {
        Some(out) => {
            let agent_toml = out.join("agent.toml");
            files::write_public(
                &agent_toml,
                AgentConfig::template(id, &address).as_bytes(),
                force,
            )
            .map_err(|e| CliError::new(e.to_string(), None))?;
            println!("Registered device {id}");
            println!("  certificate serial : {}", added.cert.info.serial);
            println!(
                "  valid until        : {}",
                when(Some(added.cert.info.not_after))
            );
            println!("  bundle             : {}", out.display());
            if added.key.is_some() {
                println!("    device.key (0600), device.crt, ca-chain.crt, agent.toml");
            } else {
                println!("    device.crt, ca-chain.crt, agent.toml (the key stays on the device)");
            }
            println!();
            println!(
                "Run the agent: rampart-agent run --config {}",
                agent_toml.display()
            );
        }
        None => print!("{}", added.cert.pem),
    }
    Ok(())
}

pub async fn list(data_dir: &Path, json: bool) -> Result<(), CliError> {
    let (_, _, store) = super::open(data_dir).await?;
    let devices = store.devices().await?;
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&devices).unwrap_or_default()
        );
        return Ok(());
    }
    println!(
        "{:24} {:9} {:26} {:26} ADDRESS",
        "DEVICE", "STATUS", "CREATED", "LAST SEEN"
    );
    for d in devices {
        println!(
            "{:24} {:9} {:26} {:26} {}",
            d.id,
            d.status.as_str(),
            when(Some(d.created_at)),
            when(d.last_seen_at),
            d.last_address.as_deref().unwrap_or("-")
        );
    }
    Ok(())
}

pub async fn show(data_dir: &Path, id: &str, json: bool) -> Result<(), CliError> {
    let (_, _, store) = super::open(data_dir).await?;
    let d = ops::show_device(&store, id).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&d).unwrap_or_default());
        return Ok(());
    }
    println!("device      {}", d.device.id);
    println!("status      {}", d.device.status.as_str());
    println!("created     {}", when(Some(d.device.created_at)));
    println!(
        "last seen   {} from {}",
        when(d.device.last_seen_at),
        d.device.last_address.as_deref().unwrap_or("-")
    );
    println!("certificates:");
    for c in &d.certificates {
        println!(
            "  {}  {}  {}  valid {} .. {}  sha256:{}",
            c.serial,
            c.status.as_str(),
            c.key_algorithm,
            when(Some(c.not_before)),
            when(Some(c.not_after)),
            c.fingerprint
        );
    }
    match &d.latest {
        Some(r) => println!(
            "latest      seq {} at {}: {} {} SoC {} SoH {}",
            r.seq,
            when(Some(r.ts)),
            num(r.voltage_v, 2, "V"),
            num(r.current_a, 1, "A"),
            num(r.soc_pct, 1, "%"),
            num(r.soh_pct, 1, "%")
        ),
        None => println!("latest      no telemetry yet"),
    }
    Ok(())
}

pub async fn disable(data_dir: &Path, id: &str) -> Result<(), CliError> {
    let (dir, _, store) = super::open(data_dir).await?;
    let outcome = ops::disable_device(&dir, &store, id).await?;
    match outcome.disconnected {
        Some(n) => println!("Disabled {id}; the running hub closed {n} live connection(s)."),
        None => println!(
            "Disabled {id}; no hub is running, the device will be refused when it connects."
        ),
    }
    Ok(())
}

pub async fn enable(data_dir: &Path, id: &str) -> Result<(), CliError> {
    let (_, _, store) = super::open(data_dir).await?;
    ops::enable_device(&store, id).await?;
    println!("Enabled {id}.");
    Ok(())
}
