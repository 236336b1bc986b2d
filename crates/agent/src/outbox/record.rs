//! One outbox record on disk:
//!
//! ```text
//! offset size
//!  0     4    magic "RPOB"
//!  4     1    format version (1)
//!  5     1    kind: 1 telemetry document, 2 event document
//!  6     2    flags (0)
//!  8     8    record id (outbox-wide, increasing by one per record)
//! 16     8    stream sequence number (the document's `seq`)
//! 24     8    append time, ms since the Unix epoch (for the age bound)
//! 32     4    body length
//! 36     4    CRC-32 of bytes 0..36 and the body
//! 40     n    body: the document sealed with the storage key (nonce, ciphertext, tag),
//!             with bytes 0..36 as associated data
//! ```
//!
//! All integers little-endian. The CRC finds accidental damage (a torn write, a flipped bit)
//! without the key and lets a reader find the next good record after a damaged one; the AEAD
//! tag finds deliberate changes, including a header rewritten with a matching CRC.

use std::fs::File;
use std::os::unix::fs::FileExt;

/// First bytes of every record.
pub const MAGIC: [u8; 4] = *b"RPOB";
pub const VERSION: u8 = 1;
pub const HEADER_LEN: usize = 40;
/// Bytes covered by the CRC and used as associated data (the header without its CRC).
pub const AAD_LEN: usize = 36;
/// Largest body accepted when reading; anything larger is damage.
pub const MAX_BODY: u32 = 1 << 20;

/// What a record holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    Telemetry = 1,
    Event = 2,
}

impl Kind {
    fn from_byte(b: u8) -> Option<Kind> {
        match b {
            1 => Some(Kind::Telemetry),
            2 => Some(Kind::Event),
            _ => None,
        }
    }

    pub fn index(self) -> usize {
        self as usize - 1
    }
}

/// A record's header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub kind: Kind,
    pub id: u64,
    pub seq: u64,
    pub ts_ms: i64,
    pub body_len: u32,
}

impl Header {
    /// Bytes 0..36: the associated data of the body.
    pub fn aad(&self) -> [u8; AAD_LEN] {
        let mut b = [0u8; AAD_LEN];
        b[0..4].copy_from_slice(&MAGIC);
        b[4] = VERSION;
        b[5] = self.kind as u8;
        // b[6..8]: flags, zero.
        b[8..16].copy_from_slice(&self.id.to_le_bytes());
        b[16..24].copy_from_slice(&self.seq.to_le_bytes());
        b[24..32].copy_from_slice(&self.ts_ms.to_le_bytes());
        b[32..36].copy_from_slice(&self.body_len.to_le_bytes());
        b
    }

    /// The record as written: header with CRC, then the body.
    pub fn encode(&self, body: &[u8]) -> Vec<u8> {
        let aad = self.aad();
        let mut crc = crc32fast::Hasher::new();
        crc.update(&aad);
        crc.update(body);
        let mut out = Vec::with_capacity(HEADER_LEN + body.len());
        out.extend_from_slice(&aad);
        out.extend_from_slice(&crc.finalize().to_le_bytes());
        out.extend_from_slice(body);
        out
    }

    /// Parses a header; `None` if these bytes cannot be one (wrong magic, version, kind, flags
    /// or an impossible length). Returns the stored CRC beside it.
    pub fn decode(b: &[u8]) -> Option<(Header, u32)> {
        if b.len() < HEADER_LEN || b[0..4] != MAGIC || b[4] != VERSION || b[6..8] != [0, 0] {
            return None;
        }
        let kind = Kind::from_byte(b[5])?;
        let u64_at = |i: usize| {
            let mut a = [0u8; 8];
            a.copy_from_slice(&b[i..i + 8]);
            u64::from_le_bytes(a)
        };
        let u32_at = |i: usize| {
            let mut a = [0u8; 4];
            a.copy_from_slice(&b[i..i + 4]);
            u32::from_le_bytes(a)
        };
        let body_len = u32_at(32);
        if body_len > MAX_BODY {
            return None;
        }
        Some((
            Header {
                kind,
                id: u64_at(8),
                seq: u64_at(16),
                ts_ms: u64_at(24) as i64,
                body_len,
            },
            u32_at(36),
        ))
    }

    /// Whether `crc` matches this header and `body`.
    pub fn crc_ok(&self, body: &[u8], crc: u32) -> bool {
        let mut h = crc32fast::Hasher::new();
        h.update(&self.aad());
        h.update(body);
        h.finalize() == crc
    }

    /// Length on disk.
    pub fn record_len(&self) -> u64 {
        HEADER_LEN as u64 + u64::from(self.body_len)
    }
}

/// What is at an offset of a segment file.
#[derive(Debug)]
pub enum At {
    /// The end of the file.
    End,
    /// A complete record whose CRC matches.
    Record {
        header: Header,
        body: Vec<u8>,
        next: u64,
    },
    /// The file ends inside a record (a write cut short).
    Torn,
    /// Bytes that are not a good record.
    Damaged,
}

