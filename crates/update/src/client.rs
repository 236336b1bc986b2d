//! The TUF client workflow (specification section 5) as an explicit state machine.
//!
//! [`TrustedState`] holds the metadata a device trusts. Each `update_*` method takes the
//! bytes of one newly fetched file and either moves the state forward or refuses with the
//! reason, leaving the state as it was: a refused file never replaces a trusted one. The
//! order is fixed by the specification — root chain, timestamp, snapshot, targets, then
//! delegated targets — and each step checks what the previous one pinned:
//!
//! | step | signature by | pinned by | rollback check | expiry |
//! |---|---|---|---|---|
//! | root N+1 | old root's root keys *and* its own | N+1 follows N | versions strictly increase | after the walk |
//! | timestamp | root's timestamp keys | — | version and snapshot version never decrease | yes |
//! | snapshot | root's snapshot keys | timestamp (version, length, hashes) | no listed file disappears or goes back | yes |
//! | targets | root's targets keys | snapshot (version, length, hashes) | via snapshot | yes |
//! | delegated | the delegating role's keys | snapshot | via snapshot | yes |
//!
//! Every file is read with a size limit before it is parsed ([`Limits`]). Time comes from the
//! caller; devices without a real-time clock pass the newest time they have ever seen (see
//! the agent's time policy), so a stale clock cannot make expired metadata valid again.

use std::collections::BTreeMap;

use time::OffsetDateTime;

use crate::UpdateError;
use crate::metadata::{
    Envelope, MetaFile, Root, Snapshot, TargetFile, Targets, Timestamp, check_file, check_hashes,
};

/// The largest metadata files the client reads, in bytes.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub root: u64,
    pub timestamp: u64,
    pub snapshot: u64,
    pub targets: u64,
    /// Most root versions walked in one refresh.
    pub max_root_rotations: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            root: 512 * 1024,
            timestamp: 16 * 1024,
            snapshot: 2 * 1024 * 1024,
            targets: 5 * 1024 * 1024,
            max_root_rotations: 32,
        }
    }
}

/// Where metadata comes from. `Ok(None)` means "not there" (the end of the root chain);
/// errors are transport failures. `max_len` must be enforced while reading.
pub trait Fetch {
    fn fetch(&mut self, path: &str, max_len: u64) -> Result<Option<Vec<u8>>, UpdateError>;
}

/// Metadata from a local directory (a repository copied to removable media, or the hub's
/// own published directory). Reads at most `max_len + 1` bytes so an oversized file is
/// reported as such without being read whole.
#[derive(Debug, Clone)]
pub struct DirFetch {
    pub metadata_dir: std::path::PathBuf,
}

impl Fetch for DirFetch {
    fn fetch(&mut self, path: &str, max_len: u64) -> Result<Option<Vec<u8>>, UpdateError> {
        use std::io::Read;
        if path.contains('/') || path.starts_with('.') {
            return Err(UpdateError::malformed(path, "not a metadata file name"));
        }
        let full = self.metadata_dir.join(path);
        let f = match std::fs::File::open(&full) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(UpdateError::io(&full, e)),
        };
        let mut out = Vec::new();
        f.take(max_len.saturating_add(1))
            .read_to_end(&mut out)
            .map_err(|e| UpdateError::io(&full, e))?;
        Ok(Some(out))
    }
}

/// Fails if `bytes` is longer than `limit`.
pub fn within(what: &str, bytes: &[u8], limit: u64) -> Result<(), UpdateError> {
    if bytes.len() as u64 > limit {
        return Err(UpdateError::TooLarge {
            what: what.to_owned(),
            len: bytes.len() as u64,
            limit,
        });
    }
    Ok(())
}

/// The metadata a client trusts, with the raw files to persist.
#[derive(Debug, Clone)]
pub struct TrustedState {
    root: Root,
    timestamp: Option<Timestamp>,
    snapshot: Option<Snapshot>,
    targets: Option<Targets>,
    delegated: BTreeMap<String, Targets>,
    /// name → the exact bytes trusted, for the caller to store.
    files: BTreeMap<String, Vec<u8>>,
}

