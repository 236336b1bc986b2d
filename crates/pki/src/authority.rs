//! Certificate authorities and the certificates they issue.

use std::net::IpAddr;
use std::path::Path;

use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyIdMethod, KeyPair, KeyUsagePurpose,
    RevokedCertParams, SanType, SerialNumber,
};
use ring::rand::{SecureRandom, SystemRandom};
use rustls_pki_types::CertificateDer;
use time::OffsetDateTime;

use crate::csr::CheckedCsr;
use crate::error::PkiError;
use crate::id::validate_device_id;
use crate::info::CertInfo;
use crate::key::{KeyAlgorithm, PrivateKey};

/// Validity period of a certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Validity {
    pub not_before: OffsetDateTime,
    pub not_after: OffsetDateTime,
}

impl Validity {
    /// Valid for `days` from now (see [`Validity::for_lifetime`]).
    pub fn days_from_now(days: u32) -> Validity {
        Self::for_lifetime(std::time::Duration::from_secs(u64::from(days) * 86_400))
    }

    /// Valid from slightly in the past — tolerating clock skew between hub and devices — until
    /// `lifetime` from now. The backdating is 5 minutes, or a tenth of the lifetime if that is
    /// less, so that short-lived certificates keep their renewal point where it belongs.
    pub fn for_lifetime(lifetime: std::time::Duration) -> Validity {
        let now = OffsetDateTime::now_utc();
        let skew = (lifetime / 10).min(std::time::Duration::from_secs(300));
        Validity {
            not_before: now - skew,
            not_after: now + lifetime,
        }
    }

    /// An explicit period, e.g. a short one for tests or an already-expired one.
    pub fn between(
        not_before: OffsetDateTime,
        not_after: OffsetDateTime,
    ) -> Result<Self, PkiError> {
        if not_after <= not_before {
            return Err(PkiError::Validity(
                "not_after must be later than not_before",
            ));
        }
        Ok(Validity {
            not_before,
            not_after,
        })
    }
}

/// A certificate just issued.
#[derive(Debug, Clone)]
pub struct IssuedCert {
    pub pem: String,
    pub der: Vec<u8>,
    pub info: CertInfo,
}

impl IssuedCert {
    fn from_rcgen(cert: rcgen::Certificate) -> Result<Self, PkiError> {
        let der = cert.der().to_vec();
        let info = CertInfo::from_der(&der)?;
        Ok(IssuedCert {
            pem: cert.pem(),
            der,
            info,
        })
    }
}

/// Why a certificate was revoked (RFC 5280 5.3.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RevocationReason {
    Unspecified,
    KeyCompromise,
    AffiliationChanged,
    Superseded,
    CessationOfOperation,
    PrivilegeWithdrawn,
}

impl RevocationReason {
    pub fn as_str(self) -> &'static str {
        match self {
            RevocationReason::Unspecified => "unspecified",
            RevocationReason::KeyCompromise => "key-compromise",
            RevocationReason::AffiliationChanged => "affiliation-changed",
            RevocationReason::Superseded => "superseded",
            RevocationReason::CessationOfOperation => "cessation-of-operation",
            RevocationReason::PrivilegeWithdrawn => "privilege-withdrawn",
        }
    }

    fn rcgen(self) -> rcgen::RevocationReason {
        match self {
            RevocationReason::Unspecified => rcgen::RevocationReason::Unspecified,
            RevocationReason::KeyCompromise => rcgen::RevocationReason::KeyCompromise,
            RevocationReason::AffiliationChanged => rcgen::RevocationReason::AffiliationChanged,
            RevocationReason::Superseded => rcgen::RevocationReason::Superseded,
            RevocationReason::CessationOfOperation => rcgen::RevocationReason::CessationOfOperation,
            RevocationReason::PrivilegeWithdrawn => rcgen::RevocationReason::PrivilegeWithdrawn,
        }
    }
}

impl std::str::FromStr for RevocationReason {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Ok(match s {
            "unspecified" => RevocationReason::Unspecified,
            "key-compromise" => RevocationReason::KeyCompromise,
            "affiliation-changed" => RevocationReason::AffiliationChanged,
            "superseded" => RevocationReason::Superseded,
            "cessation-of-operation" => RevocationReason::CessationOfOperation,
            "privilege-withdrawn" => RevocationReason::PrivilegeWithdrawn,
            other => {
                return Err(format!(
                    "unknown revocation reason {other:?} (unspecified, key-compromise, affiliation-changed, \
                     superseded, cessation-of-operation, privilege-withdrawn)"
                ));
            }
        })
    }
}

/// One entry of a CRL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RevokedEntry {
    /// Serial number, hex.
    pub serial: String,
    pub revoked_at: OffsetDateTime,
    pub reason: RevocationReason,
}

/// A signed certificate revocation list.
#[derive(Debug, Clone)]
pub struct IssuedCrl {
    pub pem: String,
    pub der: Vec<u8>,
}

