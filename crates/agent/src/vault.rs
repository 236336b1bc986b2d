//! The device's storage key, and sealing data with it.
//!
//! Everything the agent keeps that would hurt if the gateway's flash were read out — the
//! outbox of readings not yet sent, the device's private keys, the session token — is sealed
//! with ChaCha20-Poly1305 (ring) under one 256-bit storage key:
//!
//! - By default the key is a file, `state/storage.key` (64 hex digits, mode 0600), created
//!   from the system's random source at first start.
//! - Where the gateway has a TPM or secure element, `storage.key_command` names a program that
//!   prints the key (64 hex digits) on stdout — typically unsealing it from the TPM — and the
//!   key never touches the disk. `storage.erase_command` destroys it on factory reset.
//!
//! A sealed value is `nonce (12 bytes) || ciphertext || tag (16 bytes)` with a fresh random
//! nonce each time; the caller's associated data binds it to its context (the outbox binds a
//! record's header, so a body moved under another header does not open). Sealed files start
//! with [`SEALED_MAGIC`], so plain PEM files left from before encryption was enabled are
//! recognised and sealed in place at start.
//!
//! Destroying the key is what makes a factory reset final on flash, where overwriting a file
//! does not reliably overwrite its blocks: without the key, sealed data that survives in
//! remapped blocks cannot be opened.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use ring::aead::{Aad, CHACHA20_POLY1305, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::rand::{SecureRandom, SystemRandom};
use zeroize::Zeroizing;

/// First bytes of a sealed file.
pub const SEALED_MAGIC: &[u8] = b"RAMPART-SEALED-1\n";
/// Associated data of sealed credential files.
const FILE_AAD: &[u8] = b"rampart credential file v1";
/// Bytes a sealed value adds to the plaintext.
pub const OVERHEAD: usize = NONCE_LEN + 16;

/// Where the storage key comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySource {
    /// A key file (created if missing).
    File(PathBuf),
    /// A program that prints the key; arguments included.
    Command(Vec<String>),
}

/// Why the key could not be had or data could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum VaultError {
    #[error("storage key file {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("storage key file {path} is readable by others (mode {mode:o}); it must be 0600")]
    Permissions { path: PathBuf, mode: u32 },
    #[error("storage key from {origin}: {why}")]
    BadKey { origin: String, why: String },
    #[error("storage key command {command:?} failed: {why}")]
    Command { command: String, why: String },
    #[error("the system random source failed")]
    Random,
    #[error(
        "{0}: sealed data does not open with this device's storage key (tampered, truncated, or sealed under another key)"
    )]
    Tampered(String),
}

/// The storage key, ready to seal and open.
pub struct Vault {
    key: LessSafeKey,
    rng: SystemRandom,
}

impl std::fmt::Debug for Vault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Vault(ChaCha20-Poly1305, key hidden)")
    }
}

fn parse_hex_key(text: &str, origin: &str) -> Result<Zeroizing<[u8; 32]>, VaultError> {
    let t = text.trim();
    let mut key = Zeroizing::new([0u8; 32]);
    hex::decode_to_slice(t, &mut key[..]).map_err(|e| VaultError::BadKey {
        origin: origin.to_owned(),
        why: format!("expected 64 hex digits ({e})"),
    })?;
    Ok(key)
}

impl Vault {
    /// Loads the key, creating the key file on first use.
    pub fn open(source: &KeySource) -> Result<Vault, VaultError> {
        let key = match source {
            KeySource::File(path) => Self::key_from_file(path)?,
            KeySource::Command(argv) => Self::key_from_command(argv)?,
        };
        Self::from_key(&key)
    }

    fn from_key(key: &[u8; 32]) -> Result<Vault, VaultError> {
        let unbound = UnboundKey::new(&CHACHA20_POLY1305, key).map_err(|_| VaultError::BadKey {
            origin: "memory".into(),
            why: "not a ChaCha20-Poly1305 key".into(),
        })?;
        Ok(Vault {
            key: LessSafeKey::new(unbound),
            rng: SystemRandom::new(),
        })
    }

