//! Rampart's fleet load generator.
//!
//! Simulated devices, each with its own client certificate, connect over mutual TLS to an
//! MQTT broker — the Rampart hub or any other, such as Mosquitto — and publish telemetry
//! while one subscriber receives it. The generator measures what an operator needs to size
//! a deployment and what BENCHMARKS.md compares: connections per second, messages per
//! second sent and delivered, loss, end-to-end latency, errors by kind, and the target's CPU
//! time and resident memory read from `/proc`.
//!
//! - `fleet`: a certificate authority of its own and one certificate per device, written to
//!   one file that both the generator and the broker under test can use.
//! - `client`: one MQTT connection over TLS, built on `rampart-mqtt`'s codec; several packets
//!   per write so the generator stays cheaper than the broker it measures.
//! - `scenario`: what to run (devices, protocol, QoS, payload, rate, pattern, bounds) and the
//!   run itself.
//! - `stats`: latency percentiles and `/proc` sampling.
//! - `trust`: how the devices authenticate the broker (WebPKI, with the chain last accepted
//!   reused for a minute; the handshake signature is checked every time).
//! - `handshake`: the in-memory rustls handshake rate, the reference for connection rates.
//! - `floor`: the floor under a broker's cost: mutual TLS, CONNACK, PUBACK and forwarding,
//!   and nothing else.
//!
//! Every loop is bounded in count and time, and targets are loopback addresses only.

pub mod client;
pub mod fleet;
pub mod floor;
pub mod handshake;
pub mod scenario;
pub mod stats;
pub mod trust;

/// Why a run could not start or finish.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("fleet {path}: {detail}")]
    Fleet {
        path: std::path::PathBuf,
        detail: String,
    },
    #[error(transparent)]
    Pki(#[from] rampart_pki::PkiError),
    #[error("TLS setup: {0}")]
    Tls(String),
    #[error("{0} is not a loopback address: the generator only targets this machine")]
    NotLoopback(std::net::IpAddr),
    #[error("invalid scenario: {0}")]
    Invalid(String),
    #[error("the subscriber could not start: {0}")]
    Subscriber(String),
}
