//! The documents a device sends: telemetry on `devices/{id}/telemetry` and events on
//! `devices/{id}/events` (JSON; docs/topics.md). The agent builds them and the hub parses and
//! validates the same types, so each format has one definition.
//!
//! A telemetry document carries only what the device's data-minimisation rules let out: every
//! field is optional, and a document summarising several readings says so in `window`. A
//! document built from one complete reading ([`TelemetryMessage::full`]) has every field the
//! source gave.

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::reading::{Alarm, Fets, Limits, Reading, Requests, SourceInfo};
use crate::units::{AmpHours, Amps, Celsius, Percent, Volts};

mod reader;

/// Current version of the telemetry and event documents.
pub const TELEMETRY_VERSION: u32 = 1;

/// Pack values, each present only if sent.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PackValues {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub voltage_v: Option<Volts>,
    /// Positive while charging.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_a: Option<Amps>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub soc_pct: Option<Percent>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub soh_pct: Option<Percent>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remaining_ah: Option<AmpHours>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub full_ah: Option<AmpHours>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cycles: Option<u32>,
}

impl PackValues {
    pub fn is_empty(&self) -> bool {
        *self == PackValues::default()
    }
}

/// How the values of a windowed document were computed from the readings in the window.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Aggregate {
    /// The last reading of the window.
    #[default]
    Last,
    /// The mean of numeric values (element-wise for cells and temperatures).
    Mean,
    Min,
    Max,
    /// The mean as the value, with the window's minima and maxima beside it.
    MinMaxMean,
}

/// Numeric extremes of a window.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Extremes {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pack: Option<PackValues>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cells_v: Option<Vec<Volts>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temps_c: Option<Vec<Celsius>>,
}

/// The readings a document summarises. Alarms and warnings of a window are the union of those
/// of its readings: aggregation never hides an alarm.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Window {
    /// Time of the first reading in the window (the document's `ts` is the last).
    #[serde(with = "time::serde::rfc3339")]
    pub from: OffsetDateTime,
    pub samples: u32,
    pub aggregate: Aggregate,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min: Option<Extremes>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max: Option<Extremes>,
}

/// The telemetry document: `{"v":1,"seq":N,"ts":...,"pack":{...},...}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TelemetryMessage {
    /// Format version; the hub refuses versions it does not know.
    pub v: u32,
    /// Per-device sequence number, increasing by one per document; survives agent restarts,
    /// so a gap is a loss and a repeat is a duplicate.
    pub seq: u64,
    /// When the (last) reading was taken, device clock.
    #[serde(with = "time::serde::rfc3339")]
    pub ts: OffsetDateTime,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pack: Option<PackValues>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cells_v: Option<Vec<Volts>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temps_c: Option<Vec<Celsius>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limits: Option<Limits>,
    /// Present (possibly empty) when alarms are sent; absent when they are not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alarms: Option<Vec<Alarm>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warnings: Option<Vec<Alarm>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fets: Option<Fets>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub balancing: Option<Vec<u16>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requests: Option<Requests>,
    // `source` and `window` are boxed: both are rare beside the pack values and larger than
    // all the rest together, and the hub moves a document several times for every message
    // (parsed, validated, handed on); with them boxed it is 320 bytes, not 752.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<Box<SourceInfo>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window: Option<Box<Window>>,
}

/// Why a document was refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ValidationError {
    #[error("not a valid document: {0}")]
    Json(String),
    #[error("unsupported format version {0} (this hub reads version 1)")]
    Version(u32),
    #[error("{field} = {value} is outside the plausible range {min}..={max}")]
    OutOfRange {
        field: &'static str,
        value: f64,
        min: f64,
        max: f64,
    },
    #[error("{field} has {len} entries; at most {max} are accepted")]
    TooMany {
        field: &'static str,
        len: usize,
        max: usize,
    },
    #[error("{field} is {len} characters long; at most {max} are accepted")]
    TooLong {
        field: &'static str,
        len: usize,
        max: usize,
    },
    #[error("a batch must hold 1 to {max} documents, not {len}")]
    Batch { len: usize, max: usize },
    #[error("document {index} of the batch: {error}")]
    InBatch {
        index: usize,
        error: Box<ValidationError>,
    },
}

/// Limits that keep stored data physically plausible and bounded in size.
const MAX_CELLS: usize = 512;
const MAX_TEMPS: usize = 64;
const MAX_TEXT: usize = 512;
/// Most documents in one batch publish.
pub const MAX_BATCH: usize = 500;

