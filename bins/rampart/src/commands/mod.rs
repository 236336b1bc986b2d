//! One module per command.

pub mod audit;
pub mod bench;
pub mod bench_compare;
pub mod ca;
pub mod cra;
pub mod demo;
pub mod device;
pub mod events;
pub mod hub;
pub mod identity;
pub mod init;
pub mod policy;
pub mod release;
pub mod rollout;
pub mod sbom;
pub mod status;
pub mod telemetry;

use std::path::Path;
use std::sync::Arc;

use rampart_hub::{DataDir, HubConfig};
use rampart_store::Store;

use crate::CliError;

/// Opens a data directory: its configuration and its store.
pub async fn open(data_dir: &Path) -> Result<(DataDir, HubConfig, Arc<dyn Store>), CliError> {
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

/// Parses repeated `NAME=VALUE` options.
pub fn pairs(
    items: &[String],
    what: &str,
) -> Result<std::collections::BTreeMap<String, String>, CliError> {
    items
        .iter()
        .map(|kv| {
            kv.split_once('=')
                .filter(|(k, _)| !k.is_empty())
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .ok_or_else(|| CliError::new(format!("{what} {kv:?}: expected NAME=VALUE"), None))
        })
        .collect()
}

/// Tells the operator what a change did to the running hub.
pub fn live_note(o: &rampart_hub::ops::LiveOutcome) -> String {
    match (o.hub_running, o.disconnected) {
        (false, _) => "no hub is running; it applies the change when it starts".into(),
        (true, Some(n)) if n > 0 => {
            format!("the running hub applied it and closed {n} live connection(s)")
        }
        (true, _) => "the running hub applied it to live sessions".into(),
    }
}
