//! Bytes to packets.
//!
//! [`decode_packet`] takes one packet off the front of a read buffer. It checks the declared
//! size against the maximum packet size *before* buffering the body, so a peer cannot make the
//! server allocate more than that limit by announcing a huge packet.

use bytes::{Bytes, BytesMut};

use crate::error::DecodeError;
use crate::packet::*;
use crate::properties::{
    AUTHENTICATION_DATA, AUTHENTICATION_METHOD, ConnAckProperties, ConnectProperties,
    PublishProperties, REASON_STRING, SERVER_REFERENCE, SESSION_EXPIRY_INTERVAL,
    SUBSCRIPTION_IDENTIFIER, USER_PROPERTY, Value, WillProperties, read_properties,
};
use crate::reason;
use crate::topic;
use crate::wire::Reader;

/// Largest value a remaining-length field can hold (four variable-byte-integer bytes).
pub const MAX_REMAINING_LENGTH: usize = 268_435_455;

/// The fixed header of a packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    /// Packet type (high nibble) and flags (low nibble).
    pub first_byte: u8,
    /// Length of the variable header and payload.
    pub remaining_len: usize,
    /// Length of the fixed header itself (2 to 5 bytes).
    pub header_len: usize,
}

impl FrameHeader {
    /// Parses the fixed header at the start of `buf`; `Ok(None)` if more bytes are needed.
    pub fn parse(buf: &[u8]) -> Result<Option<FrameHeader>, DecodeError> {
        let Some(&first_byte) = buf.first() else {
            return Ok(None);
        };
        let mut remaining_len = 0usize;
        for i in 0..4 {
            let Some(&byte) = buf.get(1 + i) else {
                return Ok(None);
            };
            remaining_len |= usize::from(byte & 0x7f) << (7 * i);
            if byte & 0x80 == 0 {
                return Ok(Some(FrameHeader {
                    first_byte,
                    remaining_len,
                    header_len: 2 + i,
                }));
            }
        }
        Err(DecodeError::MalformedRemainingLength)
    }

    /// Size of the whole packet on the wire.
    pub fn packet_len(&self) -> usize {
        self.header_len + self.remaining_len
    }
}

/// Decodes one packet from the front of `buf`, removing its bytes.
///
/// `protocol` is `None` on a server connection that has not yet received CONNECT: then only
/// CONNECT is accepted. `max_packet_size` bounds the whole packet (fixed header included), as
/// MQTT 5's Maximum Packet Size does. Returns `Ok(None)` when `buf` holds only part of a packet.
pub fn decode_packet(
    buf: &mut BytesMut,
    protocol: Option<Protocol>,
    max_packet_size: usize,
) -> Result<Option<Packet>, DecodeError> {
    let Some(header) = FrameHeader::parse(buf)? else {
        return Ok(None);
    };
    let total = header.packet_len();
    if total > max_packet_size {
        return Err(DecodeError::PacketTooLarge {
            size: total,
            max: max_packet_size,
        });
    }
    let packet_type = header.first_byte >> 4;
    let flags = header.first_byte & 0x0f;
    // Refuse a wrong first packet before buffering its body.
    match protocol {
        None if packet_type != 1 => return Err(DecodeError::ExpectedConnect(packet_type)),
        Some(_) if packet_type == 1 => return Err(DecodeError::DuplicateConnect),
        _ => {}
    }
    if buf.len() < total {
        buf.reserve(total - buf.len());
        return Ok(None);
    }
    let mut frame = buf.split_to(total).freeze();
    let body = frame.split_off(header.header_len);
    let mut r = Reader::new(body);
    let protocol = protocol.unwrap_or(Protocol::V311);
    let v5 = protocol == Protocol::V5;

    let packet = match packet_type {
        1 => {
            expect_flags(flags, 0, "CONNECT")?;
            Packet::Connect(Box::new(decode_connect(&mut r)?))
        }
        2 => {
            expect_flags(flags, 0, "CONNACK")?;
            Packet::ConnAck(decode_connack(&mut r, v5)?)
        }
        3 => Packet::Publish(decode_publish(&mut r, flags, v5)?),
        4 => {
            expect_flags(flags, 0, "PUBACK")?;
            Packet::PubAck(decode_ack(&mut r, v5, "PUBACK", PUBACK_CODES)?)
        }
        5 => {
            expect_flags(flags, 0, "PUBREC")?;
            Packet::PubRec(decode_ack(&mut r, v5, "PUBREC", PUBACK_CODES)?)
        }
        6 => {
            expect_flags(flags, 0b0010, "PUBREL")?;
            Packet::PubRel(decode_ack(&mut r, v5, "PUBREL", PUBREL_CODES)?)
        }
        7 => {
            expect_flags(flags, 0, "PUBCOMP")?;
            Packet::PubComp(decode_ack(&mut r, v5, "PUBCOMP", PUBREL_CODES)?)
        }
        8 => {
            expect_flags(flags, 0b0010, "SUBSCRIBE")?;
            Packet::Subscribe(decode_subscribe(&mut r, v5)?)
        }
        9 => {
            expect_flags(flags, 0, "SUBACK")?;
            Packet::SubAck(decode_suback(&mut r, v5)?)
        }
        10 => {
            expect_flags(flags, 0b0010, "UNSUBSCRIBE")?;
            Packet::Unsubscribe(decode_unsubscribe(&mut r, v5)?)
        }
        11 => {
            expect_flags(flags, 0, "UNSUBACK")?;
            Packet::UnsubAck(decode_unsuback(&mut r, v5)?)
        }
        12 => {
            expect_flags(flags, 0, "PINGREQ")?;
            r.finish("PINGREQ")?;
            Packet::PingReq
        }
        13 => {
            expect_flags(flags, 0, "PINGRESP")?;
            r.finish("PINGRESP")?;
            Packet::PingResp
        }
        14 => {
            expect_flags(flags, 0, "DISCONNECT")?;
            Packet::Disconnect(decode_disconnect(&mut r, v5)?)
        }
        15 => {
            if !v5 {
                return Err(DecodeError::AuthInV311);
            }
            expect_flags(flags, 0, "AUTH")?;
            Packet::Auth(decode_auth(&mut r)?)
        }
        other => return Err(DecodeError::ReservedPacketType(other)),
    };
    Ok(Some(packet))
}

