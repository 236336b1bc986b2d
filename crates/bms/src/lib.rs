//! Battery data for Rampart.
//!
//! - `units`: newtypes that carry the unit in the type (`Volts`, `Amps`, ...), serialized as
//!   plain numbers under field names that carry the unit (`voltage_v`).
//! - `reading`: the normalized reading every BMS source produces, and the telemetry document
//!   the agent sends (`TelemetryMessage`, documented in docs/topics.md) with its validation.
//! - `source`: the `BmsSource` trait behind which protocol drivers live.
//! - `simulator`: a pack simulator for demos and tests.

pub mod reading;
pub mod simulator;
pub mod source;
pub mod units;

pub use reading::{
    Alarm, Fets, Limits, Pack, Reading, SourceInfo, TelemetryMessage, ValidationError,
};
pub use simulator::{SimulatedPack, SimulatorConfig};
pub use source::{BmsError, BmsSource};
pub use units::{AmpHours, Amps, Celsius, Percent, Volts};
