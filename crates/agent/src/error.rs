//! Agent errors.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("configuration {path}: {message}")]
    Config { path: PathBuf, message: String },
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("TLS credentials: {0}")]
    Tls(String),
    #[error("state directory {path}: {source}")]
    State {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Outbox(#[from] crate::outbox::OutboxError),
    #[error(transparent)]
    Vault(#[from] crate::vault::VaultError),
}

impl AgentError {
    /// A suggestion for the operator, where one helps.
    pub fn hint(&self) -> Option<&'static str> {
        match self {
            AgentError::Config { .. } => {
                Some("see docs/configuration.md (agent.toml) for every field")
            }
            AgentError::Read { .. } | AgentError::Tls(_) => Some(
                "paths in agent.toml are relative to the file itself; `rampart device add ID --out DIR` writes a complete bundle",
            ),
            AgentError::State { .. } | AgentError::Outbox(_) => {
                Some("the agent needs a writable state_dir with free space")
            }
            AgentError::Vault(_) => Some(
                "the storage key is STATE/storage.key (0600), or what storage.key_command prints",
            ),
        }
    }
}
