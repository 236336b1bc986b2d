//! The hub's release workspace: staging metadata, collecting offline signatures, publishing.
//!
//! Root, targets and the delegated `security` role are signed with offline keys, so a
//! release happens in steps that may run on different machines:
//!
//! 1. `stage_root` / `stage_target` write the next version of a role into `staged/`,
//!    unsigned (changing a staged role drops the signatures it had: they covered other bytes);
//! 2. `sign` adds one key's signature to a staged role, refusing keys the role does not list;
//! 3. `publish` checks every staged role against its threshold (a new root against the old
//!    root's threshold *and* its own), writes the versioned files, and has the hub's online
//!    keys sign a new snapshot and timestamp.
//!
//! `refresh_online` re-signs timestamp (and snapshot when it nears expiry) on the hub's
//! schedule. Every mutation holds `release.lock`, so the hub's scheduled re-signing and an
//! operator's publish never interleave (interleaving could publish a timestamp pointing at an
//! older snapshot, which devices would rightly refuse as a rollback).
//!
//! ```text
//! updates/
//!   online/timestamp.pem snapshot.pem   the hub's online keys (0600)
//!   staged/ROLE.json                    roles waiting for signatures
//!   repository/metadata/ targets/       what devices fetch (see `repository`)
//!   release.lock
//! ```

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use serde::Serialize;
use time::{Duration, OffsetDateTime};

use crate::UpdateError;
use crate::keys::{PublicKey, SigningKey};
use crate::metadata::{
    DelegatedRole, Delegations, Envelope, Root, Snapshot, TargetFile, Targets, Timestamp,
};
use crate::repository::{self, Published, RoleSpec};

/// The delegated role for security fixes, and the target paths it alone may sign
/// (`security/VERSION/FILE`; TUF patterns match one path segment per `*`).
pub const SECURITY_ROLE: &str = "security";
pub const SECURITY_PATHS: &str = "security/*/*";

/// How long each role's metadata stays valid after it is signed.
#[derive(Debug, Clone, Copy)]
pub struct Expiries {
    pub root: Duration,
    pub targets: Duration,
    pub snapshot: Duration,
    pub timestamp: Duration,
}

impl Default for Expiries {
    fn default() -> Self {
        Expiries {
            root: Duration::days(365),
            targets: Duration::days(90),
            snapshot: Duration::days(7),
            timestamp: Duration::days(1),
        }
    }
}

/// The trust a new root sets up.
#[derive(Debug, Clone)]
pub struct RootPlan {
    pub root_keys: Vec<PublicKey>,
    pub root_threshold: u32,
    pub targets_keys: Vec<PublicKey>,
    pub targets_threshold: u32,
    /// Keys of the delegated `security` role; empty keeps the current delegation.
    pub security_keys: Vec<PublicKey>,
    pub security_threshold: u32,
    /// Replace the online timestamp key (after a compromise): the new root lists a fresh key.
    pub rotate_timestamp: bool,
    /// Replace the online snapshot key.
    pub rotate_snapshot: bool,
}

/// Signatures a staged role has and needs.
#[derive(Debug, Clone, Serialize)]
pub struct RoleStatus {
    pub role: String,
    pub version: u64,
    /// Key ids that signed.
    pub signed_by: Vec<String>,
    /// What must hold before publishing, e.g. "2 of [a, b] (new root)".
    pub needs: Vec<Requirement>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Requirement {
    pub by: String,
    pub threshold: u32,
    pub valid: usize,
    pub keyids: Vec<String>,
}

impl Requirement {
    pub fn met(&self) -> bool {
        self.valid >= self.threshold as usize
    }
}

/// What a publish wrote.
#[derive(Debug, Clone, Serialize)]
pub struct PublishSummary {
    /// Role → version written (root, targets, security, snapshot, timestamp).
    pub written: BTreeMap<String, u64>,
}

/// A release workspace directory.
#[derive(Debug, Clone)]
pub struct ReleaseDir {
    dir: PathBuf,
}

const STAGEABLE: [&str; 3] = ["root", "targets", SECURITY_ROLE];

impl ReleaseDir {
    pub fn new(dir: &Path) -> ReleaseDir {
        ReleaseDir {
            dir: dir.to_path_buf(),
        }
    }

    /// The published repository devices fetch from.
    pub fn published(&self) -> Published {
        Published::new(&self.dir.join("repository"))
    }

    fn staged_path(&self, role: &str) -> PathBuf {
        self.dir.join("staged").join(format!("{role}.json"))
    }