fn expect_flags(flags: u8, expected: u8, packet: &'static str) -> Result<(), DecodeError> {
    if flags == expected {
        Ok(())
    } else {
        Err(DecodeError::InvalidFlags { packet, flags })
    }
}

fn packet_id(r: &mut Reader) -> Result<u16, DecodeError> {
    match r.u16("packet identifier")? {
        0 => Err(DecodeError::ZeroPacketId),
        id => Ok(id),
    }
}

fn decode_connect(r: &mut Reader) -> Result<Connect, DecodeError> {
    let name = r.string("protocol name")?;
    let level = r.u8("protocol level")?;
    let protocol = match (&*name, level) {
        ("MQTT", 4) => Protocol::V311,
        ("MQTT", 5) => Protocol::V5,
        ("MQTT", l) | ("MQIsdp", l) => return Err(DecodeError::UnsupportedProtocolLevel(l)),
        (other, _) => return Err(DecodeError::InvalidProtocolName(other.to_owned())),
    };
    let flags = r.u8("connect flags")?;
    if flags & 0x01 != 0 {
        return Err(DecodeError::ConnectReservedFlag);
    }
    let clean_start = flags & 0x02 != 0;
    let will_flag = flags & 0x04 != 0;
    let will_qos = QoS::from_bits((flags >> 3) & 0x03).ok_or(DecodeError::InvalidQoS)?;
    let will_retain = flags & 0x20 != 0;
    let password_flag = flags & 0x40 != 0;
    let username_flag = flags & 0x80 != 0;
    if !will_flag && (will_qos != QoS::AtMostOnce || will_retain) {
        return Err(DecodeError::WillFlagsWithoutWill);
    }
    if protocol == Protocol::V311 && password_flag && !username_flag {
        return Err(DecodeError::PasswordWithoutUsername);
    }
    let keep_alive = r.u16("keep alive")?;
    let properties = if protocol == Protocol::V5 {
        ConnectProperties::read(r)?
    } else {
        ConnectProperties::default()
    };
    let client_id = r.string("client identifier")?;
    let will = if will_flag {
        let properties = if protocol == Protocol::V5 {
            WillProperties::read(r)?
        } else {
            WillProperties::default()
        };
        let topic = r.string("will topic")?;
        topic::validate_topic_name(&topic).map_err(|e| DecodeError::InvalidTopicName(e.msg()))?;
        let payload = r.binary("will payload")?;
        Some(Will {
            topic,
            payload,
            qos: will_qos,
            retain: will_retain,
            properties,
        })
    } else {
        None
    };
    let username = if username_flag {
        Some(r.string("user name")?)
    } else {
        None
    };
    let password = if password_flag {
        Some(r.binary("password")?)
    } else {
        None
    };
    r.finish("CONNECT")?;
    Ok(Connect {
        protocol,
        clean_start,
        keep_alive,
        client_id,
        will,
        username,
        password,
        properties,
    })
}

