//! The simulated fleet's identities: a CA created for the run and one ECDSA P-256 client
//! certificate per device (CN = device id), plus a subscriber identity and a server
//! certificate for `localhost`/`127.0.0.1` that a broker under test can use.
//!
//! Everything lives in one JSON file (`fleet.json`, mode 0600: it holds private keys of a
//! throw-away CA) so generator processes and brokers share it without thousands of files.

use std::path::Path;

use rampart_pki::{Authority, KeyAlgorithm, Validity};
use serde::{Deserialize, Serialize};

use crate::LoadError;

/// One identity: its id (the certificate's CN) and PEM certificate and key.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Identity {
    pub id: String,
    pub cert_pem: String,
    pub key_pem: String,
    /// SHA-256 fingerprint and serial of the certificate (for registries that want them).
    pub fingerprint: String,
    pub serial: String,
    #[serde(with = "time::serde::rfc3339")]
    pub not_before: time::OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub not_after: time::OffsetDateTime,
}

/// The fleet of a run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Fleet {
    pub ca_pem: String,
    pub ca_fingerprint: String,
    /// A server certificate for `localhost` and `127.0.0.1`, for a broker under test.
    pub server: Identity,
    /// The subscriber (fan-in) or publisher (fan-out) on the other side.
    pub subscriber: Identity,
    pub devices: Vec<Identity>,
}

/// The id of device `i` of a fleet.
pub fn device_id(i: usize) -> String {
    format!("bench-{i:05}")
}

/// The subscriber's id.
pub const SUBSCRIBER_ID: &str = "bench-subscriber";

fn identity(cert: rampart_pki::IssuedCert, key: rampart_pki::PrivateKey, id: &str) -> Identity {
    Identity {
        id: id.to_owned(),
        key_pem: key.to_pem(),
        fingerprint: cert.info.fingerprint.clone(),
        serial: cert.info.serial.clone(),
        not_before: cert.info.not_before,
        not_after: cert.info.not_after,
        cert_pem: cert.pem,
    }
}

impl Fleet {
    /// Creates a CA and `n` device identities. Validities are long enough that a broker's
    /// expiry warnings (the hub's audit) stay quiet during a run.
    pub fn issue(n: usize) -> Result<Fleet, LoadError> {
        let validity = Validity::days_from_now(90);
        let ca = Authority::create_root(
            "Rampart bench CA",
            Some("rampart bench"),
            KeyAlgorithm::EcdsaP256,
            Validity::days_from_now(800),
        )?;
        let (cert, key) = ca.issue_server(
            &["localhost".into(), "127.0.0.1".into()],
            KeyAlgorithm::EcdsaP256,
            validity,
        )?;
        let server = identity(cert, key, "localhost");
        let (cert, key) = ca.issue_device(SUBSCRIBER_ID, KeyAlgorithm::EcdsaP256, validity)?;
        let subscriber = identity(cert, key, SUBSCRIBER_ID);
        let mut devices = Vec::with_capacity(n);
        for i in 0..n {
            let id = device_id(i);
            let (cert, key) = ca.issue_device(&id, KeyAlgorithm::EcdsaP256, validity)?;
            devices.push(identity(cert, key, &id));
        }
        Ok(Fleet {
            ca_pem: ca.cert_pem().to_owned(),
            ca_fingerprint: ca.info().fingerprint.clone(),
            server,
            subscriber,
            devices,
        })
    }

    /// Writes the fleet to `path` (0600).
    pub fn save(&self, path: &Path) -> Result<(), LoadError> {
        let bytes = serde_json::to_vec(self).map_err(|e| LoadError::Fleet {
            path: path.to_path_buf(),
            detail: e.to_string(),
        })?;
        rampart_pki::files::write_secret(path, &bytes, true)?;
        Ok(())
    }

    pub fn load(path: &Path) -> Result<Fleet, LoadError> {
        let bytes = std::fs::read(path).map_err(|e| LoadError::Fleet {
            path: path.to_path_buf(),
            detail: e.to_string(),
        })?;
        serde_json::from_slice(&bytes).map_err(|e| LoadError::Fleet {
            path: path.to_path_buf(),
            detail: format!("not a fleet file: {e}"),
        })
    }

    /// Writes the CA, the server certificate and key as PEM files into `dir` (for a broker
    /// configured by files, such as Mosquitto): `ca.pem`, `server.pem`, `server.key`.
    pub fn write_server_files(&self, dir: &Path) -> Result<(), LoadError> {
        rampart_pki::files::write_public(&dir.join("ca.pem"), self.ca_pem.as_bytes(), true)?;
        rampart_pki::files::write_public(
            &dir.join("server.pem"),
            self.server.cert_pem.as_bytes(),
            true,
        )?;
        rampart_pki::files::write_secret(
            &dir.join("server.key"),
            self.server.key_pem.as_bytes(),
            true,
        )?;
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn a_fleet_round_trips_through_its_file_and_each_device_has_its_own_certificate() {
        let d = tempfile::tempdir().unwrap();
        let f = Fleet::issue(3).unwrap();
        f.save(&d.path().join("fleet.json")).unwrap();
        let back = Fleet::load(&d.path().join("fleet.json")).unwrap();
        assert_eq!(back.devices.len(), 3);
        assert_eq!(back.devices[2].id, "bench-00002");
        let fps: std::collections::HashSet<_> =
            back.devices.iter().map(|d| &d.fingerprint).collect();
        assert_eq!(fps.len(), 3);
        let info = rampart_pki::CertInfo::from_pem(&back.devices[0].cert_pem).unwrap();
        assert_eq!(info.common_name.as_deref(), Some("bench-00000"));
        std::fs::write(d.path().join("bad.json"), b"{").unwrap();
        assert!(
            Fleet::load(&d.path().join("bad.json"))
                .unwrap_err()
                .to_string()
                .contains("not a fleet file")
        );
    }
}
