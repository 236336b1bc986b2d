//! Packets to bytes.
//!
//! [`encode_publish`] is the hot path of message delivery: it computes the exact size first and
//! writes the packet straight into the connection's write buffer, so several packets can be
//! batched into one TLS record. Other packets go through a small scratch buffer.

use bytes::{BufMut, BytesMut};

use crate::packet::*;
use crate::properties::{PropWriter, PublishProperties, publish_properties_len};
use crate::wire::{binary_len, put_binary, put_varint, varint_len};

fn header(buf: &mut BytesMut, first_byte: u8, remaining: usize) {
    buf.put_u8(first_byte);
    put_varint(buf, remaining);
}

/// Size on the wire of a PUBLISH with these fields (used to honour a client's Maximum Packet
/// Size before sending).
pub fn encoded_publish_len(
    protocol: Protocol,
    topic: &str,
    payload_len: usize,
    qos: QoS,
    properties: Option<&PublishProperties>,
) -> usize {
    let mut remaining = binary_len(topic.as_bytes()) + payload_len;
    if qos != QoS::AtMostOnce {
        remaining += 2;
    }
    if protocol == Protocol::V5 {
        let plen = properties.map_or(0, publish_properties_len);
        remaining += varint_len(plen) + plen;
    }
    1 + varint_len(remaining) + remaining
}

/// Writes a PUBLISH packet.
#[allow(clippy::too_many_arguments)] // mirrors the packet's fields; a struct would force a copy
pub fn encode_publish(
    buf: &mut BytesMut,
    protocol: Protocol,
    topic: &str,
    payload: &[u8],
    qos: QoS,
    retain: bool,
    dup: bool,
    packet_id: Option<u16>,
    properties: Option<&PublishProperties>,
) {
    let plen = if protocol == Protocol::V5 {
        properties.map_or(0, publish_properties_len)
    } else {
        0
    };
    let mut remaining = binary_len(topic.as_bytes()) + payload.len();
    if qos != QoS::AtMostOnce {
        remaining += 2;
    }
    if protocol == Protocol::V5 {
        remaining += varint_len(plen) + plen;
    }
    buf.reserve(1 + varint_len(remaining) + remaining);
    let first = 0x30 | (u8::from(dup) << 3) | ((qos as u8) << 1) | u8::from(retain);
    header(buf, first, remaining);
    put_binary(buf, topic.as_bytes());
    if qos != QoS::AtMostOnce {
        buf.put_u16(packet_id.unwrap_or(1));
    }
    if protocol == Protocol::V5 {
        match properties {
            Some(p) if plen > 0 => {
                let mut w = PropWriter::new();
                p.write(&mut w);
                w.finish_into(buf);
            }
            _ => put_varint(buf, 0),
        }
    }
    buf.put_slice(payload);
}

/// Writes any packet in the given protocol version.
pub fn encode_packet(packet: &Packet, protocol: Protocol, buf: &mut BytesMut) {
    let v5 = protocol == Protocol::V5;
    match packet {
        Packet::Publish(p) => encode_publish(
            buf,
            protocol,
            &p.topic,
            &p.payload,
            p.qos,
            p.retain,
            p.dup,
            p.packet_id,
            Some(&p.properties),
        ),
        Packet::PubAck(a) => ack(buf, 0x40, a, v5),
        Packet::PubRec(a) => ack(buf, 0x50, a, v5),
        Packet::PubRel(a) => ack(buf, 0x62, a, v5),
        Packet::PubComp(a) => ack(buf, 0x70, a, v5),
        Packet::PingReq => header(buf, 0xc0, 0),
        Packet::PingResp => header(buf, 0xd0, 0),
        other => {
            let mut body = BytesMut::new();
            let first = body_of(other, v5, &mut body);
            header(buf, first, body.len());
            buf.put_slice(&body);
        }
    }
}

fn ack(buf: &mut BytesMut, first: u8, a: &Ack, v5: bool) {
    if v5 && a.reason != 0 {
        header(buf, first, 3);
        buf.put_u16(a.packet_id);
        buf.put_u8(a.reason);
    } else {
        header(buf, first, 2);
        buf.put_u16(a.packet_id);
    }
}

fn reason_string_props(reason_string: Option<&str>) -> PropWriter {
    let mut w = PropWriter::new();
    w.string(crate::properties::REASON_STRING, reason_string);
    w
}

