//! Drafts for ENISA's single reporting platform (which had no API at launch: the operator
//! copies the fields), and the machine-readable user notification of Art. 14(8).
//!
//! Field names follow the platform's glossary (v1.1), grouped as common, exploited
//! vulnerability and severe incident fields. Fields Rampart cannot know are left as
//! `TO FILL: ...` so the draft shows what is missing instead of inventing it.

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::{Value, json};

use crate::classify::{Class, Classification};
use crate::product::Product;
use crate::report::{Report, ReportKind, Stage, rfc3339};

/// What the fleet knows about a report's product: affected releases and device counts by
/// Member State.
#[derive(Debug, Clone, Default, Serialize)]
pub struct FleetImpact {
    pub affected_releases: Vec<String>,
    pub devices_by_member_state: BTreeMap<String, u64>,
    pub devices_total: u64,
}

const TODO: &str = "TO FILL";

fn truncate(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        s.to_owned()
    } else {
        s.chars().take(max).collect()
    }
}

/// The draft of one stage's submission: ordered (field, value) pairs.
pub fn draft(
    report: &Report,
    stage: Stage,
    product: &Product,
    classification: Option<&Classification>,
    impact: &FleetImpact,
) -> Vec<(String, String)> {
    let mut f: Vec<(String, String)> = Vec::new();
    let mut put = |k: &str, v: String| f.push((k.to_owned(), v));
    put(
        "Type",
        match report.kind {
            ReportKind::ExploitedVulnerability => "Actively exploited vulnerability".into(),
            ReportKind::SevereIncident => "Severe incident having an impact on the security".into(),
        },
    );
    put("Stage", stage.as_str().into());
    put("Title", truncate(&report.title, 255));
    put(
        "Summary",
        truncate(
            &format!(
                "{} affecting {} ({}); manufacturer aware since {}.",
                report.title,
                product.name,
                product.product_type,
                rfc3339(report.aware_at)
            ),
            4000,
        ),
    );
    put(
        "Manufacturer",
        format!(
            "{}, {}",
            product.manufacturer.name, product.manufacturer.address
        ),
    );
    let states: Vec<String> = if impact.devices_by_member_state.is_empty() {
        product.member_states.clone()
    } else {
        impact
            .devices_by_member_state
            .iter()
            .map(|(m, n)| format!("{m} ({n} devices)"))
            .collect()
    };
    put("Member States", states.join(", "));
    put("Product name", product.name.clone());
    put(
        "Product version or range",
        if impact.affected_releases.is_empty() {
            format!("{TODO}: affected releases (none matched in the fleet view)")
        } else {
            impact.affected_releases.join(", ")
        },
    );
    let (ptype, class) = match classification.map(|c| c.class) {
        Some(Class::Default) => ("default".to_owned(), "-".to_owned()),
        Some(Class::ImportantClassI) => ("important".into(), "class I".into()),
        Some(Class::ImportantClassII) => ("important".into(), "class II".into()),
        Some(Class::Critical) => ("critical".into(), "-".into()),
        None => (format!("{TODO}: classify the product"), TODO.into()),
    };
    put("Product type", ptype);
    put("Class", class);
    put(
        "Category",
        classification
            .map(|c| c.categories.join(", "))
            .filter(|c| !c.is_empty())
            .unwrap_or_else(|| "-".into()),
    );
    put(
        "End of support",
        format!(
            "{} (support ends {})",
            if product.end_of_support().is_empty() {
                "unknown"
            } else {
                "no"
            },
            product.end_of_support()
        ),
    );
    put(
        "Devices in the fleet affected",
        impact.devices_total.to_string(),
    );
    put(
        "Mitigation expected",
        match report.measure_available_at {
            Some(t) => format!("available since {}", rfc3339(t)),
            None => format!("{TODO}: expected date of a corrective measure"),
        },
    );
    put(
        "Sensitivity",
        format!("{TODO}: sensitivity of the information"),
    );
    match report.kind {
        ReportKind::ExploitedVulnerability => {
            let v = report.vulnerability.clone().unwrap_or_default();
            put(
                "CVE ID",
                if v.starts_with("CVE-") {
                    v.clone()
                } else {
                    format!("{TODO}: CVE id (have {v})")
                },
            );
            put("EUVD ID", format!("{TODO}: EUVD id if assigned"));
            put("Awareness time", rfc3339(report.aware_at));
            put(
                "Date the measure became available",
                report
                    .measure_available_at
                    .map(rfc3339)
                    .unwrap_or_else(|| "not yet".into()),
            );
            put("Malicious actor", format!("{TODO}: if known"));
        }
        ReportKind::SevereIncident => {
            put("Suspected malicious", format!("{TODO}: yes / no / unknown"));
            put("Awareness time", rfc3339(report.aware_at));
            put(
                "Occurrence time",
                report
                    .occurred_at
                    .map(rfc3339)
                    .unwrap_or_else(|| format!("{TODO}: when it occurred")),
            );
            put("Nature of the incident", TODO.to_string());
            if stage != Stage::EarlyWarning {
                put("Initial assessment", TODO.to_string());
            }
            if stage == Stage::FinalReport {
                put("Root cause / type of threat", TODO.to_string());
            }
        }
    }
    f
}

/// The Art. 14(8) user notification, machine-readable.
pub fn user_notification(
    report: &Report,
    product: &Product,
    impact: &FleetImpact,
    user_action: &str,
) -> Value {
    json!({
        "type": "cra-user-notification",
        "version": 1,
        "regulation": "Regulation (EU) 2024/2847, Article 14(8)",
        "report": report.id,
        "kind": report.kind.as_str(),
        "manufacturer": {"name": product.manufacturer.name, "contact": product.cvd.contact},
        "product": product.name,
        "affected_releases": impact.affected_releases,
        "vulnerability": report.vulnerability,
        "title": report.title,
        "measure_available_at": report.measure_available_at.map(rfc3339),
        "user_action": user_action,
        "advisories": format!("{}/.well-known/csaf/provider-metadata.json", product.cvd.advisories_url.trim_end_matches('/')),
        "issued_at": rfc3339(time::OffsetDateTime::now_utc().replace_nanosecond(0).unwrap_or(time::OffsetDateTime::UNIX_EPOCH)),
    })
}
