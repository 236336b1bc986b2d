//! Telemetry chunks: one device's readings from one dense commit, or from a move of the log,
//! stored as one row of `telemetry_chunks` (migration 0009).
//!
//! A commit holding many readings of each of its devices (a saturated hub: about 20 per
//! device in each of its 2,000-reading commits) wrote a row per reading into `telemetry`:
//! per reading, a descent of the key's B-tree, a record and a key of 14 columns. SQLite's
//! share of that was the largest single item of the hub's CPU per message at a fixed QoS 0
//! rate (docs/benchmarks.md, run AI). As a chunk, each device costs one row per commit,
//! whatever the readings in it: 28–30% less hub CPU per message at that rate, and 38–65%
//! more messages a second at QoS 0 and QoS 1 saturation (run AJ's A/B).
//!
//! A chunk's readings are an array, one array per reading with the columns of `telemetry`
//! after `device_id`, in key order:
//! `[seq, ts, received_at, voltage_v, current_a, soc_pct, soh_pct, temp_min_c, temp_max_c,
//! cell_min_v, cell_max_v, [alarm, ...], body]` (times in milliseconds, absent values
//! `null`). An array SQLite's JSON functions read rather than a layout of our own so that
//! SQL keeps seeing one row per reading: the `telemetry_readings` view expands chunks with
//! `json_each`. Chunks are written as SQLite's binary JSON (a BLOB; `jsonb` says why),
//! the body and alarms as raw text; chunks written before that are JSON text (TEXT), and
//! both are read. Numbers are written as the shortest text that reads back as the same
//! `f64` and read back with Rust's correctly-rounded parser, so a value read is the value
//! stored, bit for bit.

use serde_json::value::RawValue;

use super::jsonb::{self, Array, Element, Malformed, Reader};
use crate::model::{from_ms, to_ms};
use crate::{ByteString, StoreError, TelemetryRow};

/// The table's name in errors about its contents.
const TABLE: &str = "telemetry_chunks";

/// A reading's key after its device: `(ts, seq)`, ts in milliseconds as stored.
pub(crate) type Key = (i64, i64);

/// One reading as a chunk's JSON holds it, from a row or from the log's columns.
pub(crate) type Columns<'a> = (
    i64,
    i64,
    i64,
    Option<f64>,
    Option<f64>,
    Option<f64>,
    Option<f64>,
    Option<f64>,
    Option<f64>,
    Option<f64>,
    Option<f64>,
    &'a [String],
    &'a str,
);

/// A row's reading as a chunk holds it.
pub(crate) fn columns(r: &TelemetryRow) -> Columns<'_> {
    (
        r.seq,
        to_ms(r.ts),
        to_ms(r.received_at),
        r.voltage_v,
        r.current_a,
        r.soc_pct,
        r.soh_pct,
        r.temp_min_c,
        r.temp_max_c,
        r.cell_min_v,
        r.cell_max_v,
        &r.alarms,
        &r.body,
    )
}

/// A chunk's readings as stored: binary JSON, or JSON text in chunks written before it.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Stored<'a> {
    Jsonb(&'a [u8]),
    Text(&'a str),
}

/// Appends one device's readings, in key order, to `out` as a chunk's binary JSON array.
pub(crate) fn encode<'a>(readings: impl IntoIterator<Item = Columns<'a>>, out: &mut Vec<u8>) {
    let chunk = Array::begin_large(out);
    for reading in readings {
        encode_one(reading, out);
    }
    chunk.end(out);
}

/// Appends one device's readings, in key order, to `out` as `telemetry_chunks.readings`
/// holds them. The writer calls [`encode`]; this is for those who write chunks without the
/// store, such as the ingest benchmark's raw side, which stores what the hub stores.
pub fn encode_rows<'a>(rows: impl IntoIterator<Item = &'a TelemetryRow>, out: &mut Vec<u8>) {
    encode(rows.into_iter().map(columns), out);
}

