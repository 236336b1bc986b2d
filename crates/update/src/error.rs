//! Why an update was refused. Every variant names the role or target concerned so the
//! agent's log and the rollout status say exactly which check failed.

use thiserror::Error;

#[derive(Debug, Error)]
pub enum UpdateError {
    #[error("{role} metadata is malformed: {message}")]
    Malformed { role: String, message: String },
    #[error(
        "{role} metadata has {valid} valid signature(s) from its keys; {threshold} are required"
    )]
    Threshold {
        role: String,
        valid: usize,
        threshold: u32,
    },
    #[error("{role} metadata expired at {expires} (now {now}): refusing a possible freeze attack")]
    Expired {
        role: String,
        expires: String,
        now: String,
    },
    #[error("{role} version {new} is older than the trusted version {trusted}: rollback refused")]
    Rollback {
        role: String,
        trusted: u64,
        new: u64,
    },
    #[error(
        "{role} version {got} does not match the version {expected} that {by} lists: mix-and-match refused"
    )]
    VersionMismatch {
        role: String,
        expected: u64,
        got: u64,
        by: String,
    },
    #[error("root version {got} does not follow the trusted root version {trusted}")]
    RootOutOfOrder { trusted: u64, got: u64 },
    #[error(
        "{what} is {len} bytes, over the limit of {limit} bytes: refusing an endless-data attack"
    )]
    TooLarge { what: String, len: u64, limit: u64 },
    #[error("{what} is {got} bytes; the signed metadata says {expected}")]
    LengthMismatch {
        what: String,
        expected: u64,
        got: u64,
    },
    #[error("{what} has {algorithm} {got}; the signed metadata says {expected}")]
    HashMismatch {
        what: String,
        algorithm: String,
        expected: String,
        got: String,
    },
    #[error("{what} lists no hash this client supports (sha256, sha512)")]
    NoSupportedHash { what: String },
    #[error("{role} is missing: {message}")]
    Missing { role: String, message: String },
    #[error("target {0:?} is not in the signed targets metadata")]
    TargetNotFound(String),
    #[error("key: {0}")]
    Key(String),
    #[error("target {target} is built for hardware {allowed:?}; this device is {device:?}")]
    WrongHardware {
        target: String,
        allowed: Vec<String>,
        device: String,
    },
    #[error(
        "target {target} is version {version}, not newer than the installed {installed}: downgrade refused"
    )]
    Downgrade {
        target: String,
        version: String,
        installed: String,
    },
    #[error("target {target} has no usable release fields: {message}")]
    BadReleaseInfo { target: String, message: String },
    #[error("{0}")]
    Release(String),
    #[error("fetching {what}: {message}")]
    Transport { what: String, message: String },
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

impl UpdateError {
    pub(crate) fn malformed(role: &str, message: impl std::fmt::Display) -> Self {
        UpdateError::Malformed {
            role: role.to_owned(),
            message: message.to_string(),
        }
    }

    pub(crate) fn io(path: &std::path::Path, source: std::io::Error) -> Self {
        UpdateError::Io {
            path: path.display().to_string(),
            source,
        }
    }
}
