//! `rampart product`, `rampart vex` and `rampart cra`: product records, classification, VEX,
//! advisories, Article 14 reports and the Annex V/VII documents.

use std::io::BufRead;
use std::path::PathBuf;

use clap::Subcommand;
use rampart_compliance::classify::{self, Answer, CATEGORIES};
use rampart_compliance::report::{self, ReportKind, Stage};
use rampart_compliance::vex::{self, VexStatement, VexStatus};
use rampart_hub::compliance as cra;

use super::sbom::compliance_error;
use crate::{CliError, DataDirArg};

#[derive(Subcommand)]
pub enum ProductCommand {
    /// Add or update a product from a TOML record (see docs/compliance.md for every field).
    Add {
        /// The product record (TOML).
        file: PathBuf,
        #[command(flatten)]
        dir: DataDirArg,
    },
    /// List products.
    List {
        #[command(flatten)]
        dir: DataDirArg,
    },
    /// Show a product record.
    Show {
        /// The product's name.
        name: String,
        #[command(flatten)]
        dir: DataDirArg,
    },
}

#[derive(Subcommand)]
pub enum VexCommand {
    /// Record what a vulnerability means for a product (or one release: PRODUCT@RELEASE).
    Set {
        /// The product (or PRODUCT@RELEASE for one release).
        product: String,
        /// The vulnerability: advisory id, CVE or GHSA.
        vulnerability: String,
        #[command(flatten)]
        dir: DataDirArg,
        /// not_affected, affected, fixed or under_investigation.
        #[arg(long)]
        status: String,
        /// For not_affected: component_not_present, vulnerable_code_not_present,
        /// vulnerable_code_not_in_execute_path, vulnerable_code_cannot_be_controlled_by_adversary,
        /// inline_mitigations_already_exist.
        #[arg(long)]
        justification: Option<String>,
        /// Why it has no impact (not_affected), in words.
        #[arg(long)]
        impact: Option<String>,
        /// What users should do (required for affected).
        #[arg(long)]
        action: Option<String>,
        /// Who says so (default: the manufacturer of the product).
        #[arg(long)]
        author: Option<String>,
    },
    /// List VEX statements.
    List {
        #[command(flatten)]
        dir: DataDirArg,
        /// Only this product's statements.
        #[arg(long)]
        product: Option<String>,
    },
    /// Export a product's statements as OpenVEX 0.2 or CycloneDX 1.6 VEX.
    Export {
        /// The product whose statements to export.
        product: String,
        #[command(flatten)]
        dir: DataDirArg,
        /// openvex (OpenVEX 0.2) or cyclonedx (CycloneDX 1.6 VEX).
        #[arg(long, default_value = "openvex", value_name = "openvex|cyclonedx")]
        format: String,
        /// Where to write it (default: standard output).
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
pub enum CraCommand {
    /// List the Annex III and IV categories the classification asks about.
    Categories,
    /// Classify a product: a guided questionnaire over the Annex III (class I and II) and
    /// Annex IV categories, read from standard input (y/n per category, then the rationale),
    /// or given with --yes and --rationale.
    Classify {
        /// The product to classify.
        product: String,
        #[command(flatten)]
        dir: DataDirArg,
        /// A category the product's core functionality falls in (e.g. I.12); every other
        /// category is answered "no". Repeatable. With --rationale, no questions are asked.
        #[arg(long = "yes", value_name = "CATEGORY")]
        yes: Vec<String>,
        /// Why (required).
        #[arg(long)]
        rationale: Option<String>,
        /// Who decided.
        #[arg(long, default_value = "operator")]
        by: String,
    },
    /// Write CSAF 2.0 advisories for the product's fixed vulnerabilities (from VEX), the VEX
    /// profile, provider-metadata.json and security.txt, in the .well-known layout under --out.
    Advisory {
        /// The product whose advisories to write.
        product: String,
        #[command(flatten)]
        dir: DataDirArg,
        /// The publication directory (created; .well-known layout inside).
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
        /// What users should do, e.g. "Update to 2.1.1 (installed automatically)".
        #[arg(long, default_value = "Install the release that fixes it.")]
        remediation: String,
    },
    /// Article 14 reports: clocks, submissions, drafts for the single reporting platform.
    #[command(subcommand)]
    Report(ReportCommand),
    /// Attach a file to a product's technical documentation (its SHA-256 is recorded).
    Attach {
        /// The product the file documents.
        product: String,
        /// The file to attach (copied into the data directory).
        file: PathBuf,
        #[command(flatten)]
        dir: DataDirArg,
        /// test-report, risk-assessment, architecture, photo, standard or other.
        #[arg(long)]
        kind: String,
        /// A title for the table of contents.
        #[arg(long)]
        title: String,
    },
    /// Write the Annex VII technical documentation and the Annex V declaration of conformity
    /// (Markdown and HTML) from the records, with every gap shown.
    Docs {
        /// The product to document.
        product: String,
        #[command(flatten)]
        dir: DataDirArg,
        /// The directory to write the documents into.
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
        /// Who signs the declaration.
        #[arg(long, requires_all = ["function", "place"])]
        signatory: Option<String>,
        /// The signatory's function (e.g. Managing Director).
        #[arg(long)]
        function: Option<String>,
        /// Where the declaration is signed.
        #[arg(long)]
        place: Option<String>,
    },
}

#[derive(Subcommand)]
pub enum ReportCommand {
    /// Open a report: computes the early-warning, notification and final-report deadlines.
    New {
        #[command(flatten)]
        dir: DataDirArg,
        /// exploited-vulnerability or severe-incident.
        #[arg(long)]
        kind: String,
        /// The product concerned.
        #[arg(long)]
        product: String,
        /// A short title.
        #[arg(long)]
        title: String,
        /// When the manufacturer became aware (RFC 3339, e.g. 2026-11-23T08:00:00Z).
        #[arg(long, value_name = "TIME")]
        aware_at: String,
        /// The exploited vulnerability (CVE or other id).
        #[arg(long)]
        vulnerability: Option<String>,
    },
    /// List reports with their next deadline.
    List {
        #[command(flatten)]
        dir: DataDirArg,
        /// Print JSON instead of text (for scripts).
        #[arg(long)]
        json: bool,
    },
    /// A report's deadlines and its append-only history.
    Show {
        /// The report's id (e.g. CRA-2026-0001).
        id: String,
        #[command(flatten)]
        dir: DataDirArg,
        /// Print JSON instead of text (for scripts).
        #[arg(long)]
        json: bool,
    },
    /// Record that a stage was submitted (early-warning, notification, final-report).
    Submit {
        /// The report's id (e.g. CRA-2026-0001).
        id: String,
        /// early-warning, notification or final-report.
        stage: String,
        #[command(flatten)]
        dir: DataDirArg,
        /// When (default: now).
        #[arg(long, value_name = "TIME")]
        at: Option<String>,
    },
    /// Record when a corrective or mitigating measure became available (starts the 14-day
    /// final-report clock of an exploited vulnerability).
    Measure {
        /// The report's id (e.g. CRA-2026-0001).
        id: String,
        #[command(flatten)]
        dir: DataDirArg,
        /// When the measure became available (default: now).
        #[arg(long, value_name = "TIME")]
        at: Option<String>,
    },
    /// Warn about deadlines due within --warn or overdue; records each warning in the report's
    /// history and exits 1 if there is any (for cron or an alerting check).
    Check {
        #[command(flatten)]
        dir: DataDirArg,
        /// Warn about stages due within this time, e.g. 6h.
        #[arg(long, default_value = "6h")]
        warn: humantime::Duration,
        /// Check as of this time (default: now).
        #[arg(long, value_name = "TIME")]
        at: Option<String>,
        /// Print JSON instead of text (for scripts).
        #[arg(long)]
        json: bool,
    },
    /// Draft a stage's fields for the single reporting platform, for copy and paste.
    Draft {
        /// The report's id (e.g. CRA-2026-0001).
        id: String,
        /// early-warning, notification or final-report.
        stage: String,
        #[command(flatten)]
        dir: DataDirArg,
        /// Print JSON instead of text (for scripts).
        #[arg(long)]
        json: bool,
    },
    /// Write the machine-readable user notification (Art. 14(8)).
    Notify {
        /// The report's id (e.g. CRA-2026-0001).
        id: String,
        #[command(flatten)]
        dir: DataDirArg,
        /// What users should do.
        #[arg(long)]
        action: String,
        /// Where to write it (default: standard output).
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
    },
}

fn time_arg(s: &Option<String>) -> Result<time::OffsetDateTime, CliError> {
    match s {
        Some(s) => report::parse_time(s).map_err(compliance_error),
        None => Ok(time::OffsetDateTime::now_utc()
            .replace_nanosecond(0)
            .unwrap_or(time::OffsetDateTime::UNIX_EPOCH)),
    }
}

fn print_json<T: serde::Serialize>(v: &T) {
    println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
}

fn write_or_print(out: &Option<PathBuf>, v: &serde_json::Value) -> Result<(), CliError> {
    let text = serde_json::to_string_pretty(v).unwrap_or_default() + "\n";
    match out {
        Some(p) => {
            cra::write_text(p, &text)?;
            eprintln!("wrote {}", p.display());
        }
        None => print!("{text}"),
    }
    Ok(())
}

pub async fn product(cmd: ProductCommand) -> Result<(), CliError> {
    match cmd {
        ProductCommand::Add { file, dir } => {
            let (_, _, store) = super::open(&dir.data_dir).await?;
            let p = cra::product_put(&*store, &file).await?;
            println!(
                "product {:?} stored: support until {}, {} release(s), made available in {}",
                p.name,
                p.end_of_support(),
                p.releases.len(),
                p.member_states.join(", ")
            );
            Ok(())
        }
        ProductCommand::List { dir } => {
            let (_, _, store) = super::open(&dir.data_dir).await?;
            for p in cra::products(&*store).await? {
                println!(
                    "{:30} {:30} support until {}  releases {}",
                    p.name,
                    p.product_type,
                    p.end_of_support(),
                    p.releases.join(", ")
                );
            }
            Ok(())
        }
        ProductCommand::Show { name, dir } => {
            let (_, _, store) = super::open(&dir.data_dir).await?;
            print_json(&cra::product(&*store, &name).await?);
            Ok(())
        }
    }
}

pub async fn vex_cmd(cmd: VexCommand) -> Result<(), CliError> {
    match cmd {
        VexCommand::Set {
            product,
            vulnerability,
            dir,
            status,
            justification,
            impact,
            action,
            author,
        } => {
            let (_, _, store) = super::open(&dir.data_dir).await?;
            let name = product.split('@').next().unwrap_or(&product).to_owned();
            let p = cra::product(&*store, &name).await?;
            let s = VexStatement {
                product: product.clone(),
                vulnerability: vulnerability.clone(),
                status: VexStatus::parse(&status).map_err(compliance_error)?,
                justification,
                impact_statement: impact,
                action_statement: action,
                timestamp: report::rfc3339(time_arg(&None)?),
                author: author.unwrap_or(p.manufacturer.name),
            };
            cra::vex_put(&*store, &s).await?;
            println!("{product}: {vulnerability} is {}", s.status.as_str());
            Ok(())
        }
        VexCommand::List { dir, product } => {
            let (_, _, store) = super::open(&dir.data_dir).await?;
            for s in cra::vex_statements(&*store, product.as_deref()).await? {
                println!(
                    "{:30} {:22} {:20} {}",
                    s.product,
                    s.vulnerability,
                    s.status.as_str(),
                    [&s.justification, &s.impact_statement, &s.action_statement]
                        .iter()
                        .filter_map(|x| x.as_deref())
                        .collect::<Vec<_>>()
                        .join("; ")
                );
            }
            Ok(())
        }
        VexCommand::Export {
            product,
            dir,
            format,
            out,
        } => {
            let (_, _, store) = super::open(&dir.data_dir).await?;
            let p = cra::product(&*store, &product).await?;
            let statements = cra::vex_statements(&*store, Some(&product)).await?;
            if statements.is_empty() {
                return Err(CliError::new(
                    format!("no VEX statements for {product}"),
                    Some("record one with `rampart vex set`"),
                ));
            }
            let ids = |prod: &str| -> Vec<String> {
                match prod.split_once('@') {
                    Some((_, release)) => vec![p.release_id(release)],
                    None => p.releases.iter().map(|r| p.release_id(r)).collect(),
                }
            };
            let now = report::rfc3339(time_arg(&None)?);
            let doc = match format.as_str() {
                "openvex" => vex::openvex(
                    &format!(
                        "{}/vex/{}-{}",
                        p.cvd.advisories_url.trim_end_matches('/'),
                        product.replace(|c: char| !c.is_ascii_alphanumeric(), "-"),
                        now.replace(':', "")
                    ),
                    &p.manufacturer.name,
                    &now,
                    &statements,
                    &ids,
                ),
                "cyclonedx" => vex::cyclonedx_vex(&now, &statements, &ids),
                other => {
                    return Err(CliError::new(
                        format!("unknown VEX format {other:?}"),
                        Some("use openvex or cyclonedx"),
                    ));
                }
            };
            write_or_print(&out, &doc)
        }
    }
}

pub async fn run(cmd: CraCommand) -> Result<(), CliError> {
    match cmd {
        CraCommand::Categories => {
            for c in CATEGORIES {
                println!("{:6} {:28} {}", c.id, c.class.label(), c.title);
            }
            Ok(())
        }
        CraCommand::Classify {
            product,
            dir,
            yes,
            rationale,
            by,
        } => {
            let (_, _, store) = super::open(&dir.data_dir).await?;
            cra::product(&*store, &product).await?;
            let (answers, rationale) = match rationale {
                Some(r) => (
                    CATEGORIES
                        .iter()
                        .map(|c| Answer {
                            category: c.id.into(),
                            yes: yes.iter().any(|y| y == c.id),
                        })
                        .collect::<Vec<_>>(),
                    r,
                ),
                None => questionnaire()?,
            };
            for y in &yes {
                if !CATEGORIES.iter().any(|c| c.id == y) {
                    return Err(CliError::new(
                        format!("unknown category {y:?}"),
                        Some("list them with `rampart cra categories`"),
                    ));
                }
            }
            let now = report::rfc3339(time_arg(&None)?);
            let c = classify::classify(&product, &answers, &rationale, &now, &by)
                .map_err(compliance_error)?;
            cra::classification_put(&*store, &c).await?;
            println!("{product}: {}", c.class.label());
            println!("conformity assessment routes:");
            for r in &c.routes {
                println!("  - {r}");
            }
            Ok(())
        }
        CraCommand::Advisory {
            product,
            dir,
            out,
            remediation,
        } => {
            let (_, _, store) = super::open(&dir.data_dir).await?;
            let files = cra::advisories(&*store, &product, &out, &remediation).await?;
            for f in &files {
                println!("wrote {}", f.display());
            }
            println!(
                "wrote {}/.well-known/csaf/provider-metadata.json and {}/.well-known/security.txt",
                out.display(),
                out.display()
            );
            Ok(())
        }
        CraCommand::Report(cmd) => report_cmd(cmd).await,
        CraCommand::Attach {
            product,
            file,
            dir,
            kind,
            title,
        } => {
            let (_, _, store) = super::open(&dir.data_dir).await?;
            let a = cra::attach(&*store, &product, &kind, &title, &file).await?;
            println!(
                "attached {} ({}) to {product}: sha256 {}",
                a.title, a.kind, a.sha256
            );
            Ok(())
        }
        CraCommand::Docs {
            product,
            dir,
            out,
            signatory,
            function,
            place,
        } => {
            let (_, _, store) = super::open(&dir.data_dir).await?;
            let sig = match (signatory, function, place) {
                (Some(s), Some(f), Some(p)) => Some((s, f, p)),
                _ => None,
            };
            for f in cra::docs(&*store, &product, &out, sig).await? {
                println!("wrote {}", f.display());
            }
            Ok(())
        }
    }
}

/// Asks each category on standard input, then the rationale.
fn questionnaire() -> Result<(Vec<Answer>, String), CliError> {
    let stdin = std::io::stdin();
    let mut lines = stdin.lock().lines();
    let mut answers = Vec::new();
    eprintln!(
        "For each category: is it the product's core functionality? (Art. 7(1): integrating such \
         a component does not by itself make the product important.) Answer y or n."
    );
    for c in CATEGORIES {
        loop {
            eprint!("[{}] {} ({})? [y/n] ", c.id, c.title, c.class.label());
            let line = lines
                .next()
                .ok_or_else(|| {
                    CliError::new(
                        "the questionnaire ended early (end of input)",
                        Some("answer every category, or pass --yes and --rationale"),
                    )
                })?
                .map_err(|e| CliError::new(e.to_string(), None))?;
            match line.trim() {
                "y" | "yes" => {
                    answers.push(Answer {
                        category: c.id.into(),
                        yes: true,
                    });
                    break;
                }
                "n" | "no" => {
                    answers.push(Answer {
                        category: c.id.into(),
                        yes: false,
                    });
                    break;
                }
                _ => eprintln!("answer y or n"),
            }
        }
    }
    eprint!("Rationale (one line): ");
    let rationale = lines
        .next()
        .ok_or_else(|| CliError::new("no rationale given", None))?
        .map_err(|e| CliError::new(e.to_string(), None))?;
    Ok((answers, rationale))
}

async fn report_cmd(cmd: ReportCommand) -> Result<(), CliError> {
    match cmd {
        ReportCommand::New {
            dir,
            kind,
            product,
            title,
            aware_at,
            vulnerability,
        } => {
            let (_, _, store) = super::open(&dir.data_dir).await?;
            let kind = ReportKind::parse(&kind).map_err(compliance_error)?;
            let aware = report::parse_time(&aware_at).map_err(compliance_error)?;
            let r = cra::report_new(&*store, kind, &product, &title, aware, vulnerability).await?;
            println!("opened {} ({})", r.id, kind.as_str());
            print_deadlines(&r, time_arg(&None)?);
            Ok(())
        }
        ReportCommand::List { dir, json } => {
            let (_, _, store) = super::open(&dir.data_dir).await?;
            let now = time_arg(&None)?;
            let rs = cra::reports(&*store).await?;
            if json {
                let v: Vec<serde_json::Value> = rs
                    .iter()
                    .map(|r| {
                        serde_json::json!({
                            "report": r,
                            "deadlines": report::deadlines(r, now, time::Duration::hours(6)),
                        })
                    })
                    .collect();
                print_json(&v);
                return Ok(());
            }
            for r in &rs {
                let next = report::deadlines(r, now, time::Duration::hours(6))
                    .into_iter()
                    .find(|d| d.submitted_at.is_none());
                println!(
                    "{} {:24} {:20} {}  next: {}",
                    r.id,
                    r.kind.as_str(),
                    r.product,
                    r.title,
                    next.map(|d| format!(
                        "{} {}",
                        d.stage.as_str(),
                        d.due
                            .map(report::rfc3339)
                            .unwrap_or_else(|| "waiting".into())
                    ))
                    .unwrap_or_else(|| "done".into())
                );
            }
            Ok(())
        }
        ReportCommand::Show { id, dir, json } => {
            let (_, _, store) = super::open(&dir.data_dir).await?;
            let r = cra::report(&*store, &id).await?;
            let history = store_history(&*store, &id).await?;
            let now = time_arg(&None)?;
            if json {
                print_json(&serde_json::json!({
                    "report": r,
                    "deadlines": report::deadlines(&r, now, time::Duration::hours(6)),
                    "history": history,
                }));
                return Ok(());
            }
            println!("{} {} — {} ({})", r.id, r.kind.as_str(), r.title, r.product);
            println!("aware at {}", report::rfc3339(r.aware_at));
            print_deadlines(&r, now);
            println!("history:");
            for h in history {
                println!("  {} {:18} {}", report::rfc3339(h.at), h.action, h.detail);
            }
            Ok(())
        }
        ReportCommand::Submit { id, stage, dir, at } => {
            let (_, _, store) = super::open(&dir.data_dir).await?;
            let stage = Stage::parse(&stage).map_err(compliance_error)?;
            let r = cra::report_submit(&*store, &id, stage, time_arg(&at)?).await?;
            println!("{}: {} submitted", r.id, stage.as_str());
            print_deadlines(&r, time_arg(&None)?);
            Ok(())
        }
        ReportCommand::Measure { id, dir, at } => {
            let (_, _, store) = super::open(&dir.data_dir).await?;
            let r = cra::report_measure(&*store, &id, time_arg(&at)?).await?;
            print_deadlines(&r, time_arg(&None)?);
            Ok(())
        }
        ReportCommand::Check {
            dir,
            warn,
            at,
            json,
        } => {
            let (_, _, store) = super::open(&dir.data_dir).await?;
            let warn = time::Duration::try_from(std::time::Duration::from(warn))
                .map_err(|e| CliError::new(e.to_string(), None))?;
            let warnings = cra::report_check(&*store, time_arg(&at)?, warn).await?;
            if json {
                print_json(&warnings);
            } else if warnings.is_empty() {
                println!(
                    "no Article 14 deadline due within {}",
                    humantime::format_duration(warn.unsigned_abs())
                );
            } else {
                for w in &warnings {
                    println!(
                        "WARNING {} {} {} (due {})",
                        w.report,
                        w.stage.as_str(),
                        if w.state == report::State::Overdue {
                            "OVERDUE"
                        } else {
                            "due soon"
                        },
                        report::rfc3339(w.due)
                    );
                }
            }
            if !warnings.is_empty() {
                std::process::exit(1);
            }
            Ok(())
        }
        ReportCommand::Draft {
            id,
            stage,
            dir,
            json,
        } => {
            let (_, _, store) = super::open(&dir.data_dir).await?;
            let stage = Stage::parse(&stage).map_err(compliance_error)?;
            let fields = cra::report_draft(&*store, &id, stage).await?;
            if json {
                let m: serde_json::Map<String, serde_json::Value> =
                    fields.into_iter().map(|(k, v)| (k, v.into())).collect();
                print_json(&m);
            } else {
                for (k, v) in fields {
                    println!("{k}:\n  {v}");
                }
            }
            Ok(())
        }
        ReportCommand::Notify {
            id,
            dir,
            action,
            out,
        } => {
            let (_, _, store) = super::open(&dir.data_dir).await?;
            let v = cra::report_notification(&*store, &id, &action).await?;
            write_or_print(&out, &v)
        }
    }
}

async fn store_history(
    store: &dyn rampart_store::Store,
    id: &str,
) -> Result<Vec<rampart_store::HistoryEntry>, CliError> {
    Ok(store.history("report", id).await?)
}

fn print_deadlines(r: &report::Report, now: time::OffsetDateTime) {
    for d in report::deadlines(r, now, time::Duration::hours(6)) {
        println!(
            "  {:13} due {:25} {:14} {}{}",
            d.stage.as_str(),
            d.due.map(report::rfc3339).unwrap_or_else(|| "-".into()),
            format!("{:?}", d.state),
            d.basis,
            d.submitted_at
                .map(|s| format!("; submitted {}", report::rfc3339(s)))
                .unwrap_or_default()
        );
    }
}
