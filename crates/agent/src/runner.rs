//! The agent's main loop: read the BMS every interval, publish the reading, keep the
//! connection to the hub alive.
//!
//! Two tasks share an MQTT client. The reader takes a reading per interval, numbers it and
//! queues it for publication (QoS 1); the connection task drives the MQTT event loop,
//! reconnecting after failures with exponential backoff and full jitter. While the hub is
//! unreachable readings wait in a bounded queue; when it is full, new readings are dropped and
//! counted (their sequence numbers are still used, so the hub sees the gap).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use rampart_bms::{BmsSource, SimulatedPack, TelemetryMessage};
use rumqttc::{
    AsyncClient, ConnectionError, Event, LastWill, MqttOptions, Packet, QoS, TlsConfiguration,
    Transport,
};
use serde_json::json;
use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;

use crate::config::{AgentConfig, BmsSection};
use crate::error::AgentError;
use crate::sequence::Sequence;

/// What the agent did, for logs, status and tests.
#[derive(Debug, Default)]
pub struct AgentStats {
    pub readings: AtomicU64,
    /// Readings acknowledged by the hub (PUBACK).
    pub acknowledged: AtomicU64,
    /// Readings dropped because the queue was full.
    pub dropped: AtomicU64,
    pub bms_errors: AtomicU64,
    pub connects: AtomicU64,
    pub connection_failures: AtomicU64,
    pub connected: AtomicBool,
}

fn source_from(cfg: &AgentConfig) -> Box<dyn BmsSource> {
    match &cfg.bms {
        BmsSection::Simulator(sim) => Box::new(SimulatedPack::new(sim.clone())),
    }
}

fn status_payload(state: &str) -> Vec<u8> {
    let ts = OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default();
    json!({ "state": state, "ts": ts, "agent": env!("CARGO_PKG_VERSION") })
        .to_string()
        .into_bytes()
}

/// Explains a connection failure in terms an operator can act on.
fn explain(e: &ConnectionError) -> String {
    match e {
        ConnectionError::ConnectionRefused(code) => format!(
            "the hub refused the connection ({code:?}): the device may be disabled, unknown, or \
             its certificate not registered"
        ),
        ConnectionError::Tls(t) => format!(
            "TLS failed ({t}): check that hub.ca is the hub's CA and that the certificate is valid"
        ),
        ConnectionError::Io(io) => format!("network error: {io}"),
        other => other.to_string(),
    }
}

