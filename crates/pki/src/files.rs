//! Writing key and certificate files safely.
//!
//! Secrets are written 0600 from the first byte (the mode is set at creation, not afterwards),
//! files are written to a temporary name, synced and then moved into place, and an existing
//! file is never replaced unless the caller asked for it (`--force`).

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::Path;

use crate::error::PkiError;

/// Mode for files holding private keys.
pub const SECRET_MODE: u32 = 0o600;
/// Mode for certificates and other public files.
pub const PUBLIC_MODE: u32 = 0o644;

/// Writes a private key (mode 0600).
pub fn write_secret(path: &Path, data: &[u8], force: bool) -> Result<(), PkiError> {
    write_file(path, data, SECRET_MODE, force)
}

/// Writes a public file such as a certificate (mode 0644).
pub fn write_public(path: &Path, data: &[u8], force: bool) -> Result<(), PkiError> {
    write_file(path, data, PUBLIC_MODE, force)
}

/// Creates a directory (and parents) readable only by its owner.
pub fn create_private_dir(path: &Path) -> Result<(), PkiError> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(path)
        .map_err(|source| PkiError::Write {
            path: path.to_path_buf(),
            source,
        })
}

/// Writes `data` to `path` atomically with the given mode.
pub fn write_file(path: &Path, data: &[u8], mode: u32, force: bool) -> Result<(), PkiError> {
    let err = |source| PkiError::Write {
        path: path.to_path_buf(),
        source,
    };
    if !force && path.exists() {
        return Err(PkiError::AlreadyExists {
            path: path.to_path_buf(),
        });
    }
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = path.with_file_name(format!(".{file_name}.tmp-{}", std::process::id()));
    let result = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)?;
        f.write_all(data)?;
        f.sync_all()?;
        drop(f);
        if force {
            fs::rename(&tmp, path)
        } else {
            // hard_link fails if `path` appeared in the meantime: never clobber.
            fs::hard_link(&tmp, path).and_then(|()| fs::remove_file(&tmp))
        }
    })();
    if let Err(e) = result {
        let _ = fs::remove_file(&tmp);
        if e.kind() == std::io::ErrorKind::AlreadyExists {
            return Err(PkiError::AlreadyExists {
                path: path.to_path_buf(),
            });
        }
        return Err(err(e));
    }
    // Make the rename durable: sync the directory entry.
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty())
        && let Ok(d) = fs::File::open(dir)
    {
        let _ = d.sync_all();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn secrets_are_0600_and_never_overwritten_without_force() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("device.key");
        write_secret(&p, b"one", false).expect("first write");
        let mode = fs::metadata(&p).expect("stat").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let e = write_secret(&p, b"two", false).expect_err("must refuse");
        assert!(matches!(e, PkiError::AlreadyExists { .. }), "{e}");
        assert!(e.to_string().contains("--force"));
        assert_eq!(fs::read(&p).expect("read"), b"one");
        write_secret(&p, b"two", true).expect("forced write");
        assert_eq!(fs::read(&p).expect("read"), b"two");
        let mode = fs::metadata(&p).expect("stat").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        // No temporary files left behind.
        assert_eq!(fs::read_dir(dir.path()).expect("ls").count(), 1);
    }
}
