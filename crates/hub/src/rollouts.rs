//! Staged rollouts on the hub: the operator's operations (start, approve, pause, resume,
//! abort, status) and the engine in the running hub that sends instructions to devices and
//! moves a rollout along as their reports arrive.
//!
//! The rules (waves, thresholds, states) are `rampart_update::rollout`; this module applies
//! them to the store and the broker. The CLI changes the store and tells the running hub
//! (`Request::RolloutChanged`); the engine re-reads the rollout and does what it now needs:
//! every step is idempotent (the store records which instruction each device was sent), so
//! a hub restarted mid-rollout carries on where it stopped.
//!
//! Instructions are retained MQTT messages on `devices/{id}/update/command` (QoS 1): a
//! device that is offline gets the latest one when it connects. Devices report over their
//! outbox as `update` events carrying the rollout id; the hub applies each report once, in
//! the device's event order.

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use rampart_broker::Broker;
use rampart_mqtt::QoS;
use rampart_store::{
    AuditEntry, DeviceStatus, IdentityKind, RolloutDeviceRow, RolloutRow, Store, StoreError,
};
use rampart_update::release::ReleaseDir;
use rampart_update::rollout::{
    self, COMMAND_SUFFIX, Command, DeviceState, Plan, RolloutState, Tally, Verdict,
};
use rampart_update::selection::ReleaseInfo;
use serde::Serialize;
use time::OffsetDateTime;

use crate::config::HubConfig;
use crate::control::Request;
use crate::datadir::DataDir;
use crate::error::HubError;
use crate::ops::notify;

/// Who a rollout targets.
#[derive(Debug, Clone)]
pub enum Audience {
    /// Every active device of the group, ordered by id.
    Group(String),
    /// These devices, in this order (the first ones form the first wave).
    Devices(Vec<String>),
}

/// What `rampart rollout start` asks for.
#[derive(Debug, Clone)]
pub struct NewRollout {
    pub id: String,
    /// A published target, e.g. `releases/1.2.0/app.tar`.
    pub target: String,
    pub audience: Audience,
    pub plan: Plan,
}

/// A rollout as `rampart rollout status` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct RolloutStatus {
    pub id: String,
    pub target: String,
    pub version: String,
    pub state: String,
    /// The wave in progress, counted from 1 for people.
    pub wave: usize,
    pub waves: usize,
    pub reason: Option<String>,
    pub plan: Plan,
    /// Devices by state, over the whole rollout.
    pub counts: BTreeMap<String, usize>,
    pub per_wave: Vec<WaveStatus>,
    pub devices: Vec<RolloutDeviceRow>,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub updated_at: OffsetDateTime,
}

#[derive(Debug, Clone, Serialize)]
pub struct WaveStatus {
    pub wave: usize,
    pub size: usize,
    pub pending: usize,
    pub in_progress: usize,
    pub succeeded: usize,
    pub failed: usize,
}

fn rollout_error(msg: impl Into<String>) -> HubError {
    HubError::Rollout(msg.into())
}

fn state_of(r: &RolloutRow) -> Result<RolloutState, HubError> {
    r.state
        .parse()
        .map_err(|e: String| rollout_error(format!("rollout {}: stored {e}", r.id)))
}

fn device_state(d: &RolloutDeviceRow) -> DeviceState {
    // A row the hub wrote itself; an unreadable one counts as still in progress, which
    // holds the rollout rather than letting it advance on a misread.
    d.state.parse().unwrap_or(DeviceState::Queued)
}

fn audit_entry(actor: &str, action: &str, id: &str, detail: String) -> AuditEntry {
    AuditEntry {
        at: OffsetDateTime::now_utc(),
        actor: actor.into(),
        action: action.into(),
        subject: id.into(),
        detail,
    }
}

async fn load(store: &dyn Store, id: &str) -> Result<RolloutRow, HubError> {
    store
        .rollout(id)
        .await?
        .ok_or_else(|| HubError::NotFound(format!("rollout {id:?} not found")))
}