    fn online_path(&self, role: &str, next: bool) -> PathBuf {
        let suffix = if next { ".next" } else { "" };
        self.dir.join("online").join(format!("{role}{suffix}.pem"))
    }

    /// Takes the workspace's lock until the returned file is dropped.
    fn lock(&self) -> Result<File, UpdateError> {
        std::fs::create_dir_all(&self.dir).map_err(|e| UpdateError::io(&self.dir, e))?;
        let path = self.dir.join("release.lock");
        let f = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| UpdateError::io(&path, e))?;
        f.lock().map_err(|e| UpdateError::io(&path, e))?;
        Ok(f)
    }

    /// A published target as a device would see it: the client refreshes from the first
    /// published root through the whole chain, so a rollout only ever names what devices
    /// can verify. Returns the signed description and the role that signed it.
    pub fn published_target(
        &self,
        name: &str,
        now: OffsetDateTime,
    ) -> Result<(crate::metadata::TargetFile, String), UpdateError> {
        let dir = self.published().metadata_dir();
        let first = dir.join("1.root.json");
        let root = std::fs::read(&first).map_err(|e| UpdateError::io(&first, e))?;
        let limits = crate::client::Limits::default();
        let mut state = crate::client::TrustedState::new(&root, &limits)?;
        let mut fetch = crate::client::DirFetch { metadata_dir: dir };
        crate::client::refresh(&mut state, &mut fetch, now, &limits)?;
        state.find_target(name)
    }

    /// Whether anything was ever published.
    pub fn is_initialised(&self) -> bool {
        self.published()
            .metadata_dir()
            .join("timestamp.json")
            .exists()
    }

    /// The hub's online key for `role` (timestamp or snapshot), created on first use.
    fn online_key(&self, role: &str, next: bool) -> Result<SigningKey, UpdateError> {
        let path = self.online_path(role, next);
        if path.exists() {
            return SigningKey::load(&path);
        }
        let key = SigningKey::generate()?;
        if let Some(d) = path.parent() {
            rampart_pki::files::create_private_dir(d)
                .map_err(|e| UpdateError::io(d, std::io::Error::other(e.to_string())))?;
        }
        rampart_pki::files::write_secret(&path, key.to_pem().as_bytes(), false)
            .map_err(|e| UpdateError::io(&path, std::io::Error::other(e.to_string())))?;
        Ok(key)
    }

    /// The online key that signs `role` under the root that will be current after a
    /// publish: the staged replacement if a rotation is staged.
    fn effective_online_key(&self, role: &str) -> Result<SigningKey, UpdateError> {
        if self.online_path(role, true).exists() {
            self.online_key(role, true)
        } else {
            self.online_key(role, false)
        }
    }

