//! The broker's hooks, backed by the store.
//!
//! - CONNECT: the certificate's CN must be a registered, active device and the certificate
//!   itself must be registered for it (a certificate signed by the CA but never recorded — a
//!   leaked CA key, a test certificate — does not get in).
//! - PUBLISH on `devices/{id}/telemetry`: the payload must be a valid telemetry document or a
//!   batch of them (a JSON array, sent by agents draining a backlog); the rows are queued for
//!   group commit and the PUBACK waits for the commit of every one. At QoS 0 nothing waits:
//!   the rows are committed within the queue's linger (`storage.qos0_commit_delay_ms`). A
//!   full queue (`storage.ingest_queue`) holds the PUBLISH, and so its connection's reads,
//!   back until it has room: nothing is dropped.
//! - PUBLISH on `devices/{id}/events`: the payload must be a valid event document; it is
//!   stored before the PUBACK.
//! - PUBLISH on `devices/{id}/release`: `{"v":1,"product":"...","release":"..."}`, the release
//!   the agent runs; stored before the PUBACK (the fleet view joins it with SBOMs).
//! - Connection events update `last_seen` in batches.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use parking_lot::Mutex;
use rampart_bms::{Documents, EventMessage, TelemetryMessage};
use rampart_broker::{ConnectRequest, Durable, Hooks, Refusal, RefusalReason};
use rampart_mqtt::{Publish, QoS};
use rampart_policy::{DEVICE_TOPIC_ROOT, Identity, IdentityKind};
use rampart_store::{
    ByteString, CertificateUsage, EventRow, IngestQueue, Seen, Store, StoreError, TelemetryRow,
    Ticket,
};
use time::OffsetDateTime;

use crate::identity::Authenticator;
use crate::server_topics::ServerTopics;

/// Suffix of the telemetry topic under a device's namespace.
pub const TELEMETRY_SUFFIX: &str = "/telemetry";
/// Suffix of the events topic under a device's namespace.
pub const EVENTS_SUFFIX: &str = "/events";
/// Suffix of the release report topic under a device's namespace.
pub const RELEASE_SUFFIX: &str = "/release";

/// What an agent reports about the software it runs.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct ReleaseReport {
    v: u32,
    product: String,
    release: String,
}

pub(crate) struct HubHooks {
    pub store: Arc<dyn Store>,
    pub rollouts: Arc<crate::rollouts::Engine>,
    pub ingest: IngestQueue,
    pub seen: Arc<SeenBatcher>,
    pub auth: Arc<Authenticator>,
    pub server: Arc<ServerTopics>,
    pub events_received: Arc<crate::metrics::EventCounters>,
}

/// The device id of a topic `devices/{id}{suffix}`.
fn device_topic<'t>(topic: &'t str, suffix: &str) -> Option<&'t str> {
    topic
        .strip_prefix(DEVICE_TOPIC_ROOT)?
        .strip_suffix(suffix)
        .filter(|id| !id.is_empty() && !id.contains('/'))
}

/// The device id of a telemetry topic `devices/{id}/telemetry`.
fn telemetry_device(topic: &str) -> Option<&str> {
    device_topic(topic, TELEMETRY_SUFFIX)
}

/// A document's bytes as text, sharing the payload's memory rather than copied. The JSON
/// parser has read them whole, so they are UTF-8 and the check (much cheaper than a lossy
/// conversion's scan) passes; the lossy conversion stays for what it would not.
fn document_text(payload: &Bytes) -> ByteString {
    match ByteString::try_from(payload.clone()) {
        Ok(text) => text,
        Err(_) => String::from_utf8_lossy(payload).into_owned().into(),
    }
}

/// Builds the stored row from a validated telemetry document.
pub(crate) fn telemetry_row(
    device_id: ByteString,
    msg: &TelemetryMessage,
    body: ByteString,
) -> TelemetryRow {
    let cells = msg.cell_range();
    let temps = msg.temperature_range();
    let pack = msg.pack.clone().unwrap_or_default();
    TelemetryRow {
        device_id,
        // validate() guarantees seq fits in i64.
        seq: i64::try_from(msg.seq).unwrap_or(i64::MAX),
        ts: msg.ts,
        received_at: OffsetDateTime::now_utc(),
        voltage_v: pack.voltage_v.map(|v| v.0),
        current_a: pack.current_a.map(|v| v.0),
        soc_pct: pack.soc_pct.map(|v| v.0),
        soh_pct: pack.soh_pct.map(|v| v.0),
        temp_min_c: temps.map(|t| t.0.0),
        temp_max_c: temps.map(|t| t.1.0),
        cell_min_v: cells.map(|c| c.0.0),
        cell_max_v: cells.map(|c| c.1.0),
        alarms: msg
            .alarms
            .iter()
            .flatten()
            .map(|a| a.as_str().to_owned())
            .collect(),
        body,
    }
}

