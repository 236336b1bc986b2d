//! Fleet provisioning: a factory-fresh device (no device certificate, a `[provisioning]`
//! section) connects with the batch's claim certificate, sends a CSR for a key it made itself
//! with its serial number, and stores the device certificate the hub returns. The private key
//! never leaves the device.

use std::time::Duration;

use rampart_pki::{KeyAlgorithm, PrivateKey, create_csr};
use rumqttc::{Event, Packet, QoS};
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::config::{AgentConfig, ProvisioningSection};
use crate::connection::{backoff, explain, mqtt_client, request_id};
use crate::credentials::{Credentials, Pair};
use crate::error::AgentError;
use crate::runner::Answer;

/// Fleet provisioning: connect with the claim certificate, send a CSR for a key made here,
/// and store the device certificate the hub returns. Returns false on shutdown.
pub async fn provision(
    cfg: &AgentConfig,
    p: &ProvisioningSection,
    creds: &Credentials,
    shutdown: &CancellationToken,
) -> Result<bool, AgentError> {
    let claim = Pair {
        cert: cfg.resolve(&p.claim_cert),
        key: cfg.resolve(&p.claim_key),
    };
    if !claim.exists() {
        return Err(AgentError::Tls(format!(
            "provisioning needs the claim certificate {} and key {}",
            claim.cert.display(),
            claim.key.display()
        )));
    }
    let client_id = p.serial_number.as_str();
    let request_topic = format!("$rampart/provision/{client_id}/request");
    let response_topic = format!("$rampart/provision/{client_id}/response");
    let alg: KeyAlgorithm = cfg
        .credentials
        .key_algorithm
        .parse()
        .map_err(AgentError::Tls)?;
    let mut failures: u32 = 0;
    tracing::info!(serial = %p.serial_number, "no device certificate yet: provisioning with the claim certificate");
    loop {
        // The key is made here and never leaves the device: only its CSR is sent.
        let key = PrivateKey::generate(alg).map_err(|e| AgentError::Tls(e.to_string()))?;
        let csr = create_csr(&p.serial_number, &key).map_err(|e| AgentError::Tls(e.to_string()))?;
        let rid = request_id();
        let (client, mut eventloop) = mqtt_client(cfg, creds.vault(), &claim, client_id, None, 10)?;
        let outcome: Result<(String, String), String> = loop {
            let ev = tokio::select! {
                ev = eventloop.poll() => ev,
                _ = shutdown.cancelled() => return Ok(false),
            };
            match ev {
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    let _ = client.try_subscribe(response_topic.as_str(), QoS::AtLeastOnce);
                }
                Ok(Event::Incoming(Packet::SubAck(_))) => {
                    let body = json!({
                        "request_id": rid,
                        "serial_number": p.serial_number,
                        "csr": csr,
                        "attributes": p.attributes,
                    });
                    let _ = client.try_publish(
                        request_topic.as_str(),
                        QoS::AtLeastOnce,
                        false,
                        body.to_string(),
                    );
                }
                Ok(Event::Incoming(Packet::Publish(m))) if m.topic == response_topic => {
                    match serde_json::from_slice::<Answer>(&m.payload) {
                        Ok(a) if a.request_id == rid && a.status == "accepted" => match a
                            .certificate
                        {
                            Some(c) => break Ok((c, key.to_pem())),
                            None => break Err("the hub accepted but sent no certificate".into()),
                        },
                        Ok(a) if a.request_id == rid => {
                            break Err(a.reason.unwrap_or_else(|| "rejected".into()));
                        }
                        _ => {}
                    }
                }
                Ok(_) => {}
                Err(e) => break Err(explain(&e)),
            }
        };
        let _ = client.try_disconnect();
        match outcome {
            Ok((cert, key_pem)) => {
                creds.store_pending(&cert, &key_pem)?;
                creds.promote()?;
                let id = creds.current.info()?.common_name.unwrap_or_default();
                tracing::info!(device = %id, "provisioned: device certificate stored");
                return Ok(true);
            }
            Err(reason) => {
                let delay = backoff(
                    failures,
                    cfg.reconnect.initial_backoff.max(Duration::from_secs(5)),
                    cfg.reconnect.max_backoff,
                );
                failures = failures.saturating_add(1);
                tracing::error!(%reason, retry_in = ?delay, "provisioning rejected");
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = shutdown.cancelled() => return Ok(false),
                }
            }
        }
    }
}
