//! The broker's hooks, backed by the store.
//!
//! - CONNECT: the certificate's CN must be a registered, active device and the certificate
//!   itself must be registered for it (a certificate signed by the CA but never recorded — a
//!   leaked CA key, a test certificate — does not get in).
//! - PUBLISH on `devices/{id}/telemetry`: the payload must be a valid telemetry document; it is
//!   queued for group commit and the PUBACK waits for the commit.
//! - Connection events update `last_seen` in batches.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use parking_lot::Mutex;
use rampart_bms::TelemetryMessage;
use rampart_broker::{ConnectRequest, Durable, Hooks, Refusal, RefusalReason};
use rampart_mqtt::Publish;
use rampart_policy::{DEVICE_TOPIC_ROOT, Identity, IdentityKind};
use rampart_store::{CertificateUsage, IngestQueue, Seen, Store, TelemetryRow};
use time::OffsetDateTime;

use crate::identity::Authenticator;
use crate::server_topics::ServerTopics;

/// Suffix of the telemetry topic under a device's namespace.
pub const TELEMETRY_SUFFIX: &str = "/telemetry";

pub(crate) struct HubHooks {
    pub store: Arc<dyn Store>,
    pub ingest: IngestQueue,
    pub seen: Arc<SeenBatcher>,
    pub auth: Arc<Authenticator>,
    pub server: Arc<ServerTopics>,
}

/// The device id of a telemetry topic `devices/{id}/telemetry`.
fn telemetry_device(topic: &str) -> Option<&str> {
    topic
        .strip_prefix(DEVICE_TOPIC_ROOT)?
        .strip_suffix(TELEMETRY_SUFFIX)
        .filter(|id| !id.is_empty() && !id.contains('/'))
}

/// Builds the stored row from a validated telemetry document.
pub(crate) fn telemetry_row(device_id: &str, msg: &TelemetryMessage, body: String) -> TelemetryRow {
    let r = &msg.reading;
    let cells = r.cell_range();
    let temps = r.temperature_range();
    TelemetryRow {
        device_id: device_id.to_owned(),
        // validate() guarantees seq fits in i64.
        seq: i64::try_from(msg.seq).unwrap_or(i64::MAX),
        ts: r.ts,
        received_at: OffsetDateTime::now_utc(),
        voltage_v: Some(r.pack.voltage.0),
        current_a: Some(r.pack.current.0),
        soc_pct: Some(r.pack.soc.0),
        soh_pct: r.pack.soh.map(|p| p.0),
        temp_min_c: temps.map(|t| t.0.0),
        temp_max_c: temps.map(|t| t.1.0),
        cell_min_v: cells.map(|c| c.0.0),
        cell_max_v: cells.map(|c| c.1.0),
        alarms: r.alarms.iter().map(|a| a.as_str().to_owned()).collect(),
        body,
    }
}

#[async_trait]
impl Hooks for HubHooks {
    async fn authenticate(&self, req: &ConnectRequest<'_>) -> Result<Identity, Refusal> {
        let identity = self.auth.authenticate(req).await?;
        self.seen.used(&identity);
        Ok(identity)
    }

    async fn on_publish(
        &self,
        identity: &Identity,
        publish: &Publish,
    ) -> Result<Option<Durable>, Refusal> {
        if self.server.dispatch(identity, publish) {
            return Ok(None);
        }
        let Some(device_id) = telemetry_device(&publish.topic) else {
            return Ok(None);
        };
        let msg = TelemetryMessage::parse(&publish.payload)
            .map_err(|e| Refusal::new(RefusalReason::PayloadInvalid, e.to_string()))?;
        let body = String::from_utf8_lossy(&publish.payload).into_owned();
        let row = telemetry_row(device_id, &msg, body);
        let ticket = self
            .ingest
            .submit(row)
            .await
            .map_err(|e| Refusal::new(RefusalReason::StorageFailed, e.to_string()))?;
        Ok(Some(Box::pin(async move {
            ticket.await.map_err(|e| e.to_string())
        })))
    }

    async fn persist_retained(&self, topic: &str, message: Option<Vec<u8>>) -> Result<(), String> {
        self.store
            .put_retained(topic, message.as_deref())
            .await
            .map_err(|e| e.to_string())
    }

    async fn on_connection_change(
        &self,
        identity: &Identity,
        address: SocketAddr,
        _connected: bool,
    ) {
        if identity.kind == IdentityKind::Device {
            self.seen.record(&identity.id, address);
        }
    }
}

/// Coalesces "device seen" updates and certificate usage, and writes them once a second, so
/// a connect storm does not become a write storm.
#[derive(Default)]
pub(crate) struct SeenBatcher {
    pending: Mutex<HashMap<String, (OffsetDateTime, String)>>,
    usage: Mutex<HashMap<(String, String), OffsetDateTime>>,
}

impl SeenBatcher {
    fn record(&self, device_id: &str, address: SocketAddr) {
        self.pending.lock().insert(
            device_id.to_owned(),
            (OffsetDateTime::now_utc(), address.to_string()),
        );
    }

    fn used(&self, identity: &Identity) {
        self.usage.lock().insert(
            (
                identity.cert_fingerprint.to_string(),
                identity.client_id.to_string(),
            ),
            OffsetDateTime::now_utc(),
        );
    }

    /// Writes what is pending.
    pub(crate) async fn flush(&self, store: &dyn Store) {
        let batch: Vec<Seen> = self
            .pending
            .lock()
            .drain()
            .map(|(device_id, (at, address))| Seen {
                device_id,
                at,
                address,
            })
            .collect();
        if !batch.is_empty()
            && let Err(e) = store.record_seen_many(&batch).await
        {
            tracing::warn!(error = %e, devices = batch.len(), "could not record last-seen times");
        }
        let usage: Vec<CertificateUsage> = self
            .usage
            .lock()
            .drain()
            .map(|((fingerprint, client_id), at)| CertificateUsage {
                fingerprint,
                client_id,
                first_seen: at,
                last_seen: at,
            })
            .collect();
        if !usage.is_empty()
            && let Err(e) = store.record_certificate_usage(&usage).await
        {
            tracing::warn!(error = %e, "could not record certificate usage");
        }
    }

    /// Flushes every second until the task is dropped.
    pub(crate) async fn run(self: Arc<Self>, store: Arc<dyn Store>) {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tick.tick().await;
            self.flush(&*store).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn telemetry_topic() {
        assert_eq!(telemetry_device("devices/gw-1/telemetry"), Some("gw-1"));
        assert_eq!(telemetry_device("devices/gw-1/status"), None);
        assert_eq!(telemetry_device("devices//telemetry"), None);
        assert_eq!(telemetry_device("devices/a/b/telemetry"), None);
        assert_eq!(telemetry_device("other/gw-1/telemetry"), None);
    }
}
