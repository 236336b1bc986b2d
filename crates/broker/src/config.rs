//! Limits and behaviour of the broker.

use std::time::Duration;

/// Broker settings. Every limit exists to bound what one client can make the broker hold.
#[derive(Debug, Clone)]
pub struct BrokerConfig {
    /// Largest packet accepted, fixed header included (MQTT 5 Maximum Packet Size).
    pub max_packet_size: usize,
    /// QoS 1/2 PUBLISH packets a client may have unacknowledged towards the broker
    /// (advertised to MQTT 5 clients as Receive Maximum).
    pub receive_maximum: u16,
    /// QoS 1 messages the broker keeps unacknowledged towards one client (MQTT 5 clients may
    /// lower it with their own Receive Maximum).
    pub max_inflight: u16,
    /// Messages queued per session, online or offline, before new ones are dropped (counted).
    pub max_queued_messages: usize,
    /// Longest keep-alive accepted; MQTT 5 clients asking for more (or 0) are told this value.
    pub max_keep_alive: u16,
    /// Time allowed for the TLS handshake plus the CONNECT packet.
    pub connect_timeout: Duration,
    /// Longest a disconnected persistent session is kept.
    pub max_session_expiry: Duration,
    /// How long a publisher waits for space in a full subscriber queue before the message is
    /// dropped for that subscriber (QoS 1 only; QoS 0 is dropped at once).
    pub enqueue_timeout: Duration,
    /// How long a write to a client may block before the client is dropped as stalled.
    pub write_timeout: Duration,
    /// Concurrent connections accepted; further ones are closed at once.
    pub max_connections: usize,
}

impl Default for BrokerConfig {
    fn default() -> Self {
        BrokerConfig {
            max_packet_size: 256 * 1024,
            receive_maximum: 1024,
            max_inflight: 1024,
            max_queued_messages: 10_000,
            max_keep_alive: 1200,
            connect_timeout: Duration::from_secs(10),
            max_session_expiry: Duration::from_secs(7 * 24 * 3600),
            enqueue_timeout: Duration::from_secs(5),
            write_timeout: Duration::from_secs(30),
            max_connections: 100_000,
        }
    }
}
