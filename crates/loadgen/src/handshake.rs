//! The reference for connection rates: full TLS 1.3 mutual-TLS handshakes between rustls
//! client and server in memory, on one thread, with the fleet's P-256 certificates. Only the
//! time spent in the server's calls is counted, so the rate is what one core serving
//! handshakes could do with nothing else to do (BENCHMARKS.md: ~4,175/s here).
//!
//! Full handshakes only: the clients keep no sessions. A rustls client remembers the tickets
//! a server sends after a handshake and offers them on its next one; the server then resumes
//! the session and neither signs nor verifies a certificate. Since the reference cycles
//! through a few client identities, all but its first handshakes would be resumptions, a
//! rate about twice the full handshake's — and the connection storm it is compared with
//! makes only full handshakes (each device connects once).

use std::io::Cursor;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::client::Resumption;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, pem::PemObject};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConnection, HandshakeKind, ServerConfig, ServerConnection};
use serde::Serialize;

use crate::LoadError;
use crate::client::tls_config;
use crate::fleet::Fleet;
use crate::trust::ServerTrust;

/// Handshakes completed and their server-side cost.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct HandshakeRate {
    pub handshakes: u64,
    /// Handshakes per second of server-side CPU time.
    pub server_per_s: f64,
}

fn tls(e: impl std::fmt::Display) -> LoadError {
    LoadError::Tls(e.to_string())
}

/// The server side of the reference handshakes, also used by [`crate::floor`]: TLS 1.3 only,
/// the fleet's server certificate, client certificates verified against the fleet CA.
pub(crate) fn server_config(fleet: &Fleet) -> Result<Arc<ServerConfig>, LoadError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(fleet.ca_pem.as_bytes()) {
        roots.add(c.map_err(tls)?).map_err(tls)?;
    }
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .map_err(tls)?;
    let chain = CertificateDer::pem_slice_iter(fleet.server.cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(tls)?;
    let key = PrivateKeyDer::from_pem_slice(fleet.server.key_pem.as_bytes()).map_err(tls)?;
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(tls)?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .map_err(tls)?;
    // As the hub's listener: no session tickets (a full handshake is what both count).
    config.send_tls13_tickets = 0;
    config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    Ok(Arc::new(config))
}

/// Runs handshakes for about `duration` (at most `max`).
pub fn server_rate(
    fleet: &Fleet,
    duration: Duration,
    max: u64,
) -> Result<HandshakeRate, LoadError> {
    let server = server_config(fleet)?;
    let trust = ServerTrust::from_pem(&fleet.ca_pem)?;
    let clients = fleet
        .devices
        .iter()
        .take(16)
        .map(|d| {
            let mut config = Arc::unwrap_or_clone(tls_config(&trust, &d.cert_pem, &d.key_pem)?);
            config.resumption = Resumption::disabled();
            Ok(Arc::new(config))
        })
        .collect::<Result<Vec<_>, LoadError>>()?;
    if clients.is_empty() {
        return Err(LoadError::Invalid("the fleet has no devices".into()));
    }
    let name = ServerName::try_from("localhost").map_err(tls)?;
    let start = Instant::now();
    let mut server_time = Duration::ZERO;
    let mut n = 0u64;
    let mut wire = Vec::with_capacity(16 * 1024);
    while n < max && start.elapsed() < duration {
        let mut c =
            ClientConnection::new(clients[n as usize % clients.len()].clone(), name.clone())
                .map_err(tls)?;
        let t = Instant::now();
        let mut s = ServerConnection::new(server.clone()).map_err(tls)?;
        server_time += t.elapsed();
        for _round in 0..8 {
            while c.wants_write() {
                wire.clear();
                c.write_tls(&mut wire).map_err(tls)?;
                let t = Instant::now();
                s.read_tls(&mut Cursor::new(&wire)).map_err(tls)?;
                s.process_new_packets().map_err(tls)?;
                server_time += t.elapsed();
            }
            let t = Instant::now();
            wire.clear();
            while s.wants_write() {
                s.write_tls(&mut wire).map_err(tls)?;
            }
            server_time += t.elapsed();
            if !wire.is_empty() {
                c.read_tls(&mut Cursor::new(&wire)).map_err(tls)?;
                c.process_new_packets().map_err(tls)?;
            }
            if !c.is_handshaking() && !s.is_handshaking() {
                break;
            }
        }
        if c.is_handshaking() || s.is_handshaking() {
            return Err(LoadError::Tls(
                "an in-memory handshake did not complete".into(),
            ));
        }
        if s.handshake_kind() != Some(HandshakeKind::Full) {
            return Err(LoadError::Tls(format!(
                "an in-memory handshake was not a full one ({:?}): the reference counts only \
                 full handshakes",
                s.handshake_kind()
            )));
        }
        n += 1;
    }
    Ok(HandshakeRate {
        handshakes: n,
        server_per_s: n as f64 / server_time.as_secs_f64().max(1e-9),
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn in_memory_mutual_tls_handshakes_complete_and_are_counted() {
        let f = Fleet::issue(2).unwrap();
        let r = server_rate(&f, Duration::from_secs(5), 20).unwrap();
        assert_eq!(r.handshakes, 20);
        assert!(r.server_per_s > 10.0, "{r:?}");
    }
}
