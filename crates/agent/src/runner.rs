//! The agent's main loop.
//!
//! - The producer ([`crate::producer`]) reads the BMS every interval and writes the documents
//!   the data-minimisation rules let out, and events, to the durable outbox.
//! - A session is one credential pair. It connects over mutual TLS, publishes from the outbox
//!   in order at QoS 1 — several telemetry documents per publish while a backlog drains, at
//!   most `outbox.window` records unacknowledged — and marks records delivered when their
//!   PUBACK arrives. A lost connection is dropped whole; after a backoff (exponential, full
//!   jitter) a new one sends again from the oldest unacknowledged record. The session also
//!   keeps a session token fresh and renews the certificate when its time comes: new key, CSR
//!   on `$rampart/devices/{id}/certs/renew`, the answer stored as a pending pair; then it
//!   drains (every publish acknowledged) and ends, and the next session connects with the
//!   pending pair: promoted if it connects, discarded — back to the current pair — if not.
//! - A factory-fresh device first provisions itself ([`crate::provision`]).

use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rampart_pki::{KeyAlgorithm, PrivateKey, create_csr};
use rumqttc::{AsyncClient, Event, LastWill, Outgoing, Packet, QoS};
use serde::Deserialize;
use serde_json::json;
use time::OffsetDateTime;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::config::AgentConfig;
use crate::connection::{EventTask, backoff, mqtt_client, request_id, status_payload};
use crate::credentials::{Credentials, Pair};
use crate::error::AgentError;
use crate::minimise::Shaper;
use crate::outbox::{Outbox, RecordKind};
use crate::producer::{Producer, lock};
use crate::sequence::Sequence;
use crate::source::{ConfiguredSource, Health};
use crate::status::{Board, CertificateStatus};
use crate::vault::Vault;

/// What the agent did, for logs, status and tests.
#[derive(Debug, Default)]
pub struct AgentStats {
    /// BMS readings taken.
    pub readings: AtomicU64,
    /// Outbox records acknowledged by the hub (PUBACK).
    pub acknowledged: AtomicU64,
    /// Outbox records dropped (bounds, damage).
    pub dropped: AtomicU64,
    pub bms_errors: AtomicU64,
    /// Documents that could not be written to the outbox.
    pub outbox_errors: AtomicU64,
    pub connects: AtomicU64,
    pub connection_failures: AtomicU64,
    pub renewals: AtomicU64,
    pub tokens: AtomicU64,
    pub connected: AtomicBool,
}

/// Most bytes of documents in one batch publish (the hub accepts packets up to 256 KiB).
const MAX_BATCH_BYTES: usize = 128 * 1024;
/// At shutdown, how long the agent keeps sending what waits in the outbox.
const SHUTDOWN_FLUSH: Duration = Duration::from_secs(5);
/// A connection that lasted this long resets the backoff.
const STABLE_CONNECTION: Duration = Duration::from_secs(30);

/// Writes status.json every second until stopped.
async fn status_writer(board: Arc<Board>, stop: CancellationToken) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut warned = false;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.cancelled() => return,
        }
        if let Err(e) = board.write()
            && !warned
        {
            tracing::warn!(error = %e, "cannot write status.json (`rampart-agent status` will be stale)");
            warned = true;
        }
    }
}

