//! Server-side cost of a mutual-TLS handshake with a CRL: the hub's listener configuration
//! (`rampart_broker::tls::server_config`: the CRL's signature verified once, at load) against
//! rustls's own CRL checking (`WebPkiClientVerifier::with_crls`, which verifies the CRL's
//! signature on every handshake), side by side in one run (docs/benchmarks.md).
//!
//! `cargo bench -p rampart-broker --bench handshake`
//!
//! Both servers have the same certificates: a root, a device CA under it whose CRL lists one
//! revoked certificate, a P-256 hub certificate and a P-256 device certificate; TLS 1.3, no
//! resumption. Client and server run in memory on this thread; only the time spent in the
//! server's calls is counted. Bounded: 400 handshakes per side and round, five rounds with
//! the sides alternating; the median round of each side is reported.

use std::io::Cursor;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rampart_broker::tls::{TlsMaterial, server_config};
use rampart_pki::{
    Authority, IssuedCert, KeyAlgorithm, PrivateKey, RevocationReason, RevokedEntry, Validity,
};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, ClientConnection, RootCertStore, ServerConfig, ServerConnection};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer, ServerName};
use time::OffsetDateTime;

const HANDSHAKES: usize = 400;
const ROUNDS: usize = 5;

fn der(pem: &str) -> CertificateDer<'static> {
    CertificateDer::from_pem_slice(pem.as_bytes()).expect("a certificate the CA just issued")
}

fn key(k: &PrivateKey) -> PrivateKeyDer<'static> {
    PrivateKeyDer::from_pem_slice(k.to_pem().as_bytes()).expect("a key the CA just made")
}

/// Server-side time of `HANDSHAKES` full handshakes.
fn run(server: &Arc<ServerConfig>, client: &Arc<ClientConfig>) -> Duration {
    let name = ServerName::try_from("localhost").expect("a valid name");
    let mut server_time = Duration::ZERO;
    let mut wire = Vec::with_capacity(8 * 1024);
    for _ in 0..HANDSHAKES {
        let mut c = ClientConnection::new(client.clone(), name.clone()).expect("client");
        let t = Instant::now();
        let mut s = ServerConnection::new(server.clone()).expect("server");
        server_time += t.elapsed();
        for _ in 0..8 {
            wire.clear();
            while c.wants_write() {
                c.write_tls(&mut wire).expect("client write");
            }
            if !wire.is_empty() {
                let t = Instant::now();
                s.read_tls(&mut Cursor::new(&wire)).expect("server read");
                s.process_new_packets()
                    .expect("the server accepts the device");
                server_time += t.elapsed();
            }
            wire.clear();
            let t = Instant::now();
            while s.wants_write() {
                s.write_tls(&mut wire).expect("server write");
            }
            server_time += t.elapsed();
            if !wire.is_empty() {
                c.read_tls(&mut Cursor::new(&wire)).expect("client read");
                c.process_new_packets().expect("the client accepts the hub");
            }
            if !c.is_handshaking() && !s.is_handshaking() {
                break;
            }
        }
        assert!(
            !c.is_handshaking() && !s.is_handshaking(),
            "handshake incomplete"
        );
    }
    server_time
}

fn main() {
    let v = || Validity::days_from_now(30);
    let root = Authority::create_root("Root", None, KeyAlgorithm::EcdsaP256, v()).expect("root");
    let devices = root
        .create_intermediate("Device CA", None, KeyAlgorithm::EcdsaP256, v())
        .expect("device CA");
    let (hub_cert, hub_key): (IssuedCert, PrivateKey) = root
        .issue_server(&["localhost".into()], KeyAlgorithm::EcdsaP256, v())
        .expect("hub certificate");
    let (revoked, _) = devices
        .issue_device("gw-revoked", KeyAlgorithm::EcdsaP256, v())
        .expect("device");
    let (dev_cert, dev_key) = devices
        .issue_device("gw-1", KeyAlgorithm::EcdsaP256, v())
        .expect("device");
    let now = OffsetDateTime::now_utc();
    let crl = devices
        .crl(
            &[RevokedEntry {
                serial: revoked.info.serial.clone(),
                revoked_at: now,
                reason: RevocationReason::KeyCompromise,
            }],
            1,
            now,
            now + time::Duration::days(7),
        )
        .expect("CRL")
        .der;
    let material = || TlsMaterial {
        server_chain: vec![der(&hub_cert.pem)],
        server_key: key(&hub_key),
        client_cas: vec![der(devices.cert_pem())],
        crls: vec![CertificateRevocationListDer::from(crl.clone())],
    };

    let hub = server_config(material()).expect("the hub's configuration");
    let webpki = {
        let m = material();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = RootCertStore::empty();
        for ca in m.client_cas {
            roots.add(ca).expect("CA");
        }
        let verifier = WebPkiClientVerifier::builder_with_provider(roots.into(), provider.clone())
            .with_crls(m.crls)
            .only_check_end_entity_revocation()
            .allow_unknown_revocation_status()
            .build()
            .expect("verifier");
        let mut c = ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .expect("TLS 1.3")
            .with_client_cert_verifier(verifier)
            .with_single_cert(m.server_chain, m.server_key)
            .expect("server certificate");
        c.send_tls13_tickets = 0;
        c.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
        Arc::new(c)
    };
    let client = {
        let mut roots = RootCertStore::empty();
        roots.add(der(root.cert_pem())).expect("root");
        let mut c =
            ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_protocol_versions(&[&rustls::version::TLS13])
                .expect("TLS 1.3")
                .with_root_certificates(roots)
                .with_client_auth_cert(vec![der(&dev_cert.pem)], key(&dev_key))
                .expect("client certificate");
        c.resumption = rustls::client::Resumption::disabled();
        Arc::new(c)
    };

    let (mut a, mut b) = (Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        a.push(run(&webpki, &client));
        b.push(run(&hub, &client));
    }
    a.sort();
    b.sort();
    let us = |d: Duration| d.as_secs_f64() * 1e6 / HANDSHAKES as f64;
    let (ref_us, hub_us) = (us(a[ROUNDS / 2]), us(b[ROUNDS / 2]));
    println!(
        "server-side mTLS handshake with a CRL, median of {ROUNDS} rounds of {HANDSHAKES}:\n  \
         rustls WebPKI with_crls: {ref_us:.1} µs ({:.0}/s)\n  \
         hub (CRL verified at load): {hub_us:.1} µs ({:.0}/s)\n  \
         hub ÷ rustls time: {:.2}",
        1e6 / ref_us,
        1e6 / hub_us,
        hub_us / ref_us
    );
}
