//! The agent's TLS client configuration: TLS 1.3 (1.2 allowed), the hub authenticated against
//! the CA bundle from the device bundle, and the device certificate as client credential.
//! ring is the crypto provider: small, and it cross-compiles to ARM gateways without cmake.

use std::path::Path;
use std::sync::Arc;

use rustls::{ClientConfig, RootCertStore};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::error::AgentError;

fn certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, AgentError> {
    let v = CertificateDer::pem_file_iter(path)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| AgentError::Tls(format!("{}: {e}", path.display())))?;
    if v.is_empty() {
        return Err(AgentError::Tls(format!(
            "{}: no certificate found",
            path.display()
        )));
    }
    Ok(v)
}

/// Builds the client configuration from the CA and certificate files and the private key
/// (PEM, already opened if it was sealed; `key_path` names it in errors).
pub fn client_config(
    ca: &Path,
    cert: &Path,
    key_pem: &[u8],
    key_path: &Path,
) -> Result<Arc<ClientConfig>, AgentError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = RootCertStore::empty();
    for c in certs(ca)? {
        roots
            .add(c)
            .map_err(|e| AgentError::Tls(format!("{}: {e}", ca.display())))?;
    }
    let chain = certs(cert)?;
    let key = PrivateKeyDer::from_pem_slice(key_pem)
        .map_err(|e| AgentError::Tls(format!("{}: {e}", key_path.display())))?;
    let config = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| AgentError::Tls(e.to_string()))?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .map_err(|e| AgentError::Tls(format!("device certificate and key do not fit: {e}")))?;
    Ok(Arc::new(config))
}
