//! MQTT 5 properties (section 2.2.2): reading a property block into the typed property set
//! of one packet type, refusing unknown, misplaced and duplicated properties, and writing them.

use bytes::{BufMut, Bytes, BytesMut};
use bytestring::ByteString;

use crate::error::DecodeError;
use crate::wire::{Reader, binary_len, put_binary, put_varint, varint_len};

pub(crate) const PAYLOAD_FORMAT_INDICATOR: u8 = 0x01;
pub(crate) const MESSAGE_EXPIRY_INTERVAL: u8 = 0x02;
pub(crate) const CONTENT_TYPE: u8 = 0x03;
pub(crate) const RESPONSE_TOPIC: u8 = 0x08;
pub(crate) const CORRELATION_DATA: u8 = 0x09;
pub(crate) const SUBSCRIPTION_IDENTIFIER: u8 = 0x0B;
pub(crate) const SESSION_EXPIRY_INTERVAL: u8 = 0x11;
pub(crate) const ASSIGNED_CLIENT_IDENTIFIER: u8 = 0x12;
pub(crate) const SERVER_KEEP_ALIVE: u8 = 0x13;
pub(crate) const AUTHENTICATION_METHOD: u8 = 0x15;
pub(crate) const AUTHENTICATION_DATA: u8 = 0x16;
pub(crate) const REQUEST_PROBLEM_INFORMATION: u8 = 0x17;
pub(crate) const WILL_DELAY_INTERVAL: u8 = 0x18;
pub(crate) const REQUEST_RESPONSE_INFORMATION: u8 = 0x19;
pub(crate) const RESPONSE_INFORMATION: u8 = 0x1A;
pub(crate) const SERVER_REFERENCE: u8 = 0x1C;
pub(crate) const REASON_STRING: u8 = 0x1F;
pub(crate) const RECEIVE_MAXIMUM: u8 = 0x21;
pub(crate) const TOPIC_ALIAS_MAXIMUM: u8 = 0x22;
pub(crate) const TOPIC_ALIAS: u8 = 0x23;
pub(crate) const MAXIMUM_QOS: u8 = 0x24;
pub(crate) const RETAIN_AVAILABLE: u8 = 0x25;
pub(crate) const USER_PROPERTY: u8 = 0x26;
pub(crate) const MAXIMUM_PACKET_SIZE: u8 = 0x27;
pub(crate) const WILDCARD_SUBSCRIPTION_AVAILABLE: u8 = 0x28;
pub(crate) const SUBSCRIPTION_IDENTIFIER_AVAILABLE: u8 = 0x29;
pub(crate) const SHARED_SUBSCRIPTION_AVAILABLE: u8 = 0x2A;

/// One decoded property value.
pub(crate) enum Value {
    Byte(u8),
    U16(u16),
    U32(u32),
    Varint(u32),
    Str(ByteString),
    Bin(Bytes),
    Pair(ByteString, ByteString),
}