fn range(field: &'static str, value: f64, min: f64, max: f64) -> Result<(), ValidationError> {
    if value.is_finite() && (min..=max).contains(&value) {
        Ok(())
    } else {
        Err(ValidationError::OutOfRange {
            field,
            value,
            min,
            max,
        })
    }
}

fn text(field: &'static str, s: &str) -> Result<(), ValidationError> {
    let len = s.chars().count();
    if len > MAX_TEXT {
        return Err(ValidationError::TooLong {
            field,
            len,
            max: MAX_TEXT,
        });
    }
    Ok(())
}

fn check_seq(seq: u64) -> Result<(), ValidationError> {
    if i64::try_from(seq).is_err() {
        return Err(ValidationError::OutOfRange {
            field: "seq",
            value: seq as f64,
            min: 0.0,
            max: i64::MAX as f64,
        });
    }
    Ok(())
}

fn check_pack(p: &PackValues) -> Result<(), ValidationError> {
    if let Some(v) = p.voltage_v {
        range("pack.voltage_v", v.0, 0.0, 2000.0)?;
    }
    if let Some(a) = p.current_a {
        range("pack.current_a", a.0, -10_000.0, 10_000.0)?;
    }
    if let Some(s) = p.soc_pct {
        range("pack.soc_pct", s.0, 0.0, 100.0)?;
    }
    if let Some(s) = p.soh_pct {
        range("pack.soh_pct", s.0, 0.0, 100.0)?;
    }
    if let Some(a) = p.remaining_ah {
        range("pack.remaining_ah", a.0, 0.0, 100_000.0)?;
    }
    if let Some(a) = p.full_ah {
        range("pack.full_ah", a.0, 0.0, 100_000.0)?;
    }
    Ok(())
}

fn check_cells(cells: &[Volts]) -> Result<(), ValidationError> {
    if cells.len() > MAX_CELLS {
        return Err(ValidationError::TooMany {
            field: "cells_v",
            len: cells.len(),
            max: MAX_CELLS,
        });
    }
    cells
        .iter()
        .try_for_each(|c| range("cells_v[]", c.0, 0.0, 10.0))
}

fn check_temps(temps: &[Celsius]) -> Result<(), ValidationError> {
    if temps.len() > MAX_TEMPS {
        return Err(ValidationError::TooMany {
            field: "temps_c",
            len: temps.len(),
            max: MAX_TEMPS,
        });
    }
    temps
        .iter()
        .try_for_each(|t| range("temps_c[]", t.0, -100.0, 250.0))
}

fn check_extremes(e: &Extremes) -> Result<(), ValidationError> {
    if let Some(p) = &e.pack {
        check_pack(p)?;
    }
    if let Some(c) = &e.cells_v {
        check_cells(c)?;
    }
    if let Some(t) = &e.temps_c {
        check_temps(t)?;
    }
    Ok(())
}

impl TelemetryMessage {
    /// A document with everything in `reading`.
    pub fn full(seq: u64, reading: &Reading) -> TelemetryMessage {
        let r = reading;
        TelemetryMessage {
            v: TELEMETRY_VERSION,
            seq,
            ts: r.ts,
            pack: Some(PackValues {
                voltage_v: Some(r.pack.voltage),
                current_a: Some(r.pack.current),
                soc_pct: Some(r.pack.soc),
                soh_pct: r.pack.soh,
                remaining_ah: r.pack.remaining,
                full_ah: r.pack.full_capacity,
                cycles: r.pack.cycles,
            }),
            cells_v: Some(r.cells.clone()),
            temps_c: Some(r.temperatures.clone()),
            limits: r.limits.clone(),
            alarms: Some(r.alarms.clone()),
            warnings: Some(r.warnings.clone()),
            fets: r.fets,
            balancing: Some(r.balancing.clone()),
            requests: r.requests,
            source: Some(Box::new(r.source.clone())),
            window: None,
        }
    }

    /// Parses and validates one document.
    pub fn parse(bytes: &[u8]) -> Result<TelemetryMessage, ValidationError> {
        let mut msg = reader::blank();
        Self::parse_into(bytes, &mut msg)?;
        Ok(msg)
    }

