//! `rampart demo`: the whole platform in one command.
//!
//! Creates a hub in a temporary directory (CA, certificates, SQLite database), registers N
//! devices with their own keys and certificates, runs the hub and N simulated battery gateways
//! (the real agent code, talking mutual TLS over loopback), and prints the telemetry as the
//! hub stores it.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use rampart_agent::{AgentConfig, AgentStats};
use rampart_hub::Hub;
use rampart_hub::datadir::{self, DataDir};
use rampart_hub::ops::{self, KeySource};
use rampart_pki::KeyAlgorithm;
use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;

use super::telemetry::{print_header, print_row};
use crate::CliError;

pub struct DemoOptions {
    pub devices: usize,
    pub interval: Duration,
    pub duration: Option<Duration>,
    pub port: u16,
    pub keep: bool,
}

fn io_err(what: &str) -> impl Fn(std::io::Error) -> CliError + '_ {
    move |e| CliError::new(format!("{what}: {e}"), None)
}

pub async fn run(o: DemoOptions) -> Result<(), CliError> {
    if o.devices == 0 || o.devices > 1000 {
        return Err(CliError::new("--devices must be between 1 and 1000", None));
    }
    if o.interval < Duration::from_millis(100) {
        return Err(CliError::new("--interval must be at least 100ms", None));
    }
    let tmp = tempfile::Builder::new()
        .prefix("rampart-demo-")
        .tempdir()
        .map_err(io_err("cannot create a temporary directory"))?;
    let root = tmp.path().to_path_buf();
    let dir = DataDir::new(root.join("hub"));
    datadir::init(&dir, &[], KeyAlgorithm::EcdsaP256, false)?;
    let mut cfg = dir.load_config()?;
    cfg.mqtt.listen = format!("127.0.0.1:{}", o.port);
    cfg.metrics.listen = "127.0.0.1:0".into();
    cfg.device_api.listen = "127.0.0.1:0".into();
    let hub = Hub::start(&dir, cfg.clone(), None).await?;
    let addr = hub.mqtt_addr();
    let store = hub.store();

    let stop = CancellationToken::new();
    let mut agents = Vec::new();
    let mut ids = Vec::new();
    let interval = humantime::format_duration(o.interval).to_string();
    for i in 1..=o.devices {
        let id = format!("demo-gw-{i:02}");
        let out = root.join("devices").join(&id);
        ops::add_device(
            &dir,
            &cfg,
            &*store,
            &id,
            KeySource::Generate(KeyAlgorithm::EcdsaP256),
            Some(&out),
            false,
        )
        .await?;
        let text = AgentConfig::template(&id, &addr.to_string())
            .replace("interval = \"5s\"", &format!("interval = \"{interval}\""))
            .replace("seed = 1", &format!("seed = {i}"))
            .replace(
                "initial_soc_pct = 60.0",
                &format!("initial_soc_pct = {:.1}", 20.0 + (i * 23 % 70) as f64),
            );
        let path = out.join("agent.toml");
        std::fs::write(&path, text).map_err(io_err("cannot write agent.toml"))?;
        let acfg = AgentConfig::load(&path)?;
        let token = stop.child_token();
        agents.push(tokio::spawn(rampart_agent::run(
            acfg,
            token,
            Arc::new(AgentStats::default()),
        )));
        ids.push(id);
    }

    println!(
        "Rampart demo: a hub and {} simulated battery gateway(s)",
        o.devices
    );
    println!("  data directory : {}", dir.root().display());
    println!("  MQTT over TLS  : {addr} (client certificate required)");
    if let Some(m) = hub.metrics_addr() {
        println!("  metrics        : http://{m}/metrics");
    }
    println!(
        "  inspect        : rampart status --data-dir {}",
        dir.root().display()
    );
    println!(
        "                   rampart telemetry {} --data-dir {} --json",
        ids[0],
        dir.root().display()
    );
    println!(
        "  device bundles : {} (key, certificate, CA chain, agent.toml)",
        root.join("devices").display()
    );
    println!();
    println!("Telemetry as stored by the hub (Ctrl-C to stop):");
    print_header();

    let ctrl_c = CancellationToken::new();
    {
        let c = ctrl_c.clone();
        tokio::spawn(async move {
            super::termination().await;
            c.cancel();
        });
    }
    let started = OffsetDateTime::now_utc() - time::Duration::seconds(5);
    let deadline = o.duration.map(|d| tokio::time::Instant::now() + d);
    let mut last_seq: HashMap<String, i64> = HashMap::new();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
            _ = ctrl_c.cancelled() => break,
            _ = async { match deadline { Some(d) => tokio::time::sleep_until(d).await, None => std::future::pending().await } } => break,
        }
        for id in &ids {
            let rows = store.telemetry(id, started, 50).await?;
            let seen = last_seq.entry(id.clone()).or_insert(0);
            let after = *seen;
            for r in rows.iter().filter(|r| r.seq > after) {
                print_row(r);
                *seen = r.seq;
            }
        }
    }

    println!();
    println!("Stopping agents and hub...");
    stop.cancel();
    for a in agents {
        match tokio::time::timeout(Duration::from_secs(10), a).await {
            Ok(Ok(Err(e))) => eprintln!("agent error: {e}"),
            Ok(Err(e)) => eprintln!("agent task failed: {e}"),
            _ => {}
        }
    }
    hub.stop().await;
    for id in &ids {
        println!(
            "  {id}: {} reading(s) stored",
            last_seq.get(id).copied().unwrap_or(0)
        );
    }
    if o.keep {
        let kept = tmp.keep();
        println!("Kept {}", kept.display());
    }
    Ok(())
}