/// Appends readings already encoded one by one ([`encode_one`]) to `out` as a chunk.
pub(crate) fn encode_encoded<'a>(readings: impl IntoIterator<Item = &'a [u8]>, out: &mut Vec<u8>) {
    let chunk = Array::begin_large(out);
    for reading in readings {
        out.extend_from_slice(reading);
    }
    chunk.end(out);
}

/// Appends one reading to `out`, as an element of a chunk's array.
pub(crate) fn encode_one(reading: Columns<'_>, out: &mut Vec<u8>) {
    let (seq, ts, received_at, v, i, soc, soh, tmin, tmax, cmin, cmax, alarms, body) = reading;
    let array = Array::begin(out);
    for n in [seq, ts, received_at] {
        jsonb::int(out, n);
    }
    for x in [v, i, soc, soh, tmin, tmax, cmin, cmax] {
        match x {
            Some(x) => jsonb::float(out, x),
            None => jsonb::null(out),
        }
    }
    let list = Array::begin(out);
    for alarm in alarms {
        jsonb::text(out, alarm);
    }
    list.end(out);
    jsonb::text(out, body);
    array.end(out);
}

/// A value column as the chunk holds it: the number's text, or `null`.
type Value<'a> = Option<&'a RawValue>;

/// One reading as the chunk holds it, the floats still as text.
type Reading<'a> = (
    i64,
    i64,
    i64,
    Value<'a>,
    Value<'a>,
    Value<'a>,
    Value<'a>,
    Value<'a>,
    Value<'a>,
    Value<'a>,
    Value<'a>,
    Vec<String>,
    String,
);

/// The readings of `device_id`'s chunk taken at or after `since_ms`, in key order.
pub(crate) fn decode(
    device_id: &str,
    chunk: Stored<'_>,
    since_ms: i64,
) -> Result<Vec<TelemetryRow>, StoreError> {
    match chunk {
        Stored::Jsonb(bytes) => decode_jsonb(device_id, bytes, since_ms)
            .map_err(|Malformed(why)| corrupt(format!("a chunk of {device_id:?}: {why}"))),
        Stored::Text(text) => decode_text(device_id, text, since_ms),
    }
}

/// The columns of a reading after its key, in the chunk's order, named for errors.
const VALUES: [&str; 8] = [
    "voltage_v",
    "current_a",
    "soc_pct",
    "soh_pct",
    "temp_min_c",
    "temp_max_c",
    "cell_min_v",
    "cell_max_v",
];

fn decode_jsonb(
    device_id: &str,
    bytes: &[u8],
    since_ms: i64,
) -> Result<Vec<TelemetryRow>, Malformed> {
    let mut top = Reader::new(bytes);
    let chunk = top.expect("the chunk's array")?;
    if chunk.kind != jsonb::kind::ARRAY || !top.is_done() {
        return Err(Malformed("not one array".into()));
    }
    let mut readings = top.inside(&chunk);
    let mut rows = Vec::new();
    // One copy of the id, shared by the rows.
    let device = ByteString::from(device_id);
    while let Some(reading) = readings.next()? {
        if reading.kind != jsonb::kind::ARRAY {
            return Err(Malformed(format!("a reading of type {}", reading.kind)));
        }
        let mut r = readings.inside(&reading);
        let (seq, ts) = (r.expect("seq")?, r.expect("ts")?);
        let received_at = r.expect("received_at")?;
        let mut values: [Element; 8] = Default::default();
        for (slot, name) in values.iter_mut().zip(VALUES) {
            *slot = r.expect(name)?;
        }
        let (alarms, body) = (r.expect("alarms")?, r.expect("body")?);
        if let Some(extra) = r.next()? {
            return Err(Malformed(format!(
                "a reading with an element after its body, of type {}",
                extra.kind
            )));
        }
        let ts = r.int(&ts, "ts")?;
        if ts < since_ms {
            continue;
        }
        let seq = r.int(&seq, "seq")?;
        let value = |i: usize| r.float(&values[i], VALUES[i]);
        if alarms.kind != jsonb::kind::ARRAY {
            return Err(Malformed(format!(
                "reading {seq}'s alarms are of type {}, not an array",
                alarms.kind
            )));
        }
        let mut list = r.inside(&alarms);
        let mut names = Vec::new();
        while let Some(a) = list.next()? {
            names.push(list.text(&a, "an alarm")?);
        }
        let stored_at = |ms: i64| match from_ms(ms, TABLE) {
            Ok(t) => Ok(t),
            Err(StoreError::Corrupt { why, .. }) => Err(Malformed(why)),
            Err(e) => Err(Malformed(e.to_string())),
        };
        rows.push(TelemetryRow {
            device_id: device.clone(),
            seq,
            ts: stored_at(ts)?,
            received_at: stored_at(r.int(&received_at, "received_at")?)?,
            voltage_v: value(0)?,
            current_a: value(1)?,
            soc_pct: value(2)?,
            soh_pct: value(3)?,
            temp_min_c: value(4)?,
            temp_max_c: value(5)?,
            cell_min_v: value(6)?,
            cell_max_v: value(7)?,
            alarms: names,
            body: r.text(&body, "body")?.into(),
        });
    }
    Ok(rows)
}

