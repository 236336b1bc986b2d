//! Telemetry rows.

use async_trait::async_trait;
use sqlx::{Postgres, Transaction};
use time::OffsetDateTime;

use super::PgStore;
use crate::model::to_ms;
use crate::rows::{self, to_json};
use crate::{Durable, StoreError, TelemetryRow, TelemetryStore};

/// The insert that skips stored readings: one statement whatever the batch size. Each column travels as one array
/// parameter and `UNNEST` turns the arrays back into rows, so the statement is prepared once
/// and a batch of 2,000 readings costs one round trip (a multi-row `VALUES` list would need
/// 14 parameters a row, a new statement text per batch size, and PostgreSQL's limit of
/// 65,535 parameters would split large batches).
const INSERT: &str = "INSERT INTO telemetry (device_id, seq, ts, received_at, voltage_v, \
     current_a, soc_pct, soh_pct, temp_min_c, temp_max_c, cell_min_v, cell_max_v, alarms, body) \
     SELECT * FROM UNNEST($1::text[], $2::int8[], $3::int8[], $4::int8[], $5::float8[], \
     $6::float8[], $7::float8[], $8::float8[], $9::float8[], $10::float8[], $11::float8[], \
     $12::float8[], $13::text[], $14::text[]) \
     ON CONFLICT (device_id, ts, seq) DO NOTHING";

/// The fast path: `COPY` of the batch (PostgreSQL's bulk load, about 1.4× the rows/s of the
/// `UNNEST` insert here). COPY has no `ON CONFLICT`: a batch holding a reading that is
/// already stored (re-sent after a lost PUBACK — rare) fails as a whole, changes nothing,
/// and goes through [`INSERT`] instead.
const COPY: &str = "COPY telemetry (device_id, seq, ts, received_at, voltage_v, current_a, \
     soc_pct, soh_pct, temp_min_c, temp_max_c, cell_min_v, cell_max_v, alarms, body) FROM STDIN";

/// Appends `text` as a COPY text-format field: backslash, tab, newline and carriage return
/// are escaped (the body is JSON, which may hold backslashes).
fn push_field(out: &mut String, text: &str) {
    for c in text.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\t' => out.push_str("\\t"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            c => out.push(c),
        }
    }
}

fn push_real(out: &mut String, v: Option<f64>) {
    use std::fmt::Write;
    match v {
        None => out.push_str("\\N"),
        Some(v) if v.is_nan() => out.push_str("NaN"),
        Some(v) if v.is_infinite() => out.push_str(if v > 0.0 { "Infinity" } else { "-Infinity" }),
        // Display of f64 is the shortest text that reads back as the same value, never in
        // exponent form: what float8's input accepts.
        Some(v) => {
            let _ = write!(out, "{v}");
        }
    }
}

/// The measured values of a reading, in the table's column order.
fn reals(r: &TelemetryRow) -> [Option<f64>; 8] {
    [
        r.voltage_v,
        r.current_a,
        r.soc_pct,
        r.soh_pct,
        r.temp_min_c,
        r.temp_max_c,
        r.cell_min_v,
        r.cell_max_v,
    ]
}

/// The batch as COPY text, one line a row.
fn copy_text(rows: &[&TelemetryRow]) -> Result<String, StoreError> {
    use std::fmt::Write;
    let mut out = String::with_capacity(rows.len() * 256);
    for r in rows {
        push_field(&mut out, &r.device_id);
        // Writing to a String cannot fail.
        let _ = write!(
            out,
            "\t{}\t{}\t{}",
            r.seq,
            to_ms(r.ts),
            to_ms(r.received_at)
        );
        for v in reals(r) {
            out.push('\t');
            push_real(&mut out, v);
        }
        out.push('\t');
        push_field(&mut out, &to_json(&r.alarms, "telemetry")?);
        out.push('\t');
        push_field(&mut out, &r.body);
        out.push('\n');
    }
    Ok(out)
}