/// Creates a rollout and tells the running hub, which sends the first wave its
/// instructions. The target must be published and verify like it will on a device.
pub async fn start(
    dir: &DataDir,
    cfg: &HubConfig,
    store: &dyn Store,
    new: NewRollout,
) -> Result<RolloutStatus, HubError> {
    if !rollout::valid_id(&new.id) {
        return Err(rollout_error(format!(
            "rollout id {:?}: use 1-64 letters, digits, '.', '_' or '-'",
            new.id
        )));
    }
    new.plan.validate().map_err(rollout_error)?;
    let repo = ReleaseDir::new(&dir.resolve(&cfg.updates.repository));
    let (file, role) = repo
        .published_target(&new.target, OffsetDateTime::now_utc())
        .map_err(|e| {
            rollout_error(format!(
                "target {:?} is not a published, verifiable release: {e}",
                new.target
            ))
        })?;
    let info = ReleaseInfo::of(&new.target, &file).map_err(|e| rollout_error(e.to_string()))?;
    let devices = audience(store, &new.audience).await?;
    let now = OffsetDateTime::now_utc();
    let waves = new.plan.waves.assign(devices.len());
    let rows: Vec<RolloutDeviceRow> = devices
        .iter()
        .zip(waves)
        .map(|(id, wave)| RolloutDeviceRow {
            device_id: id.clone(),
            wave: i64::from(wave),
            state: DeviceState::Pending.as_str().into(),
            command: None,
            detail: None,
            last_seq: -1,
            updated_at: now,
        })
        .collect();
    let plan = serde_json::to_string(&new.plan).map_err(|e| rollout_error(e.to_string()))?;
    let row = RolloutRow {
        id: new.id.clone(),
        target: new.target.clone(),
        version: info.version.clone(),
        plan,
        state: RolloutState::Running.as_str().into(),
        wave: 0,
        accepted_failures: 0,
        reason: None,
        created_at: now,
        updated_at: now,
    };
    store.create_rollout(&row, &rows).await?;
    store
        .audit(&audit_entry(
            "cli",
            "rollout.start",
            &new.id,
            format!(
                "{} ({} signed by {role}) to {} devices, waves {}",
                new.target,
                info.version,
                rows.len(),
                new.plan.waves
            ),
        ))
        .await?;
    changed(dir, &new.id).await?;
    status(store, &new.id).await
}

/// The devices of an audience, checked: registered, devices (not services or claims), no
/// duplicates, at most `rollout::MAX_DEVICES`.
async fn audience(store: &dyn Store, a: &Audience) -> Result<Vec<String>, HubError> {
    let devices = match a {
        Audience::Group(g) => {
            let ids: Vec<String> = store
                .devices()
                .await?
                .into_iter()
                .filter(|d| d.group.as_deref() == Some(g) && d.status == DeviceStatus::Active)
                .map(|d| d.id)
                .collect();
            if ids.is_empty() {
                return Err(rollout_error(format!("group {g:?} has no active devices")));
            }
            ids
        }
        Audience::Devices(ids) => {
            let mut seen = HashSet::new();
            for id in ids {
                if !seen.insert(id) {
                    return Err(rollout_error(format!("device {id:?} is listed twice")));
                }
                match store.device(id).await? {
                    Some(d) if d.kind == IdentityKind::Device => {}
                    Some(d) => {
                        return Err(rollout_error(format!(
                            "{id:?} is a {}, not a device",
                            d.kind.as_str()
                        )));
                    }
                    None => return Err(HubError::DeviceNotFound(id.clone())),
                }
            }
            if ids.is_empty() {
                return Err(rollout_error("no devices given"));
            }
            ids.clone()
        }
    };
    if devices.len() > rollout::MAX_DEVICES {
        return Err(rollout_error(format!(
            "{} devices; one rollout takes at most {}",
            devices.len(),
            rollout::MAX_DEVICES
        )));
    }
    Ok(devices)
}

async fn changed(dir: &DataDir, id: &str) -> Result<(), HubError> {
    if notify(dir, Request::RolloutChanged { id: id.to_owned() })
        .await?
        .is_none()
    {
        tracing::warn!(rollout = %id, "no hub is running on this data directory: devices get their instructions when it starts");
    }
    Ok(())
}

