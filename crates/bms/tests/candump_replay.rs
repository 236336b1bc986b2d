//! Decodes a recorded candump log of a two-module Pylontech-style pack end to end through the
//! replay source.

use std::path::PathBuf;

use rampart_bms::candump::CandumpSource;
use rampart_bms::pylontech::Conventions;
use rampart_bms::{Alarm, Amps, BmsError, BmsSource, Celsius, Percent, Volts};

fn log() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/pylontech-us2000-2modules.log")
}

#[tokio::test]
async fn the_recorded_log_gives_one_reading_per_cycle() {
    let mut src = CandumpSource::open(&log(), Conventions::default(), false).expect("open");
    let mut readings = Vec::new();
    loop {
        match src.read().await {
            Ok(r) => readings.push(r),
            Err(BmsError::Timeout(_)) => break,
            Err(e) => panic!("{e}"),
        }
    }
    assert_eq!(readings.len(), 3);
    let expect = [
        (53.20, -12.3, 23.4, 81.0, vec![], vec![], true),
        (
            53.18,
            -12.5,
            23.5,
            81.0,
            vec![],
            vec![Alarm::OverTemperature],
            true,
        ),
        (
            53.25,
            5.0,
            23.5,
            80.0,
            vec![Alarm::PackUnderVoltage],
            vec![],
            false,
        ),
    ];
    for (r, (v, a, t, soc, alarms, warnings, discharge)) in readings.iter().zip(expect) {
        assert_eq!(r.pack.voltage, Volts(v));
        assert_eq!(r.pack.current, Amps(a));
        assert_eq!(r.temperatures, vec![Celsius(t)]);
        assert_eq!(r.pack.soc, Percent(soc));
        assert_eq!(r.pack.soh, Some(Percent(97.0)));
        assert_eq!(r.alarms, alarms);
        assert_eq!(r.warnings, warnings);
        let req = r.requests.expect("0x35C");
        assert!(req.charge_enable);
        assert_eq!(req.discharge_enable, discharge);
        assert_eq!(r.source.manufacturer.as_deref(), Some("PYLON"));
        let l = r.limits.as_ref().expect("0x351");
        assert_eq!(l.charge_voltage, Volts(56.8));
        assert_eq!(l.discharge_voltage, Some(Volts(44.8)));
    }
    // Readings carry the log's time (the 0x356 frame of each cycle).
    assert_eq!(readings[0].ts.unix_timestamp(), 1_763_900_000);
    assert_eq!(readings[2].ts.unix_timestamp(), 1_763_900_002);
    // The third cycle asks for a full charge (0x35C bit 3).
    assert!(readings[2].requests.expect("req").full_charge);
}

#[tokio::test]
async fn repeat_starts_over_and_a_broken_log_names_its_line() {
    let mut src = CandumpSource::open(&log(), Conventions::default(), true).expect("open");
    for _ in 0..7 {
        src.read().await.expect("repeating log never runs dry");
    }
    let dir = std::env::temp_dir().join(format!("rampart-candump-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let bad = dir.join("bad.log");
    std::fs::write(&bad, "(1.0) can0 355#51006100\n(2.0) can0 356#C81\n").expect("write");
    let e = CandumpSource::open(&bad, Conventions::default(), false).expect_err("refused");
    assert!(e.to_string().contains("bad.log:2"), "{e}");
    std::fs::remove_dir_all(&dir).ok();
}