/// Runs the agent until `shutdown` is cancelled, then stops reading, sends what waits in the
/// outbox (for up to 5 s), publishes an "offline" status and disconnects.
pub async fn run(
    cfg: AgentConfig,
    shutdown: CancellationToken,
    stats: Arc<AgentStats>,
) -> Result<(), AgentError> {
    let state_dir = cfg.state_dir();
    std::fs::DirBuilder::new()
        .recursive(true)
        .create(&state_dir)
        .map_err(|source| AgentError::State {
            path: state_dir.clone(),
            source,
        })?;
    let vault = Arc::new(Vault::open(&cfg.key_source())?);
    let creds = Credentials::new(
        cfg.resolve(&cfg.hub.cert),
        cfg.resolve(&cfg.hub.key),
        vault.clone(),
        cfg.storage.encrypt_credentials,
    );
    for f in creds.seal_plain_keys()? {
        tracing::info!(file = %f.display(), "private key sealed with the storage key");
    }
    let source = ConfiguredSource::new(&cfg);
    let board = Arc::new(Board::new(&state_dir, &cfg.hub.address, &source.label()));
    let status_stop = CancellationToken::new();
    let status_task = tokio::spawn(status_writer(board.clone(), status_stop.clone()));
    let result = run_agent(&cfg, creds, source, board.clone(), shutdown, stats.clone()).await;
    board.connection("stopped", None);
    if let Err(e) = board.write() {
        tracing::warn!(error = %e, "cannot write the final status");
    }
    status_stop.cancel();
    let _ = status_task.await;
    tracing::info!(
        readings = stats.readings.load(Ordering::Relaxed),
        acknowledged = stats.acknowledged.load(Ordering::Relaxed),
        dropped = stats.dropped.load(Ordering::Relaxed),
        "agent stopped"
    );
    result
}

async fn run_agent(
    cfg: &AgentConfig,
    creds: Credentials,
    source: ConfiguredSource,
    board: Arc<Board>,
    shutdown: CancellationToken,
    stats: Arc<AgentStats>,
) -> Result<(), AgentError> {
    if !creds.current.exists() {
        if creds.pending().exists() {
            // A crash between receiving the first certificate and using it.
            creds.promote()?;
        } else if let Some(p) = &cfg.provisioning {
            board.connection("provisioning", None);
            if !crate::provision::provision(cfg, p, &creds, &shutdown).await? {
                return Ok(());
            }
        } else {
            return Err(AgentError::Tls(format!(
                "no device credentials at {} and no [provisioning] section to obtain them",
                creds.current.cert.display()
            )));
        }
    }
    let cn = creds.current.info()?.common_name.unwrap_or_default();
    let device_id = match &cfg.device_id {
        Some(id) if *id != cn => {
            return Err(AgentError::Tls(format!(
                "device_id {id:?} in agent.toml differs from the certificate's CN {cn:?}"
            )));
        }
        _ => cn,
    };
    let state_dir = cfg.state_dir();
    let outbox = Outbox::open(cfg.outbox_options(), creds.vault().clone())?;
    let mut telemetry_seq = Sequence::open(&state_dir, "seq")?;
    telemetry_seq.ensure_at_least(outbox.max_seq(RecordKind::Telemetry) + 1);
    let mut event_seq = Sequence::open(&state_dir, "event-seq")?;
    event_seq.ensure_at_least(outbox.max_seq(RecordKind::Event) + 1);
    tracing::info!(device = %device_id, hub = %cfg.hub.address, source = %source.label(),
        next_seq = telemetry_seq.peek(), backlog = outbox.depth(),
        interval = ?cfg.telemetry.interval, "agent starting");
    let outbox = Arc::new(Mutex::new(outbox));
    board.update(|s| s.device_id = Some(device_id.clone()));
    set_certificate_status(&board, &creds);

    let ready = Arc::new(Notify::new());
    let producer_stop = CancellationToken::new();
    let (events_tx, events_rx) = tokio::sync::mpsc::unbounded_channel();
    let updater_stop = CancellationToken::new();
    let (commands_tx, commands_rx) = tokio::sync::mpsc::unbounded_channel();
    let mut commands_tx = Some(commands_tx);
    let updater = cfg.updates.as_ref().map(|u| {
        let task = crate::update::updater::Updater::new(
            cfg,
            u,
            Arc::new(creds.clone()),
            events_tx.clone(),
            commands_rx,
            stats.clone(),
        );
        tokio::spawn(task.run(updater_stop.clone()))
    });
    if updater.is_none() {
        commands_tx = None;
    }
    let producer = Producer {
        outbox: outbox.clone(),
        telemetry_seq,
        event_seq,
        shaper: Shaper::new(&cfg.send, cfg.telemetry.interval).map_err(|message| {
            AgentError::Config {
                path: cfg.base_dir.join("agent.toml"),
                message,
            }
        })?,
        health: Health::new(cfg.telemetry.bms_unreachable_after),
        source,
        board: board.clone(),
        stats: stats.clone(),
        ready: ready.clone(),
        last_drop_report: None,
        events: events_rx,
    };
    // The session stops the producer and waits for it before its shutdown flush, so the
    // last reading is sent rather than left for the next start.
    let producer_done = CancellationToken::new();
    let producer = {
        let (run, done) = (
            producer.run(cfg.telemetry.interval, producer_stop.clone()),
            producer_done.clone(),
        );
        tokio::spawn(async move {
            let r = run.await;
            done.cancel();
            r
        })
    };

    let mut session = Session::new(
        cfg,
        &creds,
        &device_id,
        &stats,
        outbox.clone(),
        ready,
        board.clone(),
        Instructions {
            commands: commands_tx,
            events: events_tx,
        },
    );
    session.producer = Some((producer_stop.clone(), producer_done));
    let result = loop {
        let pending = creds.pending().exists();
        let pair = if pending {
            creds.pending()
        } else {
            creds.current.clone()
        };
        match session.run(&pair, pending, &shutdown).await {
            Ok(End::Shutdown) => break Ok(()),
            Ok(End::UsePending) => continue,
            Ok(End::PendingFailed(why)) => {
                tracing::warn!(%why, "the renewed certificate does not work; back to the current one");
                creds.discard_pending();
                session.renewal =
                    Renewal::RetryAt(tokio::time::Instant::now() + Duration::from_secs(60));
            }
            Err(e) => break Err(e),
        }
    };
    updater_stop.cancel();
    if let Some(u) = updater {
        let _ = u.await;
    }
    producer_stop.cancel();
    let producer_result = producer.await.unwrap_or(Ok(()));
    {
        let mut ob = lock(&outbox);
        if let Err(e) = ob.close() {
            tracing::error!(error = %e, "could not close the outbox cleanly");
        }
        let status = ob.status();
        if status.depth_records > 0 {
            tracing::info!(
                records = status.depth_records,
                "left in the outbox for the next start"
            );
        }
        board.update(|s| s.outbox = status);
    }
    result.and(producer_result)
}

