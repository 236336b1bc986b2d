//! `rampart audit` and `rampart log`.

use std::path::Path;

use rampart_hub::audit::Severity;
use rampart_hub::ops;

use super::when;
use crate::CliError;

pub async fn run(data_dir: &Path, json: bool) -> Result<(), CliError> {
    let (dir, cfg, store) = super::open(data_dir).await?;
    let (findings, live) = ops::run_audit(&dir, &cfg, &*store).await?;
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&findings).unwrap_or_default()
        );
    } else {
        if !live {
            println!("(no hub is running: live sessions were not checked)");
        }
        if findings.is_empty() {
            println!("No findings.");
        }
        for f in &findings {
            println!(
                "[{:?}] {}: {}: {}",
                f.severity, f.check, f.subject, f.message
            );
            println!("  fix: {}", f.hint);
        }
    }
    if findings.iter().any(|f| f.severity >= Severity::High) {
        return Err(CliError::new(
            format!(
                "{} finding(s) of high or critical severity",
                findings
                    .iter()
                    .filter(|f| f.severity >= Severity::High)
                    .count()
            ),
            None,
        ));
    }
    Ok(())
}

pub async fn log(data_dir: &Path, limit: u32, json: bool) -> Result<(), CliError> {
    let (_, _, store) = super::open(data_dir).await?;
    let entries = store.audit_log(limit).await?;
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&entries).unwrap_or_default()
        );
        return Ok(());
    }
    for e in entries {
        println!(
            "{:25} {:5} {:24} {:20} {}",
            when(Some(e.at)),
            e.actor,
            e.action,
            e.subject,
            e.detail
        );
    }
    Ok(())
}
