//! Building and publishing a TUF repository with consistent snapshots.
//!
//! A published repository is two directories:
//!
//! ```text
//! metadata/1.root.json 2.root.json ...   every root version (clients walk the chain)
//! metadata/N.targets.json N.ROLE.json    targets and delegated roles, by version
//! metadata/N.snapshot.json               snapshot, by version
//! metadata/timestamp.json                the only file that is replaced in place
//! targets/[DIR/]SHA256.NAME              artifacts, named by content
//! ```
//!
//! Files are written before the metadata that names them, and `timestamp.json` last, each
//! through a temporary file, fsync and rename: a client polling during a publish sees either
//! the old repository or the new one, never a mix.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Serialize;
use sha2::{Digest, Sha256, Sha512};
use time::OffsetDateTime;

use crate::UpdateError;
use crate::client::consistent_target_path;
use crate::keys::{PublicKey, SigningKey};
use crate::metadata::{
    Common, Delegations, Envelope, MetaFile, RoleKeys, Root, Snapshot, TargetFile, Targets,
    Timestamp,
};

/// Keys and threshold of a role, for building root metadata.
#[derive(Debug, Clone)]
pub struct RoleSpec {
    pub keys: Vec<PublicKey>,
    pub threshold: u32,
}

impl RoleSpec {
    pub fn new(keys: Vec<PublicKey>, threshold: u32) -> RoleSpec {
        RoleSpec { keys, threshold }
    }

    fn role_keys(&self) -> RoleKeys {
        RoleKeys {
            keyids: self.keys.iter().map(PublicKey::key_id).collect(),
            threshold: self.threshold,
        }
    }
}

/// Root metadata for the four top-level roles.
pub fn root(
    version: u64,
    expires: OffsetDateTime,
    root: &RoleSpec,
    targets: &RoleSpec,
    snapshot: &RoleSpec,
    timestamp: &RoleSpec,
) -> Root {
    let mut keys = BTreeMap::new();
    let mut roles = BTreeMap::new();
    for (name, spec) in [
        ("root", root),
        ("targets", targets),
        ("snapshot", snapshot),
        ("timestamp", timestamp),
    ] {
        for k in &spec.keys {
            keys.insert(k.key_id(), k.clone());
        }
        roles.insert(name.to_owned(), spec.role_keys());
    }
    Root {
        common: Common::new("root", version, expires),
        consistent_snapshot: true,
        keys,
        roles,
    }
}

/// Empty targets metadata, optionally delegating to roles.
pub fn targets(version: u64, expires: OffsetDateTime, delegations: Option<Delegations>) -> Targets {
    Targets {
        common: Common::new("targets", version, expires),
        targets: BTreeMap::new(),
        delegations,
    }
}

/// An envelope signed by every key in `keys`.
pub fn signed<T: Serialize>(role: &T, keys: &[&SigningKey]) -> Result<Envelope, UpdateError> {
    let mut env = Envelope::new(role)?;
    for k in keys {
        env.sign(k)?;
    }
    Ok(env)
}

/// Snapshot metadata listing the given targets roles (`targets`, delegated names) at their
/// versions.
pub fn snapshot(
    version: u64,
    expires: OffsetDateTime,
    roles: &[(&str, &Envelope)],
) -> Result<Snapshot, UpdateError> {
    let mut meta = BTreeMap::new();
    for (name, env) in roles {
        let v = env
            .signed
            .get("version")
            .and_then(serde_json::Value::as_u64)
            .ok_or_else(|| UpdateError::malformed(name, "no version"))?;
        meta.insert(
            format!("{name}.json"),
            MetaFile {
                version: v,
                length: None,
                hashes: None,
            },
        );
    }
    Ok(Snapshot {
        common: Common::new("snapshot", version, expires),
        meta,
    })
}

/// Timestamp metadata pinning the snapshot by version, length and hashes of its file bytes.
pub fn timestamp(
    version: u64,
    expires: OffsetDateTime,
    snapshot_version: u64,
    snapshot_bytes: &[u8],
) -> Timestamp {
    let mut hashes = BTreeMap::new();
    hashes.insert("sha256".into(), hex::encode(Sha256::digest(snapshot_bytes)));
    hashes.insert("sha512".into(), hex::encode(Sha512::digest(snapshot_bytes)));
    Timestamp {
        common: Common::new("timestamp", version, expires),
        meta: [(
            "snapshot.json".to_owned(),
            MetaFile {
                version: snapshot_version,
                length: Some(snapshot_bytes.len() as u64),
                hashes: Some(hashes),
            },
        )]
        .into(),
    }
}

/// A published repository on disk.
#[derive(Debug, Clone)]
pub struct Published {
    pub dir: PathBuf,
}

impl Published {
    pub fn new(dir: &Path) -> Published {
        Published {
            dir: dir.to_path_buf(),
        }
    }

    pub fn metadata_dir(&self) -> PathBuf {
        self.dir.join("metadata")
    }

    pub fn targets_dir(&self) -> PathBuf {
        self.dir.join("targets")
    }

    /// Writes an artifact under its content name; returns its description.
    pub fn add_target(
        &self,
        name: &str,
        data: &[u8],
        custom: Option<serde_json::Value>,
    ) -> Result<TargetFile, UpdateError> {
        check_target_name(name)?;
        let file = TargetFile::of(data, custom);
        let rel = consistent_target_path(name, &file)
            .ok_or_else(|| UpdateError::malformed("targets", "no sha256"))?;
        atomic_write(&self.targets_dir().join(rel), data)?;
        Ok(file)
    }

    /// Writes `N.ROLE.json` (root, targets, snapshot, delegated roles).
    pub fn write_versioned(&self, role: &str, env: &Envelope) -> Result<Vec<u8>, UpdateError> {
        let v = env
            .signed
            .get("version")
            .and_then(serde_json::Value::as_u64)
            .ok_or_else(|| UpdateError::malformed(role, "no version"))?;
        let bytes = env.to_bytes()?;
        atomic_write(
            &self.metadata_dir().join(format!("{v}.{role}.json")),
            &bytes,
        )?;
        Ok(bytes)
    }

    /// Replaces `timestamp.json` (last step of a publish).
    pub fn write_timestamp(&self, env: &Envelope) -> Result<(), UpdateError> {
        atomic_write(
            &self.metadata_dir().join("timestamp.json"),
            &env.to_bytes()?,
        )
    }
}

/// Target names are relative paths of plain segments: no `..`, no empty or hidden parts, no
/// backslashes — they become file paths on the hub and on devices.
pub fn check_target_name(name: &str) -> Result<(), UpdateError> {
    let ok = !name.is_empty()
        && name.len() <= 255
        && !name.contains('\\')
        && name.split('/').all(|s| {
            !s.is_empty()
                && !s.starts_with('.')
                && s.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | '+'))
        });
    if ok {
        Ok(())
    } else {
        Err(UpdateError::malformed(
            "targets",
            format!(
                "target name {name:?}: use relative paths of letters, digits, . - _ + (no .. or hidden parts)"
            ),
        ))
    }
}

/// Creates the parent directory, then writes through rampart-pki's atomic writer (temporary
/// file, fsync, rename, directory fsync).
pub fn atomic_write(path: &Path, data: &[u8]) -> Result<(), UpdateError> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| UpdateError::io(dir, e))?;
    }
    rampart_pki::files::write_public(path, data, true)
        .map_err(|e| UpdateError::io(path, std::io::Error::other(e.to_string())))
}
