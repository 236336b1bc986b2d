//! `rampart hub`.

use std::net::SocketAddr;
use std::path::Path;

use rampart_hub::{DataDir, Hub};

use crate::CliError;

pub async fn run(data_dir: &Path, listen: Option<SocketAddr>) -> Result<(), CliError> {
    let dir = DataDir::new(data_dir);
    let cfg = dir.load_config()?;
    let mut hub = Hub::start(&dir, cfg, listen).await?;
    tokio::select! {
        r = hub.wait() => r?,
        _ = super::termination() => {}
    }
    hub.stop().await;
    Ok(())
}
