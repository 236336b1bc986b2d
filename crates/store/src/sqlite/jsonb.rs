//! SQLite's binary JSON (JSONB, SQLite 3.45 and later), as far as telemetry chunks use it:
//! writing arrays, integers, floats, `null` and raw text, and reading back any element.
//!
//! Why the writer produces it rather than JSON text: SQLite's JSON functions take either,
//! and JSONB needs no escaping. A stored telemetry document is a string inside a chunk, and
//! serde_json's escaping of every document was 5.6% of the hub's CPU at a fixed QoS 0 rate
//! (docs/benchmarks.md, run AO's profile); as JSONB "raw text" it is copied as it is, and
//! SQLite escapes it only when a query turns it back into JSON text.
//!
//! An element is a header and a payload. The header's first byte holds the element's type in
//! its low four bits and, in its high four, the payload's size (0–11) or how many bytes
//! after it hold the size, big-endian: 12 → 1, 13 → 2, 14 → 4, 15 → 8. Numbers are their JSON
//! text; an array's payload is its elements one after another. (The format's description:
//! <https://sqlite.org/jsonb.html>.)

use std::ops::Range;

/// The element types (the low four bits of a header's first byte) read or written here;
/// the others (4, 6 and 9: JSON5 integers, floats and text) SQLite writes only for JSON5
/// input, and reading one where a chunk has a number or text is an error.
pub(crate) mod kind {
    pub const NULL: u8 = 0;
    pub const TRUE: u8 = 1;
    pub const FALSE: u8 = 2;
    /// An integer as JSON text.
    pub const INT: u8 = 3;
    /// A float as JSON text.
    pub const FLOAT: u8 = 5;
    /// Text needing no escapes in JSON.
    pub const TEXT: u8 = 7;
    /// Text holding JSON escapes, as between a JSON string's quotes.
    pub const TEXTJ: u8 = 8;
    /// Text as it is, escaped when turned into JSON.
    pub const TEXTRAW: u8 = 10;
    pub const ARRAY: u8 = 11;
    pub const OBJECT: u8 = 12;
}

/// Appends the header of an element of `kind` whose payload is `len` bytes, in its shortest
/// form.
pub(crate) fn header(out: &mut Vec<u8>, kind: u8, len: usize) {
    match len {
        0..=11 => out.push((len as u8) << 4 | kind),
        12..=0xff => out.extend_from_slice(&[0xc0 | kind, len as u8]),
        0x100..=0xffff => {
            out.push(0xd0 | kind);
            out.extend_from_slice(&(len as u16).to_be_bytes());
        }
        _ if u32::try_from(len).is_ok() => {
            out.push(0xe0 | kind);
            out.extend_from_slice(&(len as u32).to_be_bytes());
        }
        _ => {
            out.push(0xf0 | kind);
            out.extend_from_slice(&(len as u64).to_be_bytes());
        }
    }
}

/// Appends `null`.
pub(crate) fn null(out: &mut Vec<u8>) {
    out.push(kind::NULL);
}

/// Appends an integer.
pub(crate) fn int(out: &mut Vec<u8>, v: i64) {
    let mut buf = itoa::Buffer::new();
    let text = buf.format(v);
    header(out, kind::INT, text.len());
    out.extend_from_slice(text.as_bytes());
}

/// Appends a float as the shortest text that reads back as the same `f64` (what
/// serde_json writes), or `null` if it is not finite (what serde_json writes for those).
pub(crate) fn float(out: &mut Vec<u8>, v: f64) {
    if !v.is_finite() {
        return null(out);
    }
    let mut buf = zmij::Buffer::new();
    let text = buf.format_finite(v);
    header(out, kind::FLOAT, text.len());
    out.extend_from_slice(text.as_bytes());
}

/// Appends text, unescaped.
pub(crate) fn text(out: &mut Vec<u8>, s: &str) {
    header(out, kind::TEXTRAW, s.len());
    out.extend_from_slice(s.as_bytes());
}

/// An array being written: its header's place, filled in by [`Array::end`].
#[must_use = "an array's header is written by `end`"]
pub(crate) struct Array {
    at: usize,
    /// How many bytes after the header's first were left for the size: 1 or 4.
    room: usize,
}

impl Array {
    /// Starts an array whose payload is likely under 256 bytes (a reading): its elements
    /// are appended to `out` next, then [`Array::end`].
    pub(crate) fn begin(out: &mut Vec<u8>) -> Array {
        Array::with_room(out, 1)
    }

    /// Starts an array whose payload is likely 256 bytes or more (a chunk): room is left
    /// for a four-byte size, so that `end` never moves the elements.
    pub(crate) fn begin_large(out: &mut Vec<u8>) -> Array {
        Array::with_room(out, 4)
    }

