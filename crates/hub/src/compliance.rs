//! The CRA compliance operations: rampart-compliance's logic over the hub's store and
//! registry (which devices run which release, in which Member State).
//!
//! Record kinds in the store: `product`, `classification`, `sbom` (key `PRODUCT@RELEASE`),
//! `vex` (key `PRODUCT|VULN`), `report`, `attachment`, `advisory`. Every change is appended to
//! the compliance history.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use rampart_compliance::classify::Classification;
use rampart_compliance::documents::{Attachment, SbomFacts};
use rampart_compliance::osv::Advisory;
use rampart_compliance::product::Product;
use rampart_compliance::report::{Report, ReportKind, Stage};
use rampart_compliance::sbom::Sbom;
use rampart_compliance::scan::{self, ScanReport};
use rampart_compliance::srp::FleetImpact;
use rampart_compliance::vex::VexStatement;
use rampart_compliance::{ComplianceError, csaf, documents, report, srp};
use rampart_store::{AdvisoryRow, DeviceRelease, SbomComponentRow, Store};
use serde::Serialize;
use time::OffsetDateTime;

use crate::HubError;

/// The Member State attribute of a device (`rampart device set ID --attr member_state=DE`).
pub const MEMBER_STATE_ATTR: &str = "member_state";

/// The Member State a device is in, from its attribute (`unknown` without one).
fn member_state(devices: &[rampart_store::Device], device_id: &str) -> String {
    devices
        .iter()
        .find(|x| x.id == device_id)
        .and_then(|x| x.attributes.get(MEMBER_STATE_ATTR).cloned())
        .unwrap_or_else(|| "unknown".into())
}

fn now() -> OffsetDateTime {
    OffsetDateTime::now_utc()
        .replace_nanosecond(0)
        .unwrap_or(OffsetDateTime::UNIX_EPOCH)
}

fn json<T: Serialize>(v: &T) -> Result<String, HubError> {
    serde_json::to_string(v).map_err(|e| HubError::Invalid(e.to_string()))
}

fn parse<T: serde::de::DeserializeOwned>(kind: &str, body: &str) -> Result<T, HubError> {
    serde_json::from_str(body)
        .map_err(|e| HubError::Invalid(format!("stored {kind} record unreadable: {e}")))
}

// ---------------------------------------------------------------- products

/// Stores (creates or replaces) a product from its TOML file.
pub async fn product_put(store: &dyn Store, file: &Path) -> Result<Product, HubError> {
    let text = std::fs::read_to_string(file).map_err(|e| HubError::Io {
        path: file.to_owned(),
        source: e,
    })?;
    let p = Product::from_toml(&file.display().to_string(), &text)?;
    let existed = store.record("product", &p.name).await?.is_some();
    store
        .put_record(
            "product",
            &p.name,
            &json(&p)?,
            if existed { "updated" } else { "created" },
            &format!("from {}", file.display()),
        )
        .await?;
    Ok(p)
}

pub async fn product(store: &dyn Store, name: &str) -> Result<Product, HubError> {
    let body = store.record("product", name).await?.ok_or_else(|| {
        HubError::NotFound(format!(
            "no product {name:?}; add it with `rampart product add FILE` (see `rampart product list`)"
        ))
    })?;
    parse("product", &body)
}

pub async fn products(store: &dyn Store) -> Result<Vec<Product>, HubError> {
    store
        .records("product")
        .await?
        .iter()
        .map(|(_, b)| parse("product", b))
        .collect()
}

// ---------------------------------------------------------------- classification

pub async fn classification_put(store: &dyn Store, c: &Classification) -> Result<(), HubError> {
    product(store, &c.product).await?;
    store
        .put_record(
            "classification",
            &c.product,
            &json(c)?,
            "classified",
            &format!("{:?}: {}", c.class, c.rationale),
        )
        .await?;
    Ok(())
}

pub async fn classification(
    store: &dyn Store,
    product: &str,
) -> Result<Option<Classification>, HubError> {
    store
        .record("classification", product)
        .await?
        .map(|b| parse("classification", &b))
        .transpose()
}

