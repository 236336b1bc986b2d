//! Reading SBOMs made by other tools: the format is detected from the document, never from
//! the file name.

use std::path::Path;

use serde_json::Value;

use super::{Sbom, cyclonedx, spdx};
use crate::ComplianceError;

/// Reads a CycloneDX (1.4-1.6) or SPDX 2.3 JSON SBOM from a file.
pub fn read_file(path: &Path) -> Result<Sbom, ComplianceError> {
    let text = std::fs::read_to_string(path).map_err(|e| ComplianceError::read(path, e))?;
    parse(&path.display().to_string(), &text)
}

/// Parses an SBOM document; `file` names it in errors.
pub fn parse(file: &str, text: &str) -> Result<Sbom, ComplianceError> {
    let trimmed = text.trim_start();
    if trimmed.starts_with('<') {
        return Err(ComplianceError::UnknownFormat {
            file: file.into(),
            message: "XML SBOMs are not read; export JSON".into(),
        });
    }
    if trimmed.starts_with("SPDXVersion:") {
        return Err(ComplianceError::UnknownFormat {
            file: file.into(),
            message: "SPDX tag-value is not read; export SPDX JSON".into(),
        });
    }
    let doc: Value = serde_json::from_str(text).map_err(|e| ComplianceError::json(file, &e))?;
    if doc.get("bomFormat").and_then(Value::as_str) == Some("CycloneDX") {
        cyclonedx::read(file, &doc)
    } else if doc.get("spdxVersion").is_some() {
        spdx::read(file, &doc)
    } else {
        Err(ComplianceError::UnknownFormat {
            file: file.into(),
            message: "neither a CycloneDX document (bomFormat) nor an SPDX one (spdxVersion)"
                .into(),
        })
    }
}
