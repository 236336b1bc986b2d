//! `rampart device ...`.

use std::net::SocketAddr;
use std::path::Path;

use rampart_agent::AgentConfig;
use rampart_hub::HubConfig;
use rampart_hub::ops::{self, KeySource};
use rampart_pki::{KeyAlgorithm, files};
use rampart_store::DeviceUpdate;

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
    let added = ops::add_device(&dir, &cfg, &*store, id, key_source, out, force).await?;
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
        "{:24} {:9} {:12} {:12} {:26} ADDRESS",
        "DEVICE", "STATUS", "STATE", "GROUP", "LAST SEEN"
    );
    for d in devices {
        let state = match (d.pending, d.quarantined) {
            (true, _) => "pending",
            (_, true) => "quarantined",
            _ => "-",
        };
        println!(
            "{:24} {:9} {:12} {:12} {:26} {}",
            d.id,
            d.status.as_str(),
            state,
            d.group.as_deref().unwrap_or("-"),
            when(d.last_seen_at),
            d.last_address.as_deref().unwrap_or("-")
        );
    }
    Ok(())
}

pub async fn show(data_dir: &Path, id: &str, json: bool) -> Result<(), CliError> {
    let (_, cfg, store) = super::open(data_dir).await?;
    let d = ops::show_device(&cfg, &*store, id).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&d).unwrap_or_default());
        return Ok(());
    }
    let dev = &d.device;
    println!("{:11} {}", dev.kind.as_str(), dev.id);
    println!(
        "status      {}{}{}",
        dev.status.as_str(),
        if dev.pending {
            ", pending approval"
        } else {
            ""
        },
        if dev.quarantined { ", quarantined" } else { "" }
    );
    println!("group       {}", dev.group.as_deref().unwrap_or("-"));
    if !dev.attributes.is_empty() {
        let attrs: Vec<String> = dev
            .attributes
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        println!("attributes  {}", attrs.join(" "));
    }
    println!(
        "policies    {}",
        if d.policies.is_empty() {
            "-".to_string()
        } else {
            d.policies.join(", ")
        }
    );
    println!(
        "registered  {} via {}",
        when(Some(dev.created_at)),
        dev.registered_via
    );
    println!(
        "last seen   {} from {}",
        when(dev.last_seen_at),
        dev.last_address.as_deref().unwrap_or("-")
    );
    println!("certificates:");
    for c in &d.certificates {
        println!(
            "  {}  {:8}  {}  valid {} .. {}  sha256:{}{}",
            c.serial,
            c.status.as_str(),
            c.key_algorithm,
            when(Some(c.not_before)),
            when(Some(c.not_after)),
            c.fingerprint,
            c.retire_at
                .map(|t| format!("  retires {}", when(Some(t))))
                .unwrap_or_default()
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
    let o = ops::disable_device(&dir, &*store, id).await?;
    match (o.hub_running, o.disconnected) {
        (true, Some(n)) => {
            println!("Disabled {id}; the running hub closed {n} live connection(s).")
        }
        _ => println!(
            "Disabled {id}; no hub is running, the device will be refused when it connects."
        ),
    }
    Ok(())
}

pub async fn enable(data_dir: &Path, id: &str) -> Result<(), CliError> {
    let (dir, _, store) = super::open(data_dir).await?;
    ops::enable_device(&dir, &*store, id).await?;
    println!("Enabled {id}.");
    Ok(())
}

pub async fn approve(data_dir: &Path, id: &str) -> Result<(), CliError> {
    let (dir, _, store) = super::open(data_dir).await?;
    let d = store
        .device(id)
        .await?
        .ok_or_else(|| CliError::from(rampart_hub::HubError::DeviceNotFound(id.into())))?;
    if !d.pending {
        println!("{id} is not pending approval.");
        return Ok(());
    }
    let o = ops::update_device(
        &dir,
        &*store,
        id,
        DeviceUpdate {
            pending: Some(false),
            ..Default::default()
        },
        "device.approve",
    )
    .await?;
    println!(
        "Approved {id}: it can connect now ({}).",
        super::live_note(&o)
    );
    Ok(())
}

pub async fn revoke(data_dir: &Path, id: &str, reason: &str) -> Result<(), CliError> {
    let reason: rampart_pki::RevocationReason =
        reason.parse().map_err(|e: String| CliError::new(e, None))?;
    let (dir, cfg, store) = super::open(data_dir).await?;
    let (revoked, o) = ops::revoke_device(&dir, &cfg, &*store, id, reason).await?;
    if revoked.is_empty() {
        println!("{id} had no valid certificate to revoke; the CRL was re-signed anyway.");
    } else {
        for c in &revoked {
            println!(
                "Revoked certificate {} of {id} ({}).",
                c.serial,
                reason.as_str()
            );
        }
    }
    println!("CRL: {}", dir.resolve(&cfg.pki.crl_file).display());
    println!("{}", super::live_note(&o));
    Ok(())
}

pub async fn quarantine(data_dir: &Path, id: &str, on: bool) -> Result<(), CliError> {
    let (dir, cfg, store) = super::open(data_dir).await?;
    let o = ops::update_device(
        &dir,
        &*store,
        id,
        DeviceUpdate {
            quarantined: Some(on),
            ..Default::default()
        },
        if on {
            "device.quarantine"
        } else {
            "device.release"
        },
    )
    .await?;
    if on {
        println!(
            "Quarantined {id}: only policy {:?} applies ({}).",
            cfg.policy.quarantine,
            super::live_note(&o)
        );
    } else {
        println!("Released {id} from quarantine ({}).", super::live_note(&o));
    }
    Ok(())
}

pub async fn set(
    data_dir: &Path,
    id: &str,
    group: Option<String>,
    no_group: bool,
    attrs: &[String],
) -> Result<(), CliError> {
    let (dir, _, store) = super::open(data_dir).await?;
    let update = DeviceUpdate {
        group: if no_group {
            Some(None)
        } else {
            group.map(Some)
        },
        attributes: if attrs.is_empty() {
            None
        } else {
            Some(super::pairs(attrs, "--attr")?)
        },
        ..Default::default()
    };
    let o = ops::update_device(&dir, &*store, id, update, "device.set").await?;
    println!("Updated {id} ({}).", super::live_note(&o));
    Ok(())
}