// ---------------------------------------------------------------- SBOMs

/// Attaches an SBOM to a release of a product (adding the release to the product record if it
/// is new) and indexes its components for fleet joins.
pub async fn sbom_attach(
    store: &dyn Store,
    product_name: &str,
    release: &str,
    sbom: &Sbom,
) -> Result<(), HubError> {
    let mut p = product(store, product_name).await?;
    if !p.releases.iter().any(|r| r == release) {
        p.releases.push(release.to_owned());
        store
            .put_record(
                "product",
                &p.name,
                &json(&p)?,
                "release added",
                &format!("release {release} (with its SBOM)"),
            )
            .await?;
    }
    let rows: Vec<SbomComponentRow> = sbom
        .all_components()
        .map(|c| {
            let pkg = c.osv_package();
            SbomComponentRow {
                bom_ref: c.bom_ref.clone(),
                ecosystem: pkg.as_ref().map(|p| p.0.clone()),
                package: pkg.map(|p| p.1),
                version: c.version.clone(),
            }
        })
        .collect();
    let key = format!("{product_name}@{release}");
    store
        .put_record(
            "sbom",
            &key,
            &json(sbom)?,
            "sbom attached",
            &format!(
                "{} components ({})",
                sbom.components.len() + 1,
                sbom.source_format.as_deref().unwrap_or("generated")
            ),
        )
        .await?;
    store
        .put_sbom_components(product_name, release, &rows)
        .await?;
    Ok(())
}

pub async fn sbom(store: &dyn Store, product: &str, release: &str) -> Result<Sbom, HubError> {
    let body = store
        .record("sbom", &format!("{product}@{release}"))
        .await?
        .ok_or_else(|| {
            HubError::NotFound(format!(
                "no SBOM for {product} {release}; attach one with `rampart sbom ingest FILE --product {product} --release {release}`"
            ))
        })?;
    parse("sbom", &body)
}

// ---------------------------------------------------------------- OSV

/// What an import did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ImportStats {
    pub files: usize,
    pub advisories: usize,
    pub new: u64,
    pub total_in_store: u64,
    /// Invalid records skipped (only with `skip_invalid`): the errors.
    pub skipped: Vec<String>,
}

/// Imports OSV JSON from a directory or ZIP. Every record is validated before anything is
/// stored: one invalid record refuses the whole import (naming the file and the place) unless
/// `skip_invalid`, which skips and lists it. Records are stored in batches, one at a time in
/// memory.
pub async fn vuln_import(
    store: &dyn Store,
    path: &Path,
    skip_invalid: bool,
) -> Result<ImportStats, HubError> {
    let mut stats = ImportStats::default();
    let mut bad: BTreeSet<String> = BTreeSet::new();
    // Pass 1: validate everything, keep nothing but the names of bad files.
    let files = rampart_compliance::osv::for_each_file(
        path,
        &mut |name, text| match Advisory::parse(name, text) {
            Ok(_) => Ok(()),
            Err(e) if skip_invalid => {
                stats.skipped.push(e.to_string());
                bad.insert(name.to_owned());
                Ok(())
            }
            Err(e) => Err(e),
        },
    )?;
    stats.files = files;
    // Pass 2: store in batches. for_each_file is synchronous, so batches are handed over
    // through a channel to this task, which writes them.
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<AdvisoryRow>>(2);
    let path = path.to_owned();
    let reader = tokio::task::spawn_blocking(move || {
        let mut batch = Vec::with_capacity(500);
        let mut count = 0usize;
        rampart_compliance::osv::for_each_file(&path, &mut |name, text| {
            if bad.contains(name) {
                return Ok(());
            }
            let a = Advisory::parse(name, text)?;
            let mut packages: Vec<(String, String)> = a
                .affected
                .iter()
                .map(|x| (x.ecosystem.clone(), x.name.clone()))
                .collect();
            packages.sort();
            packages.dedup();
            batch.push(AdvisoryRow {
                id: a.id,
                modified: a.modified,
                body: a.json,
                packages,
            });
            count += 1;
            if batch.len() >= 500 {
                let full = std::mem::replace(&mut batch, Vec::with_capacity(500));
                if tx.blocking_send(full).is_err() {
                    return Err(ComplianceError::Rule("import stopped".into()));
                }
            }
            Ok(())
        })?;
        if !batch.is_empty() {
            let _ = tx.blocking_send(batch);
        }
        Ok::<usize, ComplianceError>(count)
    });
    while let Some(batch) = rx.recv().await {
        stats.new += store.import_advisories(&batch).await?;
    }
    stats.advisories = reader
        .await
        .map_err(|e| HubError::Invalid(format!("import task: {e}")))??;
    stats.total_in_store = store.advisory_count().await?;
    Ok(stats)
}

