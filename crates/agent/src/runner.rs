//! The agent's main loop.
//!
//! - A reader task takes a reading per interval, numbers it and puts it in a bounded queue;
//!   when the queue is full the reading is dropped and counted (its number is used anyway,
//!   so the hub sees the gap).
//! - A session is one MQTT client over mutual TLS with one credential pair. It feeds readings
//!   from the queue to the hub at QoS 1 while connected, reconnects after failures with
//!   exponential backoff and full jitter, keeps a session token fresh, and renews the
//!   certificate when its time comes: new key, CSR on `$rampart/devices/{id}/certs/renew`, the
//!   answer stored as a pending pair. Then the session drains (every publish acknowledged) and
//!   ends, and the next session connects with the pending pair: promoted if it connects,
//!   discarded — back to the current pair — if it does not.
//! - A factory-fresh device (no credentials, a `[provisioning]` section) first runs a
//!   provisioning session with its claim certificate.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use rampart_bms::{BmsSource, SimulatedPack, TelemetryMessage};
use rampart_pki::{KeyAlgorithm, PrivateKey, create_csr};
use rumqttc::{
    AsyncClient, ConnectionError, Event, EventLoop, LastWill, MqttOptions, Packet, QoS,
    TlsConfiguration, Transport,
};
use serde::Deserialize;
use serde_json::json;
use time::OffsetDateTime;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::config::{AgentConfig, BmsSection, ProvisioningSection};
use crate::credentials::{Credentials, Pair, write_atomic};
use crate::error::AgentError;
use crate::sequence::Sequence;

/// What the agent did, for logs, status and tests.
#[derive(Debug, Default)]
pub struct AgentStats {
    pub readings: AtomicU64,
    /// Publishes acknowledged by the hub (PUBACK).
    pub acknowledged: AtomicU64,
    /// Readings dropped because the queue was full.
    pub dropped: AtomicU64,
    pub bms_errors: AtomicU64,
    pub connects: AtomicU64,
    pub connection_failures: AtomicU64,
    pub renewals: AtomicU64,
    pub tokens: AtomicU64,
    pub connected: AtomicBool,
}

/// Unacknowledged telemetry publishes handed to the MQTT client at once.
const PUBLISH_WINDOW: u64 = 100;

fn source_from(cfg: &AgentConfig) -> Box<dyn BmsSource> {
    match &cfg.bms {
        BmsSection::Simulator(sim) => Box::new(SimulatedPack::new(sim.clone())),
    }
}

fn status_payload(state: &str) -> Vec<u8> {
    let ts = OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default();
    json!({ "state": state, "ts": ts, "agent": env!("CARGO_PKG_VERSION") })
        .to_string()
        .into_bytes()
}

/// Explains a connection failure in terms an operator can act on.
fn explain(e: &ConnectionError) -> String {
    match e {
        ConnectionError::ConnectionRefused(code) => format!(
            "the hub refused the connection ({code:?}): the device may be disabled, unknown, \
             pending approval, or its certificate revoked or not registered"
        ),
        ConnectionError::Tls(t) => format!(
            "TLS failed ({t}): check that hub.ca is the hub's CA and that the certificate is valid"
        ),
        ConnectionError::Io(io) => format!("network error: {io}"),
        other => other.to_string(),
    }
}

/// Exponential backoff with full jitter: a random delay in [base/2, base] where base doubles
/// per consecutive failure up to `max`. The jitter spreads a fleet's reconnects after a hub
/// restart instead of letting them arrive in one wave.
pub fn backoff(failures: u32, initial: Duration, max: Duration) -> Duration {
    let base = initial
        .checked_mul(1u32.checked_shl(failures.min(16)).unwrap_or(u32::MAX))
        .unwrap_or(max)
        .min(max);
    let half = base / 2;
    half + base.mul_f64(fastrand::f64() * 0.5)
}

fn mqtt_client(
    cfg: &AgentConfig,
    pair: &Pair,
    client_id: &str,
    will: Option<LastWill>,
) -> Result<(AsyncClient, EventLoop), AgentError> {
    let tls = crate::tls::client_config(&cfg.resolve(&cfg.hub.ca), &pair.cert, &pair.key)?;
    let (host, port) = cfg.hub_host_port().map_err(|message| AgentError::Config {
        path: cfg.base_dir.join("agent.toml"),
        message,
    })?;
    let mut options = MqttOptions::new(client_id.to_owned(), host, port);
    options
        .set_keep_alive(cfg.hub.keep_alive)
        .set_clean_session(true)
        .set_max_packet_size(256 * 1024, 256 * 1024)
        .set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(tls)));
    if let Some(w) = will {
        options.set_last_will(w);
    }
    Ok(AsyncClient::new(options, 64))
}

