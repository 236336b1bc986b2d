//! The normalized BMS reading and the telemetry document built from it.
//!
//! Every source maps into [`Reading`]; the agent wraps it into a [`TelemetryMessage`] (adds the
//! format version and the per-device sequence number) and publishes it as JSON on
//! `devices/{id}/telemetry`. The hub parses and validates the same type, so the format has one
//! definition.

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::units::{AmpHours, Amps, Celsius, Percent, Volts};

/// Pack-level values.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pack {
    #[serde(rename = "voltage_v")]
    pub voltage: Volts,
    /// Positive while charging, negative while discharging.
    #[serde(rename = "current_a")]
    pub current: Amps,
    #[serde(rename = "soc_pct")]
    pub soc: Percent,
    /// State of health, where the BMS reports it.
    #[serde(rename = "soh_pct", default, skip_serializing_if = "Option::is_none")]
    pub soh: Option<Percent>,
    #[serde(
        rename = "remaining_ah",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub remaining: Option<AmpHours>,
    #[serde(rename = "full_ah", default, skip_serializing_if = "Option::is_none")]
    pub full_capacity: Option<AmpHours>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cycles: Option<u32>,
}

/// Charge/discharge limits the BMS requests from the charger or inverter.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    #[serde(rename = "charge_voltage_v")]
    pub charge_voltage: Volts,
    #[serde(rename = "charge_current_a")]
    pub charge_current: Amps,
    #[serde(rename = "discharge_current_a")]
    pub discharge_current: Amps,
    #[serde(
        rename = "discharge_voltage_v",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub discharge_voltage: Option<Volts>,
}

/// State of the charge and discharge MOSFETs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Fets {
    pub charge: bool,
    pub discharge: bool,
}

/// Protection and alarm conditions, common to the BMS protocols Rampart reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Alarm {
    CellOverVoltage,
    CellUnderVoltage,
    PackOverVoltage,
    PackUnderVoltage,
    ChargeOverTemperature,
    ChargeUnderTemperature,
    DischargeOverTemperature,
    DischargeUnderTemperature,
    ChargeOverCurrent,
    DischargeOverCurrent,
    ShortCircuit,
    CellImbalance,
    /// Over-temperature, where the BMS does not say whether charging or discharging.
    OverTemperature,
    /// Under-temperature, where the BMS does not say whether charging or discharging.
    UnderTemperature,
    SystemError,
}

impl Alarm {
    /// The wire name (snake case).
    pub fn as_str(self) -> &'static str {
        match self {
            Alarm::CellOverVoltage => "cell_over_voltage",
            Alarm::CellUnderVoltage => "cell_under_voltage",
            Alarm::PackOverVoltage => "pack_over_voltage",
            Alarm::PackUnderVoltage => "pack_under_voltage",
            Alarm::ChargeOverTemperature => "charge_over_temperature",
            Alarm::ChargeUnderTemperature => "charge_under_temperature",
            Alarm::DischargeOverTemperature => "discharge_over_temperature",
            Alarm::DischargeUnderTemperature => "discharge_under_temperature",
            Alarm::ChargeOverCurrent => "charge_over_current",
            Alarm::DischargeOverCurrent => "discharge_over_current",
            Alarm::ShortCircuit => "short_circuit",
            Alarm::CellImbalance => "cell_imbalance",
            Alarm::OverTemperature => "over_temperature",
            Alarm::UnderTemperature => "under_temperature",
            Alarm::SystemError => "system_error",
        }
    }
}

/// What the BMS asks of the charger or inverter (Pylontech/SMA 0x35C).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Requests {
    pub charge_enable: bool,
    pub discharge_enable: bool,
    pub force_charge: bool,
    pub full_charge: bool,
}

/// Where a reading came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceInfo {
    /// Driver: "simulator", "jbd-uart", "pylontech-can", "modbus".
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub manufacturer: Option<String>,
    /// BMS firmware or hardware version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// Production date of the BMS or pack (ISO 8601 date).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub manufactured: Option<String>,
}

/// One normalized reading of a battery.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Reading {
    /// When the reading was taken (device clock).
    #[serde(with = "time::serde::rfc3339")]
    pub ts: OffsetDateTime,
    pub pack: Pack,
    #[serde(rename = "cells_v", default)]
    pub cells: Vec<Volts>,
    #[serde(rename = "temps_c", default)]
    pub temperatures: Vec<Celsius>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limits: Option<Limits>,
    #[serde(default)]
    pub alarms: Vec<Alarm>,
    /// Conditions approaching a protection limit.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<Alarm>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fets: Option<Fets>,
    /// Cells being balanced, by index.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub balancing: Vec<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requests: Option<Requests>,
    pub source: SourceInfo,
}

impl Reading {
    /// Lowest and highest cell voltage.
    pub fn cell_range(&self) -> Option<(Volts, Volts)> {
        let min = self.cells.iter().map(|v| v.0).fold(f64::INFINITY, f64::min);
        let max = self
            .cells
            .iter()
            .map(|v| v.0)
            .fold(f64::NEG_INFINITY, f64::max);
        (!self.cells.is_empty()).then_some((Volts(min), Volts(max)))
    }

