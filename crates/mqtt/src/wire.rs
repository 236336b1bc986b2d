//! Primitive MQTT data types: integers, variable byte integers, UTF-8 strings, binary data.
//!
//! The reader works on a `Bytes` holding exactly one packet body, so strings and payloads are
//! zero-copy slices of it and a field can never be read past the end of its own packet.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use bytestring::ByteString;

use crate::error::DecodeError;

/// Cursor over one packet's body.
pub(crate) struct Reader {
    buf: Bytes,
}

impl Reader {
    pub(crate) fn new(buf: Bytes) -> Self {
        Reader { buf }
    }

    pub(crate) fn remaining(&self) -> usize {
        self.buf.len()
    }

    pub(crate) fn need(&self, n: usize, what: &'static str) -> Result<(), DecodeError> {
        if self.buf.len() < n {
            Err(DecodeError::Truncated(what))
        } else {
            Ok(())
        }
    }

    pub(crate) fn u8(&mut self, what: &'static str) -> Result<u8, DecodeError> {
        self.need(1, what)?;
        Ok(self.buf.get_u8())
    }

    pub(crate) fn u16(&mut self, what: &'static str) -> Result<u16, DecodeError> {
        self.need(2, what)?;
        Ok(self.buf.get_u16())
    }

    pub(crate) fn u32(&mut self, what: &'static str) -> Result<u32, DecodeError> {
        self.need(4, what)?;
        Ok(self.buf.get_u32())
    }

    /// Variable byte integer (at most four bytes, value < 2^28).
    pub(crate) fn varint(&mut self, what: &'static str) -> Result<u32, DecodeError> {
        let mut value: u32 = 0;
        for i in 0..4 {
            let byte = self.u8(what)?;
            value |= u32::from(byte & 0x7f) << (7 * i);
            if byte & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(DecodeError::MalformedVarint(what))
    }

    /// Two-byte length followed by that many bytes.
    pub(crate) fn binary(&mut self, what: &'static str) -> Result<Bytes, DecodeError> {
        let len = usize::from(self.u16(what)?);
        self.need(len, what)?;
        Ok(self.buf.split_to(len))
    }

    /// UTF-8 encoded string: well-formed UTF-8 without U+0000 (MQTT 3.1.1 1.5.3, 5.0 1.5.4).
    pub(crate) fn string(&mut self, what: &'static str) -> Result<ByteString, DecodeError> {
        let raw = self.binary(what)?;
        if raw.contains(&0) {
            return Err(DecodeError::NullCharacter(what));
        }
        ByteString::try_from(raw).map_err(|_| DecodeError::InvalidUtf8(what))
    }

    /// Everything that is left (the PUBLISH payload).
    pub(crate) fn rest(&mut self) -> Bytes {
        self.buf.split_off(0)
    }

    /// Splits off the next `n` bytes as their own reader (a property block).
    pub(crate) fn sub(&mut self, n: usize, what: &'static str) -> Result<Reader, DecodeError> {
        self.need(n, what)?;
        Ok(Reader::new(self.buf.split_to(n)))
    }

    pub(crate) fn finish(&self, what: &'static str) -> Result<(), DecodeError> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(DecodeError::TrailingBytes(what))
        }
    }
}

/// Number of bytes a variable byte integer takes.
pub(crate) fn varint_len(value: usize) -> usize {
    match value {
        0..=127 => 1,
        128..=16_383 => 2,
        16_384..=2_097_151 => 3,
        _ => 4,
    }
}

pub(crate) fn put_varint(buf: &mut BytesMut, mut value: usize) {
    loop {
        // Truncation is the point: we emit the low seven bits per byte.
        let mut byte = (value & 0x7f) as u8;
        value >>= 7;
        if value > 0 {
            byte |= 0x80;
        }
        buf.put_u8(byte);
        if value == 0 {
            break;
        }
    }
}

/// Writes a length-prefixed field. Callers guarantee `data.len() <= u16::MAX`: strings and
/// binaries the broker sends either came in through the decoder (which enforces it) or are
/// built by the broker with short constant content.
pub(crate) fn put_binary(buf: &mut BytesMut, data: &[u8]) {
    let len = data.len().min(usize::from(u16::MAX));
    buf.put_u16(len as u16);
    buf.put_slice(&data[..len]);
}

pub(crate) fn binary_len(data: &[u8]) -> usize {
    2 + data.len().min(usize::from(u16::MAX))
}
