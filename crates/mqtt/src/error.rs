//! Why a packet could not be decoded.

use crate::reason;

/// A packet that violates the MQTT specification.
///
/// Each variant says what was wrong; [`DecodeError::reason_code`] gives the MQTT 5 reason code
/// a server sends in DISCONNECT, and [`DecodeError::kind`] a stable label for metrics.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("remaining length is not a valid variable byte integer")]
    MalformedRemainingLength,
    #[error("packet of {size} bytes exceeds the maximum packet size of {max} bytes")]
    PacketTooLarge { size: usize, max: usize },
    #[error("reserved packet type {0}")]
    ReservedPacketType(u8),
    #[error("invalid fixed-header flags {flags:#06b} for {packet}")]
    InvalidFlags { packet: &'static str, flags: u8 },
    #[error("first packet must be CONNECT, got packet type {0}")]
    ExpectedConnect(u8),
    #[error("second CONNECT on the same connection")]
    DuplicateConnect,
    #[error("packet type {0} is only sent by servers")]
    ServerOnlyPacket(&'static str),
    #[error("AUTH is not defined in MQTT 3.1.1")]
    AuthInV311,
    #[error("protocol name {0:?} is not \"MQTT\"")]
    InvalidProtocolName(String),
    #[error("unsupported protocol level {0} (supported: 4 = MQTT 3.1.1, 5 = MQTT 5.0)")]
    UnsupportedProtocolLevel(u8),
    #[error("reserved bit set in CONNECT flags")]
    ConnectReservedFlag,
    #[error("will QoS or will retain set without the will flag")]
    WillFlagsWithoutWill,
    #[error("password flag set without user name flag (MQTT 3.1.1)")]
    PasswordWithoutUsername,
    #[error("invalid QoS value 3")]
    InvalidQoS,
    #[error("{0}: truncated")]
    Truncated(&'static str),
    #[error("{0}: unexpected bytes after the end of the packet")]
    TrailingBytes(&'static str),
    #[error("{0}: malformed variable byte integer")]
    MalformedVarint(&'static str),
    #[error("{0}: string is not well-formed UTF-8")]
    InvalidUtf8(&'static str),
    #[error("{0}: string contains U+0000")]
    NullCharacter(&'static str),
    #[error("packet identifier 0 is not allowed")]
    ZeroPacketId,
    #[error("{0} with no topic filters")]
    NoTopicFilters(&'static str),
    #[error("reserved bits set in subscription options")]
    SubscriptionOptionsReserved,
    #[error("retain handling value 3 is reserved")]
    InvalidRetainHandling,
    #[error("invalid topic name: {0}")]
    InvalidTopicName(&'static str),
    #[error("invalid topic filter: {0}")]
    InvalidTopicFilter(&'static str),
    #[error("unknown property identifier {0:#04x}")]
    UnknownProperty(u32),
    #[error("property {0:#04x} is not allowed in {1}")]
    PropertyNotAllowed(u8, &'static str),
    #[error("property {0:#04x} appears more than once")]
    DuplicateProperty(u8),
    #[error("property {0:#04x} has an invalid value")]
    InvalidPropertyValue(u8),
    #[error("reason code {code:#04x} is not valid in {packet}")]
    InvalidReasonCode { packet: &'static str, code: u8 },
}

impl DecodeError {
    /// The MQTT 5 reason code for a DISCONNECT caused by this error.
    pub fn reason_code(&self) -> u8 {
        match self {
            DecodeError::PacketTooLarge { .. } => reason::PACKET_TOO_LARGE,
            DecodeError::InvalidTopicName(_) => reason::TOPIC_NAME_INVALID,
            DecodeError::InvalidTopicFilter(_) => reason::TOPIC_FILTER_INVALID,
            DecodeError::UnsupportedProtocolLevel(_) => reason::UNSUPPORTED_PROTOCOL_VERSION,
            DecodeError::ExpectedConnect(_)
            | DecodeError::DuplicateConnect
            | DecodeError::ServerOnlyPacket(_)
            | DecodeError::AuthInV311
            | DecodeError::DuplicateProperty(_)
            | DecodeError::PropertyNotAllowed(..)
            | DecodeError::InvalidPropertyValue(_)
            | DecodeError::ZeroPacketId
            | DecodeError::NoTopicFilters(_)
            | DecodeError::InvalidRetainHandling => reason::PROTOCOL_ERROR,
            _ => reason::MALFORMED_PACKET,
        }
    }

    /// A short, stable label for metrics and structured logs.
    pub fn kind(&self) -> &'static str {
        match self {
            DecodeError::PacketTooLarge { .. } => "packet_too_large",
            DecodeError::InvalidTopicName(_) | DecodeError::InvalidTopicFilter(_) => {
                "invalid_topic"
            }
            DecodeError::UnsupportedProtocolLevel(_) | DecodeError::InvalidProtocolName(_) => {
                "unsupported_protocol"
            }
            e if e.reason_code() == reason::PROTOCOL_ERROR => "protocol_error",
            _ => "malformed_packet",
        }
    }
}