fn decode_connack(r: &mut Reader, v5: bool) -> Result<ConnAck, DecodeError> {
    let flags = r.u8("connack flags")?;
    if flags & 0xfe != 0 {
        return Err(DecodeError::InvalidFlags {
            packet: "CONNACK",
            flags,
        });
    }
    let code = r.u8("connect reason code")?;
    let properties = if v5 && r.remaining() > 0 {
        ConnAckProperties::read(r)?
    } else {
        ConnAckProperties::default()
    };
    r.finish("CONNACK")?;
    Ok(ConnAck {
        session_present: flags & 1 != 0,
        code,
        properties,
    })
}

fn decode_publish(r: &mut Reader, flags: u8, v5: bool) -> Result<Publish, DecodeError> {
    let dup = flags & 0x08 != 0;
    let qos = QoS::from_bits((flags >> 1) & 0x03).ok_or(DecodeError::InvalidQoS)?;
    let retain = flags & 0x01 != 0;
    if dup && qos == QoS::AtMostOnce {
        return Err(DecodeError::InvalidFlags {
            packet: "PUBLISH",
            flags,
        });
    }
    let topic = r.string("topic name")?;
    let packet_id = if qos == QoS::AtMostOnce {
        None
    } else {
        Some(packet_id(r)?)
    };
    let properties = if v5 {
        PublishProperties::read(r)?
    } else {
        PublishProperties::default()
    };
    // An empty topic is allowed only when MQTT 5 topic alias stands in for it.
    if !(topic.is_empty() && properties.topic_alias.is_some()) {
        topic::validate_topic_name(&topic).map_err(|e| DecodeError::InvalidTopicName(e.msg()))?;
    }
    let payload = r.rest();
    Ok(Publish {
        dup,
        qos,
        retain,
        topic,
        packet_id,
        properties,
        payload,
    })
}

const PUBACK_CODES: &[u8] = &[
    reason::SUCCESS,
    reason::NO_MATCHING_SUBSCRIBERS,
    reason::UNSPECIFIED_ERROR,
    reason::IMPLEMENTATION_SPECIFIC_ERROR,
    reason::NOT_AUTHORIZED,
    reason::TOPIC_NAME_INVALID,
    reason::PACKET_IDENTIFIER_IN_USE,
    reason::QUOTA_EXCEEDED,
    reason::PAYLOAD_FORMAT_INVALID,
];
const PUBREL_CODES: &[u8] = &[reason::SUCCESS, reason::PACKET_IDENTIFIER_NOT_FOUND];

fn decode_ack(
    r: &mut Reader,
    v5: bool,
    packet: &'static str,
    valid: &[u8],
) -> Result<Ack, DecodeError> {
    let packet_id = packet_id(r)?;
    let mut reason = reason::SUCCESS;
    if v5 && r.remaining() > 0 {
        reason = r.u8("reason code")?;
        if !valid.contains(&reason) {
            return Err(DecodeError::InvalidReasonCode {
                packet,
                code: reason,
            });
        }
        if r.remaining() > 0 {
            read_properties(r, packet, |id, _| {
                Ok(id == REASON_STRING || id == USER_PROPERTY)
            })?;
        }
    }
    r.finish(packet)?;
    Ok(Ack { packet_id, reason })
}

fn decode_subscribe(r: &mut Reader, v5: bool) -> Result<Subscribe, DecodeError> {
    let packet_id = packet_id(r)?;
    let mut subscription_id = None;
    let mut user_properties = Vec::new();
    if v5 {
        read_properties(r, "SUBSCRIBE", |id, v| match v {
            Value::Varint(x) if id == SUBSCRIPTION_IDENTIFIER => {
                if x == 0 || subscription_id.is_some() {
                    return Err(DecodeError::InvalidPropertyValue(id));
                }
                subscription_id = Some(x);
                Ok(true)
            }
            Value::Pair(k, v) if id == USER_PROPERTY => {
                user_properties.push((k, v));
                Ok(true)
            }
            _ => Ok(false),
        })?;
    }
    let mut filters = Vec::new();
    while r.remaining() > 0 {
        let filter = r.string("topic filter")?;
        let options = r.u8("subscription options")?;
        let qos = QoS::from_bits(options & 0x03).ok_or(DecodeError::InvalidQoS)?;
        let opts = if v5 {
            if options & 0xc0 != 0 {
                return Err(DecodeError::SubscriptionOptionsReserved);
            }
            SubscriptionOptions {
                qos,
                no_local: options & 0x04 != 0,
                retain_as_published: options & 0x08 != 0,
                retain_handling: match (options >> 4) & 0x03 {
                    0 => RetainHandling::SendAtSubscribe,
                    1 => RetainHandling::SendIfNew,
                    2 => RetainHandling::DoNotSend,
                    _ => return Err(DecodeError::InvalidRetainHandling),
                },
            }
        } else {
            if options & 0xfc != 0 {
                return Err(DecodeError::SubscriptionOptionsReserved);
            }
            SubscriptionOptions::with_qos(qos)
        };
        filters.push((filter, opts));
    }
    if filters.is_empty() {
        return Err(DecodeError::NoTopicFilters("SUBSCRIBE"));
    }
    Ok(Subscribe {
        packet_id,
        subscription_id,
        user_properties,
        filters,
    })
}