fn set_certificate_status(board: &Board, creds: &Credentials) {
    if let Ok(info) = creds.current.info() {
        board.update(|s| {
            s.certificate = Some(CertificateStatus {
                serial: info.serial.clone(),
                not_after: info.not_after,
            });
        });
    }
}

/// Why a session ended.
enum End {
    Shutdown,
    /// A renewed pair is pending: connect with it.
    UsePending,
    /// The pending pair could not connect.
    PendingFailed(String),
}

/// How one connection ended.
enum Conn {
    End(End),
    Lost { error: String, lasted: Duration },
}

/// Where certificate renewal stands.
enum Renewal {
    Idle,
    Waiting {
        request_id: String,
        key_pem: String,
        deadline: tokio::time::Instant,
    },
    RetryAt(tokio::time::Instant),
}

/// An answer from the hub on a `.../response` topic.
#[derive(Deserialize)]
pub(crate) struct Answer {
    #[serde(default)]
    pub request_id: String,
    pub status: String,
    #[serde(default)]
    pub reason: Option<String>,
    #[serde(default)]
    pub certificate: Option<String>,
    #[serde(default)]
    pub token: Option<String>,
    #[serde(default)]
    pub expires_at: Option<u64>,
}

/// The publishes of one connection. rumqttc assigns packet ids itself and reports
/// `Outgoing::Publish(pkid)` in the order the requests were queued, so the ids are matched to
/// requests by that order.
#[derive(Debug, Default)]
struct Publishes {
    /// Queued, not yet written: the outbox record ids of each (none for control messages).
    queued: VecDeque<Vec<u64>>,
    /// Written, waiting for PUBACK.
    by_pkid: HashMap<u16, Vec<u64>>,
    /// Outbox records in either.
    records: usize,
}

