//! The producing side: reads the BMS every `telemetry.interval`, turns readings into the
//! documents the data-minimisation rules let out, numbers them and writes them to the outbox;
//! raises events (BMS unreachable or back, data dropped by the outbox) the same way. Nothing
//! here touches the network: the session takes documents from the outbox.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rampart_bms::{BmsError, BmsSource, Event, EventMessage, TelemetryMessage};
use time::OffsetDateTime;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::error::AgentError;
use crate::minimise::Shaper;
use crate::outbox::{Outbox, RecordKind};
use crate::runner::AgentStats;
use crate::sequence::Sequence;
use crate::source::{ConfiguredSource, Health};
use crate::status::Board;

/// `data_dropped` events are raised at most this often; drops in between are summed.
const DROP_REPORT_EVERY: Duration = Duration::from_secs(10);

/// Locks the outbox. A poisoned lock means a panic while it was held; its state on disk is
/// still consistent (every operation writes whole records), so carrying on is safe.
pub fn lock(outbox: &Mutex<Outbox>) -> std::sync::MutexGuard<'_, Outbox> {
    outbox.lock().unwrap_or_else(|e| e.into_inner())
}

/// Everything the producer needs.
pub struct Producer {
    pub outbox: Arc<Mutex<Outbox>>,
    pub telemetry_seq: Sequence,
    pub event_seq: Sequence,
    pub shaper: Shaper,
    pub health: Health,
    pub source: ConfiguredSource,
    pub board: Arc<Board>,
    pub stats: Arc<AgentStats>,
    /// Woken when something was appended.
    pub ready: Arc<Notify>,
    pub last_drop_report: Option<Instant>,
    /// Events raised by other parts of the agent (the updater), numbered and stored here
    /// like the producer's own.
    pub events: tokio::sync::mpsc::UnboundedReceiver<Event>,
}

impl std::fmt::Debug for Producer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Producer")
            .field("source", &self.source)
            .finish_non_exhaustive()
    }
}

