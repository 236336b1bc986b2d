//! A quick reader for telemetry documents, in front of serde.
//!
//! The hub parses every telemetry message it receives, and serde_json's derived deserializer
//! was the largest item of its per-message work besides storage and TLS (docs/benchmarks.md,
//! run AM). This reader scans a document's bytes once, for the documents devices send: JSON
//! objects of the telemetry schema (alone, or a batch in an array) whose strings hold no
//! escapes. For anything else — an escape, an unknown or repeated key, a number it cannot
//! read exactly as serde_json does, a missing field, anything malformed — it answers `None`,
//! and the caller parses with serde, which accepts the document or says what is wrong with
//! it. The reader never refuses anything itself.
//!
//! It can therefore only be wrong by accepting what serde would refuse, or by reading a
//! value differently; the differential tests below hold it to serde's answer, bit for bit,
//! over generated documents and damaged copies of them. Validation (ranges, sizes, version)
//! is the document's own and runs after either parser.

use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use super::{Aggregate, Extremes, PackValues, TelemetryMessage, Window};
use crate::reading::{Alarm, Fets, Limits, Requests, SourceInfo};
use crate::units::{AmpHours, Amps, Celsius, Percent, Volts};

/// A document with nothing read into it yet.
pub(super) fn blank() -> TelemetryMessage {
    TelemetryMessage {
        v: 0,
        seq: 0,
        ts: OffsetDateTime::UNIX_EPOCH,
        pack: None,
        cells_v: None,
        temps_c: None,
        limits: None,
        alarms: None,
        warnings: None,
        fets: None,
        balancing: None,
        requests: None,
        source: None,
        window: None,
    }
}

/// Reads one document, `{...}`, into `m` (a [`blank`] one), or answers `None` for serde to
/// read, `m` then holding part of it. In place, because the document is large (320 bytes)
/// and each move of it a copy: returning it through the reader's and the caller's layers
/// was a fifth of the reader's time.
pub(super) fn document(bytes: &[u8], m: &mut TelemetryMessage) -> Option<()> {
    let mut r = Reader { b: bytes, i: 0 };
    r.message(m)?;
    r.end()
}

/// A batch, `[{...}, ...]` (at least one document; the caller bounds the count), or `None`
/// for serde to read.
pub(super) fn batch(bytes: &[u8]) -> Option<Vec<TelemetryMessage>> {
    let mut r = Reader { b: bytes, i: 0 };
    let docs = r.array(|r| {
        let mut m = blank();
        r.message(&mut m).map(|()| m)
    })?;
    r.end()?;
    (!docs.is_empty()).then_some(docs)
}

/// The keys of each object of the schema: what serde's `deny_unknown_fields` lets through.
/// A key here that a reader's `match` lacks only sends the document to serde.
const MESSAGE_KEYS: [&[u8]; 14] = [
    b"v",
    b"seq",
    b"ts",
    b"pack",
    b"cells_v",
    b"temps_c",
    b"limits",
    b"alarms",
    b"warnings",
    b"fets",
    b"balancing",
    b"requests",
    b"source",
    b"window",
];
const PACK_KEYS: [&[u8]; 7] = [
    b"voltage_v",
    b"current_a",
    b"soc_pct",
    b"soh_pct",
    b"remaining_ah",
    b"full_ah",
    b"cycles",
];
const LIMITS_KEYS: [&[u8]; 4] = [
    b"charge_voltage_v",
    b"charge_current_a",
    b"discharge_current_a",
    b"discharge_voltage_v",
];
const FETS_KEYS: [&[u8]; 2] = [b"charge", b"discharge"];
const REQUESTS_KEYS: [&[u8]; 4] = [
    b"charge_enable",
    b"discharge_enable",
    b"force_charge",
    b"full_charge",
];
const SOURCE_KEYS: [&[u8]; 5] = [
    b"kind",
    b"model",
    b"manufacturer",
    b"version",
    b"manufactured",
];
const WINDOW_KEYS: [&[u8]; 5] = [b"from", b"samples", b"aggregate", b"min", b"max"];
const EXTREMES_KEYS: [&[u8]; 3] = [b"pack", b"cells_v", b"temps_c"];

/// The bytes and how far they have been read.
struct Reader<'a> {
    b: &'a [u8],
    i: usize,
}

impl<'a> Reader<'a> {
    // ---- tokens ----

    /// The next byte after JSON whitespace, not consumed.
    fn peek(&mut self) -> Option<u8> {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.b.get(self.i) {
            self.i += 1;
        }
        self.b.get(self.i).copied()
    }

    /// Consumes `c`, the next byte after whitespace.
    fn expect(&mut self, c: u8) -> Option<()> {
        (self.peek()? == c).then(|| self.i += 1)
    }

    /// Nothing but whitespace is left.
    fn end(&mut self) -> Option<()> {
        (self.peek().is_none()).then_some(())
    }

    /// After an item of an object or array: `true` past a `,`, `false` past `close`.
    fn more(&mut self, close: u8) -> Option<bool> {
        match self.peek()? {
            b',' => {
                self.i += 1;
                Some(true)
            }
            c if c == close => {
                self.i += 1;
                Some(false)
            }
            _ => None,
        }
    }