/// Reads a property block (length + properties) and hands each property to `apply`.
///
/// `apply` returns `false` for a property that is not allowed in `packet`. Duplicates are
/// refused here for every property except User Property and Subscription Identifier.
pub(crate) fn read_properties(
    r: &mut Reader,
    packet: &'static str,
    mut apply: impl FnMut(u8, Value) -> Result<bool, DecodeError>,
) -> Result<(), DecodeError> {
    let len = r.varint("property length")? as usize;
    let mut block = r.sub(len, "properties")?;
    let mut seen: u64 = 0;
    while block.remaining() > 0 {
        let id32 = block.varint("property identifier")?;
        let id = u8::try_from(id32).map_err(|_| DecodeError::UnknownProperty(id32))?;
        let value = match id {
            PAYLOAD_FORMAT_INDICATOR
            | REQUEST_PROBLEM_INFORMATION
            | REQUEST_RESPONSE_INFORMATION
            | MAXIMUM_QOS
            | RETAIN_AVAILABLE
            | WILDCARD_SUBSCRIPTION_AVAILABLE
            | SUBSCRIPTION_IDENTIFIER_AVAILABLE
            | SHARED_SUBSCRIPTION_AVAILABLE => Value::Byte(block.u8("property value")?),
            SERVER_KEEP_ALIVE | RECEIVE_MAXIMUM | TOPIC_ALIAS_MAXIMUM | TOPIC_ALIAS => {
                Value::U16(block.u16("property value")?)
            }
            MESSAGE_EXPIRY_INTERVAL
            | SESSION_EXPIRY_INTERVAL
            | WILL_DELAY_INTERVAL
            | MAXIMUM_PACKET_SIZE => Value::U32(block.u32("property value")?),
            SUBSCRIPTION_IDENTIFIER => Value::Varint(block.varint("subscription identifier")?),
            CONTENT_TYPE
            | RESPONSE_TOPIC
            | ASSIGNED_CLIENT_IDENTIFIER
            | AUTHENTICATION_METHOD
            | RESPONSE_INFORMATION
            | SERVER_REFERENCE
            | REASON_STRING => Value::Str(block.string("property value")?),
            CORRELATION_DATA | AUTHENTICATION_DATA => Value::Bin(block.binary("property value")?),
            USER_PROPERTY => Value::Pair(
                block.string("user property name")?,
                block.string("user property value")?,
            ),
            other => return Err(DecodeError::UnknownProperty(u32::from(other))),
        };
        if id != USER_PROPERTY && id != SUBSCRIPTION_IDENTIFIER {
            let bit = 1u64 << (id & 63);
            if seen & bit != 0 {
                return Err(DecodeError::DuplicateProperty(id));
            }
            seen |= bit;
        }
        if !apply(id, value)? {
            return Err(DecodeError::PropertyNotAllowed(id, packet));
        }
    }
    Ok(())
}

fn boolean(id: u8, v: u8) -> Result<bool, DecodeError> {
    match v {
        0 => Ok(false),
        1 => Ok(true),
        _ => Err(DecodeError::InvalidPropertyValue(id)),
    }
}

/// Properties of CONNECT.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConnectProperties {
    pub session_expiry_interval: Option<u32>,
    pub receive_maximum: Option<u16>,
    pub maximum_packet_size: Option<u32>,
    pub topic_alias_maximum: Option<u16>,
    pub request_response_information: Option<bool>,
    pub request_problem_information: Option<bool>,
    pub user_properties: Vec<(ByteString, ByteString)>,
    pub authentication_method: Option<ByteString>,
    pub authentication_data: Option<Bytes>,
}

impl ConnectProperties {
    pub(crate) fn read(r: &mut Reader) -> Result<Self, DecodeError> {
        let mut p = ConnectProperties::default();
        read_properties(r, "CONNECT", |id, v| {
            match (id, v) {
                (SESSION_EXPIRY_INTERVAL, Value::U32(x)) => p.session_expiry_interval = Some(x),
                (RECEIVE_MAXIMUM, Value::U16(x)) => {
                    if x == 0 {
                        return Err(DecodeError::InvalidPropertyValue(id));
                    }
                    p.receive_maximum = Some(x)
                }
                (MAXIMUM_PACKET_SIZE, Value::U32(x)) => {
                    if x == 0 {
                        return Err(DecodeError::InvalidPropertyValue(id));
                    }
                    p.maximum_packet_size = Some(x)
                }
                (TOPIC_ALIAS_MAXIMUM, Value::U16(x)) => p.topic_alias_maximum = Some(x),
                (REQUEST_RESPONSE_INFORMATION, Value::Byte(x)) => {
                    p.request_response_information = Some(boolean(id, x)?)
                }
                (REQUEST_PROBLEM_INFORMATION, Value::Byte(x)) => {
                    p.request_problem_information = Some(boolean(id, x)?)
                }
                (USER_PROPERTY, Value::Pair(k, v)) => p.user_properties.push((k, v)),
                (AUTHENTICATION_METHOD, Value::Str(s)) => p.authentication_method = Some(s),
                (AUTHENTICATION_DATA, Value::Bin(b)) => p.authentication_data = Some(b),
                _ => return Ok(false),
            }
            Ok(true)
        })?;
        if p.authentication_data.is_some() && p.authentication_method.is_none() {
            return Err(DecodeError::PropertyNotAllowed(
                AUTHENTICATION_DATA,
                "CONNECT",
            ));
        }
        Ok(p)
    }