    fn key_from_file(path: &Path) -> Result<Zeroizing<[u8; 32]>, VaultError> {
        let io = |source| VaultError::Io {
            path: path.to_path_buf(),
            source,
        };
        match fs::metadata(path) {
            Ok(meta) => {
                let mode = meta.permissions().mode() & 0o777;
                if mode & 0o077 != 0 {
                    return Err(VaultError::Permissions {
                        path: path.to_path_buf(),
                        mode,
                    });
                }
                let text = Zeroizing::new(fs::read_to_string(path).map_err(io)?);
                parse_hex_key(&text, &path.display().to_string())
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let rng = SystemRandom::new();
                let mut key = Zeroizing::new([0u8; 32]);
                rng.fill(&mut key[..]).map_err(|_| VaultError::Random)?;
                let text = Zeroizing::new(format!("{}\n", hex::encode(&key[..])));
                if let Some(dir) = path.parent() {
                    fs::create_dir_all(dir).map_err(io)?;
                }
                // create_new: two agents starting at once must not each write a key.
                let mut f = OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(path)
                    .map_err(io)?;
                f.write_all(text.as_bytes()).map_err(io)?;
                f.sync_all().map_err(io)?;
                if let Some(dir) = path.parent() {
                    fs::File::open(dir).and_then(|d| d.sync_all()).map_err(io)?;
                }
                tracing::info!(path = %path.display(), "storage key created");
                Ok(key)
            }
            Err(e) => Err(io(e)),
        }
    }

    fn key_from_command(argv: &[String]) -> Result<Zeroizing<[u8; 32]>, VaultError> {
        let shown = argv.join(" ");
        let (program, args) = argv.split_first().ok_or_else(|| VaultError::Command {
            command: shown.clone(),
            why: "empty command".into(),
        })?;
        let out = Command::new(program)
            .args(args)
            .stdin(std::process::Stdio::null())
            .output()
            .map_err(|e| VaultError::Command {
                command: shown.clone(),
                why: e.to_string(),
            })?;
        if !out.status.success() {
            return Err(VaultError::Command {
                command: shown,
                why: format!(
                    "{}: {}",
                    out.status,
                    String::from_utf8_lossy(&out.stderr).trim()
                ),
            });
        }
        let text = Zeroizing::new(String::from_utf8_lossy(&out.stdout).into_owned());
        parse_hex_key(&text, &format!("command {shown:?}"))
    }

    /// Seals `plaintext`, bound to `aad`.
    pub fn seal(&self, aad: &[u8], plaintext: &[u8]) -> Result<Vec<u8>, VaultError> {
        let mut nonce = [0u8; NONCE_LEN];
        self.rng.fill(&mut nonce).map_err(|_| VaultError::Random)?;
        let mut out = Vec::with_capacity(plaintext.len() + OVERHEAD);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(plaintext);
        let tag = self
            .key
            .seal_in_place_separate_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(aad),
                &mut out[NONCE_LEN..],
            )
            .map_err(|_| VaultError::Random)?;
        out.extend_from_slice(tag.as_ref());
        Ok(out)
    }

    /// Opens a sealed value; `what` names it in the error.
    pub fn open_sealed(
        &self,
        aad: &[u8],
        sealed: &[u8],
        what: &str,
    ) -> Result<Zeroizing<Vec<u8>>, VaultError> {
        if sealed.len() < OVERHEAD {
            return Err(VaultError::Tampered(what.to_owned()));
        }
        let (nonce, body) = sealed.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce)
            .map_err(|_| VaultError::Tampered(what.to_owned()))?;
        let mut buf = Zeroizing::new(body.to_vec());
        let len = self
            .key
            .open_in_place(nonce, Aad::from(aad), &mut buf[..])
            .map_err(|_| VaultError::Tampered(what.to_owned()))?
            .len();
        buf.truncate(len);
        Ok(buf)
    }

    /// Reads a secret file, opening it if sealed (plain files are returned as they are).
    pub fn read_secret(&self, path: &Path) -> Result<Zeroizing<Vec<u8>>, VaultError> {
        let data = Zeroizing::new(fs::read(path).map_err(|source| VaultError::Io {
            path: path.to_path_buf(),
            source,
        })?);
        match data.strip_prefix(SEALED_MAGIC) {
            Some(sealed) => self.open_sealed(FILE_AAD, sealed, &path.display().to_string()),
            None => Ok(data),
        }
    }

    /// The sealed file content for `secret`.
    pub fn sealed_file(&self, secret: &[u8]) -> Result<Vec<u8>, VaultError> {
        let mut out = SEALED_MAGIC.to_vec();
        out.extend_from_slice(&self.seal(FILE_AAD, secret)?);
        Ok(out)
    }
}