impl Publishes {
    fn control(&mut self) {
        self.queued.push_back(Vec::new());
    }

    fn records(&mut self, ids: Vec<u64>) {
        self.records += ids.len();
        self.queued.push_back(ids);
    }

    fn written(&mut self, pkid: u16) {
        if let Some(ids) = self.queued.pop_front() {
            self.by_pkid.insert(pkid, ids);
        }
    }

    fn acked(&mut self, pkid: u16) -> Option<Vec<u64>> {
        let ids = self.by_pkid.remove(&pkid)?;
        self.records -= ids.len();
        Some(ids)
    }

    fn outstanding(&self) -> usize {
        self.queued.len() + self.by_pkid.len()
    }
}

struct Session<'a> {
    cfg: &'a AgentConfig,
    creds: &'a Credentials,
    device_id: &'a str,
    stats: &'a AgentStats,
    outbox: Arc<Mutex<Outbox>>,
    ready: Arc<Notify>,
    board: Arc<Board>,
    /// Stops the producer, and tells when it has stopped (for the flush at shutdown).
    producer: Option<(CancellationToken, CancellationToken)>,
    renewal: Renewal,
    token_refresh_at: Option<tokio::time::Instant>,
    token_request: Option<String>,
    token_path: PathBuf,
    instructions: Instructions,
}

/// Where the hub's update instructions go: to the updater, or — on an agent without
/// `[updates]` — back to the hub as a refusal, so a rollout does not wait for it forever.
struct Instructions {
    commands: Option<tokio::sync::mpsc::UnboundedSender<rampart_update::rollout::Command>>,
    events: tokio::sync::mpsc::UnboundedSender<rampart_bms::Event>,
}

impl<'a> Session<'a> {
    #[allow(clippy::too_many_arguments)] // the session's shared handles, one each
    fn new(
        cfg: &'a AgentConfig,
        creds: &'a Credentials,
        device_id: &'a str,
        stats: &'a AgentStats,
        outbox: Arc<Mutex<Outbox>>,
        ready: Arc<Notify>,
        board: Arc<Board>,
        instructions: Instructions,
    ) -> Self {
        Session {
            instructions,
            cfg,
            creds,
            device_id,
            stats,
            outbox,
            ready,
            board,
            producer: None,
            renewal: Renewal::Idle,
            token_refresh_at: None,
            token_request: None,
            token_path: cfg.state_dir().join("token"),
        }
    }

    fn topic(&self, suffix: &str) -> String {
        format!("$rampart/devices/{}/{suffix}", self.device_id)
    }

