//! Issuance: both key types, CSR checks, loading a CA back from files.

use rampart_pki::{
    Authority, CertInfo, CheckedCsr, KeyAlgorithm, PkiError, PrivateKey, Validity, create_csr,
    files,
};

fn root_and_device_ca(alg: KeyAlgorithm) -> (Authority, Authority) {
    let root = Authority::create_root(
        "Test Root",
        Some("Rampart"),
        alg,
        Validity::days_from_now(3650),
    )
    .expect("root");
    let ca = root
        .create_intermediate(
            "Test Device CA",
            Some("Rampart"),
            alg,
            Validity::days_from_now(1825),
        )
        .expect("device ca");
    (root, ca)
}

#[test]
fn ca_hierarchy_and_device_bundle_for_both_key_types() {
    for alg in [KeyAlgorithm::EcdsaP256, KeyAlgorithm::Ed25519] {
        let (root, ca) = root_and_device_ca(alg);
        assert!(root.info().is_ca && ca.info().is_ca);
        assert_eq!(ca.info().issuer_cn.as_deref(), Some("Test Root"));
        let (cert, key) = ca
            .issue_device("gw-001", alg, Validity::days_from_now(90))
            .expect("device");
        assert_eq!(cert.info.common_name.as_deref(), Some("gw-001"));
        assert_eq!(cert.info.issuer_cn.as_deref(), Some("Test Device CA"));
        assert!(!cert.info.is_ca);
        assert_eq!(cert.info.key_algorithm, alg.as_str());
        assert_eq!(key.algorithm(), Some(alg));
        assert_eq!(cert.info.serial.len(), 32, "16-byte serial");
        assert_eq!(cert.info.fingerprint.len(), 64);
        let lifetime = cert.info.not_after - cert.info.not_before;
        assert!(lifetime.whole_days() == 90, "{lifetime}");
    }
}

#[test]
fn serials_are_unique() {
    let (_, ca) = root_and_device_ca(KeyAlgorithm::EcdsaP256);
    let mut seen = std::collections::HashSet::new();
    for i in 0..50 {
        let (c, _) = ca
            .issue_device(
                &format!("d{i}"),
                KeyAlgorithm::Ed25519,
                Validity::days_from_now(1),
            )
            .expect("issue");
        assert!(seen.insert(c.info.serial));
    }
}

#[test]
fn server_certificate_names() {
    let (root, _) = root_and_device_ca(KeyAlgorithm::EcdsaP256);
    let names = vec![
        "localhost".to_string(),
        "127.0.0.1".to_string(),
        "hub.example.com".to_string(),
    ];
    let (cert, _) = root
        .issue_server(
            &names,
            KeyAlgorithm::EcdsaP256,
            Validity::days_from_now(365),
        )
        .expect("server");
    assert_eq!(cert.info.common_name.as_deref(), Some("localhost"));
    let e = root
        .issue_server(
            &["bad name!".into()],
            KeyAlgorithm::EcdsaP256,
            Validity::days_from_now(1),
        )
        .expect_err("invalid DNS name");
    assert!(matches!(e, PkiError::Validity(_)));
}

#[test]
fn csr_issuance_uses_only_the_device_public_key() {
    let (_, ca) = root_and_device_ca(KeyAlgorithm::EcdsaP256);
    for alg in [KeyAlgorithm::EcdsaP256, KeyAlgorithm::Ed25519] {
        let key = PrivateKey::generate(alg).expect("key");
        let csr_pem = create_csr("gw-7", &key).expect("csr");
        let csr = CheckedCsr::from_pem(&csr_pem).expect("valid csr");
        assert_eq!(csr.subject_cn.as_deref(), Some("gw-7"));
        assert_eq!(csr.algorithm, alg);
        let cert = ca
            .issue_device_from_csr("gw-7", &csr, Validity::days_from_now(90))
            .expect("issued");
        assert_eq!(cert.info.common_name.as_deref(), Some("gw-7"));
        assert_eq!(cert.info.key_algorithm, alg.as_str());
    }
}