    /// [`TelemetryMessage::parse`] into `msg`: the quick reader where it can, serde for what
    /// it leaves (and for the refusal's words).
    fn parse_into(bytes: &[u8], msg: &mut TelemetryMessage) -> Result<(), ValidationError> {
        if reader::document(bytes, msg).is_none() {
            *msg =
                serde_json::from_slice(bytes).map_err(|e| ValidationError::Json(e.to_string()))?;
        }
        msg.validate()
    }

    /// Parses either one document (`{...}`) or a batch (`[{...}, ...]`, at most
    /// [`MAX_BATCH`]); every document of a batch must be valid.
    pub fn parse_many(bytes: &[u8]) -> Result<Documents, ValidationError> {
        let first = bytes.iter().find(|b| !b.is_ascii_whitespace());
        if first != Some(&b'[') {
            // Read in its place in the answer: the document is not moved again.
            let mut one = Documents::One(reader::blank());
            if let Documents::One(msg) = &mut one {
                Self::parse_into(bytes, msg)?;
            }
            return Ok(one);
        }
        let docs: Vec<TelemetryMessage> = match reader::batch(bytes) {
            Some(docs) => docs,
            None => {
                serde_json::from_slice(bytes).map_err(|e| ValidationError::Json(e.to_string()))?
            }
        };
        if docs.is_empty() || docs.len() > MAX_BATCH {
            return Err(ValidationError::Batch {
                len: docs.len(),
                max: MAX_BATCH,
            });
        }
        for (index, d) in docs.iter().enumerate() {
            d.validate().map_err(|e| ValidationError::InBatch {
                index,
                error: Box::new(e),
            })?;
        }
        Ok(Documents::Batch(docs))
    }

    /// Checks version, ranges and sizes of what is present.
    pub fn validate(&self) -> Result<(), ValidationError> {
        if self.v != TELEMETRY_VERSION {
            return Err(ValidationError::Version(self.v));
        }
        check_seq(self.seq)?;
        if let Some(p) = &self.pack {
            check_pack(p)?;
        }
        if let Some(c) = &self.cells_v {
            check_cells(c)?;
        }
        if let Some(t) = &self.temps_c {
            check_temps(t)?;
        }
        if let Some(l) = &self.limits {
            range("limits.charge_voltage_v", l.charge_voltage.0, 0.0, 2000.0)?;
            range(
                "limits.charge_current_a",
                l.charge_current.0,
                -10_000.0,
                10_000.0,
            )?;
            range(
                "limits.discharge_current_a",
                l.discharge_current.0,
                -10_000.0,
                10_000.0,
            )?;
            if let Some(v) = l.discharge_voltage {
                range("limits.discharge_voltage_v", v.0, 0.0, 2000.0)?;
            }
        }
        if let Some(b) = &self.balancing
            && b.len() > MAX_CELLS
        {
            return Err(ValidationError::TooMany {
                field: "balancing",
                len: b.len(),
                max: MAX_CELLS,
            });
        }
        if let Some(s) = &self.source {
            text("source.kind", &s.kind)?;
            for v in [&s.model, &s.manufacturer, &s.version, &s.manufactured]
                .into_iter()
                .flatten()
            {
                text("source", v)?;
            }
        }
        if let Some(w) = &self.window {
            if w.samples == 0 {
                return Err(ValidationError::OutOfRange {
                    field: "window.samples",
                    value: 0.0,
                    min: 1.0,
                    max: f64::from(u32::MAX),
                });
            }
            for e in [&w.min, &w.max].into_iter().flatten() {
                check_extremes(e)?;
            }
        }
        Ok(())
    }

    /// Lowest and highest cell voltage in the document.
    pub fn cell_range(&self) -> Option<(Volts, Volts)> {
        let cells = self.cells_v.as_deref().filter(|c| !c.is_empty())?;
        let min = cells.iter().map(|v| v.0).fold(f64::INFINITY, f64::min);
        let max = cells.iter().map(|v| v.0).fold(f64::NEG_INFINITY, f64::max);
        Some((Volts(min), Volts(max)))
    }

    /// Lowest and highest temperature in the document.
    pub fn temperature_range(&self) -> Option<(Celsius, Celsius)> {
        let t = self.temps_c.as_deref().filter(|c| !c.is_empty())?;
        let min = t.iter().map(|v| v.0).fold(f64::INFINITY, f64::min);
        let max = t.iter().map(|v| v.0).fold(f64::NEG_INFINITY, f64::max);
        Some((Celsius(min), Celsius(max)))
    }
}