/// A CA that can sign certificates: its certificate and its signing key.
pub struct Authority {
    cert_pem: String,
    info: CertInfo,
    issuer: Issuer<'static, KeyPair>,
}

impl std::fmt::Debug for Authority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authority")
            .field("subject", &self.info.common_name)
            .field("serial", &self.info.serial)
            .finish_non_exhaustive()
    }
}

fn random_bytes<const N: usize>() -> Result<[u8; N], PkiError> {
    let mut bytes = [0u8; N];
    SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| PkiError::Validity("system random number generator failed"))?;
    Ok(bytes)
}

/// `n` random bytes from the system CSPRNG, as lowercase hex (identifiers, name suffixes).
pub fn random_hex(n: usize) -> Result<String, PkiError> {
    let mut out = String::with_capacity(n * 2);
    while out.len() < n * 2 {
        let chunk: [u8; 16] = random_bytes()?;
        out.push_str(&hex::encode(chunk));
    }
    out.truncate(n * 2);
    Ok(out)
}

fn random_serial() -> Result<SerialNumber, PkiError> {
    let mut bytes: [u8; 16] = random_bytes()?;
    // A positive INTEGER with no leading zero byte: keep the top bit clear and the first byte
    // non-zero so the serial is always exactly 16 bytes long.
    bytes[0] = (bytes[0] & 0x7f) | 0x01;
    Ok(SerialNumber::from_slice(&bytes))
}

fn dn(common_name: &str, organization: Option<&str>) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    if let Some(org) = organization {
        dn.push(DnType::OrganizationName, org);
    }
    dn.push(DnType::CommonName, common_name);
    dn
}

fn ca_params(
    common_name: &str,
    organization: Option<&str>,
    path_len: Option<u8>,
    validity: Validity,
) -> Result<CertificateParams, PkiError> {
    let mut params = CertificateParams::default();
    params.distinguished_name = dn(common_name, organization);
    params.is_ca = IsCa::Ca(match path_len {
        Some(n) => BasicConstraints::Constrained(n),
        None => BasicConstraints::Unconstrained,
    });
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.not_before = validity.not_before;
    params.not_after = validity.not_after;
    params.serial_number = Some(random_serial()?);
    params.use_authority_key_identifier_extension = true;
    Ok(params)
}

fn leaf_params(
    dn: DistinguishedName,
    eku: ExtendedKeyUsagePurpose,
    validity: Validity,
) -> Result<CertificateParams, PkiError> {
    let mut params = CertificateParams::default();
    params.distinguished_name = dn;
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![eku];
    params.not_before = validity.not_before;
    params.not_after = validity.not_after;
    params.serial_number = Some(random_serial()?);
    params.use_authority_key_identifier_extension = true;
    Ok(params)
}

impl Authority {
    /// Creates a self-signed root CA.
    pub fn create_root(
        common_name: &str,
        organization: Option<&str>,
        alg: KeyAlgorithm,
        validity: Validity,
    ) -> Result<Authority, PkiError> {
        let key = PrivateKey::generate(alg)?;
        let params = ca_params(common_name, organization, Some(1), validity)?;
        let cert = params.self_signed(&key.pair).map_err(PkiError::Signing)?;
        Self::assemble(cert, params, key.pair)
    }

    /// Creates an issuing CA signed by this one (path length 0: it signs only leaves).
    pub fn create_intermediate(
        &self,
        common_name: &str,
        organization: Option<&str>,
        alg: KeyAlgorithm,
        validity: Validity,
    ) -> Result<Authority, PkiError> {
        let key = PrivateKey::generate(alg)?;
        let params = ca_params(common_name, organization, Some(0), validity)?;
        let cert = params
            .signed_by(&key.pair, &self.issuer)
            .map_err(PkiError::Signing)?;
        Self::assemble(cert, params, key.pair)
    }

    fn assemble(
        cert: rcgen::Certificate,
        params: CertificateParams,
        key: KeyPair,
    ) -> Result<Authority, PkiError> {
        let info = CertInfo::from_der(cert.der())?;
        Ok(Authority {
            cert_pem: cert.pem(),
            info,
            issuer: Issuer::new(params, key),
        })
    }

    /// Loads a CA from its PEM certificate and PKCS#8 PEM key files.
    pub fn load(cert_path: &Path, key_path: &Path) -> Result<Authority, PkiError> {
        let cert_pem = std::fs::read_to_string(cert_path).map_err(|source| PkiError::Read {
            path: cert_path.to_path_buf(),
            source,
        })?;
        let key = PrivateKey::read(key_path)?;
        let der = crate::info::first_pem_cert(&cert_pem).map_err(|why| PkiError::CertParse {
            path: Some(cert_path.to_path_buf()),
            why,
        })?;
        let info = CertInfo::from_der(&der)?;
        if !info.is_ca {
            return Err(PkiError::CertParse {
                path: Some(cert_path.to_path_buf()),
                why: "not a CA certificate (basicConstraints CA:FALSE or absent)".into(),
            });
        }
        let issuer =
            Issuer::from_ca_cert_der(&CertificateDer::from(der), key.pair).map_err(|e| {
                PkiError::CertParse {
                    path: Some(cert_path.to_path_buf()),
                    why: e.to_string(),
                }
            })?;
        Ok(Authority {
            cert_pem,
            info,
            issuer,
        })
    }

