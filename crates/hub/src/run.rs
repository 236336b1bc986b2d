//! Starting and stopping the hub.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use parking_lot::RwLock;
use rampart_broker::Broker;
use rampart_store::{
    AuditEntry, Batching, IngestQueue, PgOptions, PgStore, SqliteOptions, SqliteStore, Store,
};
use time::OffsetDateTime;
use tokio::net::{TcpListener, TcpSocket};
use tokio::task::JoinHandle;

use crate::audit;
use crate::config::HubConfig;
use crate::control;
use crate::datadir::DataDir;
use crate::device_api::{self, ApiMetrics, ApiState};
use crate::error::HubError;
use crate::hooks::{HubHooks, SeenBatcher};
use crate::identity::Authenticator;
use crate::live::Live;
use crate::metrics::{self, AuditCounts, DeadlineCounts, EventCounters, MetricsSnapshot};
use crate::pki_state;
use crate::policies;
use crate::provision_hook::Hook;
use crate::server_topics::{ServerTopicConfig, ServerTopics};

/// A running hub.
pub struct Hub {
    broker: Broker,
    store: Arc<dyn Store>,
    ingest: IngestQueue,
    seen: Arc<SeenBatcher>,
    mqtt_addr: SocketAddr,
    metrics_addr: Option<SocketAddr>,
    api_addr: Option<SocketAddr>,
    serve: JoinHandle<std::io::Result<()>>,
    background: Vec<JoinHandle<()>>,
    socket_path: std::path::PathBuf,
    snapshot: Arc<dyn Fn() -> MetricsSnapshot + Send + Sync>,
}

impl std::fmt::Debug for Hub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hub")
            .field("mqtt_addr", &self.mqtt_addr)
            .field("metrics_addr", &self.metrics_addr)
            .field("api_addr", &self.api_addr)
            .finish_non_exhaustive()
    }
}

/// Opens the store a configuration names, installing the built-in policies in a new one.
pub async fn open_store(dir: &DataDir, cfg: &HubConfig) -> Result<Arc<dyn Store>, HubError> {
    let store: Arc<dyn Store> = match cfg.storage.backend.as_str() {
        "postgres" => {
            let opts = PgOptions {
                url: cfg.storage.postgres_url.clone(),
                schema: cfg.storage.postgres_schema.clone(),
                max_connections: cfg.storage.postgres_max_connections,
            };
            Arc::new(PgStore::open(&opts).await?)
        }
        _ => {
            let mut opts = SqliteOptions::new(dir.resolve(&cfg.storage.sqlite_path));
            opts.synchronous = cfg.synchronous().map_err(HubError::Invalid)?;
            opts.writer_nice = cfg.storage.telemetry_writer_nice;
            Arc::new(SqliteStore::open(&opts).await?)
        }
    };
    if policies::install_builtin(&*store).await? {
        tracing::info!(
            "installed the built-in policies: fleet-default (fleet), quarantine, provisioning (claims)"
        );
    }
    Ok(store)
}

/// A node name for a cluster member that did not set one: host name and process id, which
/// differ between the nodes of one cluster.
fn default_node_name() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .unwrap_or_default()
        .trim()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '_'
            }
        })
        .take(40)
        .collect::<String>();
    let host = if host.is_empty() { "hub".into() } else { host };
    format!("{host}-{}", std::process::id())
}

/// Connections the kernel completes and queues for a listener before the hub accepts them
/// (capped by `net.core.somaxconn`). `TcpListener::bind` asks for 128: a fleet reconnecting
/// at once (after an outage, or the 256 handshakes in flight of `rampart bench compare`'s
/// storm) overflowed it while the hub was busy, and each connection refused that way waited
/// a second for its SYN to be sent again (TcpExtListenOverflows in `nstat`).
const LISTEN_BACKLOG: u32 = 1024;

fn bind(addr: &str, what: &str) -> Result<Option<(TcpListener, SocketAddr)>, HubError> {
    if addr.is_empty() {
        return Ok(None);
    }
    let a: SocketAddr = addr
        .parse()
        .map_err(|e| HubError::Invalid(format!("{what}: {e}")))?;
    let bind_err = |source| HubError::Bind {
        addr: a.to_string(),
        source,
    };
    let socket = if a.is_ipv4() {
        TcpSocket::new_v4()
    } else {
        TcpSocket::new_v6()
    }
    .map_err(bind_err)?;
    // As `TcpListener::bind` does: a restarted hub binds its port again at once.
    socket.set_reuseaddr(true).map_err(bind_err)?;
    socket.bind(a).map_err(bind_err)?;
    let l = socket.listen(LISTEN_BACKLOG).map_err(bind_err)?;
    let bound = l.local_addr().map_err(bind_err)?;
    Ok(Some((l, bound)))
}

