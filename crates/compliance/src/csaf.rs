//! CSAF 2.0 advisories (OASIS), the provider's publication set, and `security.txt`.
//!
//! An advisory is written for a vulnerability that is fixed in a release of a product (Annex I
//! Part II (4): disclose fixed vulnerabilities once an update is available). The product tree
//! comes from the product record: vendor → product name → product version, each version
//! identified by its purl. `csaf_security_advisory` carries fixed and known-affected releases
//! with a vendor-fix remediation; `csaf_vex` carries every VEX status.
//!
//! Publication layout (CSAF 2.0 section 7, "csaf_publisher" role):
//! `.well-known/csaf/provider-metadata.json`, `.well-known/csaf/white/YYYY/<id>.json`,
//! `.well-known/csaf/white/index.txt`, `.well-known/csaf/white/changes.csv`, and
//! `.well-known/security.txt` (RFC 9116) with a `CSAF:` line.

use serde_json::{Value, json};

use crate::product::Product;
use crate::vex::{VexStatement, VexStatus};

/// What an advisory says about one vulnerability.
#[derive(Debug, Clone)]
pub struct VulnerabilityInfo {
    /// The main id (CVE, GHSA, RUSTSEC, ...).
    pub id: String,
    pub aliases: Vec<String>,
    pub title: String,
    pub description: String,
    /// Releases of the product that are affected and have no fix.
    pub known_affected: Vec<String>,
    /// Releases that fix it.
    pub fixed: Vec<String>,
    /// Releases known not to be affected, with the VEX statement saying so.
    pub known_not_affected: Vec<(String, VexStatement)>,
    pub under_investigation: Vec<String>,
    /// What users should do (the vendor fix).
    pub remediation: String,
}

/// The document category.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Profile {
    SecurityAdvisory,
    Vex,
}

fn product_id(product: &Product, release: &str) -> String {
    let safe: String = product
        .name
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    format!("{safe}-{release}")
}

/// The file name CSAF requires for a tracking id (section 5.1).
pub fn file_name(tracking_id: &str) -> String {
    let mut out = String::new();
    let mut last_us = false;
    for c in tracking_id.to_ascii_lowercase().chars() {
        if c.is_ascii_alphanumeric() || c == '+' || c == '-' {
            out.push(c);
            last_us = false;
        } else if !last_us {
            out.push('_');
            last_us = true;
        }
    }
    format!("{out}.json")
}

/// Builds a CSAF 2.0 document.
#[allow(clippy::too_many_arguments)]
pub fn advisory(
    profile: Profile,
    tracking_id: &str,
    product: &Product,
    vulns: &[VulnerabilityInfo],
    date: &str,
    generator: &str,
) -> Value {
    let versions: Vec<Value> = product
        .releases
        .iter()
        .map(|r| {
            json!({
                "category": "product_version",
                "name": r,
                "product": {
                    "product_id": product_id(product, r),
                    "name": format!("{} {} {}", product.manufacturer.name, product.name, r),
                    "product_identification_helper": {"purl": product.release_id(r)},
                },
            })
        })
        .collect();
    let ids =
        |rs: &[String]| -> Vec<String> { rs.iter().map(|r| product_id(product, r)).collect() };
    let vulnerabilities: Vec<Value> = vulns
        .iter()
        .map(|v| {
            let mut out = json!({
                "title": v.title,
                "notes": [{"category": "description", "title": "Vulnerability description", "text": v.description}],
            });
            let all_ids: Vec<&String> = std::iter::once(&v.id).chain(v.aliases.iter()).collect();
            if let Some(cve) = all_ids.iter().find(|i| is_cve(i)) {
                out["cve"] = (*cve).clone().into();
            }
            let others: Vec<Value> = all_ids
                .iter()
                .filter(|i| !is_cve(i))
                .map(|i| {
                    json!({"system_name": i.split('-').next().unwrap_or("id"), "text": i})
                })
                .collect();
            if !others.is_empty() {
                out["ids"] = others.into();
            }
            let mut status = serde_json::Map::new();
            if !v.fixed.is_empty() {
                status.insert("fixed".into(), ids(&v.fixed).into());
            }
            if !v.known_affected.is_empty() {
                status.insert("known_affected".into(), ids(&v.known_affected).into());
            }
            if profile == Profile::Vex {
                let nna: Vec<String> = v.known_not_affected.iter().map(|(r, _)| r.clone()).collect();
                if !nna.is_empty() {
                    status.insert("known_not_affected".into(), ids(&nna).into());
                }
                if !v.under_investigation.is_empty() {
                    status.insert("under_investigation".into(), ids(&v.under_investigation).into());
                }
            }
            out["product_status"] = Value::Object(status);
            let mut remediations = Vec::new();
            let affected_or_fixed: Vec<String> =
                ids(&v.known_affected).into_iter().chain(ids(&v.fixed)).collect();
            if !affected_or_fixed.is_empty() {
                remediations.push(json!({
                    "category": "vendor_fix",
                    "details": v.remediation,
                    "product_ids": affected_or_fixed,
                }));
            }
            if !remediations.is_empty() {
                out["remediations"] = remediations.into();
            }
            if profile == Profile::Vex && !v.known_not_affected.is_empty() {
                let threats: Vec<Value> = v
                    .known_not_affected
                    .iter()
                    .map(|(r, s)| {
                        let text = s
                            .impact_statement
                            .clone()
                            .or_else(|| s.justification.clone().map(|j| j.replace('_', " ")))
                            .unwrap_or_else(|| "not affected".into());
                        json!({"category": "impact", "details": text, "product_ids": [product_id(product, r)]})
                    })
                    .collect();
                out["threats"] = threats.into();
            }
            out
        })
        .collect();
    let category = match profile {
        Profile::SecurityAdvisory => "csaf_security_advisory",
        Profile::Vex => "csaf_vex",
    };
    let title = match vulns {
        [one] => format!("{}: {}", product.name, one.title),
        _ => format!("{}: {} vulnerabilities", product.name, vulns.len()),
    };
    json!({
        "document": {
            "category": category,
            "csaf_version": "2.0",
            "lang": "en",
            "title": title,
            "distribution": {"tlp": {"label": "WHITE"}},
            "publisher": {
                "category": "vendor",
                "name": product.manufacturer.name,
                "namespace": product.cvd.advisories_url,
                "contact_details": product.cvd.contact,
            },
            "notes": [{
                "category": "summary",
                "title": "Summary",
                "text": format!(
                    "{} publishes this advisory for {} ({}). Support for this product ends {}. \
                     Report vulnerabilities to {} under the policy at {}.",
                    product.manufacturer.name,
                    product.name,
                    product.product_type,
                    product.end_of_support(),
                    product.cvd.contact,
                    product.cvd.policy_url
                ),
            }],
            "tracking": {
                "id": tracking_id,
                "status": "final",
                "version": "1",
                "initial_release_date": date,
                "current_release_date": date,
                "revision_history": [{"number": "1", "date": date, "summary": "Initial release."}],
                "generator": {"engine": {"name": "Rampart", "version": generator}},
            },
        },
        "product_tree": {
            "branches": [{
                "category": "vendor",
                "name": product.manufacturer.name,
                "branches": [{
                    "category": "product_name",
                    "name": product.name,
                    "branches": versions,
                }],
            }],
        },
        "vulnerabilities": vulnerabilities,
    })
}

