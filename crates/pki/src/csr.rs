//! PKCS#10 certificate signing requests: creating them (on the device) and checking them
//! (at the CA) before anything is signed.

use rcgen::{
    CertificateParams, DistinguishedName, DnType, PKCS_ECDSA_P256_SHA256, PKCS_ED25519,
    PublicKeyData, SignatureAlgorithm,
};
use x509_parser::prelude::FromDer;

use crate::error::PkiError;
use crate::key::{KeyAlgorithm, PrivateKey};

const OID_EC_PUBLIC_KEY: &str = "1.2.840.10045.2.1";
const OID_P256: &str = "1.2.840.10045.3.1.7";
const OID_ED25519: &str = "1.3.101.112";

/// Creates a PEM CSR for `device_id` signed with `key`: what a device sends to get (or renew)
/// its certificate. The request carries the subject CN and the public key, nothing else.
pub fn create_csr(device_id: &str, key: &PrivateKey) -> Result<String, PkiError> {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, device_id);
    params.distinguished_name = dn;
    let csr = params
        .serialize_request(&key.pair)
        .map_err(PkiError::Signing)?;
    csr.pem().map_err(PkiError::Signing)
}

/// The public key of a CSR whose self-signature has been verified.
#[derive(Debug, Clone)]
pub struct CsrPublicKey {
    raw: Vec<u8>,
    alg: &'static SignatureAlgorithm,
}

impl PublicKeyData for CsrPublicKey {
    fn der_bytes(&self) -> &[u8] {
        &self.raw
    }

    fn algorithm(&self) -> &'static SignatureAlgorithm {
        self.alg
    }
}

/// A CSR that parsed, whose signature verifies with the key it carries (proof of possession),
/// and whose key is of a type Rampart accepts.
#[derive(Debug, Clone)]
pub struct CheckedCsr {
    pub(crate) public_key: CsrPublicKey,
    /// Subject CN the device asked for, if any.
    pub subject_cn: Option<String>,
    /// Key algorithm of the request.
    pub algorithm: KeyAlgorithm,
}

impl CheckedCsr {
    /// Parses and verifies a PEM-encoded CSR.
    pub fn from_pem(pem: &str) -> Result<CheckedCsr, PkiError> {
        let der = rustls_pki_types::CertificateSigningRequestDer::from_pem_slice_checked(pem)?;
        Self::from_der(&der)
    }

    /// Parses and verifies a DER-encoded CSR.
    pub fn from_der(der: &[u8]) -> Result<CheckedCsr, PkiError> {
        let (rest, csr) =
            x509_parser::certification_request::X509CertificationRequest::from_der(der)
                .map_err(|e| PkiError::CsrParse(e.to_string()))?;
        if !rest.is_empty() {
            return Err(PkiError::CsrParse("trailing data after the request".into()));
        }
        let info = &csr.certification_request_info;
        let spki = &info.subject_pki;
        let key_oid = spki.algorithm.algorithm.to_id_string();
        let (algorithm, alg) = if key_oid == OID_ED25519 {
            (KeyAlgorithm::Ed25519, &PKCS_ED25519)
        } else if key_oid == OID_EC_PUBLIC_KEY {
            let curve = spki
                .algorithm
                .parameters
                .as_ref()
                .and_then(|p| p.as_oid().ok())
                .map(|o| o.to_id_string())
                .unwrap_or_default();
            if curve != OID_P256 {
                return Err(PkiError::CsrUnsupportedKey(format!("EC curve {curve}")));
            }
            (KeyAlgorithm::EcdsaP256, &PKCS_ECDSA_P256_SHA256)
        } else {
            return Err(PkiError::CsrUnsupportedKey(format!("key type {key_oid}")));
        };
        csr.verify_signature()
            .map_err(|_| PkiError::CsrBadSignature)?;
        let subject_cn = info
            .subject
            .iter_common_name()
            .next()
            .map(|cn| {
                cn.as_str()
                    .map(str::to_owned)
                    .map_err(|_| PkiError::CsrParse("subject CN is not a string".into()))
            })
            .transpose()?;
        Ok(CheckedCsr {
            public_key: CsrPublicKey {
                raw: spki.subject_public_key.data.to_vec(),
                alg,
            },
            subject_cn,
            algorithm,
        })
    }

    /// Drops the requested subject: for flows where the CA, not the device, decides the
    /// identity (fleet provisioning). Only the verified public key is used then.
    pub fn without_subject(mut self) -> Self {
        self.subject_cn = None;
        self
    }

    /// Refuses a CSR that names a different device than the one being issued for.
    pub(crate) fn check_subject(&self, device_id: &str) -> Result<(), PkiError> {
        match &self.subject_cn {
            Some(cn) if cn != device_id => Err(PkiError::CsrSubjectMismatch {
                requested: cn.clone(),
                device: device_id.to_owned(),
            }),
            _ => Ok(()),
        }
    }
}

trait FromPemChecked: Sized {
    fn from_pem_slice_checked(pem: &str) -> Result<Self, PkiError>;
}

impl FromPemChecked for rustls_pki_types::CertificateSigningRequestDer<'static> {
    fn from_pem_slice_checked(pem: &str) -> Result<Self, PkiError> {
        use rustls_pki_types::pem::PemObject;
        Self::from_pem_slice(pem.as_bytes())
            .map_err(|e| PkiError::CsrParse(format!("not a PEM CERTIFICATE REQUEST: {e}")))
    }
}
