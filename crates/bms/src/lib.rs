//! Battery data for Rampart.
//!
//! - `units`: newtypes that carry the unit in the type (`Volts`, `Amps`, ...), serialized as
//!   plain numbers under field names that carry the unit (`voltage_v`).
//! - `reading`: the normalized reading every BMS source produces.
//! - `document`: what a device sends — telemetry documents (whole readings or minimised
//!   windows, single or batched) and events — with the validation the hub applies; telemetry
//!   is read by a quick reader of its own where it can, and by serde otherwise.
//! - `source`: the `BmsSource` trait behind which protocol drivers live.
//! - `simulator`: a pack simulator for demos and tests.
//! - `jbd`: JBD / Xiaoxiang UART protocol (commands 0x03 and 0x04) over any serial stream.
//! - `pylontech`: Pylontech/SMA-style CAN frames (0x351..0x35E) decoded into readings.
//! - `can` (feature `socketcan`): live SocketCAN source for the same protocol.
//! - `candump`: candump log files parsed and replayed as a CAN source.
//! - `modbus`: Modbus TCP/RTU registers mapped to the reading by a configured register map.

#[cfg(feature = "socketcan")]
pub mod can;
pub mod candump;
pub mod document;
pub mod jbd;
pub mod modbus;
pub mod pylontech;
pub mod reading;
pub mod simulator;
pub mod source;
pub mod units;

pub use document::{
    Aggregate, Documents, DropReason, Event, EventMessage, Extremes, PackValues, TelemetryMessage,
    UpdateStage, ValidationError, Window,
};
pub use reading::{Alarm, Fets, Limits, Pack, Reading, Requests, SourceInfo};
pub use simulator::{SimulatedPack, SimulatorConfig};
pub use source::{BmsError, BmsSource};
pub use units::{AmpHours, Amps, Celsius, Percent, Volts};
