//! The normalized BMS reading: what every source produces, complete, with units in the
//! types. What leaves the device is a [`crate::document::TelemetryMessage`] built from
//! readings by the agent's data-minimisation rules.

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
    /// Every alarm, in declaration order.
    pub const ALL: [Alarm; 15] = [
        Alarm::CellOverVoltage,
        Alarm::CellUnderVoltage,
        Alarm::PackOverVoltage,
        Alarm::PackUnderVoltage,
        Alarm::ChargeOverTemperature,
        Alarm::ChargeUnderTemperature,
        Alarm::DischargeOverTemperature,
        Alarm::DischargeUnderTemperature,
        Alarm::ChargeOverCurrent,
        Alarm::DischargeOverCurrent,
        Alarm::ShortCircuit,
        Alarm::CellImbalance,
        Alarm::OverTemperature,
        Alarm::UnderTemperature,
        Alarm::SystemError,
    ];

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_alarm_is_listed_once_under_its_wire_name() {
        // Naming every variant: one added to the enum stops this from compiling until it is
        // placed here, and then the count below asks for it in `ALL`.
        let variants = |a: Alarm| match a {
            Alarm::CellOverVoltage
            | Alarm::CellUnderVoltage
            | Alarm::PackOverVoltage
            | Alarm::PackUnderVoltage
            | Alarm::ChargeOverTemperature
            | Alarm::ChargeUnderTemperature
            | Alarm::DischargeOverTemperature
            | Alarm::DischargeUnderTemperature
            | Alarm::ChargeOverCurrent
            | Alarm::DischargeOverCurrent
            | Alarm::ShortCircuit
            | Alarm::CellImbalance
            | Alarm::OverTemperature
            | Alarm::UnderTemperature
            | Alarm::SystemError => 15,
        };
        let mut distinct = Alarm::ALL.to_vec();
        distinct.sort();
        distinct.dedup();
        assert_eq!(distinct.len(), variants(Alarm::SystemError));
        for a in Alarm::ALL {
            let wire = serde_json::to_string(&a).expect("an alarm serialises");
            assert_eq!(wire, format!("\"{}\"", a.as_str()));
        }
    }
}
