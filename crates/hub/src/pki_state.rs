//! The hub's PKI state on disk and in the registry, turned into what the broker needs: the
//! TLS configuration (trusted client CAs = the device CA plus CAs registered for
//! just-in-time registration; the device CA's CRL), the CRL itself, and the token key.

use std::sync::Arc;

use rampart_broker::tls::{TlsMaterial, server_config};
use rampart_pki::token::TokenKey;
use rampart_pki::{CertInfo, IssuedCrl, RevocationReason, RevokedEntry, files};
use rampart_store::Store;
use rustls::ServerConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, CertificateRevocationListDer};
use time::OffsetDateTime;

use crate::config::HubConfig;
use crate::datadir::DataDir;
use crate::error::HubError;

/// The device CA's certificate details.
pub fn device_ca_info(dir: &DataDir, cfg: &HubConfig) -> Result<(CertInfo, Vec<u8>), HubError> {
    Ok(CertInfo::read(&dir.resolve(&cfg.pki.device_ca_cert))?)
}

/// Builds the listener's TLS configuration from the files and the registry.
pub async fn tls_config(
    dir: &DataDir,
    cfg: &HubConfig,
    store: &dyn Store,
) -> Result<Arc<ServerConfig>, HubError> {
    let mut material = TlsMaterial::from_pem_files(
        &dir.resolve(&cfg.tls.server_cert),
        &dir.resolve(&cfg.tls.server_key),
        &dir.resolve(&cfg.tls.client_ca),
    )?;
    for ca in store.trusted_cas().await? {
        for der in rampart_pki::pem_certs(&ca.certificate)? {
            material.client_cas.push(CertificateDer::from(der));
        }
    }
    let crl_path = dir.resolve(&cfg.pki.crl_file);
    if crl_path.exists() {
        let crl =
            CertificateRevocationListDer::from_pem_file(&crl_path).map_err(|e| HubError::Io {
                path: crl_path.clone(),
                source: std::io::Error::new(std::io::ErrorKind::InvalidData, e.to_string()),
            })?;
        material.crls.push(crl);
    }
    Ok(server_config(material)?)
}

/// Signs a new CRL for the device CA listing every certificate it issued that is revoked,
/// writes it to `pki.crl_file` and returns it.
pub async fn publish_crl(
    dir: &DataDir,
    cfg: &HubConfig,
    store: &dyn Store,
) -> Result<IssuedCrl, HubError> {
    let ca = dir.device_ca(cfg)?;
    let fp = ca.info().fingerprint.clone();
    let revoked: Vec<RevokedEntry> = store
        .revoked_certificates(&fp)
        .await?
        .into_iter()
        .map(|c| RevokedEntry {
            reason: c
                .revocation_reason
                .as_deref()
                .and_then(|r| r.parse().ok())
                .unwrap_or(RevocationReason::Unspecified),
            revoked_at: c.revoked_at.unwrap_or(c.issued_at),
            serial: c.serial,
        })
        .collect();
    let number = store.next_crl_number(&fp).await?;
    let now = OffsetDateTime::now_utc();
    let validity = cfg.crl_validity().map_err(HubError::Invalid)?;
    let crl = ca.crl(
        &revoked,
        u64::try_from(number).unwrap_or(0),
        now - time::Duration::minutes(5),
        now + validity,
    )?;
    files::write_public(&dir.resolve(&cfg.pki.crl_file), crl.pem.as_bytes(), true)?;
    Ok(crl)
}

/// Loads the token key, creating it (0600) on first use.
pub fn token_key(dir: &DataDir, cfg: &HubConfig) -> Result<TokenKey, HubError> {
    let path = dir.resolve(&cfg.pki.token_key);
    match std::fs::read(&path) {
        Ok(der) => Ok(TokenKey::from_pkcs8(&der)?),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let (key, der) = TokenKey::generate()?;
            files::write_secret(&path, &der, false)?;
            Ok(key)
        }
        Err(source) => Err(HubError::Io { path, source }),
    }
}
