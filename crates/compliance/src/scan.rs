//! Matching an SBOM's components against OSV advisories.
//!
//! The scan never holds the advisory database: the caller looks up the advisories of one
//! (ecosystem, package) at a time from the store's index ([`packages`] lists what to look
//! up), so memory grows with the SBOM, not with the database.

use std::collections::BTreeSet;

use serde::Serialize;

use crate::osv::{Advisory, Event};
use crate::sbom::{Component, Sbom};
use crate::vex::VexStatement;

/// A vulnerability that affects a component.
#[derive(Debug, Clone, Serialize)]
pub struct Finding {
    pub advisory: String,
    pub aliases: Vec<String>,
    pub summary: String,
    pub severity: Vec<String>,
    pub ecosystem: String,
    pub package: String,
    pub version: String,
    pub purl: Option<String>,
    /// RustSec's informational kind (`unmaintained`, `unsound`, `notice`), `None` for a
    /// vulnerability.
    pub informational: Option<String>,
    /// Versions that fix it (from `fixed` events).
    pub fixed_in: Vec<String>,
    /// The VEX statement that suppresses it, with its reason, if any.
    pub suppressed_by: Option<VexStatement>,
}

/// A component an advisory names but whose version could not be ordered under the
/// advisory's range type: reported, never silently passed.
#[derive(Debug, Clone, Serialize)]
pub struct NotEvaluated {
    pub advisory: String,
    pub package: String,
    pub version: String,
    pub reason: String,
}

/// The result of a scan.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ScanReport {
    pub components: usize,
    /// Components without a purl that maps to an OSV ecosystem (not matchable).
    pub unmatchable: Vec<String>,
    pub findings: Vec<Finding>,
    pub not_evaluated: Vec<NotEvaluated>,
}

impl ScanReport {
    /// Findings not suppressed by VEX.
    pub fn open(&self) -> impl Iterator<Item = &Finding> {
        self.findings.iter().filter(|f| f.suppressed_by.is_none())
    }
}

/// The distinct (ecosystem, package) pairs of an SBOM, to look up.
pub fn packages(sbom: &Sbom) -> BTreeSet<(String, String)> {
    sbom.all_components()
        .filter_map(Component::osv_package)
        .collect()
}

/// Matches one component against the advisories of its package.
pub fn match_component(component: &Component, advisories: &[&Advisory], report: &mut ScanReport) {
    let Some((ecosystem, package)) = component.osv_package() else {
        return;
    };
    for adv in advisories {
        if adv.withdrawn.is_some() {
            continue;
        }
        match adv.matches(&ecosystem, &package, &component.version) {
            Ok(hits) if !hits.is_empty() => {
                let mut fixed_in: Vec<String> = hits
                    .iter()
                    .flat_map(|a| a.ranges.iter())
                    .flat_map(|r| r.events.iter())
                    .filter_map(|e| match e {
                        Event::Fixed(v) => Some(v.clone()),
                        _ => None,
                    })
                    .collect();
                fixed_in.sort();
                fixed_in.dedup();
                report.findings.push(Finding {
                    advisory: adv.id.clone(),
                    aliases: adv.aliases.clone(),
                    summary: adv.summary.clone(),
                    severity: adv.severity.clone(),
                    ecosystem: ecosystem.clone(),
                    package: package.clone(),
                    version: component.version.clone(),
                    purl: component.purl.clone(),
                    informational: hits.iter().find_map(|a| a.informational.clone()),
                    fixed_in,
                    suppressed_by: None,
                });
            }
            Ok(_) => {}
            Err(reason) => report.not_evaluated.push(NotEvaluated {
                advisory: adv.id.clone(),
                package: package.clone(),
                version: component.version.clone(),
                reason,
            }),
        }
    }
}

/// Applies VEX statements: a finding whose vulnerability (id or alias) has a `not_affected`
/// or `fixed` statement for the product is marked suppressed, with the statement.
pub fn apply_vex(report: &mut ScanReport, statements: &[VexStatement]) {
    for f in &mut report.findings {
        let names: Vec<&str> = std::iter::once(f.advisory.as_str())
            .chain(f.aliases.iter().map(String::as_str))
            .collect();
        f.suppressed_by = statements
            .iter()
            .filter(|s| names.contains(&s.vulnerability.as_str()))
            .filter(|s| s.status.suppresses())
            .max_by(|a, b| a.timestamp.cmp(&b.timestamp))
            .cloned();
    }
}

/// Sorts findings for stable output.
pub fn sort(report: &mut ScanReport) {
    report.findings.sort_by(|a, b| {
        (a.package.as_str(), a.version.as_str(), a.advisory.as_str()).cmp(&(
            b.package.as_str(),
            b.version.as_str(),
            b.advisory.as_str(),
        ))
    });
}
