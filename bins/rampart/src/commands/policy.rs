//! `rampart policy ...`.

use std::path::Path;

use rampart_hub::ops;
use rampart_policy::{Finding, Severity};

use super::when;
use crate::CliError;

fn read(file: &Path) -> Result<String, CliError> {
    std::fs::read_to_string(file)
        .map_err(|e| CliError::new(format!("cannot read {}: {e}", file.display()), None))
}

fn print_findings(findings: &[Finding]) {
    for f in findings {
        println!("{}: {}: {}", f.severity.as_str(), f.statement, f.message);
        println!("  hint: {}", f.hint);
    }
}

pub async fn put(data_dir: &Path, file: &Path) -> Result<(), CliError> {
    let text = read(file)?;
    let (dir, _, store) = super::open(data_dir).await?;
    let (doc, version, findings) = ops::put_policy(&dir, &*store, &text).await?;
    print_findings(&findings);
    println!("Stored policy {} version {version}.", doc.name);
    Ok(())
}

pub async fn list(data_dir: &Path) -> Result<(), CliError> {
    let (_, _, store) = super::open(data_dir).await?;
    println!(
        "{:24} {:>7} {:26} ATTACHED TO",
        "POLICY", "VERSION", "UPDATED"
    );
    for (p, targets) in ops::list_policies(&*store).await? {
        println!(
            "{:24} {:>7} {:26} {}",
            p.name,
            p.version,
            when(Some(p.updated_at)),
            if targets.is_empty() {
                "-".into()
            } else {
                targets.join(", ")
            }
        );
    }
    Ok(())
}

pub async fn show(data_dir: &Path, name: &str, version: Option<i64>) -> Result<(), CliError> {
    let (_, _, store) = super::open(data_dir).await?;
    let p = ops::show_policy(&*store, name, version).await?;
    println!(
        "# policy {} version {} ({})",
        p.name,
        p.version,
        when(Some(p.updated_at))
    );
    print!("{}", p.document);
    Ok(())
}

pub async fn attach(data_dir: &Path, name: &str, target: &str, on: bool) -> Result<(), CliError> {
    let (dir, _, store) = super::open(data_dir).await?;
    ops::attach_policy(&dir, &*store, name, target, on).await?;
    println!(
        "{} {name} {} {target}.",
        if on { "Attached" } else { "Detached" },
        if on { "to" } else { "from" }
    );
    Ok(())
}

pub async fn delete(data_dir: &Path, name: &str) -> Result<(), CliError> {
    let (dir, _, store) = super::open(data_dir).await?;
    ops::delete_policy(&dir, &*store, name).await?;
    println!("Deleted policy {name}.");
    Ok(())
}

/// Lints a file; the process exits 1 when there are errors or warnings.
pub fn lint(file: &Path) -> Result<(), CliError> {
    let text = read(file)?;
    let (doc, findings) = ops::check_policy(&text)?;
    print_findings(&findings);
    let serious = findings
        .iter()
        .filter(|f| f.severity >= Severity::Warning)
        .count();
    if serious > 0 {
        return Err(CliError::new(
            format!("policy {}: {serious} finding(s) need attention", doc.name),
            Some("fix the statements above, or attach the policy only where they are intended"),
        ));
    }
    println!(
        "policy {}: {} statement(s), no problems found.",
        doc.name,
        doc.statements.len()
    );
    Ok(())
}