/// Writes the variable header and payload of a non-hot-path packet; returns the first byte.
fn body_of(packet: &Packet, v5: bool, b: &mut BytesMut) -> u8 {
    match packet {
        Packet::Connect(c) => {
            put_binary(b, b"MQTT");
            b.put_u8(c.protocol.level());
            let mut flags = 0u8;
            if c.clean_start {
                flags |= 0x02;
            }
            if let Some(w) = &c.will {
                flags |= 0x04 | ((w.qos as u8) << 3);
                if w.retain {
                    flags |= 0x20;
                }
            }
            if c.password.is_some() {
                flags |= 0x40;
            }
            if c.username.is_some() {
                flags |= 0x80;
            }
            b.put_u8(flags);
            b.put_u16(c.keep_alive);
            let cv5 = c.protocol == Protocol::V5;
            if cv5 {
                let mut w = PropWriter::new();
                c.properties.write(&mut w);
                w.finish_into(b);
            }
            put_binary(b, c.client_id.as_bytes());
            if let Some(will) = &c.will {
                if cv5 {
                    let mut w = PropWriter::new();
                    will.properties.write(&mut w);
                    w.finish_into(b);
                }
                put_binary(b, will.topic.as_bytes());
                put_binary(b, &will.payload);
            }
            if let Some(u) = &c.username {
                put_binary(b, u.as_bytes());
            }
            if let Some(p) = &c.password {
                put_binary(b, p);
            }
            0x10
        }
        Packet::ConnAck(c) => {
            b.put_u8(u8::from(c.session_present));
            b.put_u8(c.code);
            if v5 {
                let mut w = PropWriter::new();
                c.properties.write(&mut w);
                w.finish_into(b);
            }
            0x20
        }
        Packet::Subscribe(s) => {
            b.put_u16(s.packet_id);
            if v5 {
                let mut w = PropWriter::new();
                if let Some(id) = s.subscription_id {
                    w.varint(crate::properties::SUBSCRIPTION_IDENTIFIER, id);
                }
                w.pairs(&s.user_properties);
                w.finish_into(b);
            }
            for (filter, o) in &s.filters {
                put_binary(b, filter.as_bytes());
                let mut opts = o.qos as u8;
                if v5 {
                    opts |= u8::from(o.no_local) << 2;
                    opts |= u8::from(o.retain_as_published) << 3;
                    opts |= (o.retain_handling as u8) << 4;
                }
                b.put_u8(opts);
            }
            0x82
        }
        Packet::SubAck(s) => {
            b.put_u16(s.packet_id);
            if v5 {
                reason_string_props(s.reason_string.as_deref()).finish_into(b);
            }
            b.put_slice(&s.codes);
            0x90
        }
        Packet::Unsubscribe(u) => {
            b.put_u16(u.packet_id);
            if v5 {
                PropWriter::new().finish_into(b);
            }
            for f in &u.filters {
                put_binary(b, f.as_bytes());
            }
            0xa2
        }
        Packet::UnsubAck(u) => {
            b.put_u16(u.packet_id);
            if v5 {
                PropWriter::new().finish_into(b);
                b.put_slice(&u.codes);
            }
            0xb0
        }
        Packet::Disconnect(d) => {
            if v5 {
                let mut w = reason_string_props(d.reason_string.as_deref());
                w.u32(
                    crate::properties::SESSION_EXPIRY_INTERVAL,
                    d.session_expiry_interval,
                );
                if d.reason != 0 || w.encoded_len() > 1 {
                    b.put_u8(d.reason);
                    if w.encoded_len() > 1 {
                        w.finish_into(b);
                    }
                }
            }
            0xe0
        }
        Packet::Auth(a) => {
            b.put_u8(a.reason);
            let mut w = PropWriter::new();
            w.string(
                crate::properties::AUTHENTICATION_METHOD,
                a.method.as_deref(),
            );
            w.binary(crate::properties::AUTHENTICATION_DATA, a.data.as_deref());
            w.finish_into(b);
            0xf0
        }
        // Handled by the caller without a scratch buffer.
        Packet::Publish(_)
        | Packet::PubAck(_)
        | Packet::PubRec(_)
        | Packet::PubRel(_)
        | Packet::PubComp(_)
        | Packet::PingReq
        | Packet::PingResp => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode::decode_packet;
    use crate::properties::{ConnAckProperties, ConnectProperties, WillProperties};
    use bytes::Bytes;

    fn roundtrip(p: Packet, protocol: Protocol, server_side: bool) {
        let mut buf = BytesMut::new();
        encode_packet(&p, protocol, &mut buf);
        let state = match (&p, server_side) {
            (Packet::Connect(_), _) => None,
            _ => Some(protocol),
        };
        let decoded = decode_packet(&mut buf, state, 1 << 20)
            .expect("decodes")
            .expect("complete");
        assert_eq!(decoded, p);
        assert!(buf.is_empty());
    }

    #[test]
    fn every_packet_roundtrips_in_both_versions() {
        for protocol in [Protocol::V311, Protocol::V5] {
            let v5 = protocol == Protocol::V5;
            let connect = Connect {
                protocol,
                clean_start: true,
                keep_alive: 30,
                client_id: "dev-1".into(),
                will: Some(Will {
                    topic: "devices/dev-1/status".into(),
                    payload: Bytes::from_static(b"offline"),
                    qos: QoS::AtLeastOnce,
                    retain: true,
                    properties: if v5 {
                        WillProperties {
                            will_delay_interval: Some(5),
                            ..Default::default()
                        }
                    } else {
                        WillProperties::default()
                    },
                }),
                username: Some("u".into()),
                password: Some(Bytes::from_static(b"p")),
                properties: if v5 {
                    ConnectProperties {
                        session_expiry_interval: Some(60),
                        receive_maximum: Some(10),
                        user_properties: vec![("k".into(), "v".into())],
                        ..Default::default()
                    }
                } else {
                    ConnectProperties::default()
                },
            };
            roundtrip(Packet::Connect(Box::new(connect)), protocol, true);
            roundtrip(
                Packet::ConnAck(ConnAck {
                    session_present: true,
                    code: 0,
                    properties: if v5 {
                        ConnAckProperties {
                            maximum_packet_size: Some(1000),
                            retain_available: Some(true),
                            ..Default::default()
                        }
                    } else {
                        ConnAckProperties::default()
                    },
                }),
                protocol,
                false,
            );
            roundtrip(
                Packet::Publish(Publish {
                    dup: true,
                    qos: QoS::AtLeastOnce,
                    retain: false,
                    topic: "a/b".into(),
                    packet_id: Some(7),
                    properties: if v5 {
                        PublishProperties {
                            message_expiry_interval: Some(9),
                            content_type: Some("application/json".into()),
                            user_properties: vec![("x".into(), "y".into())],
                            ..Default::default()
                        }
                    } else {
                        PublishProperties::default()
                    },
                    payload: Bytes::from_static(b"{}"),
                }),
                protocol,
                true,
            );
            roundtrip(
                Packet::PubAck(Ack {
                    packet_id: 7,
                    reason: if v5 { 0x87 } else { 0 },
                }),
                protocol,
                true,
            );
            roundtrip(
                Packet::PubRel(Ack {
                    packet_id: 3,
                    reason: 0,
                }),
                protocol,
                true,
            );
            roundtrip(
                Packet::Subscribe(Subscribe {
                    packet_id: 2,
                    subscription_id: None,
                    user_properties: vec![],
                    filters: vec![(
                        "a/+".into(),
                        SubscriptionOptions::with_qos(QoS::AtLeastOnce),
                    )],
                }),
                protocol,
                true,
            );
            roundtrip(
                Packet::SubAck(SubAck {
                    packet_id: 2,
                    reason_string: None,
                    codes: vec![1, 0x80],
                }),
                protocol,
                false,
            );
            roundtrip(
                Packet::Unsubscribe(Unsubscribe {
                    packet_id: 4,
                    filters: vec!["a/+".into()],
                }),
                protocol,
                true,
            );
            roundtrip(
                Packet::UnsubAck(UnsubAck {
                    packet_id: 4,
                    codes: if v5 { vec![0] } else { vec![] },
                }),
                protocol,
                false,
            );
            roundtrip(Packet::PingReq, protocol, true);
            roundtrip(Packet::PingResp, protocol, false);
            roundtrip(
                Packet::Disconnect(Disconnect {
                    reason: if v5 { 0x8e } else { 0 },
                    session_expiry_interval: None,
                    reason_string: None,
                }),
                protocol,
                true,
            );
        }
    }

    #[test]
    fn publish_length_matches_encoding() {
        let props = PublishProperties {
            correlation_data: Some(Bytes::from_static(b"abc")),
            subscription_identifiers: vec![300],
            ..Default::default()
        };
        for (protocol, qos) in [
            (Protocol::V311, QoS::AtMostOnce),
            (Protocol::V5, QoS::AtLeastOnce),
        ] {
            let mut buf = BytesMut::new();
            let payload = vec![7u8; 200];
            encode_publish(
                &mut buf,
                protocol,
                "t/x",
                &payload,
                qos,
                false,
                false,
                Some(1),
                Some(&props),
            );
            assert_eq!(
                buf.len(),
                encoded_publish_len(protocol, "t/x", 200, qos, Some(&props))
            );
        }
    }
}
