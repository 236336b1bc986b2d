//! Installing a verified artifact, trying it, and committing or rolling back.
//!
//! Two kinds of target, both switched in one atomic step so that whatever is *active* is
//! always a complete image that passed verification:
//!
//! - **package**: a tar archive unpacked into `DIR/releases/VERSION` (written under a
//!   temporary name, fsynced, then renamed), made active by replacing the symlink
//!   `DIR/current` (a new link renamed over the old one), with optional pre/post hooks;
//! - **image**: a full image written to the inactive slot of an A/B pair, read back and
//!   verified against the signed hashes, then made active by rewriting the boot state
//!   (`boot.json`: which slot boots, and whether it is on trial). On this machine slots are
//!   files; on a device the boot state is the bootloader's environment (docs/updates.md).
//!
//! After the switch the new version is *on trial* until the health check passes (a command
//! and "connected to the hub again within T"). The progress is journaled in
//! `STATE/update/install.json` before each step, so a start that finds a journal knows where
//! the previous run stopped:
//!
//! | journal phase | meaning at start | action |
//! |---|---|---|
//! | `writing` | the inactive side was being written; nothing switched | discard |
//! | `switching` | the switch may or may not have happened | switch back to `previous` |
//! | `trial`, not yet started | a reboot into the new image was requested | start the trial |
//! | `trial`, already started | the device restarted before committing | roll back |
//!
//! `crash_point` names each step; tests abort the agent at every one of them
//! (`RAMPART_AGENT_CRASH_AT=STEP`) and check that the next start leaves a verified version
//! active.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rampart_update::metadata::TargetFile;
use rampart_update::repository::atomic_write;
use rampart_update::selection::ArtifactKind;
use serde::{Deserialize, Serialize};

/// Where packages and images go.
#[derive(Debug, Clone, PartialEq)]
pub struct InstallConfig {
    /// The agent's update state directory (journal, installed version).
    pub state: PathBuf,
    pub package_dir: PathBuf,
    /// Run before the switch with RAMPART_UPDATE_DIR and RAMPART_UPDATE_VERSION; a failure
    /// aborts the install (nothing switched).
    pub pre_install: String,
    /// Run after the switch; a failure rolls back.
    pub post_install: String,
    pub slot_a: PathBuf,
    pub slot_b: PathBuf,
    pub boot_state: PathBuf,
    /// Run after an image switch instead of trying the image in-process (on a device:
    /// `systemctl reboot`); the trial then starts at the next start of the agent.
    pub reboot_command: String,
    /// Must exit 0 for the new version to be committed ("" = none).
    pub health_command: String,
    /// Time for the health command and for reconnecting to the hub.
    pub health_timeout: Duration,
}

/// Why an install failed.
#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("package archive: {0}")]
    Archive(String),
    #[error("{hook} hook `{command}` failed: {detail}")]
    Hook {
        hook: &'static str,
        command: String,
        detail: String,
    },
    #[error("the image written to slot {slot} does not verify: {detail}")]
    SlotVerify { slot: String, detail: String },
    #[error("journal {path}: {detail}")]
    Journal { path: PathBuf, detail: String },
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> InstallError + '_ {
    move |source| InstallError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The install journal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Journal {
    pub phase: Phase,
    pub kind: ArtifactKind,
    pub target: String,
    pub version: String,
    /// The version active before (what a rollback returns to).
    pub previous: String,
    /// Image installs: the slot being installed and the one to return to.
    #[serde(default)]
    pub slot: Option<String>,
    #[serde(default)]
    pub previous_slot: Option<String>,
    /// Whether the trial run has started (a start that finds it started rolls back).
    #[serde(default)]
    pub trial_started: bool,
    /// The rollout this install belongs to, if any (echoed in reports).
    #[serde(default)]
    pub rollout: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    Writing,
    Switching,
    Trial,
}

/// The boot state of an A/B pair (the bootloader environment's stand-in).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BootState {
    /// "a" or "b": the slot that boots.
    pub active: String,
    /// The new slot boots on trial; if it is not committed, the next boot takes `fallback`.
    #[serde(default)]
    pub trial: bool,
    #[serde(default)]
    pub fallback: Option<String>,
}