    pub(crate) fn write(&self, w: &mut PropWriter) {
        w.u32(SESSION_EXPIRY_INTERVAL, self.session_expiry_interval);
        w.u16(RECEIVE_MAXIMUM, self.receive_maximum);
        w.u32(MAXIMUM_PACKET_SIZE, self.maximum_packet_size);
        w.u16(TOPIC_ALIAS_MAXIMUM, self.topic_alias_maximum);
        w.byte(
            REQUEST_RESPONSE_INFORMATION,
            self.request_response_information.map(u8::from),
        );
        w.byte(
            REQUEST_PROBLEM_INFORMATION,
            self.request_problem_information.map(u8::from),
        );
        w.pairs(&self.user_properties);
        w.string(AUTHENTICATION_METHOD, self.authentication_method.as_deref());
        w.binary(AUTHENTICATION_DATA, self.authentication_data.as_deref());
    }
}

/// Properties of the will message in CONNECT's payload.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WillProperties {
    pub will_delay_interval: Option<u32>,
    pub payload_format_indicator: Option<u8>,
    pub message_expiry_interval: Option<u32>,
    pub content_type: Option<ByteString>,
    pub response_topic: Option<ByteString>,
    pub correlation_data: Option<Bytes>,
    pub user_properties: Vec<(ByteString, ByteString)>,
}

impl WillProperties {
    pub(crate) fn read(r: &mut Reader) -> Result<Self, DecodeError> {
        let mut p = WillProperties::default();
        read_properties(r, "will properties", |id, v| {
            match (id, v) {
                (WILL_DELAY_INTERVAL, Value::U32(x)) => p.will_delay_interval = Some(x),
                (PAYLOAD_FORMAT_INDICATOR, Value::Byte(x)) => {
                    boolean(id, x)?;
                    p.payload_format_indicator = Some(x)
                }
                (MESSAGE_EXPIRY_INTERVAL, Value::U32(x)) => p.message_expiry_interval = Some(x),
                (CONTENT_TYPE, Value::Str(s)) => p.content_type = Some(s),
                (RESPONSE_TOPIC, Value::Str(s)) => {
                    crate::topic::validate_topic_name(&s)
                        .map_err(|_| DecodeError::InvalidPropertyValue(id))?;
                    p.response_topic = Some(s)
                }
                (CORRELATION_DATA, Value::Bin(b)) => p.correlation_data = Some(b),
                (USER_PROPERTY, Value::Pair(k, v)) => p.user_properties.push((k, v)),
                _ => return Ok(false),
            }
            Ok(true)
        })?;
        Ok(p)
    }

    pub(crate) fn write(&self, w: &mut PropWriter) {
        w.u32(WILL_DELAY_INTERVAL, self.will_delay_interval);
        w.byte(PAYLOAD_FORMAT_INDICATOR, self.payload_format_indicator);
        w.u32(MESSAGE_EXPIRY_INTERVAL, self.message_expiry_interval);
        w.string(CONTENT_TYPE, self.content_type.as_deref());
        w.string(RESPONSE_TOPIC, self.response_topic.as_deref());
        w.binary(CORRELATION_DATA, self.correlation_data.as_deref());
        w.pairs(&self.user_properties);
    }

