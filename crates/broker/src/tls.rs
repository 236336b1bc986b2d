//! TLS for the MQTT listener: a rustls server configuration that requires a client
//! certificate chaining to the device CA, and the mapping of handshake failures to specific
//! refusal reasons.

use std::io;
use std::path::Path;
use std::sync::Arc;

use rampart_pki::crl::{CrlError, VerifiedCrl, issuer_and_serial};
use rustls::client::danger::HandshakeSignatureValid;
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{
    CertificateError, DigitallySignedStruct, DistinguishedName, RootCertStore, ServerConfig,
    SignatureScheme,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer, UnixTime};

use crate::refusal::RefusalReason;

/// Why the TLS configuration could not be built.
#[derive(Debug, thiserror::Error)]
pub enum TlsSetupError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: rustls_pki_types::pem::Error,
    },
    #[error("{path} holds no {what}")]
    Empty { path: String, what: &'static str },
    #[error("invalid trusted client CA: {0}")]
    ClientCa(String),
    #[error("invalid server certificate or key: {0}")]
    Server(String),
    #[error("unusable certificate revocation list: {0}")]
    Crl(#[from] CrlError),
}

/// Certificates and keys of the listener.
#[derive(Debug)]
pub struct TlsMaterial {
    /// Hub certificate first, then any intermediates.
    pub server_chain: Vec<CertificateDer<'static>>,
    pub server_key: PrivateKeyDer<'static>,
    /// CAs whose certificates may log in as clients (the device CA).
    pub client_cas: Vec<CertificateDer<'static>>,
    /// Revocation lists of those CAs.
    pub crls: Vec<CertificateRevocationListDer<'static>>,
}

impl TlsMaterial {
    /// Reads PEM files: the server chain, its key and the trusted client CA bundle.
    pub fn from_pem_files(
        server_chain: &Path,
        server_key: &Path,
        client_cas: &Path,
    ) -> Result<TlsMaterial, TlsSetupError> {
        let certs = |p: &Path, what| -> Result<Vec<CertificateDer<'static>>, TlsSetupError> {
            let v = CertificateDer::pem_file_iter(p)
                .and_then(|it| it.collect::<Result<Vec<_>, _>>())
                .map_err(|source| TlsSetupError::Read {
                    path: p.display().to_string(),
                    source,
                })?;
            if v.is_empty() {
                return Err(TlsSetupError::Empty {
                    path: p.display().to_string(),
                    what,
                });
            }
            Ok(v)
        };
        Ok(TlsMaterial {
            server_chain: certs(server_chain, "certificate")?,
            server_key: PrivateKeyDer::from_pem_file(server_key).map_err(|source| {
                TlsSetupError::Read {
                    path: server_key.display().to_string(),
                    source,
                }
            })?,
            client_cas: certs(client_cas, "CA certificate")?,
            crls: Vec::new(),
        })
    }
}

/// Builds the listener's TLS configuration: TLS 1.3 and 1.2, client certificate required and
/// verified (chain to a trusted CA, validity period, clientAuth usage, CRLs).
pub fn server_config(m: TlsMaterial) -> Result<Arc<ServerConfig>, TlsSetupError> {
    // AES-128-GCM with SHA-256 first, and the server's order wins: the same protection as a
    // 128-bit key exchange and P-256 certificates give, and SHA-256 runs on the CPU's SHA
    // instructions where SHA-384 does not (SHA-384 was 4 % of the hub's CPU in a profile of
    // a connection storm). Every suite of the default provider stays allowed.
    let mut provider = rustls::crypto::ring::default_provider();
    provider
        .cipher_suites
        .sort_by_key(|s| s.suite() != rustls::CipherSuite::TLS13_AES_128_GCM_SHA256);
    let provider = Arc::new(provider);
    let crls = m
        .crls
        .iter()
        .map(|crl| VerifiedCrl::verify(crl, m.client_cas.iter().map(|c| c.as_ref())))
        .collect::<Result<Vec<_>, _>>()?;
    let mut roots = RootCertStore::empty();
    for ca in m.client_cas {
        roots
            .add(ca)
            .map_err(|e| TlsSetupError::ClientCa(e.to_string()))?;
    }
    let chain = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .map_err(|e| TlsSetupError::ClientCa(e.to_string()))?;
    let verifier = Arc::new(ClientVerifier { chain, crls });
    let config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| TlsSetupError::Server(e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(m.server_chain, m.server_key)
        .map_err(|e| TlsSetupError::Server(e.to_string()))?;
    let mut config = config;
    config.ignore_client_order = true;
    no_resumption(&mut config);
    Ok(Arc::new(config))
}

/// Client certificates: rustls's WebPKI verifier for the chain (trusted CA, signatures,
/// validity period, clientAuth usage), then revocation of the client's own certificate
/// against CRLs whose signatures were verified when the configuration was built.
///
/// WebPKI can check CRLs itself, but it verifies the list's signature on every handshake:
/// with P-256 CAs, a third signature verification per connection, a quarter of the server's
/// side of the handshake (`cargo bench -p rampart-broker --bench handshake`). CAs without a
/// CRL here (just-in-time CAs of other vendors) are checked by the registry, as is every
/// certificate the hub issued.
#[derive(Debug)]
struct ClientVerifier {
    chain: Arc<dyn ClientCertVerifier>,
    crls: Vec<VerifiedCrl>,
}

impl ClientCertVerifier for ClientVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.chain.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let verified = self
            .chain
            .verify_client_cert(end_entity, intermediates, now)?;
        if !self.crls.is_empty() {
            // The chain verified, so the certificate parses; a failure here is refused all
            // the same.
            let (issuer, serial) = issuer_and_serial(end_entity)
                .map_err(|_| rustls::Error::InvalidCertificate(CertificateError::BadEncoding))?;
            if self
                .crls
                .iter()
                .any(|crl| crl.covers(issuer) && crl.is_revoked(serial))
            {
                return Err(rustls::Error::InvalidCertificate(CertificateError::Revoked));
            }
        }
        Ok(verified)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.chain.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.chain.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.chain.supported_verify_schemes()
    }
}

