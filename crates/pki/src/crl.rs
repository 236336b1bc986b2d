//! Certificate revocation lists as a TLS server consults them on every handshake: the list's
//! signature is verified once, when it is loaded, and each client certificate is then looked
//! up in a set of revoked serial numbers.
//!
//! rustls's WebPKI verifier verifies a CRL's signature again on every lookup — one more
//! public-key operation per connection, the same bytes each time (rustls/webpki issue 81).
//! A [`VerifiedCrl`] does that work up front and fails at load instead: a list that does not
//! verify against its issuer is refused, so a server cannot start or reload with it.

use std::collections::HashSet;

use x509_parser::oid_registry::{OID_PKCS1_SHA1WITHRSA, OID_SHA1_WITH_RSA};
use x509_parser::prelude::{FromDer, X509Certificate};
use x509_parser::revocation_list::CertificateRevocationList;

/// Why a CRL cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum CrlError {
    #[error("the CRL is not valid DER: {0}")]
    Parse(String),
    #[error("a CA certificate is not valid DER: {0}")]
    IssuerParse(String),
    #[error("the CRL's issuer ({0}) is none of the trusted CAs")]
    UnknownIssuer(String),
    #[error("the CRL's signature does not verify against its issuer {0}")]
    BadSignature(String),
    #[error("the CRL is signed with SHA-1, which is not accepted")]
    WeakSignature,
    #[error("the CRL's issuer {0} has a key usage without cRLSign")]
    IssuerNotCrlSigner(String),
}

/// A CRL whose signature was verified against one of the trusted CAs.
#[derive(Debug, Clone)]
pub struct VerifiedCrl {
    /// The issuer's distinguished name, DER-encoded as it appears in certificates.
    issuer: Vec<u8>,
    /// Revoked serial numbers, as the DER INTEGER contents (what certificates carry).
    serials: HashSet<Vec<u8>>,
}

impl VerifiedCrl {
    /// Parses `crl_der` and verifies it was signed by the CA among `issuers` (DER certificates)
    /// whose subject is the CRL's issuer.
    pub fn verify<'a>(
        crl_der: &[u8],
        issuers: impl IntoIterator<Item = &'a [u8]>,
    ) -> Result<VerifiedCrl, CrlError> {
        let (_, crl) = CertificateRevocationList::from_der(crl_der)
            .map_err(|e| CrlError::Parse(e.to_string()))?;
        let issuer_name = crl.tbs_cert_list.issuer.as_raw();
        let mut issuer = None;
        for der in issuers {
            let (_, ca) =
                X509Certificate::from_der(der).map_err(|e| CrlError::IssuerParse(e.to_string()))?;
            if ca.subject().as_raw() == issuer_name {
                issuer = Some(ca);
                break;
            }
        }
        let name = crl.tbs_cert_list.issuer.to_string();
        let ca = issuer.ok_or_else(|| CrlError::UnknownIssuer(name.clone()))?;
        let alg = &crl.signature_algorithm.algorithm;
        if *alg == OID_PKCS1_SHA1WITHRSA || *alg == OID_SHA1_WITH_RSA {
            return Err(CrlError::WeakSignature);
        }
        crl.verify_signature(ca.public_key())
            .map_err(|_| CrlError::BadSignature(name.clone()))?;
        // RFC 5280 4.2.1.3: a CA whose key usage is stated must assert cRLSign to sign CRLs.
        if let Ok(Some(ku)) = ca.key_usage()
            && !ku.value.crl_sign()
        {
            return Err(CrlError::IssuerNotCrlSigner(name));
        }
        Ok(VerifiedCrl {
            issuer: issuer_name.to_vec(),
            serials: crl
                .iter_revoked_certificates()
                .map(|r| r.raw_serial().to_vec())
                .collect(),
        })
    }

    /// Whether this CRL speaks for certificates issued by the CA named `issuer` (DER name).
    pub fn covers(&self, issuer: &[u8]) -> bool {
        self.issuer == issuer
    }

    /// Whether the certificate with this serial (DER INTEGER contents) is revoked.
    pub fn is_revoked(&self, serial: &[u8]) -> bool {
        self.serials.contains(serial)
    }

    /// How many certificates the list revokes.
    pub fn len(&self) -> usize {
        self.serials.len()
    }

    /// Whether the list revokes nothing.
    pub fn is_empty(&self) -> bool {
        self.serials.is_empty()
    }
}

