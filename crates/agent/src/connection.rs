//! One MQTT connection to the hub: the rumqttc client over mutual TLS, its event loop in a
//! task of its own, backoff between attempts, and failures explained in operator terms.
//!
//! Each connection is a fresh client with a clean session. rumqttc keeps unacknowledged
//! publishes only in memory; the agent does not rely on that — after a failure the client is
//! dropped and the next connection sends again from the outbox, which is on disk.

use std::time::Duration;

use rumqttc::{
    AsyncClient, ConnectionError, Event, EventLoop, LastWill, MqttOptions, TlsConfiguration,
    Transport,
};
use serde_json::json;
use time::OffsetDateTime;
use tokio::sync::mpsc;

use crate::config::AgentConfig;
use crate::credentials::Pair;
use crate::error::AgentError;
use crate::vault::Vault;

/// The retained status document on `devices/{id}/status`.
pub fn status_payload(state: &str) -> Vec<u8> {
    let ts = OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default();
    json!({ "state": state, "ts": ts, "agent": env!("CARGO_PKG_VERSION") })
        .to_string()
        .into_bytes()
}

/// Explains a connection failure in terms an operator can act on.
pub fn explain(e: &ConnectionError) -> String {
    match e {
        ConnectionError::ConnectionRefused(code) => format!(
            "the hub refused the connection ({code:?}): the device may be disabled, unknown, \
             pending approval, or its certificate revoked or not registered"
        ),
        ConnectionError::Tls(t) => format!(
            "TLS failed ({t}): check that hub.ca is the hub's CA and that the certificate is valid"
        ),
        ConnectionError::Io(io) => format!("network error: {io}"),
        other => other.to_string(),
    }
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

/// A random id correlating a request with its answer.
pub fn request_id() -> String {
    format!("{:016x}", fastrand::u64(..))
}

/// A client for one connection with `pair`. `inflight` bounds unacknowledged publishes.
pub fn mqtt_client(
    cfg: &AgentConfig,
    vault: &Vault,
    pair: &Pair,
    client_id: &str,
    will: Option<LastWill>,
    inflight: u16,
) -> Result<(AsyncClient, EventLoop), AgentError> {
    let key = pair.key_pem(vault)?;
    let tls = crate::tls::client_config(&cfg.resolve(&cfg.hub.ca), &pair.cert, &key, &pair.key)?;
    let (host, port) = cfg.hub_host_port().map_err(|message| AgentError::Config {
        path: cfg.base_dir.join("agent.toml"),
        message,
    })?;
    let mut options = MqttOptions::new(client_id.to_owned(), host, port);
    options
        .set_keep_alive(cfg.hub.keep_alive)
        .set_clean_session(true)
        .set_inflight(inflight.max(1))
        .set_max_packet_size(256 * 1024, 256 * 1024)
        .set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(tls)));
    if let Some(w) = will {
        options.set_last_will(w);
    }
    Ok(AsyncClient::new(options, 64))
}

/// The MQTT event loop, polled in its own task: rumqttc's connect is not cancel-safe, so it
/// must never sit in a `select!` beside timers. The task forwards events until the first
/// error, forwards that, and ends: one task per connection.
#[derive(Debug)]
pub struct EventTask {
    pub rx: mpsc::Receiver<Result<Event, String>>,
    handle: tokio::task::JoinHandle<()>,
}

impl EventTask {
    pub fn spawn(mut eventloop: EventLoop) -> EventTask {
        let (tx, rx) = mpsc::channel(256);
        let handle = tokio::spawn(async move {
            loop {
                match eventloop.poll().await {
                    Ok(ev) => {
                        if tx.send(Ok(ev)).await.is_err() {
                            return;
                        }
                    }
                    Err(e) => {
                        let _ = tx.send(Err(explain(&e))).await;
                        return;
                    }
                }
            }
        });
        EventTask { rx, handle }
    }

    /// Sends DISCONNECT and waits (up to 3 s) until it is out, then stops the task.
    /// Acknowledgements arriving meanwhile are not recorded: those records are sent again by
    /// the next connection (the hub stores them once).
    pub async fn disconnect(&mut self, client: &AsyncClient) {
        let _ = client.try_disconnect();
        let _ = tokio::time::timeout(Duration::from_secs(3), async {
            while let Some(ev) = self.rx.recv().await {
                match ev {
                    Ok(Event::Outgoing(rumqttc::Outgoing::Disconnect)) | Err(_) => break,
                    Ok(_) => {}
                }
            }
        })
        .await;
        self.stop();
    }

    pub fn stop(&self) {
        self.handle.abort();
    }
}

impl Drop for EventTask {
    fn drop(&mut self) {
        self.handle.abort();
    }
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
        let samples: std::collections::HashSet<u128> =
            (0..20).map(|_| backoff(3, i, m).as_millis()).collect();
        assert!(samples.len() > 1);
    }
}