#[test]
fn csr_for_another_device_is_refused() {
    let (_, ca) = root_and_device_ca(KeyAlgorithm::EcdsaP256);
    let key = PrivateKey::generate(KeyAlgorithm::EcdsaP256).expect("key");
    let csr = CheckedCsr::from_pem(&create_csr("gw-a", &key).expect("csr")).expect("parse");
    let e = ca
        .issue_device_from_csr("gw-b", &csr, Validity::days_from_now(1))
        .expect_err("mismatch");
    assert!(matches!(e, PkiError::CsrSubjectMismatch { .. }), "{e}");
}

#[test]
fn tampered_csr_fails_its_signature_check() {
    let key = PrivateKey::generate(KeyAlgorithm::EcdsaP256).expect("key");
    let pem = create_csr("gw-a", &key).expect("csr");
    use rustls_pki_types::pem::PemObject;
    let mut der = rustls_pki_types::CertificateSigningRequestDer::from_pem_slice(pem.as_bytes())
        .expect("pem")
        .as_ref()
        .to_vec();
    // Change one character of the CN "gw-a" -> "gw-b" inside the signed part.
    let pos = der
        .windows(4)
        .position(|w| w == b"gw-a")
        .expect("cn present");
    der[pos + 3] = b'b';
    let e = CheckedCsr::from_der(&der).expect_err("must fail");
    assert!(matches!(e, PkiError::CsrBadSignature), "{e}");
}

#[test]
fn garbage_csr_is_a_parse_error() {
    assert!(matches!(
        CheckedCsr::from_pem("hello"),
        Err(PkiError::CsrParse(_))
    ));
    assert!(matches!(
        CheckedCsr::from_der(&[0x30, 0x03, 1, 2, 3]),
        Err(PkiError::CsrParse(_))
    ));
}

#[test]
fn invalid_device_ids_are_refused() {
    let (_, ca) = root_and_device_ca(KeyAlgorithm::EcdsaP256);
    for bad in ["a/b", "+", "#", ""] {
        let e = ca
            .issue_device(bad, KeyAlgorithm::EcdsaP256, Validity::days_from_now(1))
            .expect_err("refused");
        assert!(matches!(e, PkiError::InvalidDeviceId { .. }));
    }
}

#[test]
fn authority_roundtrips_through_files() {
    let dir = tempfile::tempdir().expect("tmp");
    let (_, ca) = root_and_device_ca(KeyAlgorithm::Ed25519);
    let crt = dir.path().join("ca.crt");
    let key = dir.path().join("ca.key");
    files::write_public(&crt, ca.cert_pem().as_bytes(), false).expect("crt");
    files::write_secret(&key, ca.key_pem().as_bytes(), false).expect("key");
    let loaded = Authority::load(&crt, &key).expect("load");
    assert_eq!(loaded.info(), ca.info());
    let (cert, _) = loaded
        .issue_device("gw-9", KeyAlgorithm::EcdsaP256, Validity::days_from_now(1))
        .expect("issue");
    assert_eq!(cert.info.issuer_cn.as_deref(), Some("Test Device CA"));
    // A leaf certificate cannot be loaded as a CA.
    let leaf = dir.path().join("leaf.crt");
    files::write_public(&leaf, cert.pem.as_bytes(), false).expect("leaf");
    assert!(Authority::load(&leaf, &key).is_err());
    let parsed = CertInfo::from_pem(&cert.pem).expect("parse");
    assert_eq!(parsed, cert.info);
}

#[test]
fn expired_validity_can_be_issued_for_tests_but_not_inverted() {
    let now = time::OffsetDateTime::now_utc();
    let v = Validity::between(
        now - time::Duration::days(10),
        now - time::Duration::days(1),
    )
    .expect("ok");
    let (_, ca) = root_and_device_ca(KeyAlgorithm::EcdsaP256);
    let (c, _) = ca
        .issue_device("old", KeyAlgorithm::EcdsaP256, v)
        .expect("issue");
    assert!(c.info.not_after < now);
    assert!(Validity::between(now, now).is_err());
}