/// The version committed on this device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Installed {
    pub version: String,
    /// What a rollback instruction returns to.
    #[serde(default)]
    pub previous: Option<String>,
    /// How it was installed, and from which target and rollout (absent for the factory
    /// version and for files written by older agents).
    #[serde(default)]
    pub kind: Option<ArtifactKind>,
    #[serde(default)]
    pub target: Option<String>,
    #[serde(default)]
    pub rollout: Option<String>,
    /// Image installs: the slot holding `previous`.
    #[serde(default)]
    pub previous_slot: Option<String>,
}

/// What a rollback instruction did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Undo {
    /// Back on `to`.
    RolledBack { from: String, to: String },
    /// The committed version did not come from that rollout: nothing to undo.
    NotInstalled { version: String },
}

/// What recovery at start did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Recovery {
    Nothing,
    /// An interrupted write or switch was undone; `version` stays active.
    Discarded {
        version: String,
        target: String,
    },
    /// The device restarted before committing: back to the previous version.
    RolledBack {
        from: String,
        to: String,
        target: String,
    },
    /// A trial must run now (after a requested reboot).
    TrialDue(Journal),
}

/// Aborts the process at `step` when `RAMPART_AGENT_CRASH_AT` names it: the fault injection
/// the power-loss tests use (no destructors, no flushes — like `kill -9`).
pub fn crash_point(step: &str) {
    if std::env::var("RAMPART_AGENT_CRASH_AT").is_ok_and(|s| s == step) {
        eprintln!("RAMPART_AGENT_CRASH_AT={step}: aborting here");
        std::process::abort();
    }
}

/// A verified artifact ready to install.
#[derive(Debug, Clone, Copy)]
pub struct Artifact<'a> {
    pub kind: ArtifactKind,
    pub target: &'a str,
    pub version: &'a str,
    /// Its signed description (the slot is read back and checked against it).
    pub signed: &'a TargetFile,
    /// The downloaded, verified file.
    pub file: &'a Path,
}

/// The installer of one device.
#[derive(Debug, Clone)]
pub struct Installer {
    pub cfg: InstallConfig,
}

impl Installer {
    pub fn new(cfg: InstallConfig) -> Installer {
        Installer { cfg }
    }

    fn journal_path(&self) -> PathBuf {
        self.cfg.state.join("install.json")
    }

    fn installed_path(&self) -> PathBuf {
        self.cfg.state.join("installed.json")
    }

    pub fn journal(&self) -> Result<Option<Journal>, InstallError> {
        read_json(&self.journal_path())
    }

    fn write_journal(&self, j: &Journal) -> Result<(), InstallError> {
        write_json(&self.journal_path(), j)
    }

    fn clear_journal(&self) -> Result<(), InstallError> {
        remove(&self.journal_path())
    }

    /// The committed version, or `shipped` (the version in the factory image) if no update
    /// was ever committed.
    pub fn installed(&self, shipped: &str) -> Result<Installed, InstallError> {
        Ok(read_json(&self.installed_path())?.unwrap_or(Installed {
            version: shipped.to_owned(),
            previous: None,
            kind: None,
            target: None,
            rollout: None,
            previous_slot: None,
        }))
    }

    pub fn boot_state(&self) -> Result<BootState, InstallError> {
        Ok(read_json(&self.cfg.boot_state)?.unwrap_or(BootState {
            active: "a".into(),
            trial: false,
            fallback: None,
        }))
    }

    fn slot_path(&self, slot: &str) -> &Path {
        if slot == "b" {
            &self.cfg.slot_b
        } else {
            &self.cfg.slot_a
        }
    }

    /// Finishes or undoes what an earlier run left; call once at start, before anything
    /// else touches the installation.
    pub fn recover(&self) -> Result<Recovery, InstallError> {
        let Some(mut j) = self.journal()? else {
            return Ok(Recovery::Nothing);
        };
        match j.phase {
            Phase::Writing => {
                self.clear_journal()?;
                Ok(Recovery::Discarded {
                    version: j.previous,
                    target: j.target,
                })
            }
            Phase::Switching => {
                self.switch_back(&j)?;
                self.clear_journal()?;
                Ok(Recovery::Discarded {
                    version: j.previous,
                    target: j.target,
                })
            }
            Phase::Trial if !j.trial_started => {
                j.trial_started = true;
                self.write_journal(&j)?;
                Ok(Recovery::TrialDue(j))
            }
            Phase::Trial => {
                self.switch_back(&j)?;
                self.clear_journal()?;
                Ok(Recovery::RolledBack {
                    from: j.version,
                    to: j.previous,
                    target: j.target,
                })
            }
        }
    }