/// An operator's step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Start the next wave (the rollout waits for approval).
    Approve,
    /// Stop sending instructions; devices already told carry on.
    Pause,
    /// Continue a paused rollout, accepting the failures so far in its wave.
    Resume,
    /// Stop for good and tell every device the rollout reached to roll back.
    Abort,
}

impl Step {
    fn name(self) -> &'static str {
        match self {
            Step::Approve => "approve",
            Step::Pause => "pause",
            Step::Resume => "resume",
            Step::Abort => "abort",
        }
    }
}

/// Applies an operator's step and tells the running hub.
pub async fn step(
    dir: &DataDir,
    store: &dyn Store,
    id: &str,
    step: Step,
    reason: Option<String>,
) -> Result<RolloutStatus, HubError> {
    let mut r = load(store, id).await?;
    let state = state_of(&r)?;
    let refuse = |what: &str| {
        Err(rollout_error(format!(
            "rollout {id} is {state}: {what} (see `rampart rollout status {id}`)"
        )))
    };
    match (step, state) {
        (Step::Approve, RolloutState::AwaitingApproval) => {
            r.state = RolloutState::Running.as_str().into();
            r.wave += 1;
            r.accepted_failures = 0;
            r.reason = None;
        }
        (Step::Approve, _) => return refuse("only a rollout awaiting approval can be approved"),
        (Step::Pause, RolloutState::Running | RolloutState::AwaitingApproval) => {
            r.state = RolloutState::Paused.as_str().into();
            r.reason = Some(reason.unwrap_or_else(|| "paused by the operator".into()));
        }
        (Step::Pause, _) => return refuse("only a running rollout can be paused"),
        (Step::Resume, RolloutState::Paused) => {
            let devices = store.rollout_devices(id).await?;
            let failed = devices
                .iter()
                .filter(|d| d.wave == r.wave && device_state(d).is_failure())
                .count();
            r.state = RolloutState::Running.as_str().into();
            r.accepted_failures = i64::try_from(failed).unwrap_or(i64::MAX);
            r.reason = None;
        }
        (Step::Resume, _) => return refuse("only a paused rollout can be resumed"),
        (Step::Abort, RolloutState::Aborted | RolloutState::Completed) => {
            return refuse("it has already ended");
        }
        (Step::Abort, _) => {
            r.state = RolloutState::Aborted.as_str().into();
            r.reason = Some(reason.unwrap_or_else(|| "aborted by the operator".into()));
        }
    }
    store.set_rollout_state(&r).await?;
    store
        .audit(&audit_entry(
            "cli",
            &format!("rollout.{}", step.name()),
            id,
            r.reason.clone().unwrap_or_default(),
        ))
        .await?;
    changed(dir, id).await?;
    status(store, id).await
}

/// Where a rollout and each of its devices are.
pub async fn status(store: &dyn Store, id: &str) -> Result<RolloutStatus, HubError> {
    let r = load(store, id).await?;
    let plan = Plan::parse(&r.plan).map_err(rollout_error)?;
    let devices = store.rollout_devices(id).await?;
    let waves = devices
        .iter()
        .map(|d| usize::try_from(d.wave).unwrap_or(0) + 1)
        .max()
        .unwrap_or(0);
    let mut counts = BTreeMap::new();
    for d in &devices {
        *counts.entry(d.state.clone()).or_insert(0) += 1;
    }
    let per_wave = (0..waves)
        .map(|w| {
            let t = Tally::of(
                devices
                    .iter()
                    .filter(|d| d.wave == w as i64)
                    .map(device_state),
            );
            WaveStatus {
                wave: w + 1,
                size: t.size,
                pending: t.pending,
                in_progress: t.in_progress,
                succeeded: t.succeeded,
                failed: t.failed,
            }
        })
        .collect();
    Ok(RolloutStatus {
        wave: usize::try_from(r.wave).unwrap_or(0) + 1,
        waves,
        id: r.id,
        target: r.target,
        version: r.version,
        state: r.state,
        reason: r.reason,
        plan,
        counts,
        per_wave,
        devices,
        created_at: r.created_at,
        updated_at: r.updated_at,
    })
}

