//! Telemetry parsing: nanoseconds per document through `TelemetryMessage::parse_many`, the
//! call the hub makes for every telemetry publish (the quick reader, serde for what it
//! leaves), side by side in the same run with serde_json's derived parse of the same bytes
//! into the same type, validated alike (the path before the reader), and with a parse into an
//! untyped `serde_json::Value` (the reference: what any JSON-reading broker plugin pays).
//! docs/benchmarks.md reports the ratios.
//!
//! `cargo bench -p rampart-bms --bench parse`
//!
//! Documents: the load generator's 128-byte telemetry document (what `rampart bench` sends),
//! and a full document as the reference agent sends it (cells, temperatures, limits, alarms,
//! source). Bounded: 200,000 parses per side and round, five rounds alternating the sides;
//! the median round of each is reported.

use std::hint::black_box;
use std::time::Instant;

use rampart_bms::{SimulatedPack, SimulatorConfig, TelemetryMessage};
use rampart_loadgen::scenario::telemetry_payload;
use time::OffsetDateTime;

const PARSES: u32 = 200_000;
const ROUNDS: usize = 5;

fn loadgen_document() -> Vec<u8> {
    let mut doc = Vec::new();
    telemetry_payload(&mut doc, 123_456, "2026-11-28T18:04:05.123456789Z", 128);
    doc
}

fn full_document() -> Vec<u8> {
    let reading =
        SimulatedPack::new(SimulatorConfig::default()).snapshot(OffsetDateTime::UNIX_EPOCH);
    serde_json::to_vec(&TelemetryMessage::full(42, &reading)).expect("a document serialises")
}

fn ns_per_parse(f: &dyn Fn()) -> f64 {
    let start = Instant::now();
    for _ in 0..PARSES {
        f();
    }
    start.elapsed().as_nanos() as f64 / f64::from(PARSES)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    for (name, doc) in [
        ("loadgen 128 B", loadgen_document()),
        ("full", full_document()),
    ] {
        assert!(TelemetryMessage::parse_many(&doc).is_ok(), "{name} parses");
        let (mut typed, mut serde, mut value) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..ROUNDS {
            typed.push(ns_per_parse(&|| {
                black_box(TelemetryMessage::parse_many(black_box(&doc)).is_ok());
            }));
            serde.push(ns_per_parse(&|| {
                let msg = serde_json::from_slice::<TelemetryMessage>(black_box(&doc));
                black_box(msg.is_ok_and(|m| m.validate().is_ok()));
            }));
            value.push(ns_per_parse(&|| {
                black_box(serde_json::from_slice::<serde_json::Value>(black_box(&doc)).is_ok());
            }));
        }
        let (t, s, v) = (median(typed), median(serde), median(value));
        println!(
            "{name} ({} bytes): parse_many {t:.0} ns/doc, serde typed {s:.0}, \
             serde_json::Value {v:.0}; parse_many / Value {:.2}, / serde typed {:.2}",
            doc.len(),
            t / v,
            t / s
        );
    }
}