    /// Lowest and highest temperature.
    pub fn temperature_range(&self) -> Option<(Celsius, Celsius)> {
        let min = self
            .temperatures
            .iter()
            .map(|v| v.0)
            .fold(f64::INFINITY, f64::min);
        let max = self
            .temperatures
            .iter()
            .map(|v| v.0)
            .fold(f64::NEG_INFINITY, f64::max);
        (!self.temperatures.is_empty()).then_some((Celsius(min), Celsius(max)))
    }
}

/// Current version of the telemetry document.
pub const TELEMETRY_VERSION: u32 = 1;

/// The telemetry document: `{"v":1,"seq":N, ...reading}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TelemetryMessage {
    /// Format version; the hub refuses versions it does not know.
    pub v: u32,
    /// Per-device sequence number, increasing by one per reading; survives agent restarts.
    pub seq: u64,
    #[serde(flatten)]
    pub reading: Reading,
}

/// Why a telemetry document was refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ValidationError {
    #[error("not a valid telemetry document: {0}")]
    Json(String),
    #[error("unsupported telemetry format version {0} (this hub reads version 1)")]
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
}

/// Limits that keep stored data physically plausible and bounded in size.
const MAX_CELLS: usize = 512;
const MAX_TEMPS: usize = 64;

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

impl TelemetryMessage {
    /// Parses and validates a telemetry document.
    pub fn parse(bytes: &[u8]) -> Result<TelemetryMessage, ValidationError> {
        let msg: TelemetryMessage =
            serde_json::from_slice(bytes).map_err(|e| ValidationError::Json(e.to_string()))?;
        msg.validate()?;
        Ok(msg)
    }

    /// Checks version, ranges and sizes.
    pub fn validate(&self) -> Result<(), ValidationError> {
        if self.v != TELEMETRY_VERSION {
            return Err(ValidationError::Version(self.v));
        }
        if i64::try_from(self.seq).is_err() {
            return Err(ValidationError::OutOfRange {
                field: "seq",
                value: self.seq as f64,
                min: 0.0,
                max: i64::MAX as f64,
            });
        }
        let r = &self.reading;
        range("pack.voltage_v", r.pack.voltage.0, 0.0, 2000.0)?;
        range("pack.current_a", r.pack.current.0, -10_000.0, 10_000.0)?;
        range("pack.soc_pct", r.pack.soc.0, 0.0, 100.0)?;
        if let Some(soh) = r.pack.soh {
            range("pack.soh_pct", soh.0, 0.0, 100.0)?;
        }
        if let Some(a) = r.pack.remaining {
            range("pack.remaining_ah", a.0, 0.0, 100_000.0)?;
        }
        if let Some(a) = r.pack.full_capacity {
            range("pack.full_ah", a.0, 0.0, 100_000.0)?;
        }
        if r.cells.len() > MAX_CELLS {
            return Err(ValidationError::TooMany {
                field: "cells_v",
                len: r.cells.len(),
                max: MAX_CELLS,
            });
        }
        for c in &r.cells {
            range("cells_v[]", c.0, 0.0, 10.0)?;
        }
        if r.temperatures.len() > MAX_TEMPS {
            return Err(ValidationError::TooMany {
                field: "temps_c",
                len: r.temperatures.len(),
                max: MAX_TEMPS,
            });
        }
        for t in &r.temperatures {
            range("temps_c[]", t.0, -100.0, 250.0)?;
        }
        if let Some(l) = &r.limits {
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
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> TelemetryMessage {
        TelemetryMessage {
            v: 1,
            seq: 7,
            reading: Reading {
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
            },
        }
    }

    #[test]
    fn document_roundtrips_with_unit_field_names() {
        let m = sample();
        let json = serde_json::to_string(&m).expect("serialize");
        assert!(json.contains("\"voltage_v\":52.1"), "{json}");
        assert!(json.contains("\"cells_v\":[3.25,3.27]"), "{json}");
        assert!(json.contains("\"alarms\":[\"cell_imbalance\"]"), "{json}");
        assert_eq!(TelemetryMessage::parse(json.as_bytes()).expect("parse"), m);
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
        let mut m = sample();
        m.v = 2;
        assert_eq!(m.validate(), Err(ValidationError::Version(2)));
        let mut m = sample();
        m.reading.pack.soc = Percent(140.0);
        assert!(matches!(
            m.validate(),
            Err(ValidationError::OutOfRange {
                field: "pack.soc_pct",
                ..
            })
        ));
        let mut m = sample();
        m.reading.cells = vec![Volts(3.2); 600];
        assert!(matches!(
            m.validate(),
            Err(ValidationError::TooMany {
                field: "cells_v",
                ..
            })
        ));
        // Unknown fields inside the reading are refused, not silently stored.
        let json = serde_json::to_string(&sample()).expect("json");
        let tampered = json.replace("\"soc_pct\"", "\"soc_pct\":1,\"x\"");
        assert!(TelemetryMessage::parse(tampered.as_bytes()).is_err());
    }
}