    /// The newest published `N.ROLE.json`.
    pub fn latest(&self, role: &str) -> Result<Option<(u64, Envelope)>, UpdateError> {
        let dir = self.published().metadata_dir();
        let entries = match std::fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(UpdateError::io(&dir, e)),
        };
        let suffix = format!(".{role}.json");
        let mut best: Option<u64> = None;
        for entry in entries {
            let entry = entry.map_err(|e| UpdateError::io(&dir, e))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if let Some(v) = name
                .strip_suffix(&suffix)
                .and_then(|v| v.parse::<u64>().ok())
            {
                best = best.max(Some(v));
            }
        }
        match best {
            None => Ok(None),
            Some(v) => {
                let path = dir.join(format!("{v}{suffix}"));
                let bytes = std::fs::read(&path).map_err(|e| UpdateError::io(&path, e))?;
                Ok(Some((v, Envelope::parse(role, &bytes)?)))
            }
        }
    }

    fn latest_timestamp(&self) -> Result<Option<Timestamp>, UpdateError> {
        let path = self.published().metadata_dir().join("timestamp.json");
        match std::fs::read(&path) {
            Ok(b) => Ok(Some(Envelope::parse("timestamp", &b)?.role("timestamp")?)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(UpdateError::io(&path, e)),
        }
    }

    /// A staged role, if any.
    pub fn staged(&self, role: &str) -> Result<Option<Envelope>, UpdateError> {
        let path = self.staged_path(role);
        match std::fs::read(&path) {
            Ok(b) => Ok(Some(Envelope::parse(role, &b)?)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(UpdateError::io(&path, e)),
        }
    }

    fn write_staged(&self, role: &str, env: &Envelope) -> Result<(), UpdateError> {
        repository::atomic_write(&self.staged_path(role), &env.to_bytes()?)
    }

    /// The staged version of a role if there is one, else the published one.
    fn current(&self, role: &str) -> Result<Option<Envelope>, UpdateError> {
        match self.staged(role)? {
            Some(e) => Ok(Some(e)),
            None => Ok(self.latest(role)?.map(|(_, e)| e)),
        }
    }

    fn current_root(&self) -> Result<Option<Root>, UpdateError> {
        self.current("root")?.map(|e| e.role("root")).transpose()
    }

    fn current_targets(&self) -> Result<Option<Targets>, UpdateError> {
        self.current("targets")?
            .map(|e| e.role("targets"))
            .transpose()
    }

    /// Starts editing a targets-type role: the staged one, or the next version of the
    /// published one, or an empty first version.
    fn editable_targets(
        &self,
        role: &str,
        now: OffsetDateTime,
        exp: &Expiries,
    ) -> Result<Targets, UpdateError> {
        let mut t = match self.staged(role)? {
            Some(e) => e.role::<Targets>(role)?,
            None => match self.latest(role)? {
                Some((v, e)) => {
                    let mut t: Targets = e.role(role)?;
                    t.common.version = v + 1;
                    t
                }
                None => repository::targets(1, now, None),
            },
        };
        t.common.expires = crate::metadata::expiry_string(now + exp.targets);
        Ok(t)
    }

    /// Stages the next root version (version 1 on a new workspace), and the targets
    /// delegation to `security` when its keys change. Online keys are created if missing;
    /// a rotation creates a replacement that takes over at publish.
    pub fn stage_root(
        &self,
        plan: &RootPlan,
        now: OffsetDateTime,
        exp: &Expiries,
    ) -> Result<u64, UpdateError> {
        let _lock = self.lock()?;
        for (what, keys, threshold) in [
            ("root", &plan.root_keys, plan.root_threshold),
            ("targets", &plan.targets_keys, plan.targets_threshold),
        ] {
            check_threshold(what, keys.len(), threshold)?;
        }
        let version = self.latest("root")?.map(|(v, _)| v).unwrap_or(0) + 1;
        let online = |role: &str, rotate: bool| -> Result<SigningKey, UpdateError> {
            if rotate {
                let next = self.online_path(role, true);
                if next.exists() {
                    std::fs::remove_file(&next).map_err(|e| UpdateError::io(&next, e))?;
                }
                self.online_key(role, true)
            } else {
                self.online_key(role, false)
            }
        };
        let ts = online("timestamp", plan.rotate_timestamp)?;
        let snap = online("snapshot", plan.rotate_snapshot)?;
        let root = repository::root(
            version,
            now + exp.root,
            &RoleSpec::new(plan.root_keys.clone(), plan.root_threshold),
            &RoleSpec::new(plan.targets_keys.clone(), plan.targets_threshold),
            &RoleSpec::new(vec![snap.public()], 1),
            &RoleSpec::new(vec![ts.public()], 1),
        );
        self.write_staged("root", &Envelope::new(&root)?)?;

        let published_targets = self.latest("targets")?;
        let mut targets = self.editable_targets("targets", now, exp)?;
        let mut targets_changed = published_targets.is_none();
        if !plan.security_keys.is_empty() {
            check_threshold(
                SECURITY_ROLE,
                plan.security_keys.len(),
                plan.security_threshold,
            )?;
            let delegations = Delegations {
                keys: plan
                    .security_keys
                    .iter()
                    .map(|k| (k.key_id(), k.clone()))
                    .collect(),
                roles: vec![DelegatedRole {
                    name: SECURITY_ROLE.into(),
                    keyids: plan.security_keys.iter().map(PublicKey::key_id).collect(),
                    threshold: plan.security_threshold,
                    terminating: true,
                    paths: vec![SECURITY_PATHS.into()],
                }],
            };
            if targets.delegations.as_ref() != Some(&delegations) {
                targets.delegations = Some(delegations);
                targets_changed = true;
            }
            if self.current(SECURITY_ROLE)?.is_none() {
                let sec = self.editable_targets(SECURITY_ROLE, now, exp)?;
                self.write_staged(SECURITY_ROLE, &Envelope::new(&sec)?)?;
            }
        }
        if targets_changed {
            self.write_staged("targets", &Envelope::new(&targets)?)?;
        }
        Ok(version)
    }

    /// Stores an artifact under its content name and lists it in the staged targets (or
    /// `security` for names under `security/`).
    pub fn stage_target(
        &self,
        name: &str,
        data: &[u8],
        custom: Option<serde_json::Value>,
        now: OffsetDateTime,
        exp: &Expiries,
    ) -> Result<(String, TargetFile), UpdateError> {
        let _lock = self.lock()?;
        repository::check_target_name(name)?;
        let role = if name.starts_with("security/") {
            let delegated = self
                .current_targets()?
                .and_then(|t| t.delegations)
                .is_some_and(|d| d.roles.iter().any(|r| r.name == SECURITY_ROLE));
            if !delegated {
                return Err(UpdateError::Release(
                    "there is no security role yet: stage a root with security keys first (`rampart release root ... --security-key FILE`)".into(),
                ));
            }
            SECURITY_ROLE
        } else {
            "targets"
        };
        let mut t = self.editable_targets(role, now, exp)?;
        let file = self.published().add_target(name, data, custom)?;
        t.targets.insert(name.to_owned(), file.clone());
        self.write_staged(role, &Envelope::new(&t)?)?;
        Ok((role.to_owned(), file))
    }

    /// Re-stages a role unchanged but for a new version and expiry (to renew offline
    /// metadata before it expires).
    pub fn stage_renewal(
        &self,
        role: &str,
        now: OffsetDateTime,
        exp: &Expiries,
    ) -> Result<u64, UpdateError> {
        let _lock = self.lock()?;
        let t = match role {
            "targets" | SECURITY_ROLE => self.editable_targets(role, now, exp)?,
            _ => {
                return Err(UpdateError::Release(format!(
                    "{role}: only targets and {SECURITY_ROLE} are renewed this way (a root renewal is `rampart release root`)"
                )));
            }
        };
        let v = t.common.version;
        self.write_staged(role, &Envelope::new(&t)?)?;
        Ok(v)
    }

    /// The requirements a staged role must meet to be published.
    fn requirements(&self, role: &str, env: &Envelope) -> Result<Vec<Requirement>, UpdateError> {
        let mut out = Vec::new();
        let mut check = |by: &str,
                         keys: &BTreeMap<String, PublicKey>,
                         rk: &crate::metadata::RoleKeys|
         -> Result<(), UpdateError> {
            out.push(Requirement {
                by: by.to_owned(),
                threshold: rk.threshold,
                valid: env.valid_signers(keys, rk)?,
                keyids: rk.keyids.clone(),
            });
            Ok(())
        };
        match role {
            "root" => {
                let new: Root = env.role("root")?;
                check("new root", &new.keys, new.role_keys("root")?)?;
                if let Some((_, old)) = self.latest("root")? {
                    let old: Root = old.role("root")?;
                    check("previous root", &old.keys, old.role_keys("root")?)?;
                }
            }
            "targets" => {
                let root = self.current_root()?.ok_or_else(no_root)?;
                check("root", &root.keys, root.role_keys("targets")?)?;
            }
            SECURITY_ROLE => {
                let d = self
                    .current_targets()?
                    .and_then(|t| t.delegations)
                    .ok_or_else(|| {
                        UpdateError::Release("targets delegates to no security role".into())
                    })?;
                let r = d
                    .roles
                    .iter()
                    .find(|r| r.name == SECURITY_ROLE)
                    .ok_or_else(|| {
                        UpdateError::Release("targets delegates to no security role".into())
                    })?;
                check("targets delegation", &d.keys, &r.role_keys())?;
            }
            other => return Err(not_stageable(other)),
        }
        Ok(out)
    }

    /// Adds `key`'s signature to the staged `role`.
    pub fn sign(&self, role: &str, key: &SigningKey) -> Result<RoleStatus, UpdateError> {
        let _lock = self.lock()?;
        if !STAGEABLE.contains(&role) {
            return Err(not_stageable(role));
        }
        let mut env = self.staged(role)?.ok_or_else(|| {
            UpdateError::Release(format!(
                "nothing is staged for {role}: stage a change first (`rampart release add`, `rampart release root` or `rampart release renew`)"
            ))
        })?;
        let id = key.public().key_id();
        let needs = self.requirements(role, &env)?;
        if !needs.iter().any(|r| r.keyids.contains(&id)) {
            let listed: Vec<String> = needs
                .iter()
                .flat_map(|r| r.keyids.iter().map(|k| short(k)))
                .collect();
            return Err(UpdateError::Release(format!(
                "key {} is not a {role} key; the staged {role} accepts keys [{}]",
                short(&id),
                listed.join(", ")
            )));
        }
        env.sign(key)?;
        self.write_staged(role, &env)?;
        self.role_status(role, &env)
    }

    fn role_status(&self, role: &str, env: &Envelope) -> Result<RoleStatus, UpdateError> {
        Ok(RoleStatus {
            role: role.to_owned(),
            version: env
                .signed
                .get("version")
                .and_then(serde_json::Value::as_u64)
                .unwrap_or(0),
            signed_by: env.signatures.iter().map(|s| s.keyid.clone()).collect(),
            needs: self.requirements(role, env)?,
        })
    }

    /// Every staged role with its signatures and what it still needs.
    pub fn status(&self) -> Result<Vec<RoleStatus>, UpdateError> {
        let mut out = Vec::new();
        for role in STAGEABLE {
            if let Some(env) = self.staged(role)? {
                out.push(self.role_status(role, &env)?);
            }
        }
        Ok(out)
    }

    /// Publishes every staged role that meets its thresholds, then a new snapshot and
    /// timestamp signed by the online keys. Refuses (publishing nothing) if a staged role
    /// lacks signatures or if published metadata would no longer verify under a new root.
    pub fn publish(
        &self,
        now: OffsetDateTime,
        exp: &Expiries,
    ) -> Result<PublishSummary, UpdateError> {
        let _lock = self.lock()?;
        let mut staged = BTreeMap::new();
        for role in STAGEABLE {
            if let Some(env) = self.staged(role)? {
                for r in self.requirements(role, &env)? {
                    if !r.met() {
                        return Err(UpdateError::Release(format!(
                            "{role} has {} of the {} signatures the {} requires; add them with `rampart release sign {role} --key FILE`",
                            r.valid, r.threshold, r.by
                        )));
                    }
                }
                staged.insert(role, env);
            }
        }
        if staged.is_empty() && self.is_initialised() {
            return Err(UpdateError::Release(
                "nothing is staged: add a target (`rampart release add`) or stage a root first"
                    .into(),
            ));
        }
        let root_env = match staged.get("root") {
            Some(e) => e.clone(),
            None => self.latest("root")?.map(|(_, e)| e).ok_or_else(no_root)?,
        };
        let root: Root = root_env.role("root")?;
        let targets_env = match staged.get("targets") {
            Some(e) => e.clone(),
            None => self.latest("targets")?.map(|(_, e)| e).ok_or_else(|| {
                UpdateError::Release("no targets metadata: stage and sign targets".into())
            })?,
        };
        // Whatever stays published must still verify under the root being published.
        targets_env
            .verify("targets", &root.keys, root.role_keys("targets")?)
            .map_err(|e| {
                UpdateError::Release(format!(
                    "the published targets would not verify under the new root ({e}); stage targets again (`rampart release renew targets`) and sign it with the new targets keys"
                ))
            })?;
        let targets: Targets = targets_env.role("targets")?;
        let mut delegated = Vec::new();
        if let Some(d) = &targets.delegations {
            for r in &d.roles {
                let env = match staged.get(r.name.as_str()) {
                    Some(e) => e.clone(),
                    None => self.latest(&r.name)?.map(|(_, e)| e).ok_or_else(|| {
                        UpdateError::Release(format!(
                            "targets delegates to {} but it was never published: stage and sign it",
                            r.name
                        ))
                    })?,
                };
                env.verify(&r.name, &d.keys, &r.role_keys()).map_err(|e| {
                    UpdateError::Release(format!(
                        "{} would not verify under the new delegation ({e}); stage it again (`rampart release renew {}`) and sign it",
                        r.name, r.name
                    ))
                })?;
                delegated.push((r.name.clone(), env));
            }
        }

        let repo = self.published();
        let mut written = BTreeMap::new();
        if let Some(e) = staged.get("root") {
            repo.write_versioned("root", e)?;
            written.insert("root".to_owned(), root.common.version);
        }
        for (name, env) in &delegated {
            if staged.contains_key(name.as_str()) {
                repo.write_versioned(name, env)?;
                written.insert(name.clone(), version_of(env));
            }
        }
        if staged.contains_key("targets") {
            repo.write_versioned("targets", &targets_env)?;
            written.insert("targets".to_owned(), targets.common.version);
        }
        let mut roles: Vec<(&str, &Envelope)> = vec![("targets", &targets_env)];
        roles.extend(delegated.iter().map(|(n, e)| (n.as_str(), e)));
        let snap_version = self.latest("snapshot")?.map(|(v, _)| v).unwrap_or(0) + 1;
        let snapshot = repository::snapshot(snap_version, now + exp.snapshot, &roles)?;
        let snap_key = self.effective_online_key("snapshot")?;
        let snap_env = repository::signed(&snapshot, &[&snap_key])?;
        snap_env.verify("snapshot", &root.keys, root.role_keys("snapshot")?)?;
        let snap_bytes = repo.write_versioned("snapshot", &snap_env)?;
        written.insert("snapshot".to_owned(), snap_version);
        let ts_version = self
            .latest_timestamp()?
            .map(|t| t.common.version)
            .unwrap_or(0)
            + 1;
        let ts = repository::timestamp(ts_version, now + exp.timestamp, snap_version, &snap_bytes);
        let ts_key = self.effective_online_key("timestamp")?;
        let ts_env = repository::signed(&ts, &[&ts_key])?;
        ts_env.verify("timestamp", &root.keys, root.role_keys("timestamp")?)?;
        repo.write_timestamp(&ts_env)?;
        written.insert("timestamp".to_owned(), ts_version);

        for role in ["timestamp", "snapshot"] {
            let next = self.online_path(role, true);
            if next.exists() {
                let cur = self.online_path(role, false);
                std::fs::rename(&next, &cur).map_err(|e| UpdateError::io(&cur, e))?;
            }
        }
        for role in staged.keys() {
            let p = self.staged_path(role);
            std::fs::remove_file(&p).map_err(|e| UpdateError::io(&p, e))?;
        }
        Ok(PublishSummary { written })
    }

    /// Re-signs timestamp when less than half its lifetime is left, and snapshot (unchanged
    /// but for version and expiry) likewise. Returns the new timestamp version, if any.
    pub fn refresh_online(
        &self,
        now: OffsetDateTime,
        exp: &Expiries,
    ) -> Result<Option<u64>, UpdateError> {
        let _lock = self.lock()?;
        let Some(ts) = self.latest_timestamp()? else {
            return Ok(None);
        };
        let Some((snap_version, snap_env)) = self.latest("snapshot")? else {
            return Ok(None);
        };
        let snap: Snapshot = snap_env.role("snapshot")?;
        let repo = self.published();
        let (snap_version, snap_bytes) =
            if snap.common.expires_at("snapshot")? < now + exp.snapshot / 2 {
                let mut next = snap.clone();
                next.common =
                    crate::metadata::Common::new("snapshot", snap_version + 1, now + exp.snapshot);
                let env = repository::signed(&next, &[&self.online_key("snapshot", false)?])?;
                (snap_version + 1, repo.write_versioned("snapshot", &env)?)
            } else if ts.common.expires_at("timestamp")? < now + exp.timestamp / 2 {
                let path = repo
                    .metadata_dir()
                    .join(format!("{snap_version}.snapshot.json"));
                (
                    snap_version,
                    std::fs::read(&path).map_err(|e| UpdateError::io(&path, e))?,
                )
            } else {
                return Ok(None);
            };
        let version = ts.common.version + 1;
        let next = repository::timestamp(version, now + exp.timestamp, snap_version, &snap_bytes);
        let env = repository::signed(&next, &[&self.online_key("timestamp", false)?])?;
        repo.write_timestamp(&env)?;
        Ok(Some(version))
    }
}

fn version_of(env: &Envelope) -> u64 {
    env.signed
        .get("version")
        .and_then(serde_json::Value::as_u64)
        .unwrap_or(0)
}

fn check_threshold(role: &str, keys: usize, threshold: u32) -> Result<(), UpdateError> {
    if keys == 0 || threshold == 0 || threshold as usize > keys {
        return Err(UpdateError::Release(format!(
            "{role}: threshold {threshold} with {keys} key(s); give at least one key and a threshold between 1 and the number of keys"
        )));
    }
    Ok(())
}

fn no_root() -> UpdateError {
    UpdateError::Release(
        "no root yet: create one with `rampart release root --root-key ... --targets-key ...`"
            .into(),
    )
}

fn not_stageable(role: &str) -> UpdateError {
    UpdateError::Release(format!(
        "{role}: the offline roles are root, targets and {SECURITY_ROLE} (snapshot and timestamp are signed by the hub)"
    ))
}

fn short(keyid: &str) -> String {
    keyid.chars().take(12).collect()
}
