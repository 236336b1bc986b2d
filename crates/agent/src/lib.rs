//! The Rampart device agent.
//!
//! Runs on the gateway next to the battery. It reads the BMS through a `BmsSource`, wraps each
//! reading into the telemetry document with a per-device sequence number, and calls home: it
//! opens an outbound MQTT connection over mutual TLS to the hub (client certificate = device
//! identity), publishes with QoS 1, reconnects with exponential backoff and jitter, and never
//! listens on any port.
//!
//! - `config`: `agent.toml`, documented and validated.
//! - `tls`: the rustls client configuration (ring provider).
//! - `sequence`: the sequence counter that survives restarts.
//! - `credentials`: certificate and key files, renewal with atomic swap and rollback.
//! - `runner`: the main loop.
//! - `update`: secure software updates (TUF client, downloads, installers).

pub mod config;
pub mod connection;
pub mod credentials;
mod error;
pub mod minimise;
pub mod outbox;
pub mod producer;
pub mod provision;
pub mod reset;
pub mod runner;
pub mod sequence;
pub mod source;
pub mod status;
pub mod tls;
pub mod update;
pub mod vault;

pub use config::AgentConfig;
pub use error::AgentError;
pub use runner::{AgentStats, run};
