//! Errors of the PKI crate.

use std::path::PathBuf;

/// Everything that can go wrong creating, issuing or reading certificates and keys.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("invalid device id {id:?}: {why}")]
    InvalidDeviceId { id: String, why: &'static str },
    #[error("key generation failed: {0}")]
    KeyGeneration(rcgen::Error),
    #[error("cannot parse private key {path}: {source}")]
    KeyParse { path: PathBuf, source: rcgen::Error },
    #[error("cannot parse certificate{}: {why}", path.as_ref().map(|p| format!(" {}", p.display())).unwrap_or_default())]
    CertParse { path: Option<PathBuf>, why: String },
    #[error("certificate signing failed: {0}")]
    Signing(rcgen::Error),
    #[error("CSR is not a valid PKCS#10 request: {0}")]
    CsrParse(String),
    #[error("CSR signature does not verify: the request was not made with the key it contains")]
    CsrBadSignature,
    #[error("CSR uses an unsupported key type ({0}); use ECDSA P-256 or Ed25519")]
    CsrUnsupportedKey(String),
    #[error("CSR asks for subject CN {requested:?} but the certificate is for device {device:?}")]
    CsrSubjectMismatch { requested: String, device: String },
    #[error("CSR requests extensions the CA does not accept ({0}); send a CSR with no extensions")]
    CsrUnsupportedExtension(String),
    #[error("{path} already exists; pass --force to overwrite it")]
    AlreadyExists { path: PathBuf },
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid validity period: {0}")]
    Validity(&'static str),
}