impl TrustedState {
    /// Starts from a root the device already trusts (shipped in its image or stored after
    /// the last update). It must be signed by a threshold of its own root keys; its expiry
    /// is checked after the root chain walk, not here.
    pub fn new(root_bytes: &[u8], limits: &Limits) -> Result<TrustedState, UpdateError> {
        within("root", root_bytes, limits.root)?;
        let env = Envelope::parse("root", root_bytes)?;
        let root: Root = env.role("root")?;
        env.verify("root", &root.keys, root.role_keys("root")?)?;
        Ok(TrustedState {
            root,
            timestamp: None,
            snapshot: None,
            targets: None,
            delegated: BTreeMap::new(),
            files: [("root.json".to_owned(), root_bytes.to_vec())].into(),
        })
    }

    /// Restores the other trusted files after [`TrustedState::new`]: each is checked as if
    /// fetched at `now` except for expiry (an expired local file is still the rollback
    /// reference). A file that fails is left out — the next refresh fetches it again.
    pub fn load_local(
        &mut self,
        name: &str,
        bytes: &[u8],
        limits: &Limits,
    ) -> Result<(), UpdateError> {
        let far_past = OffsetDateTime::UNIX_EPOCH;
        match name {
            "timestamp.json" => self.update_timestamp(bytes, far_past, limits).map(|_| ()),
            "snapshot.json" => self.update_snapshot_inner(bytes, far_past, limits, false),
            "targets.json" => self.update_targets_inner(bytes, far_past, limits, false),
            other => Err(UpdateError::malformed(
                other,
                "not a top-level metadata file",
            )),
        }
    }

    pub fn root(&self) -> &Root {
        &self.root
    }
    pub fn timestamp(&self) -> Option<&Timestamp> {
        self.timestamp.as_ref()
    }
    pub fn snapshot(&self) -> Option<&Snapshot> {
        self.snapshot.as_ref()
    }
    pub fn targets(&self) -> Option<&Targets> {
        self.targets.as_ref()
    }
    /// The trusted files by name (`root.json`, `timestamp.json`, `snapshot.json`,
    /// `targets.json`, `ROLE.json` for delegated roles), as received.
    pub fn files(&self) -> &BTreeMap<String, Vec<u8>> {
        &self.files
    }

    /// Spec 5.3: root version N+1, signed by a threshold of the trusted root's root keys and
    /// of its own.
    pub fn update_root(&mut self, bytes: &[u8], limits: &Limits) -> Result<(), UpdateError> {
        within("root", bytes, limits.root)?;
        let env = Envelope::parse("root", bytes)?;
        env.verify("root", &self.root.keys, self.root.role_keys("root")?)?;
        let new: Root = env.role("root")?;
        env.verify("root", &new.keys, new.role_keys("root")?)?;
        if new.common.version != self.root.common.version + 1 {
            return Err(UpdateError::RootOutOfOrder {
                trusted: self.root.common.version,
                got: new.common.version,
            });
        }
        // Spec 5.3.11: new timestamp or snapshot keys discard what the old keys signed, so
        // a fast-forward attack with a stolen key is recoverable.
        let changed = |role: &str| {
            let ids = |r: &Root| r.roles.get(role).map(|k| k.keyids.clone());
            ids(&self.root) != ids(&new)
        };
        if changed("timestamp") || changed("snapshot") {
            self.timestamp = None;
            self.files.remove("timestamp.json");
        }
        if changed("snapshot") {
            self.snapshot = None;
            self.files.remove("snapshot.json");
        }
        self.root = new;
        self.files.insert("root.json".into(), bytes.to_vec());
        Ok(())
    }

    /// Spec 5.3.10: after the walk, the newest root must not have expired.
    pub fn check_root_fresh(&self, now: OffsetDateTime) -> Result<(), UpdateError> {
        self.root.common.check_expiry("root", now)
    }