/// What one telemetry payload held: a document alone (the common case, kept without a
/// vector of one; the hub parses one per message) or a batch of them.
// The single document is kept inline although it is large (320 bytes): the value lives on
// the stack while one message is handled, and a box would bring back the allocation per
// message this type exists to avoid.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
pub enum Documents {
    /// `{...}`: its bytes are the document.
    One(TelemetryMessage),
    /// `[{...}, ...]`: each document is part of the payload.
    Batch(Vec<TelemetryMessage>),
}

impl Documents {
    /// The documents, in the order sent.
    pub fn as_slice(&self) -> &[TelemetryMessage] {
        match self {
            Documents::One(m) => std::slice::from_ref(m),
            Documents::Batch(v) => v,
        }
    }
}

/// Why the outbox dropped data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DropReason {
    /// The outbox reached its size bound; the oldest records made room.
    MaxBytes,
    /// Records were older than the outbox's age bound.
    MaxAge,
    /// Records were damaged on disk (failed their checksum or authentication).
    Corrupt,
}

/// Where an update stands on a device (the rollout states of docs/updates.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UpdateStage {
    Queued,
    Downloading,
    Installing,
    Verifying,
    Succeeded,
    Failed,
    RolledBack,
}

impl UpdateStage {
    pub fn as_str(self) -> &'static str {
        match self {
            UpdateStage::Queued => "queued",
            UpdateStage::Downloading => "downloading",
            UpdateStage::Installing => "installing",
            UpdateStage::Verifying => "verifying",
            UpdateStage::Succeeded => "succeeded",
            UpdateStage::Failed => "failed",
            UpdateStage::RolledBack => "rolled_back",
        }
    }
}

/// Something the device reports that is not a reading.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Event {
    /// The BMS stopped answering.
    BmsUnreachable {
        source: String,
        error: String,
        /// Consecutive failed reads when the event was raised.
        failed_reads: u64,
        #[serde(with = "time::serde::rfc3339")]
        since: OffsetDateTime,
    },
    /// The BMS answers again.
    BmsRecovered {
        source: String,
        failed_reads: u64,
        down_s: f64,
    },
    /// The outbox dropped data before the hub acknowledged it.
    DataDropped {
        reason: DropReason,
        records: u64,
        bytes: u64,
        /// Telemetry sequence numbers of the first and last dropped reading, where known.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        first_seq: Option<u64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        last_seq: Option<u64>,
        /// Of the dropped records, those that had been sent and not yet acknowledged: the
        /// hub may have stored them. 0 (absent) means every dropped record is lost.
        #[serde(default, skip_serializing_if = "is_zero")]
        unacknowledged: u64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        unacknowledged_first_seq: Option<u64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        unacknowledged_last_seq: Option<u64>,
    },
    /// An update the device may install (reported once per version).
    UpdateAvailable {
        target: String,
        version: String,
        /// Signed by the delegated security role.
        security: bool,
        /// When the agent will install it on its own (security updates; absent: it waits
        /// for a rollout).
        #[serde(
            default,
            skip_serializing_if = "Option::is_none",
            with = "time::serde::rfc3339::option"
        )]
        install_at: Option<OffsetDateTime>,
    },
    /// An update moved to a new stage.
    Update {
        stage: UpdateStage,
        target: String,
        version: String,
        /// The rollout that asked for it, if any.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        rollout: Option<String>,
        /// Why it failed or rolled back, or what is happening.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        detail: Option<String>,
    },
}

impl Event {
    /// The wire name of the kind.
    pub fn kind(&self) -> &'static str {
        match self {
            Event::BmsUnreachable { .. } => "bms_unreachable",
            Event::BmsRecovered { .. } => "bms_recovered",
            Event::DataDropped { .. } => "data_dropped",
            Event::UpdateAvailable { .. } => "update_available",
            Event::Update { .. } => "update",
        }
    }
}

/// The event document: `{"v":1,"seq":N,"ts":...,"kind":"bms_unreachable",...}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EventMessage {
    pub v: u32,
    /// Per-device event sequence number (separate from telemetry's), surviving restarts.
    pub seq: u64,
    #[serde(with = "time::serde::rfc3339")]
    pub ts: OffsetDateTime,
    #[serde(flatten)]
    pub event: Event,
}

