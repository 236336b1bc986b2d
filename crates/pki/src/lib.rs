//! Rampart's certificate authority.
//!
//! Owns every X.509 operation the platform performs: creating the root CA and the device
//! issuing CA, the hub's TLS server certificate, device certificates (from a PKCS#10 CSR, the
//! normal path where the key never leaves the device, or as a key + certificate bundle for
//! demos and factory provisioning), reading certificates back (`CertInfo`), and writing key
//! files with safe permissions (`files`).
//!
//! Trust layout: the root CA signs the device CA and the hub certificate. Devices trust the
//! root (to authenticate the hub); the hub trusts only the device CA for client certificates,
//! so no certificate signed directly by the root — the hub's own included — can log in as a
//! device. Extended key usages keep server and client certificates apart as well.

mod authority;
pub mod crl;
mod csr;
mod error;
pub mod files;
mod id;
mod info;
mod key;
pub mod token;

pub use authority::{
    Authority, IssuedCert, IssuedCrl, RevocationReason, RevokedEntry, Validity, random_hex,
};
pub use crl::{CrlError, VerifiedCrl};
pub use csr::{CheckedCsr, create_csr};
pub use error::PkiError;
pub use id::{MAX_DEVICE_ID_LEN, validate_device_id};
pub use info::{CertInfo, fingerprint_sha256, issued_by, pem_certs};
pub use key::{KeyAlgorithm, PrivateKey};
