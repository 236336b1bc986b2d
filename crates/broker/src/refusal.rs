//! Why the broker refused something: one variant per case, each with its metric label and the
//! MQTT codes that carry it to the client.

use rampart_mqtt::reason;

macro_rules! reasons {
    ($( $variant:ident => $label:literal, $v5:expr, $v311:expr; )*) => {
        /// A refusal reason. Every refusal is logged with its detail and counted by reason.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum RefusalReason { $( $variant, )* }

        impl RefusalReason {
            /// Every reason, in declaration order (metric rendering).
            pub const ALL: &'static [RefusalReason] = &[ $( RefusalReason::$variant, )* ];

            /// Stable metric label.
            pub fn as_str(self) -> &'static str {
                match self { $( RefusalReason::$variant => $label, )* }
            }

            /// MQTT 5 reason code sent to the client, if the refusal reaches MQTT at all.
            pub fn v5_code(self) -> u8 {
                match self { $( RefusalReason::$variant => $v5, )* }
            }

            /// MQTT 3.1.1 CONNACK return code, for refusals at CONNECT.
            pub fn v311_connack(self) -> u8 {
                match self { $( RefusalReason::$variant => $v311, )* }
            }

            pub(crate) fn index(self) -> usize {
                self as usize
            }
        }
    };
}

reasons! {
    TlsNoClientCertificate => "tls_no_client_certificate", reason::NOT_AUTHORIZED, 5;
    TlsUnknownCa => "tls_unknown_ca", reason::NOT_AUTHORIZED, 5;
    TlsCertificateExpired => "tls_certificate_expired", reason::NOT_AUTHORIZED, 5;
    TlsCertificateNotYetValid => "tls_certificate_not_yet_valid", reason::NOT_AUTHORIZED, 5;
    TlsCertificateRevoked => "tls_certificate_revoked", reason::NOT_AUTHORIZED, 5;
    TlsBadCertificate => "tls_bad_certificate", reason::NOT_AUTHORIZED, 5;
    TlsHandshakeFailed => "tls_handshake_failed", reason::UNSPECIFIED_ERROR, 3;
    TlsTimeout => "tls_timeout", reason::UNSPECIFIED_ERROR, 3;
    ConnectTimeout => "connect_timeout", reason::UNSPECIFIED_ERROR, 3;
    UnsupportedProtocol => "unsupported_protocol", reason::UNSUPPORTED_PROTOCOL_VERSION, 1;
    ClientIdMismatch => "client_id_mismatch", reason::NOT_AUTHORIZED, 5;
    UnknownDevice => "unknown_device", reason::NOT_AUTHORIZED, 5;
    UnknownCertificate => "unknown_certificate", reason::NOT_AUTHORIZED, 5;
    DeviceDisabled => "device_disabled", reason::BANNED, 5;
    DevicePending => "device_pending", reason::NOT_AUTHORIZED, 5;
    CertificateRevoked => "certificate_revoked", reason::NOT_AUTHORIZED, 5;
    CertificateRetired => "certificate_retired", reason::NOT_AUTHORIZED, 5;
    ClaimExhausted => "claim_exhausted", reason::NOT_AUTHORIZED, 5;
    ConnectNotAuthorized => "connect_not_authorized", reason::NOT_AUTHORIZED, 5;
    BadAuthenticationMethod => "bad_authentication_method", reason::BAD_AUTHENTICATION_METHOD, 5;
    ServerBusy => "server_busy", reason::SERVER_BUSY, 3;
    PublishDenied => "publish_denied", reason::NOT_AUTHORIZED, 5;
    SubscribeDenied => "subscribe_denied", reason::NOT_AUTHORIZED, 5;
    PayloadInvalid => "payload_invalid", reason::PAYLOAD_FORMAT_INVALID, 5;
    PacketTooLarge => "packet_too_large", reason::PACKET_TOO_LARGE, 5;
    MalformedPacket => "malformed_packet", reason::MALFORMED_PACKET, 5;
    ProtocolError => "protocol_error", reason::PROTOCOL_ERROR, 5;
    TopicAliasInvalid => "topic_alias_invalid", reason::TOPIC_ALIAS_INVALID, 5;
    ReceiveMaximumExceeded => "receive_maximum_exceeded", reason::RECEIVE_MAXIMUM_EXCEEDED, 5;
    KeepAliveTimeout => "keep_alive_timeout", reason::KEEP_ALIVE_TIMEOUT, 5;
    StorageFailed => "storage_failed", reason::IMPLEMENTATION_SPECIFIC_ERROR, 3;
}

/// A refusal with the detail for the operator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub reason: RefusalReason,
    pub detail: String,
}

impl Refusal {
    pub fn new(reason: RefusalReason, detail: impl Into<String>) -> Self {
        Refusal {
            reason,
            detail: detail.into(),
        }
    }
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.reason.as_str(), self.detail)
    }
}