/// Runs the agent until `shutdown` is cancelled, then disconnects cleanly (publishing an
/// "offline" status and waiting up to 5 s for outstanding acknowledgements).
pub async fn run(
    cfg: AgentConfig,
    shutdown: CancellationToken,
    stats: Arc<AgentStats>,
) -> Result<(), AgentError> {
    let tls = crate::tls::client_config(
        &cfg.resolve(&cfg.hub.ca),
        &cfg.resolve(&cfg.hub.cert),
        &cfg.resolve(&cfg.hub.key),
    )?;
    let (host, port) = cfg.hub_host_port().map_err(|message| AgentError::Config {
        path: cfg.base_dir.join("agent.toml"),
        message,
    })?;
    let mut seq = Sequence::open(&cfg.resolve(&cfg.state_dir))?;
    let telemetry_topic = format!("devices/{}/telemetry", cfg.device_id);
    let status_topic = format!("devices/{}/status", cfg.device_id);

    let mut options = MqttOptions::new(cfg.device_id.clone(), host, port);
    options
        .set_keep_alive(cfg.hub.keep_alive)
        .set_clean_session(true)
        .set_max_packet_size(256 * 1024, 256 * 1024)
        .set_last_will(LastWill::new(
            status_topic.clone(),
            status_payload("offline"),
            QoS::AtLeastOnce,
            true,
        ))
        .set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(tls)));
    let (client, mut eventloop) = AsyncClient::new(options, cfg.telemetry.queue);

    tracing::info!(device = %cfg.device_id, hub = %cfg.hub.address, next_seq = seq.peek(),
        interval = ?cfg.telemetry.interval, "agent starting");

    // Reader task.
    let reader_stop = shutdown.child_token();
    let reader = {
        let client = client.clone();
        let stats = stats.clone();
        let stop = reader_stop.clone();
        let mut source = source_from(&cfg);
        let interval = cfg.telemetry.interval;
        let topic = telemetry_topic.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = stop.cancelled() => return Ok::<(), AgentError>(()),
                }
                let reading = match source.read().await {
                    Ok(r) => r,
                    Err(e) => {
                        stats.bms_errors.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(error = %e, "BMS reading failed");
                        continue;
                    }
                };
                let n = seq.take()?;
                let msg = TelemetryMessage {
                    v: 1,
                    seq: n,
                    reading,
                };
                let payload = match serde_json::to_vec(&msg) {
                    Ok(p) => p,
                    Err(e) => {
                        tracing::error!(error = %e, "cannot encode reading");
                        continue;
                    }
                };
                stats.readings.fetch_add(1, Ordering::Relaxed);
                if client
                    .try_publish(topic.as_str(), QoS::AtLeastOnce, false, payload)
                    .is_err()
                {
                    let d = stats.dropped.fetch_add(1, Ordering::Relaxed) + 1;
                    if d.is_power_of_two() {
                        tracing::warn!(
                            dropped_total = d,
                            seq = n,
                            "telemetry queue full while the hub is unreachable: reading dropped"
                        );
                    }
                } else {
                    tracing::debug!(seq = n, "reading queued");
                }
            }
        })
    };

    // Connection task (this one).
    let mut failures: u32 = 0;
    loop {
        let event = tokio::select! {
            ev = eventloop.poll() => ev,
            _ = shutdown.cancelled() => break,
        };
        match event {
            Ok(Event::Incoming(Packet::ConnAck(_))) => {
                failures = 0;
                stats.connects.fetch_add(1, Ordering::Relaxed);
                stats.connected.store(true, Ordering::Relaxed);
                tracing::info!(hub = %cfg.hub.address, "connected to the hub");
                let _ = client.try_publish(
                    status_topic.as_str(),
                    QoS::AtLeastOnce,
                    true,
                    status_payload("online"),
                );
            }
            Ok(Event::Incoming(Packet::PubAck(_))) => {
                stats.acknowledged.fetch_add(1, Ordering::Relaxed);
            }
            Ok(Event::Incoming(Packet::Disconnect)) => {
                tracing::warn!("the hub closed the session");
            }
            Ok(_) => {}
            Err(e) => {
                stats.connected.store(false, Ordering::Relaxed);
                stats.connection_failures.fetch_add(1, Ordering::Relaxed);
                let delay = backoff(
                    failures,
                    cfg.reconnect.initial_backoff,
                    cfg.reconnect.max_backoff,
                );
                failures = failures.saturating_add(1);
                tracing::warn!(error = %explain(&e), retry_in = ?delay, attempt = failures,
                    "connection to the hub failed");
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = shutdown.cancelled() => break,
                }
            }
        }
    }

    // Clean shutdown.
    reader_stop.cancel();
    let reader_result = reader.await.unwrap_or(Ok(()));
    if stats.connected.load(Ordering::Relaxed) {
        let _ = client.try_publish(
            status_topic.as_str(),
            QoS::AtLeastOnce,
            true,
            status_payload("offline"),
        );
        let _ = client.try_disconnect();
        let _ = tokio::time::timeout(Duration::from_secs(5), async {
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Packet::PubAck(_))) => {
                        stats.acknowledged.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(Event::Outgoing(rumqttc::Outgoing::Disconnect)) | Err(_) => break,
                    Ok(_) => {}
                }
            }
        })
        .await;
    }
    stats.connected.store(false, Ordering::Relaxed);
    tracing::info!(
        readings = stats.readings.load(Ordering::Relaxed),
        acknowledged = stats.acknowledged.load(Ordering::Relaxed),
        dropped = stats.dropped.load(Ordering::Relaxed),
        "agent stopped"
    );
    reader_result
}

/// Exponential backoff with full jitter: a random delay in [base/2, base] where base doubles
/// per consecutive failure up to `max`. The jitter spreads a fleet's reconnects after a hub
/// restart instead of letting them arrive in one wave.
pub fn backoff(failures: u32, initial: Duration, max: Duration) -> Duration {
    let base = initial
        .checked_mul(1u32.checked_shl(failures.min(16)).unwrap_or(u32::MAX))
        .unwrap_or(max)
        .min(max);
    let half = base / 2;
    half + base.mul_f64(fastrand::f64() * 0.5)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_is_capped_with_jitter() {
        let i = Duration::from_secs(1);
        let m = Duration::from_secs(60);
        for f in 0..30 {
            let d = backoff(f, i, m);
            let base = (i * 2u32.pow(f.min(6))).min(m);
            assert!(
                d >= base / 2 && d <= base,
                "failure {f}: {d:?} vs base {base:?}"
            );
        }
        // Jitter: not all delays equal.
        let samples: std::collections::HashSet<u128> =
            (0..20).map(|_| backoff(3, i, m).as_millis()).collect();
        assert!(samples.len() > 1);
    }
}