/// All rollouts, newest first.
pub async fn list(store: &dyn Store) -> Result<Vec<RolloutRow>, HubError> {
    Ok(store.rollouts().await?)
}

/// Rollout counters for the metrics endpoint.
#[derive(Debug, Default)]
pub struct RolloutCounters {
    pub install_commands: AtomicU64,
    pub rollback_commands: AtomicU64,
    pub reports_applied: AtomicU64,
    pub automatic_pauses: AtomicU64,
}

/// The engine in the running hub.
pub(crate) struct Engine {
    store: Arc<dyn Store>,
    /// Set once, right after the broker is built (the broker's hooks hold the engine).
    pub broker: OnceLock<Broker>,
    /// One evaluation at a time: two reports arriving together must not both start the
    /// next wave.
    lock: tokio::sync::Mutex<()>,
    pub counters: Arc<RolloutCounters>,
}

impl Engine {
    pub(crate) fn new(store: Arc<dyn Store>) -> Arc<Engine> {
        Arc::new(Engine {
            store,
            broker: OnceLock::new(),
            lock: tokio::sync::Mutex::new(()),
            counters: Arc::default(),
        })
    }

    /// Applies a device's report (already stored as an event); evaluation follows in the
    /// background so the device's PUBACK does not wait for it.
    pub(crate) async fn report(
        self: &Arc<Self>,
        rollout_id: &str,
        device_id: &str,
        seq: i64,
        stage: &str,
        detail: Option<&str>,
    ) -> Result<(), StoreError> {
        let applied = self
            .store
            .rollout_report(rollout_id, device_id, seq, stage, detail)
            .await?;
        if applied {
            self.counters
                .reports_applied
                .fetch_add(1, Ordering::Relaxed);
            tracing::info!(rollout = %rollout_id, device = %device_id, %stage, "rollout report");
            let me = self.clone();
            let id = rollout_id.to_owned();
            tokio::spawn(async move { me.evaluate_logged(&id).await });
        }
        Ok(())
    }

    /// Evaluates every rollout that is not finished (at start, after a restart).
    pub(crate) async fn evaluate_all(&self) {
        match self.store.rollouts().await {
            Ok(all) => {
                for r in all {
                    if matches!(
                        r.state.parse(),
                        Ok(RolloutState::Running | RolloutState::Aborted)
                    ) {
                        self.evaluate_logged(&r.id).await;
                    }
                }
            }
            Err(e) => tracing::error!(error = %e, "cannot read rollouts"),
        }
    }

    pub(crate) async fn evaluate_logged(&self, id: &str) {
        if let Err(e) = self.evaluate(id).await {
            tracing::error!(rollout = %id, error = %e, "rollout evaluation failed; it is retried with the next report or `rampart rollout` step");
        }
    }

    /// Does what the rollout needs now.
    pub(crate) async fn evaluate(&self, id: &str) -> Result<(), HubError> {
        let _one = self.lock.lock().await;
        let mut r = load(&*self.store, id).await?;
        match state_of(&r)? {
            RolloutState::Running => self.advance(&mut r).await,
            RolloutState::Aborted => self.roll_back(&r).await,
            RolloutState::AwaitingApproval | RolloutState::Paused | RolloutState::Completed => {
                Ok(())
            }
        }
    }

    async fn publish(&self, device_id: &str, c: &Command) -> Result<(), HubError> {
        let broker = self
            .broker
            .get()
            .ok_or_else(|| rollout_error("the broker is not running yet"))?;
        let body = serde_json::to_vec(c).map_err(|e| rollout_error(e.to_string()))?;
        let topic = format!("devices/{device_id}{COMMAND_SUFFIX}");
        broker
            .publish(&topic, Bytes::from(body), QoS::AtLeastOnce, true)
            .await;
        Ok(())
    }