impl Hub {
    /// Starts the hub of `dir`: store, policy engine, broker, MQTT/TLS listener, device API,
    /// metrics endpoint, control socket and background tasks. `listen` overrides `mqtt.listen`.
    pub async fn start(
        dir: &DataDir,
        cfg: HubConfig,
        listen: Option<SocketAddr>,
    ) -> Result<Hub, HubError> {
        let store = open_store(dir, &cfg).await?;
        let engine = Arc::new(policies::load_engine(&*store, &cfg).await?);
        let auth = Arc::new(
            Authenticator::new(store.clone(), engine.clone(), cfg.policy.quarantine.clone())
                .await?,
        );
        let ingest = IngestQueue::spawn(
            store.clone(),
            cfg.storage.ingest_queue,
            Batching {
                max_rows: cfg.storage.ingest_batch,
                max_unacknowledged_rows: cfg.storage.qos0_ingest_batch,
                linger: Duration::from_millis(cfg.storage.qos0_commit_delay_ms),
                waited_delay: Duration::from_millis(cfg.storage.qos1_commit_delay_ms),
            },
        );
        let seen = Arc::new(SeenBatcher::default());
        let ca = Arc::new(dir.device_ca(&cfg)?);
        let token_key = Arc::new(pki_state::token_key(dir, &cfg)?);
        if !dir.resolve(&cfg.pki.crl_file).exists() {
            pki_state::publish_crl(dir, &cfg, &*store).await?;
        }
        let tls = pki_state::tls_config(dir, &cfg, &*store).await?;
        let tls_holder = Arc::new(RwLock::new(tls.clone()));

        let hook = if !cfg.provisioning.hook_command.is_empty() {
            Some(Hook::Command(cfg.provisioning.hook_command.clone()))
        } else if !cfg.provisioning.hook_url.is_empty() {
            Some(Hook::Url {
                url: cfg.provisioning.hook_url.clone(),
                ca: (!cfg.provisioning.hook_ca.as_os_str().is_empty())
                    .then(|| dir.resolve(&cfg.provisioning.hook_ca)),
            })
        } else {
            None
        };
        let ca_chain_pem =
            std::fs::read_to_string(dir.resolve(&cfg.pki.root_ca_cert)).map_err(|source| {
                HubError::Io {
                    path: dir.resolve(&cfg.pki.root_ca_cert),
                    source,
                }
            })?;
        let server = Arc::new(ServerTopics {
            store: store.clone(),
            engine: engine.clone(),
            ca,
            token_key: token_key.clone(),
            config: ServerTopicConfig {
                cert_lifetime: cfg.device_cert_lifetime().map_err(HubError::Invalid)?,
                renewal: cfg.pki.renewal,
                rotation_overlap: cfg.rotation_overlap().map_err(HubError::Invalid)?,
                token_lifetime: cfg.token_lifetime().map_err(HubError::Invalid)?,
                allowlist: cfg.provisioning.allowlist,
                hook,
                hook_timeout: cfg.hook_timeout().map_err(HubError::Invalid)?,
                ca_chain_pem,
            },
            broker: OnceLock::new(),
        });
        let event_counters = Arc::new(EventCounters::default());
        let rollouts = crate::rollouts::Engine::new(store.clone());
        let hooks = Arc::new(HubHooks {
            rollouts: rollouts.clone(),
            store: store.clone(),
            ingest: ingest.clone(),
            seen: seen.clone(),
            auth: auth.clone(),
            server: server.clone(),
            events_received: event_counters.clone(),
        });
        let broker = Broker::new(cfg.broker_config(), tls, hooks, engine.clone());
        // Set once, right after construction: the handlers publish their answers through it.
        let _ = server.broker.set(broker.clone());
        let _ = rollouts.broker.set(broker.clone());
        let loaded = broker.load_retained(store.retained().await?);
        let cluster = match cfg.cluster.nats_url.as_str() {
            "" => None,
            url => {
                let node = if cfg.cluster.node.is_empty() {
                    default_node_name()
                } else {
                    cfg.cluster.node.clone()
                };
                let (c, rx) = rampart_cluster::Cluster::connect(&rampart_cluster::ClusterConfig {
                    url: url.to_owned(),
                    cluster: cfg.cluster.name.clone(),
                    node,
                    queue: cfg.cluster.queue,
                    session_queue: i64::try_from(cfg.mqtt.max_queued_messages).unwrap_or(i64::MAX),
                    session_max_age: Duration::from_secs(cfg.mqtt.max_session_expiry_s.max(1)),
                })
                .await?;
                broker.set_peers(Arc::new(crate::cluster::Forward::new(c.clone())));
                auth.set_peers(c.clone());
                Some((c, rx))
            }
        };

        let listen_addr = match listen {
            Some(a) => a.to_string(),
            None => cfg.mqtt.listen.clone(),
        };
        let Some((listener, mqtt_addr)) = bind(&listen_addr, "mqtt.listen")? else {
            return Err(HubError::Invalid("mqtt.listen is empty".into()));
        };

        let api_metrics = Arc::new(ApiMetrics::default());
        let audit_counts = Arc::new(AuditCounts::default());
        let deadline_counts = Arc::new(DeadlineCounts::default());
        let snapshot: Arc<dyn Fn() -> MetricsSnapshot + Send + Sync> = {
            let m = broker.metrics();
            let stats = ingest.stats().clone();
            let api = api_metrics.clone();
            let counts = audit_counts.clone();
            let events = event_counters.clone();
            let deadlines = deadline_counts.clone();
            let rc = rollouts.counters.clone();
            let cs = cluster.as_ref().map(|(c, _)| c.stats()).unwrap_or_default();
            Arc::new(move || {
                metrics::snapshot(&m, &stats, &api, &counts, &events, &deadlines, &rc, &cs)
            })
        };
        let mut background = Vec::new();
        let metrics_addr = match bind(&cfg.metrics.listen, "metrics.listen")? {
            None => None,
            Some((l, bound)) => {
                let snap = snapshot.clone();
                let app = axum::Router::new()
                    .route(
                        "/metrics",
                        axum::routing::get(move || {
                            let s = snap();
                            async move {
                                (
                                    [("content-type", "text/plain; version=0.0.4")],
                                    metrics::render(&s),
                                )
                            }
                        }),
                    )
                    .route("/healthz", axum::routing::get(|| async { "ok\n" }));
                background.push(tokio::spawn(async move {
                    if let Err(e) = axum::serve(l, app).await {
                        tracing::error!(error = %e, "metrics endpoint stopped");
                    }
                }));
                Some(bound)
            }
        };
        let api_addr = match bind(&cfg.device_api.listen, "device_api.listen")? {
            None => None,
            Some((l, bound)) => {
                background.push(tokio::spawn(device_api::serve(
                    l,
                    tls_holder.clone(),
                    Arc::new(ApiState {
                        auth: auth.clone(),
                        token_key,
                        metrics: api_metrics.clone(),
                        updates: dir.resolve(&cfg.updates.repository).join("repository"),
                    }),
                )));
                Some(bound)
            }
        };

        let live = Arc::new(Live {
            dir: dir.clone(),
            cfg: cfg.clone(),
            broker: broker.clone(),
            store: store.clone(),
            engine,
            auth,
            tls: tls_holder,
            snapshot: snapshot.clone(),
            rollouts: rollouts.clone(),
            cluster: cluster.as_ref().map(|(c, _)| c.clone()),
        });
        if let Some((c, rx)) = cluster {
            background.push(tokio::spawn(crate::cluster::receive(rx, live.clone())));
            background.push(tokio::spawn(crate::cluster::watch_sessions(
                c,
                broker.clone(),
            )));
        }
        // Rollouts that were running when the hub stopped carry on.
        background.push(tokio::spawn(async move { rollouts.evaluate_all().await }));
        let socket_path = dir.socket_path();
        let control_listener = control::bind(&socket_path).await?;
        background.push(tokio::spawn(control::serve(control_listener, live.clone())));
        background.push(tokio::spawn(seen.clone().run(store.clone())));
        background.push(tokio::spawn(retire_certificates(live.clone())));
        background.push(tokio::spawn(refresh_crl(live.clone())));
        background.push(tokio::spawn(scheduled_deadline_check(
            live.clone(),
            deadline_counts,
        )));
        background.push(tokio::spawn(scheduled_update_refresh(live.clone())));
        background.push(tokio::spawn(scheduled_audit(live, audit_counts)));

        let serve = {
            let broker = broker.clone();
            tokio::spawn(async move { broker.serve(listener).await })
        };
        tracing::info!(
            mqtt = %mqtt_addr,
            device_api = %api_addr.map(|a| a.to_string()).unwrap_or_else(|| "off".into()),
            metrics = %metrics_addr.map(|a| a.to_string()).unwrap_or_else(|| "off".into()),
            database = %store.location(),
            retained = loaded,
            "hub started"
        );
        Ok(Hub {
            broker,
            store,
            ingest,
            seen,
            mqtt_addr,
            metrics_addr,
            api_addr,
            serve,
            background,
            socket_path,
            snapshot,
        })
    }