fn is_cve(id: &str) -> bool {
    let Some(rest) = id.strip_prefix("CVE-") else {
        return false;
    };
    let mut parts = rest.splitn(2, '-');
    let (Some(y), Some(n)) = (parts.next(), parts.next()) else {
        return false;
    };
    y.len() == 4
        && y.chars().all(|c| c.is_ascii_digit())
        && n.len() >= 4
        && n.chars().all(|c| c.is_ascii_digit())
}

/// `provider-metadata.json` for a `csaf_publisher`.
pub fn provider_metadata(product: &Product, last_updated: &str) -> Value {
    let base = product.cvd.advisories_url.trim_end_matches('/');
    json!({
        "canonical_url": format!("{base}/.well-known/csaf/provider-metadata.json"),
        "distributions": [{"directory_url": format!("{base}/.well-known/csaf/white/")}],
        "last_updated": last_updated,
        "list_on_CSAF_aggregators": true,
        "metadata_version": "2.0",
        "mirror_on_CSAF_aggregators": true,
        "publisher": {
            "category": "vendor",
            "name": product.manufacturer.name,
            "namespace": base,
            "contact_details": product.cvd.contact,
        },
        "role": "csaf_publisher",
    })
}

/// `security.txt` (RFC 9116): Contact, Expires (required), Policy, Preferred-Languages and the
/// CSAF line pointing at the provider metadata.
pub fn security_txt(product: &Product, expires: &str) -> String {
    let base = product.cvd.advisories_url.trim_end_matches('/');
    format!(
        "# Security contact of {}, written by Rampart.\n\
         Contact: {}\n\
         Expires: {}\n\
         Policy: {}\n\
         Preferred-Languages: en\n\
         Canonical: {base}/.well-known/security.txt\n\
         CSAF: {base}/.well-known/csaf/provider-metadata.json\n",
        product.manufacturer.name, product.cvd.contact, expires, product.cvd.policy_url
    )
}

/// Sorts VEX statements of one vulnerability into CSAF product statuses.
///
/// A statement about the product ("NAME") applies to every release in `releases`; one about a
/// release ("NAME@RELEASE") overrides it for that release.
#[allow(clippy::type_complexity)]
pub fn statuses_from_vex(
    statements: &[VexStatement],
    releases: &[String],
) -> (
    Vec<String>,
    Vec<String>,
    Vec<(String, VexStatement)>,
    Vec<String>,
) {
    let (mut affected, mut fixed, mut not_affected, mut investigating) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for release in releases {
        let specific = statements.iter().find(|s| {
            s.product
                .rsplit_once('@')
                .is_some_and(|(_, r)| r == release)
        });
        let general = statements.iter().find(|s| !s.product.contains('@'));
        let Some(s) = specific.or(general) else {
            continue;
        };
        let release = release.clone();
        match s.status {
            VexStatus::Affected => affected.push(release),
            VexStatus::Fixed => fixed.push(release),
            VexStatus::NotAffected => not_affected.push((release, s.clone())),
            VexStatus::UnderInvestigation => investigating.push(release),
        }
    }
    (affected, fixed, not_affected, investigating)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_names_follow_the_standard() {
        assert_eq!(file_name("Example-2026-0001"), "example-2026-0001.json");
        assert_eq!(file_name("ACME SA:2026/01"), "acme_sa_2026_01.json");
    }

    #[test]
    fn cve_ids_are_recognised() {
        assert!(is_cve("CVE-2024-12345"));
        assert!(!is_cve("CVE-24-1"));
        assert!(!is_cve("RUSTSEC-2024-0001"));
    }
}
