//! Bad input, one case per rule: every packet a broker must refuse is refused with the
//! specific error, never accepted and never a panic.

use bytes::BytesMut;
use rampart_mqtt::{DecodeError, Packet, Protocol, decode_packet, reason};

fn decode(bytes: &[u8], protocol: Option<Protocol>) -> Result<Option<Packet>, DecodeError> {
    let mut buf = BytesMut::from(bytes);
    decode_packet(&mut buf, protocol, 1024)
}

fn err(bytes: &[u8], protocol: Option<Protocol>) -> DecodeError {
    match decode(bytes, protocol) {
        Err(e) => e,
        Ok(p) => panic!("expected an error for {bytes:02x?}, got {p:?}"),
    }
}

/// A well-formed MQTT 3.1.1 CONNECT with client id "c" and the given flags.
fn connect(level: u8, flags: u8, tail: &[u8]) -> Vec<u8> {
    let mut body = vec![0, 4, b'M', b'Q', b'T', b'T', level, flags, 0, 60];
    if level == 5 {
        body.push(0); // empty property block
    }
    body.extend_from_slice(&[0, 1, b'c']);
    body.extend_from_slice(tail);
    let mut pkt = vec![0x10, body.len() as u8];
    pkt.extend(body);
    pkt
}

const V3: Option<Protocol> = Some(Protocol::V311);
const V5: Option<Protocol> = Some(Protocol::V5);

#[test]
fn a_valid_connect_decodes() {
    let Some(Packet::Connect(c)) = decode(&connect(4, 0x02, &[]), None).unwrap() else {
        panic!("not a connect")
    };
    assert_eq!(&*c.client_id, "c");
    assert!(c.clean_start);
    assert_eq!(c.protocol, Protocol::V311);
}

#[test]
fn incomplete_input_waits_for_more() {
    let full = connect(4, 0x02, &[]);
    for cut in 0..full.len() {
        assert_eq!(decode(&full[..cut], None), Ok(None), "cut at {cut}");
    }
}

#[test]
fn remaining_length_longer_than_four_bytes() {
    assert_eq!(
        err(&[0x30, 0xff, 0xff, 0xff, 0xff, 0x01], V3),
        DecodeError::MalformedRemainingLength
    );
}

#[test]
fn oversized_packet_is_refused_from_its_header() {
    // Only the header has arrived: the size alone is enough to refuse it.
    let e = err(&[0x30, 0x80, 0x80, 0x04], V3);
    assert_eq!(
        e,
        DecodeError::PacketTooLarge {
            size: 65_540,
            max: 1024
        }
    );
    assert_eq!(e.reason_code(), reason::PACKET_TOO_LARGE);
    assert_eq!(e.kind(), "packet_too_large");
}

#[test]
fn first_packet_must_be_connect() {
    assert_eq!(err(&[0xc0, 0x00], None), DecodeError::ExpectedConnect(12));
    assert_eq!(err(&connect(4, 2, &[]), V3), DecodeError::DuplicateConnect);
}

#[test]
fn connect_rules() {
    assert_eq!(
        err(&connect(3, 2, &[]), None),
        DecodeError::UnsupportedProtocolLevel(3)
    );
    assert_eq!(
        err(&connect(6, 2, &[]), None),
        DecodeError::UnsupportedProtocolLevel(6)
    );
    assert_eq!(
        err(&connect(4, 0x03, &[]), None),
        DecodeError::ConnectReservedFlag
    );
    assert_eq!(err(&connect(4, 0x18, &[]), None), DecodeError::InvalidQoS);
    assert_eq!(
        err(&connect(4, 0x22, &[]), None),
        DecodeError::WillFlagsWithoutWill
    );
    assert_eq!(
        err(&connect(4, 0x42, &[0, 1, b'p']), None),
        DecodeError::PasswordWithoutUsername
    );
    // MQTT 5 allows a password without a user name.
    assert!(
        decode(&connect(5, 0x42, &[0, 1, b'p']), None)
            .unwrap()
            .is_some()
    );
    let mut bad_name = connect(4, 2, &[]);
    bad_name[4] = b'X';
    assert!(matches!(
        err(&bad_name, None),
        DecodeError::InvalidProtocolName(_)
    ));
    // Trailing bytes after the payload.
    assert_eq!(
        err(&connect(4, 2, &[9]), None),
        DecodeError::TrailingBytes("CONNECT")
    );
    // Will topic with a wildcard.
    assert!(matches!(
        err(&connect(4, 0x06, &[0, 1, b'#', 0, 0]), None),
        DecodeError::InvalidTopicName(_)
    ));
}

#[test]
fn strings_must_be_utf8_without_nul() {
    // PUBLISH topic "a\0".
    assert_eq!(
        err(&[0x30, 0x04, 0, 2, b'a', 0], V3),
        DecodeError::NullCharacter("topic name")
    );
    assert_eq!(
        err(&[0x30, 0x04, 0, 2, 0xc3, 0x28], V3),
        DecodeError::InvalidUtf8("topic name")
    );
    // Surrogate code point encoded in UTF-8 (ED A0 80) is not well-formed.
    assert_eq!(
        err(&[0x30, 0x05, 0, 3, 0xed, 0xa0, 0x80], V3),
        DecodeError::InvalidUtf8("topic name")
    );
}