    /// Spec 5.4. Returns false when the file is the trusted version again (nothing new).
    pub fn update_timestamp(
        &mut self,
        bytes: &[u8],
        now: OffsetDateTime,
        limits: &Limits,
    ) -> Result<bool, UpdateError> {
        within("timestamp", bytes, limits.timestamp)?;
        let env = Envelope::parse("timestamp", bytes)?;
        env.verify(
            "timestamp",
            &self.root.keys,
            self.root.role_keys("timestamp")?,
        )?;
        let new: Timestamp = env.role("timestamp")?;
        let new_snap = new.snapshot_meta()?.version;
        if let Some(old) = &self.timestamp {
            if new.common.version < old.common.version {
                return Err(UpdateError::Rollback {
                    role: "timestamp".into(),
                    trusted: old.common.version,
                    new: new.common.version,
                });
            }
            let old_snap = old.snapshot_meta()?.version;
            if new_snap < old_snap {
                return Err(UpdateError::Rollback {
                    role: "snapshot (as listed by timestamp)".into(),
                    trusted: old_snap,
                    new: new_snap,
                });
            }
            if new.common.version == old.common.version {
                return Ok(false);
            }
        }
        new.common.check_expiry("timestamp", now)?;
        self.timestamp = Some(new);
        self.files.insert("timestamp.json".into(), bytes.to_vec());
        Ok(true)
    }

    /// Spec 5.5.
    pub fn update_snapshot(
        &mut self,
        bytes: &[u8],
        now: OffsetDateTime,
        limits: &Limits,
    ) -> Result<(), UpdateError> {
        self.update_snapshot_inner(bytes, now, limits, true)
    }

    fn update_snapshot_inner(
        &mut self,
        bytes: &[u8],
        now: OffsetDateTime,
        limits: &Limits,
        check_expiry: bool,
    ) -> Result<(), UpdateError> {
        let ts = self
            .timestamp
            .as_ref()
            .ok_or_else(|| UpdateError::Missing {
                role: "timestamp".into(),
                message: "snapshot is only accepted after a trusted timestamp".into(),
            })?;
        let pin = ts.snapshot_meta()?.clone();
        check_pinned("snapshot", bytes, &pin, limits.snapshot)?;
        let env = Envelope::parse("snapshot", bytes)?;
        env.verify(
            "snapshot",
            &self.root.keys,
            self.root.role_keys("snapshot")?,
        )?;
        let new: Snapshot = env.role("snapshot")?;
        same_version("snapshot", new.common.version, pin.version, "timestamp")?;
        if let Some(old) = &self.snapshot {
            for (name, m) in &old.meta {
                match new.meta.get(name) {
                    None => {
                        return Err(UpdateError::Rollback {
                            role: format!("{name} (dropped from snapshot)"),
                            trusted: m.version,
                            new: 0,
                        });
                    }
                    Some(n) if n.version < m.version => {
                        return Err(UpdateError::Rollback {
                            role: name.clone(),
                            trusted: m.version,
                            new: n.version,
                        });
                    }
                    Some(_) => {}
                }
            }
        }
        if check_expiry {
            new.common.check_expiry("snapshot", now)?;
        }
        self.snapshot = Some(new);
        self.files.insert("snapshot.json".into(), bytes.to_vec());
        Ok(())
    }

    /// The version, length and hashes snapshot pins for `file` (`targets.json`, ...).
    pub fn snapshot_pin(&self, file: &str) -> Result<MetaFile, UpdateError> {
        let snap = self.snapshot.as_ref().ok_or_else(|| UpdateError::Missing {
            role: "snapshot".into(),
            message: format!("{file} is only accepted after a trusted snapshot"),
        })?;
        snap.meta
            .get(file)
            .cloned()
            .ok_or_else(|| UpdateError::malformed("snapshot", format!("{file} is not listed")))
    }

    /// Spec 5.6.
    pub fn update_targets(
        &mut self,
        bytes: &[u8],
        now: OffsetDateTime,
        limits: &Limits,
    ) -> Result<(), UpdateError> {
        self.update_targets_inner(bytes, now, limits, true)
    }

    fn update_targets_inner(
        &mut self,
        bytes: &[u8],
        now: OffsetDateTime,
        limits: &Limits,
        check_expiry: bool,
    ) -> Result<(), UpdateError> {
        let pin = self.snapshot_pin("targets.json")?;
        check_pinned("targets", bytes, &pin, limits.targets)?;
        let env = Envelope::parse("targets", bytes)?;
        env.verify("targets", &self.root.keys, self.root.role_keys("targets")?)?;
        let new: Targets = env.role("targets")?;
        same_version("targets", new.common.version, pin.version, "snapshot")?;
        if check_expiry {
            new.common.check_expiry("targets", now)?;
        }
        self.targets = Some(new);
        self.delegated.clear();
        self.files.insert("targets.json".into(), bytes.to_vec());
        Ok(())
    }

