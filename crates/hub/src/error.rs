//! Hub errors, each with a hint for the operator.

use std::path::PathBuf;

/// What went wrong, with enough context to act on it.
#[derive(Debug, thiserror::Error)]
pub enum HubError {
    #[error("cluster: {0}")]
    Cluster(#[from] rampart_cluster::ClusterError),
    #[error("configuration {path}: {message}")]
    Config { path: PathBuf, message: String },
    #[error("{path} is not a Rampart data directory (no rampart.toml)")]
    NotInitialized { path: PathBuf },
    #[error("{path} already holds a Rampart hub; pass --force to overwrite its keys and config")]
    AlreadyInitialized { path: PathBuf },
    #[error(transparent)]
    Pki(#[from] rampart_pki::PkiError),
    #[error(transparent)]
    Store(#[from] rampart_store::StoreError),
    #[error("TLS setup: {0}")]
    Tls(#[from] rampart_broker::tls::TlsSetupError),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: String,
        source: std::io::Error,
    },
    #[error("I/O error on {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("device {0:?} not found")]
    DeviceNotFound(String),
    #[error("control socket: {0}")]
    Control(String),
    #[error("invalid argument: {0}")]
    Invalid(String),
    #[error(transparent)]
    Compliance(#[from] rampart_compliance::ComplianceError),
    #[error("{0}")]
    NotFound(String),
    #[error("rollout: {0}")]
    Rollout(String),
}

impl HubError {
    /// A suggestion for the operator, where one helps.
    pub fn hint(&self) -> Option<&'static str> {
        match self {
            HubError::NotInitialized { .. } => Some(
                "create one with `rampart init --data-dir DIR`, or point --data-dir at an existing one",
            ),
            HubError::AlreadyInitialized { .. } => Some(
                "use another --data-dir, or --force to replace the CA (all devices will need new certificates)",
            ),
            HubError::Bind { .. } => {
                Some("another process may use the port; pick another with --listen ADDR:PORT")
            }
            HubError::DeviceNotFound(_) => Some("list devices with `rampart device list`"),
            HubError::Config { .. } => {
                Some("see docs/configuration.md for every field and its range")
            }
            HubError::Store(rampart_store::StoreError::AlreadyExists {
                what: "rollout", ..
            }) => Some("pick another rollout id; `rampart rollout list` shows the ones in use"),
            HubError::Rollout(_) => Some(
                "see docs/updates.md (rollouts); `rampart rollout status ID` shows where a rollout is",
            ),
            HubError::Store(rampart_store::StoreError::AlreadyExists { .. }) => Some(
                "pick another device id, or inspect the existing one with `rampart device show ID`",
            ),
            HubError::Compliance(e) => e.hint(),
            HubError::Cluster(rampart_cluster::ClusterError::Connect { .. }) => Some(
                "is NATS running at [cluster] nats_url? A node does not start without its peers; set nats_url = \"\" to run this hub alone",
            ),
            HubError::Cluster(rampart_cluster::ClusterError::Sessions(
                rampart_cluster::SessionError::JetStream(_),
            )) => Some(
                "persistent sessions are kept in JetStream: start nats-server with -js (JetStream enabled), and give it a store directory (-sd)",
            ),
            HubError::Store(rampart_store::StoreError::Sqlite(_)) => Some(
                "the SQLite database in the data directory could not be written: check the disk's free space and the directory's permissions",
            ),
            HubError::Store(rampart_store::StoreError::Database(_)) => Some(
                "is the database reachable? With backend = \"postgres\", check storage.postgres_url (psql with the same URL should connect)",
            ),
            _ => None,
        }
    }
}
