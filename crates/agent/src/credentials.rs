//! The device's credentials on disk, and changing them without ever being left without a
//! working pair.
//!
//! ```text
//! device.key / device.crt          the credentials in use
//! device.key.new / device.crt.new  a renewed pair, not yet proven (pending)
//! device.key.old / device.crt.old  the previous pair, kept until the next renewal
//! ```
//!
//! A renewal writes the pending pair (temporary file, fsync, rename — a crash leaves either
//! the old file or the complete new one), connects with it, and only then promotes it
//! (`current` → `.old`, `.new` → `current`). If the pending pair cannot connect it is deleted
//! and the current pair stays. On start, a pending pair left by a crash is tried first.
//!
//! With `storage.encrypt_credentials` (the default) the key files are sealed with the device's
//! storage key ([`crate::vault`]); plain PEM keys found at start (a bundle copied in by the
//! installer) are sealed in place. The factory claim key is left as shipped: it is a batch
//! credential that only allows provisioning, and a factory reset must not make it unreadable.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use std::sync::Arc;

use rampart_pki::CertInfo;
use time::OffsetDateTime;
use zeroize::Zeroizing;

use crate::error::AgentError;
use crate::vault::{Vault, is_sealed};

/// A certificate and its key, as files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pair {
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl Pair {
    fn with_suffix(&self, suffix: &str) -> Pair {
        let add = |p: &Path| {
            let mut s = p.as_os_str().to_owned();
            s.push(suffix);
            PathBuf::from(s)
        };
        Pair {
            cert: add(&self.cert),
            key: add(&self.key),
        }
    }

    pub fn exists(&self) -> bool {
        self.cert.exists() && self.key.exists()
    }

    /// The private key in PEM, opened if sealed.
    pub fn key_pem(&self, vault: &Vault) -> Result<Zeroizing<Vec<u8>>, AgentError> {
        vault
            .read_secret(&self.key)
            .map_err(|e| AgentError::Tls(e.to_string()))
    }

    /// The certificate's details.
    pub fn info(&self) -> Result<CertInfo, AgentError> {
        CertInfo::read(&self.cert)
            .map(|(i, _)| i)
            .map_err(|e| AgentError::Tls(format!("{}: {e}", self.cert.display())))
    }
}

/// The credential files of the device.
#[derive(Debug, Clone)]
pub struct Credentials {
    pub current: Pair,
    vault: Arc<Vault>,
    /// Seal keys written from now on.
    seal: bool,
}

fn io_err(path: &Path, e: std::io::Error) -> AgentError {
    AgentError::State {
        path: path.to_path_buf(),
        source: e,
    }
}

/// Writes `data` to `path` atomically: temporary file with `mode`, fsync, rename, fsync of
/// the directory.
pub fn write_atomic(path: &Path, data: &[u8], mode: u32) -> Result<(), AgentError> {
    let tmp = {
        let mut s = path.as_os_str().to_owned();
        s.push(".tmp");
        PathBuf::from(s)
    };
    let write = || -> std::io::Result<()> {
        let _ = fs::remove_file(&tmp);
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)?;
        f.write_all(data)?;
        f.sync_all()?;
        drop(f);
        fs::rename(&tmp, path)?;
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            fs::File::open(dir)?.sync_all()?;
        }
        Ok(())
    };
    write().map_err(|e| {
        let _ = fs::remove_file(&tmp);
        io_err(path, e)
    })
}

fn rename(from: &Path, to: &Path) -> Result<(), AgentError> {
    fs::rename(from, to).map_err(|e| io_err(from, e))
}

impl Credentials {
    pub fn new(cert: PathBuf, key: PathBuf, vault: Arc<Vault>, seal: bool) -> Credentials {
        Credentials {
            current: Pair { cert, key },
            vault,
            seal,
        }
    }

    pub fn vault(&self) -> &Arc<Vault> {
        &self.vault
    }

    /// Seals plain key files of the current, pending and previous pairs (when sealing is
    /// on); returns the files sealed.
    pub fn seal_plain_keys(&self) -> Result<Vec<PathBuf>, AgentError> {
        let mut sealed = Vec::new();
        if !self.seal {
            return Ok(sealed);
        }
        for pair in [self.current.clone(), self.pending(), self.previous()] {
            if pair.key.exists() && !is_sealed(&pair.key) {
                let pem = pair.key_pem(&self.vault)?;
                let data = self
                    .vault
                    .sealed_file(&pem)
                    .map_err(|e| AgentError::Tls(e.to_string()))?;
                write_atomic(&pair.key, &data, 0o600)?;
                sealed.push(pair.key);
            }
        }
        Ok(sealed)
    }

    /// Writes a secret file (sealed when sealing is on), 0600.
    pub fn write_secret(&self, path: &Path, data: &[u8]) -> Result<(), AgentError> {
        if self.seal {
            let sealed = self
                .vault
                .sealed_file(data)
                .map_err(|e| AgentError::Tls(e.to_string()))?;
            write_atomic(path, &sealed, 0o600)
        } else {
            write_atomic(path, data, 0o600)
        }
    }

    pub fn pending(&self) -> Pair {
        self.current.with_suffix(".new")
    }

    pub fn previous(&self) -> Pair {
        self.current.with_suffix(".old")
    }

    /// Stores a renewed (or first) pair as pending.
    pub fn store_pending(&self, cert_pem: &str, key_pem: &str) -> Result<Pair, AgentError> {
        let p = self.pending();
        self.write_secret(&p.key, key_pem.as_bytes())?;
        write_atomic(&p.cert, cert_pem.as_bytes(), 0o644)?;
        Ok(p)
    }