    /// The application-message properties a will carries when it is published.
    pub fn to_publish_properties(&self) -> PublishProperties {
        PublishProperties {
            payload_format_indicator: self.payload_format_indicator,
            message_expiry_interval: self.message_expiry_interval,
            topic_alias: None,
            response_topic: self.response_topic.clone(),
            correlation_data: self.correlation_data.clone(),
            user_properties: self.user_properties.clone(),
            subscription_identifiers: Vec::new(),
            content_type: self.content_type.clone(),
        }
    }
}

/// Properties of PUBLISH.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PublishProperties {
    pub payload_format_indicator: Option<u8>,
    pub message_expiry_interval: Option<u32>,
    pub topic_alias: Option<u16>,
    pub response_topic: Option<ByteString>,
    pub correlation_data: Option<Bytes>,
    pub user_properties: Vec<(ByteString, ByteString)>,
    pub subscription_identifiers: Vec<u32>,
    pub content_type: Option<ByteString>,
}

impl PublishProperties {
    /// True when no property is set; lets the encoder write a one-byte empty block.
    pub fn is_empty(&self) -> bool {
        self.payload_format_indicator.is_none()
            && self.message_expiry_interval.is_none()
            && self.topic_alias.is_none()
            && self.response_topic.is_none()
            && self.correlation_data.is_none()
            && self.user_properties.is_empty()
            && self.subscription_identifiers.is_empty()
            && self.content_type.is_none()
    }

    pub(crate) fn read(r: &mut Reader) -> Result<Self, DecodeError> {
        let mut p = PublishProperties::default();
        read_properties(r, "PUBLISH", |id, v| {
            match (id, v) {
                (PAYLOAD_FORMAT_INDICATOR, Value::Byte(x)) => {
                    boolean(id, x)?;
                    p.payload_format_indicator = Some(x)
                }
                (MESSAGE_EXPIRY_INTERVAL, Value::U32(x)) => p.message_expiry_interval = Some(x),
                (TOPIC_ALIAS, Value::U16(x)) => {
                    if x == 0 {
                        return Err(DecodeError::InvalidPropertyValue(id));
                    }
                    p.topic_alias = Some(x)
                }
                (RESPONSE_TOPIC, Value::Str(s)) => {
                    crate::topic::validate_topic_name(&s)
                        .map_err(|_| DecodeError::InvalidPropertyValue(id))?;
                    p.response_topic = Some(s)
                }
                (CORRELATION_DATA, Value::Bin(b)) => p.correlation_data = Some(b),
                (USER_PROPERTY, Value::Pair(k, v)) => p.user_properties.push((k, v)),
                (SUBSCRIPTION_IDENTIFIER, Value::Varint(x)) => {
                    if x == 0 {
                        return Err(DecodeError::InvalidPropertyValue(id));
                    }
                    p.subscription_identifiers.push(x)
                }
                (CONTENT_TYPE, Value::Str(s)) => p.content_type = Some(s),
                _ => return Ok(false),
            }
            Ok(true)
        })?;
        Ok(p)
    }

    pub(crate) fn write(&self, w: &mut PropWriter) {
        w.byte(PAYLOAD_FORMAT_INDICATOR, self.payload_format_indicator);
        w.u32(MESSAGE_EXPIRY_INTERVAL, self.message_expiry_interval);
        w.u16(TOPIC_ALIAS, self.topic_alias);
        w.string(RESPONSE_TOPIC, self.response_topic.as_deref());
        w.binary(CORRELATION_DATA, self.correlation_data.as_deref());
        w.pairs(&self.user_properties);
        for id in &self.subscription_identifiers {
            w.varint(SUBSCRIPTION_IDENTIFIER, *id);
        }
        w.string(CONTENT_TYPE, self.content_type.as_deref());
    }
}

