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
    pub fn to_pem(&self) -> String {
        self.pair.serialize_pem()
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