/// Turns session resumption off: no TLS 1.3 tickets, no TLS 1.2 session cache. A resumed
/// session skips the client's certificate — no chain, validity or CRL check on that
/// connection — and the hub wants every connection to prove its identity against the trust
/// and revocation state of the moment. It also saves the server the tickets' encryption, a
/// random id and a cache entry per connection, for sessions a fleet of thousands would rarely
/// find in a cache of a few hundred.
fn no_resumption(config: &mut ServerConfig) {
    config.send_tls13_tickets = 0;
    config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
}

/// Maps a failed handshake to a refusal reason and a human-readable detail.
pub(crate) fn classify_handshake_error(err: &io::Error) -> (RefusalReason, String) {
    let Some(tls) = err
        .get_ref()
        .and_then(|e| e.downcast_ref::<rustls::Error>())
    else {
        return (RefusalReason::TlsHandshakeFailed, err.to_string());
    };
    let reason = match tls {
        rustls::Error::NoCertificatesPresented => RefusalReason::TlsNoClientCertificate,
        rustls::Error::InvalidCertificate(c) => match c {
            // A bad signature means a CA of the same name signed it (another installation,
            // or a forgery): either way not our device CA.
            CertificateError::UnknownIssuer | CertificateError::BadSignature => {
                RefusalReason::TlsUnknownCa
            }
            CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
                RefusalReason::TlsCertificateExpired
            }
            CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
                RefusalReason::TlsCertificateNotYetValid
            }
            CertificateError::Revoked => RefusalReason::TlsCertificateRevoked,
            _ => RefusalReason::TlsBadCertificate,
        },
        _ => RefusalReason::TlsHandshakeFailed,
    };
    let detail = match reason {
        RefusalReason::TlsNoClientCertificate => {
            "the client presented no certificate; a device certificate is required".to_string()
        }
        RefusalReason::TlsUnknownCa => {
            "the client certificate is not signed by the trusted device CA".to_string()
        }
        _ => tls.to_string(),
    };
    (reason, detail)
}

#[cfg(test)]
mod tests {
    use std::io::Cursor;

    use rampart_pki::{
        Authority, IssuedCert, KeyAlgorithm, PrivateKey, RevocationReason, RevokedEntry, Validity,
    };
    use rustls::{ClientConfig, ClientConnection, ServerConnection};
    use rustls_pki_types::ServerName;
    use time::OffsetDateTime;

    use super::*;

    struct Pki {
        root: Authority,
        devices: Authority,
        server: (IssuedCert, PrivateKey),
    }

    fn pki() -> Pki {
        let v = || Validity::days_from_now(30);
        let root = Authority::create_root("Root", None, KeyAlgorithm::EcdsaP256, v()).unwrap();
        let devices = root
            .create_intermediate("Device CA", None, KeyAlgorithm::EcdsaP256, v())
            .unwrap();
        let server = root
            .issue_server(&["localhost".into()], KeyAlgorithm::EcdsaP256, v())
            .unwrap();
        Pki {
            root,
            devices,
            server,
        }
    }

