//! The compliance engine's errors. Every error about an input names the file and the place in
//! it (a JSON path such as `affected[0].ranges[1].events[2]`, or a line), so an operator can
//! find and fix it.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum ComplianceError {
    /// An input file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// An input is not valid: `file` and `place` say where.
    #[error("{file}: {place}: {message}")]
    Invalid {
        file: String,
        place: String,
        message: String,
    },
    /// An input's format is not one Rampart reads.
    #[error("{file}: unknown format: {message}")]
    UnknownFormat { file: String, message: String },
    /// A record breaks a rule of the regulation or of the record model.
    #[error("{0}")]
    Rule(String),
    /// An external tool (cargo) failed.
    #[error("{tool} failed: {message}")]
    Tool { tool: String, message: String },
}

impl ComplianceError {
    pub(crate) fn invalid(
        file: impl Into<String>,
        place: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        ComplianceError::Invalid {
            file: file.into(),
            place: place.into(),
            message: message.into(),
        }
    }

    /// A TOML syntax or shape error, placed at its line.
    pub(crate) fn toml(file: &str, text: &str, e: &toml::de::Error) -> Self {
        let place = match e.span() {
            Some(s) => format!("line {}", text[..s.start].matches('\n').count() + 1),
            None => "document".into(),
        };
        ComplianceError::invalid(file, place, e.message().to_owned())
    }

    /// A JSON syntax error, placed at its line and column.
    pub(crate) fn json(file: &str, e: &serde_json::Error) -> Self {
        ComplianceError::invalid(
            file,
            format!("line {} column {}", e.line(), e.column()),
            format!("not JSON: {e}"),
        )
    }

    pub(crate) fn read(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        ComplianceError::Read {
            path: path.into(),
            source,
        }
    }

    /// What the operator can do about it.
    pub fn hint(&self) -> Option<&'static str> {
        match self {
            ComplianceError::Invalid { .. } => {
                Some("fix the file at the place named; nothing was stored from it")
            }
            ComplianceError::UnknownFormat { .. } => Some(
                "Rampart reads CycloneDX JSON (1.4 to 1.6), SPDX 2.3 JSON, OSV JSON and Cargo.lock",
            ),
            ComplianceError::Tool { .. } => {
                Some("run the same cargo command by hand to see its full output")
            }
            _ => None,
        }
    }
}