    /// Address of the MQTT/TLS listener.
    pub fn mqtt_addr(&self) -> SocketAddr {
        self.mqtt_addr
    }

    /// Address of the Prometheus endpoint, if enabled.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_addr
    }

    /// Address of the device HTTPS API, if enabled.
    pub fn api_addr(&self) -> Option<SocketAddr> {
        self.api_addr
    }

    pub fn store(&self) -> Arc<dyn Store> {
        self.store.clone()
    }

    pub fn broker(&self) -> &Broker {
        &self.broker
    }

    /// Current counters.
    pub fn snapshot(&self) -> MetricsSnapshot {
        (self.snapshot)()
    }

    /// Completes if the listener fails (it never ends on its own otherwise).
    pub async fn wait(&mut self) -> Result<(), HubError> {
        match (&mut self.serve).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(source)) => Err(HubError::Bind {
                addr: self.mqtt_addr.to_string(),
                source,
            }),
            Err(e) => Err(HubError::Invalid(format!("listener task failed: {e}"))),
        }
    }

    /// Graceful stop: no new connections, clients told the hub is shutting down, queued
    /// telemetry committed, last-seen times written.
    pub async fn stop(self) {
        self.broker.shutdown();
        let _ = tokio::time::timeout(Duration::from_secs(5), self.serve).await;
        let m = self.broker.metrics();
        for _ in 0..50 {
            if m.connections_active.load(Ordering::Relaxed) == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let stats = self.ingest.stats().clone();
        for _ in 0..50 {
            let done =
                stats.committed.load(Ordering::Relaxed) + stats.failed.load(Ordering::Relaxed);
            if done >= stats.submitted.load(Ordering::Relaxed) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        self.seen.flush(&*self.store).await;
        for t in self.background {
            t.abort();
        }
        let _ = std::fs::remove_file(&self.socket_path);
        self.store.close().await;
        tracing::info!("hub stopped");
    }
}

/// Retires certificates whose renewal overlap window has ended and closes sessions still using
/// them.
async fn retire_certificates(live: Arc<Live>) {
    let mut tick = tokio::time::interval(Duration::from_secs(2));
    loop {
        tick.tick().await;
        let retired = match live.store.retire_due(OffsetDateTime::now_utc()).await {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(error = %e, "could not retire certificates");
                continue;
            }
        };
        for c in retired {
            let n = live.broker.disconnect_where(
                |i| *i.cert_serial == *c.serial,
                "certificate retired after renewal",
            );
            tracing::info!(device = %c.device_id, serial = %c.serial, connections = n, "certificate retired after its renewal overlap window");
            let _ = live
                .store
                .audit(&AuditEntry {
                    at: OffsetDateTime::now_utc(),
                    actor: "hub".into(),
                    action: "certificate.retire".into(),
                    subject: c.device_id.clone(),
                    detail: format!("certificate {} retired after renewal", c.serial),
                })
                .await;
        }
    }
}

