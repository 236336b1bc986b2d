//! Rampart's MQTT broker core.
//!
//! MQTT 3.1.1 and 5.0 over TLS 1.3/1.2 with a client certificate required on every connection.
//! The broker owns the protocol: sessions (clean and persistent), QoS 0 and 1 (QoS 2 accepted
//! from clients with the full PUBREC/PUBREL/PUBCOMP exchange and delivered onwards at QoS 1),
//! retained and will messages, keep-alive, wildcards and maximum packet size. It delegates
//! identity to [`Hooks::authenticate`], rights to one `rampart_policy::Authorizer`, and storage
//! to [`Hooks::on_publish`] / [`Hooks::persist_retained`], whose durability the PUBACK waits
//! for.
//!
//! Layout: `connection` (one client's state machine), `broker` (shared state and routing),
//! `router` (subscription trie, retained messages), `session`, `inflight` and `mailbox`
//! (per-client state, unacknowledged deliveries, bounded queues), `answers` (authorization
//! answers reused while the authorizer's epoch stands), `handover` (persistent
//! sessions parked with and resumed from the other nodes of a cluster), `tls` (rustls
//! configuration, handshake error mapping), `refusal` and `metrics` (what the operator sees).

mod answers;
mod broker;
mod config;
mod connection;
mod handover;
mod hooks;
mod inflight;
mod mailbox;
mod message;
mod metrics;
mod refusal;
mod router;
mod session;
pub mod tls;

pub use broker::{Broker, ClientInfo};
pub use config::BrokerConfig;
pub use hooks::{
    ConnectRequest, Durable, Hooks, Origin, PeerCertificate, Peers, QueuedMessage, SessionImage,
};
pub use metrics::Metrics;
pub use refusal::{Refusal, RefusalReason};
