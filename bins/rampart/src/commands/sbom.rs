//! `rampart sbom` and `rampart vuln`: bills of materials and vulnerability matching.

use std::path::{Path, PathBuf};

use clap::Subcommand;
use rampart_compliance::sbom::{self, Sbom, cargo::CargoOptions};
use rampart_hub::compliance as cra;

use crate::{CliError, DataDirArg};

#[derive(Subcommand)]
pub enum SbomCommand {
    /// SBOM of a Rust package from its workspace (cargo metadata + Cargo.lock): what ships in
    /// its binary on the target platform, with licences, hashes and the dependency graph.
    Cargo {
        /// Cargo.toml of the workspace or package.
        #[arg(long, value_name = "PATH")]
        manifest_path: PathBuf,
        /// The package to describe (default: the first workspace member).
        #[arg(long)]
        package: Option<String>,
        #[command(flatten)]
        out: OutputArgs,
        /// Target triple whose dependencies count (default: the host's).
        #[arg(long)]
        target: Option<String>,
        /// The built binary: its SHA-512 becomes the root component's hash.
        #[arg(long, value_name = "FILE")]
        binary: Option<PathBuf>,
        /// The manufacturer (SBOM author and the root's supplier).
        #[arg(long)]
        manufacturer: Option<String>,
        #[command(flatten)]
        attach: AttachArgs,
    },
    /// SBOM of a firmware release from a component manifest (TOML; see docs/compliance.md).
    Firmware {
        /// The component manifest (TOML; see docs/compliance.md).
        manifest: PathBuf,
        #[command(flatten)]
        out: OutputArgs,
        #[command(flatten)]
        attach: AttachArgs,
    },
    /// Read an SBOM made by another tool (CycloneDX 1.4-1.6 or SPDX 2.3 JSON), check it, and
    /// attach it to a release of a product.
    Ingest {
        /// The SBOM (CycloneDX 1.4-1.6 or SPDX 2.3 JSON).
        file: PathBuf,
        #[command(flatten)]
        attach: AttachArgs,
    },
    /// Write the stored SBOM of a release.
    Export {
        /// The product.
        product: String,
        /// The release whose SBOM to write.
        release: String,
        #[command(flatten)]
        out: OutputArgs,
        #[command(flatten)]
        dir: DataDirArg,
    },
}

#[derive(clap::Args)]
pub struct OutputArgs {
    /// cyclonedx (CycloneDX 1.6 JSON), spdx (SPDX 2.3 JSON) or spdx3 (SPDX 3.0.1 JSON-LD).
    #[arg(long, default_value = "cyclonedx", value_name = "cyclonedx|spdx|spdx3")]
    format: String,
    /// Where to write it (default: standard output).
    #[arg(long, value_name = "FILE")]
    out: Option<PathBuf>,
}

/// Attaching an SBOM to a product release in the hub's store.
#[derive(clap::Args)]
pub struct AttachArgs {
    /// Attach the SBOM to this product (needs --release and --data-dir).
    #[arg(long, requires = "release")]
    product: Option<String>,
    /// The release the SBOM describes.
    #[arg(long, requires = "product")]
    release: Option<String>,
    /// The hub's data directory (for --product).
    #[arg(long, env = "RAMPART_DATA_DIR", value_name = "DIR")]
    data_dir: Option<PathBuf>,
}

#[derive(Subcommand)]
pub enum VulnCommand {
    /// Import OSV advisories (a directory of OSV JSON, e.g. RustSec's osv export, or an
    /// ecosystem's all.zip). Every record is checked first: one invalid record refuses the
    /// import unless --skip-invalid.
    Import {
        /// A directory of OSV JSON files (searched recursively) or a ZIP of them (e.g. an OSV ecosystem export).
        path: PathBuf,
        #[command(flatten)]
        dir: DataDirArg,
        /// Skip invalid records (listed) instead of refusing the import.
        #[arg(long)]
        skip_invalid: bool,
        /// Print JSON instead of text (for scripts).
        #[arg(long)]
        json: bool,
    },
    /// Match an SBOM (CycloneDX/SPDX JSON) or a Cargo.lock against the imported advisories.
    /// Exits 1 when an open vulnerability (not informational, not suppressed by VEX) is found.
    Scan {
        /// A CycloneDX or SPDX JSON SBOM, or a Cargo.lock.
        file: PathBuf,
        #[command(flatten)]
        dir: DataDirArg,
        /// Apply the VEX statements of this product release, PRODUCT@RELEASE.
        #[arg(long, value_name = "PRODUCT@RELEASE")]
        vex: Option<String>,
        /// Print JSON instead of text (for scripts).
        #[arg(long)]
        json: bool,
    },
    /// For every vulnerability in any release's SBOM: the releases, the devices that run them
    /// and their Member States (device attribute member_state).
    Fleet {
        #[command(flatten)]
        dir: DataDirArg,
        /// Print JSON instead of text (for scripts).
        #[arg(long)]
        json: bool,
    },
}