#[test]
fn ed25519_keys_are_written_in_the_form_openssl_reads_and_load_back() {
    let key = PrivateKey::generate(KeyAlgorithm::Ed25519).expect("key");
    let pem = key.to_pem();
    let dir = tempfile::tempdir().expect("tmp");
    let path = dir.path().join("k.pem");
    std::fs::write(&path, &pem).expect("write");
    // Loads back (rcgen/ring) with the same public key.
    let back = PrivateKey::read(&path).expect("reload");
    assert_eq!(back.algorithm(), Some(KeyAlgorithm::Ed25519));
    assert_eq!(back.to_pem(), pem);
    let csr_a = CheckedCsr::from_pem(&create_csr("x", &key).expect("csr")).expect("parse");
    let csr_b = CheckedCsr::from_pem(&create_csr("x", &back).expect("csr")).expect("parse");
    assert_eq!(
        format!("{:?}", csr_a.subject_cn),
        format!("{:?}", csr_b.subject_cn)
    );
    // OpenSSL parses it, when it is installed.
    if let Ok(out) = std::process::Command::new("openssl")
        .args(["pkey", "-noout", "-in"])
        .arg(&path)
        .output()
    {
        assert!(
            out.status.success(),
            "openssl: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn crl_lists_revoked_serials_and_is_signed_by_the_ca() {
    let (_, ca) = root_and_device_ca(KeyAlgorithm::EcdsaP256);
    let (cert, _) = ca
        .issue_device("gw-r", KeyAlgorithm::EcdsaP256, Validity::days_from_now(1))
        .unwrap();
    let now = time::OffsetDateTime::now_utc();
    let crl = ca
        .crl(
            &[rampart_pki::RevokedEntry {
                serial: cert.info.serial.clone(),
                revoked_at: now,
                reason: "key-compromise".parse().unwrap(),
            }],
            7,
            now,
            now + time::Duration::days(1),
        )
        .unwrap();
    assert!(crl.pem.starts_with("-----BEGIN X509 CRL-----"));
    use x509_parser::prelude::FromDer;
    let (_, parsed) =
        x509_parser::revocation_list::CertificateRevocationList::from_der(&crl.der).unwrap();
    let serials: Vec<String> = parsed
        .iter_revoked_certificates()
        .map(|r| hex::encode(r.raw_serial()))
        .collect();
    assert_eq!(serials, vec![cert.info.serial.clone()]);
    assert_eq!(parsed.crl_number().map(|n| n.to_string()), Some("7".into()));
    let ca_der = rampart_pki::pem_certs(ca.cert_pem()).unwrap().remove(0);
    let (_, ca_cert) = x509_parser::parse_x509_certificate(&ca_der).unwrap();
    parsed
        .verify_signature(ca_cert.public_key())
        .expect("signed by the CA");
    assert!("nonsense".parse::<rampart_pki::RevocationReason>().is_err());
}

#[test]
fn issuer_of_a_certificate_is_identified_by_signature() {
    let (_, ca_a) = root_and_device_ca(KeyAlgorithm::EcdsaP256);
    let (_, ca_b) = root_and_device_ca(KeyAlgorithm::EcdsaP256); // same name, other key
    let (cert, _) = ca_a
        .issue_device("gw", KeyAlgorithm::Ed25519, Validity::days_from_now(1))
        .unwrap();
    let der_a = rampart_pki::pem_certs(ca_a.cert_pem()).unwrap().remove(0);
    let der_b = rampart_pki::pem_certs(ca_b.cert_pem()).unwrap().remove(0);
    assert!(rampart_pki::issued_by(&cert.der, &der_a));
    assert!(!rampart_pki::issued_by(&cert.der, &der_b));
    assert_eq!(
        cert.info.subject_fields.get("CN").map(String::as_str),
        Some("gw")
    );
}