    fn der(pem: &str) -> CertificateDer<'static> {
        CertificateDer::from_pem_slice(pem.as_bytes()).unwrap()
    }

    fn material(p: &Pki, client_cas: &[&Authority], crls: Vec<Vec<u8>>) -> TlsMaterial {
        TlsMaterial {
            server_chain: vec![der(&p.server.0.pem)],
            server_key: PrivateKeyDer::from_pem_slice(p.server.1.to_pem().as_bytes()).unwrap(),
            client_cas: client_cas.iter().map(|a| der(a.cert_pem())).collect(),
            crls: crls
                .into_iter()
                .map(CertificateRevocationListDer::from)
                .collect(),
        }
    }

    fn crl(ca: &Authority, revoked: &[&IssuedCert]) -> Vec<u8> {
        let now = OffsetDateTime::now_utc();
        let entries: Vec<RevokedEntry> = revoked
            .iter()
            .map(|c| RevokedEntry {
                serial: c.info.serial.clone(),
                revoked_at: now,
                reason: RevocationReason::KeyCompromise,
            })
            .collect();
        ca.crl(&entries, 1, now, now + time::Duration::days(1))
            .unwrap()
            .der
    }

    fn device(ca: &Authority, id: &str) -> (IssuedCert, PrivateKey) {
        ca.issue_device(id, KeyAlgorithm::EcdsaP256, Validity::days_from_now(1))
            .unwrap()
    }

    /// A full TLS 1.3 handshake in memory; the server's error if it refuses the client.
    fn handshake(
        p: &Pki,
        server: Arc<ServerConfig>,
        client: &(IssuedCert, PrivateKey),
    ) -> Result<(), rustls::Error> {
        let mut roots = RootCertStore::empty();
        roots.add(der(p.root.cert_pem())).unwrap();
        let config =
            ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_root_certificates(roots)
                .with_client_auth_cert(
                    vec![der(&client.0.pem)],
                    PrivateKeyDer::from_pem_slice(client.1.to_pem().as_bytes()).unwrap(),
                )
                .unwrap();
        let mut c =
            ClientConnection::new(Arc::new(config), ServerName::try_from("localhost").unwrap())
                .unwrap();
        let mut s = ServerConnection::new(server).unwrap();
        let mut wire = Vec::new();
        for _ in 0..8 {
            wire.clear();
            while c.wants_write() {
                c.write_tls(&mut wire).unwrap();
            }
            if !wire.is_empty() {
                s.read_tls(&mut Cursor::new(&wire)).unwrap();
                s.process_new_packets()?;
            }
            wire.clear();
            while s.wants_write() {
                s.write_tls(&mut wire).unwrap();
            }
            if !wire.is_empty() {
                c.read_tls(&mut Cursor::new(&wire)).unwrap();
                c.process_new_packets().unwrap();
            }
            if !c.is_handshaking() && !s.is_handshaking() {
                return Ok(());
            }
        }
        panic!("the handshake neither completed nor failed");
    }

    #[test]
    fn a_certificate_the_crl_lists_is_refused_as_revoked_and_others_pass() {
        let p = pki();
        let revoked = device(&p.devices, "gw-revoked");
        let kept = device(&p.devices, "gw-kept");
        // A second trusted CA without a CRL here (just in time): its devices pass.
        let vendor = Authority::create_root(
            "Vendor CA",
            None,
            KeyAlgorithm::EcdsaP256,
            Validity::days_from_now(30),
        )
        .unwrap();
        let theirs = device(&vendor, "gw-vendor");
        let server = server_config(material(
            &p,
            &[&p.devices, &vendor],
            vec![crl(&p.devices, &[&revoked.0])],
        ))
        .unwrap();
        let e = handshake(&p, server.clone(), &revoked).unwrap_err();
        assert!(
            matches!(
                e,
                rustls::Error::InvalidCertificate(CertificateError::Revoked)
            ),
            "{e:?}"
        );
        handshake(&p, server.clone(), &kept).unwrap();
        handshake(&p, server.clone(), &theirs).unwrap();
        // The chain is still checked before revocation: a certificate of an untrusted CA.
        let stranger = Authority::create_root(
            "Stranger CA",
            None,
            KeyAlgorithm::EcdsaP256,
            Validity::days_from_now(30),
        )
        .unwrap();
        let e = handshake(&p, server, &device(&stranger, "gw-x")).unwrap_err();
        assert!(
            matches!(
                e,
                rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer)
            ),
            "{e:?}"
        );
    }

    #[test]
    fn a_crl_that_does_not_verify_stops_the_configuration() {
        let p = pki();
        // Same name as the device CA, another key.
        let forger = Authority::create_root(
            "Device CA",
            None,
            KeyAlgorithm::EcdsaP256,
            Validity::days_from_now(30),
        )
        .unwrap();
        let e = server_config(material(&p, &[&p.devices], vec![crl(&forger, &[])])).unwrap_err();
        assert!(
            matches!(e, TlsSetupError::Crl(CrlError::BadSignature(_))),
            "{e}"
        );
        assert!(e.to_string().contains("does not verify"), "{e}");
        let e = server_config(material(&p, &[&p.devices], vec![b"junk".to_vec()])).unwrap_err();
        assert!(matches!(e, TlsSetupError::Crl(CrlError::Parse(_))), "{e}");
    }
}