    /// Installs the verified artifact at `file` up to the switch. Returns the journal of the
    /// trial that follows (already started unless a reboot was requested).
    pub async fn install(
        &self,
        a: Artifact<'_>,
        installed: &Installed,
        rollout: Option<String>,
    ) -> Result<Journal, InstallError> {
        let Artifact {
            kind,
            target,
            version,
            signed,
            file,
        } = a;
        std::fs::create_dir_all(&self.cfg.state).map_err(io(&self.cfg.state))?;
        let mut j = Journal {
            phase: Phase::Writing,
            kind,
            target: target.to_owned(),
            version: version.to_owned(),
            previous: installed.version.clone(),
            slot: None,
            previous_slot: None,
            trial_started: false,
            rollout,
        };
        match kind {
            ArtifactKind::Package => self.install_package(&mut j, file).await?,
            ArtifactKind::Image => self.install_image(&mut j, signed, file).await?,
        }
        Ok(j)
    }

    async fn install_package(&self, j: &mut Journal, file: &Path) -> Result<(), InstallError> {
        let releases = self.cfg.package_dir.join("releases");
        std::fs::create_dir_all(&releases).map_err(io(&releases))?;
        self.write_journal(j)?;
        let partial = releases.join(format!(".{}.partial", j.version));
        let dest = releases.join(&j.version);
        remove_tree(&partial)?;
        crash_point("package.unpacking");
        unpack(file, &partial)?;
        crash_point("package.unpacked");
        remove_tree(&dest)?;
        std::fs::rename(&partial, &dest).map_err(io(&dest))?;
        sync_dir(&releases)?;
        self.hook("pre_install", &self.cfg.pre_install, &dest, &j.version)
            .await?;
        j.phase = Phase::Switching;
        self.write_journal(j)?;
        crash_point("package.switching");
        self.point_current_at(&j.version)?;
        crash_point("package.switched");
        j.phase = Phase::Trial;
        j.trial_started = true;
        self.write_journal(j)?;
        crash_point("package.trial");
        if let Err(e) = self
            .hook("post_install", &self.cfg.post_install, &dest, &j.version)
            .await
        {
            self.switch_back(j)?;
            self.clear_journal()?;
            return Err(e);
        }
        Ok(())
    }

    /// Replaces `DIR/current` with a link to `releases/VERSION` in one rename.
    fn point_current_at(&self, version: &str) -> Result<(), InstallError> {
        let dir = &self.cfg.package_dir;
        let tmp = dir.join(".current.tmp");
        remove(&tmp)?;
        std::os::unix::fs::symlink(Path::new("releases").join(version), &tmp).map_err(io(&tmp))?;
        let current = dir.join("current");
        std::fs::rename(&tmp, &current).map_err(io(&current))?;
        sync_dir(dir)
    }

    /// The version `DIR/current` points at.
    pub fn current_package(&self) -> Option<String> {
        let t = std::fs::read_link(self.cfg.package_dir.join("current")).ok()?;
        t.file_name().map(|n| n.to_string_lossy().into_owned())
    }

    async fn install_image(
        &self,
        j: &mut Journal,
        signed: &TargetFile,
        file: &Path,
    ) -> Result<(), InstallError> {
        let boot = self.boot_state()?;
        let inactive = if boot.active == "b" { "a" } else { "b" };
        j.slot = Some(inactive.to_owned());
        j.previous_slot = Some(boot.active.clone());
        self.write_journal(j)?;
        let slot = self.slot_path(inactive).to_path_buf();
        crash_point("image.writing");
        copy_synced(file, &slot)?;
        crash_point("image.written");
        // Read back what the slot holds: the bytes that will boot must be the signed ones.
        let (s, signed2, name) = (slot.clone(), signed.clone(), j.target.clone());
        tokio::task::spawn_blocking(move || {
            rampart_update::client::verify_target_file(&name, &signed2, &s)
        })
        .await
        .map_err(|e| InstallError::SlotVerify {
            slot: inactive.into(),
            detail: e.to_string(),
        })?
        .map_err(|e| InstallError::SlotVerify {
            slot: inactive.into(),
            detail: e.to_string(),
        })?;
        j.phase = Phase::Switching;
        self.write_journal(j)?;
        crash_point("image.switching");
        write_json(
            &self.cfg.boot_state,
            &BootState {
                active: inactive.into(),
                trial: true,
                fallback: Some(boot.active.clone()),
            },
        )?;
        crash_point("image.switched");
        j.phase = Phase::Trial;
        j.trial_started = self.cfg.reboot_command.is_empty();
        self.write_journal(j)?;
        crash_point("image.trial");
        if !self.cfg.reboot_command.is_empty() {
            self.hook("reboot", &self.cfg.reboot_command, &slot, &j.version)
                .await?;
        }
        Ok(())
    }

