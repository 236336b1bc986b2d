//! A raw MQTT client over rustls, built on Rampart's codec: it sends exactly the bytes a test
//! asks for (including malformed ones) and returns every packet the hub sends back.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use rampart_mqtt::{
    ConnAck, Connect, ConnectProperties, Packet, Protocol, Will, decode_packet, encode_packet,
};
use rustls::{ClientConfig, RootCertStore};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use crate::Bundle;

/// TLS client configuration trusting `ca`, with an optional client certificate.
pub fn tls_config(ca: &Path, client: Option<(&Path, &Path)>) -> Arc<ClientConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let builder = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    let cfg = match client {
        Some((cert, key)) => builder
            .with_client_auth_cert(
                CertificateDer::pem_file_iter(cert)
                    .unwrap()
                    .map(Result::unwrap)
                    .collect(),
                PrivateKeyDer::from_pem_file(key).unwrap(),
            )
            .unwrap(),
        None => builder.with_no_client_auth(),
    };
    Arc::new(cfg)
}

/// One raw connection.
pub struct RawClient {
    stream: TlsStream<TcpStream>,
    buf: BytesMut,
    pub protocol: Protocol,
}

/// What `recv` saw.
#[derive(Debug, PartialEq)]
#[allow(clippy::large_enum_variant)] // test values, compared and dropped at once
pub enum Received {
    Packet(Packet),
    /// The hub closed the connection.
    Closed,
    /// Nothing arrived in time.
    Timeout,
}

impl RawClient {
    /// Opens a TLS connection (no MQTT yet).
    pub async fn tls(addr: SocketAddr, config: Arc<ClientConfig>) -> std::io::Result<RawClient> {
        let tcp = TcpStream::connect(addr).await?;
        let stream = TlsConnector::from(config)
            .connect(ServerName::try_from("localhost").unwrap(), tcp)
            .await?;
        Ok(RawClient {
            stream,
            buf: BytesMut::new(),
            protocol: Protocol::V311,
        })
    }

    /// Opens a TLS connection with a device bundle's credentials.
    pub async fn tls_as(addr: SocketAddr, bundle: &Bundle) -> RawClient {
        RawClient::tls(
            addr,
            tls_config(&bundle.ca(), Some((&bundle.cert(), &bundle.key()))),
        )
        .await
        .unwrap()
    }

    /// TLS + CONNECT; returns the CONNACK (or what came instead).
    #[allow(clippy::too_many_arguments)] // one argument per CONNECT field the tests vary
    pub async fn connect(
        addr: SocketAddr,
        bundle: &Bundle,
        protocol: Protocol,
        client_id: &str,
        clean_start: bool,
        keep_alive: u16,
        will: Option<Will>,
        properties: ConnectProperties,
    ) -> (RawClient, Received) {
        let mut c = RawClient::tls_as(addr, bundle).await;
        let r = c
            .send_connect(Connect {
                protocol,
                clean_start,
                keep_alive,
                client_id: client_id.into(),
                will,
                username: None,
                password: None,
                properties,
            })
            .await;
        (c, r)
    }

    /// Sends `connect` on an open TLS connection; returns the CONNACK (or what came instead).
    pub async fn send_connect(&mut self, connect: Connect) -> Received {
        self.protocol = connect.protocol;
        self.send(&Packet::Connect(Box::new(connect))).await;
        self.recv(Duration::from_secs(5)).await
    }

    /// How the TLS session was set up: a full handshake, or one resumed from an earlier
    /// connection's session.
    pub fn handshake_kind(&self) -> Option<rustls::HandshakeKind> {
        self.stream.get_ref().1.handshake_kind()
    }

    /// CONNECT as `client_id` with keep-alive 60 s; panics unless accepted, and returns the
    /// connection with CONNACK's session-present flag.
    pub async fn connect_session(
        addr: SocketAddr,
        bundle: &Bundle,
        protocol: Protocol,
        client_id: &str,
        clean_start: bool,
        properties: ConnectProperties,
    ) -> (RawClient, bool) {
        let (c, r) = RawClient::connect(
            addr,
            bundle,
            protocol,
            client_id,
            clean_start,
            60,
            None,
            properties,
        )
        .await;
        match r {
            Received::Packet(Packet::ConnAck(ConnAck {
                code: 0,
                session_present,
                ..
            })) => (c, session_present),
            other => panic!("CONNECT as {client_id:?} refused: {other:?}"),
        }
    }

    /// CONNECT with defaults: clean start, keep-alive 60 s; panics unless accepted.
    pub async fn connect_ok(addr: SocketAddr, bundle: &Bundle, protocol: Protocol) -> RawClient {
        let (c, r) = RawClient::connect(
            addr,
            bundle,
            protocol,
            &bundle.id,
            true,
            60,
            None,
            ConnectProperties::default(),
        )
        .await;
        match r {
            Received::Packet(Packet::ConnAck(ConnAck { code: 0, .. })) => c,
            other => panic!("CONNECT refused: {other:?}"),
        }
    }

    pub async fn send(&mut self, p: &Packet) {
        let mut buf = BytesMut::new();
        encode_packet(p, self.protocol, &mut buf);
        self.send_raw(&buf).await;
    }

    pub async fn send_raw(&mut self, bytes: &[u8]) {
        // The hub may already have closed the connection; the test looks at what it received.
        let _ = self.stream.write_all(bytes).await;
        let _ = self.stream.flush().await;
    }

    /// The next packet from the hub.
    pub async fn recv(&mut self, timeout: Duration) -> Received {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            match decode_packet(&mut self.buf, Some(self.protocol), usize::MAX) {
                Ok(Some(p)) => return Received::Packet(p),
                Ok(None) => {}
                Err(e) => panic!("hub sent an undecodable packet: {e}"),
            }
            self.buf.reserve(4096);
            match tokio::time::timeout_at(deadline, self.stream.read_buf(&mut self.buf)).await {
                Err(_) => return Received::Timeout,
                Ok(Ok(0)) | Ok(Err(_)) => return Received::Closed,
                Ok(Ok(_)) => {}
            }
        }
    }

    /// Reads packets until one matches, or fails after `timeout`.
    pub async fn expect(
        &mut self,
        timeout: Duration,
        mut pred: impl FnMut(&Packet) -> bool,
    ) -> Packet {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.recv(left).await {
                Received::Packet(p) if pred(&p) => return p,
                Received::Packet(_) => continue,
                other => panic!("expected a packet, got {other:?}"),
            }
        }
    }

    /// Waits until the hub closes the connection, returning what it sent last.
    pub async fn closed_after(&mut self, timeout: Duration) -> Vec<Packet> {
        let mut seen = Vec::new();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.recv(left).await {
                Received::Packet(p) => seen.push(p),
                Received::Closed => return seen,
                Received::Timeout => {
                    panic!("connection still open after {timeout:?}; got {seen:?}")
                }
            }
        }
    }
}