/// A chunk written as JSON text, before chunks were binary JSON.
fn decode_text(
    device_id: &str,
    text: &str,
    since_ms: i64,
) -> Result<Vec<TelemetryRow>, StoreError> {
    let readings: Vec<Reading<'_>> = serde_json::from_str(text)
        .map_err(|e| corrupt(format!("a chunk of {device_id:?}: {e}")))?;
    let value = |v: Value<'_>| -> Result<Option<f64>, StoreError> {
        v.map(|raw| {
            raw.get()
                .parse::<f64>()
                .map_err(|e| corrupt(format!("value {:?}: {e}", raw.get())))
        })
        .transpose()
    };
    let mut rows = Vec::with_capacity(readings.len());
    let device = ByteString::from(device_id);
    for (seq, ts, received_at, v, i, soc, soh, tmin, tmax, cmin, cmax, alarms, body) in readings {
        if ts < since_ms {
            continue;
        }
        rows.push(TelemetryRow {
            device_id: device.clone(),
            seq,
            ts: from_ms(ts, TABLE)?,
            received_at: from_ms(received_at, TABLE)?,
            voltage_v: value(v)?,
            current_a: value(i)?,
            soc_pct: value(soc)?,
            soh_pct: value(soh)?,
            temp_min_c: value(tmin)?,
            temp_max_c: value(tmax)?,
            cell_min_v: value(cmin)?,
            cell_max_v: value(cmax)?,
            alarms,
            body: body.into(),
        });
    }
    Ok(rows)
}

fn corrupt(why: String) -> StoreError {
    StoreError::Corrupt { table: TABLE, why }
}

/// A reading's key, as ordered in the tables.
pub(crate) fn key(r: &TelemetryRow) -> Key {
    (to_ms(r.ts), r.seq)
}

/// The newest `limit` readings of a device: those found in the table and the log (`new`),
/// then those of its chunks, offered newest last key first — `wants` says whether the next
/// chunk can still hold one of them, `add` takes its readings — and `finish` gives them
/// oldest first.
pub(crate) struct Newest {
    limit: usize,
    rows: Vec<TelemetryRow>,
}

impl Newest {
    pub(crate) fn new(found: Vec<TelemetryRow>, limit: usize) -> Newest {
        Newest { limit, rows: found }
    }

    /// Whether a chunk whose newest reading has key `last` may still hold one of the newest
    /// `limit`: chunks come newest last key first, so once this is false it stays false.
    pub(crate) fn wants(&mut self, last: Key) -> bool {
        if self.rows.len() < self.limit {
            return true;
        }
        self.settle();
        // Keys are unique across the tables: a chunk whose newest key is below the
        // `limit`th has nothing newer than it.
        self.rows.last().is_none_or(|r| key(r) < last)
    }

    pub(crate) fn add(&mut self, chunk: Vec<TelemetryRow>) {
        self.rows.extend(chunk);
    }