/// Scans an SBOM against the stored advisories, applying the VEX statements of `product`
/// (and of `product@release`) if given.
pub async fn scan_sbom(
    store: &dyn Store,
    sbom: &Sbom,
    vex_for: Option<(&str, &str)>,
) -> Result<ScanReport, HubError> {
    if store.advisory_count().await? == 0 {
        return Err(HubError::NotFound(
            "no advisories imported; run `rampart vuln import DIR|ZIP` first".into(),
        ));
    }
    let mut report = ScanReport {
        components: sbom.components.len() + 1,
        ..Default::default()
    };
    // The advisories of every package the SBOM names, fetched per ecosystem in batches;
    // each advisory parsed once even when it names several of the packages.
    let mut wanted: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for c in sbom.all_components() {
        if let Some((eco, pkg)) = c.osv_package() {
            wanted.entry(eco).or_default().insert(pkg);
        }
    }
    let mut parsed: BTreeMap<String, std::sync::Arc<Advisory>> = BTreeMap::new();
    let mut by_package: BTreeMap<(String, String), Vec<std::sync::Arc<Advisory>>> = BTreeMap::new();
    // Small batches keep only a batch's raw records in memory next to the parsed ones.
    const BATCH: usize = 100;
    for (eco, packages) in &wanted {
        let packages: Vec<String> = packages.iter().cloned().collect();
        for batch in packages.chunks(BATCH) {
            for (pkg, id, body) in store.advisories_for_packages(eco, batch).await? {
                let a = match parsed.get(&id) {
                    Some(a) => a.clone(),
                    None => {
                        let a = std::sync::Arc::new(Advisory::parse("store", &body)?);
                        parsed.insert(id, a.clone());
                        a
                    }
                };
                by_package.entry((eco.clone(), pkg)).or_default().push(a);
            }
        }
    }
    let none = Vec::new();
    for c in sbom.all_components() {
        let Some(key) = c.osv_package() else {
            report.unmatchable.push(format!("{}@{}", c.name, c.version));
            continue;
        };
        let advisories: Vec<&Advisory> = by_package
            .get(&key)
            .unwrap_or(&none)
            .iter()
            .map(|a| &**a)
            .collect();
        scan::match_component(c, &advisories, &mut report);
    }
    if let Some((product, release)) = vex_for {
        let statements = vex_statements(store, Some(product)).await?;
        let applicable: Vec<VexStatement> = statements
            .into_iter()
            .filter(|s| s.product == product || s.product == format!("{product}@{release}"))
            .collect();
        scan::apply_vex(&mut report, &applicable);
    }
    scan::sort(&mut report);
    Ok(report)
}

/// One vulnerability across the fleet.
#[derive(Debug, Clone, Serialize)]
pub struct FleetRow {
    pub advisory: String,
    pub aliases: Vec<String>,
    pub summary: String,
    pub informational: Option<String>,
    /// "PRODUCT@RELEASE" entries whose SBOM holds an affected component.
    pub releases: Vec<String>,
    pub packages: Vec<String>,
    pub devices: u64,
    pub devices_by_member_state: BTreeMap<String, u64>,
    /// Releases where VEX suppresses it, with the statement.
    pub suppressed: Vec<(String, VexStatement)>,
}