impl EventMessage {
    /// Parses and validates an event document.
    pub fn parse(bytes: &[u8]) -> Result<EventMessage, ValidationError> {
        let msg: EventMessage =
            serde_json::from_slice(bytes).map_err(|e| ValidationError::Json(e.to_string()))?;
        msg.validate()?;
        Ok(msg)
    }

    pub fn validate(&self) -> Result<(), ValidationError> {
        if self.v != TELEMETRY_VERSION {
            return Err(ValidationError::Version(self.v));
        }
        check_seq(self.seq)?;
        match &self.event {
            Event::BmsUnreachable { source, error, .. } => {
                text("source", source)?;
                text("error", error)?;
            }
            Event::BmsRecovered { source, down_s, .. } => {
                text("source", source)?;
                range("down_s", *down_s, 0.0, 1e10)?;
            }
            Event::DataDropped {
                records,
                unacknowledged,
                ..
            } => {
                // Some of the dropped records, never more than all of them.
                range(
                    "unacknowledged",
                    *unacknowledged as f64,
                    0.0,
                    *records as f64,
                )?;
            }
            Event::UpdateAvailable {
                target, version, ..
            } => {
                text("target", target)?;
                text("version", version)?;
            }
            Event::Update {
                target,
                version,
                rollout,
                detail,
                ..
            } => {
                text("target", target)?;
                text("version", version)?;
                if let Some(r) = rollout {
                    text("rollout", r)?;
                }
                if let Some(d) = detail {
                    text("detail", d)?;
                }
            }
        }
        Ok(())
    }
}