/// What became of a telemetry PUBLISH's rows.
enum Telemetry {
    /// Every row is queued: the answer for the broker.
    Queued(Option<Durable>),
    /// The queue was full: the rest of the rows wait for room in this future.
    WaitingForRoom(futures::future::BoxFuture<'static, Result<Option<Durable>, Refusal>>),
}

/// The tickets of a PUBLISH's rows. The first apart: a message holds one document nearly
/// always, and then no vector is allocated for it.
#[derive(Default)]
struct Tickets {
    first: Option<Ticket>,
    more: Vec<Ticket>,
}

impl Tickets {
    fn push(&mut self, ticket: Ticket) {
        if self.first.is_none() {
            self.first = Some(ticket);
        } else {
            self.more.push(ticket);
        }
    }

    /// The answer once every row is queued: at QoS 1 and 2, resolves once every ticket has.
    fn durable(self, acknowledged: bool) -> Option<Durable> {
        acknowledged.then(|| -> Durable {
            Box::pin(async move {
                for t in self.first.into_iter().chain(self.more) {
                    t.await.map_err(|e| e.to_string())?;
                }
                Ok(())
            })
        })
    }
}

fn storage_failed(e: StoreError) -> Refusal {
    Refusal::new(RefusalReason::StorageFailed, e.to_string())
}

impl HubHooks {
    /// Telemetry: one document or a batch; the PUBACK waits until every row is committed. At
    /// QoS 0 there is no PUBACK and nothing waits for the commit.
    ///
    /// Not async: the rows are queued while the queue has room, which is nearly always, and
    /// only a full queue makes a future (boxed) that waits for it. As an `async fn` this was
    /// part of `on_publish`'s future, whose every state the broker's call boxes: that future
    /// held the parsed document and a row and was copied whole into its box for every
    /// PUBLISH (1.6% of the hub's CPU at the compare's fixed QoS 0 rate, docs/benchmarks.md,
    /// run AX).
    fn telemetry(
        &self,
        device_id: ByteString,
        payload: &Bytes,
        qos: QoS,
    ) -> Result<Telemetry, Refusal> {
        let docs = TelemetryMessage::parse_many(payload)
            .map_err(|e| Refusal::new(RefusalReason::PayloadInvalid, e.to_string()))?;
        let alone = matches!(docs, Documents::One(_));
        let acknowledged = qos != QoS::AtMostOnce;
        // Each stored row keeps its own document, also when it came in a batch.
        let mut rows = docs.as_slice().iter().map(|msg| {
            let body = if alone {
                document_text(payload)
            } else {
                serde_json::to_string(msg)
                    .map_err(|e| Refusal::new(RefusalReason::PayloadInvalid, e.to_string()))?
                    .into()
            };
            Ok(telemetry_row(device_id.clone(), msg, body))
        });
        let mut tickets = Tickets::default();
        while let Some(row) = rows.next() {
            let refused = if acknowledged {
                match self.ingest.try_submit(row?).map_err(storage_failed)? {
                    Ok(ticket) => {
                        tickets.push(ticket);
                        continue;
                    }
                    Err(row) => row,
                }
            } else {
                match self
                    .ingest
                    .try_submit_unacknowledged(row?)
                    .map_err(storage_failed)?
                {
                    Ok(()) => continue,
                    Err(row) => row,
                }
            };
            // The queue is full: this row and those after it wait for room, in order.
            let rest = std::iter::once(Ok(*refused))
                .chain(rows)
                .collect::<Result<Vec<TelemetryRow>, Refusal>>()?;
            let ingest = self.ingest.clone();
            return Ok(Telemetry::WaitingForRoom(Box::pin(async move {
                for row in rest {
                    if acknowledged {
                        tickets.push(ingest.submit(row).await.map_err(storage_failed)?);
                    } else {
                        ingest
                            .submit_unacknowledged(row)
                            .await
                            .map_err(storage_failed)?;
                    }
                }
                Ok(tickets.durable(acknowledged))
            })));
        }
        Ok(Telemetry::Queued(tickets.durable(acknowledged)))
    }