/// The fleet view: every vulnerability in any release's SBOM, with the devices that run an
/// affected release and their Member States. VEX-suppressed releases are listed apart.
pub async fn fleet(store: &dyn Store) -> Result<Vec<FleetRow>, HubError> {
    let devices = store.devices().await?;
    let releases = store.device_releases().await?;
    let mut rows: BTreeMap<String, FleetRow> = BTreeMap::new();
    for (key, body) in store.records("sbom").await? {
        let sbom: Sbom = parse("sbom", &body)?;
        let Some((product, release)) = key.split_once('@') else {
            continue;
        };
        let report = scan_sbom(store, &sbom, Some((product, release))).await?;
        let on_release: Vec<&DeviceRelease> = releases
            .iter()
            .filter(|d| d.product == product && d.release == release)
            .collect();
        for f in &report.findings {
            let row = rows.entry(f.advisory.clone()).or_insert_with(|| FleetRow {
                advisory: f.advisory.clone(),
                aliases: f.aliases.clone(),
                summary: f.summary.clone(),
                informational: f.informational.clone(),
                releases: Vec::new(),
                packages: Vec::new(),
                devices: 0,
                devices_by_member_state: BTreeMap::new(),
                suppressed: Vec::new(),
            });
            let pkg = format!("{}@{}", f.package, f.version);
            if !row.packages.contains(&pkg) {
                row.packages.push(pkg);
            }
            if let Some(s) = &f.suppressed_by {
                if !row.suppressed.iter().any(|(k, _)| k == &key) {
                    row.suppressed.push((key.clone(), s.clone()));
                }
                continue;
            }
            if row.releases.contains(&key) {
                continue;
            }
            row.releases.push(key.clone());
            for d in &on_release {
                row.devices += 1;
                *row.devices_by_member_state
                    .entry(member_state(&devices, &d.device_id))
                    .or_default() += 1;
            }
        }
    }
    Ok(rows.into_values().collect())
}

// ---------------------------------------------------------------- VEX

pub async fn vex_put(store: &dyn Store, s: &VexStatement) -> Result<(), HubError> {
    s.validate()?;
    let product_name = s.product.split('@').next().unwrap_or(&s.product);
    product(store, product_name).await?;
    store
        .put_record(
            "vex",
            &format!("{}|{}", s.product, s.vulnerability),
            &json(s)?,
            s.status.as_str(),
            &[&s.justification, &s.impact_statement, &s.action_statement]
                .iter()
                .filter_map(|x| x.as_deref())
                .collect::<Vec<_>>()
                .join("; "),
        )
        .await?;
    Ok(())
}

/// VEX statements, of one product (and its releases) or all.
pub async fn vex_statements(
    store: &dyn Store,
    product: Option<&str>,
) -> Result<Vec<VexStatement>, HubError> {
    let mut out = Vec::new();
    for (_, body) in store.records("vex").await? {
        let s: VexStatement = parse("vex", &body)?;
        let of = s.product.split('@').next().unwrap_or(&s.product);
        if product.is_none_or(|p| p == of) {
            out.push(s);
        }
    }
    Ok(out)
}

// ---------------------------------------------------------------- advisories

