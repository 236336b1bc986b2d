//! `rampart service add`, `rampart claim add`, `rampart provision allow`.

use std::path::Path;
use std::time::Duration;

use rampart_hub::ops::{self, KeySource};
use rampart_pki::files;
use rampart_store::{AllowEntry, IdentityKind};
use time::OffsetDateTime;

use super::when;
use crate::CliError;

pub async fn add_service(
    data_dir: &Path,
    name: &str,
    out: Option<&Path>,
    csr: Option<&Path>,
    force: bool,
) -> Result<(), CliError> {
    let (dir, cfg, store) = super::open(data_dir).await?;
    let key_source =
        match csr {
            Some(p) => KeySource::Csr(std::fs::read_to_string(p).map_err(|e| {
                CliError::new(format!("cannot read CSR {}: {e}", p.display()), None)
            })?),
            None => {
                if out.is_none() {
                    return Err(CliError::new(
                        "--out DIR is required when the hub creates the key",
                        None,
                    ));
                }
                KeySource::Generate(cfg.key_algorithm().map_err(|e| CliError::new(e, None))?)
            }
        };
    let added = ops::add_identity(
        &dir,
        &cfg,
        &*store,
        IdentityKind::Service,
        name,
        key_source,
        out,
        force,
        None,
    )
    .await?;
    println!(
        "Registered service {name} (certificate {}, valid until {}).",
        added.cert.info.serial,
        when(Some(added.cert.info.not_after))
    );
    if let Some(out) = out {
        println!("  bundle: {}", out.display());
    } else {
        print!("{}", added.cert.pem);
    }
    println!(
        "It has no rights until a policy is attached: rampart policy attach POLICY service:{name}"
    );
    Ok(())
}

pub async fn add_claim(
    data_dir: &Path,
    name: &str,
    out: &Path,
    max_uses: Option<i64>,
    valid_for: Duration,
    force: bool,
) -> Result<(), CliError> {
    if max_uses.is_some_and(|m| m < 1) {
        return Err(CliError::new("--max-uses must be at least 1", None));
    }
    let (dir, cfg, store) = super::open(data_dir).await?;
    let alg = cfg.key_algorithm().map_err(|e| CliError::new(e, None))?;
    let added = ops::add_identity(
        &dir,
        &cfg,
        &*store,
        IdentityKind::Claim,
        name,
        KeySource::Generate(alg),
        Some(out),
        force,
        Some(valid_for),
    )
    .await?;
    store
        .set_claim_limits(name, max_uses, Some(OffsetDateTime::now_utc() + valid_for))
        .await?;
    // The claim bundle uses the file names agents expect for it.
    for (from, to) in [("device.key", "claim.key"), ("device.crt", "claim.crt")] {
        let (f, t) = (out.join(from), out.join(to));
        if t.exists() && !force {
            return Err(CliError::new(
                format!("{} exists; pass --force", t.display()),
                None,
            ));
        }
        std::fs::rename(&f, &t)
            .map_err(|e| CliError::new(format!("{}: {e}", t.display()), None))?;
    }
    let address = super::device::default_hub_address(&cfg);
    files::write_public(
        &out.join("agent.toml"),
        rampart_agent::AgentConfig::provisioning_template(&address).as_bytes(),
        force,
    )
    .map_err(|e| CliError::new(e.to_string(), None))?;
    println!("Created claim {name}: {}", out.display());
    println!(
        "  claim.key (0600), claim.crt, ca-chain.crt, agent.toml (set serial_number per device)"
    );
    println!(
        "  uses: {}, valid until {}",
        max_uses
            .map(|m| m.to_string())
            .unwrap_or_else(|| "unlimited".into()),
        when(Some(added.cert.info.not_after))
    );
    println!("Devices provision with it only if their serial number is allowed:");
    println!(
        "  rampart provision allow SERIAL --data-dir {}   (or set provisioning.hook_command / hook_url)",
        data_dir.display()
    );
    Ok(())
}

pub async fn allow(
    data_dir: &Path,
    serial: &str,
    device_id: Option<String>,
    group: Option<String>,
    attrs: &[String],
) -> Result<(), CliError> {
    let (_, _, store) = super::open(data_dir).await?;
    let entry = AllowEntry {
        serial_number: serial.to_owned(),
        device_id: device_id.clone(),
        group,
        attributes: super::pairs(attrs, "--attr")?,
    };
    ops::allow_serial(&*store, entry).await?;
    println!(
        "Serial {serial} may provision once, as device {}.",
        device_id.as_deref().unwrap_or(serial)
    );
    Ok(())
}
