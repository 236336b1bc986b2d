//! How the generator's devices authenticate the broker: rustls's WebPKI verifier, with the
//! last chain it accepted remembered for a minute.
//!
//! Every simulated device would otherwise verify the broker's certificate chain again on each
//! connection — one P-256 signature check of the same bytes each time, about a tenth of the
//! generator's CPU in a connection storm, where the generator shares the machine with the
//! broker it measures. A chain byte-for-byte equal to one verified less than [`REUSE_FOR`]
//! ago, for the same server name, is accepted without that check. The handshake's own
//! signature (TLS 1.3 CertificateVerify), which proves the broker holds the certificate's key,
//! is still verified on every connection, and any other chain gets the full verification.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rustls::DigitallySignedStruct;
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime, pem::PemObject};

use crate::LoadError;

/// How long an accepted chain is taken as verified: long enough to cover a connection storm,
/// short enough that the chain's validity period is checked again during a long run.
pub const REUSE_FOR: Duration = Duration::from_secs(60);

/// The broker's trust anchors and the chain last accepted, shared by all devices of a run.
#[derive(Debug)]
pub struct ServerTrust {
    provider: Arc<CryptoProvider>,
    webpki: Arc<WebPkiServerVerifier>,
    accepted: Mutex<Option<Accepted>>,
    /// Chains verified in full (not taken from `accepted`).
    full: AtomicU64,
}

#[derive(Debug)]
struct Accepted {
    end_entity: Vec<u8>,
    intermediates: Vec<Vec<u8>>,
    server_name: ServerName<'static>,
    at: UnixTime,
}

impl Accepted {
    fn covers(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        now: UnixTime,
    ) -> bool {
        let age = now.as_secs().saturating_sub(self.at.as_secs());
        // A clock that went back counts as expired, not as young.
        now.as_secs() >= self.at.as_secs()
            && age < REUSE_FOR.as_secs()
            && self.end_entity == end_entity.as_ref()
            && self.intermediates.len() == intermediates.len()
            && self
                .intermediates
                .iter()
                .zip(intermediates)
                .all(|(a, b)| a.as_slice() == b.as_ref())
            && self.server_name == *server_name
    }
}

impl ServerTrust {
    /// Trusts the CA certificates in `ca_pem` (PEM, one or more).
    pub fn from_pem(ca_pem: &str) -> Result<Arc<ServerTrust>, LoadError> {
        let mut roots = rustls::RootCertStore::empty();
        for c in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
            let c = c.map_err(|e| LoadError::Tls(format!("CA certificate: {e}")))?;
            roots
                .add(c)
                .map_err(|e| LoadError::Tls(format!("CA certificate: {e}")))?;
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let webpki = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
            .build()
            .map_err(|e| LoadError::Tls(format!("CA certificate: {e}")))?;
        Ok(Arc::new(ServerTrust {
            provider,
            webpki,
            accepted: Mutex::new(None),
            full: AtomicU64::new(0),
        }))
    }

    /// The crypto provider the devices' TLS configurations use.
    pub(crate) fn provider(&self) -> Arc<CryptoProvider> {
        self.provider.clone()
    }

    /// How many chains were verified in full so far.
    pub fn full_verifications(&self) -> u64 {
        self.full.load(Ordering::Relaxed)
    }

    fn remembered(&self) -> std::sync::MutexGuard<'_, Option<Accepted>> {
        // A panic while holding the lock left at worst a stale entry, which `covers` checks
        // like any other.
        self.accepted.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl ServerCertVerifier for ServerTrust {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if self
            .remembered()
            .as_ref()
            .is_some_and(|a| a.covers(end_entity, intermediates, server_name, now))
        {
            return Ok(ServerCertVerified::assertion());
        }
        self.full.fetch_add(1, Ordering::Relaxed);
        let verified = self.webpki.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        )?;
        *self.remembered() = Some(Accepted {
            end_entity: end_entity.to_vec(),
            intermediates: intermediates.iter().map(|c| c.to_vec()).collect(),
            server_name: server_name.to_owned(),
            at: now,
        });
        Ok(verified)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.webpki.supported_verify_schemes()
    }
}

#[cfg(test)]
mod tests {
    use std::io::Cursor;

    use rustls::pki_types::PrivateKeyDer;
    use rustls::server::{ClientHello, ResolvesServerCert};
    use rustls::sign::CertifiedKey;
    use rustls::{ClientConnection, ServerConfig, ServerConnection};

    use super::*;
    use crate::client::tls_config;
    use crate::fleet::Fleet;

    /// A server that presents `cert_pem` and signs with `key_pem`, whether or not they match.
    #[derive(Debug)]
    struct Presents(Arc<CertifiedKey>);