/// Writes the CSAF publication set for the fixed vulnerabilities of a product into `out`:
/// one advisory per vulnerability with a `fixed` VEX statement (and a `csaf_vex` document
/// with every status), provider-metadata.json, index.txt, changes.csv and security.txt.
/// Returns the advisory files written.
pub async fn advisories(
    store: &dyn Store,
    product_name: &str,
    out: &Path,
    remediation: &str,
) -> Result<Vec<std::path::PathBuf>, HubError> {
    let p = product(store, product_name).await?;
    let statements = vex_statements(store, Some(product_name)).await?;
    let mut by_vuln: BTreeMap<String, Vec<VexStatement>> = BTreeMap::new();
    for s in statements {
        by_vuln.entry(s.vulnerability.clone()).or_default().push(s);
    }
    let issued = now();
    let date = report::rfc3339(issued);
    let year = issued.year();
    let well_known = out.join(".well-known");
    let dir = well_known.join("csaf").join("white").join(year.to_string());
    std::fs::create_dir_all(&dir).map_err(|e| HubError::Io {
        path: dir.clone(),
        source: e,
    })?;
    let mut written = Vec::new();
    let mut index = Vec::new();
    let generator = env!("CARGO_PKG_VERSION");
    for (vuln, stmts) in &by_vuln {
        let (affected, fixed, not_affected, investigating) =
            csaf::statuses_from_vex(stmts, &p.releases);
        let info =
            |aliases: Vec<String>, title: String, description: String| csaf::VulnerabilityInfo {
                id: vuln.clone(),
                aliases,
                title,
                description,
                known_affected: affected.clone(),
                fixed: fixed.clone(),
                known_not_affected: not_affected.clone(),
                under_investigation: investigating.clone(),
                remediation: remediation.to_owned(),
            };
        // Description and aliases from the OSV record when we have it.
        let (aliases, title, description) = match find_advisory(store, vuln).await? {
            Some(a) => (
                a.aliases.clone(),
                if a.summary.is_empty() {
                    vuln.clone()
                } else {
                    a.summary.clone()
                },
                if a.details.is_empty() {
                    a.summary.clone()
                } else {
                    a.details.clone()
                },
            ),
            None => (
                Vec::new(),
                vuln.clone(),
                format!("{vuln} affects {}.", p.name),
            ),
        };
        let v = info(aliases, title, description);
        for (profile, suffix, wanted) in [
            (csaf::Profile::SecurityAdvisory, "", !fixed.is_empty()),
            (csaf::Profile::Vex, "-vex", true),
        ] {
            if !wanted {
                continue;
            }
            let tracking = format!(
                "{}-{}{}",
                p.name.replace(|c: char| !c.is_ascii_alphanumeric(), "-"),
                vuln,
                suffix
            );
            let doc = csaf::advisory(
                profile,
                &tracking,
                &p,
                std::slice::from_ref(&v),
                &date,
                generator,
            );
            let file = dir.join(csaf::file_name(&tracking));
            write_json(&file, &doc)?;
            index.push(format!("{year}/{}", csaf::file_name(&tracking)));
            written.push(file);
            store
                .put_record(
                    "advisory",
                    &tracking,
                    &doc.to_string(),
                    "advisory written",
                    &format!(
                        "{vuln}: {}",
                        if profile == csaf::Profile::Vex {
                            "csaf_vex"
                        } else {
                            "csaf_security_advisory"
                        }
                    ),
                )
                .await?;
        }
    }
    let csaf_dir = well_known.join("csaf");
    write_json(
        &csaf_dir.join("provider-metadata.json"),
        &csaf::provider_metadata(&p, &date),
    )?;
    let white = csaf_dir.join("white");
    write_text(&white.join("index.txt"), &(index.join("\n") + "\n"))?;
    let changes: String = index
        .iter()
        .map(|i| format!("\"{i}\",\"{date}\"\n"))
        .collect();
    write_text(&white.join("changes.csv"), &changes)?;
    let expires = report::rfc3339(issued + time::Duration::days(365));
    write_text(
        &well_known.join("security.txt"),
        &csaf::security_txt(&p, &expires),
    )?;
    Ok(written)
}

async fn find_advisory(store: &dyn Store, id: &str) -> Result<Option<Advisory>, HubError> {
    // Stored advisories are keyed by OSV id; aliases need a search through the product's
    // SBOM packages, so look at the id first and then at every advisory of those packages.
    for (_, body) in store.records("sbom").await? {
        let sbom: Sbom = parse("sbom", &body)?;
        for (eco, pkg) in scan::packages(&sbom) {
            for b in store.advisories_for(&eco, &pkg).await? {
                let a = Advisory::parse("store", &b)?;
                if a.id == id || a.aliases.iter().any(|x| x == id) {
                    return Ok(Some(a));
                }
            }
        }
    }
    Ok(None)
}

