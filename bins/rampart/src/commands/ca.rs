//! `rampart ca ...`.

use std::path::Path;

use rampart_hub::ops;
use rampart_store::CaTemplate;

use super::when;
use crate::CliError;

pub async fn register(
    data_dir: &Path,
    cert: &Path,
    pending: bool,
    group: Option<String>,
    policy: Option<String>,
    attrs: &[String],
) -> Result<(), CliError> {
    let pem = std::fs::read_to_string(cert)
        .map_err(|e| CliError::new(format!("cannot read {}: {e}", cert.display()), None))?;
    let (dir, _, store) = super::open(data_dir).await?;
    let template = CaTemplate {
        group,
        policy,
        attributes: super::pairs(attrs, "--attr")?,
    };
    let ca = ops::register_ca(&dir, &*store, &pem, !pending, template).await?;
    println!("Trusted {} (sha256:{}).", ca.subject, ca.fingerprint);
    println!(
        "Devices it certified are registered on first connect as {}.",
        if pending {
            "pending until `rampart device approve ID`"
        } else {
            "active"
        }
    );
    Ok(())
}

pub async fn list(data_dir: &Path, json: bool) -> Result<(), CliError> {
    let (_, _, store) = super::open(data_dir).await?;
    let cas = store.trusted_cas().await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&cas).unwrap_or_default());
        return Ok(());
    }
    if cas.is_empty() {
        println!(
            "No CA is registered for just-in-time registration (only the device CA is trusted)."
        );
    }
    for c in cas {
        println!(
            "{}\n  sha256:{}\n  new devices: {}, group {}, policy {}, added {}",
            c.subject,
            c.fingerprint,
            if c.auto_activate {
                "active"
            } else {
                "pending approval"
            },
            c.template.group.as_deref().unwrap_or("-"),
            c.template.policy.as_deref().unwrap_or("-"),
            when(Some(c.added_at))
        );
    }
    Ok(())
}

pub async fn crl(data_dir: &Path, out: Option<&Path>) -> Result<(), CliError> {
    let (dir, cfg, store) = super::open(data_dir).await?;
    let pem = ops::publish_crl(&dir, &cfg, &*store).await?;
    match out {
        Some(p) => {
            std::fs::write(p, &pem)
                .map_err(|e| CliError::new(format!("{}: {e}", p.display()), None))?;
            println!(
                "CRL written to {} (also {}).",
                p.display(),
                dir.resolve(&cfg.pki.crl_file).display()
            );
        }
        None => print!("{pem}"),
    }
    Ok(())
}