    /// Connections with one credential pair, until shutdown or a credential switch.
    async fn run(
        &mut self,
        pair: &Pair,
        pending: bool,
        shutdown: &CancellationToken,
    ) -> Result<End, AgentError> {
        let mut failures: u32 = 0;
        let mut promoted = !pending;
        if pending {
            tracing::info!(cert = %pair.cert.display(), "connecting with the renewed certificate");
        }
        loop {
            match self.connection(pair, &mut promoted, shutdown).await? {
                Conn::End(end) => return Ok(end),
                Conn::Lost { error, lasted } => {
                    self.stats.connected.store(false, Ordering::Relaxed);
                    self.stats
                        .connection_failures
                        .fetch_add(1, Ordering::Relaxed);
                    self.board.connection("connecting", Some(error.clone()));
                    if !promoted {
                        return Ok(End::PendingFailed(error));
                    }
                    if lasted >= STABLE_CONNECTION {
                        failures = 0;
                    }
                    let delay = backoff(
                        failures,
                        self.cfg.reconnect.initial_backoff,
                        self.cfg.reconnect.max_backoff,
                    );
                    failures = failures.saturating_add(1);
                    tracing::warn!(%error, retry_in = ?delay, attempt = failures,
                        backlog = lock(&self.outbox).depth(), "connection to the hub failed");
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = shutdown.cancelled() => return Ok(End::Shutdown),
                    }
                }
            }
        }
    }

    /// Publishes outbox records while the window has room.
    fn fill(&mut self, client: &AsyncClient, pubs: &mut Publishes) {
        let window = self.cfg.outbox.window as usize;
        let telemetry_topic = format!("devices/{}/telemetry", self.device_id);
        let events_topic = format!("devices/{}/events", self.device_id);
        while pubs.records < window {
            let room = (window - pubs.records).min(self.cfg.outbox.batch as usize);
            let batch = match lock(&self.outbox).next_batch(room, MAX_BATCH_BYTES) {
                Ok(b) => b,
                Err(e) => {
                    tracing::error!(error = %e, "cannot read the outbox; retrying shortly");
                    return;
                }
            };
            let Some(first) = batch.first() else {
                return;
            };
            let first_id = first.id;
            let (topic, payload) = if first.kind == RecordKind::Event {
                (events_topic.as_str(), first.payload.to_vec())
            } else if batch.len() == 1 {
                (telemetry_topic.as_str(), first.payload.to_vec())
            } else {
                // A JSON array of the documents, as stored.
                let mut p = Vec::with_capacity(
                    batch.iter().map(|r| r.payload.len() + 1).sum::<usize>() + 1,
                );
                p.push(b'[');
                for (i, r) in batch.iter().enumerate() {
                    if i > 0 {
                        p.push(b',');
                    }
                    p.extend_from_slice(&r.payload);
                }
                p.push(b']');
                (telemetry_topic.as_str(), p)
            };
            let ids: Vec<u64> = batch.iter().map(|r| r.id).collect();
            match client.try_publish(topic, QoS::AtLeastOnce, false, payload) {
                Ok(()) => pubs.records(ids),
                Err(_) => {
                    // The client's queue is full: these go out with the next round.
                    lock(&self.outbox).unsend(first_id);
                    return;
                }
            }
        }
    }

    fn acked(&mut self, pubs: &mut Publishes, pkid: u16) {
        if let Some(ids) = pubs.acked(pkid)
            && !ids.is_empty()
        {
            lock(&self.outbox).ack(&ids);
            self.stats
                .acknowledged
                .fetch_add(ids.len() as u64, Ordering::Relaxed);
        }
    }

    /// One MQTT connection.
    async fn connection(
        &mut self,
        pair: &Pair,
        promoted: &mut bool,
        shutdown: &CancellationToken,
    ) -> Result<Conn, AgentError> {
        let status_topic = format!("devices/{}/status", self.device_id);
        let will = LastWill::new(
            status_topic.clone(),
            status_payload("offline"),
            QoS::AtLeastOnce,
            true,
        );
        let inflight = u16::try_from(self.cfg.outbox.window + 16).unwrap_or(u16::MAX);
        let (client, eventloop) = mqtt_client(
            self.cfg,
            self.creds.vault(),
            pair,
            self.device_id,
            Some(will),
            inflight,
        )?;
        let mut events = EventTask::spawn(eventloop);
        lock(&self.outbox).rewind();
        let mut pubs = Publishes::default();
        let mut connected_at: Option<Instant> = None;
        let mut draining: Option<tokio::time::Instant> = None;
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        let lost = |error: String, at: Option<Instant>| Conn::Lost {
            error,
            lasted: at.map(|t| t.elapsed()).unwrap_or_default(),
        };
        loop {
            if connected_at.is_some() && draining.is_none() {
                self.fill(&client, &mut pubs);
            }
            tokio::select! {
                ev = events.rx.recv() => match ev {
                    Some(Ok(Event::Incoming(Packet::ConnAck(_)))) => {
                        connected_at = Some(Instant::now());
                        self.stats.connects.fetch_add(1, Ordering::Relaxed);
                        self.stats.connected.store(true, Ordering::Relaxed);
                        self.board.connection("connected", None);
                        if !*promoted {
                            self.creds.promote()?;
                            *promoted = true;
                            self.stats.renewals.fetch_add(1, Ordering::Relaxed);
                            set_certificate_status(&self.board, self.creds);
                            tracing::info!("renewed certificate works and is now in use; the previous one is kept as .old");
                        }
                        tracing::info!(hub = %self.cfg.hub.address, backlog = lock(&self.outbox).depth(), "connected to the hub");
                        for t in [self.topic("certs/renew/response"), self.topic("token/response"), self.command_topic()] {
                            let _ = client.try_subscribe(t, QoS::AtLeastOnce);
                        }
                        if client
                            .try_publish(status_topic.as_str(), QoS::AtLeastOnce, true, status_payload("online"))
                            .is_ok()
                        {
                            pubs.control();
                        }
                        if self.cfg.tokens.enabled {
                            self.request_token(&client, &mut pubs);
                        }
                        if let Some(r) = &self.cfg.release {
                            let version = crate::update::updater::committed_version(self.cfg).unwrap_or_else(|| r.version.clone());
                            let body = serde_json::json!({"v": 1, "product": r.product, "release": version}).to_string();
                            if client
                                .try_publish(format!("devices/{}/release", self.device_id), QoS::AtLeastOnce, false, body)
                                .is_ok()
                            {
                                pubs.control();
                            }
                        }
                    }
                    Some(Ok(Event::Outgoing(Outgoing::Publish(pkid)))) => pubs.written(pkid),
                    Some(Ok(Event::Incoming(Packet::PubAck(a)))) => self.acked(&mut pubs, a.pkid),
                    Some(Ok(Event::Incoming(Packet::Publish(p)))) if p.topic == self.command_topic() => {
                        self.instruction(&p.payload);
                    }
                    Some(Ok(Event::Incoming(Packet::Publish(p)))) => {
                        if self.answer(&p.topic, &p.payload)? {
                            draining = Some(tokio::time::Instant::now() + Duration::from_secs(10));
                        }
                    }
                    Some(Ok(Event::Incoming(Packet::Disconnect))) => {
                        tracing::warn!("the hub closed the session");
                    }
                    Some(Ok(_)) => {}
                    Some(Err(e)) => {
                        events.stop();
                        return Ok(lost(e, connected_at));
                    }
                    None => return Ok(lost("the MQTT event loop stopped".into(), connected_at)),
                },
                _ = self.ready.notified(), if connected_at.is_some() => {}
                _ = tick.tick() => {
                    if let Some(deadline) = draining
                        && (pubs.outstanding() == 0 || tokio::time::Instant::now() >= deadline)
                    {
                        if pubs.outstanding() > 0 {
                            tracing::warn!(unacknowledged = pubs.outstanding(), "switching certificates before every publish was acknowledged (the outbox sends them again)");
                        }
                        events.disconnect(&client).await;
                        self.stats.connected.store(false, Ordering::Relaxed);
                        return Ok(Conn::End(End::UsePending));
                    }
                    if connected_at.is_some() && draining.is_none() {
                        self.maybe_renew(&client, &mut pubs)?;
                        self.maybe_refresh_token(&client, &mut pubs);
                    }
                }
                _ = shutdown.cancelled() => {
                    let deadline = tokio::time::Instant::now() + SHUTDOWN_FLUSH;
                    // No more readings; the last one is in the outbox before the flush.
                    if let Some((stop, done)) = &self.producer {
                        stop.cancel();
                        let _ = tokio::time::timeout_at(deadline, done.cancelled()).await;
                    }
                    if connected_at.is_some() {
                        // Send what is waiting, within the deadline; what is left stays in
                        // the outbox for the next start.
                        let waiting = lock(&self.outbox).depth();
                        loop {
                            self.fill(&client, &mut pubs);
                            if pubs.outstanding() == 0 && lock(&self.outbox).depth() == 0 {
                                break;
                            }
                            match tokio::time::timeout_at(deadline, events.rx.recv()).await {
                                Ok(Some(Ok(Event::Outgoing(Outgoing::Publish(pkid))))) => pubs.written(pkid),
                                Ok(Some(Ok(Event::Incoming(Packet::PubAck(a))))) => self.acked(&mut pubs, a.pkid),
                                Ok(Some(Ok(_))) => {}
                                Ok(Some(Err(e))) => {
                                    tracing::warn!(error = %e, "connection lost while sending the outbox at shutdown");
                                    break;
                                }
                                Ok(None) | Err(_) => break,
                            }
                        }
                        tracing::info!(waiting, left = lock(&self.outbox).depth(), "outbox sent at shutdown");
                        if client
                            .try_publish(status_topic.as_str(), QoS::AtLeastOnce, true, status_payload("offline"))
                            .is_ok()
                        {
                            pubs.control();
                        }
                        let deadline = deadline.max(tokio::time::Instant::now() + Duration::from_secs(1));
                        while pubs.outstanding() > 0 {
                            match tokio::time::timeout_at(deadline, events.rx.recv()).await {
                                Ok(Some(Ok(Event::Outgoing(Outgoing::Publish(pkid))))) => pubs.written(pkid),
                                Ok(Some(Ok(Event::Incoming(Packet::PubAck(a))))) => self.acked(&mut pubs, a.pkid),
                                Ok(Some(Ok(_))) => {}
                                _ => break,
                            }
                        }
                        events.disconnect(&client).await;
                    }
                    events.stop();
                    self.stats.connected.store(false, Ordering::Relaxed);
                    return Ok(Conn::End(End::Shutdown));
                }
            }
        }
    }

    fn command_topic(&self) -> String {
        format!(
            "devices/{}{}",
            self.device_id,
            rampart_update::rollout::COMMAND_SUFFIX
        )
    }

    /// Passes an update instruction to the updater; a malformed one, or one this agent
    /// cannot follow, is reported to the hub as a failure.
    fn instruction(&self, payload: &[u8]) {
        let refuse = |why: String| {
            tracing::warn!(reason = %why, "update instruction refused");
            let _ = self.instructions.events.send(rampart_bms::Event::Update {
                stage: rampart_bms::UpdateStage::Failed,
                target: "-".into(),
                version: "-".into(),
                rollout: serde_json::from_slice::<serde_json::Value>(payload)
                    .ok()
                    .and_then(|v| v["rollout"].as_str().map(str::to_owned))
                    .filter(|r| rampart_update::rollout::valid_id(r)),
                detail: Some(why),
            });
        };
        match rampart_update::rollout::Command::parse(payload) {
            Err(e) => refuse(e),
            Ok(c) => match &self.instructions.commands {
                Some(tx) => {
                    // The updater outlives every session; a closed channel means stopping.
                    let _ = tx.send(c);
                }
                None => refuse("this agent has no [updates] section".into()),
            },
        }
    }

    /// Handles an answer from the hub; true if a renewed pair is now pending.
    fn answer(&mut self, topic: &str, payload: &[u8]) -> Result<bool, AgentError> {
        let Ok(a) = serde_json::from_slice::<Answer>(payload) else {
            tracing::warn!(%topic, "unreadable answer from the hub");
            return Ok(false);
        };
        if topic == self.topic("certs/renew/response") {
            let Renewal::Waiting {
                request_id,
                key_pem,
                ..
            } = &self.renewal
            else {
                return Ok(false);
            };
            if a.request_id != *request_id {
                return Ok(false);
            }
            match (a.status.as_str(), a.certificate) {
                ("accepted", Some(cert)) => {
                    let key_pem = key_pem.clone();
                    self.creds.store_pending(&cert, &key_pem)?;
                    self.renewal = Renewal::Idle;
                    tracing::info!("renewed certificate received and stored; switching to it");
                    return Ok(true);
                }
                _ => {
                    let retry = self.retry_delay();
                    tracing::warn!(reason = %a.reason.unwrap_or_default(), retry_in = ?retry,
                        "certificate renewal rejected by the hub; keeping the current certificate");
                    self.renewal = Renewal::RetryAt(tokio::time::Instant::now() + retry);
                }
            }
        } else if topic == self.topic("token/response") {
            if self.token_request.as_deref() != Some(a.request_id.as_str()) {
                return Ok(false);
            }
            self.token_request = None;
            match (a.status.as_str(), a.token, a.expires_at) {
                ("accepted", Some(token), Some(exp)) => {
                    self.creds
                        .write_secret(&self.token_path, token.as_bytes())?;
                    self.stats.tokens.fetch_add(1, Ordering::Relaxed);
                    let now =
                        u64::try_from(OffsetDateTime::now_utc().unix_timestamp()).unwrap_or(0);
                    let life = exp.saturating_sub(now);
                    let refresh = Duration::from_secs_f64(life as f64 * self.cfg.tokens.renew_at);
                    self.token_refresh_at = Some(tokio::time::Instant::now() + refresh);
                    tracing::info!(expires_in_s = life, "session token renewed");
                }
                _ => {
                    tracing::warn!(reason = %a.reason.unwrap_or_default(), "token request rejected");
                    self.token_refresh_at =
                        Some(tokio::time::Instant::now() + Duration::from_secs(30));
                }
            }
        }
        Ok(false)
    }

    /// Between 30 s and an hour, and a tenth of the time the certificate has left.
    fn retry_delay(&self) -> Duration {
        let left = self
            .creds
            .current
            .info()
            .map(|i| {
                (i.not_after - OffsetDateTime::now_utc())
                    .whole_seconds()
                    .max(0)
            })
            .unwrap_or(0);
        Duration::from_secs(u64::try_from(left / 10).unwrap_or(0).clamp(30, 3600))
    }

    fn maybe_renew(
        &mut self,
        client: &AsyncClient,
        pubs: &mut Publishes,
    ) -> Result<(), AgentError> {
        let now = tokio::time::Instant::now();
        match &self.renewal {
            Renewal::Waiting { deadline, .. } if now >= *deadline => {
                let retry = self.retry_delay();
                tracing::warn!(retry_in = ?retry, "no answer to the renewal request; keeping the current certificate");
                self.renewal = Renewal::RetryAt(now + retry);
                return Ok(());
            }
            Renewal::Waiting { .. } => return Ok(()),
            Renewal::RetryAt(t) if now < *t => return Ok(()),
            _ => {}
        }
        let due = self.creds.renew_at(self.cfg.credentials.renew_at)?;
        if OffsetDateTime::now_utc() < due && matches!(self.renewal, Renewal::Idle) {
            return Ok(());
        }
        // A new key every time: a renewal also rotates the key.
        let alg: KeyAlgorithm = self
            .cfg
            .credentials
            .key_algorithm
            .parse()
            .map_err(AgentError::Tls)?;
        let key = PrivateKey::generate(alg).map_err(|e| AgentError::Tls(e.to_string()))?;
        let csr = create_csr(self.device_id, &key).map_err(|e| AgentError::Tls(e.to_string()))?;
        let rid = request_id();
        let body = json!({ "request_id": rid, "csr": csr }).to_string();
        if client
            .try_publish(self.topic("certs/renew"), QoS::AtLeastOnce, false, body)
            .is_ok()
        {
            pubs.control();
            tracing::info!("certificate renewal requested (new key, CSR)");
            self.renewal = Renewal::Waiting {
                request_id: rid,
                key_pem: key.to_pem(),
                deadline: tokio::time::Instant::now() + self.cfg.credentials.request_timeout,
            };
        }
        Ok(())
    }

    fn request_token(&mut self, client: &AsyncClient, pubs: &mut Publishes) {
        let rid = request_id();
        let body = json!({ "request_id": rid }).to_string();
        if client
            .try_publish(self.topic("token/request"), QoS::AtLeastOnce, false, body)
            .is_ok()
        {
            pubs.control();
            self.token_request = Some(rid);
            self.token_refresh_at = Some(tokio::time::Instant::now() + Duration::from_secs(30));
        }
    }

    fn maybe_refresh_token(&mut self, client: &AsyncClient, pubs: &mut Publishes) {
        if self.cfg.tokens.enabled
            && self
                .token_refresh_at
                .is_some_and(|t| tokio::time::Instant::now() >= t)
        {
            self.request_token(client, pubs);
        }
    }
}
