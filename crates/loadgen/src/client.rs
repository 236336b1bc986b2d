//! One MQTT connection over mutual TLS, as cheap as the generator can make it: packets are
//! encoded into one buffer and written together (several PUBLISHes per TLS record), and
//! reads decode every packet a read returned.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use rampart_mqtt::{Connect, ConnectProperties, Packet, Protocol, decode_packet, encode_packet};
use rustls::ClientConfig;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, pem::PemObject};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, ReadHalf, WriteHalf};
use tokio::net::{TcpSocket, TcpStream};
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use crate::LoadError;
use crate::trust::ServerTrust;

/// Largest packet the generator accepts from a broker.
const MAX_PACKET: usize = 1 << 20;

/// Why a connection failed, by kind (the report counts each).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// TCP connect failed (refused, no free port, ...).
    Tcp,
    /// The TLS handshake failed.
    Tls,
    /// CONNACK with a non-zero code.
    Refused,
    /// No answer in time.
    Timeout,
    /// The broker closed the connection.
    Closed,
    /// A packet the generator could not read, or an unexpected one.
    Protocol,
    /// A subscription the broker refused.
    SubscribeRefused,
}

impl ErrorKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Tcp => "tcp",
            ErrorKind::Tls => "tls",
            ErrorKind::Refused => "refused",
            ErrorKind::Timeout => "timeout",
            ErrorKind::Closed => "closed",
            ErrorKind::Protocol => "protocol",
            ErrorKind::SubscribeRefused => "subscribe_refused",
        }
    }
}

/// A failed connection step.
#[derive(Debug, Clone)]
pub struct ConnError {
    pub kind: ErrorKind,
    pub detail: String,
}

impl std::fmt::Display for ConnError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.kind.as_str(), self.detail)
    }
}

fn err(kind: ErrorKind, detail: impl ToString) -> ConnError {
    ConnError {
        kind,
        detail: detail.to_string(),
    }
}