fn render(sbom: &Sbom, format: &str) -> Result<String, CliError> {
    let v = match format {
        "cyclonedx" => sbom::cyclonedx::write(sbom),
        "spdx" => sbom::spdx::write(sbom),
        "spdx3" => sbom::spdx3::write(sbom),
        other => {
            return Err(CliError::new(
                format!("unknown SBOM format {other:?}"),
                Some("use --format cyclonedx, --format spdx (2.3) or --format spdx3 (3.0.1)"),
            ));
        }
    };
    serde_json::to_string_pretty(&v).map_err(|e| CliError::new(e.to_string(), None))
}

fn emit(sbom: &Sbom, out: &OutputArgs) -> Result<(), CliError> {
    let text = render(sbom, &out.format)? + "\n";
    match &out.out {
        Some(path) => {
            cra::write_text(path, &text)?;
            eprintln!(
                "wrote {} ({} components, {})",
                path.display(),
                sbom.components.len() + 1,
                out.format
            );
        }
        None => print!("{text}"),
    }
    Ok(())
}

async fn attach(sbom: &Sbom, a: &AttachArgs) -> Result<(), CliError> {
    let (Some(product), Some(release)) = (&a.product, &a.release) else {
        return Ok(());
    };
    let Some(dir) = &a.data_dir else {
        return Err(CliError::new(
            "--product needs the hub's --data-dir",
            Some("pass --data-dir DIR or set RAMPART_DATA_DIR"),
        ));
    };
    let (_, _, store) = super::open(dir).await?;
    cra::sbom_attach(&*store, product, release, sbom).await?;
    eprintln!("attached to {product} {release}");
    Ok(())
}

pub async fn run(cmd: SbomCommand) -> Result<(), CliError> {
    match cmd {
        SbomCommand::Cargo {
            manifest_path,
            package,
            out,
            target,
            binary,
            manufacturer,
            attach: a,
        } => {
            let s = sbom::cargo::from_workspace(&CargoOptions {
                manifest_path,
                package,
                target,
                binary,
                manufacturer,
                created: None,
            })
            .map_err(compliance_error)?;
            emit(&s, &out)?;
            attach(&s, &a).await
        }
        SbomCommand::Firmware {
            manifest,
            out,
            attach: a,
        } => {
            let s = sbom::firmware::from_manifest(&manifest).map_err(compliance_error)?;
            emit(&s, &out)?;
            attach(&s, &a).await
        }
        SbomCommand::Ingest { file, attach: a } => {
            let s = sbom::ingest::read_file(&file).map_err(compliance_error)?;
            println!(
                "{}: {} {} with {} components ({})",
                file.display(),
                s.root.name,
                s.root.version,
                s.components.len() + 1,
                s.source_format.as_deref().unwrap_or("?")
            );
            if a.product.is_none() {
                return Err(CliError::new(
                    "the SBOM is valid but was not stored: say which release it describes",
                    Some("add --product NAME --release VERSION --data-dir DIR"),
                ));
            }
            attach(&s, &a).await
        }
        SbomCommand::Export {
            product,
            release,
            out,
            dir,
        } => {
            let (_, _, store) = super::open(&dir.data_dir).await?;
            let s = cra::sbom(&*store, &product, &release).await?;
            emit(&s, &out)
        }
    }
}

pub fn compliance_error(e: rampart_compliance::ComplianceError) -> CliError {
    CliError::new(e.to_string(), e.hint())
}

/// Reads an SBOM or a Cargo.lock (by content: a TOML lockfile or a JSON SBOM).
fn read_scan_input(path: &Path) -> Result<Sbom, CliError> {
    let is_lock = path.file_name().is_some_and(|n| n == "Cargo.lock")
        || std::fs::read_to_string(path)
            .map(|t| t.trim_start().starts_with('#') || t.contains("[[package]]"))
            .unwrap_or(false);
    if is_lock {
        sbom::cargo::sbom_from_lockfile(path).map_err(compliance_error)
    } else {
        sbom::ingest::read_file(path).map_err(compliance_error)
    }
}