fn write_json(path: &Path, v: &serde_json::Value) -> Result<(), HubError> {
    let text = serde_json::to_string_pretty(v).map_err(|e| HubError::Invalid(e.to_string()))?;
    write_text(path, &(text + "\n"))
}

/// Writes a public document atomically (rampart-pki's writer: temporary file, fsync, rename,
/// directory sync), creating its directory and replacing an older version.
pub fn write_text(path: &Path, text: &str) -> Result<(), HubError> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(|e| HubError::Io {
            path: parent.to_owned(),
            source: e,
        })?;
    }
    Ok(rampart_pki::files::write_public(
        path,
        text.as_bytes(),
        true,
    )?)
}

// ---------------------------------------------------------------- Article 14 reports

/// Opens a new report; its id is `CRA-YYYY-NNNN`.
pub async fn report_new(
    store: &dyn Store,
    kind: ReportKind,
    product_name: &str,
    title: &str,
    aware_at: OffsetDateTime,
    vulnerability: Option<String>,
) -> Result<Report, HubError> {
    product(store, product_name).await?;
    if kind == ReportKind::ExploitedVulnerability && vulnerability.is_none() {
        return Err(HubError::Invalid(
            "an exploited-vulnerability report names the vulnerability (--vulnerability CVE-...)"
                .into(),
        ));
    }
    let year = aware_at.year();
    let n = store
        .records("report")
        .await?
        .iter()
        .filter(|(k, _)| k.starts_with(&format!("CRA-{year}-")))
        .count()
        + 1;
    let r = Report {
        id: format!("CRA-{year}-{n:04}"),
        kind,
        product: product_name.to_owned(),
        title: title.to_owned(),
        aware_at,
        vulnerability,
        occurred_at: None,
        measure_available_at: None,
        early_warning_at: None,
        notification_at: None,
        final_report_at: None,
    };
    store
        .put_record(
            "report",
            &r.id,
            &json(&r)?,
            "created",
            &format!("{} aware at {}", kind.as_str(), report::rfc3339(aware_at)),
        )
        .await?;
    Ok(r)
}

pub async fn report(store: &dyn Store, id: &str) -> Result<Report, HubError> {
    let body = store.record("report", id).await?.ok_or_else(|| {
        HubError::NotFound(format!(
            "no report {id:?}; list them with `rampart cra report list`"
        ))
    })?;
    parse("report", &body)
}

pub async fn reports(store: &dyn Store) -> Result<Vec<Report>, HubError> {
    store
        .records("report")
        .await?
        .iter()
        .map(|(_, b)| parse("report", b))
        .collect()
}

/// Records a stage's submission.
pub async fn report_submit(
    store: &dyn Store,
    id: &str,
    stage: Stage,
    at: OffsetDateTime,
) -> Result<Report, HubError> {
    let mut r = report(store, id).await?;
    r.submit(stage, at)?;
    store
        .put_record(
            "report",
            id,
            &json(&r)?,
            "submitted",
            &format!("{} at {}", stage.as_str(), report::rfc3339(at)),
        )
        .await?;
    Ok(r)
}

/// Records when a corrective or mitigating measure became available (starts the final-report
/// clock of an exploited vulnerability).
pub async fn report_measure(
    store: &dyn Store,
    id: &str,
    at: OffsetDateTime,
) -> Result<Report, HubError> {
    let mut r = report(store, id).await?;
    if r.measure_available_at.is_some() {
        return Err(HubError::Invalid(format!(
            "{id} already records a measure; the history is append-only"
        )));
    }
    r.measure_available_at = Some(at);
    store
        .put_record(
            "report",
            id,
            &json(&r)?,
            "measure available",
            &report::rfc3339(at),
        )
        .await?;
    Ok(r)
}

/// A deadline warning: also appended to the report's history and the audit log, which is the
/// event other parts alert on.
#[derive(Debug, Clone, Serialize)]
pub struct DeadlineWarning {
    pub report: String,
    pub stage: Stage,
    #[serde(with = "time::serde::rfc3339")]
    pub due: OffsetDateTime,
    pub state: report::State,
}