    /// Returns to what `j` replaced.
    fn switch_back(&self, j: &Journal) -> Result<(), InstallError> {
        match j.kind {
            ArtifactKind::Package => {
                let prev = self.cfg.package_dir.join("releases").join(&j.previous);
                if prev.is_dir() {
                    self.point_current_at(&j.previous)?;
                } else if self.current_package().as_deref() == Some(j.version.as_str()) {
                    // The factory version was not installed as a package: nothing to link
                    // back to, so remove the link rather than leave the trial version.
                    remove(&self.cfg.package_dir.join("current"))?;
                }
            }
            ArtifactKind::Image => {
                let back = j
                    .previous_slot
                    .clone()
                    .unwrap_or_else(|| self.boot_state().map(|b| b.active).unwrap_or_default());
                write_json(
                    &self.cfg.boot_state,
                    &BootState {
                        active: back,
                        trial: false,
                        fallback: None,
                    },
                )?;
            }
        }
        Ok(())
    }

    /// Ends a trial: commit (the new version stays) or roll back.
    pub fn finish_trial(&self, j: &Journal, healthy: bool) -> Result<(), InstallError> {
        crash_point("trial.finishing");
        if healthy {
            if j.kind == ArtifactKind::Image {
                let b = self.boot_state()?;
                write_json(
                    &self.cfg.boot_state,
                    &BootState {
                        active: b.active,
                        trial: false,
                        fallback: None,
                    },
                )?;
            }
            write_json(
                &self.installed_path(),
                &Installed {
                    version: j.version.clone(),
                    previous: Some(j.previous.clone()),
                    kind: Some(j.kind),
                    target: Some(j.target.clone()),
                    rollout: j.rollout.clone(),
                    previous_slot: j.previous_slot.clone(),
                },
            )?;
        } else {
            self.switch_back(j)?;
        }
        self.clear_journal()
    }

    /// Carries out a rollout's rollback instruction: if the committed version came from
    /// `rollout`, returns to the version before it (the previous package directory, or the
    /// other slot, which still holds the previous image). The switch comes first and the
    /// record of what is installed second; a crash in between is repaired by the same
    /// instruction, which arrives again (retained) and finds the same record.
    pub async fn roll_back_committed(
        &self,
        rollout: &str,
        shipped: &str,
    ) -> Result<Undo, InstallError> {
        let inst = self.installed(shipped)?;
        let (Some(kind), Some(previous)) = (inst.kind, inst.previous.clone()) else {
            return Ok(Undo::NotInstalled {
                version: inst.version,
            });
        };
        if inst.rollout.as_deref() != Some(rollout) {
            return Ok(Undo::NotInstalled {
                version: inst.version,
            });
        }
        let j = Journal {
            phase: Phase::Trial,
            kind,
            target: inst.target.clone().unwrap_or_default(),
            version: inst.version.clone(),
            previous: previous.clone(),
            slot: None,
            previous_slot: inst.previous_slot.clone(),
            trial_started: true,
            rollout: inst.rollout.clone(),
        };
        self.switch_back(&j)?;
        crash_point("rollback.switched");
        write_json(
            &self.installed_path(),
            &Installed {
                version: previous.clone(),
                previous: None,
                kind: Some(kind),
                target: None,
                rollout: None,
                previous_slot: None,
            },
        )?;
        if kind == ArtifactKind::Image && !self.cfg.reboot_command.is_empty() {
            let slot = self.boot_state()?.active;
            self.hook(
                "reboot",
                &self.cfg.reboot_command,
                self.slot_path(&slot),
                &previous,
            )
            .await?;
        }
        Ok(Undo::RolledBack {
            from: inst.version,
            to: previous,
        })
    }

    /// Runs the health command (if any) with the timeout.
    pub async fn health_command(&self, version: &str) -> Result<(), String> {
        if self.cfg.health_command.is_empty() {
            return Ok(());
        }
        let dir = self.cfg.package_dir.join("current");
        self.hook("health", &self.cfg.health_command, &dir, version)
            .await
            .map_err(|e| e.to_string())
    }

