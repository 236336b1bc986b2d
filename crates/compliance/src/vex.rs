//! VEX: what the manufacturer says about a vulnerability in a product, and its export as
//! OpenVEX 0.2 and CycloneDX 1.6 VEX.
//!
//! Statuses are OpenVEX's: `not_affected` needs a justification (or an impact statement),
//! `affected` needs an action statement; `fixed` and `not_affected` suppress scan findings.

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::ComplianceError;

/// A VEX status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VexStatus {
    NotAffected,
    Affected,
    Fixed,
    UnderInvestigation,
}

impl VexStatus {
    pub fn parse(s: &str) -> Result<VexStatus, ComplianceError> {
        Ok(match s.replace('-', "_").as_str() {
            "not_affected" => VexStatus::NotAffected,
            "affected" => VexStatus::Affected,
            "fixed" => VexStatus::Fixed,
            "under_investigation" => VexStatus::UnderInvestigation,
            other => {
                return Err(ComplianceError::Rule(format!(
                    "unknown VEX status {other:?} (not_affected, affected, fixed, under_investigation)"
                )));
            }
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            VexStatus::NotAffected => "not_affected",
            VexStatus::Affected => "affected",
            VexStatus::Fixed => "fixed",
            VexStatus::UnderInvestigation => "under_investigation",
        }
    }

    /// Whether findings with this status are suppressed in scans and the fleet view.
    pub fn suppresses(self) -> bool {
        matches!(self, VexStatus::NotAffected | VexStatus::Fixed)
    }
}

/// OpenVEX justifications for `not_affected`.
pub const JUSTIFICATIONS: [&str; 5] = [
    "component_not_present",
    "vulnerable_code_not_present",
    "vulnerable_code_not_in_execute_path",
    "vulnerable_code_cannot_be_controlled_by_adversary",
    "inline_mitigations_already_exist",
];

/// One statement.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VexStatement {
    pub product: String,
    /// The vulnerability id (CVE, GHSA, RUSTSEC, ...).
    pub vulnerability: String,
    pub status: VexStatus,
    pub justification: Option<String>,
    pub impact_statement: Option<String>,
    pub action_statement: Option<String>,
    /// RFC 3339.
    pub timestamp: String,
    pub author: String,
}

impl VexStatement {
    /// Checks the rules of OpenVEX 0.2 for the status.
    pub fn validate(&self) -> Result<(), ComplianceError> {
        match self.status {
            VexStatus::NotAffected => {
                if let Some(j) = &self.justification {
                    if !JUSTIFICATIONS.contains(&j.as_str()) {
                        return Err(ComplianceError::Rule(format!(
                            "unknown justification {j:?}; one of: {}",
                            JUSTIFICATIONS.join(", ")
                        )));
                    }
                } else if self.impact_statement.is_none() {
                    return Err(ComplianceError::Rule(
                        "not_affected needs --justification or --impact (OpenVEX 0.2)".into(),
                    ));
                }
            }
            VexStatus::Affected if self.action_statement.is_none() => {
                return Err(ComplianceError::Rule(
                    "affected needs --action: what users should do (OpenVEX 0.2)".into(),
                ));
            }
            _ => {}
        }
        if self.vulnerability.trim().is_empty() {
            return Err(ComplianceError::Rule("empty vulnerability id".into()));
        }
        Ok(())
    }
}

/// An OpenVEX 0.2 document. `products` maps a statement's product to its identifiers (purls).
pub fn openvex(
    id: &str,
    author: &str,
    timestamp: &str,
    statements: &[VexStatement],
    product_ids: &dyn Fn(&str) -> Vec<String>,
) -> Value {
    let statements: Vec<Value> = statements
        .iter()
        .map(|s| {
            let mut v = json!({
                "vulnerability": {"name": s.vulnerability},
                "timestamp": s.timestamp,
                "products": product_ids(&s.product)
                    .into_iter()
                    .map(|p| json!({"@id": p}))
                    .collect::<Vec<_>>(),
                "status": s.status.as_str(),
            });
            if let Some(j) = &s.justification {
                v["justification"] = j.clone().into();
            }
            if let Some(i) = &s.impact_statement {
                v["impact_statement"] = i.clone().into();
            }
            if let Some(a) = &s.action_statement {
                v["action_statement"] = a.clone().into();
            }
            v
        })
        .collect();
    json!({
        "@context": "https://openvex.dev/ns/v0.2.0",
        "@id": id,
        "author": author,
        "timestamp": timestamp,
        "version": 1,
        "statements": statements,
    })
}

/// A CycloneDX 1.6 VEX document (a BOM holding `vulnerabilities` only).
pub fn cyclonedx_vex(
    timestamp: &str,
    statements: &[VexStatement],
    product_ids: &dyn Fn(&str) -> Vec<String>,
) -> Value {
    let vulns: Vec<Value> = statements
        .iter()
        .map(|s| {
            let state = match s.status {
                VexStatus::NotAffected => "not_affected",
                VexStatus::Affected => "exploitable",
                VexStatus::Fixed => "resolved",
                VexStatus::UnderInvestigation => "in_triage",
            };
            let mut analysis = json!({"state": state});
            if let Some(j) = &s.justification {
                analysis["justification"] = match j.as_str() {
                    "component_not_present" | "vulnerable_code_not_present" => "code_not_present",
                    "vulnerable_code_not_in_execute_path" => "code_not_reachable",
                    "vulnerable_code_cannot_be_controlled_by_adversary" => "requires_environment",
                    _ => "protected_by_mitigating_control",
                }
                .into();
            }
            let detail: Vec<&str> = [&s.impact_statement, &s.action_statement]
                .into_iter()
                .flatten()
                .map(String::as_str)
                .collect();
            if !detail.is_empty() {
                analysis["detail"] = detail.join("\n").into();
            }
            if s.status == VexStatus::Affected {
                analysis["response"] = json!(["update"]);
            }
            json!({
                "id": s.vulnerability,
                "analysis": analysis,
                "affects": product_ids(&s.product)
                    .into_iter()
                    .map(|p| json!({"ref": p}))
                    .collect::<Vec<_>>(),
            })
        })
        .collect();
    json!({
        "$schema": "http://cyclonedx.org/schema/bom-1.6.schema.json",
        "bomFormat": "CycloneDX",
        "specVersion": "1.6",
        "serialNumber": format!("urn:uuid:{}", uuid::Uuid::new_v4()),
        "version": 1,
        "metadata": {"timestamp": timestamp},
        "vulnerabilities": vulns,
    })
}