/// Checks every open report's deadlines at `now`; records a warning (once per stage and
/// state) for stages due soon or overdue.
pub async fn report_check(
    store: &dyn Store,
    at: OffsetDateTime,
    warn: time::Duration,
) -> Result<Vec<DeadlineWarning>, HubError> {
    let mut out = Vec::new();
    for r in reports(store).await? {
        let history = store.history("report", &r.id).await?;
        for d in report::deadlines(&r, at, warn) {
            if !matches!(d.state, report::State::DueSoon | report::State::Overdue) {
                continue;
            }
            let Some(due) = d.due else { continue };
            let w = DeadlineWarning {
                report: r.id.clone(),
                stage: d.stage,
                due,
                state: d.state,
            };
            let detail = format!(
                "{} {} (due {})",
                d.stage.as_str(),
                if d.state == report::State::Overdue {
                    "overdue"
                } else {
                    "due soon"
                },
                report::rfc3339(due)
            );
            if !history
                .iter()
                .any(|h| h.action == "deadline warning" && h.detail == detail)
            {
                store
                    .append_history("report", &r.id, "deadline warning", &detail)
                    .await?;
                tracing::warn!(report = %r.id, stage = d.stage.as_str(), due = %report::rfc3339(due), "Article 14 deadline {}", if d.state == report::State::Overdue { "overdue" } else { "approaching" });
            }
            out.push(w);
        }
    }
    Ok(out)
}

/// The fleet impact of a report: affected releases (from the fleet view for its
/// vulnerability, else every release of the product) and devices by Member State.
pub async fn report_impact(store: &dyn Store, r: &Report) -> Result<FleetImpact, HubError> {
    let p = product(store, &r.product).await?;
    let mut releases: Vec<String> = Vec::new();
    if let Some(v) = &r.vulnerability {
        if store.advisory_count().await? > 0 {
            for row in fleet(store).await? {
                if &row.advisory == v || row.aliases.iter().any(|a| a == v) {
                    for rel in &row.releases {
                        if let Some((prod, release)) = rel.split_once('@')
                            && prod == p.name
                        {
                            releases.push(release.to_owned());
                        }
                    }
                }
            }
        }
    } else {
        releases = p.releases.clone();
    }
    releases.sort();
    releases.dedup();
    let devices = store.devices().await?;
    let mut impact = FleetImpact {
        affected_releases: releases.clone(),
        ..Default::default()
    };
    for d in store.device_releases().await? {
        if d.product == p.name && releases.contains(&d.release) {
            impact.devices_total += 1;
            *impact
                .devices_by_member_state
                .entry(member_state(&devices, &d.device_id))
                .or_default() += 1;
        }
    }
    Ok(impact)
}

/// The draft of a stage's fields for the single reporting platform.
pub async fn report_draft(
    store: &dyn Store,
    id: &str,
    stage: Stage,
) -> Result<Vec<(String, String)>, HubError> {
    let r = report(store, id).await?;
    let p = product(store, &r.product).await?;
    let c = classification(store, &r.product).await?;
    let impact = report_impact(store, &r).await?;
    Ok(srp::draft(&r, stage, &p, c.as_ref(), &impact))
}

/// The Art. 14(8) user notification.
pub async fn report_notification(
    store: &dyn Store,
    id: &str,
    user_action: &str,
) -> Result<serde_json::Value, HubError> {
    let r = report(store, id).await?;
    let p = product(store, &r.product).await?;
    let impact = report_impact(store, &r).await?;
    store
        .append_history("report", id, "user notification", user_action)
        .await?;
    Ok(srp::user_notification(&r, &p, &impact, user_action))
}

// ---------------------------------------------------------------- documents

