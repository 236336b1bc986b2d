//! A hub's data directory and `rampart init`.
//!
//! ```text
//! DATA/
//!   rampart.toml          configuration (0644)
//!   rampart.db            SQLite registry and telemetry (when storage.backend = "sqlite")
//!   hub.sock              control socket of the running hub (0600)
//!   pki/                  (0700)
//!     root-ca.crt  root-ca.key      root CA (move the key offline after init)
//!     device-ca.crt device-ca.key   issuing CA for device certificates
//!     hub.crt      hub.key          the hub's TLS server certificate
//!     ca-chain.crt                  what devices trust to authenticate the hub (the root)
//! ```

use std::path::{Path, PathBuf};

use rampart_pki::{Authority, KeyAlgorithm, Validity, files};

use crate::config::{self, HubConfig};
use crate::error::HubError;

/// File name of the configuration inside the data directory.
pub const CONFIG_FILE: &str = "rampart.toml";
/// File name of the control socket.
pub const SOCKET_FILE: &str = "hub.sock";

/// A hub data directory.
#[derive(Debug, Clone)]
pub struct DataDir {
    root: PathBuf,
}

impl DataDir {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        DataDir { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn config_path(&self) -> PathBuf {
        self.root.join(CONFIG_FILE)
    }

    pub fn socket_path(&self) -> PathBuf {
        self.root.join(SOCKET_FILE)
    }

    /// The CA bundle devices use to authenticate the hub.
    pub fn ca_chain_path(&self) -> PathBuf {
        self.root.join("pki/ca-chain.crt")
    }

    /// A path from the configuration, made absolute against the data directory.
    pub fn resolve(&self, p: &Path) -> PathBuf {
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.root.join(p)
        }
    }

    /// Loads and validates `rampart.toml`.
    pub fn load_config(&self) -> Result<HubConfig, HubError> {
        let path = self.config_path();
        if !path.exists() {
            return Err(HubError::NotInitialized {
                path: self.root.clone(),
            });
        }
        HubConfig::load(&path)
    }

    /// Loads the device issuing CA.
    pub fn device_ca(&self, cfg: &HubConfig) -> Result<Authority, HubError> {
        Ok(Authority::load(
            &self.resolve(&cfg.pki.device_ca_cert),
            &self.resolve(&cfg.pki.device_ca_key),
        )?)
    }
}

/// What `rampart init` created.
#[derive(Debug)]
pub struct InitReport {
    pub root_fingerprint: String,
    pub device_ca_fingerprint: String,
    pub hub_names: Vec<String>,
}

/// Creates a data directory: root CA, device CA, hub certificate and a documented
/// `rampart.toml`. Refuses to touch an initialised directory unless `force`.
pub fn init(
    dir: &DataDir,
    hostnames: &[String],
    alg: KeyAlgorithm,
    force: bool,
) -> Result<InitReport, HubError> {
    if dir.config_path().exists() && !force {
        return Err(HubError::AlreadyInitialized {
            path: dir.root().to_path_buf(),
        });
    }
    let mut names: Vec<String> = vec!["localhost".into(), "127.0.0.1".into()];
    for h in hostnames {
        if !names.contains(h) {
            names.push(h.clone());
        }
    }
    files::create_private_dir(dir.root())?;
    files::create_private_dir(&dir.root().join("pki"))?;
    // A per-installation suffix keeps the CAs of different hubs apart by name, so a
    // certificate from another installation is reported as "unknown CA".
    let suffix = rampart_pki::random_hex(4)?;
    let root = Authority::create_root(
        &format!("Rampart Root CA {suffix}"),
        Some("Rampart"),
        alg,
        Validity::days_from_now(20 * 365),
    )?;
    let device_ca = root.create_intermediate(
        &format!("Rampart Device CA {suffix}"),
        Some("Rampart"),
        alg,
        Validity::days_from_now(10 * 365),
    )?;
    let (hub_cert, hub_key) = root.issue_server(&names, alg, Validity::days_from_now(2 * 365))?;
    let d = HubConfig::default();
    let pki = dir.root().join("pki");
    files::write_public(
        &dir.resolve(&d.pki.root_ca_cert),
        root.cert_pem().as_bytes(),
        force,
    )?;
    files::write_secret(&pki.join("root-ca.key"), root.key_pem().as_bytes(), force)?;
    files::write_public(
        &dir.resolve(&d.pki.device_ca_cert),
        device_ca.cert_pem().as_bytes(),
        force,
    )?;
    files::write_secret(
        &dir.resolve(&d.pki.device_ca_key),
        device_ca.key_pem().as_bytes(),
        force,
    )?;
    files::write_public(
        &dir.resolve(&d.tls.server_cert),
        hub_cert.pem.as_bytes(),
        force,
    )?;
    files::write_secret(
        &dir.resolve(&d.tls.server_key),
        hub_key.to_pem().as_bytes(),
        force,
    )?;
    files::write_public(&dir.ca_chain_path(), root.cert_pem().as_bytes(), force)?;
    let mut cfg_text = config::template(&names);
    if alg != KeyAlgorithm::default() {
        cfg_text = cfg_text.replace(
            "key_algorithm = \"ecdsa-p256\"",
            &format!("key_algorithm = \"{alg}\""),
        );
    }
    files::write_public(&dir.config_path(), cfg_text.as_bytes(), force)?;
    Ok(InitReport {
        root_fingerprint: root.info().fingerprint.clone(),
        device_ca_fingerprint: device_ca.info().fingerprint.clone(),
        hub_names: names,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn init_creates_a_working_layout_and_refuses_to_overwrite() {
        let tmp = tempfile::tempdir().expect("tmp");
        let dir = DataDir::new(tmp.path().join("hub"));
        let report = init(
            &dir,
            &["hub.example.com".into()],
            KeyAlgorithm::EcdsaP256,
            false,
        )
        .expect("init");
        assert_eq!(
            report.hub_names,
            vec!["localhost", "127.0.0.1", "hub.example.com"]
        );
        let cfg = dir.load_config().expect("config loads");
        dir.device_ca(&cfg).expect("device CA loads");
        for key in ["pki/root-ca.key", "pki/device-ca.key", "pki/hub.key"] {
            let mode = std::fs::metadata(dir.root().join(key))
                .expect("stat")
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600, "{key}");
        }
        let mode = std::fs::metadata(dir.root().join("pki"))
            .expect("stat")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o700);
        let e = init(&dir, &[], KeyAlgorithm::EcdsaP256, false).expect_err("second init");
        assert!(matches!(e, HubError::AlreadyInitialized { .. }));
        init(&dir, &[], KeyAlgorithm::Ed25519, true).expect("forced init");
        assert_eq!(dir.load_config().expect("cfg").pki.key_algorithm, "ed25519");
    }
}
