//! Ed25519 keys in TUF's form. A public key is `{"keytype": "ed25519", "scheme": "ed25519",
//! "keyval": {"public": HEX}}`; its key id is the SHA-256 of that object's canonical JSON.
//! A signing key is a PKCS#8 document in a PEM file (`PRIVATE KEY`), so offline keys can be
//! kept with the same tools as any other key.

use std::path::Path;

use ring::rand::SystemRandom;
use ring::signature::{ED25519, Ed25519KeyPair, KeyPair, UnparsedPublicKey};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use crate::{UpdateError, canonical};

/// A public key as TUF metadata lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublicKey {
    pub keytype: String,
    pub scheme: String,
    pub keyval: KeyVal,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyVal {
    pub public: String,
}

impl PublicKey {
    pub fn ed25519(public: &[u8]) -> PublicKey {
        PublicKey {
            keytype: "ed25519".into(),
            scheme: "ed25519".into(),
            keyval: KeyVal {
                public: hex::encode(public),
            },
        }
    }

    /// The TUF key id: hex SHA-256 of the key's canonical JSON.
    pub fn key_id(&self) -> String {
        let v = serde_json::json!({
            "keytype": self.keytype,
            "scheme": self.scheme,
            "keyval": {"public": self.keyval.public},
        });
        // The object holds strings only, which always have a canonical form.
        let bytes = canonical::to_vec(&v).unwrap_or_default();
        hex::encode(Sha256::digest(bytes))
    }

    /// Whether `sig` is this key's signature of `message`. Keys of other types never verify.
    pub fn verify(&self, message: &[u8], sig: &[u8]) -> bool {
        if self.keytype != "ed25519" || self.scheme != "ed25519" {
            return false;
        }
        let Ok(public) = hex::decode(&self.keyval.public) else {
            return false;
        };
        UnparsedPublicKey::new(&ED25519, public)
            .verify(message, sig)
            .is_ok()
    }
}

/// A private Ed25519 key that signs metadata.
pub struct SigningKey {
    pair: Ed25519KeyPair,
    pkcs8: Zeroizing<Vec<u8>>,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the private half.
        write!(f, "SigningKey({})", self.public().key_id())
    }
}

const PEM_LABEL: &str = "PRIVATE KEY";

impl SigningKey {
    pub fn generate() -> Result<SigningKey, UpdateError> {
        let doc = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new())
            .map_err(|_| UpdateError::Key("the system random generator failed".into()))?;
        SigningKey::from_pkcs8(doc.as_ref())
    }

    pub fn from_pkcs8(der: &[u8]) -> Result<SigningKey, UpdateError> {
        let pair = Ed25519KeyPair::from_pkcs8_maybe_unchecked(der)
            .map_err(|e| UpdateError::Key(format!("not an Ed25519 PKCS#8 key: {e}")))?;
        Ok(SigningKey {
            pair,
            pkcs8: Zeroizing::new(der.to_vec()),
        })
    }

    /// The key as a PEM document (`-----BEGIN PRIVATE KEY-----`).
    pub fn to_pem(&self) -> Zeroizing<String> {
        Zeroizing::new(pem::encode(&pem::Pem::new(PEM_LABEL, self.pkcs8.to_vec())))
    }

    pub fn from_pem(text: &str) -> Result<SigningKey, UpdateError> {
        let block = pem::parse(text).map_err(|e| {
            UpdateError::Key(format!(
                "no \"{PEM_LABEL}\" PEM block ({e}); expected a PKCS#8 Ed25519 key written by `rampart release keygen`"
            ))
        })?;
        if block.tag() != PEM_LABEL {
            return Err(UpdateError::Key(format!(
                "a \"{}\" PEM block; expected \"{PEM_LABEL}\"",
                block.tag()
            )));
        }
        SigningKey::from_pkcs8(&Zeroizing::new(block.into_contents()))
    }

    pub fn load(path: &Path) -> Result<SigningKey, UpdateError> {
        let pem =
            Zeroizing::new(std::fs::read_to_string(path).map_err(|e| UpdateError::io(path, e))?);
        SigningKey::from_pem(&pem).map_err(|e| UpdateError::Key(format!("{}: {e}", path.display())))
    }

    pub fn public(&self) -> PublicKey {
        PublicKey::ed25519(self.pair.public_key().as_ref())
    }

    pub fn sign(&self, message: &[u8]) -> Vec<u8> {
        self.pair.sign(message).as_ref().to_vec()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pem_round_trip_signs_and_verifies() {
        let k = SigningKey::generate().expect("key");
        let again = SigningKey::from_pem(&k.to_pem()).expect("parse");
        assert_eq!(k.public(), again.public());
        let sig = again.sign(b"hello");
        assert!(k.public().verify(b"hello", &sig));
        assert!(!k.public().verify(b"hellO", &sig));
        assert_eq!(k.public().key_id().len(), 64);
        assert!(format!("{k:?}").starts_with("SigningKey("));
    }

    #[test]
    fn garbage_keys_are_refused_with_a_hint() {
        assert!(SigningKey::from_pem("nothing here").is_err());
        let bad = "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n";
        assert!(SigningKey::from_pem(bad).is_err());
        let other = PublicKey {
            keytype: "rsa".into(),
            ..SigningKey::generate().expect("key").public()
        };
        assert!(!other.verify(b"x", &[0; 64]));
    }
}