    /// Events: validated and stored before the PUBACK.
    async fn event(&self, device_id: &str, payload: &[u8]) -> Result<Option<Durable>, Refusal> {
        let msg = EventMessage::parse(payload)
            .map_err(|e| Refusal::new(RefusalReason::PayloadInvalid, e.to_string()))?;
        let row = EventRow {
            device_id: device_id.to_owned(),
            seq: i64::try_from(msg.seq).unwrap_or(i64::MAX),
            ts: msg.ts,
            received_at: OffsetDateTime::now_utc(),
            kind: msg.event.kind().to_owned(),
            body: String::from_utf8_lossy(payload).into_owned(),
        };
        let kind = msg.event.kind();
        match &msg.event {
            rampart_bms::Event::DataDropped {
                reason, records, ..
            } => {
                tracing::warn!(device = %device_id, ?reason, records, "device reports dropped data");
            }
            _ => tracing::info!(device = %device_id, kind, "device event"),
        }
        self.events_received.count(&msg.event);
        // A report on a rollout moves it along, once: a re-sent event is not new.
        let report = match &msg.event {
            rampart_bms::Event::Update {
                stage,
                rollout: Some(r),
                detail,
                ..
            } => Some((r.clone(), stage.as_str(), detail.clone())),
            _ => None,
        };
        let (store, rollouts, device) = (
            self.store.clone(),
            self.rollouts.clone(),
            device_id.to_owned(),
        );
        Ok(Some(Box::pin(async move {
            let seq = row.seq;
            let new = store
                .insert_events(&[row])
                .await
                .map_err(|e| e.to_string())?;
            if let (1, Some((r, stage, detail))) = (new, report) {
                rollouts
                    .report(&r, &device, seq, stage, detail.as_deref())
                    .await
                    .map_err(|e| e.to_string())?;
            }
            Ok(())
        })))
    }
}

impl HubHooks {
    /// Release reports: validated and stored before the PUBACK.
    async fn release(&self, device_id: &str, payload: &[u8]) -> Result<Option<Durable>, Refusal> {
        let r: ReleaseReport = serde_json::from_slice(payload).map_err(|e| {
            Refusal::new(
                RefusalReason::PayloadInvalid,
                format!("release report: {e}"),
            )
        })?;
        let ok = |s: &str| !s.trim().is_empty() && s.len() <= 128 && !s.contains(['@', '|']);
        if r.v != 1 || !ok(&r.product) || !ok(&r.release) {
            return Err(Refusal::new(
                RefusalReason::PayloadInvalid,
                "release report: v must be 1; product and release 1-128 characters without @ or |",
            ));
        }
        let row = rampart_store::DeviceRelease {
            device_id: device_id.to_owned(),
            product: r.product,
            release: r.release,
            reported_at: OffsetDateTime::now_utc(),
        };
        tracing::info!(device = %device_id, product = %row.product, release = %row.release, "device reports its release");
        let store = self.store.clone();
        Ok(Some(Box::pin(async move {
            store
                .set_device_release(&row)
                .await
                .map_err(|e| e.to_string())
        })))
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
        if publish
            .topic
            .ends_with(rampart_update::rollout::COMMAND_SUFFIX)
        {
            // The policy lets a device publish in its own namespace; update instructions
            // there come from the hub alone.
            return Err(Refusal::new(
                RefusalReason::PublishDenied,
                "update instructions are sent by the hub only",
            ));
        }
        if let Some(device_id) = telemetry_device(&publish.topic) {
            // The rows share the topic's text for their device id.
            let device_id = publish.topic.slice_ref(device_id);
            return match self.telemetry(device_id, &publish.payload, publish.qos)? {
                Telemetry::Queued(durable) => Ok(durable),
                Telemetry::WaitingForRoom(rest) => rest.await,
            };
        }
        // Boxed, so that this future (which the broker's call boxes for every PUBLISH) does
        // not hold their larger states, rare beside telemetry, inline.
        if let Some(device_id) = device_topic(&publish.topic, EVENTS_SUFFIX) {
            return Box::pin(self.event(device_id, &publish.payload)).await;
        }
        if let Some(device_id) = device_topic(&publish.topic, RELEASE_SUFFIX) {
            return Box::pin(self.release(device_id, &publish.payload)).await;
        }
        Ok(None)
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

    /// A stored document is its bytes as sent when they are UTF-8 (every document the JSON
    /// parser accepts), and never a refusal or a panic when they are not.
    #[test]
    fn a_document_is_stored_as_sent() {
        let sent = "{\"v\":1,\"seq\":7,\"note\":\"Zelle \u{2192} 3,27 V\"}   ";
        let payload = Bytes::from_static(sent.as_bytes());
        let text = document_text(&payload);
        assert_eq!(text, sent);
        assert_eq!(
            text.as_bytes().as_ptr(),
            payload.as_ptr(),
            "a UTF-8 document is shared with the payload, not copied"
        );
        assert_eq!(
            document_text(&Bytes::from_static(b"{\"a\":\"\xff\"}")),
            "{\"a\":\"\u{fffd}\"}"
        );
    }
}