    /// The pending pair has connected: it becomes the current one; the current one is kept
    /// as `.old`.
    pub fn promote(&self) -> Result<(), AgentError> {
        let (cur, new, old) = (&self.current, self.pending(), self.previous());
        if cur.exists() {
            rename(&cur.key, &old.key)?;
            rename(&cur.cert, &old.cert)?;
        }
        rename(&new.key, &cur.key)?;
        rename(&new.cert, &cur.cert)?;
        Ok(())
    }

    /// The pending pair failed: delete it, keep the current one.
    pub fn discard_pending(&self) {
        let p = self.pending();
        let _ = fs::remove_file(p.key);
        let _ = fs::remove_file(p.cert);
    }

    /// When the current certificate should be renewed: at `fraction` of its lifetime.
    pub fn renew_at(&self, fraction: f64) -> Result<OffsetDateTime, AgentError> {
        let info = self.current.info()?;
        let life = info.not_after - info.not_before;
        Ok(info.not_before + life * fraction)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn creds(dir: &Path) -> Credentials {
        let vault = Vault::open(&crate::vault::KeySource::File(dir.join("storage.key"))).unwrap();
        Credentials::new(
            dir.join("device.crt"),
            dir.join("device.key"),
            Arc::new(vault),
            false,
        )
    }

    #[test]
    fn pending_pair_is_promoted_and_the_old_one_kept() {
        let dir = tempfile::tempdir().unwrap();
        let c = creds(dir.path());
        write_atomic(&c.current.cert, b"cert-1", 0o644).unwrap();
        write_atomic(&c.current.key, b"key-1", 0o600).unwrap();
        c.store_pending("cert-2", "key-2").unwrap();
        let mode = fs::metadata(&c.pending().key).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "keys are 0600 from creation");
        // Until promotion the current pair is untouched.
        assert_eq!(fs::read(&c.current.cert).unwrap(), b"cert-1");
        c.promote().unwrap();
        assert_eq!(fs::read(&c.current.cert).unwrap(), b"cert-2");
        assert_eq!(fs::read(&c.current.key).unwrap(), b"key-2");
        assert_eq!(fs::read(&c.previous().key).unwrap(), b"key-1");
        assert!(!c.pending().exists());
        let mode = fs::metadata(&c.current.key).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }

    #[test]
    fn a_failed_pair_is_discarded_and_the_current_one_stays() {
        let dir = tempfile::tempdir().unwrap();
        let c = creds(dir.path());
        write_atomic(&c.current.cert, b"cert-1", 0o644).unwrap();
        write_atomic(&c.current.key, b"key-1", 0o600).unwrap();
        c.store_pending("cert-2", "key-2").unwrap();
        c.discard_pending();
        assert!(!c.pending().exists());
        assert_eq!(fs::read(&c.current.key).unwrap(), b"key-1");
        // No temporary files left behind.
        let names: Vec<String> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert!(names.iter().all(|n| !n.ends_with(".tmp")), "{names:?}");
    }

    #[test]
    fn keys_are_sealed_on_disk_and_plain_ones_sealed_at_start() {
        let dir = tempfile::tempdir().unwrap();
        let vault =
            Arc::new(Vault::open(&crate::vault::KeySource::File(dir.path().join("k"))).unwrap());
        let c = Credentials::new(
            dir.path().join("device.crt"),
            dir.path().join("device.key"),
            vault.clone(),
            true,
        );
        // A bundle installed with a plain key.
        write_atomic(
            &c.current.key,
            b"-----BEGIN PRIVATE KEY-----\nAAAA\n",
            0o600,
        )
        .unwrap();
        assert_eq!(c.seal_plain_keys().unwrap(), vec![c.current.key.clone()]);
        assert!(is_sealed(&c.current.key));
        assert_eq!(
            &c.current.key_pem(&vault).unwrap()[..],
            b"-----BEGIN PRIVATE KEY-----\nAAAA\n"
        );
        assert!(
            c.seal_plain_keys().unwrap().is_empty(),
            "sealing is idempotent"
        );
        // Renewed keys are written sealed.
        c.store_pending("cert", "-----BEGIN PRIVATE KEY-----\nBBBB\n")
            .unwrap();
        assert!(is_sealed(&c.pending().key));
        let mode = fs::metadata(&c.pending().key).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }

    #[test]
    fn renewal_time_is_a_fraction_of_the_lifetime() {
        use rampart_pki::{Authority, KeyAlgorithm, Validity};
        let dir = tempfile::tempdir().unwrap();
        let root =
            Authority::create_root("r", None, KeyAlgorithm::Ed25519, Validity::days_from_now(1))
                .unwrap();
        let nb = OffsetDateTime::now_utc();
        let (cert, key) = root
            .issue_device(
                "gw",
                KeyAlgorithm::Ed25519,
                Validity::between(nb, nb + time::Duration::seconds(120)).unwrap(),
            )
            .unwrap();
        let c = creds(dir.path());
        write_atomic(&c.current.cert, cert.pem.as_bytes(), 0o644).unwrap();
        write_atomic(&c.current.key, key.to_pem().as_bytes(), 0o600).unwrap();
        let at = c.renew_at(2.0 / 3.0).unwrap();
        let offset = (at - cert.info.not_before).whole_seconds();
        assert!((79..=81).contains(&offset), "{offset}");
    }
}
