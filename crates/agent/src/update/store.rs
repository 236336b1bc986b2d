//! The device's trusted TUF metadata on disk, and the clock it checks expiry against.
//!
//! Files are the ones the TUF client workflow names (`root.json`, `timestamp.json`,
//! `snapshot.json`, `targets.json`), each written through a temporary file, fsync and rename,
//! so power loss leaves either the old file or the new one. Loading fails closed: a damaged
//! or missing `root.json` stops the updater (the device must be re-initialised with a root
//! it trusts); any other file that does not verify against it is deleted and fetched again,
//! never trusted.
//!
//! Gateways often have no real-time clock and boot at 1970. The trust clock therefore never
//! runs backwards: it is the later of the system clock and the newest time the updater has
//! seen (kept in `clock.json`), advanced by the monotonic clock while the agent runs. A stale
//! or reset system clock cannot make expired metadata valid again, which is what stops a
//! freeze attack on such a device.

use std::path::{Path, PathBuf};
use std::time::Instant;

use rampart_update::UpdateError;
use rampart_update::client::{Limits, TrustedState};
use rampart_update::repository::atomic_write;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

const TOP_LEVEL: [&str; 3] = ["timestamp.json", "snapshot.json", "targets.json"];

/// A metadata directory.
#[derive(Debug, Clone)]
pub struct MetadataStore {
    dir: PathBuf,
}

impl MetadataStore {
    pub fn new(dir: &Path) -> MetadataStore {
        MetadataStore {
            dir: dir.to_path_buf(),
        }
    }

    /// Whether a trusted root is installed.
    pub fn is_initialised(&self) -> bool {
        self.dir.join("root.json").exists()
    }

    /// Installs `root` as the trust anchor (it must be signed by its own root keys),
    /// replacing whatever was trusted before.
    pub fn init(&self, root: &[u8], limits: &Limits) -> Result<(), UpdateError> {
        TrustedState::new(root, limits)?;
        std::fs::create_dir_all(&self.dir).map_err(|e| io(&self.dir, e))?;
        for name in TOP_LEVEL {
            remove(&self.dir.join(name))?;
        }
        atomic_write(&self.dir.join("root.json"), root)
    }

    /// The trusted state from disk. Files that fail their checks are removed (and will be
    /// fetched again); their names are returned for the log.
    pub fn load(&self, limits: &Limits) -> Result<(TrustedState, Vec<String>), UpdateError> {
        let root_path = self.dir.join("root.json");
        let root = std::fs::read(&root_path).map_err(|e| io(&root_path, e))?;
        let mut state = TrustedState::new(&root, limits).map_err(|e| UpdateError::Missing {
            role: "root".into(),
            message: format!(
                "{}: the trusted root does not verify ({e}); re-initialise the device's update trust",
                root_path.display()
            ),
        })?;
        let mut dropped = Vec::new();
        for name in TOP_LEVEL {
            let path = self.dir.join(name);
            let bytes = match std::fs::read(&path) {
                Ok(b) => b,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(io(&path, e)),
            };
            if let Err(e) = state.load_local(name, &bytes, limits) {
                dropped.push(format!("{name}: {e}"));
                remove(&path)?;
            }
        }
        Ok((state, dropped))
    }

    /// Writes every trusted file that changed (root first: the files after it are checked
    /// against it when loaded) and removes top-level files the state no longer trusts.
    pub fn save(&self, state: &TrustedState) -> Result<(), UpdateError> {
        let files = state.files();
        let mut names: Vec<&String> = files.keys().collect();
        names.sort_by_key(|n| (n.as_str() != "root.json", n.as_str() == "timestamp.json"));
        for name in names {
            let path = self.dir.join(name);
            let bytes = &files[name];
            if std::fs::read(&path).ok().as_ref() != Some(bytes) {
                atomic_write(&path, bytes)?;
            }
        }
        for name in TOP_LEVEL {
            if !files.contains_key(name) {
                remove(&self.dir.join(name))?;
            }
        }
        Ok(())
    }
}

/// The clock metadata expiry is checked against; see the module documentation.
#[derive(Debug)]
pub struct TrustClock {
    path: PathBuf,
    floor: OffsetDateTime,
    since: Instant,
}

impl TrustClock {
    /// Reads `path` (a missing file means no time seen yet; a damaged one is an error, so
    /// the floor cannot be reset by corrupting it).
    pub fn load(path: &Path) -> Result<TrustClock, UpdateError> {
        let floor = match std::fs::read_to_string(path) {
            Ok(s) => {
                let v: serde_json::Value =
                    serde_json::from_str(&s).map_err(|e| UpdateError::Missing {
                        role: "clock".into(),
                        message: format!("{}: {e}", path.display()),
                    })?;
                v.get("newest_seen")
                    .and_then(serde_json::Value::as_str)
                    .and_then(|t| OffsetDateTime::parse(t, &Rfc3339).ok())
                    .ok_or_else(|| UpdateError::Missing {
                        role: "clock".into(),
                        message: format!("{}: no valid newest_seen", path.display()),
                    })?
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => OffsetDateTime::UNIX_EPOCH,
            Err(e) => return Err(io(path, e)),
        };
        Ok(TrustClock {
            path: path.to_path_buf(),
            floor,
            since: Instant::now(),
        })
    }

    /// The later of the system clock and the floor advanced by monotonic time.
    pub fn now(&self) -> OffsetDateTime {
        let system = OffsetDateTime::now_utc();
        let advanced = self.floor
            + time::Duration::try_from(self.since.elapsed()).unwrap_or(time::Duration::ZERO);
        system.max(advanced)
    }

    /// Whether the system clock is behind the trust clock (worth a warning: TLS and
    /// certificate checks use the system clock).
    pub fn system_is_behind(&self) -> bool {
        OffsetDateTime::now_utc() < self.now() - time::Duration::minutes(5)
    }

    /// Records the current trusted time as the new floor.
    pub fn persist(&mut self) -> Result<(), UpdateError> {
        let now = self.now();
        self.floor = now;
        self.since = Instant::now();
        let text = serde_json::json!({
            "newest_seen": now.format(&Rfc3339).unwrap_or_default(),
        })
        .to_string();
        atomic_write(&self.path, text.as_bytes())
    }
}

fn io(path: &Path, e: std::io::Error) -> UpdateError {
    UpdateError::Io {
        path: path.display().to_string(),
        source: e,
    }
}

fn remove(path: &Path) -> Result<(), UpdateError> {
    super::remove_file(path).map_err(|e| io(path, e))
}