    impl ResolvesServerCert for Presents {
        fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
            Some(self.0.clone())
        }
    }

    fn server(fleet: &Fleet, cert_pem: &str, key_pem: &str) -> Arc<ServerConfig> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let chain = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .unwrap();
        let key = provider
            .key_provider
            .load_private_key(PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).unwrap())
            .unwrap();
        let mut roots = rustls::RootCertStore::empty();
        for c in CertificateDer::pem_slice_iter(fleet.ca_pem.as_bytes()) {
            roots.add(c.unwrap()).unwrap();
        }
        let clients = rustls::server::WebPkiClientVerifier::builder_with_provider(
            roots.into(),
            provider.clone(),
        )
        .build()
        .unwrap();
        let config = ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_client_cert_verifier(clients)
            .with_cert_resolver(Arc::new(Presents(Arc::new(CertifiedKey::new(chain, key)))));
        Arc::new(config)
    }

    /// One full handshake in memory; the client's error if it fails.
    fn handshake(
        client: Arc<rustls::ClientConfig>,
        server: Arc<ServerConfig>,
    ) -> Result<(), rustls::Error> {
        let name = ServerName::try_from("localhost").unwrap();
        let mut c = ClientConnection::new(client, name).unwrap();
        let mut s = ServerConnection::new(server).unwrap();
        let mut wire = Vec::new();
        for _ in 0..8 {
            wire.clear();
            while c.wants_write() {
                c.write_tls(&mut wire).unwrap();
            }
            if !wire.is_empty() {
                s.read_tls(&mut Cursor::new(&wire)).unwrap();
                // The server's own failure is the client's certificate; these tests are
                // about the client's view, which it learns from the alert that follows.
                let _ = s.process_new_packets();
            }
            wire.clear();
            while s.wants_write() {
                s.write_tls(&mut wire).unwrap();
            }
            if !wire.is_empty() {
                c.read_tls(&mut Cursor::new(&wire)).unwrap();
                c.process_new_packets()?;
            }
            if !c.is_handshaking() && !s.is_handshaking() {
                return Ok(());
            }
        }
        panic!("the handshake neither completed nor failed");
    }

    #[test]
    fn a_chain_verified_once_is_reused_and_the_handshake_signature_is_still_checked() {
        let fleet = Fleet::issue(1).unwrap();
        let other = Fleet::issue(0).unwrap();
        let trust = ServerTrust::from_pem(&fleet.ca_pem).unwrap();
        let d = &fleet.devices[0];
        let client = tls_config(&trust, &d.cert_pem, &d.key_pem).unwrap();
        let genuine = server(&fleet, &fleet.server.cert_pem, &fleet.server.key_pem);
        for _ in 0..3 {
            handshake(client.clone(), genuine.clone()).unwrap();
        }
        assert_eq!(trust.full_verifications(), 1);

        // The genuine certificate, replayed by a server without its key: the remembered
        // chain passes, the CertificateVerify signature does not.
        let impostor = server(&fleet, &fleet.server.cert_pem, &other.server.key_pem);
        let e = handshake(client.clone(), impostor).unwrap_err();
        assert!(
            matches!(
                e,
                rustls::Error::InvalidCertificate(rustls::CertificateError::BadSignature)
            ),
            "{e:?}"
        );
        assert_eq!(trust.full_verifications(), 1);

        // Another CA's certificate gets the full verification, and fails it (that CA has the
        // same name as the trusted one, so its signature is what does not verify).
        let stranger = server(&fleet, &other.server.cert_pem, &other.server.key_pem);
        let e = handshake(client.clone(), stranger).unwrap_err();
        assert!(
            matches!(
                e,
                rustls::Error::InvalidCertificate(
                    rustls::CertificateError::BadSignature
                        | rustls::CertificateError::UnknownIssuer
                )
            ),
            "{e:?}"
        );
        assert_eq!(trust.full_verifications(), 2);
        // It replaced nothing: the genuine chain is still the one remembered.
        handshake(client, genuine).unwrap();
        assert_eq!(trust.full_verifications(), 2);
    }

    #[test]
    fn the_chain_is_verified_again_after_a_minute_for_another_name_or_when_the_clock_goes_back() {
        let fleet = Fleet::issue(0).unwrap();
        let trust = ServerTrust::from_pem(&fleet.ca_pem).unwrap();
        let cert = CertificateDer::from_pem_slice(fleet.server.cert_pem.as_bytes()).unwrap();
        let localhost = ServerName::try_from("localhost").unwrap();
        let t0 = UnixTime::now();
        let at = |s: u64| UnixTime::since_unix_epoch(Duration::from_secs(t0.as_secs() + s));
        let verify =
            |name: &ServerName<'_>, now| trust.verify_server_cert(&cert, &[], name, &[], now);

        verify(&localhost, at(0)).unwrap();
        verify(&localhost, at(REUSE_FOR.as_secs() - 1)).unwrap();
        assert_eq!(trust.full_verifications(), 1);
        verify(&localhost, at(REUSE_FOR.as_secs())).unwrap();
        assert_eq!(trust.full_verifications(), 2);

        // The certificate names 127.0.0.1 too: verified in full, then remembered for it.
        let ip = ServerName::try_from("127.0.0.1").unwrap();
        verify(&ip, at(REUSE_FOR.as_secs())).unwrap();
        assert_eq!(trust.full_verifications(), 3);
        // A name the certificate does not hold fails, however recent the last acceptance.
        let e = verify(
            &ServerName::try_from("example.org").unwrap(),
            at(REUSE_FOR.as_secs()),
        )
        .unwrap_err();
        assert!(
            matches!(
                e,
                rustls::Error::InvalidCertificate(rustls::CertificateError::NotValidForName)
                    | rustls::Error::InvalidCertificate(
                        rustls::CertificateError::NotValidForNameContext { .. }
                    )
            ),
            "{e:?}"
        );
        assert_eq!(trust.full_verifications(), 4);

        verify(&localhost, at(REUSE_FOR.as_secs())).unwrap();
        verify(&localhost, at(1)).unwrap();
        assert_eq!(trust.full_verifications(), 6);
    }
}