/// A TLS client configuration for one identity, authenticating the broker with `trust`.
pub fn tls_config(
    trust: &Arc<ServerTrust>,
    cert_pem: &str,
    key_pem: &str,
) -> Result<Arc<ClientConfig>, LoadError> {
    let chain = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| LoadError::Tls(format!("client certificate: {e}")))?;
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
        .map_err(|e| LoadError::Tls(format!("client key: {e}")))?;
    let config = ClientConfig::builder_with_provider(trust.provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| LoadError::Tls(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(trust.clone())
        .with_client_auth_cert(chain, key)
        .map_err(|e| LoadError::Tls(e.to_string()))?;
    Ok(Arc::new(config))
}

/// Where to connect.
#[derive(Debug, Clone)]
pub struct Target {
    pub addr: SocketAddr,
    pub server_name: ServerName<'static>,
}

/// An open MQTT session.
#[derive(Debug)]
pub struct Conn {
    pub protocol: Protocol,
    pub reader: Reader,
    pub writer: WriteHalf<TlsStream<TcpStream>>,
    /// The broker's Receive Maximum (MQTT 5), if it sent one.
    pub receive_maximum: Option<u16>,
}

/// The reading half, with its decode buffer.
#[derive(Debug)]
pub struct Reader {
    half: ReadHalf<TlsStream<TcpStream>>,
    buf: BytesMut,
    protocol: Protocol,
}

impl Reader {
    /// Reads at least one packet (all the read returned, in order); empty on a clean close.
    pub async fn read_packets(&mut self, out: &mut Vec<Packet>) -> Result<(), ConnError> {
        loop {
            while let Some(p) = decode_packet(&mut self.buf, Some(self.protocol), MAX_PACKET)
                .map_err(|e| err(ErrorKind::Protocol, e))?
            {
                out.push(p);
            }
            if !out.is_empty() {
                return Ok(());
            }
            self.buf.reserve(16 * 1024);
            let n = self
                .half
                .read_buf(&mut self.buf)
                .await
                .map_err(|e| err(ErrorKind::Closed, e))?;
            if n == 0 {
                return Err(err(ErrorKind::Closed, "connection closed by the broker"));
            }
        }
    }
}

/// Connects from `source` (an address of 127.0.0.0/8, so many connections do not exhaust
/// one address's ports), completes TLS and MQTT CONNECT within `timeout`.
pub async fn connect(
    target: &Target,
    tls: Arc<ClientConfig>,
    source: Option<IpAddr>,
    client_id: &str,
    protocol: Protocol,
    timeout: Duration,
) -> Result<Conn, ConnError> {
    tokio::time::timeout(
        timeout,
        connect_inner(target, tls, source, client_id, protocol),
    )
    .await
    .map_err(|_| err(ErrorKind::Timeout, format!("no session within {timeout:?}")))?
}

async fn connect_inner(
    target: &Target,
    tls: Arc<ClientConfig>,
    source: Option<IpAddr>,
    client_id: &str,
    protocol: Protocol,
) -> Result<Conn, ConnError> {
    let socket = if target.addr.is_ipv4() {
        TcpSocket::new_v4()
    } else {
        TcpSocket::new_v6()
    }
    .map_err(|e| err(ErrorKind::Tcp, e))?;
    if let Some(ip) = source {
        socket
            .bind(SocketAddr::new(ip, 0))
            .map_err(|e| err(ErrorKind::Tcp, format!("bind {ip}: {e}")))?;
    }
    let tcp = socket
        .connect(target.addr)
        .await
        .map_err(|e| err(ErrorKind::Tcp, e))?;
    tcp.set_nodelay(true).map_err(|e| err(ErrorKind::Tcp, e))?;
    let mut buf = BytesMut::with_capacity(256);
    encode_packet(
        &Packet::Connect(Box::new(Connect {
            protocol,
            clean_start: true,
            keep_alive: 600,
            client_id: client_id.into(),
            will: None,
            username: None,
            password: None,
            properties: ConnectProperties::default(),
        })),
        protocol,
        &mut buf,
    );
    // CONNECT is handed to rustls before the handshake: it holds it until its keys allow
    // application data and sends it with the client's Finished, in the same write. The broker
    // then reads both at once, as it would from any client that does not wait a round trip.
    let mut queued = Ok(());
    let stream = TlsConnector::from(tls)
        .connect_with(target.server_name.clone(), tcp, |c| {
            queued = std::io::Write::write_all(&mut c.writer(), &buf);
        })
        .await
        .map_err(|e| err(ErrorKind::Tls, e))?;
    queued.map_err(|e| err(ErrorKind::Tls, format!("CONNECT not queued: {e}")))?;
    let (half, writer) = tokio::io::split(stream);
    let mut reader = Reader {
        half,
        buf: BytesMut::with_capacity(16 * 1024),
        protocol,
    };
    let mut packets = Vec::new();
    reader.read_packets(&mut packets).await.map_err(|e| {
        // A broker refusing the certificate closes during or right after the handshake.
        if e.kind == ErrorKind::Closed {
            err(
                ErrorKind::Tls,
                format!("closed before CONNACK ({})", e.detail),
            )
        } else {
            e
        }
    })?;
    match packets.first() {
        Some(Packet::ConnAck(a)) if a.code == 0 => Ok(Conn {
            protocol,
            receive_maximum: a.properties.receive_maximum,
            reader,
            writer,
        }),
        Some(Packet::ConnAck(a)) => Err(err(
            ErrorKind::Refused,
            format!("CONNACK code {:#04x}", a.code),
        )),
        Some(other) => Err(err(
            ErrorKind::Protocol,
            format!("expected CONNACK, got {}", other.name()),
        )),
        None => Err(err(ErrorKind::Closed, "no CONNACK")),
    }
}

/// The `i`-th source address, from 127.1.0.1 up: each connection its own address (up to
/// 62,500), so no address runs out of ephemeral ports however many connections a run opens.
pub fn source_address(i: usize) -> IpAddr {
    let a = i / 250;
    IpAddr::from([
        127,
        1 + (a / 250) as u8,
        (a % 250) as u8,
        1 + (i % 250) as u8,
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn source_addresses_stay_in_127_slash_8_and_spread() {
        let all: std::collections::HashSet<IpAddr> = (0..20_000).map(source_address).collect();
        assert!(all.iter().all(|ip| ip.is_loopback()));
        assert!(all.len() >= 250);
        assert_eq!(source_address(0), IpAddr::from([127, 1, 0, 1]));
    }
}