    fn with_room(out: &mut Vec<u8>, room: usize) -> Array {
        let at = out.len();
        out.push(if room == 1 { 0xc0 } else { 0xe0 } | kind::ARRAY);
        out.resize(at + 1 + room, 0);
        Array { at, room }
    }

    /// Writes the array's header, now that its size is known, moving its elements if the
    /// size needs more room than was left. A size given in more bytes than it needs (a
    /// small payload after `begin_large`, or 0–11 bytes after `begin`) is read by SQLite
    /// like any other.
    pub(crate) fn end(self, out: &mut Vec<u8>) {
        let start = self.at + 1 + self.room;
        let len = out.len() - start;
        match self.room {
            1 if len <= 0xff => {
                out[start - 1] = len as u8;
                return;
            }
            4 if u32::try_from(len).is_ok() => {
                out[self.at + 1..start].copy_from_slice(&(len as u32).to_be_bytes());
                return;
            }
            _ => {}
        }
        let mut head = Vec::with_capacity(9);
        header(&mut head, kind::ARRAY, len);
        out.splice(self.at..start, head);
    }
}

/// Why an element could not be read.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Malformed(pub String);

/// One element read: its type and where its payload is in the bytes read.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Element {
    pub kind: u8,
    pub payload: Range<usize>,
}

/// Reads the elements of `bytes[range]` one after another.
pub(crate) struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
    end: usize,
}

impl<'a> Reader<'a> {
    /// A reader of the whole of `bytes`.
    pub(crate) fn new(bytes: &'a [u8]) -> Reader<'a> {
        Reader {
            bytes,
            at: 0,
            end: bytes.len(),
        }
    }

    /// A reader of the elements inside an array or object read from the same bytes.
    pub(crate) fn inside(&self, e: &Element) -> Reader<'a> {
        Reader {
            bytes: self.bytes,
            at: e.payload.start,
            end: e.payload.end,
        }
    }