/// A batch's COPY, done in a transaction that is still open: committing it makes the rows
/// visible and durable.
type Copied = (u64, Transaction<'static, Postgres>);

impl PgStore {
    /// COPY of the batch in a transaction of its own, left open for the caller to commit;
    /// `Ok(None)` when a row is already stored (the transaction is then rolled back).
    async fn copy_telemetry(&self, sorted: &[&TelemetryRow]) -> Result<Option<Copied>, StoreError> {
        let text = copy_text(sorted)?;
        let mut tx = self.pool.begin().await?;
        let mut copy = tx.copy_in_raw(COPY).await?;
        let sent = copy.send(text.into_bytes()).await;
        let done = match sent {
            Ok(_) => copy.finish().await,
            Err(e) => {
                let _ = copy.abort("send failed").await;
                Err(e)
            }
        };
        match done {
            Ok(n) => Ok(Some((n, tx))),
            // Dropping the transaction rolls it back before its connection is used again.
            Err(e) if crate::error::is_unique_violation(&e) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// The batch through [`INSERT`], skipping readings already stored; committed and flushed
    /// to the WAL when it returns (one statement is its own transaction).
    async fn insert_skipping_stored(&self, sorted: Vec<&TelemetryRow>) -> Result<u64, StoreError> {
        let n = sorted.len();
        let mut device = Vec::with_capacity(n);
        let mut seq = Vec::with_capacity(n);
        let mut ts = Vec::with_capacity(n);
        let mut received = Vec::with_capacity(n);
        let mut reals: [Vec<Option<f64>>; 8] = Default::default();
        let mut alarms = Vec::with_capacity(n);
        let mut body = Vec::with_capacity(n);
        for r in sorted {
            device.push(&*r.device_id);
            seq.push(r.seq);
            ts.push(to_ms(r.ts));
            received.push(to_ms(r.received_at));
            for (column, v) in reals.iter_mut().zip(self::reals(r)) {
                column.push(v);
            }
            alarms.push(to_json(&r.alarms, "telemetry")?);
            body.push(&*r.body);
        }
        let [
            voltage,
            current,
            soc,
            soh,
            temp_min,
            temp_max,
            cell_min,
            cell_max,
        ] = reals;
        let done = sqlx::query(INSERT)
            .bind(device)
            .bind(seq)
            .bind(ts)
            .bind(received)
            .bind(voltage)
            .bind(current)
            .bind(soc)
            .bind(soh)
            .bind(temp_min)
            .bind(temp_max)
            .bind(cell_min)
            .bind(cell_max)
            .bind(alarms)
            .bind(body)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected())
    }

    /// Stores a batch and returns the number of new rows with the future that commits them.
    ///
    /// The COPY path leaves its COMMIT (PostgreSQL's WAL flush, the wait that dominates a
    /// small batch) to the returned future, so the ingest writer loads its next batch on
    /// another pooled connection while this one's flush runs, as SQLite's writer commits
    /// during its previous batch's sync. A reading sent again while its first copy is still
    /// uncommitted makes the second COPY wait for the first transaction's outcome and then
    /// fail as a duplicate; the batch then goes through [`INSERT`], which skips it.
    async fn store_batch(&self, rows: &[TelemetryRow]) -> Result<(u64, Durable), StoreError> {
        if rows.is_empty() {
            return Ok((0, Box::pin(std::future::ready(Ok(())))));
        }
        // In key order, as on SQLite: a batch touches each index page once, and two nodes
        // inserting overlapping batches take their row locks in the same order (no deadlock).
        // The key is (device_id, ts, seq), ts in milliseconds as stored (migration 0008).
        let key = |r: &TelemetryRow| (to_ms(r.ts), r.seq);
        let mut sorted: Vec<&TelemetryRow> = rows.iter().collect();
        sorted.sort_by(|a, b| (&a.device_id, key(a)).cmp(&(&b.device_id, key(b))));
        // A batch that repeats a key inside itself would fail COPY every time.
        let unique = sorted
            .windows(2)
            .all(|w| (&w[0].device_id, key(w[0])) != (&w[1].device_id, key(w[1])));
        if unique && let Some((n, tx)) = self.copy_telemetry(&sorted).await? {
            let commit = async move { tx.commit().await.map_err(StoreError::from) };
            return Ok((n, Box::pin(commit)));
        }
        let n = self.insert_skipping_stored(sorted).await?;
        Ok((n, Box::pin(std::future::ready(Ok(())))))
    }
}

#[async_trait]
impl TelemetryStore for PgStore {
    async fn commit_telemetry(
        &self,
        rows: Vec<TelemetryRow>,
    ) -> Result<(u64, Durable), StoreError> {
        self.store_batch(&rows).await
    }

    async fn telemetry(
        &self,
        device_id: &str,
        since: OffsetDateTime,
        limit: u32,
    ) -> Result<Vec<TelemetryRow>, StoreError> {
        let mut rows = sqlx::query(
            "SELECT * FROM telemetry WHERE device_id = $1 AND ts >= $2 ORDER BY ts DESC, seq DESC LIMIT $3",
        )
        .bind(device_id)
        .bind(to_ms(since))
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(rows::telemetry)
        .collect::<Result<Vec<_>, _>>()?;
        rows.reverse();
        Ok(rows)
    }
}
