//! `rampart events`.

use std::path::Path;

use super::when;
use crate::CliError;

pub async fn run(data_dir: &Path, id: &str, limit: u32, json: bool) -> Result<(), CliError> {
    let (_, _, store) = super::open(data_dir).await?;
    let rows = rampart_hub::ops::events(&*store, id, limit).await?;
    if json {
        // Each event as the device sent it, with when the hub received it.
        let out: Vec<serde_json::Value> = rows
            .iter()
            .map(|r| {
                let mut v: serde_json::Value =
                    serde_json::from_str(&r.body).unwrap_or(serde_json::Value::Null);
                if let Some(o) = v.as_object_mut() {
                    o.insert("device_id".into(), r.device_id.clone().into());
                    o.insert("received_at".into(), when(Some(r.received_at)).into());
                }
                v
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&out).unwrap_or_default());
        return Ok(());
    }
    if rows.is_empty() {
        println!("no events from {id}");
        return Ok(());
    }
    println!("{:25} {:>6} {:18}  DETAIL", "TIME", "SEQ", "KIND");
    for r in &rows {
        let mut detail: serde_json::Value =
            serde_json::from_str(&r.body).unwrap_or(serde_json::Value::Null);
        if let Some(o) = detail.as_object_mut() {
            for k in ["v", "seq", "ts", "kind"] {
                o.remove(k);
            }
        }
        println!(
            "{:25} {:>6} {:18}  {}",
            when(Some(r.ts)),
            r.seq,
            r.kind,
            detail
        );
    }
    Ok(())
}