    /// A delegated targets role, signed by the keys its delegator (top-level targets) names.
    pub fn update_delegated(
        &mut self,
        name: &str,
        bytes: &[u8],
        now: OffsetDateTime,
        limits: &Limits,
    ) -> Result<(), UpdateError> {
        let file = format!("{name}.json");
        let pin = self.snapshot_pin(&file)?;
        check_pinned(name, bytes, &pin, limits.targets)?;
        let parent = self.targets.as_ref().ok_or_else(|| UpdateError::Missing {
            role: "targets".into(),
            message: format!("{name} is only accepted after trusted targets"),
        })?;
        let delegations = parent
            .delegations
            .as_ref()
            .ok_or_else(|| UpdateError::malformed(name, "targets delegates to no role"))?;
        let role = delegations
            .roles
            .iter()
            .find(|r| r.name == name)
            .ok_or_else(|| UpdateError::malformed(name, "not delegated by targets"))?;
        let env = Envelope::parse(name, bytes)?;
        env.verify(name, &delegations.keys, &role.role_keys())?;
        let new: Targets = env.role(name)?;
        same_version(name, new.common.version, pin.version, "snapshot")?;
        new.common.check_expiry(name, now)?;
        self.delegated.insert(name.to_owned(), new);
        self.files.insert(file, bytes.to_vec());
        Ok(())
    }

    /// Names of the roles targets delegates to, in order.
    pub fn delegated_roles(&self) -> Vec<String> {
        self.targets
            .as_ref()
            .and_then(|t| t.delegations.as_ref())
            .map(|d| d.roles.iter().map(|r| r.name.clone()).collect())
            .unwrap_or_default()
    }

    /// Finds `name` the way the specification orders the search: top-level targets first,
    /// then the delegated roles in order, only those whose paths cover the name, stopping
    /// at a terminating role that covers it. Returns the file and the role that signed it.
    pub fn find_target(&self, name: &str) -> Result<(TargetFile, String), UpdateError> {
        let top = self.targets.as_ref().ok_or_else(|| UpdateError::Missing {
            role: "targets".into(),
            message: "refresh first".into(),
        })?;
        if let Some(t) = top.targets.get(name) {
            return Ok((t.clone(), "targets".into()));
        }
        if let Some(d) = &top.delegations {
            for role in &d.roles {
                if !role.covers(name) {
                    continue;
                }
                if let Some(t) = self
                    .delegated
                    .get(&role.name)
                    .and_then(|r| r.targets.get(name))
                {
                    return Ok((t.clone(), role.name.clone()));
                }
                if role.terminating {
                    break;
                }
            }
        }
        Err(UpdateError::TargetNotFound(name.to_owned()))
    }

    /// Every trusted target with the role that signs it (delegated roles only for the
    /// names their paths cover).
    pub fn all_targets(&self) -> Vec<(String, TargetFile, String)> {
        let mut out = Vec::new();
        let Some(top) = &self.targets else {
            return out;
        };
        for (n, t) in &top.targets {
            out.push((n.clone(), t.clone(), "targets".to_owned()));
        }
        if let Some(d) = &top.delegations {
            for role in &d.roles {
                if let Some(r) = self.delegated.get(&role.name) {
                    for (n, t) in &r.targets {
                        if role.covers(n)
                            && self.find_target(n).is_ok_and(|(_, by)| by == role.name)
                        {
                            out.push((n.clone(), t.clone(), role.name.clone()));
                        }
                    }
                }
            }
        }
        out
    }
}

/// The version a role has must be the one the role above pins (mix-and-match otherwise).
fn same_version(role: &str, got: u64, pinned: u64, by: &str) -> Result<(), UpdateError> {
    if got != pinned {
        return Err(UpdateError::VersionMismatch {
            role: role.to_owned(),
            expected: pinned,
            got,
            by: by.to_owned(),
        });
    }
    Ok(())
}

/// Length limit, then the pinned length and hashes if the pin has them.
fn check_pinned(what: &str, bytes: &[u8], pin: &MetaFile, limit: u64) -> Result<(), UpdateError> {
    within(what, bytes, limit)?;
    if let Some(len) = pin.length
        && bytes.len() as u64 != len
    {
        return Err(UpdateError::LengthMismatch {
            what: what.to_owned(),
            expected: len,
            got: bytes.len() as u64,
        });
    }
    if let Some(h) = &pin.hashes {
        check_hashes(what, bytes, h)?;
    }
    Ok(())
}

