//! Telemetry rows.
//!
//! `telemetry` is keyed by `(device_id, seq)` and indexed by `(device_id, ts)`: a device's
//! readings sit together, which is what reads want. Writing into it directly is what group
//! commits do not want: a batch holding one reading from each of 64 devices changes a leaf
//! page of both B-trees per device, and SQLite writes every changed page whole to its WAL
//! (then again to the database at the checkpoint). Measured on the hub at 10,000 readings/s
//! from 100 devices: 64 rows per commit, about 8 KiB of pages written per 230-byte row, and
//! 43 µs of CPU per row in SQLite's thread, most of it in the kernel's page writes.
//!
//! So a commit appends to `telemetry_log` (no key: rows go to the table's right edge, a
//! batch fills a few adjacent pages), and once the log holds [`TELEMETRY_LOG_ROWS`] rows they
//! move into `telemetry` in one transaction, sorted by key: each device then gets its many
//! rows written onto its pages together. Reads take both tables. A row is never in both,
//! nor twice in the log: before appending, the writer drops rows whose key the log holds
//! (a set kept in memory, loaded at the first write) or `telemetry` holds (looked up in
//! the same transaction). Only the hub process writes telemetry, through one connection
//! (`SqliteStore::telemetry_tx`), under [`Logged`]'s lock, so the set follows the log.

use std::collections::{HashMap, HashSet};

use async_trait::async_trait;
use sqlx::Row;
use time::OffsetDateTime;

use super::SqliteStore;
use crate::model::to_ms;
use crate::rows::{self, to_json};
use crate::{StoreError, TelemetryRow, TelemetryStore};

/// Rows per multi-row statement (14 parameters a row stays well under SQLite's limit).
const INSERT_ROWS: usize = 64;

/// Rows in the log that start a move into `telemetry` (before the next append). Larger moves
/// put more rows of each device on a page; the log is read without an index, so reads of a
/// device's telemetry scan it: 16,384 rows are about 4 MiB.
pub const TELEMETRY_LOG_ROWS: usize = 16_384;

const COLUMNS: &str = "device_id, seq, ts, received_at, voltage_v, current_a, soc_pct, \
    soh_pct, temp_min_c, temp_max_c, cell_min_v, cell_max_v, alarms, body";

/// The keys of the rows in `telemetry_log`, by device.
#[derive(Debug, Default)]
pub(crate) struct Logged {
    by_device: HashMap<String, HashSet<i64>>,
    len: usize,
}

impl Logged {
    fn contains(&self, device_id: &str, seq: i64) -> bool {
        self.by_device
            .get(device_id)
            .is_some_and(|s| s.contains(&seq))
    }

    fn insert(&mut self, device_id: &str, seq: i64) {
        let seqs = match self.by_device.get_mut(device_id) {
            Some(s) => s,
            None => self.by_device.entry(device_id.to_owned()).or_default(),
        };
        if seqs.insert(seq) {
            self.len += 1;
        }
    }

    fn clear(&mut self) {
        self.by_device.clear();
        self.len = 0;
    }
}

impl SqliteStore {
    /// Takes the telemetry writer's lock, reading the log's keys the first time.
    async fn lock_logged(&self) -> Result<tokio::sync::MappedMutexGuard<'_, Logged>, StoreError> {
        let mut guard = self.logged.lock().await;
        if guard.is_none() {
            let mut logged = Logged::default();
            for r in sqlx::query("SELECT device_id, seq FROM telemetry_log")
                .fetch_all(&self.pool)
                .await?
            {
                logged.insert(r.try_get::<&str, _>(0)?, r.try_get(1)?);
            }
            *guard = Some(logged);
        }
        Ok(tokio::sync::MutexGuard::map(guard, |g| {
            g.get_or_insert_with(Logged::default)
        }))
    }

    /// Moves every row of the log into `telemetry`, in one transaction; returns how many
    /// moved. The writer does this by itself when the log holds [`TELEMETRY_LOG_ROWS`] rows.
    pub async fn compact_telemetry(&self) -> Result<u64, StoreError> {
        let mut logged = self.lock_logged().await?;
        self.compact_locked(&mut logged).await
    }

    async fn compact_locked(&self, logged: &mut Logged) -> Result<u64, StoreError> {
        let mut tx = self.telemetry_tx().await?;
        // `WHERE true` keeps SQLite's parser from reading ON CONFLICT as a join's ON. The
        // conflict clause never fires (the writer keeps the tables disjoint); it is there so
        // a move can never fail on a key.
        let moved = sqlx::query(sqlx::AssertSqlSafe(format!(
            "INSERT INTO telemetry ({COLUMNS}) SELECT {COLUMNS} FROM telemetry_log WHERE true \
             ORDER BY device_id, seq ON CONFLICT (device_id, seq) DO NOTHING"
        )))
        .execute(&mut *tx)
        .await?
        .rows_affected();
        // Without a WHERE clause SQLite drops the table's pages at once instead of row by row.
        sqlx::query("DELETE FROM telemetry_log")
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        logged.clear();
        Ok(moved)
    }
}