/// Runs the agent until `shutdown` is cancelled, then disconnects cleanly (publishing an
/// "offline" status and waiting up to 5 s for outstanding acknowledgements).
pub async fn run(
    cfg: AgentConfig,
    shutdown: CancellationToken,
    stats: Arc<AgentStats>,
) -> Result<(), AgentError> {
    let creds = Credentials::new(cfg.resolve(&cfg.hub.cert), cfg.resolve(&cfg.hub.key));
    if !creds.current.exists() {
        if creds.pending().exists() {
            // A crash between receiving the first certificate and using it.
            creds.promote()?;
        } else if let Some(p) = &cfg.provisioning {
            if !provision(&cfg, p, &creds, &shutdown).await? {
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
    let mut seq = Sequence::open(&cfg.resolve(&cfg.state_dir))?;
    tracing::info!(device = %device_id, hub = %cfg.hub.address, next_seq = seq.peek(),
        interval = ?cfg.telemetry.interval, "agent starting");

    let (tx, mut queue) = mpsc::channel::<(u64, Vec<u8>)>(cfg.telemetry.queue);
    let reader_stop = shutdown.child_token();
    let reader = {
        let stats = stats.clone();
        let stop = reader_stop.clone();
        let mut source = source_from(&cfg);
        let interval = cfg.telemetry.interval;
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = stop.cancelled() => return Ok::<(), AgentError>(()),
                }
                let reading = match source.read().await {
                    Ok(r) => r,
                    Err(e) => {
                        stats.bms_errors.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(error = %e, "BMS reading failed");
                        continue;
                    }
                };
                let n = seq.take()?;
                let payload = match serde_json::to_vec(&TelemetryMessage::full(n, &reading)) {
                    Ok(p) => p,
                    Err(e) => {
                        tracing::error!(error = %e, "cannot encode reading");
                        continue;
                    }
                };
                stats.readings.fetch_add(1, Ordering::Relaxed);
                if tx.try_send((n, payload)).is_err() {
                    let d = stats.dropped.fetch_add(1, Ordering::Relaxed) + 1;
                    if d.is_power_of_two() {
                        tracing::warn!(
                            dropped_total = d,
                            seq = n,
                            "telemetry queue full while the hub is unreachable: reading dropped"
                        );
                    }
                }
            }
        })
    };

    let mut session = Session::new(&cfg, &creds, &device_id, &stats);
    let result = loop {
        let pending = creds.pending().exists();
        let pair = if pending {
            creds.pending()
        } else {
            creds.current.clone()
        };
        match session.run(&pair, pending, &mut queue, &shutdown).await {
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
    reader_stop.cancel();
    let reader_result = reader.await.unwrap_or(Ok(()));
    tracing::info!(
        readings = stats.readings.load(Ordering::Relaxed),
        acknowledged = stats.acknowledged.load(Ordering::Relaxed),
        dropped = stats.dropped.load(Ordering::Relaxed),
        "agent stopped"
    );
    result.and(reader_result)
}

/// Why a session ended.
enum End {
    Shutdown,
    /// A renewed pair is pending: connect with it.
    UsePending,
    /// The pending pair could not connect.
    PendingFailed(String),
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

#[derive(Deserialize)]
struct Answer {
    #[serde(default)]
    request_id: String,
    status: String,
    #[serde(default)]
    reason: Option<String>,
    #[serde(default)]
    certificate: Option<String>,
    #[serde(default)]
    token: Option<String>,
    #[serde(default)]
    expires_at: Option<u64>,
}

struct Session<'a> {
    cfg: &'a AgentConfig,
    creds: &'a Credentials,
    device_id: &'a str,
    stats: &'a AgentStats,
    renewal: Renewal,
    token_refresh_at: Option<tokio::time::Instant>,
    token_request: Option<String>,
    token_path: PathBuf,
}

fn request_id() -> String {
    format!("{:016x}", fastrand::u64(..))
}

impl<'a> Session<'a> {
    fn new(
        cfg: &'a AgentConfig,
        creds: &'a Credentials,
        device_id: &'a str,
        stats: &'a AgentStats,
    ) -> Self {
        Session {
            cfg,
            creds,
            device_id,
            stats,
            renewal: Renewal::Idle,
            token_refresh_at: None,
            token_request: None,
            token_path: cfg.resolve(&cfg.state_dir).join("token"),
        }
    }

    fn topic(&self, suffix: &str) -> String {
        format!("$rampart/devices/{}/{suffix}", self.device_id)
    }

    /// One MQTT client with one credential pair, until shutdown or a credential switch.
    async fn run(
        &mut self,
        pair: &Pair,
        pending: bool,
        queue: &mut mpsc::Receiver<(u64, Vec<u8>)>,
        shutdown: &CancellationToken,
    ) -> Result<End, AgentError> {
        let status_topic = format!("devices/{}/status", self.device_id);
        let telemetry_topic = format!("devices/{}/telemetry", self.device_id);
        let will = LastWill::new(
            status_topic.clone(),
            status_payload("offline"),
            QoS::AtLeastOnce,
            true,
        );
        let (client, eventloop) = mqtt_client(self.cfg, pair, self.device_id, Some(will))?;
        if pending {
            tracing::info!(cert = %pair.cert.display(), "connecting with the renewed certificate");
        }
        let mut events = EventTask::spawn(eventloop, self.cfg);
        let mut promoted = !pending;
        let mut connected = false;
        let (mut published, mut acked) = (0u64, 0u64);
        let mut draining: Option<tokio::time::Instant> = None;
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        loop {
            let window_open = connected && draining.is_none() && published - acked < PUBLISH_WINDOW;
            tokio::select! {
                ev = events.rx.recv() => match ev {
                    Some(Ok(Event::Incoming(Packet::ConnAck(_)))) => {
                        connected = true;
                        self.stats.connects.fetch_add(1, Ordering::Relaxed);
                        self.stats.connected.store(true, Ordering::Relaxed);
                        if !promoted {
                            self.creds.promote()?;
                            promoted = true;
                            self.stats.renewals.fetch_add(1, Ordering::Relaxed);
                            tracing::info!("renewed certificate works and is now in use; the previous one is kept as .old");
                        }
                        tracing::info!(hub = %self.cfg.hub.address, "connected to the hub");
                        for t in [self.topic("certs/renew/response"), self.topic("token/response")] {
                            let _ = client.try_subscribe(t, QoS::AtLeastOnce);
                        }
                        if client
                            .try_publish(status_topic.as_str(), QoS::AtLeastOnce, true, status_payload("online"))
                            .is_ok()
                        {
                            published += 1;
                        }
                        if self.cfg.tokens.enabled {
                            self.request_token(&client, &mut published);
                        }
                    }
                    Some(Ok(Event::Incoming(Packet::PubAck(_)))) => {
                        acked += 1;
                        self.stats.acknowledged.fetch_add(1, Ordering::Relaxed);
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
                        connected = false;
                        self.stats.connected.store(false, Ordering::Relaxed);
                        self.stats.connection_failures.fetch_add(1, Ordering::Relaxed);
                        if !promoted {
                            events.stop();
                            return Ok(End::PendingFailed(e));
                        }
                        // The event task backs off and reconnects; it keeps unacknowledged
                        // publishes and re-sends them once connected again.
                    }
                    None => return Err(AgentError::Tls("the MQTT event loop stopped".into())),
                },
                Some((n, payload)) = queue.recv(), if window_open => {
                    match client.publish(telemetry_topic.as_str(), QoS::AtLeastOnce, false, payload).await {
                        Ok(()) => {
                            published += 1;
                            tracing::debug!(seq = n, "reading published");
                        }
                        Err(e) => tracing::error!(seq = n, error = %e, "MQTT client closed; reading lost"),
                    }
                }
                _ = tick.tick() => {
                    if let Some(deadline) = draining
                        && (acked >= published || tokio::time::Instant::now() >= deadline)
                    {
                        if acked < published {
                            tracing::warn!(unacknowledged = published - acked, "switching certificates before every publish was acknowledged");
                        }
                        events.disconnect(&client, self.stats).await;
                        return Ok(End::UsePending);
                    }
                    if connected && draining.is_none() {
                        self.maybe_renew(&client, &mut published)?;
                        self.maybe_refresh_token(&client, &mut published);
                    }
                }
                _ = shutdown.cancelled() => {
                    if connected {
                        if client
                            .try_publish(status_topic.as_str(), QoS::AtLeastOnce, true, status_payload("offline"))
                            .is_ok()
                        {
                            published += 1;
                        }
                        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
                        while acked < published {
                            match tokio::time::timeout_at(deadline, events.rx.recv()).await {
                                Ok(Some(Ok(Event::Incoming(Packet::PubAck(_))))) => {
                                    acked += 1;
                                    self.stats.acknowledged.fetch_add(1, Ordering::Relaxed);
                                }
                                Ok(Some(Ok(_))) => {}
                                _ => break,
                            }
                        }
                        events.disconnect(&client, self.stats).await;
                    }
                    events.stop();
                    self.stats.connected.store(false, Ordering::Relaxed);
                    return Ok(End::Shutdown);
                }
            }
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
                    write_atomic(&self.token_path, token.as_bytes(), 0o600)?;
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

    fn maybe_renew(&mut self, client: &AsyncClient, published: &mut u64) -> Result<(), AgentError> {
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
            *published += 1;
            tracing::info!("certificate renewal requested (new key, CSR)");
            self.renewal = Renewal::Waiting {
                request_id: rid,
                key_pem: key.to_pem(),
                deadline: tokio::time::Instant::now() + self.cfg.credentials.request_timeout,
            };
        }
        Ok(())
    }

    fn request_token(&mut self, client: &AsyncClient, published: &mut u64) {
        let rid = request_id();
        let body = json!({ "request_id": rid }).to_string();
        if client
            .try_publish(self.topic("token/request"), QoS::AtLeastOnce, false, body)
            .is_ok()
        {
            *published += 1;
            self.token_request = Some(rid);
            self.token_refresh_at = Some(tokio::time::Instant::now() + Duration::from_secs(30));
        }
    }

    fn maybe_refresh_token(&mut self, client: &AsyncClient, published: &mut u64) {
        if self.cfg.tokens.enabled
            && self
                .token_refresh_at
                .is_some_and(|t| tokio::time::Instant::now() >= t)
        {
            self.request_token(client, published);
        }
    }
}

/// The MQTT event loop, polled to completion in its own task: rumqttc's connect is not
/// cancel-safe, so it must never sit in a `select!` beside timers. Errors are reported and
/// followed by a backoff sleep (exponential, full jitter) before the next attempt.
struct EventTask {
    rx: mpsc::Receiver<Result<Event, String>>,
    handle: tokio::task::JoinHandle<()>,
}

impl EventTask {
    fn spawn(mut eventloop: EventLoop, cfg: &AgentConfig) -> EventTask {
        let (tx, rx) = mpsc::channel(256);
        let (initial, max) = (cfg.reconnect.initial_backoff, cfg.reconnect.max_backoff);
        let handle = tokio::spawn(async move {
            let mut failures: u32 = 0;
            loop {
                match eventloop.poll().await {
                    Ok(ev) => {
                        if matches!(ev, Event::Incoming(Packet::ConnAck(_))) {
                            failures = 0;
                        }
                        if tx.send(Ok(ev)).await.is_err() {
                            return;
                        }
                    }
                    Err(e) => {
                        let delay = backoff(failures, initial, max);
                        failures = failures.saturating_add(1);
                        let why = explain(&e);
                        tracing::warn!(error = %why, retry_in = ?delay, attempt = failures, "connection to the hub failed");
                        if tx.send(Err(why)).await.is_err() {
                            return;
                        }
                        tokio::time::sleep(delay).await;
                    }
                }
            }
        });
        EventTask { rx, handle }
    }

    /// Sends DISCONNECT and waits (up to 3 s) until it is out, then stops the task.
    async fn disconnect(&mut self, client: &AsyncClient, stats: &AgentStats) {
        let _ = client.try_disconnect();
        let _ = tokio::time::timeout(Duration::from_secs(3), async {
            while let Some(ev) = self.rx.recv().await {
                match ev {
                    Ok(Event::Incoming(Packet::PubAck(_))) => {
                        stats.acknowledged.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(Event::Outgoing(rumqttc::Outgoing::Disconnect)) | Err(_) => break,
                    Ok(_) => {}
                }
            }
        })
        .await;
        self.stop();
        stats.connected.store(false, Ordering::Relaxed);
    }

    fn stop(&self) {
        self.handle.abort();
    }
}

impl Drop for EventTask {
    fn drop(&mut self) {
        self.handle.abort();
    }
}

/// Fleet provisioning: connect with the claim certificate, send a CSR for a key made here,
/// and store the device certificate the hub returns. Returns false on shutdown.
async fn provision(
    cfg: &AgentConfig,
    p: &ProvisioningSection,
    creds: &Credentials,
    shutdown: &CancellationToken,
) -> Result<bool, AgentError> {
    let claim = Pair {
        cert: cfg.resolve(&p.claim_cert),
        key: cfg.resolve(&p.claim_key),
    };
    if !claim.exists() {
        return Err(AgentError::Tls(format!(
            "provisioning needs the claim certificate {} and key {}",
            claim.cert.display(),
            claim.key.display()
        )));
    }
    let client_id = p.serial_number.as_str();
    let request_topic = format!("$rampart/provision/{client_id}/request");
    let response_topic = format!("$rampart/provision/{client_id}/response");
    let alg: KeyAlgorithm = cfg
        .credentials
        .key_algorithm
        .parse()
        .map_err(AgentError::Tls)?;
    let mut failures: u32 = 0;
    tracing::info!(serial = %p.serial_number, "no device certificate yet: provisioning with the claim certificate");
    loop {
        // The key is made here and never leaves the device: only its CSR is sent.
        let key = PrivateKey::generate(alg).map_err(|e| AgentError::Tls(e.to_string()))?;
        let csr = create_csr(&p.serial_number, &key).map_err(|e| AgentError::Tls(e.to_string()))?;
        let rid = request_id();
        let (client, mut eventloop) = mqtt_client(cfg, &claim, client_id, None)?;
        let outcome: Result<(String, String), String> = loop {
            let ev = tokio::select! {
                ev = eventloop.poll() => ev,
                _ = shutdown.cancelled() => return Ok(false),
            };
            match ev {
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    let _ = client.try_subscribe(response_topic.as_str(), QoS::AtLeastOnce);
                }
                Ok(Event::Incoming(Packet::SubAck(_))) => {
                    let body = json!({
                        "request_id": rid,
                        "serial_number": p.serial_number,
                        "csr": csr,
                        "attributes": p.attributes,
                    });
                    let _ = client.try_publish(
                        request_topic.as_str(),
                        QoS::AtLeastOnce,
                        false,
                        body.to_string(),
                    );
                }
                Ok(Event::Incoming(Packet::Publish(m))) if m.topic == response_topic => {
                    match serde_json::from_slice::<Answer>(&m.payload) {
                        Ok(a) if a.request_id == rid && a.status == "accepted" => match a
                            .certificate
                        {
                            Some(c) => break Ok((c, key.to_pem())),
                            None => break Err("the hub accepted but sent no certificate".into()),
                        },
                        Ok(a) if a.request_id == rid => {
                            break Err(a.reason.unwrap_or_else(|| "rejected".into()));
                        }
                        _ => {}
                    }
                }
                Ok(_) => {}
                Err(e) => break Err(explain(&e)),
            }
        };
        let _ = client.try_disconnect();
        match outcome {
            Ok((cert, key_pem)) => {
                creds.store_pending(&cert, &key_pem)?;
                creds.promote()?;
                let id = creds.current.info()?.common_name.unwrap_or_default();
                tracing::info!(device = %id, "provisioned: device certificate stored");
                return Ok(true);
            }
            Err(reason) => {
                let delay = backoff(
                    failures,
                    cfg.reconnect.initial_backoff.max(Duration::from_secs(5)),
                    cfg.reconnect.max_backoff,
                );
                failures = failures.saturating_add(1);
                tracing::error!(%reason, retry_in = ?delay, "provisioning rejected");
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = shutdown.cancelled() => return Ok(false),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_is_capped_with_jitter() {
        let i = Duration::from_secs(1);
        let m = Duration::from_secs(60);
        for f in 0..30 {
            let d = backoff(f, i, m);
            let base = (i * 2u32.pow(f.min(6))).min(m);
            assert!(
                d >= base / 2 && d <= base,
                "failure {f}: {d:?} vs base {base:?}"
            );
        }
        let samples: std::collections::HashSet<u128> =
            (0..20).map(|_| backoff(3, i, m).as_millis()).collect();
        assert!(samples.len() > 1);
    }
}