    fn settle(&mut self) {
        self.rows
            .sort_unstable_by_key(|r| std::cmp::Reverse(key(r)));
        self.rows.truncate(self.limit);
    }

    /// The readings, oldest first.
    pub(crate) fn finish(mut self) -> Vec<TelemetryRow> {
        self.settle();
        self.rows.reverse();
        self.rows
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::{Duration, OffsetDateTime};

    fn reading(seq: i64, ts_s: i64) -> TelemetryRow {
        let t = OffsetDateTime::from_unix_timestamp(1_800_000_000 + ts_s).unwrap();
        TelemetryRow {
            device_id: "gw-1".into(),
            seq,
            ts: t,
            received_at: t + Duration::milliseconds(250),
            // Values whose shortest text has 17 digits, and awkward ones.
            voltage_v: Some(0.1 + 0.2),
            current_a: Some(-1.0e-300),
            soc_pct: Some(f64::MAX),
            soh_pct: None,
            temp_min_c: Some(5e-324),
            temp_max_c: Some(-0.0),
            cell_min_v: Some(3.300_000_000_000_000_3),
            cell_max_v: Some(seq as f64 / 3.0),
            alarms: vec!["low_soc".into(), "quote\"and\\slash".into()],
            body: format!("{{\"seq\":{seq},\"text\":\"ünïcode \\\" \\n\"}}").into(),
        }
    }

    #[test]
    fn a_chunk_reads_back_bit_for_bit_and_from_its_start() {
        let rows: Vec<_> = (1..=5).map(|s| reading(s, s * 10)).collect();
        let mut bytes = Vec::new();
        encode(rows.iter().map(columns), &mut bytes);
        let back = decode("gw-1", Stored::Jsonb(&bytes), i64::MIN).unwrap();
        assert_eq!(back, rows);
        for (a, b) in back.iter().zip(&rows) {
            assert_eq!(
                a.temp_max_c.map(f64::to_bits),
                b.temp_max_c.map(f64::to_bits),
                "-0.0 keeps its sign"
            );
        }
        // From a start: the readings at or after it.
        let since = to_ms(rows[2].ts);
        let later = decode("gw-1", Stored::Jsonb(&bytes), since).unwrap();
        assert_eq!(later, rows[2..]);
        // Readings encoded one by one and put together make the same chunk.
        let one_by_one: Vec<Vec<u8>> = rows
            .iter()
            .map(|r| {
                let mut b = Vec::new();
                encode_one(columns(r), &mut b);
                b
            })
            .collect();
        let mut joined = Vec::new();
        encode_encoded(one_by_one.iter().map(Vec::as_slice), &mut joined);
        assert_eq!(joined, bytes);
    }

    #[test]
    fn a_chunk_of_json_text_written_before_binary_json_still_reads() {
        let r = reading(3, 30);
        let text = format!(
            "[[3,{},{},0.30000000000000004,-1e-300,1.7976931348623157e308,null,5e-324,-0.0,\
             3.3000000000000003,1.0,[\"low_soc\",\"quote\\\"and\\\\slash\"],{}]]",
            to_ms(r.ts),
            to_ms(r.received_at),
            serde_json::to_string(&r.body).unwrap()
        );
        let back = decode("gw-1", Stored::Text(&text), i64::MIN).unwrap();
        assert_eq!(back, vec![r]);
    }

    #[test]
    fn a_long_body_and_many_readings_take_the_longer_headers() {
        let mut rows: Vec<_> = (1..=300).map(|s| reading(s, s)).collect();
        rows[7].body = format!("{{\"pad\":\"{}\"}}", "x".repeat(70_000)).into();
        let mut bytes = Vec::new();
        encode(rows.iter().map(columns), &mut bytes);
        assert!(bytes.len() > 70_000 + 300 * 100);
        assert_eq!(
            decode("gw-1", Stored::Jsonb(&bytes), i64::MIN).unwrap(),
            rows
        );
    }

    #[test]
    fn a_damaged_chunk_is_an_error_naming_the_table() {
        for text in [
            "",
            "[",
            "[[1,2]]",
            "[[1,2,3,\"x\",null,null,null,null,null,null,null,[],\"b\"]]",
        ] {
            let err = decode("gw-1", Stored::Text(text), 0).unwrap_err();
            assert!(
                matches!(err, StoreError::Corrupt { table: TABLE, .. }),
                "{text:?}: {err}"
            );
        }
        let mut good = Vec::new();
        encode([columns(&reading(1, 1))], &mut good);
        let mut damaged: Vec<Vec<u8>> = vec![
            Vec::new(),
            good[..good.len() - 1].to_vec(),
            [&good[..], &[0x00]].concat(),
        ];
        // Each element of a reading replaced by one of another type, one at a time: a text
        // where a number goes, an integer where the alarms or the body go.
        let element = |write: &dyn Fn(&mut Vec<u8>)| {
            let mut b = Vec::new();
            write(&mut b);
            b
        };
        let mut parts = vec![
            element(&|b| jsonb::int(b, 1)),
            element(&|b| jsonb::int(b, 1_800_000_000_000)),
            element(&|b| jsonb::int(b, 1_800_000_000_250)),
        ];
        parts.extend((0..8).map(|i| element(&|b| jsonb::float(b, f64::from(i)))));
        parts.push(element(&|b| Array::begin(b).end(b)));
        parts.push(element(&|b| jsonb::text(b, "{}")));
        let chunk_of = |parts: &[Vec<u8>]| {
            let mut b = Vec::new();
            let chunk = Array::begin(&mut b);
            let reading = Array::begin(&mut b);
            for p in parts {
                b.extend_from_slice(p);
            }
            reading.end(&mut b);
            chunk.end(&mut b);
            b
        };
        assert_eq!(
            decode("gw-1", Stored::Jsonb(&chunk_of(&parts)), 0).unwrap()[0].seq,
            1,
            "the parts make a reading"
        );
        for i in 0..parts.len() {
            let mut wrong = parts.clone();
            wrong[i] = match i {
                11 | 12 => element(&|b| jsonb::int(b, 7)),
                _ => element(&|b| jsonb::text(b, "x")),
            };
            damaged.push(chunk_of(&wrong));
        }
        damaged.push(chunk_of(&parts[..12]));
        damaged.push(chunk_of(&[&parts[..], &parts[..1]].concat()));
        for bytes in &damaged {
            let err = decode("gw-1", Stored::Jsonb(bytes), 0).unwrap_err();
            assert!(
                matches!(err, StoreError::Corrupt { table: TABLE, .. }),
                "{bytes:?}: {err}"
            );
        }
    }

    #[test]
    fn the_newest_are_taken_across_the_table_and_chunks_and_the_walk_stops_early() {
        let r = |seq: i64| reading(seq, seq);
        // The table and log: 3 and 7, newest first; chunks: 8-10, 4-6, 1-2.
        let mut n = Newest::new(vec![r(7), r(3)], 5);
        assert!(n.wants(key(&r(10))));
        n.add((8..=10).map(r).collect());
        assert!(n.wants(key(&r(6))), "the 5 newest so far reach down to 3");
        n.add((4..=6).map(r).collect());
        assert!(!n.wants(key(&r(2))), "the 5 newest are 6-10");
        let got: Vec<i64> = n.finish().iter().map(|r| r.seq).collect();
        assert_eq!(got, vec![6, 7, 8, 9, 10]);
        // Once the limit is reached by newer readings, an older chunk is not wanted.
        let mut n = Newest::new(vec![r(7), r(3)], 4);
        n.add((8..=10).map(r).collect());
        assert!(!n.wants(key(&r(6))), "the 4 newest are 7-10");
        assert_eq!(n.finish().len(), 4);
        // Fewer than the limit anywhere: all of them.
        let mut n = Newest::new(vec![r(2)], 10);
        assert!(n.wants(key(&r(1))));
        n.add(vec![r(1)]);
        let got: Vec<i64> = n.finish().iter().map(|r| r.seq).collect();
        assert_eq!(got, vec![1, 2]);
    }
}