/// One refresh (spec 5.3-5.6): walks the root chain from `fetch`, then timestamp, snapshot,
/// targets and every delegated role, with consistent-snapshot file names. On error the state
/// keeps everything trusted before the failing step.
pub fn refresh(
    state: &mut TrustedState,
    fetch: &mut dyn Fetch,
    now: OffsetDateTime,
    limits: &Limits,
) -> Result<(), UpdateError> {
    for _ in 0..limits.max_root_rotations {
        let next = state.root.common.version + 1;
        match fetch.fetch(&format!("{next}.root.json"), limits.root)? {
            Some(bytes) => state.update_root(&bytes, limits)?,
            None => break,
        }
    }
    state.check_root_fresh(now)?;
    let ts = fetch
        .fetch("timestamp.json", limits.timestamp)?
        .ok_or_else(|| UpdateError::Missing {
            role: "timestamp".into(),
            message: "the repository has no timestamp.json".into(),
        })?;
    state.update_timestamp(&ts, now, limits)?;
    let snap_version = state
        .timestamp
        .as_ref()
        .map(|t| t.snapshot_meta().map(|m| m.version))
        .transpose()?
        .unwrap_or(0);
    if state.snapshot.as_ref().map(|s| s.common.version) != Some(snap_version) {
        let name = versioned(state, "snapshot", snap_version);
        let bytes = fetch
            .fetch(&name, limits.snapshot)?
            .ok_or_else(|| missing(&name))?;
        state.update_snapshot(&bytes, now, limits)?;
    } else if let Some(s) = &state.snapshot {
        s.common.check_expiry("snapshot", now)?;
    }
    let pin = state.snapshot_pin("targets.json")?;
    if state.targets.as_ref().map(|t| t.common.version) != Some(pin.version) {
        let name = versioned(state, "targets", pin.version);
        let bytes = fetch
            .fetch(&name, limits.targets)?
            .ok_or_else(|| missing(&name))?;
        state.update_targets(&bytes, now, limits)?;
    } else if let Some(t) = &state.targets {
        t.common.check_expiry("targets", now)?;
    }
    for role in state.delegated_roles() {
        let pin = state.snapshot_pin(&format!("{role}.json"))?;
        let name = versioned(state, &role, pin.version);
        let bytes = fetch
            .fetch(&name, limits.targets)?
            .ok_or_else(|| missing(&name))?;
        state.update_delegated(&role, &bytes, now, limits)?;
    }
    Ok(())
}

fn versioned(state: &TrustedState, role: &str, version: u64) -> String {
    if state.root.consistent_snapshot {
        format!("{version}.{role}.json")
    } else {
        format!("{role}.json")
    }
}

fn missing(name: &str) -> UpdateError {
    UpdateError::Missing {
        role: name.to_owned(),
        message: "listed by the signed metadata but not on the repository".into(),
    }
}

/// Checks a downloaded target against its signed description: exact length first (a
/// longer stream is cut off by the caller at `length`), then every supported hash.
pub fn verify_target(name: &str, file: &TargetFile, data: &[u8]) -> Result<(), UpdateError> {
    check_file(&format!("target {name}"), data, file.length, &file.hashes)
}

/// [`verify_target`] for a file on disk, read in chunks (images are too large to hold in
/// memory on a gateway).
pub fn verify_target_file(
    name: &str,
    file: &TargetFile,
    path: &std::path::Path,
) -> Result<(), UpdateError> {
    let f = std::fs::File::open(path).map_err(|e| UpdateError::io(path, e))?;
    crate::metadata::check_reader(&format!("target {name}"), f, file.length, &file.hashes)
}

/// The path a target is published under with consistent snapshots:
/// `DIR/SHA256.NAME` for `DIR/NAME`.
pub fn consistent_target_path(name: &str, file: &TargetFile) -> Option<String> {
    let hash = file.hashes.get("sha256")?;
    Some(match name.rsplit_once('/') {
        Some((dir, base)) => format!("{dir}/{hash}.{base}"),
        None => format!("{hash}.{name}"),
    })
}
