//! TLS for the MQTT listener: a rustls server configuration that requires a client
//! certificate chaining to the device CA, and the mapping of handshake failures to specific
//! refusal reasons.

use std::io;
use std::path::Path;
use std::sync::Arc;

use rustls::server::WebPkiClientVerifier;
use rustls::{CertificateError, RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer};

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
    let mut roots = RootCertStore::empty();
    for ca in m.client_cas {
        roots
            .add(ca)
            .map_err(|e| TlsSetupError::ClientCa(e.to_string()))?;
    }
    // Revocation is checked on the client's own certificate against the CRLs given; CAs
    // without a CRL here (just-in-time CAs of other vendors) are checked by the registry.
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .with_crls(m.crls)
        .only_check_end_entity_revocation()
        .allow_unknown_revocation_status()
        .build()
        .map_err(|e| TlsSetupError::ClientCa(e.to_string()))?;
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