    async fn hook(
        &self,
        hook: &'static str,
        command: &str,
        dir: &Path,
        version: &str,
    ) -> Result<(), InstallError> {
        if command.is_empty() {
            return Ok(());
        }
        let fail = |detail: String| InstallError::Hook {
            hook,
            command: command.to_owned(),
            detail,
        };
        let child = tokio::process::Command::new("sh")
            .arg("-c")
            .arg(command)
            .env("RAMPART_UPDATE_DIR", dir)
            .env("RAMPART_UPDATE_VERSION", version)
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true)
            .output();
        match tokio::time::timeout(self.cfg.health_timeout, child).await {
            Err(_) => Err(fail(format!(
                "no answer within {:?}",
                self.cfg.health_timeout
            ))),
            Ok(Err(e)) => Err(fail(e.to_string())),
            Ok(Ok(out)) if out.status.success() => Ok(()),
            Ok(Ok(out)) => Err(fail(format!(
                "{}: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ))),
        }
    }
}

/// Unpacks a tar archive into `dest` (created), refusing entries that would land outside it,
/// and fsyncs every file before returning.
fn unpack(archive: &Path, dest: &Path) -> Result<(), InstallError> {
    std::fs::create_dir_all(dest).map_err(io(dest))?;
    let f = std::fs::File::open(archive).map_err(io(archive))?;
    let mut a = tar::Archive::new(f);
    a.set_preserve_permissions(true);
    a.set_overwrite(true);
    let entries = a
        .entries()
        .map_err(|e| InstallError::Archive(e.to_string()))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| InstallError::Archive(e.to_string()))?;
        let path = entry
            .path()
            .map_err(|e| InstallError::Archive(e.to_string()))?
            .into_owned();
        let kind = entry.header().entry_type();
        if !(kind.is_file() || kind.is_dir()) {
            return Err(InstallError::Archive(format!(
                "{}: only files and directories are allowed in a package (no links or devices)",
                path.display()
            )));
        }
        if !entry
            .unpack_in(dest)
            .map_err(|e| InstallError::Archive(format!("{}: {e}", path.display())))?
        {
            return Err(InstallError::Archive(format!(
                "{}: the path leaves the package directory",
                path.display()
            )));
        }
    }
    sync_tree(dest)
}

fn sync_tree(dir: &Path) -> Result<(), InstallError> {
    for e in std::fs::read_dir(dir).map_err(io(dir))?.flatten() {
        let p = e.path();
        if p.is_dir() {
            sync_tree(&p)?;
        } else {
            std::fs::File::open(&p)
                .and_then(|f| f.sync_all())
                .map_err(io(&p))?;
        }
    }
    sync_dir(dir)
}

fn copy_synced(from: &Path, to: &Path) -> Result<(), InstallError> {
    if let Some(d) = to.parent() {
        std::fs::create_dir_all(d).map_err(io(d))?;
    }
    let mut src = std::fs::File::open(from).map_err(io(from))?;
    let mut dst = std::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .open(to)
        .map_err(io(to))?;
    std::io::copy(&mut src, &mut dst).map_err(io(to))?;
    dst.flush().map_err(io(to))?;
    dst.sync_all().map_err(io(to))
}

fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<Option<T>, InstallError> {
    match std::fs::read(path) {
        Ok(b) => serde_json::from_slice(&b)
            .map(Some)
            .map_err(|e| InstallError::Journal {
                path: path.to_path_buf(),
                detail: e.to_string(),
            }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io(path)(e)),
    }
}

fn write_json<T: Serialize>(path: &Path, v: &T) -> Result<(), InstallError> {
    let bytes = serde_json::to_vec_pretty(v).map_err(|e| InstallError::Journal {
        path: path.to_path_buf(),
        detail: e.to_string(),
    })?;
    atomic_write(path, &bytes).map_err(|e| InstallError::Journal {
        path: path.to_path_buf(),
        detail: e.to_string(),
    })
}

fn remove(path: &Path) -> Result<(), InstallError> {
    super::remove_file(path).map_err(io(path))
}

fn remove_tree(path: &Path) -> Result<(), InstallError> {
    match std::fs::remove_dir_all(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io(path)(e)),
    }
}

fn sync_dir(dir: &Path) -> Result<(), InstallError> {
    super::sync_dir(dir).map_err(io(dir))
}