    /// Consumes `word` if the bytes continue with it.
    fn word(&mut self, word: &[u8]) -> Option<()> {
        self.b[self.i..]
            .starts_with(word)
            .then(|| self.i += word.len())
    }

    /// A string's bytes, if it holds no escapes or control characters.
    fn raw_string(&mut self) -> Option<&'a [u8]> {
        self.expect(b'"')?;
        let rest = &self.b[self.i..];
        let len = rest
            .iter()
            .position(|&c| c == b'"' || c == b'\\' || c < 0x20)?;
        if rest[len] != b'"' {
            return None;
        }
        self.i += len + 1;
        Some(&rest[..len])
    }

    /// A string without escapes or control characters, as UTF-8.
    fn string(&mut self) -> Option<&'a str> {
        std::str::from_utf8(self.raw_string()?).ok()
    }

    fn bool(&mut self) -> Option<bool> {
        match self.peek()? {
            b't' => self.word(b"true").map(|()| true),
            b'f' => self.word(b"false").map(|()| false),
            _ => None,
        }
    }

    /// A number as serde_json reads it into an `f64`, for the numbers whose conversion is
    /// exact: at most 15 digits (the significand fits in 53 bits) and no exponent (the scale
    /// is a power of ten up to 10^15, also exact). serde_json then divides the significand by
    /// the scale, one correctly rounded operation on exact operands; so does this, and both
    /// get the correctly rounded value of the text.
    fn f64(&mut self) -> Option<f64> {
        /// 10^0 ..= 10^15, each exact in an `f64`.
        const POW10: [f64; 16] = [
            1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15,
        ];
        self.peek()?;
        let b = self.b;
        let negative = b[self.i] == b'-';
        let mut i = self.i + usize::from(negative);
        let mut significand: u64 = 0;
        // Wrapping: past 15 digits the number is declined below, whatever it summed to.
        let mut digits = |i: &mut usize| {
            let from = *i;
            while let Some(&c @ b'0'..=b'9') = b.get(*i) {
                significand = significand
                    .wrapping_mul(10)
                    .wrapping_add(u64::from(c - b'0'));
                *i += 1;
            }
            *i - from
        };
        let int_from = i;
        let int = digits(&mut i);
        // JSON has no leading zeros and no bare sign.
        if int == 0 || (int > 1 && b[int_from] == b'0') {
            return None;
        }
        let mut scale = 0;
        if b.get(i) == Some(&b'.') {
            i += 1;
            scale = digits(&mut i);
            if scale == 0 {
                return None;
            }
        }
        if int + scale > 15 || matches!(b.get(i), Some(b'e' | b'E')) {
            return None;
        }
        self.i = i;
        // Below 10^15 < 2^53: the conversion is exact.
        let magnitude = significand as f64 / POW10[scale];
        Some(if negative { -magnitude } else { magnitude })
    }

    /// An unsigned integer: digits only (serde refuses a sign, fraction or exponent for an
    /// integer field).
    fn u64(&mut self) -> Option<u64> {
        self.peek()?;
        let rest = &self.b[self.i..];
        let len = rest.iter().take_while(|c| c.is_ascii_digit()).count();
        if len == 0 || len > 19 || (len > 1 && rest[0] == b'0') {
            return None;
        }
        let mut n: u64 = 0;
        for &d in &rest[..len] {
            n = n.checked_mul(10)?.checked_add(u64::from(d - b'0'))?;
        }
        if matches!(rest.get(len), Some(b'.' | b'e' | b'E')) {
            return None;
        }
        self.i += len;
        Some(n)
    }

    fn u32(&mut self) -> Option<u32> {
        u32::try_from(self.u64()?).ok()
    }

    fn u16(&mut self) -> Option<u16> {
        u16::try_from(self.u64()?).ok()
    }

    fn time(&mut self) -> Option<OffsetDateTime> {
        // What `time::serde::rfc3339` does with the string.
        let text = self.string()?;
        utc_time(text.as_bytes()).or_else(|| OffsetDateTime::parse(text, &Rfc3339).ok())
    }

    // ---- structure ----

    /// `null` (`None`) or what `read` reads: an optional field.
    fn opt<T>(&mut self, read: impl FnOnce(&mut Self) -> Option<T>) -> Option<Option<T>> {
        if self.peek()? == b'n' {
            self.word(b"null")?;
            return Some(None);
        }
        read(self).map(Some)
    }

    /// `[item, ...]`.
    fn array<T>(&mut self, mut item: impl FnMut(&mut Self) -> Option<T>) -> Option<Vec<T>> {
        self.expect(b'[')?;
        let mut out = Vec::new();
        if self.peek()? == b']' {
            self.i += 1;
            return Some(out);
        }
        loop {
            out.push(item(self)?);
            if !self.more(b']')? {
                return Some(out);
            }
        }
    }

    /// `{"key": value, ...}` with keys from `keys`, each at most once (serde refuses an
    /// unknown key, with `deny_unknown_fields`, and a repeated one); `field` reads the value
    /// of each.
    fn object(
        &mut self,
        keys: &[&[u8]],
        mut field: impl FnMut(&mut Self, &[u8]) -> Option<()>,
    ) -> Option<()> {
        self.expect(b'{')?;
        if self.peek()? == b'}' {
            self.i += 1;
            return Some(());
        }
        let mut seen: u32 = 0;
        loop {
            // Compared as bytes: a key equal to one of the schema's is ASCII.
            let key = self.raw_string()?;
            let at = keys.iter().position(|k| *k == key)?;
            // Past 32 keys (none of the schema's objects has more than 14) no bit: serde reads.
            let bit = u32::try_from(at).ok().and_then(|at| 1u32.checked_shl(at))?;
            if seen & bit != 0 {
                return None;
            }
            seen |= bit;
            self.expect(b':')?;
            field(self, key)?;
            if !self.more(b'}')? {
                return Some(());
            }
        }
    }

    // ---- the schema ----

    fn message(&mut self, m: &mut TelemetryMessage) -> Option<()> {
        let (mut v, mut seq, mut ts) = (None, None, None);
        self.object(&MESSAGE_KEYS, |r, key| {
            match key {
                b"v" => v = Some(r.u32()?),
                b"seq" => seq = Some(r.u64()?),
                b"ts" => ts = Some(r.time()?),
                b"pack" => m.pack = r.opt(Self::pack)?,
                b"cells_v" => m.cells_v = r.opt(Self::volts_list)?,
                b"temps_c" => m.temps_c = r.opt(Self::celsius_list)?,
                b"limits" => m.limits = r.opt(Self::limits)?,
                b"alarms" => m.alarms = r.opt(Self::alarms)?,
                b"warnings" => m.warnings = r.opt(Self::alarms)?,
                b"fets" => m.fets = r.opt(Self::fets)?,
                b"balancing" => m.balancing = r.opt(|r| r.array(Self::u16))?,
                b"requests" => m.requests = r.opt(Self::requests)?,
                b"source" => m.source = r.opt(|r| r.source().map(Box::new))?,
                b"window" => m.window = r.opt(|r| r.window().map(Box::new))?,
                _ => return None,
            };
            Some(())
        })?;
        (m.v, m.seq, m.ts) = (v?, seq?, ts?);
        Some(())
    }

    fn pack(&mut self) -> Option<PackValues> {
        let mut p = PackValues::default();
        self.object(&PACK_KEYS, |r, key| {
            match key {
                b"voltage_v" => p.voltage_v = r.opt(|r| r.f64().map(Volts))?,
                b"current_a" => p.current_a = r.opt(|r| r.f64().map(Amps))?,
                b"soc_pct" => p.soc_pct = r.opt(|r| r.f64().map(Percent))?,
                b"soh_pct" => p.soh_pct = r.opt(|r| r.f64().map(Percent))?,
                b"remaining_ah" => p.remaining_ah = r.opt(|r| r.f64().map(AmpHours))?,
                b"full_ah" => p.full_ah = r.opt(|r| r.f64().map(AmpHours))?,
                b"cycles" => p.cycles = r.opt(Self::u32)?,
                _ => return None,
            };
            Some(())
        })?;
        Some(p)
    }

    fn volts_list(&mut self) -> Option<Vec<Volts>> {
        self.array(|r| r.f64().map(Volts))
    }

    fn celsius_list(&mut self) -> Option<Vec<Celsius>> {
        self.array(|r| r.f64().map(Celsius))
    }

    fn alarms(&mut self) -> Option<Vec<Alarm>> {
        self.array(|r| {
            let name = r.raw_string()?;
            Alarm::ALL
                .into_iter()
                .find(|a| a.as_str().as_bytes() == name)
        })
    }

    fn limits(&mut self) -> Option<Limits> {
        let (mut cv, mut cc, mut dc, mut dv) = (None, None, None, None);
        self.object(&LIMITS_KEYS, |r, key| {
            match key {
                b"charge_voltage_v" => cv = Some(Volts(r.f64()?)),
                b"charge_current_a" => cc = Some(Amps(r.f64()?)),
                b"discharge_current_a" => dc = Some(Amps(r.f64()?)),
                b"discharge_voltage_v" => dv = r.opt(|r| r.f64().map(Volts))?,
                _ => return None,
            };
            Some(())
        })?;
        Some(Limits {
            charge_voltage: cv?,
            charge_current: cc?,
            discharge_current: dc?,
            discharge_voltage: dv,
        })
    }

    fn fets(&mut self) -> Option<Fets> {
        let (mut charge, mut discharge) = (None, None);
        self.object(&FETS_KEYS, |r, key| {
            match key {
                b"charge" => charge = Some(r.bool()?),
                b"discharge" => discharge = Some(r.bool()?),
                _ => return None,
            };
            Some(())
        })?;
        Some(Fets {
            charge: charge?,
            discharge: discharge?,
        })
    }

    fn requests(&mut self) -> Option<Requests> {
        let (mut charge, mut discharge, mut force, mut full) = (None, None, None, None);
        self.object(&REQUESTS_KEYS, |r, key| {
            match key {
                b"charge_enable" => charge = Some(r.bool()?),
                b"discharge_enable" => discharge = Some(r.bool()?),
                b"force_charge" => force = Some(r.bool()?),
                b"full_charge" => full = Some(r.bool()?),
                _ => return None,
            };
            Some(())
        })?;
        Some(Requests {
            charge_enable: charge?,
            discharge_enable: discharge?,
            force_charge: force?,
            full_charge: full?,
        })
    }

    fn source(&mut self) -> Option<SourceInfo> {
        let mut kind = None;
        let mut s = SourceInfo {
            kind: String::new(),
            model: None,
            manufacturer: None,
            version: None,
            manufactured: None,
        };
        let text = |r: &mut Self| r.opt(|r| r.string().map(str::to_owned));
        self.object(&SOURCE_KEYS, |r, key| {
            match key {
                b"kind" => kind = Some(r.string()?.to_owned()),
                b"model" => s.model = text(r)?,
                b"manufacturer" => s.manufacturer = text(r)?,
                b"version" => s.version = text(r)?,
                b"manufactured" => s.manufactured = text(r)?,
                _ => return None,
            };
            Some(())
        })?;
        s.kind = kind?;
        Some(s)
    }

    fn window(&mut self) -> Option<Window> {
        let (mut from, mut samples, mut aggregate) = (None, None, None);
        let (mut min, mut max) = (None, None);
        self.object(&WINDOW_KEYS, |r, key| {
            match key {
                b"from" => from = Some(r.time()?),
                b"samples" => samples = Some(r.u32()?),
                b"aggregate" => aggregate = Some(r.aggregate()?),
                b"min" => min = r.opt(Self::extremes)?,
                b"max" => max = r.opt(Self::extremes)?,
                _ => return None,
            };
            Some(())
        })?;
        Some(Window {
            from: from?,
            samples: samples?,
            aggregate: aggregate?,
            min,
            max,
        })
    }

    fn aggregate(&mut self) -> Option<Aggregate> {
        Some(match self.raw_string()? {
            b"last" => Aggregate::Last,
            b"mean" => Aggregate::Mean,
            b"min" => Aggregate::Min,
            b"max" => Aggregate::Max,
            b"min_max_mean" => Aggregate::MinMaxMean,
            _ => return None,
        })
    }

    fn extremes(&mut self) -> Option<Extremes> {
        let mut e = Extremes::default();
        self.object(&EXTREMES_KEYS, |r, key| {
            match key {
                b"pack" => e.pack = r.opt(Self::pack)?,
                b"cells_v" => e.cells_v = r.opt(Self::volts_list)?,
                b"temps_c" => e.temps_c = r.opt(Self::celsius_list)?,
                _ => return None,
            };
            Some(())
        })?;
        Some(e)
    }
}