#[async_trait]
impl TelemetryStore for SqliteStore {
    async fn insert_telemetry(&self, rows: &[TelemetryRow]) -> Result<u64, StoreError> {
        let mut logged = self.lock_logged().await?;
        if logged.len >= TELEMETRY_LOG_ROWS
            && let Err(e) = self.compact_locked(&mut logged).await
        {
            // The rows stay in the log, where reads find them; the next batch tries again.
            tracing::error!(error = %e, rows = logged.len,
                "moving telemetry from the log into its table failed; the log keeps growing until a move succeeds");
        }
        // In key order, each key once.
        let mut fresh: Vec<&TelemetryRow> = rows
            .iter()
            .filter(|r| !logged.contains(&r.device_id, r.seq))
            .collect();
        fresh.sort_by(|a, b| (&a.device_id, a.seq).cmp(&(&b.device_id, b.seq)));
        fresh.dedup_by(|a, b| a.device_id == b.device_id && a.seq == b.seq);
        if fresh.is_empty() {
            return Ok(0);
        }
        let mut tx = self.telemetry_tx().await?;
        // Keys `telemetry` already holds: a reading re-sent after a lost PUBACK.
        let mut stored: HashSet<(String, i64)> = HashSet::new();
        for chunk in fresh.chunks(INSERT_ROWS) {
            // A join from the listed keys, each looked up by primary key (SQLite plans
            // `(device_id, seq) IN (VALUES ...)` as a scan of the whole table); CROSS JOIN
            // fixes the loop order.
            let mut q = sqlx::QueryBuilder::<sqlx::Sqlite>::new("SELECT t.device_id, t.seq FROM (");
            q.push_values(chunk, |mut b, r| {
                b.push_bind(&r.device_id).push_bind(r.seq);
            });
            q.push(
                ") AS v CROSS JOIN telemetry AS t \
                 WHERE t.device_id = v.column1 AND t.seq = v.column2",
            );
            for r in q.build().fetch_all(&mut *tx).await? {
                stored.insert((r.try_get(0)?, r.try_get(1)?));
            }
        }
        if !stored.is_empty() {
            fresh.retain(|r| !stored.contains(&(r.device_id.clone(), r.seq)));
        }
        // Multi-row statements: each statement is one round trip to SQLite's worker thread,
        // so 64 rows cost one instead of 64. Full chunks share one prepared statement.
        for chunk in fresh.chunks(INSERT_ROWS) {
            let mut alarms = Vec::with_capacity(chunk.len());
            for r in chunk {
                alarms.push(to_json(&r.alarms, "telemetry")?);
            }
            let mut q = sqlx::QueryBuilder::<sqlx::Sqlite>::new(format!(
                "INSERT INTO telemetry_log ({COLUMNS}) "
            ));
            q.push_values(chunk.iter().zip(alarms), |mut b, (r, alarms)| {
                b.push_bind(&r.device_id)
                    .push_bind(r.seq)
                    .push_bind(to_ms(r.ts))
                    .push_bind(to_ms(r.received_at))
                    .push_bind(r.voltage_v)
                    .push_bind(r.current_a)
                    .push_bind(r.soc_pct)
                    .push_bind(r.soh_pct)
                    .push_bind(r.temp_min_c)
                    .push_bind(r.temp_max_c)
                    .push_bind(r.cell_min_v)
                    .push_bind(r.cell_max_v)
                    .push_bind(alarms)
                    .push_bind(&r.body);
            });
            q.build().execute(&mut *tx).await?;
        }
        tx.commit().await?;
        for r in &fresh {
            logged.insert(&r.device_id, r.seq);
        }
        Ok(fresh.len() as u64)
    }

    async fn telemetry(
        &self,
        device_id: &str,
        since: OffsetDateTime,
        limit: u32,
    ) -> Result<Vec<TelemetryRow>, StoreError> {
        // A compound SELECT ordered as a whole: SQLite merges the two ordered arms and stops
        // at the limit, walking `telemetry` down its (device_id, ts) index.
        let mut rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM telemetry WHERE device_id = ?1 AND ts >= ?2 \
             UNION ALL \
             SELECT {COLUMNS} FROM telemetry_log WHERE device_id = ?1 AND ts >= ?2 \
             ORDER BY ts DESC, seq DESC LIMIT ?3"
        )))
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
