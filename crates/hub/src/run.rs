//! Starting and stopping the hub.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rampart_broker::Broker;
use rampart_broker::tls::{TlsMaterial, server_config};
use rampart_policy::DeviceNamespace;
use rampart_store::{IngestQueue, SqliteOptions, SqliteStore, Store};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::config::HubConfig;
use crate::control;
use crate::datadir::DataDir;
use crate::error::HubError;
use crate::hooks::{HubHooks, SeenBatcher};
use crate::metrics::{self, MetricsSnapshot};

/// A running hub.
pub struct Hub {
    broker: Broker,
    store: Arc<SqliteStore>,
    ingest: IngestQueue,
    seen: Arc<SeenBatcher>,
    mqtt_addr: SocketAddr,
    metrics_addr: Option<SocketAddr>,
    serve: JoinHandle<std::io::Result<()>>,
    background: Vec<JoinHandle<()>>,
    socket_path: std::path::PathBuf,
}

impl std::fmt::Debug for Hub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hub")
            .field("mqtt_addr", &self.mqtt_addr)
            .field("metrics_addr", &self.metrics_addr)
            .finish_non_exhaustive()
    }
}

/// Opens the store a configuration names.
pub async fn open_store(dir: &DataDir, cfg: &HubConfig) -> Result<SqliteStore, HubError> {
    let mut opts = SqliteOptions::new(dir.resolve(&cfg.storage.sqlite_path));
    opts.synchronous = cfg.synchronous().map_err(HubError::Invalid)?;
    Ok(SqliteStore::open(&opts).await?)
}

impl Hub {
    /// Starts the hub of `dir`: store, broker, MQTT/TLS listener, metrics endpoint and control
    /// socket. `listen` overrides `mqtt.listen`.
    pub async fn start(
        dir: &DataDir,
        cfg: HubConfig,
        listen: Option<SocketAddr>,
    ) -> Result<Hub, HubError> {
        let store = Arc::new(open_store(dir, &cfg).await?);
        let dyn_store: Arc<dyn Store> = store.clone();
        let ingest = IngestQueue::spawn(
            dyn_store.clone(),
            cfg.storage.ingest_queue,
            cfg.storage.ingest_batch,
        );
        let seen = Arc::new(SeenBatcher::default());
        let hooks = Arc::new(HubHooks {
            store: dyn_store.clone(),
            ingest: ingest.clone(),
            seen: seen.clone(),
        });
        let broker = Broker::new(cfg.broker_config(), hooks, Arc::new(DeviceNamespace));
        let retained = store.retained().await?;
        let loaded = broker.load_retained(retained);

        let tls = server_config(TlsMaterial::from_pem_files(
            &dir.resolve(&cfg.tls.server_cert),
            &dir.resolve(&cfg.tls.server_key),
            &dir.resolve(&cfg.tls.client_ca),
        )?)?;
        let addr: SocketAddr = match listen {
            Some(a) => a,
            None => cfg
                .mqtt
                .listen
                .parse()
                .map_err(|e| HubError::Invalid(format!("mqtt.listen: {e}")))?,
        };
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| HubError::Bind {
                addr: addr.to_string(),
                source,
            })?;
        let mqtt_addr = listener.local_addr().map_err(|source| HubError::Bind {
            addr: addr.to_string(),
            source,
        })?;

        let snapshot: Arc<dyn Fn() -> MetricsSnapshot + Send + Sync> = {
            let m = broker.metrics();
            let stats = ingest.stats().clone();
            Arc::new(move || metrics::snapshot(&m, &stats))
        };
        let mut background = Vec::new();
        let metrics_addr = if cfg.metrics.listen.is_empty() {
            None
        } else {
            let maddr: SocketAddr = cfg
                .metrics
                .listen
                .parse()
                .map_err(|e| HubError::Invalid(format!("metrics.listen: {e}")))?;
            let l = TcpListener::bind(maddr)
                .await
                .map_err(|source| HubError::Bind {
                    addr: maddr.to_string(),
                    source,
                })?;
            let bound = l.local_addr().ok();
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
            bound
        };

        let socket_path = dir.socket_path();
        let control_listener = control::bind(&socket_path).await?;
        background.push(tokio::spawn(control::serve(
            control_listener,
            Arc::new(control::Handler {
                broker: broker.clone(),
                store: dyn_store.clone(),
                snapshot,
            }),
        )));
        background.push(tokio::spawn(seen.clone().run(dyn_store.clone())));

        let serve = {
            let broker = broker.clone();
            let tls = tls.clone();
            tokio::spawn(async move { broker.serve(listener, tls).await })
        };
        tracing::info!(
            mqtt = %mqtt_addr,
            metrics = %metrics_addr.map(|a| a.to_string()).unwrap_or_else(|| "off".into()),
            database = %store.path().display(),
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
            serve,
            background,
            socket_path,
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

    pub fn store(&self) -> Arc<dyn Store> {
        self.store.clone()
    }

    pub fn broker(&self) -> &Broker {
        &self.broker
    }

    /// Current counters.
    pub fn snapshot(&self) -> MetricsSnapshot {
        metrics::snapshot(&self.broker.metrics(), self.ingest.stats())
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
        // Let connection tasks finish their last acknowledgements.
        let m = self.broker.metrics();
        for _ in 0..50 {
            if m.connections_active
                .load(std::sync::atomic::Ordering::Relaxed)
                == 0
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let stats = self.ingest.stats().clone();
        for _ in 0..50 {
            use std::sync::atomic::Ordering::Relaxed;
            let done = stats.committed.load(Relaxed) + stats.failed.load(Relaxed);
            if done >= stats.submitted.load(Relaxed) {
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
