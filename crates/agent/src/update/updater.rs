//! The agent's update task: finishes an interrupted install at start, then checks the hub's
//! repository every `updates.check_interval` and installs what the policy allows.
//!
//! Policy (CRA Annex I Part I (2)(c)): security updates — targets signed by the delegated
//! `security` role — install automatically by default; the device owner may opt out
//! (`security_auto_install = false`) or postpone them by at most seven days
//! (`security_postpone`). Feature updates wait for a rollout unless
//! `feature_auto_install = true`. Every update found is reported once (`update_available`),
//! and every stage of an install is reported as an `update` event through the outbox, so
//! reports made offline reach the hub later.
//!
//! Rollouts: the hub's instructions arrive on `devices/{id}/update/command` (retained, so
//! they arrive again after every reconnect). Each is carried out once — its id is recorded
//! in `commands.json` as soon as an install reaches the point where the journal takes over
//! (or it ends) — and reported with the rollout's id. An install instruction is checked like
//! any update (signatures, hardware, no downgrade); a rollback returns to the version before
//! the rollout's and keeps the rolled-back target from coming back by itself.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use rampart_bms::{Event, UpdateStage};
use rampart_update::client::{Limits, TrustedState};
use rampart_update::rollout::{Action, Command};
use rampart_update::selection::{self, Candidate, ReleaseInfo};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender};
use tokio_util::sync::CancellationToken;

use super::download::Downloads;
use super::http::{HttpClient, Url};
use super::install::{Artifact, InstallConfig, Installed, Installer, Journal, Recovery, Undo};
use super::store::{MetadataStore, TrustClock};
use super::tuf::{self, Remote};
use crate::config::{AgentConfig, UpdatesSection};
use crate::credentials::Credentials;
use crate::runner::AgentStats;

/// The update task.
pub struct Updater {
    cfg: UpdatesSection,
    state: PathBuf,
    installer: Installer,
    store: MetadataStore,
    downloads: Downloads,
    creds: Arc<Credentials>,
    ca: PathBuf,
    token_path: PathBuf,
    events: UnboundedSender<Event>,
    stats: Arc<AgentStats>,
    root: PathBuf,
    last_error: Option<String>,
    commands: UnboundedReceiver<Command>,
}

/// How many instruction ids `commands.json` remembers (instructions are retained one per
/// device, so only the latest few can ever arrive again).
const REMEMBERED_COMMANDS: usize = 64;

/// What the updater remembers of the hub's instructions.
#[derive(Debug, Default, Serialize, Deserialize)]
struct CommandLog {
    /// Instructions carried out (or being carried out by the install journal).
    done: Vec<String>,
    /// Rollout id → its target, from the install instruction.
    #[serde(default)]
    targets: BTreeMap<String, String>,
    /// Targets rolled back on instruction: the periodic check does not install them again
    /// (a new install instruction does).
    #[serde(default)]
    blocked: Vec<String>,
}

impl std::fmt::Debug for Updater {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Updater")
            .field("state", &self.state)
            .finish_non_exhaustive()
    }
}

/// The installer settings of an agent configuration.
pub fn install_config(cfg: &AgentConfig, u: &UpdatesSection) -> InstallConfig {
    InstallConfig {
        state: cfg.state_dir().join("update"),
        package_dir: cfg.resolve(&u.package_dir),
        pre_install: u.pre_install.clone(),
        post_install: u.post_install.clone(),
        slot_a: cfg.resolve(&u.slot_a),
        slot_b: cfg.resolve(&u.slot_b),
        boot_state: cfg.resolve(&u.boot_state),
        reboot_command: u.reboot_command.clone(),
        health_command: u.health_command.clone(),
        health_timeout: u.health_timeout,
    }
}

/// The version the updater committed last, if it ever committed one (it supersedes
/// `[release] version` in what the agent reports).
pub fn committed_version(cfg: &AgentConfig) -> Option<String> {
    let u = cfg.updates.as_ref()?;
    Installer::new(install_config(cfg, u))
        .installed(&u.installed_version)
        .ok()
        .map(|i| i.version)
}

fn event(
    stage: UpdateStage,
    c: &str,
    version: &str,
    rollout: Option<&str>,
    detail: Option<String>,
) -> Event {
    Event::Update {
        stage,
        target: c.to_owned(),
        version: version.to_owned(),
        rollout: rollout.map(str::to_owned),
        detail,
    }
}