/// Attaches a file (test report, risk assessment, ...) to a product: its SHA-256 is recorded.
pub async fn attach(
    store: &dyn Store,
    product_name: &str,
    kind: &str,
    title: &str,
    file: &Path,
) -> Result<Attachment, HubError> {
    const KINDS: [&str; 6] = [
        "test-report",
        "risk-assessment",
        "architecture",
        "photo",
        "standard",
        "other",
    ];
    if !KINDS.contains(&kind) {
        return Err(HubError::Invalid(format!(
            "unknown attachment kind {kind:?} ({})",
            KINDS.join(", ")
        )));
    }
    product(store, product_name).await?;
    let bytes = std::fs::read(file).map_err(|e| HubError::Io {
        path: file.to_owned(),
        source: e,
    })?;
    let sha256 = {
        use sha2::Digest;
        hex::encode(sha2::Sha256::digest(&bytes))
    };
    let a = Attachment {
        product: product_name.to_owned(),
        kind: kind.to_owned(),
        title: title.to_owned(),
        file_name: file
            .file_name()
            .map(|f| f.to_string_lossy().into_owned())
            .unwrap_or_default(),
        sha256: sha256.clone(),
        added_at: report::rfc3339(now()),
    };
    store
        .put_record(
            "attachment",
            &format!("{product_name}|{sha256}"),
            &json(&a)?,
            "attached",
            &format!("{kind}: {title}"),
        )
        .await?;
    Ok(a)
}

/// Writes the Annex VII technical documentation and the Annex V declaration (Markdown and
/// HTML) into `out`; returns the files.
pub async fn docs(
    store: &dyn Store,
    product_name: &str,
    out: &Path,
    signatory: Option<(String, String, String)>,
) -> Result<Vec<std::path::PathBuf>, HubError> {
    let p = product(store, product_name).await?;
    let c = classification(store, product_name).await?;
    let vex = vex_statements(store, Some(product_name)).await?;
    let attachments: Vec<Attachment> = store
        .records("attachment")
        .await?
        .iter()
        .map(|(_, b)| parse::<Attachment>("attachment", b))
        .collect::<Result<Vec<_>, _>>()?
        .into_iter()
        .filter(|a| a.product == product_name)
        .collect();
    let have_advisories = store.advisory_count().await? > 0;
    let mut sboms = Vec::new();
    for release in &p.releases {
        let Ok(s) = sbom(store, product_name, release).await else {
            continue;
        };
        let (open, suppressed) = if have_advisories {
            let r = scan_sbom(store, &s, Some((product_name, release))).await?;
            (
                r.open()
                    .filter(|f| f.informational.is_none())
                    .map(|f| format!("{} ({}@{})", f.advisory, f.package, f.version))
                    .collect(),
                r.findings.len() - r.open().count(),
            )
        } else {
            (vec!["not scanned: no advisories imported".to_owned()], 0)
        };
        sboms.push(SbomFacts {
            release: release.clone(),
            components: s.components.len() + 1,
            format: s
                .source_format
                .clone()
                .unwrap_or_else(|| "generated by Rampart".into()),
            complete: s.all_components().all(|c| {
                c.dependencies_complete == rampart_compliance::sbom::Completeness::Complete
            }),
            open_findings: open,
            suppressed_findings: suppressed,
        });
    }
    let advisories_published = store.records("advisory").await?.len();
    let reports_n = reports(store)
        .await?
        .iter()
        .filter(|r| r.product == product_name)
        .count();
    let inputs = documents::Inputs {
        product: &p,
        classification: c.as_ref(),
        sboms,
        vex: &vex,
        attachments: &attachments,
        advisories_published,
        reports: reports_n,
        generated_at: report::rfc3339(now()),
        signatory,
    };
    let (md, html) = documents::technical_documentation(&inputs);
    let (dmd, dhtml) = documents::declaration_of_conformity(&inputs);
    let files = [
        ("technical-documentation.md", md),
        ("technical-documentation.html", html),
        ("declaration-of-conformity.md", dmd),
        ("declaration-of-conformity.html", dhtml),
    ];
    let mut written = Vec::new();
    for (name, text) in files {
        let path = out.join(name);
        write_text(&path, &text)?;
        written.push(path);
    }
    store
        .append_history(
            "product",
            product_name,
            "documents written",
            &out.display().to_string(),
        )
        .await?;
    Ok(written)
}