/// Whether a file holds sealed data.
pub fn is_sealed(path: &Path) -> bool {
    use std::io::Read;
    let mut head = [0u8; 17];
    fs::File::open(path)
        .and_then(|mut f| f.read_exact(&mut head))
        .map(|()| head == SEALED_MAGIC)
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_file_is_created_0600_and_reused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state/storage.key");
        let v1 = Vault::open(&KeySource::File(path.clone())).unwrap();
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let sealed = v1.seal(b"ctx", b"reading").unwrap();
        let v2 = Vault::open(&KeySource::File(path.clone())).unwrap();
        assert_eq!(
            &v2.open_sealed(b"ctx", &sealed, "x").unwrap()[..],
            b"reading"
        );
        // A key readable by others is refused, not silently used.
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        assert!(matches!(
            Vault::open(&KeySource::File(path.clone())),
            Err(VaultError::Permissions { .. })
        ));
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
        fs::write(&path, "not hex").unwrap();
        assert!(matches!(
            Vault::open(&KeySource::File(path)),
            Err(VaultError::BadKey { .. })
        ));
    }

    #[test]
    fn tampering_wrong_context_and_wrong_key_are_detected() {
        let dir = tempfile::tempdir().unwrap();
        let v = Vault::open(&KeySource::File(dir.path().join("k"))).unwrap();
        let sealed = v.seal(b"header-1", b"secret payload").unwrap();
        assert_eq!(sealed.len(), 14 + OVERHEAD);
        for i in [0, 12, sealed.len() - 1] {
            let mut t = sealed.clone();
            t[i] ^= 0x01;
            assert!(matches!(
                v.open_sealed(b"header-1", &t, "rec"),
                Err(VaultError::Tampered(_))
            ));
        }
        assert!(v.open_sealed(b"header-2", &sealed, "rec").is_err());
        assert!(v.open_sealed(b"header-1", &sealed[..10], "rec").is_err());
        let other = Vault::open(&KeySource::File(dir.path().join("k2"))).unwrap();
        assert!(other.open_sealed(b"header-1", &sealed, "rec").is_err());
        // Fresh nonces: the same plaintext never seals to the same bytes.
        assert_ne!(v.seal(b"h", b"x").unwrap(), v.seal(b"h", b"x").unwrap());
    }

    #[test]
    fn key_command_supplies_the_key_and_failures_are_explained() {
        let key = "11".repeat(32);
        let v = Vault::open(&KeySource::Command(vec![
            "sh".into(),
            "-c".into(),
            format!("echo {key}"),
        ]))
        .unwrap();
        let same = Vault::open(&KeySource::Command(vec!["echo".into(), key])).unwrap();
        let sealed = v.seal(b"", b"abc").unwrap();
        assert_eq!(&same.open_sealed(b"", &sealed, "x").unwrap()[..], b"abc");
        let e = Vault::open(&KeySource::Command(vec![
            "sh".into(),
            "-c".into(),
            "echo tpm locked >&2; exit 3".into(),
        ]))
        .unwrap_err();
        assert!(e.to_string().contains("tpm locked"), "{e}");
        let e = Vault::open(&KeySource::Command(vec!["echo".into(), "short".into()])).unwrap_err();
        assert!(e.to_string().contains("64 hex digits"), "{e}");
    }

    #[test]
    fn secret_files_are_read_sealed_or_plain() {
        let dir = tempfile::tempdir().unwrap();
        let v = Vault::open(&KeySource::File(dir.path().join("k"))).unwrap();
        let plain = dir.path().join("plain.key");
        fs::write(&plain, b"-----BEGIN PRIVATE KEY-----").unwrap();
        assert!(!is_sealed(&plain));
        assert_eq!(
            &v.read_secret(&plain).unwrap()[..],
            b"-----BEGIN PRIVATE KEY-----"
        );
        let sealed = dir.path().join("sealed.key");
        fs::write(
            &sealed,
            v.sealed_file(b"-----BEGIN PRIVATE KEY-----").unwrap(),
        )
        .unwrap();
        assert!(is_sealed(&sealed));
        let raw = fs::read(&sealed).unwrap();
        assert!(
            !raw.windows(5).any(|w| w == b"BEGIN"),
            "no plaintext on disk"
        );
        assert_eq!(
            &v.read_secret(&sealed).unwrap()[..],
            b"-----BEGIN PRIVATE KEY-----"
        );
        let mut t = raw.clone();
        let last = t.len() - 1;
        t[last] ^= 0x80;
        fs::write(&sealed, t).unwrap();
        assert!(matches!(
            v.read_secret(&sealed),
            Err(VaultError::Tampered(_))
        ));
    }
}