fn decode_suback(r: &mut Reader, v5: bool) -> Result<SubAck, DecodeError> {
    let packet_id = packet_id(r)?;
    let mut reason_string = None;
    if v5 {
        read_properties(r, "SUBACK", |id, v| match v {
            Value::Str(s) if id == REASON_STRING => {
                reason_string = Some(s);
                Ok(true)
            }
            Value::Pair(..) if id == USER_PROPERTY => Ok(true),
            _ => Ok(false),
        })?;
    }
    let codes = r.rest().to_vec();
    if codes.is_empty() {
        return Err(DecodeError::Truncated("SUBACK return codes"));
    }
    Ok(SubAck {
        packet_id,
        reason_string,
        codes,
    })
}

fn decode_unsubscribe(r: &mut Reader, v5: bool) -> Result<Unsubscribe, DecodeError> {
    let packet_id = packet_id(r)?;
    if v5 {
        read_properties(r, "UNSUBSCRIBE", |id, _| Ok(id == USER_PROPERTY))?;
    }
    let mut filters = Vec::new();
    while r.remaining() > 0 {
        filters.push(r.string("topic filter")?);
    }
    if filters.is_empty() {
        return Err(DecodeError::NoTopicFilters("UNSUBSCRIBE"));
    }
    Ok(Unsubscribe { packet_id, filters })
}

fn decode_unsuback(r: &mut Reader, v5: bool) -> Result<UnsubAck, DecodeError> {
    let packet_id = packet_id(r)?;
    let codes = if v5 {
        read_properties(r, "UNSUBACK", |id, _| {
            Ok(id == REASON_STRING || id == USER_PROPERTY)
        })?;
        r.rest().to_vec()
    } else {
        r.finish("UNSUBACK")?;
        Vec::new()
    };
    Ok(UnsubAck { packet_id, codes })
}

fn decode_disconnect(r: &mut Reader, v5: bool) -> Result<Disconnect, DecodeError> {
    let mut d = Disconnect {
        reason: reason::SUCCESS,
        session_expiry_interval: None,
        reason_string: None,
    };
    if v5 && r.remaining() > 0 {
        d.reason = r.u8("reason code")?;
        if r.remaining() > 0 {
            read_properties(r, "DISCONNECT", |id, v| match v {
                Value::U32(x) if id == SESSION_EXPIRY_INTERVAL => {
                    d.session_expiry_interval = Some(x);
                    Ok(true)
                }
                Value::Str(s) if id == REASON_STRING => {
                    d.reason_string = Some(s);
                    Ok(true)
                }
                Value::Str(_) if id == SERVER_REFERENCE => Ok(true),
                Value::Pair(..) if id == USER_PROPERTY => Ok(true),
                _ => Ok(false),
            })?;
        }
    }
    r.finish("DISCONNECT")?;
    Ok(d)
}

fn decode_auth(r: &mut Reader) -> Result<Auth, DecodeError> {
    let mut a = Auth {
        reason: reason::SUCCESS,
        method: None,
        data: None,
    };
    if r.remaining() > 0 {
        a.reason = r.u8("reason code")?;
        if ![
            reason::SUCCESS,
            reason::CONTINUE_AUTHENTICATION,
            reason::REAUTHENTICATE,
        ]
        .contains(&a.reason)
        {
            return Err(DecodeError::InvalidReasonCode {
                packet: "AUTH",
                code: a.reason,
            });
        }
        let mut method = None;
        let mut data: Option<Bytes> = None;
        read_properties(r, "AUTH", |id, v| match v {
            Value::Str(s) if id == AUTHENTICATION_METHOD => {
                method = Some(s);
                Ok(true)
            }
            Value::Bin(b) if id == AUTHENTICATION_DATA => {
                data = Some(b);
                Ok(true)
            }
            Value::Str(_) if id == REASON_STRING => Ok(true),
            Value::Pair(..) if id == USER_PROPERTY => Ok(true),
            _ => Ok(false),
        })?;
        a.method = method;
        a.data = data;
    }
    r.finish("AUTH")?;
    Ok(a)
}