/// Properties of CONNACK.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConnAckProperties {
    pub session_expiry_interval: Option<u32>,
    pub receive_maximum: Option<u16>,
    pub maximum_qos: Option<u8>,
    pub retain_available: Option<bool>,
    pub maximum_packet_size: Option<u32>,
    pub assigned_client_identifier: Option<ByteString>,
    pub topic_alias_maximum: Option<u16>,
    pub reason_string: Option<ByteString>,
    pub user_properties: Vec<(ByteString, ByteString)>,
    pub wildcard_subscription_available: Option<bool>,
    pub subscription_identifiers_available: Option<bool>,
    pub shared_subscription_available: Option<bool>,
    pub server_keep_alive: Option<u16>,
    pub response_information: Option<ByteString>,
    pub server_reference: Option<ByteString>,
    pub authentication_method: Option<ByteString>,
    pub authentication_data: Option<Bytes>,
}

impl ConnAckProperties {
    pub(crate) fn read(r: &mut Reader) -> Result<Self, DecodeError> {
        let mut p = ConnAckProperties::default();
        read_properties(r, "CONNACK", |id, v| {
            match (id, v) {
                (SESSION_EXPIRY_INTERVAL, Value::U32(x)) => p.session_expiry_interval = Some(x),
                (RECEIVE_MAXIMUM, Value::U16(x)) => p.receive_maximum = Some(x),
                (MAXIMUM_QOS, Value::Byte(x)) => p.maximum_qos = Some(x),
                (RETAIN_AVAILABLE, Value::Byte(x)) => p.retain_available = Some(boolean(id, x)?),
                (MAXIMUM_PACKET_SIZE, Value::U32(x)) => p.maximum_packet_size = Some(x),
                (ASSIGNED_CLIENT_IDENTIFIER, Value::Str(s)) => {
                    p.assigned_client_identifier = Some(s)
                }
                (TOPIC_ALIAS_MAXIMUM, Value::U16(x)) => p.topic_alias_maximum = Some(x),
                (REASON_STRING, Value::Str(s)) => p.reason_string = Some(s),
                (USER_PROPERTY, Value::Pair(k, v)) => p.user_properties.push((k, v)),
                (WILDCARD_SUBSCRIPTION_AVAILABLE, Value::Byte(x)) => {
                    p.wildcard_subscription_available = Some(boolean(id, x)?)
                }
                (SUBSCRIPTION_IDENTIFIER_AVAILABLE, Value::Byte(x)) => {
                    p.subscription_identifiers_available = Some(boolean(id, x)?)
                }
                (SHARED_SUBSCRIPTION_AVAILABLE, Value::Byte(x)) => {
                    p.shared_subscription_available = Some(boolean(id, x)?)
                }
                (SERVER_KEEP_ALIVE, Value::U16(x)) => p.server_keep_alive = Some(x),
                (RESPONSE_INFORMATION, Value::Str(s)) => p.response_information = Some(s),
                (SERVER_REFERENCE, Value::Str(s)) => p.server_reference = Some(s),
                (AUTHENTICATION_METHOD, Value::Str(s)) => p.authentication_method = Some(s),
                (AUTHENTICATION_DATA, Value::Bin(b)) => p.authentication_data = Some(b),
                _ => return Ok(false),
            }
            Ok(true)
        })?;
        Ok(p)
    }

    pub(crate) fn write(&self, w: &mut PropWriter) {
        w.u32(SESSION_EXPIRY_INTERVAL, self.session_expiry_interval);
        w.u16(RECEIVE_MAXIMUM, self.receive_maximum);
        w.byte(MAXIMUM_QOS, self.maximum_qos);
        w.byte(RETAIN_AVAILABLE, self.retain_available.map(u8::from));
        w.u32(MAXIMUM_PACKET_SIZE, self.maximum_packet_size);
        w.string(
            ASSIGNED_CLIENT_IDENTIFIER,
            self.assigned_client_identifier.as_deref(),
        );
        w.u16(TOPIC_ALIAS_MAXIMUM, self.topic_alias_maximum);
        w.string(REASON_STRING, self.reason_string.as_deref());
        w.pairs(&self.user_properties);
        w.byte(
            WILDCARD_SUBSCRIPTION_AVAILABLE,
            self.wildcard_subscription_available.map(u8::from),
        );
        w.byte(
            SUBSCRIPTION_IDENTIFIER_AVAILABLE,
            self.subscription_identifiers_available.map(u8::from),
        );
        w.byte(
            SHARED_SUBSCRIPTION_AVAILABLE,
            self.shared_subscription_available.map(u8::from),
        );
        w.u16(SERVER_KEEP_ALIVE, self.server_keep_alive);
        w.string(RESPONSE_INFORMATION, self.response_information.as_deref());
        w.string(SERVER_REFERENCE, self.server_reference.as_deref());
        w.string(AUTHENTICATION_METHOD, self.authentication_method.as_deref());
        w.binary(AUTHENTICATION_DATA, self.authentication_data.as_deref());
    }
}

