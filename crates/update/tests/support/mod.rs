//! A repository built with the crate's own repository functions, served from memory to the
//! real client state machine (the map is only the transport), and written to disk for the
//! Python reference client.

#![allow(dead_code, clippy::unwrap_used)] // shared by several test files; failing loudly is right

use std::collections::HashMap;
use std::path::Path;

use rampart_update::UpdateError;
use rampart_update::client::{Fetch, consistent_target_path};
use rampart_update::keys::SigningKey;
use rampart_update::metadata::{DelegatedRole, Delegations, Envelope, TargetFile, Targets};
use rampart_update::repository::{self, RoleSpec};
use time::{Duration, OffsetDateTime};

pub struct Keys {
    pub root: Vec<SigningKey>,
    pub targets: Vec<SigningKey>,
    pub snapshot: SigningKey,
    pub timestamp: SigningKey,
    pub security: SigningKey,
}

impl Keys {
    pub fn new() -> Keys {
        Keys {
            root: vec![
                SigningKey::generate().unwrap(),
                SigningKey::generate().unwrap(),
            ],
            targets: vec![
                SigningKey::generate().unwrap(),
                SigningKey::generate().unwrap(),
            ],
            snapshot: SigningKey::generate().unwrap(),
            timestamp: SigningKey::generate().unwrap(),
            security: SigningKey::generate().unwrap(),
        }
    }
}

/// A repository: root (2 of 2 keys), targets (2 of 2), snapshot, timestamp, and a
/// delegated `security` role for `security/*`.
pub struct Repo {
    pub keys: Keys,
    pub files: HashMap<String, Vec<u8>>,
    pub root_version: u64,
    pub targets: Targets,
    pub security: Targets,
    pub snapshot_version: u64,
    pub timestamp_version: u64,
    pub expires: OffsetDateTime,
}

pub fn now() -> OffsetDateTime {
    OffsetDateTime::now_utc()
}

impl Repo {
    pub fn new() -> Repo {
        let keys = Keys::new();
        let expires = now() + Duration::days(30);
        let delegations = Delegations {
            keys: [(keys.security.public().key_id(), keys.security.public())].into(),
            roles: vec![DelegatedRole {
                name: "security".into(),
                keyids: vec![keys.security.public().key_id()],
                threshold: 1,
                terminating: true,
                paths: vec!["security/*".into()],
            }],
        };
        let mut r = Repo {
            files: HashMap::new(),
            root_version: 0,
            targets: repository::targets(1, expires, Some(delegations)),
            security: repository::targets(1, expires, None),
            snapshot_version: 0,
            timestamp_version: 0,
            expires,
            keys,
        };
        r.publish_root(&[]);
        r
    }

    pub fn root_specs(&self) -> [RoleSpec; 4] {
        [
            RoleSpec::new(self.keys.root.iter().map(|k| k.public()).collect(), 2),
            RoleSpec::new(self.keys.targets.iter().map(|k| k.public()).collect(), 2),
            RoleSpec::new(vec![self.keys.snapshot.public()], 1),
            RoleSpec::new(vec![self.keys.timestamp.public()], 1),
        ]
    }

    /// Publishes the next root version signed by the current root keys and `extra` (old
    /// keys after a rotation).
    pub fn publish_root(&mut self, extra: &[&SigningKey]) {
        self.root_version += 1;
        let [r, t, s, ts] = self.root_specs();
        let root = repository::root(self.root_version, self.expires, &r, &t, &s, &ts);
        let mut signers: Vec<&SigningKey> = self.keys.root.iter().collect();
        signers.extend_from_slice(extra);
        let env = repository::signed(&root, &signers).unwrap();
        self.files.insert(
            format!("{}.root.json", self.root_version),
            env.to_bytes().unwrap(),
        );
    }

    pub fn root_bytes(&self, version: u64) -> Vec<u8> {
        self.files[&format!("{version}.root.json")].clone()
    }

    /// Adds an artifact to targets (or to security for `security/...` names).
    pub fn add(&mut self, name: &str, data: &[u8]) -> TargetFile {
        let f = TargetFile::of(data, Some(serde_json::json!({"version": "1.0.0"})));
        let path = consistent_target_path(name, &f).unwrap();
        self.files.insert(format!("targets/{path}"), data.to_vec());
        if name.starts_with("security/") {
            self.security.targets.insert(name.into(), f.clone());
        } else {
            self.targets.targets.insert(name.into(), f.clone());
        }
        f
    }

    /// Publishes new targets, security, snapshot and timestamp versions.
    pub fn publish(&mut self) {
        self.targets.common.version += 1;
        self.security.common.version += 1;
        let targets_keys: Vec<&SigningKey> = self.keys.targets.iter().collect();
        let t = repository::signed(&self.targets, &targets_keys).unwrap();
        let s = repository::signed(&self.security, &[&self.keys.security]).unwrap();
        self.put_versioned("targets", &t);
        self.put_versioned("security", &s);
        self.snapshot_version += 1;
        let snap = repository::snapshot(
            self.snapshot_version,
            self.expires,
            &[("targets", &t), ("security", &s)],
        )
        .unwrap();
        let snap_env = repository::signed(&snap, &[&self.keys.snapshot]).unwrap();
        let snap_bytes = self.put_versioned("snapshot", &snap_env);
        self.timestamp_version += 1;
        let ts = repository::timestamp(
            self.timestamp_version,
            self.expires,
            self.snapshot_version,
            &snap_bytes,
        );
        let ts_env = repository::signed(&ts, &[&self.keys.timestamp]).unwrap();
        self.files
            .insert("timestamp.json".into(), ts_env.to_bytes().unwrap());
    }

    pub fn put_versioned(&mut self, role: &str, env: &Envelope) -> Vec<u8> {
        let v = env.signed["version"].as_u64().unwrap();
        let bytes = env.to_bytes().unwrap();
        self.files.insert(format!("{v}.{role}.json"), bytes.clone());
        bytes
    }

    /// Writes every file under `dir/metadata` and `dir/targets`.
    pub fn write_to(&self, dir: &Path) {
        for (name, bytes) in &self.files {
            let p = if let Some(t) = name.strip_prefix("targets/") {
                dir.join("targets").join(t)
            } else {
                dir.join("metadata").join(name)
            };
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, bytes).unwrap();
        }
    }
}

/// Serves a snapshot of the repository's files.
pub struct MemFetch(pub HashMap<String, Vec<u8>>);

impl Fetch for MemFetch {
    fn fetch(&mut self, path: &str, max_len: u64) -> Result<Option<Vec<u8>>, UpdateError> {
        Ok(self.0.get(path).map(|b| {
            // A transport reads at most max_len + 1 bytes, so the client sees "too large".
            b[..b.len().min(max_len as usize + 1)].to_vec()
        }))
    }
}