    /// The CA certificate in PEM.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The CA's private key in PKCS#8 PEM (to be written 0600).
    pub fn key_pem(&self) -> String {
        self.issuer.key().serialize_pem()
    }

    /// Parsed details of the CA certificate.
    pub fn info(&self) -> &CertInfo {
        &self.info
    }

    /// Signs a CRL listing `revoked`, valid from `this_update` to `next_update`.
    pub fn crl(
        &self,
        revoked: &[RevokedEntry],
        number: u64,
        this_update: OffsetDateTime,
        next_update: OffsetDateTime,
    ) -> Result<IssuedCrl, PkiError> {
        let mut revoked_certs = Vec::with_capacity(revoked.len());
        for r in revoked {
            let serial = hex::decode(&r.serial)
                .map_err(|_| PkiError::Validity("revoked serial is not hex"))?;
            revoked_certs.push(RevokedCertParams {
                serial_number: SerialNumber::from_slice(&serial),
                revocation_time: r.revoked_at,
                reason_code: Some(r.reason.rcgen()),
                invalidity_date: None,
            });
        }
        let params = CertificateRevocationListParams {
            this_update,
            next_update,
            crl_number: SerialNumber::from_slice(&number.to_be_bytes()),
            issuing_distribution_point: None,
            revoked_certs,
            key_identifier_method: KeyIdMethod::Sha256,
        };
        let crl = params.signed_by(&self.issuer).map_err(PkiError::Signing)?;
        Ok(IssuedCrl {
            pem: crl.pem().map_err(PkiError::Signing)?,
            der: crl.der().to_vec(),
        })
    }

    /// Issues a TLS server certificate for the hub, valid for every name in `names` (DNS names
    /// or IP addresses). The first name becomes the subject CN.
    pub fn issue_server(
        &self,
        names: &[String],
        alg: KeyAlgorithm,
        validity: Validity,
    ) -> Result<(IssuedCert, PrivateKey), PkiError> {
        let first = names.first().ok_or(PkiError::Validity(
            "a server certificate needs at least one name",
        ))?;
        let mut params = leaf_params(
            dn(first, None),
            ExtendedKeyUsagePurpose::ServerAuth,
            validity,
        )?;
        for name in names {
            params.subject_alt_names.push(match name.parse::<IpAddr>() {
                Ok(ip) => SanType::IpAddress(ip),
                Err(_) => {
                    let invalid =
                        || PkiError::Validity("server name is not a valid DNS name or IP address");
                    // rcgen accepts any IA5 string; check DNS syntax with pki-types first.
                    rustls_pki_types::DnsName::try_from(name.as_str()).map_err(|_| invalid())?;
                    SanType::DnsName(name.as_str().try_into().map_err(|_| invalid())?)
                }
            });
        }
        let key = PrivateKey::generate(alg)?;
        let cert = params
            .signed_by(&key.pair, &self.issuer)
            .map_err(PkiError::Signing)?;
        Ok((IssuedCert::from_rcgen(cert)?, key))
    }

    /// Creates a key and a client certificate for `device_id` (demo and factory provisioning;
    /// in the field devices send a CSR instead, see [`Authority::issue_device_from_csr`]).
    pub fn issue_device(
        &self,
        device_id: &str,
        alg: KeyAlgorithm,
        validity: Validity,
    ) -> Result<(IssuedCert, PrivateKey), PkiError> {
        let key = PrivateKey::generate(alg)?;
        let cert = self.sign_client(device_id, &key.pair, validity)?;
        Ok((cert, key))
    }

    /// Issues a client certificate for `device_id` over the public key of a verified CSR.
    ///
    /// Only the CSR's public key is used: subject, extensions and validity are the CA's.
    pub fn issue_device_from_csr(
        &self,
        device_id: &str,
        csr: &CheckedCsr,
        validity: Validity,
    ) -> Result<IssuedCert, PkiError> {
        csr.check_subject(device_id)?;
        self.sign_client(device_id, &csr.public_key, validity)
    }

    fn sign_client(
        &self,
        device_id: &str,
        public_key: &impl rcgen::PublicKeyData,
        validity: Validity,
    ) -> Result<IssuedCert, PkiError> {
        validate_device_id(device_id).map_err(|why| PkiError::InvalidDeviceId {
            id: device_id.to_owned(),
            why,
        })?;
        let params = leaf_params(
            dn(device_id, None),
            ExtendedKeyUsagePurpose::ClientAuth,
            validity,
        )?;
        let cert = params
            .signed_by(public_key, &self.issuer)
            .map_err(PkiError::Signing)?;
        IssuedCert::from_rcgen(cert)
    }
}
