//! The Rampart hub.
//!
//! Wires the domain crates into one service: the MQTT broker with the device CA as its trust
//! anchor, the store behind the broker's hooks (registry checks at CONNECT, telemetry committed
//! before PUBACK, retained messages), the authorization policy, a Prometheus endpoint and a
//! local control socket through which the operator CLI reaches the running hub.
//!
//! - `config`: `rampart.toml`, every field documented and validated at start.
//! - `datadir`: the layout of a hub's data directory and `rampart init`.
//! - `hooks`: the broker hooks backed by the store.
//! - `control`: the Unix-socket control channel (CLI → running hub).
//! - `metrics`: Prometheus exposition.
//! - `ops`: operator operations (device add/list/show/disable, telemetry queries).
//! - `run`: starting and stopping the hub.

pub mod config;
pub mod control;
pub mod datadir;
mod error;
mod hooks;
pub mod metrics;
pub mod ops;
pub mod run;

pub use config::HubConfig;
pub use datadir::DataDir;
pub use error::HubError;
pub use run::Hub;
