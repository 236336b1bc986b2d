//! The trait every BMS driver implements.

use async_trait::async_trait;

use crate::reading::{Reading, SourceInfo};

/// Why a reading could not be taken.
#[derive(Debug, thiserror::Error)]
pub enum BmsError {
    #[error("the BMS did not answer within {0:?}")]
    Timeout(std::time::Duration),
    #[error("bad frame from the BMS: {0}")]
    BadFrame(String),
    #[error("I/O error talking to the BMS: {0}")]
    Io(#[from] std::io::Error),
}

/// A battery management system the agent can read.
#[async_trait]
pub trait BmsSource: Send {
    /// What this source is (kind, model), attached to every reading.
    fn info(&self) -> SourceInfo;

    /// Takes one reading.
    async fn read(&mut self) -> Result<Reading, BmsError>;
}