    async fn advance(&self, r: &mut RolloutRow) -> Result<(), HubError> {
        let plan = Plan::parse(&r.plan).map_err(rollout_error)?;
        let devices = self.store.rollout_devices(&r.id).await?;
        let last = devices.iter().map(|d| d.wave).max().unwrap_or(0);
        loop {
            let wave: Vec<&RolloutDeviceRow> =
                devices.iter().filter(|d| d.wave == r.wave).collect();
            let mut states = Vec::with_capacity(wave.len());
            for d in &wave {
                let mut s = device_state(d);
                if s == DeviceState::Pending {
                    // Published first: a crash before the row is written sends the same
                    // instruction again, which the device recognises by its id.
                    self.publish(&d.device_id, &Command::install(&r.id, &r.target))
                        .await?;
                    self.store
                        .set_rollout_device(
                            &r.id,
                            &d.device_id,
                            DeviceState::Queued.as_str(),
                            Some("install"),
                            d.last_seq,
                        )
                        .await?;
                    self.counters
                        .install_commands
                        .fetch_add(1, Ordering::Relaxed);
                    s = DeviceState::Queued;
                }
                states.push(s);
            }
            let tally = Tally::of(states);
            let accepted = usize::try_from(r.accepted_failures).unwrap_or(0);
            let human = r.wave + 1;
            match rollout::judge(&plan, &tally, accepted) {
                Verdict::Waiting => return Ok(()),
                Verdict::Pause(why) => {
                    tracing::warn!(rollout = %r.id, wave = human, reason = %why, "rollout paused");
                    self.counters
                        .automatic_pauses
                        .fetch_add(1, Ordering::Relaxed);
                    r.state = RolloutState::Paused.as_str().into();
                    r.reason = Some(format!("wave {human}: {why}"));
                    return self.save(r, "rollout.paused").await;
                }
                Verdict::Done if r.wave >= last => {
                    tracing::info!(rollout = %r.id, "rollout completed");
                    r.state = RolloutState::Completed.as_str().into();
                    r.reason = None;
                    return self.save(r, "rollout.completed").await;
                }
                Verdict::Done if plan.approval == rollout::Approval::Manual => {
                    tracing::info!(rollout = %r.id, wave = human, "wave done; waiting for approval");
                    r.state = RolloutState::AwaitingApproval.as_str().into();
                    r.reason = Some(format!(
                        "wave {human} of {} done; `rampart rollout approve {}` starts the next",
                        last + 1,
                        r.id
                    ));
                    return self.save(r, "rollout.wave_done").await;
                }
                Verdict::Done => {
                    tracing::info!(rollout = %r.id, wave = human, "wave done; starting the next");
                    r.wave += 1;
                    r.accepted_failures = 0;
                    self.save(r, "rollout.wave_done").await?;
                }
            }
        }
    }

    async fn save(&self, r: &RolloutRow, action: &str) -> Result<(), HubError> {
        self.store.set_rollout_state(r).await?;
        self.store
            .audit(&audit_entry(
                "hub",
                action,
                &r.id,
                format!(
                    "wave {}: {}",
                    r.wave + 1,
                    r.reason.clone().unwrap_or_else(|| r.state.clone())
                ),
            ))
            .await?;
        Ok(())
    }

    /// After an abort: devices the rollout reached are told to roll back (once), devices it
    /// never reached are cancelled.
    async fn roll_back(&self, r: &RolloutRow) -> Result<(), HubError> {
        for d in self.store.rollout_devices(&r.id).await? {
            let s = device_state(&d);
            if s == DeviceState::Pending {
                self.store
                    .set_rollout_device(
                        &r.id,
                        &d.device_id,
                        DeviceState::Cancelled.as_str(),
                        None,
                        d.last_seq,
                    )
                    .await?;
            } else if s.was_reached() && d.command.as_deref() != Some("rollback") {
                self.publish(&d.device_id, &Command::rollback(&r.id))
                    .await?;
                self.store
                    .set_rollout_device(
                        &r.id,
                        &d.device_id,
                        s.as_str(),
                        Some("rollback"),
                        d.last_seq,
                    )
                    .await?;
                self.counters
                    .rollback_commands
                    .fetch_add(1, Ordering::Relaxed);
            }
        }
        Ok(())
    }
}
