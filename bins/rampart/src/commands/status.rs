//! `rampart status`.

use std::path::Path;

use rampart_hub::DataDir;
use rampart_hub::control::{self, Request};

use crate::CliError;

pub async fn run(data_dir: &Path, json: bool) -> Result<(), CliError> {
    let dir = DataDir::new(data_dir);
    dir.load_config()?;
    let Some(resp) = control::request(&dir.socket_path(), &Request::Status).await? else {
        return Err(CliError::new(
            format!("no hub is running on {}", data_dir.display()),
            Some("start it with `rampart hub --data-dir DIR`"),
        ));
    };
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&resp).unwrap_or_default()
        );
        return Ok(());
    }
    if let Some(m) = &resp.metrics {
        for (k, v) in &m.values {
            println!("{k:48} {v}");
        }
        let refused: Vec<_> = m.refusals.iter().filter(|(_, n)| **n > 0).collect();
        if !refused.is_empty() {
            println!("\nrefusals:");
            for (reason, n) in refused {
                println!("  {reason:40} {n}");
            }
        }
    }
    if let Some(clients) = &resp.clients {
        println!(
            "\n{:24} {:10} {:8} {:>5} {:>7} {:>8}",
            "CLIENT", "STATE", "MQTT", "SUBS", "QUEUED", "INFLIGHT"
        );
        for c in clients {
            println!(
                "{:24} {:10} {:8} {:>5} {:>7} {:>8}",
                c.client_id,
                if c.connected { "connected" } else { "offline" },
                c.protocol,
                c.subscriptions,
                c.queued,
                c.inflight
            );
        }
    }
    Ok(())
}
