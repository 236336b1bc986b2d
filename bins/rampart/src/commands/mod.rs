//! One module per command.

pub mod demo;
pub mod device;
pub mod hub;
pub mod init;
pub mod status;
pub mod telemetry;

use std::path::Path;

use rampart_hub::{DataDir, HubConfig};
use rampart_store::SqliteStore;

use crate::CliError;

/// Opens a data directory: its configuration and its store.
pub async fn open(data_dir: &Path) -> Result<(DataDir, HubConfig, SqliteStore), CliError> {
    let dir = DataDir::new(data_dir);
    let cfg = dir.load_config()?;
    let store = rampart_hub::run::open_store(&dir, &cfg).await?;
    Ok((dir, cfg, store))
}

/// Completes on SIGTERM or Ctrl-C.
pub async fn termination() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot install SIGTERM handler");
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        _ = term => tracing::info!("SIGTERM: shutting down"),
        _ = tokio::signal::ctrl_c() => tracing::info!("interrupt: shutting down"),
    }
}

/// Formats an optional number with a unit, or "-".
pub fn num(v: Option<f64>, decimals: usize, unit: &str) -> String {
    match v {
        Some(x) => format!("{x:.decimals$} {unit}"),
        None => "-".into(),
    }
}

/// RFC 3339 time, or "-".
pub fn when(t: Option<time::OffsetDateTime>) -> String {
    t.and_then(|t| {
        t.format(&time::format_description::well_known::Rfc3339)
            .ok()
    })
    .unwrap_or_else(|| "-".into())
}