/// For `skip_serializing_if`: a zero count is left out of the document.
fn is_zero(n: &u64) -> bool {
    *n == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reading::Pack;

    /// The hub moves a document several times per message; what made it large is boxed.
    #[test]
    fn a_document_stays_small_enough_to_move() {
        let size = std::mem::size_of::<TelemetryMessage>();
        eprintln!("TelemetryMessage: {size} bytes");
        assert!(size <= 320, "TelemetryMessage is {size} bytes");
    }

    fn reading() -> Reading {
        Reading {
            ts: OffsetDateTime::from_unix_timestamp(1_800_000_000).expect("ts"),
            pack: Pack {
                voltage: Volts(52.1),
                current: Amps(-3.2),
                soc: Percent(81.0),
                soh: Some(Percent(98.5)),
                remaining: Some(AmpHours(81.0)),
                full_capacity: Some(AmpHours(100.0)),
                cycles: Some(12),
            },
            cells: vec![Volts(3.25), Volts(3.27)],
            temperatures: vec![Celsius(24.0)],
            limits: None,
            alarms: vec![Alarm::CellImbalance],
            warnings: vec![],
            fets: Some(Fets {
                charge: true,
                discharge: true,
            }),
            balancing: vec![],
            requests: None,
            source: SourceInfo {
                kind: "simulator".into(),
                model: None,
                manufacturer: None,
                version: None,
                manufactured: None,
            },
        }
    }

    #[test]
    fn document_roundtrips_with_unit_field_names() {
        let m = TelemetryMessage::full(7, &reading());
        let json = serde_json::to_string(&m).expect("serialize");
        assert!(json.contains("\"voltage_v\":52.1"), "{json}");
        assert!(json.contains("\"cells_v\":[3.25,3.27]"), "{json}");
        assert!(json.contains("\"alarms\":[\"cell_imbalance\"]"), "{json}");
        assert_eq!(TelemetryMessage::parse(json.as_bytes()).expect("parse"), m);
        assert_eq!(m.cell_range(), Some((Volts(3.25), Volts(3.27))));
    }

    #[test]
    fn a_minimised_document_carries_only_what_was_sent() {
        let json = r#"{"v":1,"seq":3,"ts":"2026-11-23T10:00:00Z","pack":{"soc_pct":50.0}}"#;
        let m = TelemetryMessage::parse(json.as_bytes()).expect("parse");
        assert_eq!(m.pack.as_ref().and_then(|p| p.voltage_v), None);
        assert_eq!(m.cells_v, None);
        assert_eq!(m.alarms, None);
        assert_eq!(serde_json::to_string(&m).expect("json"), json);
    }

    #[test]
    fn refusals_name_the_problem() {
        assert!(matches!(
            TelemetryMessage::parse(b"{"),
            Err(ValidationError::Json(_))
        ));
        assert!(matches!(
            TelemetryMessage::parse(b"hello"),
            Err(ValidationError::Json(_))
        ));
        let mut m = TelemetryMessage::full(1, &reading());
        m.v = 2;
        assert_eq!(m.validate(), Err(ValidationError::Version(2)));
        let mut m = TelemetryMessage::full(1, &reading());
        m.pack.as_mut().expect("pack").soc_pct = Some(Percent(140.0));
        assert!(matches!(
            m.validate(),
            Err(ValidationError::OutOfRange {
                field: "pack.soc_pct",
                ..
            })
        ));
        let mut m = TelemetryMessage::full(1, &reading());
        m.cells_v = Some(vec![Volts(3.2); 600]);
        assert!(matches!(
            m.validate(),
            Err(ValidationError::TooMany {
                field: "cells_v",
                ..
            })
        ));
        let mut m = TelemetryMessage::full(1, &reading());
        m.source.as_mut().expect("source").kind = "x".repeat(600);
        assert!(matches!(m.validate(), Err(ValidationError::TooLong { .. })));
        // Unknown fields are refused, not silently stored.
        let json = serde_json::to_string(&TelemetryMessage::full(1, &reading())).expect("json");
        let tampered = json.replace("\"soc_pct\"", "\"soc_pct\":1,\"x\"");
        assert!(TelemetryMessage::parse(tampered.as_bytes()).is_err());
    }

    #[test]
    fn batches_parse_whole_or_not_at_all() {
        let a = serde_json::to_string(&TelemetryMessage::full(1, &reading())).expect("json");
        let b = serde_json::to_string(&TelemetryMessage::full(2, &reading())).expect("json");
        let batch = format!("[{a},{b}]");
        let docs = TelemetryMessage::parse_many(batch.as_bytes()).expect("batch");
        assert!(matches!(docs, Documents::Batch(_)));
        let seqs = docs.as_slice().iter().map(|d| d.seq).collect::<Vec<_>>();
        assert_eq!(seqs, vec![1, 2]);
        let one = TelemetryMessage::parse_many(a.as_bytes()).expect("one");
        assert!(matches!(&one, Documents::One(m) if m.seq == 1), "{one:?}");
        // A batch of one is still a batch: its document is not the payload's bytes.
        let of_one = TelemetryMessage::parse_many(format!(" [{a}]").as_bytes()).expect("of one");
        assert!(
            matches!(&of_one, Documents::Batch(v) if v.len() == 1),
            "{of_one:?}"
        );
        assert!(matches!(
            TelemetryMessage::parse_many(b"[]"),
            Err(ValidationError::Batch { len: 0, .. })
        ));
        let bad = format!("[{a},{}]", b.replace("81.0", "181.0"));
        assert!(matches!(
            TelemetryMessage::parse_many(bad.as_bytes()),
            Err(ValidationError::InBatch { index: 1, .. })
        ));
    }

    #[test]
    fn events_roundtrip_and_validate() {
        let e = EventMessage {
            v: 1,
            seq: 4,
            ts: OffsetDateTime::from_unix_timestamp(1_800_000_000).expect("ts"),
            event: Event::DataDropped {
                reason: DropReason::MaxBytes,
                records: 120,
                bytes: 61_440,
                first_seq: Some(1),
                last_seq: Some(120),
                unacknowledged: 20,
                unacknowledged_first_seq: Some(1),
                unacknowledged_last_seq: Some(20),
            },
        };
        let json = serde_json::to_string(&e).expect("json");
        assert!(json.contains("\"kind\":\"data_dropped\""), "{json}");
        assert!(json.contains("\"reason\":\"max_bytes\""), "{json}");
        assert_eq!(EventMessage::parse(json.as_bytes()).expect("parse"), e);
        assert_eq!(e.event.kind(), "data_dropped");
        let more_unacknowledged_than_dropped =
            json.replace("\"unacknowledged\":20", "\"unacknowledged\":121");
        assert!(EventMessage::parse(more_unacknowledged_than_dropped.as_bytes()).is_err());
        assert!(
            EventMessage::parse(br#"{"v":1,"seq":1,"ts":"2026-11-23T10:00:00Z","kind":"reboot"}"#)
                .is_err()
        );
        let long = EventMessage {
            event: Event::BmsUnreachable {
                source: "jbd".into(),
                error: "e".repeat(1000),
                failed_reads: 3,
                since: OffsetDateTime::UNIX_EPOCH,
            },
            ..e
        };
        assert!(long.validate().is_err());
    }
}
