//! `rampart telemetry`.

use std::path::Path;
use std::time::Duration;

use rampart_store::TelemetryRow;
use time::OffsetDateTime;

use super::{num, when};
use crate::CliError;

/// A stored reading as printed by `--json`: the typed columns plus the document as sent.
#[derive(serde::Serialize)]
struct JsonRow<'a> {
    #[serde(flatten)]
    row: &'a TelemetryRow,
    reading: serde_json::Value,
}

pub async fn run(
    data_dir: &Path,
    id: &str,
    since: Duration,
    limit: u32,
    json: bool,
) -> Result<(), CliError> {
    let (_, _, store) = super::open(data_dir).await?;
    let since = OffsetDateTime::now_utc() - since;
    let rows = rampart_hub::ops::telemetry(&*store, id, since, limit).await?;
    if json {
        let out: Vec<JsonRow<'_>> = rows
            .iter()
            .map(|row| JsonRow {
                row,
                reading: serde_json::from_str(&row.body).unwrap_or(serde_json::Value::Null),
            })
            .collect();
        let mut rows_json: Vec<serde_json::Value> = Vec::with_capacity(out.len());
        for r in &out {
            let mut v = serde_json::to_value(r).unwrap_or_default();
            if let Some(o) = v.as_object_mut() {
                o.remove("body");
            }
            rows_json.push(v);
        }
        println!(
            "{}",
            serde_json::to_string_pretty(&rows_json).unwrap_or_default()
        );
        return Ok(());
    }
    if rows.is_empty() {
        println!("no telemetry from {id} since {}", when(Some(since)));
        return Ok(());
    }
    print_header();
    for r in &rows {
        print_row(r);
    }
    Ok(())
}

pub fn print_header() {
    println!(
        "{:25} {:16} {:>7} {:>10} {:>10} {:>8} {:>8} {:>15} {:>15}  ALARMS",
        "TIME", "DEVICE", "SEQ", "VOLTAGE", "CURRENT", "SOC", "SOH", "TEMP", "CELLS"
    );
}

pub fn print_row(r: &TelemetryRow) {
    let range = |a: Option<f64>, b: Option<f64>, d: usize, unit: &str| match (a, b) {
        (Some(a), Some(b)) => format!("{a:.d$}..{b:.d$} {unit}"),
        _ => "-".into(),
    };
    println!(
        "{:25} {:16} {:>7} {:>10} {:>10} {:>8} {:>8} {:>15} {:>15}  {}",
        when(Some(r.ts)),
        r.device_id,
        r.seq,
        num(r.voltage_v, 2, "V"),
        num(r.current_a, 1, "A"),
        num(r.soc_pct, 1, "%"),
        num(r.soh_pct, 1, "%"),
        range(r.temp_min_c, r.temp_max_c, 1, "°C"),
        range(r.cell_min_v, r.cell_max_v, 3, "V"),
        if r.alarms.is_empty() {
            "-".to_string()
        } else {
            r.alarms.join(",")
        },
    );
}