impl Producer {
    /// Runs until `stop`, reading every `interval`.
    pub async fn run(
        mut self,
        interval: Duration,
        stop: CancellationToken,
    ) -> Result<(), AgentError> {
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut housekeeping = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    let result = self.source.read().await;
                    self.reading(result)?;
                }
                _ = housekeeping.tick() => self.housekeeping(),
                Some(ev) = self.events.recv() => self.event(ev)?,
                _ = stop.cancelled() => {
                    while let Ok(ev) = self.events.try_recv() {
                        self.event(ev)?;
                    }
                    self.housekeeping();
                    return Ok(());
                }
            }
        }
    }

    /// Handles the outcome of one BMS read.
    fn reading(
        &mut self,
        result: Result<rampart_bms::Reading, BmsError>,
    ) -> Result<(), AgentError> {
        let label = self.source.label();
        let reading = match result {
            Ok(r) => r,
            Err(e) => return self.failed(&label, &e),
        };
        // The hub refuses implausible documents, and a refused publish would block the
        // outbox; so they are caught here, as a BMS fault.
        let whole = TelemetryMessage::full(0, &reading);
        if let Err(e) = whole.validate() {
            return self.failed(
                &label,
                &BmsError::BadFrame(format!("implausible reading: {e}")),
            );
        }
        if let Some(ev) = self.health.ok(&label, reading.ts) {
            tracing::info!(source = %label, "the BMS answers again");
            self.event(ev)?;
        }
        self.stats.readings.fetch_add(1, Ordering::Relaxed);
        for mut doc in self.shaper.push(&reading) {
            let seq = self.telemetry_seq.peek();
            doc.seq = seq;
            match serde_json::to_vec(&doc) {
                Ok(payload) => {
                    if self.append(RecordKind::Telemetry, seq, &payload) {
                        self.telemetry_seq.commit()?;
                    }
                }
                Err(e) => tracing::error!(error = %e, "cannot encode a telemetry document"),
            }
        }
        let (h, next) = (&self.health, self.telemetry_seq.peek());
        self.board.update(|s| {
            s.bms.state = h.state;
            s.bms.last_reading = h.last_reading;
            s.bms.readings += 1;
            s.next_telemetry_seq = next;
        });
        Ok(())
    }

    fn failed(&mut self, label: &str, e: &BmsError) -> Result<(), AgentError> {
        self.stats.bms_errors.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(source = %label, error = %e, failures = self.health.failures() + 1, "BMS reading failed");
        if let Some(ev) = self.health.failed(label, e) {
            tracing::error!(source = %label, error = %e, "the BMS does not answer: raising bms_unreachable");
            self.event(ev)?;
        }
        let h = &self.health;
        self.board.update(|s| {
            s.bms.state = h.state;
            s.bms.failed_reads += 1;
            s.bms.last_error = h.last_error.clone();
        });
        Ok(())
    }

    /// Numbers an event and writes it to the outbox.
    pub fn event(&mut self, event: Event) -> Result<(), AgentError> {
        let seq = self.event_seq.peek();
        let msg = EventMessage {
            v: rampart_bms::document::TELEMETRY_VERSION,
            seq,
            ts: OffsetDateTime::now_utc(),
            event,
        };
        match serde_json::to_vec(&msg) {
            Ok(payload) => {
                if self.append(RecordKind::Event, seq, &payload) {
                    self.event_seq.commit()?;
                }
            }
            Err(e) => tracing::error!(error = %e, "cannot encode an event"),
        }
        let next = self.event_seq.peek();
        self.board.update(|s| s.next_event_seq = next);
        Ok(())
    }

    /// Writes a document. True when its number is used: stored, or dropped by a full
    /// outbox (`drop_newest`; the drop is counted and reported, so the gap is explained).
    /// False on an error writing it: then the number stays unused.
    fn append(&mut self, kind: RecordKind, seq: u64, payload: &[u8]) -> bool {
        let result = lock(&self.outbox).append(kind, seq, payload);
        match result {
            Ok(Some(_)) => {
                self.ready.notify_one();
                true
            }
            Ok(None) => true,
            Err(e) => {
                // Not fatal: the agent keeps reading and reports; the operator sees the count.
                self.stats.outbox_errors.fetch_add(1, Ordering::Relaxed);
                tracing::error!(error = %e, ?kind, seq, "could not write to the outbox; this document is lost");
                false
            }
        }
    }

    /// Appends one `data_dropped` event per reason with what the outbox dropped since the
    /// last report.
    fn report_drops(&mut self) -> Result<(), AgentError> {
        let mut ob = lock(&self.outbox);
        let drops = ob.take_drops();
        if drops.is_empty() {
            return Ok(());
        }
        self.last_drop_report = Some(Instant::now());
        for (reason, t) in drops {
            self.stats.dropped.fetch_add(t.records, Ordering::Relaxed);
            tracing::warn!(?reason, records = t.records, bytes = t.bytes, first_seq = ?t.first_seq,
                last_seq = ?t.last_seq, unacknowledged = t.unacknowledged,
                "outbox dropped data; reporting data_dropped to the hub");
            let seq = self.event_seq.peek();
            let msg = EventMessage {
                v: rampart_bms::document::TELEMETRY_VERSION,
                seq,
                ts: OffsetDateTime::now_utc(),
                event: Event::DataDropped {
                    reason,
                    records: t.records,
                    bytes: t.bytes,
                    first_seq: t.first_seq,
                    last_seq: t.last_seq,
                    unacknowledged: t.unacknowledged,
                    unacknowledged_first_seq: t.unacknowledged_first_seq,
                    unacknowledged_last_seq: t.unacknowledged_last_seq,
                },
            };
            let payload = serde_json::to_vec(&msg).map_err(|e| AgentError::State {
                path: ob.dir().to_path_buf(),
                source: std::io::Error::other(e),
            })?;
            if ob.append(RecordKind::Event, seq, &payload)?.is_none() {
                // No room for the report itself (drop_newest): keep it for the next try.
                ob.restore_drops(reason, t);
                continue;
            }
            self.event_seq.commit()?;
        }
        ob.save_drops()?;
        drop(ob);
        self.ready.notify_one();
        let next = self.event_seq.peek();
        self.board.update(|s| s.next_event_seq = next);
        Ok(())
    }

    /// Once a second: outbox bounds and syncing, drop reports, status.
    pub fn housekeeping(&mut self) {
        if let Err(e) = lock(&self.outbox).maintain() {
            tracing::error!(error = %e, "outbox housekeeping failed");
        }
        // Drops are reported while connected: a report queued behind a backlog that keeps
        // overflowing would itself be dropped. Until then they are kept in drops.json.
        let due = self.stats.connected.load(Ordering::Relaxed)
            && self
                .last_drop_report
                .is_none_or(|t| t.elapsed() >= DROP_REPORT_EVERY);
        if due && let Err(e) = self.report_drops() {
            tracing::error!(error = %e, "could not report dropped data");
        }
        let status = lock(&self.outbox).status();
        self.board.update(|s| s.outbox = status);
    }
}
