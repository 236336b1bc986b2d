//! Key algorithms and private keys.

use std::fmt;
use std::path::Path;
use std::str::FromStr;

use rcgen::{KeyPair, PKCS_ECDSA_P256_SHA256, PKCS_ED25519, SignatureAlgorithm};

use crate::error::PkiError;

/// The key types Rampart creates and accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum KeyAlgorithm {
    /// ECDSA on NIST P-256 with SHA-256: the widest hardware and TLS-stack support.
    #[default]
    EcdsaP256,
    /// Ed25519: small and fast, for devices whose TLS stack supports it.
    Ed25519,
}

impl KeyAlgorithm {
    pub(crate) fn rcgen(self) -> &'static SignatureAlgorithm {
        match self {
            KeyAlgorithm::EcdsaP256 => &PKCS_ECDSA_P256_SHA256,
            KeyAlgorithm::Ed25519 => &PKCS_ED25519,
        }
    }

    /// Canonical name, as used in configuration files and on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            KeyAlgorithm::EcdsaP256 => "ecdsa-p256",
            KeyAlgorithm::Ed25519 => "ed25519",
        }
    }
}

impl fmt::Display for KeyAlgorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for KeyAlgorithm {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "ecdsa-p256" | "p256" | "ecdsa" => Ok(KeyAlgorithm::EcdsaP256),
            "ed25519" => Ok(KeyAlgorithm::Ed25519),
            other => Err(format!(
                "unknown key algorithm {other:?} (expected ecdsa-p256 or ed25519)"
            )),
        }
    }
}

/// DER prefix of an RFC 8410 Ed25519 PKCS#8 v1 key; the 32-byte seed follows.
const ED25519_PKCS8_V1_PREFIX: [u8; 16] = [
    0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20,
];
/// DER prefix of the PKCS#8 v2 document ring generates for Ed25519.
const ED25519_PKCS8_V2_PREFIX: [u8; 16] = [
    0x30, 0x51, 0x02, 0x01, 0x01, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20,
];

/// The seed of a ring-generated Ed25519 PKCS#8 v2 document, if `der` is one.
fn ed25519_v2_seed(der: &[u8]) -> Option<&[u8]> {
    if der.len() == 83 && der.starts_with(&ED25519_PKCS8_V2_PREFIX) {
        der.get(16..48)
    } else {
        None
    }
}

/// A private key held in memory.
pub struct PrivateKey {
    pub(crate) pair: KeyPair,
}

impl fmt::Debug for PrivateKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print key material.
        f.debug_struct("PrivateKey").finish_non_exhaustive()
    }
}

impl PrivateKey {
    /// Creates a new random key.
    pub fn generate(alg: KeyAlgorithm) -> Result<Self, PkiError> {
        let pair = KeyPair::generate_for(alg.rcgen()).map_err(PkiError::KeyGeneration)?;
        Ok(PrivateKey { pair })
    }

    /// Parses a PKCS#8 PEM key.
    pub fn from_pem(pem: &str, origin: &Path) -> Result<Self, PkiError> {
        let pair = KeyPair::from_pem(pem).map_err(|source| PkiError::KeyParse {
            path: origin.to_path_buf(),
            source,
        })?;
        Ok(PrivateKey { pair })
    }

    /// Reads a PKCS#8 PEM key file.
    pub fn read(path: &Path) -> Result<Self, PkiError> {
        let pem = std::fs::read_to_string(path).map_err(|source| PkiError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_pem(&pem, path)
    }

    /// PKCS#8 PEM encoding.
    ///
    /// Ed25519 keys are written in the RFC 8410 PKCS#8 v1 form (private key only), which
    /// every TLS stack reads; ring produces v2 (with the public key), which OpenSSL 3.0 —
    /// and so mosquitto and most device TLS stacks — cannot parse.
    pub fn to_pem(&self) -> String {
        let der = self.pair.serialize_der();
        match ed25519_v2_seed(&der) {
            Some(seed) => {
                let mut v1 = ED25519_PKCS8_V1_PREFIX.to_vec();
                v1.extend_from_slice(seed);
                pem::encode_config(
                    &pem::Pem::new("PRIVATE KEY", v1),
                    pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF),
                )
            }
            None => self.pair.serialize_pem(),
        }
    }

    /// The key's algorithm, if it is one Rampart creates.
    pub fn algorithm(&self) -> Option<KeyAlgorithm> {
        let alg = self.pair.algorithm();
        if alg == &PKCS_ECDSA_P256_SHA256 {
            Some(KeyAlgorithm::EcdsaP256)
        } else if alg == &PKCS_ED25519 {
            Some(KeyAlgorithm::Ed25519)
        } else {
            None
        }
    }
}
