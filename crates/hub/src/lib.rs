//! The Rampart hub.
//!
//! Wires the domain crates into one service: the MQTT broker with the device CA as its trust
//! anchor, the store behind the broker's hooks (registry checks at CONNECT, telemetry committed
//! before PUBACK, retained messages), the authorization policy, a Prometheus endpoint and a
//! local control socket through which the operator CLI reaches the running hub.
//!
//! - `config`: `rampart.toml`, every field documented and validated at start.
//! - `datadir`: the layout of a hub's data directory and `rampart init`.
//! - `hooks`: the broker hooks backed by the store; `identity`: who a certificate is
//!   (registered identities, just-in-time registration); `server_topics`: provisioning,
//!   renewal and token requests on `$rampart/...`; `provision_hook`: the pre-provisioning hook.
//! - `policies`: the policy engine loaded from the registry.
//! - `pki_state`: TLS configuration, CRL and token key; `device_api`: HTTPS for devices.
//! - `control` and `live`: the Unix-socket control channel (CLI → running hub) and what the
//!   hub does with each request.
//! - `audit`: the identity audit; `metrics`: Prometheus exposition.
//! - `ops`: operator operations behind the CLI; `rollouts`: staged rollouts (operations and
//!   the engine that sends devices their update instructions).
//! - `run`: starting and stopping the hub.

pub mod audit;
mod cluster;
pub mod compliance;
pub mod config;
pub mod control;
pub mod datadir;
mod device_api;
mod error;
mod hooks;
mod identity;
mod live;
pub mod metrics;
pub mod ops;
pub mod pki_state;
mod policies;
pub mod provision_hook;
pub mod rollouts;
pub mod run;
mod server_topics;

pub use config::HubConfig;
pub use datadir::DataDir;
pub use error::HubError;
pub use run::Hub;