/// Re-signs the CRL when half of its validity has passed.
async fn refresh_crl(live: Arc<Live>) {
    let Ok(validity) = live.cfg.crl_validity() else {
        return;
    };
    let path = live.dir.resolve(&live.cfg.pki.crl_file);
    let mut tick = tokio::time::interval(Duration::from_secs(60));
    loop {
        tick.tick().await;
        let age = std::fs::metadata(&path)
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok());
        if age.is_some_and(|a| a < validity / 2) {
            continue;
        }
        match pki_state::publish_crl(&live.dir, &live.cfg, &*live.store).await {
            Ok(_) => {
                if let Err(e) = live.trust_changed().await {
                    tracing::error!(error = %e, "could not load the new CRL");
                }
            }
            Err(e) => tracing::error!(error = %e, "could not re-sign the CRL"),
        }
    }
}

/// Checks the Article 14 deadlines of open reports every `cra.deadline_check_interval`:
/// `compliance::report_check` logs and records each new warning once; the gauges say how
/// many stages are due soon or overdue right now.
async fn scheduled_deadline_check(live: Arc<Live>, counts: Arc<DeadlineCounts>) {
    let Ok((interval, warning)) = live.cfg.cra_deadlines() else {
        return;
    };
    let Ok(warning) = time::Duration::try_from(warning) else {
        return;
    };
    let mut tick = tokio::time::interval(interval);
    loop {
        tick.tick().await;
        match crate::compliance::report_check(&*live.store, OffsetDateTime::now_utc(), warning)
            .await
        {
            Ok(warnings) => counts.set(&warnings),
            Err(e) => tracing::error!(error = %e, "Article 14 deadline check failed"),
        }
    }
}