/// Reads the record at `offset` of a file of `len` bytes.
pub fn read_at(file: &File, offset: u64, len: u64) -> std::io::Result<At> {
    if offset >= len {
        return Ok(At::End);
    }
    if len - offset < HEADER_LEN as u64 {
        return Ok(At::Torn);
    }
    let mut head = [0u8; HEADER_LEN];
    file.read_exact_at(&mut head, offset)?;
    let Some((header, crc)) = Header::decode(&head) else {
        return Ok(At::Damaged);
    };
    let next = offset + header.record_len();
    if next > len {
        return Ok(At::Torn);
    }
    let mut body = vec![0u8; header.body_len as usize];
    file.read_exact_at(&mut body, offset + HEADER_LEN as u64)?;
    if !header.crc_ok(&body, crc) {
        return Ok(At::Damaged);
    }
    Ok(At::Record { header, body, next })
}

/// Reads only the header at `offset` (no CRC check); for positions already known good.
pub fn header_at(file: &File, offset: u64, len: u64) -> std::io::Result<Option<Header>> {
    if offset + HEADER_LEN as u64 > len {
        return Ok(None);
    }
    let mut head = [0u8; HEADER_LEN];
    file.read_exact_at(&mut head, offset)?;
    Ok(Header::decode(&head).map(|(h, _)| h))
}

/// The offset of the next good record after damage at `from`, scanning byte by byte for a
/// header whose record checks out; `None` if there is none before the end.
pub fn resync(file: &File, from: u64, len: u64) -> std::io::Result<Option<(u64, Header)>> {
    if from >= len {
        return Ok(None);
    }
    let mut rest = vec![0u8; (len - from) as usize];
    file.read_exact_at(&mut rest, from)?;
    let mut i = 1;
    while i + HEADER_LEN <= rest.len() {
        if rest[i..i + 4] == MAGIC
            && let Some((h, crc)) = Header::decode(&rest[i..])
        {
            let end = i + h.record_len() as usize;
            if end <= rest.len() && h.crc_ok(&rest[i + HEADER_LEN..end], crc) {
                return Ok(Some((from + i as u64, h)));
            }
        }
        i += 1;
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn header(id: u64, len: u32) -> Header {
        Header {
            kind: Kind::Telemetry,
            id,
            seq: id + 100,
            ts_ms: 1_800_000_000_000,
            body_len: len,
        }
    }

    fn file_with(records: &[Vec<u8>]) -> (tempfile::NamedTempFile, u64) {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        for r in records {
            f.write_all(r).unwrap();
        }
        let len = f.as_file().metadata().unwrap().len();
        (f, len)
    }

    #[test]
    fn records_roundtrip_and_damage_is_found() {
        let a = header(1, 5).encode(b"hello");
        let b = header(2, 3).encode(b"abc");
        assert_eq!(a.len(), HEADER_LEN + 5);
        let (f, len) = file_with(&[a.clone(), b.clone()]);
        let At::Record {
            header: h,
            body,
            next,
        } = read_at(f.as_file(), 0, len).unwrap()
        else {
            panic!("record")
        };
        assert_eq!((h.id, h.seq, body.as_slice()), (1, 101, &b"hello"[..]));
        assert!(matches!(
            read_at(f.as_file(), next, len).unwrap(),
            At::Record { .. }
        ));
        assert!(matches!(read_at(f.as_file(), len, len).unwrap(), At::End));
        // A flipped bit anywhere in the first record: damaged, and the second is found.
        for i in [0, 5, 9, 20, 33, 37, 42] {
            let mut bad = a.clone();
            bad[i] ^= 0x04;
            let (f, len) = file_with(&[bad, b.clone()]);
            assert!(
                matches!(
                    read_at(f.as_file(), 0, len).unwrap(),
                    At::Damaged | At::Torn
                ),
                "byte {i}"
            );
            let (off, h) = resync(f.as_file(), 0, len).unwrap().expect("resync");
            assert_eq!((off, h.id), (a.len() as u64, 2), "byte {i}");
        }
        // Cut short: torn, and nothing to resync to.
        let (f, len) = file_with(&[a[..a.len() - 2].to_vec()]);
        assert!(matches!(read_at(f.as_file(), 0, len).unwrap(), At::Torn));
        assert!(resync(f.as_file(), 0, len).unwrap().is_none());
    }

    #[test]
    fn impossible_headers_are_refused() {
        let mut h = header(1, 0).encode(b"");
        assert!(Header::decode(&h).is_some());
        h[4] = 9;
        assert!(Header::decode(&h).is_none(), "unknown version");
        let mut h = header(1, 0).encode(b"");
        h[5] = 7;
        assert!(Header::decode(&h).is_none(), "unknown kind");
        let h = header(1, MAX_BODY + 1).aad();
        let mut full = h.to_vec();
        full.extend_from_slice(&[0; 4]);
        assert!(Header::decode(&full).is_none(), "oversized body");
    }
}