    /// The payload of `e`.
    pub(crate) fn payload(&self, e: &Element) -> &'a [u8] {
        &self.bytes[e.payload.clone()]
    }

    /// True once every element has been read.
    pub(crate) fn is_done(&self) -> bool {
        self.at >= self.end
    }

    /// The next element, or `None` at the end.
    pub(crate) fn next(&mut self) -> Result<Option<Element>, Malformed> {
        if self.is_done() {
            return Ok(None);
        }
        let first = self.bytes[self.at];
        let kind = first & 0x0f;
        if kind > kind::OBJECT {
            return Err(Malformed(format!(
                "element type {kind} at byte {} is not a JSONB type",
                self.at
            )));
        }
        let extra = match first >> 4 {
            0..=11 => 0,
            12 => 1,
            13 => 2,
            14 => 4,
            _ => 8,
        };
        let size_at = self.at + 1;
        let Some(size_bytes) = self.bytes[..self.end].get(size_at..size_at + extra) else {
            return Err(Malformed(format!(
                "the header at byte {} runs past the end",
                self.at
            )));
        };
        let len = if extra == 0 {
            u64::from(first >> 4)
        } else {
            size_bytes.iter().fold(0u64, |n, &b| n << 8 | u64::from(b))
        };
        let start = size_at + extra;
        let end = usize::try_from(len)
            .ok()
            .and_then(|len| start.checked_add(len))
            .filter(|&end| end <= self.end)
            .ok_or_else(|| {
                Malformed(format!(
                    "the element at byte {} claims {len} bytes, past the end",
                    self.at
                ))
            })?;
        if matches!(kind, kind::NULL | kind::TRUE | kind::FALSE) && len != 0 {
            return Err(Malformed(format!(
                "the literal at byte {} has a payload of {len} bytes",
                self.at
            )));
        }
        self.at = end;
        Ok(Some(Element {
            kind,
            payload: start..end,
        }))
    }

    /// The next element, which must be there.
    pub(crate) fn expect(&mut self, what: &str) -> Result<Element, Malformed> {
        self.next()?
            .ok_or_else(|| Malformed(format!("{what} is missing")))
    }

    /// The text of a text element: its payload as it is, or unescaped.
    pub(crate) fn text(&self, e: &Element, what: &str) -> Result<String, Malformed> {
        let raw = std::str::from_utf8(self.payload(e))
            .map_err(|err| Malformed(format!("{what} is not UTF-8: {err}")))?;
        match e.kind {
            kind::TEXT | kind::TEXTRAW => Ok(raw.to_owned()),
            // Written by SQLite itself (`jsonb()` of a string with escapes): JSON's escapes
            // between quotes, read as a JSON string.
            kind::TEXTJ => serde_json::from_str(&format!("\"{raw}\""))
                .map_err(|err| Malformed(format!("{what}'s escapes: {err}"))),
            k => Err(Malformed(format!("{what} is of type {k}, not text"))),
        }
    }

    /// The value of a number element, or `None` for `null`.
    pub(crate) fn float(&self, e: &Element, what: &str) -> Result<Option<f64>, Malformed> {
        match e.kind {
            kind::NULL => Ok(None),
            kind::FLOAT | kind::INT => {
                let raw = std::str::from_utf8(self.payload(e))
                    .map_err(|err| Malformed(format!("{what} is not UTF-8: {err}")))?;
                raw.parse::<f64>()
                    .map(Some)
                    .map_err(|err| Malformed(format!("{what} {raw:?}: {err}")))
            }
            k => Err(Malformed(format!("{what} is of type {k}, not a number"))),
        }
    }

    /// The value of an integer element.
    pub(crate) fn int(&self, e: &Element, what: &str) -> Result<i64, Malformed> {
        if e.kind != kind::INT {
            return Err(Malformed(format!(
                "{what} is of type {}, not an integer",
                e.kind
            )));
        }
        let raw = std::str::from_utf8(self.payload(e))
            .map_err(|err| Malformed(format!("{what} is not UTF-8: {err}")))?;
        raw.parse::<i64>()
            .map_err(|err| Malformed(format!("{what} {raw:?}: {err}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_take_the_shortest_form_for_each_size() {
        let cases: [(usize, &[u8]); 7] = [
            (0, &[0x0a]),
            (11, &[0xba]),
            (12, &[0xca, 12]),
            (255, &[0xca, 0xff]),
            (256, &[0xda, 1, 0]),
            (65_536, &[0xea, 0, 1, 0, 0]),
            (1 << 32, &[0xfa, 0, 0, 0, 1, 0, 0, 0, 0]),
        ];
        for (len, want) in cases {
            let mut out = Vec::new();
            header(&mut out, kind::TEXTRAW, len);
            assert_eq!(out, want, "size {len}");
        }
    }

    #[test]
    fn arrays_of_every_size_read_back() {
        // Sizes around each header form's edges: the array's elements move when its size
        // needs more than the one byte made room for.
        for n in [0usize, 1, 5, 254, 255, 256, 300, 65_535, 65_536, 70_000] {
            let s = "x".repeat(n);
            for large in [false, true] {
                let mut out = vec![0xee];
                let a = if large {
                    Array::begin_large(&mut out)
                } else {
                    Array::begin(&mut out)
                };
                text(&mut out, &s);
                int(&mut out, -7);
                a.end(&mut out);
                let mut r = Reader::new(&out[1..]);
                let array = r.expect("the array").unwrap();
                assert_eq!(array.kind, kind::ARRAY);
                assert!(r.is_done(), "size {n}: nothing after the array");
                let mut inside = r.inside(&array);
                let t = inside.expect("text").unwrap();
                assert_eq!(inside.text(&t, "text").unwrap(), s);
                let i = inside.expect("int").unwrap();
                assert_eq!(inside.int(&i, "int").unwrap(), -7);
                assert_eq!(inside.next().unwrap(), None);
            }
        }
    }

    #[test]
    fn damaged_elements_are_errors_not_panics() {
        let cases: [&[u8]; 7] = [
            &[0x0d],                   // type 13 is not one
            &[0xca],                   // a one-byte size missing
            &[0xfa, 0, 0, 0, 0, 0, 0], // an eight-byte size cut short
            &[0x3a, b'a'],             // three bytes claimed, one there
            &[0xfa, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff],
            &[0x10],       // `null` with a payload
            &[0x1b, 0x3a], // an array whose element runs past the array's end
        ];
        for bytes in cases {
            let mut r = Reader::new(bytes);
            let err = match r.next() {
                Err(e) => e,
                Ok(Some(e)) => {
                    let mut inside = r.inside(&e);
                    inside.next().unwrap_err()
                }
                Ok(None) => panic!("{bytes:?}: read as empty"),
            };
            assert!(!err.0.is_empty());
        }
    }

    #[test]
    fn text_with_json_escapes_is_unescaped() {
        let mut out = Vec::new();
        let s = r#"a\"b\\c\u00e9"#;
        header(&mut out, kind::TEXTJ, s.len());
        out.extend_from_slice(s.as_bytes());
        let mut r = Reader::new(&out);
        let e = r.expect("text").unwrap();
        assert_eq!(r.text(&e, "text").unwrap(), "a\"b\\cé");
    }

    #[test]
    fn numbers_of_the_wrong_type_are_refused() {
        let mut out = Vec::new();
        text(&mut out, "1");
        float(&mut out, 1.5);
        let mut r = Reader::new(&out);
        let t = r.expect("text").unwrap();
        assert!(r.float(&t, "v").is_err());
        assert!(r.int(&t, "seq").is_err());
        let f = r.expect("float").unwrap();
        assert!(r.int(&f, "seq").is_err());
        assert_eq!(r.float(&f, "v").unwrap(), Some(1.5));
    }
}