/// The issuer name (DER) and serial number (DER INTEGER contents) of a certificate.
pub fn issuer_and_serial(cert_der: &[u8]) -> Result<(&[u8], &[u8]), CrlError> {
    let (_, cert) =
        X509Certificate::from_der(cert_der).map_err(|e| CrlError::IssuerParse(e.to_string()))?;
    let tbs = cert.tbs_certificate;
    Ok((tbs.issuer.as_raw(), tbs.raw_serial()))
}

#[cfg(test)]
mod tests {
    use rcgen::{
        CertificateParams, CertificateRevocationListParams, DistinguishedName, DnType, IsCa,
        Issuer, KeyIdMethod, KeyPair, KeyUsagePurpose, RevokedCertParams, SerialNumber,
    };
    use time::OffsetDateTime;

    use super::*;
    use crate::{Authority, KeyAlgorithm, RevocationReason, RevokedEntry, Validity, pem_certs};

    fn ca(name: &str) -> Authority {
        Authority::create_root(
            name,
            None,
            KeyAlgorithm::EcdsaP256,
            Validity::days_from_now(30),
        )
        .unwrap()
    }

    fn der(a: &Authority) -> Vec<u8> {
        pem_certs(a.cert_pem()).unwrap().remove(0)
    }

    fn crl_revoking(a: &Authority, serials: &[&str]) -> Vec<u8> {
        let now = OffsetDateTime::now_utc();
        let revoked: Vec<RevokedEntry> = serials
            .iter()
            .map(|s| RevokedEntry {
                serial: (*s).to_owned(),
                revoked_at: now,
                reason: RevocationReason::KeyCompromise,
            })
            .collect();
        a.crl(&revoked, 1, now, now + time::Duration::days(7))
            .unwrap()
            .der
    }

    #[test]
    fn a_verified_crl_answers_for_its_issuer_and_the_serials_it_lists() {
        let a = ca("Device CA");
        let (revoked, _) = a
            .issue_device("gw-1", KeyAlgorithm::EcdsaP256, Validity::days_from_now(1))
            .unwrap();
        let (kept, _) = a
            .issue_device("gw-2", KeyAlgorithm::EcdsaP256, Validity::days_from_now(1))
            .unwrap();
        let other = ca("Other CA");
        let crl = VerifiedCrl::verify(
            &crl_revoking(&a, &[&revoked.info.serial]),
            [der(&other).as_slice(), der(&a).as_slice()],
        )
        .unwrap();
        assert_eq!(crl.len(), 1);
        let (issuer, serial) = issuer_and_serial(&revoked.der).unwrap();
        assert!(crl.covers(issuer));
        assert!(crl.is_revoked(serial));
        let (issuer, serial) = issuer_and_serial(&kept.der).unwrap();
        assert!(crl.covers(issuer));
        assert!(!crl.is_revoked(serial));
        // Another CA's certificates are not its business.
        let (theirs, _) = other
            .issue_device("gw-1", KeyAlgorithm::EcdsaP256, Validity::days_from_now(1))
            .unwrap();
        assert!(!crl.covers(issuer_and_serial(&theirs.der).unwrap().0));
        // An empty list verifies too, and revokes nothing.
        let empty = VerifiedCrl::verify(&crl_revoking(&a, &[]), [der(&a).as_slice()]).unwrap();
        assert!(empty.is_empty());
    }

    #[test]
    fn a_crl_signed_by_another_key_of_the_same_name_is_refused() {
        let trusted = ca("Device CA");
        let impostor = ca("Device CA");
        let e = VerifiedCrl::verify(&crl_revoking(&impostor, &[]), [der(&trusted).as_slice()])
            .unwrap_err();
        assert!(matches!(e, CrlError::BadSignature(_)), "{e}");
    }

    #[test]
    fn a_crl_of_an_untrusted_issuer_is_refused() {
        let e = VerifiedCrl::verify(
            &crl_revoking(&ca("Stranger CA"), &[]),
            [der(&ca("Device CA")).as_slice()],
        )
        .unwrap_err();
        assert!(
            matches!(e, CrlError::UnknownIssuer(ref n) if n.contains("Stranger CA")),
            "{e}"
        );
    }