/// The time of `YYYY-MM-DDTHH:MM:SS[.F]Z` (one to nine digits of fraction, seconds up to 59),
/// the form devices send, or `None` for anything else, which `time`'s RFC 3339 parser then
/// reads or refuses. That parser takes every form RFC 3339 allows (lower-case `t` and `z`,
/// offsets, leap seconds, longer fractions) and was about 1.4% of the hub's CPU per message
/// at a fixed QoS 0 rate (docs/benchmarks.md); this one reads the common form alone, with
/// the same answer (the differential test below holds it to that parser).
fn utc_time(b: &[u8]) -> Option<OffsetDateTime> {
    /// The number the ASCII digits of `b` spell, `None` if one is not a digit.
    fn digits(b: &[u8]) -> Option<u32> {
        b.iter().try_fold(0u32, |n, &c| {
            c.is_ascii_digit().then(|| n * 10 + u32::from(c - b'0'))
        })
    }
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || b[10] != b'T' || b[13] != b':' {
        return None;
    }
    if b[16] != b':' || b[b.len() - 1] != b'Z' {
        return None;
    }
    let nanos = match &b[19..b.len() - 1] {
        [] => 0,
        [b'.', fraction @ ..] if (1..=9).contains(&fraction.len()) => {
            digits(fraction)? * 10u32.pow(9 - fraction.len() as u32)
        }
        _ => return None,
    };
    let month = time::Month::try_from(u8::try_from(digits(&b[5..7])?).ok()?).ok()?;
    let date = time::Date::from_calendar_date(
        i32::try_from(digits(&b[0..4])?).ok()?,
        month,
        u8::try_from(digits(&b[8..10])?).ok()?,
    )
    .ok()?;
    let clock = time::Time::from_hms_nano(
        u8::try_from(digits(&b[11..13])?).ok()?,
        u8::try_from(digits(&b[14..16])?).ok()?,
        // A leap second (60) is refused here and read by `time`, which knows the rules.
        u8::try_from(digits(&b[17..19])?).ok()?,
        nanos,
    )
    .ok()?;
    Some(time::PrimitiveDateTime::new(date, clock).assume_utc())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{SimulatedPack, SimulatorConfig};

    /// The reader's document, if it takes `bytes`.
    fn read(bytes: &[u8]) -> Option<TelemetryMessage> {
        let mut m = blank();
        document(bytes, &mut m).map(|()| m)
    }

    /// serde's reading of `bytes`, the reference.
    fn serde_document(bytes: &[u8]) -> Result<TelemetryMessage, serde_json::Error> {
        serde_json::from_slice(bytes)
    }

    /// Holds the reader to serde on `bytes`: whatever it accepts, serde accepts, with the
    /// same values bit for bit (`Debug` prints each float's shortest exact form, and `-0.0`
    /// apart from `0.0`). Returns whether the reader took the document.
    fn agrees(bytes: &[u8]) -> bool {
        let Some(fast) = read(bytes) else {
            return false;
        };
        let text = String::from_utf8_lossy(bytes);
        match serde_document(bytes) {
            Ok(slow) => assert_eq!(format!("{fast:?}"), format!("{slow:?}"), "{text}"),
            Err(e) => panic!("the reader took what serde refuses ({e}): {text}"),
        }
        true
    }

    fn agrees_on_batch(bytes: &[u8]) -> bool {
        let Some(fast) = batch(bytes) else {
            return false;
        };
        let text = String::from_utf8_lossy(bytes);
        match serde_json::from_slice::<Vec<TelemetryMessage>>(bytes) {
            Ok(slow) => assert_eq!(format!("{fast:?}"), format!("{slow:?}"), "{text}"),
            Err(e) => panic!("the reader took a batch serde refuses ({e}): {text}"),
        }
        true
    }

    fn full_document() -> TelemetryMessage {
        let reading = SimulatedPack::new(SimulatorConfig::default())
            .snapshot(OffsetDateTime::from_unix_timestamp(1_800_000_000).expect("a time"));
        TelemetryMessage::full(42, &reading)
    }

    /// The common form's reader answers as `time`'s RFC 3339 parser does wherever it answers,
    /// and answers for the forms devices send: over edge cases and over every one-byte change
    /// of a few valid times.
    #[test]
    fn utc_times_are_read_as_the_rfc_3339_parser_reads_them() {
        let parsed = |t: &[u8]| {
            std::str::from_utf8(t)
                .ok()
                .and_then(|t| OffsetDateTime::parse(t, &Rfc3339).ok())
        };
        let mut cases: Vec<Vec<u8>> = [
            "2026-11-28T18:04:05Z",
            "2026-11-28T18:04:05.1Z",
            "2026-11-28T18:04:05.123456789Z",
            "2026-11-28T18:04:05.1234567891Z",
            "2026-11-28T18:04:05.Z",
            "2026-11-28T18:04:05.000000000Z",
            "2024-02-29T00:00:00Z",
            "2023-02-29T00:00:00Z",
            "2026-04-31T12:00:00Z",
            "2026-12-31T23:59:59.999999999Z",
            "2016-12-31T23:59:60Z",
            "2026-11-28T24:00:00Z",
            "2026-11-28T23:60:00Z",
            "2026-13-01T00:00:00Z",
            "2026-00-01T00:00:00Z",
            "2026-01-00T00:00:00Z",
            "0000-01-01T00:00:00Z",
            "9999-12-31T23:59:59Z",
            "2026-11-28t18:04:05z",
            "2026-11-28T18:04:05+02:00",
            "2026-11-28T18:04:05-00:00",
            "2026-11-28 18:04:05Z",
            "2026-11-28T18:04:5Z",
            "+2026-11-28T18:04:05Z",
            "2026-11-28T18:04:05ZZ",
            "",
        ]
        .iter()
        .map(|t| t.as_bytes().to_vec())
        .collect();
        for base in ["2026-11-28T18:04:05.123Z", "2024-02-29T23:59:59Z"] {
            for at in 0..base.len() {
                for byte in [
                    b'0', b'5', b'9', b'-', b':', b'.', b'T', b'Z', b'z', b'+', b' ',
                ] {
                    let mut t = base.as_bytes().to_vec();
                    t[at] = byte;
                    cases.push(t);
                }
                let mut shorter = base.as_bytes().to_vec();
                shorter.remove(at);
                cases.push(shorter);
            }
        }
        let mut read = 0;
        for t in &cases {
            if let Some(fast) = utc_time(t) {
                read += 1;
                assert_eq!(Some(fast), parsed(t), "{}", String::from_utf8_lossy(t));
            }
        }
        // The forms devices send are read by the common form's reader, not left to `time`.
        for t in ["2026-11-28T18:04:05Z", "2026-11-28T18:04:05.123456789Z"] {
            assert!(utc_time(t.as_bytes()).is_some(), "{t}");
        }
        assert!(read > 50, "only {read} of {} cases read", cases.len());
    }

    #[test]
    fn the_documents_devices_send_are_read_without_serde() {
        let mut loadgen = Vec::new();
        rampart_loadgen::scenario::telemetry_payload(
            &mut loadgen,
            123_456,
            "2026-11-28T18:04:05.123456789Z",
            128,
        );
        let full = full_document();
        let mut windowed = full.clone();
        windowed.limits = Some(Limits {
            charge_voltage: Volts(56.8),
            charge_current: Amps(50.0),
            discharge_current: Amps(-100.0),
            discharge_voltage: None,
        });
        windowed.requests = Some(Requests {
            charge_enable: true,
            discharge_enable: true,
            force_charge: false,
            full_charge: false,
        });
        windowed.balancing = Some(vec![0, 3, 65_535]);
        windowed.window = Some(Box::new(Window {
            from: full.ts - time::Duration::minutes(5),
            samples: 300,
            aggregate: Aggregate::MinMaxMean,
            min: Some(Extremes {
                pack: full.pack.clone(),
                cells_v: full.cells_v.clone(),
                temps_c: None,
            }),
            max: Some(Extremes::default()),
        }));
        let docs = [
            loadgen.clone(),
            serde_json::to_vec(&full).expect("serialises"),
            serde_json::to_vec_pretty(&windowed).expect("serialises"),
        ];
        for doc in &docs {
            assert!(agrees(doc), "{}", String::from_utf8_lossy(doc));
        }
        assert_eq!(read(&docs[1]).as_ref(), Some(&full));
        assert_eq!(read(&docs[2]).as_ref(), Some(&windowed));
        let mut batch_bytes = b"[".to_vec();
        batch_bytes.extend_from_slice(&loadgen);
        batch_bytes.extend_from_slice(b" ,\n");
        batch_bytes.extend_from_slice(&docs[2]);
        batch_bytes.push(b']');
        assert!(agrees_on_batch(&batch_bytes));
    }

    #[test]
    fn what_the_reader_leaves_to_serde() {
        let base = r#""v":1,"seq":7,"ts":"2026-11-29T01:02:03Z""#;
        let doc = |rest: &str| format!("{{{base}{rest}}}");
        // (document, what serde makes of it)
        let cases: &[(String, bool)] = &[
            // Escapes, exponents, long numbers: valid, but for serde to read.
            (doc(r#","source":{"kind":"sim\"ulator"}"#), true),
            (
                r#"{"v":1,"seq":7,"ts":"2026-11-29T01:02:03\u005a"}"#.into(),
                true,
            ),
            (doc(r#","pack":{"voltage_v":5.2e1}"#), true),
            (doc(r#","pack":{"voltage_v":52.00000000000001}"#), true),
            (doc(r#","cells_v":[3.2,3.3E0]"#), true),
            // Refused by serde: repeated and unknown keys, missing fields, wrong types,
            // malformed numbers, trailing bytes, a bad time or alarm.
            (doc(r#","seq":8"#), false),
            (doc(r#","pack":null,"pack":{}"#), false),
            (doc(r#","pack":{"soc_pct":1,"soc_pct":2}"#), false),
            (doc(r#","extra":1"#), false),
            (doc(r#","pack":{"volts":1}"#), false),
            (r#"{"v":1,"seq":7}"#.into(), false),
            (
                r#"{"v":1,"seq":-7,"ts":"2026-11-29T01:02:03Z"}"#.into(),
                false,
            ),
            (
                r#"{"v":1.0,"seq":7,"ts":"2026-11-29T01:02:03Z"}"#.into(),
                false,
            ),
            (
                r#"{"v":1,"seq":07,"ts":"2026-11-29T01:02:03Z"}"#.into(),
                false,
            ),
            (
                r#"{"v":4294967296,"seq":7,"ts":"2026-11-29T01:02:03Z"}"#.into(),
                false,
            ),
            (doc(r#","pack":{"voltage_v":-}"#), false),
            (doc(r#","pack":{"voltage_v":1.}"#), false),
            (doc(r#","pack":{"voltage_v":.5}"#), false),
            (doc(r#","pack":{"voltage_v":"52"}"#), false),
            (
                doc(r#","alarms":["cell_over_voltage","no_such_alarm"]"#),
                false,
            ),
            (doc(r#","fets":{"charge":true}"#), false),
            (doc(r#","balancing":[65536]"#), false),
            (
                r#"{"v":1,"seq":7,"ts":"2026-02-30T01:02:03Z"}"#.into(),
                false,
            ),
            (doc("} x"), false),
            (doc(",}"), false),
        ];
        for (text, serde_takes) in cases {
            assert_eq!(read(text.as_bytes()), None, "{text}");
            assert_eq!(
                serde_document(text.as_bytes()).is_ok(),
                *serde_takes,
                "{text}"
            );
        }
        // Empty and non-array batches.
        assert_eq!(batch(b"[]"), None);
        assert_eq!(batch(doc("").as_bytes()), None);
    }

    /// The simulator's deterministic generator, so a failure reproduces, with the choices
    /// the document generator makes.
    struct Rng(crate::simulator::Rng);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0.next_u64()
        }

        fn below(&mut self, n: usize) -> usize {
            // n is small; the modulo's bias does not matter for a test's choices.
            (self.next() % n as u64) as usize
        }

        fn pick<'a>(&mut self, from: &[&'a str]) -> &'a str {
            from[self.below(from.len())]
        }

        fn one_in(&mut self, n: usize) -> bool {
            self.below(n) == 0
        }
    }

    /// A field of a generated object: its key, the odds of its presence (one in n), and its
    /// value's generator.
    type Field = (&'static str, usize, fn(&mut Generator) -> String);

    /// Documents of the schema with random fields, values, key orders and spacing, some
    /// valid, some not, in the forms each parser treats differently.
    struct Generator(Rng);

    const SPACE: &[&str] = &["", "", "", " ", "\n  ", "\t", "\r\n"];
    // Each kind of value: what the schema takes (some of it only serde reads: exponents,
    // 16 or more digits, escapes), and what it refuses, picked one time in ten.
    const NUMBERS: &[&str] = &[
        "0",
        "7",
        "-3",
        "52.41",
        "-12.5",
        "81.2",
        "3.281",
        "0.001",
        "100",
        "-0",
        "-0.0",
        "0.0",
        "2000",
        "2000.0000001",
        "123456789012345",
        "1234567890123456",
        "3.14159265358979",
        "0.30000000000000004",
        "1e3",
        "2.5E-2",
        "1E+2",
        "-1e-7",
    ];
    const BAD_NUMBERS: &[&str] = &[
        "1e400", "01", "-", "1.", ".5", "+1", "1.2.3", "NaN", "\"5\"", "true", "[]", "{}",
    ];
    const INTEGERS: &[&str] = &["0", "1", "42", "65535", "4294967295", "9223372036854775807"];
    const BAD_INTEGERS: &[&str] = &[
        "65536",
        "4294967296",
        "18446744073709551615",
        "18446744073709551616",
        "-1",
        "-0",
        "1.0",
        "01",
        "1e2",
        "null",
        "\"1\"",
    ];
    const TIMES: &[&str] = &[
        "\"2026-11-29T01:02:03Z\"",
        "\"2026-11-29T01:02:03.123456789Z\"",
        "\"2026-11-29T01:02:03+01:00\"",
        "\"2026-11-29T01:02:03.5-08:30\"",
        "\"2026-11-29T01:02:03\\u005a\"",
    ];
    const BAD_TIMES: &[&str] = &[
        "\"2026-02-30T00:00:00Z\"",
        "\"2026-11-29 01:02:03Z\"",
        "\"2026-11-29T01:02:03z\"",
        "\"yesterday\"",
        "\"\"",
        "1800000000",
        "null",
    ];
    const TEXTS: &[&str] = &[
        "\"simulator\"",
        "\"jbd-uart\"",
        "\"caf\u{e9} \u{1f50b}\"",
        "\"a\\\"b\"",
        "\"line\\n\"",
        "\"\"",
    ];
    const BAD_TEXTS: &[&str] = &["7", "true", "[]", "\"tab\there\""];
    const BOOLS: &[&str] = &["true", "false"];
    const BAD_BOOLS: &[&str] = &["null", "1", "\"true\"", "tru"];
    const AGGREGATES: &[&str] = &[
        "\"last\"",
        "\"mean\"",
        "\"min\"",
        "\"max\"",
        "\"min_max_mean\"",
    ];
    const BAD_AGGREGATES: &[&str] = &["\"median\"", "\"Last\"", "null", "0"];

    impl Generator {
        fn space(&mut self) -> &'static str {
            self.0.pick(SPACE)
        }

        /// One of `good`, or one time in ten one of `bad`.
        fn choose(&mut self, good: &[&str], bad: &[&str]) -> String {
            let from = if self.0.one_in(10) { bad } else { good };
            self.0.pick(from).to_owned()
        }

        fn text(&mut self) -> String {
            self.choose(TEXTS, BAD_TEXTS)
        }

        fn flag(&mut self) -> String {
            self.choose(BOOLS, BAD_BOOLS)
        }

        fn time(&mut self) -> String {
            self.choose(TIMES, BAD_TIMES)
        }

        fn list(&mut self, item: fn(&mut Self) -> String) -> String {
            if self.0.one_in(12) {
                return self.0.pick(&["null", "null", "{}", "3"]).to_owned();
            }
            let n = self.0.below(5);
            let items: Vec<String> = (0..n)
                .map(|_| format!("{}{}{}", self.space(), item(self), self.space()))
                .collect();
            format!("[{}]", items.join(","))
        }

        fn number(&mut self) -> String {
            if self.0.one_in(3) {
                // Random digits, often past what the reader takes.
                let digits: String = (0..1 + self.0.below(18))
                    .map(|_| char::from(b'0' + self.0.below(10) as u8))
                    .collect();
                let at = self.0.below(digits.len() + 1);
                let (int, frac) = digits.split_at(at);
                let int = if int.is_empty() { "0" } else { int };
                let sign = if self.0.one_in(3) { "-" } else { "" };
                let int = int.trim_start_matches('0');
                let int = if int.is_empty() { "0" } else { int };
                return if frac.is_empty() {
                    format!("{sign}{int}")
                } else {
                    format!("{sign}{int}.{frac}")
                };
            }
            self.choose(NUMBERS, BAD_NUMBERS)
        }

        fn integer(&mut self) -> String {
            if self.0.one_in(2) {
                return (self.0.next() >> self.0.below(64)).to_string();
            }
            self.choose(INTEGERS, BAD_INTEGERS)
        }

        fn alarm(&mut self) -> String {
            match self.0.below(20) {
                0 => "\"no_such_alarm\"".to_owned(),
                1 => "\"Cell_Over_Voltage\"".to_owned(),
                _ => format!(
                    "\"{}\"",
                    Alarm::ALL[self.0.below(Alarm::ALL.len())].as_str()
                ),
            }
        }

        /// An object with each of `fields` present at its odds (one in n), in a random
        /// order, sometimes one repeated or one the schema does not know.
        fn object(&mut self, fields: &[Field]) -> String {
            let mut parts: Vec<String> = Vec::new();
            for &(key, odds, value) in fields {
                if self.0.one_in(odds) {
                    let (a, b, c) = (self.space(), self.space(), self.space());
                    parts.push(format!("{a}\"{key}\"{b}:{c}{}", value(self)));
                }
            }
            if !parts.is_empty() && self.0.one_in(40) {
                let again = parts[self.0.below(parts.len())].clone();
                parts.push(again);
            }
            if self.0.one_in(40) {
                parts.push("\"unknown\":1".to_owned());
            }
            for i in (1..parts.len()).rev() {
                parts.swap(i, self.0.below(i + 1));
            }
            let s = self.space();
            format!("{{{s}{}{s}}}", parts.join(","))
        }

        fn pack(&mut self) -> String {
            self.object(&[
                ("voltage_v", 2, Self::number),
                ("current_a", 2, Self::number),
                ("soc_pct", 2, Self::number),
                ("soh_pct", 3, Self::number),
                ("remaining_ah", 3, Self::number),
                ("full_ah", 3, Self::number),
                ("cycles", 3, Self::integer),
            ])
        }

        fn extremes(&mut self) -> String {
            self.object(&[
                ("pack", 2, Self::pack),
                ("cells_v", 2, |g| g.list(Self::number)),
                ("temps_c", 2, |g| g.list(Self::number)),
            ])
        }

        fn message(&mut self) -> String {
            self.object(&[
                ("v", 1, |g| {
                    if g.0.one_in(20) {
                        g.integer()
                    } else {
                        "1".into()
                    }
                }),
                ("seq", 1, Self::integer),
                ("ts", 1, Self::time),
                ("pack", 2, Self::pack),
                ("cells_v", 2, |g| g.list(Self::number)),
                ("temps_c", 2, |g| g.list(Self::number)),
                ("alarms", 2, |g| g.list(Self::alarm)),
                ("warnings", 3, |g| g.list(Self::alarm)),
                ("balancing", 4, |g| g.list(Self::integer)),
                ("limits", 4, |g| {
                    g.object(&[
                        ("charge_voltage_v", 1, Self::number),
                        ("charge_current_a", 1, Self::number),
                        ("discharge_current_a", 1, Self::number),
                        ("discharge_voltage_v", 2, Self::number),
                    ])
                }),
                ("fets", 4, |g| {
                    g.object(&[("charge", 1, Self::flag), ("discharge", 1, Self::flag)])
                }),
                ("requests", 5, |g| {
                    g.object(&[
                        ("charge_enable", 1, Self::flag),
                        ("discharge_enable", 1, Self::flag),
                        ("force_charge", 1, Self::flag),
                        ("full_charge", 1, Self::flag),
                    ])
                }),
                ("source", 4, |g| {
                    g.object(&[
                        ("kind", 1, Self::text),
                        ("model", 2, Self::text),
                        ("manufacturer", 3, Self::text),
                        ("version", 3, Self::text),
                        ("manufactured", 3, Self::text),
                    ])
                }),
                ("window", 5, |g| {
                    g.object(&[
                        ("from", 1, Self::time),
                        ("samples", 1, Self::integer),
                        ("aggregate", 1, |g| g.choose(AGGREGATES, BAD_AGGREGATES)),
                        ("min", 2, Self::extremes),
                        ("max", 2, Self::extremes),
                    ])
                }),
            ])
        }
    }

    /// A copy of `doc` damaged once: cut short, a byte dropped, replaced or added.
    fn damage(rng: &mut Rng, doc: &[u8]) -> Vec<u8> {
        const BYTES: &[u8] = b"{}[]\",: -.0123456789eEntfa\\\x00\x7f\x80\xc3\xff";
        let mut out = doc.to_vec();
        let at = rng.below(out.len().max(1));
        let byte = BYTES[rng.below(BYTES.len())];
        match rng.below(4) {
            0 => out.truncate(at),
            1 if !out.is_empty() => {
                out.remove(at);
            }
            2 if !out.is_empty() => out[at] = byte,
            _ => out.insert(at, byte),
        }
        out
    }

    #[test]
    fn the_reader_agrees_with_serde_on_generated_and_damaged_documents() {
        let mut g = Generator(Rng(crate::simulator::Rng(0x5eed_f00d_7e1e_3e70)));
        let (mut taken, mut serde_ok, mut damaged_taken) = (0, 0, 0);
        for _ in 0..20_000 {
            let doc = g.message();
            serde_ok += usize::from(serde_document(doc.as_bytes()).is_ok());
            taken += usize::from(agrees(doc.as_bytes()));
            for _ in 0..3 {
                let bad = damage(&mut g.0, doc.as_bytes());
                damaged_taken += usize::from(agrees(&bad));
            }
        }
        // Not a vacuous agreement: many documents are valid, and the reader takes many of
        // them (not all: escapes, exponents and long numbers are serde's).
        assert!(serde_ok > 4_000, "serde took {serde_ok} documents");
        assert!(taken > 1_500, "{taken} taken of {serde_ok} serde took");
        assert!(
            damaged_taken > 100,
            "{damaged_taken} damaged documents still valid"
        );

        let mut batches_taken = 0;
        for _ in 0..5_000 {
            let docs: Vec<String> = (0..1 + g.0.below(3)).map(|_| g.message()).collect();
            let (a, b) = (g.space(), g.space());
            let text = format!("{a}[{b}{}{a}]{b}", docs.join(&format!("{a},{b}")));
            batches_taken += usize::from(agrees_on_batch(text.as_bytes()));
            agrees_on_batch(&damage(&mut g.0, text.as_bytes()));
        }
        assert!(batches_taken > 100, "{batches_taken} batches taken");
    }
}