/// Re-signs the update repository's timestamp (and snapshot) with the online keys before
/// they expire, every `updates.refresh_interval`. Nothing happens until the first
/// `rampart release publish`.
async fn scheduled_update_refresh(live: Arc<Live>) {
    let (Ok(interval), Ok(exp)) = (
        live.cfg.updates_refresh_interval(),
        live.cfg.update_expiries(),
    ) else {
        return;
    };
    let release =
        rampart_update::release::ReleaseDir::new(&live.dir.resolve(&live.cfg.updates.repository));
    let mut tick = tokio::time::interval(interval);
    loop {
        tick.tick().await;
        if !release.is_initialised() {
            continue;
        }
        let r = release.clone();
        let done =
            tokio::task::spawn_blocking(move || r.refresh_online(OffsetDateTime::now_utc(), &exp))
                .await;
        match done {
            Ok(Ok(Some(v))) => tracing::info!(version = v, "update timestamp re-signed"),
            Ok(Ok(None)) => {}
            Ok(Err(e)) => {
                tracing::error!(error = %e, "could not re-sign the update timestamp; devices will refuse it once it expires")
            }
            Err(e) => tracing::error!(error = %e, "update timestamp task failed"),
        }
    }
}

/// The longest the first scheduled audit waits after the hub starts.
///
/// A restart is followed by every device reconnecting at once, and the audit reads the whole
/// registry on the hub's core: with 10,000 devices, a run at start added about a third to
/// the hub's CPU per connection in a 2,000-connection storm (450–490 µs against 310–360,
/// docs/benchmarks.md). Waiting a minute lets the reconnections go first.
pub(crate) const FIRST_AUDIT_DELAY: Duration = Duration::from_secs(60);

/// When the first scheduled audit runs, after the start: one interval, at most
/// [`FIRST_AUDIT_DELAY`].
pub(crate) fn first_audit_delay(interval: Duration) -> Duration {
    interval.min(FIRST_AUDIT_DELAY)
}

/// Runs the identity audit every `audit.interval`, the first time
/// [`first_audit_delay`] after the start, and reports what it finds.
async fn scheduled_audit(live: Arc<Live>, counts: Arc<AuditCounts>) {
    let Ok(interval) = live.cfg.audit_interval() else {
        return;
    };
    let first = tokio::time::Instant::now() + first_audit_delay(interval);
    let mut tick = tokio::time::interval_at(first, interval);
    loop {
        tick.tick().await;
        let connected = live.broker.connected_identities();
        match audit::run(&live.dir, &live.cfg, &*live.store, Some(&connected)).await {
            Ok(findings) => {
                counts.set(&findings);
                tracing::info!(
                    findings = findings.len(),
                    identities_connected = connected.len(),
                    "scheduled audit done"
                );
                for f in &findings {
                    tracing::warn!(check = %f.check, severity = ?f.severity, subject = %f.subject, message = %f.message, hint = %f.hint, "audit finding");
                }
            }
            Err(e) => tracing::error!(error = %e, "audit failed"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_audit_waits_one_interval_but_at_most_a_minute() {
        assert_eq!(
            first_audit_delay(Duration::from_secs(3)),
            Duration::from_secs(3)
        );
        assert_eq!(
            first_audit_delay(Duration::from_secs(24 * 3600)),
            FIRST_AUDIT_DELAY
        );
    }
}