#[test]
fn publish_rules() {
    assert_eq!(
        err(&[0x36, 0x05, 0, 1, b'a', 0, 1], V3),
        DecodeError::InvalidQoS
    );
    assert!(matches!(
        err(&[0x38, 0x03, 0, 1, b'a'], V3),
        DecodeError::InvalidFlags { .. }
    ));
    assert!(matches!(
        err(&[0x30, 0x03, 0, 1, b'+'], V3),
        DecodeError::InvalidTopicName(_)
    ));
    assert!(matches!(
        err(&[0x30, 0x02, 0, 0], V3),
        DecodeError::InvalidTopicName(_)
    ));
    assert_eq!(
        err(&[0x32, 0x05, 0, 1, b'a', 0, 0], V3),
        DecodeError::ZeroPacketId
    );
    assert_eq!(
        err(&[0x32, 0x04, 0, 1, b'a', 0], V3),
        DecodeError::Truncated("packet identifier")
    );
    // Topic length runs past the end of the packet.
    assert_eq!(
        err(&[0x30, 0x03, 0, 9, b'a'], V3),
        DecodeError::Truncated("topic name")
    );
}

#[test]
fn v5_properties() {
    // Unknown property 0x7f.
    assert_eq!(
        err(&[0x30, 0x06, 0, 1, b'a', 2, 0x7f, 0], V5),
        DecodeError::UnknownProperty(0x7f)
    );
    // Session expiry (0x11) is not a PUBLISH property.
    assert_eq!(
        err(&[0x30, 0x09, 0, 1, b'a', 5, 0x11, 0, 0, 0, 1], V5),
        DecodeError::PropertyNotAllowed(0x11, "PUBLISH")
    );
    // Payload format indicator twice.
    assert_eq!(
        err(&[0x30, 0x08, 0, 1, b'a', 4, 0x01, 0, 0x01, 1], V5),
        DecodeError::DuplicateProperty(0x01)
    );
    // Payload format indicator 2 is invalid.
    assert_eq!(
        err(&[0x30, 0x06, 0, 1, b'a', 2, 0x01, 2], V5),
        DecodeError::InvalidPropertyValue(1)
    );
    // Property block longer than the packet.
    assert_eq!(
        err(&[0x30, 0x05, 0, 1, b'a', 9, 1], V5),
        DecodeError::Truncated("properties")
    );
    // Receive maximum 0 in CONNECT.
    let mut c = connect(5, 2, &[]);
    c[1] += 3;
    c[12] = 3;
    c.splice(13..13, [0x21, 0, 0]);
    assert_eq!(err(&c, None), DecodeError::InvalidPropertyValue(0x21));
}

#[test]
fn fixed_header_flags() {
    assert!(matches!(
        decode(&[0x62, 0x02, 0, 1], V3),
        Ok(Some(Packet::PubRel(_)))
    ));
    assert!(matches!(
        err(&[0x60, 0x02, 0, 1], V3),
        DecodeError::InvalidFlags {
            packet: "PUBREL",
            ..
        }
    ));
    assert!(matches!(
        err(&[0x80, 0x06, 0, 1, 0, 1, b'a', 0], V3),
        DecodeError::InvalidFlags {
            packet: "SUBSCRIBE",
            ..
        }
    ));
    assert!(matches!(
        err(&[0xc1, 0x00], V3),
        DecodeError::InvalidFlags {
            packet: "PINGREQ",
            ..
        }
    ));
    assert_eq!(err(&[0x00, 0x00], V3), DecodeError::ReservedPacketType(0));
    assert_eq!(
        err(&[0xc0, 0x01, 0], V3),
        DecodeError::TrailingBytes("PINGREQ")
    );
    assert_eq!(err(&[0xf0, 0x00], V3), DecodeError::AuthInV311);
}

#[test]
fn subscribe_rules() {
    assert_eq!(
        err(&[0x82, 0x02, 0, 1], V3),
        DecodeError::NoTopicFilters("SUBSCRIBE")
    );
    assert_eq!(
        err(&[0x82, 0x06, 0, 1, 0, 1, b'a', 0x04], V3),
        DecodeError::SubscriptionOptionsReserved
    );
    assert_eq!(
        err(&[0x82, 0x06, 0, 1, 0, 1, b'a', 0x03], V3),
        DecodeError::InvalidQoS
    );
    assert_eq!(
        err(&[0x82, 0x07, 0, 1, 0, 0, 1, b'a', 0x30], V5),
        DecodeError::InvalidRetainHandling
    );
    assert_eq!(
        err(&[0x82, 0x07, 0, 1, 0, 0, 1, b'a', 0xc0], V5),
        DecodeError::SubscriptionOptionsReserved
    );
    assert_eq!(
        err(&[0xa2, 0x02, 0, 1], V3),
        DecodeError::NoTopicFilters("UNSUBSCRIBE")
    );
}

#[test]
fn ack_rules() {
    assert_eq!(err(&[0x40, 0x02, 0, 0], V3), DecodeError::ZeroPacketId);
    assert_eq!(
        err(&[0x40, 0x03, 0, 1, 0], V3),
        DecodeError::TrailingBytes("PUBACK")
    );
    assert_eq!(
        err(&[0x40, 0x03, 0, 1, 0x05], V5),
        DecodeError::InvalidReasonCode {
            packet: "PUBACK",
            code: 5
        }
    );
    assert!(decode(&[0x40, 0x03, 0, 1, 0x10], V5).unwrap().is_some());
}

#[test]
fn arbitrary_bytes_never_panic() {
    // A deterministic sweep of short inputs in every connection state.
    let mut seed: u32 = 0x1234_5678;
    for _ in 0..20_000 {
        let len = (seed % 24) as usize;
        let mut bytes = Vec::with_capacity(len);
        for _ in 0..len {
            seed ^= seed << 13;
            seed ^= seed >> 17;
            seed ^= seed << 5;
            bytes.push((seed & 0xff) as u8);
        }
        for state in [None, V3, V5] {
            let _ = decode(&bytes, state);
        }
    }
}
