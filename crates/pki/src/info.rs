//! Reading certificates: the fields the registry, the broker and the operator need.

use ::time::OffsetDateTime;
use sha2::{Digest, Sha256};
use x509_parser::prelude::*;

use crate::error::PkiError;

/// What Rampart needs to know about a certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertInfo {
    /// Subject common name (the device id for device certificates).
    pub common_name: Option<String>,
    /// Full subject, RFC 4514 style.
    pub subject: String,
    /// Issuer common name.
    pub issuer_cn: Option<String>,
    /// Serial number, lowercase hex without separators.
    pub serial: String,
    /// SHA-256 of the DER encoding, lowercase hex.
    pub fingerprint: String,
    pub not_before: OffsetDateTime,
    pub not_after: OffsetDateTime,
    pub is_ca: bool,
    /// "ecdsa-p256", "ed25519" or the key's OID.
    pub key_algorithm: String,
    /// Full issuer, RFC 4514 style.
    pub issuer: String,
    /// Subject attributes by short name (`CN`, `O`, `OU`, `L`, `ST`, `C`, `serialNumber`).
    pub subject_fields: std::collections::BTreeMap<String, String>,
}

/// SHA-256 fingerprint of a DER certificate, lowercase hex.
pub fn fingerprint_sha256(der: &[u8]) -> String {
    hex::encode(Sha256::digest(der))
}

/// DER of the first certificate in a PEM text.
pub(crate) fn first_pem_cert(pem: &str) -> Result<Vec<u8>, String> {
    use rustls_pki_types::pem::PemObject;
    rustls_pki_types::CertificateDer::pem_slice_iter(pem.as_bytes())
        .next()
        .ok_or_else(|| "no CERTIFICATE block found".to_string())?
        .map(|c| c.to_vec())
        .map_err(|e| e.to_string())
}

impl CertInfo {
    /// Parses a DER certificate.
    pub fn from_der(der: &[u8]) -> Result<CertInfo, PkiError> {
        let (_, cert) = X509Certificate::from_der(der).map_err(|e| PkiError::CertParse {
            path: None,
            why: e.to_string(),
        })?;
        let cn = |name: &X509Name<'_>| {
            name.iter_common_name()
                .next()
                .and_then(|c| c.as_str().ok())
                .map(str::to_owned)
        };
        let spki = cert.public_key();
        let key_oid = spki.algorithm.algorithm.to_id_string();
        let key_algorithm = match key_oid.as_str() {
            "1.3.101.112" => "ed25519".to_owned(),
            "1.2.840.10045.2.1" => {
                let curve = spki
                    .algorithm
                    .parameters
                    .as_ref()
                    .and_then(|p| p.as_oid().ok())
                    .map(|o| o.to_id_string())
                    .unwrap_or_default();
                match curve.as_str() {
                    "1.2.840.10045.3.1.7" => "ecdsa-p256".to_owned(),
                    "1.3.132.0.34" => "ecdsa-p384".to_owned(),
                    other => format!("ecdsa-{other}"),
                }
            }
            "1.2.840.113549.1.1.1" => format!("rsa-{}", rsa_bits(spki).unwrap_or(0)),
            other => other.to_owned(),
        };
        Ok(CertInfo {
            common_name: cn(cert.subject()),
            subject: cert.subject().to_string(),
            issuer_cn: cn(cert.issuer()),
            serial: hex::encode(cert.raw_serial()),
            fingerprint: fingerprint_sha256(der),
            not_before: cert.validity().not_before.to_datetime(),
            not_after: cert.validity().not_after.to_datetime(),
            is_ca: cert.is_ca(),
            key_algorithm,
            issuer: cert.issuer().to_string(),
            subject_fields: subject_fields(cert.subject()),
        })
    }

    /// Parses the first certificate of a PEM text.
    pub fn from_pem(pem: &str) -> Result<CertInfo, PkiError> {
        let der = first_pem_cert(pem).map_err(|why| PkiError::CertParse { path: None, why })?;
        Self::from_der(&der)
    }

    /// Reads and parses the first certificate of a PEM file.
    pub fn read(path: &std::path::Path) -> Result<(CertInfo, Vec<u8>), PkiError> {
        let pem = std::fs::read_to_string(path).map_err(|source| PkiError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let der = first_pem_cert(&pem).map_err(|why| PkiError::CertParse {
            path: Some(path.to_path_buf()),
            why,
        })?;
        Ok((Self::from_der(&der)?, der))
    }
}

fn rsa_bits(spki: &SubjectPublicKeyInfo<'_>) -> Option<usize> {
    match spki.parsed().ok()? {
        x509_parser::public_key::PublicKey::RSA(rsa) => Some(rsa.key_size()),
        _ => None,
    }
}

fn subject_fields(name: &X509Name<'_>) -> std::collections::BTreeMap<String, String> {
    let mut out = std::collections::BTreeMap::new();
    for attr in name.iter_attributes() {
        let key = match attr.attr_type().to_id_string().as_str() {
            "2.5.4.3" => "CN",
            "2.5.4.10" => "O",
            "2.5.4.11" => "OU",
            "2.5.4.7" => "L",
            "2.5.4.8" => "ST",
            "2.5.4.6" => "C",
            "2.5.4.5" => "serialNumber",
            _ => continue,
        };
        if let Ok(v) = attr.as_str() {
            out.entry(key.to_owned()).or_insert_with(|| v.to_owned());
        }
    }
    out
}

/// True if `ca_der`'s key signed `cert_der` (used to tell which trusted CA issued a client
/// certificate that rustls has already verified against the set of all of them).
pub fn issued_by(cert_der: &[u8], ca_der: &[u8]) -> bool {
    let (Ok((_, cert)), Ok((_, ca))) = (
        X509Certificate::from_der(cert_der),
        X509Certificate::from_der(ca_der),
    ) else {
        return false;
    };
    cert.issuer() == ca.subject() && cert.verify_signature(Some(ca.public_key())).is_ok()
}

/// DER of every certificate in a PEM text.
pub fn pem_certs(pem: &str) -> Result<Vec<Vec<u8>>, PkiError> {
    use rustls_pki_types::pem::PemObject;
    rustls_pki_types::CertificateDer::pem_slice_iter(pem.as_bytes())
        .map(|c| c.map(|c| c.to_vec()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| PkiError::CertParse {
            path: None,
            why: e.to_string(),
        })
}
