//! The floor under a broker's cost per connection: an acceptor that does only what any MQTT
//! broker over mutual TLS must do for a new device — accept the TCP connection, complete a
//! TLS 1.3 handshake that verifies the client's certificate against the fleet CA (the same
//! server configuration as [`crate::handshake`]'s reference), read and decode CONNECT, answer
//! CONNACK, and hold the connection until the client closes it — and none of what a broker
//! adds: identity and revocation checks, sessions, authorisation, storage, events.
//!
//! `rampart bench compare` runs its connection storm against it pinned to a core as the
//! brokers are. The in-memory rustls rate leaves out the kernel's TCP work, the socket
//! reads and writes and the async runtime; this floor has them, so a broker's connections per
//! CPU-second split into what this floor costs and what the broker adds. It accepts only
//! loopback peers and is not a broker: it never reads past CONNECT.

use bytes::BytesMut;
use rampart_mqtt::{ConnAck, ConnAckProperties, Packet, decode_packet, encode_packet};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;

use crate::LoadError;
use crate::fleet::Fleet;
use crate::handshake::server_config;

/// Largest CONNECT accepted (a fleet device's is under 200 bytes).
const MAX_CONNECT: usize = 4096;

/// Accepts connections on `listener` until the process ends.
pub async fn serve(listener: TcpListener, fleet: &Fleet) -> Result<(), LoadError> {
    let acceptor = TlsAcceptor::from(server_config(fleet)?);
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                // Out of file descriptors, most likely: the storm goes on with those accepted.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                continue;
            }
        };
        if !peer.ip().is_loopback() {
            tracing::warn!(%peer, "refused: the floor acceptor serves loopback peers only");
            continue;
        }
        let acceptor = acceptor.clone();
        tokio::spawn(async move {
            if let Err(e) = connection(acceptor, tcp).await {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
        });
    }
}

/// One connection: handshake, CONNECT, CONNACK, then read until the client closes.
async fn connection(acceptor: TlsAcceptor, tcp: TcpStream) -> Result<(), String> {
    // As the hub and Mosquitto do: CONNACK goes out at once.
    tcp.set_nodelay(true).map_err(|e| e.to_string())?;
    let mut tls = acceptor
        .accept(tcp)
        .await
        .map_err(|e| format!("TLS handshake: {e}"))?;
    let mut buf = BytesMut::with_capacity(512);
    let connect = loop {
        if let Some(p) = decode_packet(&mut buf, None, MAX_CONNECT).map_err(|e| e.to_string())? {
            break p;
        }
        if tls.read_buf(&mut buf).await.map_err(|e| e.to_string())? == 0 {
            return Err("closed before CONNECT".into());
        }
    };
    // decode_packet accepts nothing but CONNECT first (None = no protocol yet).
    let Packet::Connect(connect) = connect else {
        return Err("the first packet was not CONNECT".into());
    };
    let mut out = BytesMut::with_capacity(8);
    encode_packet(
        &Packet::ConnAck(ConnAck {
            session_present: false,
            code: 0,
            properties: ConnAckProperties::default(),
        }),
        connect.protocol,
        &mut out,
    );
    tls.write_all(&out).await.map_err(|e| e.to_string())?;
    tls.flush().await.map_err(|e| e.to_string())?;
    let mut sink = [0u8; 512];
    while tls.read(&mut sink).await.map_err(|e| e.to_string())? > 0 {}
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use rampart_mqtt::{Connect, ConnectProperties, Protocol};
    use rustls::pki_types::ServerName;
    use tokio_rustls::TlsConnector;

    use super::*;
    use crate::client::tls_config;

    async fn connect(
        port: u16,
        config: Arc<rustls::ClientConfig>,
        protocol: Protocol,
    ) -> Result<Packet, String> {
        let tcp = TcpStream::connect(("127.0.0.1", port))
            .await
            .map_err(|e| e.to_string())?;
        let name = ServerName::try_from("localhost").map_err(|e| e.to_string())?;
        let mut tls = TlsConnector::from(config)
            .connect(name, tcp)
            .await
            .map_err(|e| e.to_string())?;
        let mut out = BytesMut::new();
        encode_packet(
            &Packet::Connect(Box::new(Connect {
                protocol,
                clean_start: true,
                keep_alive: 30,
                client_id: "floor-test".into(),
                will: None,
                username: None,
                password: None,
                properties: ConnectProperties::default(),
            })),
            protocol,
            &mut out,
        );
        tls.write_all(&out).await.map_err(|e| e.to_string())?;
        let mut buf = BytesMut::new();
        loop {
            if let Some(p) =
                decode_packet(&mut buf, Some(protocol), 1024).map_err(|e| e.to_string())?
            {
                return Ok(p);
            }
            if tls.read_buf(&mut buf).await.map_err(|e| e.to_string())? == 0 {
                return Err("closed before CONNACK".into());
            }
        }
    }

    /// A fleet device gets CONNACK over 3.1.1 and 5.0; a client whose certificate another CA
    /// issued does not get past the handshake.
    #[tokio::test]
    async fn answers_fleet_devices_and_refuses_other_certificates() {
        let fleet = Fleet::issue(1).unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let served = fleet.clone();
        tokio::spawn(async move { serve(listener, &served).await });
        let d = &fleet.devices[0];
        let trust = crate::trust::ServerTrust::from_pem(&fleet.ca_pem).unwrap();
        let good = tls_config(&trust, &d.cert_pem, &d.key_pem).unwrap();
        for protocol in [Protocol::V311, Protocol::V5] {
            match connect(port, good.clone(), protocol).await.unwrap() {
                Packet::ConnAck(a) => assert_eq!(a.code, 0),
                other => panic!("expected CONNACK, got {other:?}"),
            }
        }
        let other = Fleet::issue(1).unwrap();
        let o = &other.devices[0];
        // Trusts the server (the first fleet's CA), presents a certificate of another CA.
        let bad = tls_config(&trust, &o.cert_pem, &o.key_pem).unwrap();
        let refused = connect(port, bad, Protocol::V311).await;
        assert!(refused.is_err(), "{refused:?}");
    }
}