    #[test]
    fn bytes_that_are_no_crl_are_refused() {
        let a = ca("Device CA");
        let mut crl = crl_revoking(&a, &[]);
        crl.truncate(crl.len() / 2);
        let e = VerifiedCrl::verify(&crl, [der(&a).as_slice()]).unwrap_err();
        assert!(matches!(e, CrlError::Parse(_)), "{e}");
        let e = VerifiedCrl::verify(&crl_revoking(&a, &[]), [b"not a certificate".as_slice()])
            .unwrap_err();
        assert!(matches!(e, CrlError::IssuerParse(_)), "{e}");
    }

    /// One DER element at the start of `b`: (its whole encoding, the rest).
    fn element(b: &[u8]) -> (&[u8], &[u8]) {
        let (len, head) = match b[1] {
            n if n < 0x80 => (usize::from(n), 2),
            0x81 => (usize::from(b[2]), 3),
            0x82 => (usize::from(b[2]) << 8 | usize::from(b[3]), 4),
            n => panic!("length form {n:#x} not expected in a test CRL"),
        };
        b.split_at(head + len)
    }

    fn sequence(content: &[u8]) -> Vec<u8> {
        let mut out = vec![0x30];
        match content.len() {
            n if n < 0x80 => out.push(n as u8),
            n if n < 0x100 => out.extend([0x81, n as u8]),
            n => out.extend([0x82, (n >> 8) as u8, n as u8]),
        }
        out.extend_from_slice(content);
        out
    }

    #[test]
    fn a_crl_signed_with_sha1_is_refused() {
        let a = ca("Device CA");
        let crl = crl_revoking(&a, &[]);
        // CertificateList ::= SEQUENCE { tbsCertList, signatureAlgorithm, signatureValue }:
        // the outer algorithm becomes sha1WithRSAEncryption (1.2.840.113549.1.1.5, NULL).
        let (_, after_header) = crl.split_at(if crl[1] == 0x82 { 4 } else { 3 });
        let (tbs, rest) = element(after_header);
        let (_, signature) = element(rest);
        let sha1_rsa = [
            0x30, 0x0d, 0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x05, 0x05,
            0x00,
        ];
        let forged = sequence(&[tbs, &sha1_rsa[..], signature].concat());
        let e = VerifiedCrl::verify(&forged, [der(&a).as_slice()]).unwrap_err();
        assert!(matches!(e, CrlError::WeakSignature), "{e}");
    }

    /// The same key and name in two CA certificates, one allowed to sign CRLs and one not: the
    /// signature verifies with either, the key usage decides.
    #[test]
    fn a_crl_whose_issuer_may_not_sign_crls_is_refused() {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let params = |usages: Vec<KeyUsagePurpose>| {
            let mut p = CertificateParams::default();
            let mut dn = DistinguishedName::new();
            dn.push(DnType::CommonName, "Device CA");
            p.distinguished_name = dn;
            p.is_ca = IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
            p.key_usages = usages;
            p
        };
        let signer = params(vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign]);
        let no_crls = params(vec![KeyUsagePurpose::KeyCertSign]);
        let signer_der = signer.self_signed(&key).unwrap().der().to_vec();
        let no_crls_der = no_crls.self_signed(&key).unwrap().der().to_vec();
        let now = OffsetDateTime::now_utc();
        let crl = CertificateRevocationListParams {
            this_update: now,
            next_update: now + time::Duration::days(1),
            crl_number: SerialNumber::from(1u64),
            issuing_distribution_point: None,
            revoked_certs: vec![RevokedCertParams {
                serial_number: SerialNumber::from(7u64),
                revocation_time: now,
                reason_code: None,
                invalidity_date: None,
            }],
            key_identifier_method: KeyIdMethod::Sha256,
        }
        .signed_by(&Issuer::new(signer, &key))
        .unwrap()
        .der()
        .to_vec();
        assert!(VerifiedCrl::verify(&crl, [signer_der.as_slice()]).is_ok());
        let e = VerifiedCrl::verify(&crl, [no_crls_der.as_slice()]).unwrap_err();
        assert!(matches!(e, CrlError::IssuerNotCrlSigner(_)), "{e}");
    }
}