pub async fn vuln(cmd: VulnCommand) -> Result<(), CliError> {
    match cmd {
        VulnCommand::Import {
            path,
            dir,
            skip_invalid,
            json,
        } => {
            let (_, _, store) = super::open(&dir.data_dir).await?;
            let stats = cra::vuln_import(&*store, &path, skip_invalid).await?;
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&stats).unwrap_or_default()
                );
            } else {
                for s in &stats.skipped {
                    eprintln!("skipped: {s}");
                }
                println!(
                    "imported {} advisories from {} files ({} new, {} skipped); {} in the store",
                    stats.advisories,
                    stats.files,
                    stats.new,
                    stats.skipped.len(),
                    stats.total_in_store
                );
            }
            Ok(())
        }
        VulnCommand::Scan {
            file,
            dir,
            vex,
            json,
        } => {
            let s = read_scan_input(&file)?;
            let (_, _, store) = super::open(&dir.data_dir).await?;
            let vex_for = match &vex {
                Some(v) => Some(
                    v.split_once('@')
                        .ok_or_else(|| CliError::new("--vex takes PRODUCT@RELEASE", None))?,
                ),
                None => None,
            };
            let report = cra::scan_sbom(&*store, &s, vex_for).await?;
            let open_vulns = report.open().filter(|f| f.informational.is_none()).count();
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&report).unwrap_or_default()
                );
            } else {
                println!(
                    "{} components scanned ({} without a matchable purl)",
                    report.components,
                    report.unmatchable.len()
                );
                for f in &report.findings {
                    let kind = f.informational.as_deref().unwrap_or("vulnerability");
                    let suppressed = f
                        .suppressed_by
                        .as_ref()
                        .map(|s| {
                            format!(
                                "  [VEX {}: {}]",
                                s.status.as_str(),
                                s.justification
                                    .clone()
                                    .or_else(|| s.impact_statement.clone())
                                    .unwrap_or_default()
                            )
                        })
                        .unwrap_or_default();
                    println!(
                        "{:20} {:14} {}@{}  {}{}{}",
                        f.advisory,
                        kind,
                        f.package,
                        f.version,
                        f.summary,
                        if f.fixed_in.is_empty() {
                            String::new()
                        } else {
                            format!(" (fixed in {})", f.fixed_in.join(", "))
                        },
                        suppressed
                    );
                }
                for n in &report.not_evaluated {
                    println!(
                        "NOT EVALUATED {} {}@{}: {}",
                        n.advisory, n.package, n.version, n.reason
                    );
                }
                println!(
                    "{open_vulns} open vulnerabilities, {} informational, {} suppressed by VEX, {} not evaluated",
                    report
                        .findings
                        .iter()
                        .filter(|f| f.informational.is_some())
                        .count(),
                    report
                        .findings
                        .iter()
                        .filter(|f| f.suppressed_by.is_some())
                        .count(),
                    report.not_evaluated.len()
                );
            }
            if open_vulns > 0 || !report.not_evaluated.is_empty() {
                std::process::exit(1);
            }
            Ok(())
        }
        VulnCommand::Fleet { dir, json } => {
            let (_, _, store) = super::open(&dir.data_dir).await?;
            let rows = cra::fleet(&*store).await?;
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&rows).unwrap_or_default()
                );
                return Ok(());
            }
            if rows.is_empty() {
                println!("no vulnerability in any release's SBOM");
            }
            for r in &rows {
                println!(
                    "{} ({}): {}",
                    r.advisory,
                    r.informational.as_deref().unwrap_or("vulnerability"),
                    r.summary
                );
                println!("  packages: {}", r.packages.join(", "));
                println!(
                    "  releases: {}",
                    if r.releases.is_empty() {
                        "-".into()
                    } else {
                        r.releases.join(", ")
                    }
                );
                let states: Vec<String> = r
                    .devices_by_member_state
                    .iter()
                    .map(|(m, n)| format!("{m}: {n}"))
                    .collect();
                println!("  devices: {} ({})", r.devices, states.join(", "));
                for (rel, s) in &r.suppressed {
                    println!(
                        "  suppressed in {rel} by VEX {}: {}",
                        s.status.as_str(),
                        s.justification
                            .clone()
                            .or_else(|| s.impact_statement.clone())
                            .unwrap_or_default()
                    );
                }
            }
            Ok(())
        }
    }
}