/// Accumulates a property block; [`PropWriter::finish`] prefixes it with its length.
pub(crate) struct PropWriter {
    buf: BytesMut,
}

impl PropWriter {
    pub(crate) fn new() -> Self {
        PropWriter {
            buf: BytesMut::new(),
        }
    }

    pub(crate) fn byte(&mut self, id: u8, v: Option<u8>) {
        if let Some(v) = v {
            self.buf.put_u8(id);
            self.buf.put_u8(v);
        }
    }

    pub(crate) fn u16(&mut self, id: u8, v: Option<u16>) {
        if let Some(v) = v {
            self.buf.put_u8(id);
            self.buf.put_u16(v);
        }
    }

    pub(crate) fn u32(&mut self, id: u8, v: Option<u32>) {
        if let Some(v) = v {
            self.buf.put_u8(id);
            self.buf.put_u32(v);
        }
    }

    pub(crate) fn varint(&mut self, id: u8, v: u32) {
        self.buf.put_u8(id);
        put_varint(&mut self.buf, v as usize);
    }

    pub(crate) fn string(&mut self, id: u8, v: Option<&str>) {
        if let Some(v) = v {
            self.buf.put_u8(id);
            put_binary(&mut self.buf, v.as_bytes());
        }
    }

    pub(crate) fn binary(&mut self, id: u8, v: Option<&[u8]>) {
        if let Some(v) = v {
            self.buf.put_u8(id);
            put_binary(&mut self.buf, v);
        }
    }

    pub(crate) fn pairs(&mut self, pairs: &[(ByteString, ByteString)]) {
        for (k, v) in pairs {
            self.buf.put_u8(USER_PROPERTY);
            put_binary(&mut self.buf, k.as_bytes());
            put_binary(&mut self.buf, v.as_bytes());
        }
    }

    /// Total encoded size including the length prefix.
    pub(crate) fn encoded_len(&self) -> usize {
        varint_len(self.buf.len()) + self.buf.len()
    }

    pub(crate) fn finish_into(self, out: &mut BytesMut) {
        put_varint(out, self.buf.len());
        out.put_slice(&self.buf);
    }
}

/// Exact encoded size of PUBLISH properties, computed without allocating (hot path).
pub(crate) fn publish_properties_len(p: &PublishProperties) -> usize {
    let mut n = 0;
    if p.payload_format_indicator.is_some() {
        n += 2;
    }
    if p.message_expiry_interval.is_some() {
        n += 5;
    }
    if p.topic_alias.is_some() {
        n += 3;
    }
    if let Some(s) = &p.response_topic {
        n += 1 + binary_len(s.as_bytes());
    }
    if let Some(b) = &p.correlation_data {
        n += 1 + binary_len(b);
    }
    for (k, v) in &p.user_properties {
        n += 1 + binary_len(k.as_bytes()) + binary_len(v.as_bytes());
    }
    for id in &p.subscription_identifiers {
        n += 1 + varint_len(*id as usize);
    }
    if let Some(s) = &p.content_type {
        n += 1 + binary_len(s.as_bytes());
    }
    n
}