impl Updater {
    pub fn new(
        cfg: &AgentConfig,
        u: &UpdatesSection,
        creds: Arc<Credentials>,
        events: UnboundedSender<Event>,
        commands: UnboundedReceiver<Command>,
        stats: Arc<AgentStats>,
    ) -> Updater {
        let state = cfg.state_dir().join("update");
        Updater {
            cfg: u.clone(),
            installer: Installer::new(install_config(cfg, u)),
            store: MetadataStore::new(&state.join("tuf")),
            downloads: Downloads::new(&state.join("downloads")),
            state,
            creds,
            ca: cfg.resolve(&cfg.hub.ca),
            token_path: cfg.state_dir().join("token"),
            events,
            stats,
            root: cfg.resolve(&u.root),
            last_error: None,
            commands,
        }
    }

    fn emit(&self, e: Event) {
        // The producer outlives the updater; a closed channel means the agent is stopping.
        let _ = self.events.send(e);
    }

    /// Runs until `stop`.
    pub async fn run(mut self, stop: CancellationToken) {
        if let Err(e) = std::fs::create_dir_all(&self.state) {
            tracing::error!(dir = %self.state.display(), error = %e, "updates disabled: cannot create the update state directory");
            return;
        }
        // The rollout of an interrupted install, for its report.
        let rollout = self
            .installer
            .journal()
            .ok()
            .flatten()
            .and_then(|j| j.rollout);
        let rollout = rollout.as_deref();
        match self.installer.recover() {
            Ok(Recovery::Nothing) => {}
            Ok(Recovery::Discarded { version, target }) => {
                tracing::warn!(%target, %version, "an install was interrupted before its switch completed; the previous version stays active");
                self.emit(event(
                    UpdateStage::Failed,
                    &target,
                    &version,
                    rollout,
                    Some("interrupted before the switch; the previous version stays active".into()),
                ));
            }
            Ok(Recovery::RolledBack { from, to, target }) => {
                tracing::warn!(%target, %from, %to, "the device restarted before the new version was committed: rolled back");
                self.emit(event(
                    UpdateStage::RolledBack,
                    &target,
                    &from,
                    rollout,
                    Some(format!(
                        "restarted before {from} was committed; back to {to}"
                    )),
                ));
            }
            Ok(Recovery::TrialDue(j)) => self.trial(&j, &stop).await,
            Err(e) => {
                tracing::error!(error = %e, "cannot read the install journal; updates paused until it is repaired");
                return;
            }
        }
        let mut tick = tokio::time::interval(self.cfg.check_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                Some(c) = self.commands.recv() => {
                    self.command(c, &stop).await;
                    continue;
                }
                _ = stop.cancelled() => return,
            }
            // Checks need the hub: wait for the connection and a session token.
            if !self.stats.connected.load(Ordering::Relaxed) || !self.token_path.exists() {
                continue;
            }
            if let Err(e) = self.check(&stop).await {
                let text = e.to_string();
                if self.last_error.as_deref() != Some(text.as_str()) {
                    tracing::error!(error = %text, "update check failed; the installed version keeps running");
                    self.emit(event(
                        UpdateStage::Failed,
                        "metadata",
                        "-",
                        None,
                        Some(text.clone()),
                    ));
                    self.last_error = Some(text);
                }
            } else {
                self.last_error = None;
            }
        }
    }

    fn remote(&self) -> Result<Remote, String> {
        let pair = &self.creds.current;
        let key = pair
            .key_pem(self.creds.vault())
            .map_err(|e| format!("device key: {e}"))?;
        let tls = crate::tls::client_config(&self.ca, &pair.cert, &key, &pair.key)
            .map_err(|e| e.to_string())?;
        let token = self
            .creds
            .vault()
            .read_secret(&self.token_path)
            .map(|t| String::from_utf8_lossy(&t).trim().to_owned())
            .map_err(|e| format!("session token: {e}"))?;
        let base = Url::parse(&self.cfg.url).map_err(|e| e.to_string())?;
        Ok(Remote {
            client: HttpClient::new(Some(tls), Some(token)),
            metadata_url: base.join("metadata"),
            targets_url: base.join("targets"),
        })
    }

    /// Refreshes the trusted metadata from the hub.
    async fn refreshed(&mut self) -> Result<(TrustedState, Remote), String> {
        if !self.store.is_initialised() {
            let root = std::fs::read(&self.root).map_err(|e| {
                format!(
                    "{}: {e} (the device's initial update root)",
                    self.root.display()
                )
            })?;
            self.store
                .init(&root, &Limits::default())
                .map_err(|e| format!("{}: {e}", self.root.display()))?;
        }
        let remote = self.remote()?;
        let mut clock =
            TrustClock::load(&self.state.join("clock.json")).map_err(|e| e.to_string())?;
        if clock.system_is_behind() {
            tracing::warn!(
                "the system clock is behind the newest time this device has trusted; update metadata is checked against the later time"
            );
        }
        let trusted = tuf::refresh(&self.store, &remote, clock.now(), Limits::default())
            .await
            .map_err(|e| e.to_string())?;
        clock.persist().map_err(|e| e.to_string())?;
        Ok((trusted, remote))
    }

    async fn check(&mut self, stop: &CancellationToken) -> Result<(), String> {
        let (trusted, remote) = self.refreshed().await?;
        let installed = self
            .installer
            .installed(&self.cfg.installed_version)
            .map_err(|e| e.to_string())?;
        // The newest update overall, and the newest security fix: a feature release that
        // waits for a rollout must not hold back a security fix that installs by default.
        let blocked = CommandLog::load(&self.state).blocked;
        let mut all = trusted.all_targets();
        all.retain(|(name, _, _)| !blocked.contains(name));
        let security_only: Vec<_> = all
            .iter()
            .filter(|(_, _, role)| role == rampart_update::release::SECURITY_ROLE)
            .cloned()
            .collect();
        let (hw, ch, v) = (&self.cfg.hardware, &self.cfg.channel, &installed.version);
        let mut candidates: Vec<Candidate> = Vec::new();
        for c in [
            selection::newest(&all, hw, ch, v),
            selection::newest(&security_only, hw, ch, v),
        ]
        .into_iter()
        .flatten()
        {
            if !candidates.iter().any(|x| x.name == c.name) {
                candidates.push(c);
            }
        }
        for c in candidates {
            let (first_seen, new) = self.first_seen(&c)?;
            let install_at = if c.security && self.cfg.security_auto_install {
                let postpone = self.cfg.security_postpone.unwrap_or_default();
                Some(first_seen + time::Duration::try_from(postpone).unwrap_or_default())
            } else if self.cfg.feature_auto_install {
                Some(first_seen)
            } else {
                None
            };
            if new {
                tracing::info!(target = %c.name, version = %c.info.version, security = c.security, install_at = ?install_at, "update available");
                self.emit(Event::UpdateAvailable {
                    target: c.name.clone(),
                    version: c.info.version.clone(),
                    security: c.security,
                    install_at,
                });
            }
            if install_at.is_some_and(|t| t <= OffsetDateTime::now_utc()) {
                self.install(&trusted, &remote, &c, &installed, None, stop)
                    .await;
                break;
            }
        }
        Ok(())
    }

    /// When this version was first seen (persisted, so a postponement is bounded across
    /// restarts).
    fn first_seen(&self, c: &Candidate) -> Result<(OffsetDateTime, bool), String> {
        let path = self.state.join("available.json");
        let mut seen: BTreeMap<String, String> = std::fs::read(&path)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        if let Some(t) = seen
            .get(&c.name)
            .and_then(|t| OffsetDateTime::parse(t, &Rfc3339).ok())
        {
            return Ok((t, false));
        }
        let now = OffsetDateTime::now_utc();
        seen.insert(c.name.clone(), now.format(&Rfc3339).unwrap_or_default());
        let bytes = serde_json::to_vec(&seen).map_err(|e| e.to_string())?;
        rampart_update::repository::atomic_write(&path, &bytes).map_err(|e| e.to_string())?;
        Ok((now, true))
    }

    /// Installs `c`; `command` is the instruction (id, rollout) that asked for it, if any.
    async fn install(
        &mut self,
        trusted: &TrustedState,
        remote: &Remote,
        c: &Candidate,
        installed: &Installed,
        command: Option<&Command>,
        stop: &CancellationToken,
    ) {
        let v = &c.info.version;
        let rollout = command.map(|c| c.rollout.as_str());
        if let Err(e) =
            selection::check_applicable(&c.name, &c.info, &self.cfg.hardware, &installed.version)
        {
            return self.failed(&c.name, v, command, e.to_string());
        }
        tracing::info!(target = %c.name, version = %v, rollout = ?rollout, "downloading update");
        self.emit(event(UpdateStage::Downloading, &c.name, v, rollout, None));
        let (file, signed) = match tuf::download(trusted, remote, &self.downloads, &c.name).await {
            Ok(x) => x,
            Err(e) => return self.failed(&c.name, v, command, e.to_string()),
        };
        // From here the install journal carries the work across restarts: the instruction
        // must not start it again.
        self.command_done(command);
        self.emit(event(UpdateStage::Installing, &c.name, v, rollout, None));
        let j = match self
            .installer
            .install(
                Artifact {
                    kind: c.info.kind,
                    target: &c.name,
                    version: v,
                    signed: &signed,
                    file: &file,
                },
                installed,
                rollout.map(str::to_owned),
            )
            .await
        {
            Ok(j) => j,
            Err(e) => {
                tracing::error!(target = %c.name, error = %e, "install failed; the installed version keeps running");
                self.emit(event(
                    UpdateStage::Failed,
                    &c.name,
                    v,
                    rollout,
                    Some(e.to_string()),
                ));
                return;
            }
        };
        let _ = self.downloads.clean(&[]);
        if j.trial_started {
            self.trial(&j, stop).await;
        } else {
            tracing::info!(target = %c.name, "image switched; the trial starts after the reboot");
        }
    }

    /// The health check after a switch: the command passes and the agent is connected to
    /// the hub within `health_timeout`. Then commit, or roll back.
    async fn trial(&self, j: &Journal, stop: &CancellationToken) {
        let rollout = j.rollout.as_deref();
        self.emit(event(
            UpdateStage::Verifying,
            &j.target,
            &j.version,
            rollout,
            None,
        ));
        let deadline = tokio::time::Instant::now() + self.cfg.health_timeout;
        let mut failure = self.installer.health_command(&j.version).await.err();
        if failure.is_none() {
            loop {
                if self.stats.connected.load(Ordering::Relaxed) {
                    break;
                }
                if tokio::time::Instant::now() >= deadline {
                    failure = Some(format!(
                        "not connected to the hub within {:?}",
                        self.cfg.health_timeout
                    ));
                    break;
                }
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(200)) => {}
                    // Stopping mid-trial leaves the journal: the next start rolls back.
                    _ = stop.cancelled() => return,
                }
            }
        }
        let healthy = failure.is_none();
        if let Err(e) = self.installer.finish_trial(j, healthy) {
            tracing::error!(error = %e, "could not finish the trial; the next start rolls back");
            return;
        }
        match failure {
            None => {
                tracing::info!(target = %j.target, version = %j.version, "update committed");
                self.emit(event(
                    UpdateStage::Succeeded,
                    &j.target,
                    &j.version,
                    rollout,
                    None,
                ));
            }
            Some(why) => {
                tracing::warn!(target = %j.target, version = %j.version, reason = %why, "health check failed: rolled back");
                self.emit(event(
                    UpdateStage::RolledBack,
                    &j.target,
                    &j.version,
                    rollout,
                    Some(format!(
                        "health check failed: {why}; back to {}",
                        j.previous
                    )),
                ));
            }
        }
    }

    /// An update refused or failed before anything was installed: logged, reported (with
    /// the instruction's rollout), and the instruction, if any, is done.
    fn failed(&self, target: &str, version: &str, command: Option<&Command>, why: String) {
        let rollout = command.map(|c| c.rollout.as_str());
        tracing::error!(%target, rollout = ?rollout, error = %why, "update refused or failed; the installed version keeps running");
        self.emit(event(
            UpdateStage::Failed,
            target,
            version,
            rollout,
            Some(why),
        ));
        self.command_done(command);
    }

    fn command_done(&self, command: Option<&Command>) {
        let Some(c) = command else { return };
        let mut log = CommandLog::load(&self.state);
        log.done.retain(|d| d != &c.id);
        log.done.push(c.id.clone());
        let extra = log.done.len().saturating_sub(REMEMBERED_COMMANDS);
        log.done.drain(..extra);
        log.save(&self.state);
    }

    /// Carries out an instruction from the hub, once.
    async fn command(&mut self, c: Command, stop: &CancellationToken) {
        if CommandLog::load(&self.state).done.contains(&c.id) {
            tracing::debug!(id = %c.id, "update instruction already carried out");
            return;
        }
        tracing::info!(id = %c.id, rollout = %c.rollout, action = ?c.action, "update instruction from the hub");
        match c.action {
            Action::Install => self.commanded_install(&c, stop).await,
            Action::Rollback => self.commanded_rollback(&c).await,
        }
    }

    async fn commanded_install(&mut self, c: &Command, stop: &CancellationToken) {
        let target = c.target.clone().unwrap_or_default();
        let rollout = Some(c.rollout.as_str());
        let fail =
            |me: &Self, version: &str, why: String| me.failed(&target, version, Some(c), why);
        // The instruction can arrive right after connecting, before the session token the
        // repository needs: wait for it a little.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while !self.token_path.exists() && tokio::time::Instant::now() < deadline {
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(200)) => {}
                _ = stop.cancelled() => return,
            }
        }
        let (trusted, remote) = match self.refreshed().await {
            Ok(x) => x,
            Err(e) => return fail(self, "-", format!("update metadata: {e}")),
        };
        let (file, role) = match trusted.find_target(&target) {
            Ok(x) => x,
            Err(e) => return fail(self, "-", e.to_string()),
        };
        let info = match ReleaseInfo::of(&target, &file) {
            Ok(i) => i,
            Err(e) => return fail(self, "-", e.to_string()),
        };
        let installed = match self.installer.installed(&self.cfg.installed_version) {
            Ok(i) => i,
            Err(e) => return fail(self, &info.version, e.to_string()),
        };
        let mut log = CommandLog::load(&self.state);
        log.targets.insert(c.rollout.clone(), target.clone());
        log.blocked.retain(|t| t != &target);
        log.save(&self.state);
        if installed.version == info.version {
            self.emit(event(
                UpdateStage::Succeeded,
                &target,
                &info.version,
                rollout,
                Some("already installed".into()),
            ));
            self.command_done(Some(c));
            return;
        }
        let candidate = Candidate {
            name: target.clone(),
            file,
            security: role == rampart_update::release::SECURITY_ROLE,
            info,
        };
        self.install(&trusted, &remote, &candidate, &installed, Some(c), stop)
            .await;
    }

    async fn commanded_rollback(&mut self, c: &Command) {
        let rollout = Some(c.rollout.as_str());
        let mut log = CommandLog::load(&self.state);
        let target = log
            .targets
            .get(&c.rollout)
            .cloned()
            .unwrap_or_else(|| "-".into());
        match self
            .installer
            .roll_back_committed(&c.rollout, &self.cfg.installed_version)
            .await
        {
            Ok(Undo::RolledBack { from, to }) => {
                tracing::warn!(rollout = %c.rollout, %from, %to, "rolled back on instruction of the hub");
                self.emit(event(
                    UpdateStage::RolledBack,
                    &target,
                    &from,
                    rollout,
                    Some(format!("rollout {} aborted: back to {to}", c.rollout)),
                ));
            }
            Ok(Undo::NotInstalled { version }) => {
                tracing::info!(rollout = %c.rollout, %version, "rollback instruction: nothing of this rollout is installed");
                self.emit(event(
                    UpdateStage::RolledBack,
                    &target,
                    &version,
                    rollout,
                    Some(format!(
                        "rollout {} aborted: nothing of it was installed; stays on {version}",
                        c.rollout
                    )),
                ));
            }
            Err(e) => {
                tracing::error!(rollout = %c.rollout, error = %e, "rollback instruction failed");
                self.emit(event(
                    UpdateStage::Failed,
                    &target,
                    "-",
                    rollout,
                    Some(format!("rollback: {e}")),
                ));
            }
        }
        if target != "-" && !log.blocked.contains(&target) {
            log.blocked.push(target);
            log.save(&self.state);
        }
        self.command_done(Some(c));
    }
}

impl CommandLog {
    fn path(state: &std::path::Path) -> PathBuf {
        state.join("commands.json")
    }

    /// An unreadable log is treated as empty (with a warning): instructions are idempotent
    /// at the installer (an installed version reports "already installed"), so repeating
    /// one is safe, and refusing all would stop updates.
    fn load(state: &std::path::Path) -> CommandLog {
        let path = Self::path(state);
        match std::fs::read(&path) {
            Ok(b) => serde_json::from_slice(&b).unwrap_or_else(|e| {
                tracing::warn!(path = %path.display(), error = %e, "unreadable instruction log; starting a new one");
                CommandLog::default()
            }),
            Err(_) => CommandLog::default(),
        }
    }

    fn save(&self, state: &std::path::Path) {
        let path = Self::path(state);
        let written = serde_json::to_vec(self)
            .map_err(|e| e.to_string())
            .and_then(|b| {
                rampart_update::repository::atomic_write(&path, &b).map_err(|e| e.to_string())
            });
        if let Err(e) = written {
            tracing::error!(path = %path.display(), error = %e, "cannot record the update instruction log");
        }
    }
}
