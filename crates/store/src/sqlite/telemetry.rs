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
//! batch fills a few adjacent pages), and once [`TELEMETRY_LOG_ROWS`] rows have been appended
//! they move into `telemetry`, sorted by key: each device then gets its many rows written onto
//! its pages together.
//!
//! A move is done in bounded steps, one per commit, inside the commit's transaction. A move in
//! one transaction was a burst of about 100 ms of CPU during which no commit could run (the
//! log and the table share one write lock): every PUBACK waiting on it waited that long, which
//! set the hub's p99 latency. A step copies at least [`MOVE_STEP_ROWS`] of the rows being
//! moved (taken in key order, found by rowid) and twice as many as its commit appends, so a
//! move ends before the log has doubled; once all are copied, steps delete them from the log
//! in rowid ranges. Its rows are in both tables until then: reads skip log rows whose key
//! `telemetry` holds, and a restart re-copies what a move had not finished (the copy ignores
//! keys already there).
//!
//! Nor is a reading stored twice: before appending, the writer drops rows whose key the log
//! holds (a set kept in memory, loaded at the first write) or `telemetry` holds (looked up in
//! the same transaction, only for readings at or below the highest seq `telemetry` may hold
//! for their device: a bound kept in memory, so new readings cost no lookup). Only the hub
//! process writes telemetry, through one connection (`SqliteStore::telemetry_tx`), under
//! [`Logged`]'s lock, so the set and the bounds follow the tables.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use async_trait::async_trait;
use sqlx::Row;
use time::OffsetDateTime;

use super::SqliteStore;
use crate::model::to_ms;
use crate::rows::{self, to_json};
use crate::{StoreError, TelemetryRow, TelemetryStore};

/// Rows per multi-row statement (14 parameters a row stays well under SQLite's limit).
const INSERT_ROWS: usize = 64;

/// Rows appended to the log that start a move into `telemetry`. Larger moves put more rows of
/// each device on a page; the log is read without an index, so reads of a device's telemetry
/// scan it: 16,384 rows are about 4 MiB.
pub const TELEMETRY_LOG_ROWS: usize = 16_384;

/// The fewest rows a step of a move copies. Smaller steps spread a move's work over more
/// commits, so fewer PUBACKs wait on it: at 29,000 QoS 1 msg/s from 100 devices the hub's
/// p99 latency measured 8–14 ms with 128, 11–14 ms with 512 and 17–21 ms with 2,048
/// (docs/benchmarks.md).
pub const MOVE_STEP_ROWS: usize = 128;

/// Rows a deleting step removes for each row a copying step copies: deleting a rowid range
/// frees whole pages, far cheaper per row than copying into two B-trees.
const DELETE_PER_COPY: usize = 8;

const COLUMNS: &str = "device_id, seq, ts, received_at, voltage_v, current_a, soc_pct, \
    soh_pct, temp_min_c, temp_max_c, cell_min_v, cell_max_v, alarms, body";

/// A row of the log: its key and where it is.
#[derive(Debug)]
struct LogRow {
    rowid: i64,
    /// Shared with [`Logged::by_device`]'s key: one allocation per device, not per row.
    device_id: Arc<str>,
    seq: i64,
}

/// The log's rows and the move under way, kept by the telemetry writer.
#[derive(Debug, Default)]
pub(crate) struct Logged {
    /// The keys of every row in `telemetry_log`, by device.
    by_device: HashMap<Arc<str>, HashSet<i64>>,
    /// Rows appended since the last move began, in rowid order.
    fresh: Vec<LogRow>,
    moving: Option<Move>,
    /// For each device seen, a bound on the seqs `telemetry` holds for it (`None`: none):
    /// a reading above it cannot be there, so the lookup for re-sent readings is skipped.
    /// Read from the table the first time a device's reading is written, raised by moves;
    /// deleting rows leaves it an upper bound.
    table_max: HashMap<Arc<str>, Option<i64>>,
}

/// A move: every row of the log up to `last_rowid`, copied in key order, then deleted.
#[derive(Debug)]
struct Move {
    /// The rows, in key order.
    rows: Vec<LogRow>,
    /// How many of `rows` are copied into `telemetry`.
    copied: usize,
    /// Log rows with a rowid below this are deleted.
    deleted_below: i64,
    last_rowid: i64,
}

/// What a step did, applied to [`Logged`] once its transaction has committed.
#[derive(Debug)]
enum Step {
    Copied(usize),
    Deleted(i64),
}

impl Logged {
    fn contains(&self, device_id: &str, seq: i64) -> bool {
        self.by_device
            .get(device_id)
            .is_some_and(|s| s.contains(&seq))
    }

    fn insert(&mut self, rowid: i64, device_id: &str, seq: i64) {
        let device_id = match self.by_device.get_key_value(device_id) {
            Some((id, _)) => id.clone(),
            None => Arc::from(device_id),
        };
        self.by_device
            .entry(device_id.clone())
            .or_default()
            .insert(seq);
        self.fresh.push(LogRow {
            rowid,
            device_id,
            seq,
        });
    }

    /// Starts moving every row appended so far, if none is being moved and `at_least` have
    /// been appended.
    fn start_move(&mut self, at_least: usize) {
        if self.moving.is_some() || self.fresh.is_empty() || self.fresh.len() < at_least {
            return;
        }
        let mut rows = std::mem::take(&mut self.fresh);
        let (first, last) = (rows[0].rowid, rows[rows.len() - 1].rowid);
        rows.sort_unstable_by(|a, b| (&a.device_id, a.seq).cmp(&(&b.device_id, b.seq)));
        self.moving = Some(Move {
            rows,
            copied: 0,
            deleted_below: first,
            last_rowid: last,
        });
    }

    /// Applies a committed step; returns how many rows left the log with it.
    fn apply(&mut self, step: Step) -> usize {
        let Some(m) = self.moving.as_mut() else {
            return 0;
        };
        match step {
            Step::Copied(n) => {
                let end = m.rows.len().min(m.copied.saturating_add(n));
                for r in &m.rows[m.copied..end] {
                    if let Some(max) = self.table_max.get_mut(&r.device_id) {
                        *max = Some(max.map_or(r.seq, |x| x.max(r.seq)));
                    }
                }
                m.copied = end;
                0
            }
            Step::Deleted(below) => {
                m.deleted_below = below;
                if below <= m.last_rowid {
                    return 0;
                }
                let Some(m) = self.moving.take() else {
                    return 0;
                };
                for r in &m.rows {
                    if let Some(seqs) = self.by_device.get_mut(&r.device_id) {
                        seqs.remove(&r.seq);
                        if seqs.is_empty() {
                            self.by_device.remove(&r.device_id);
                        }
                    }
                }
                m.rows.len()
            }
        }
    }
}

impl SqliteStore {
    /// Takes the telemetry writer's lock, reading the log's rows the first time.
    async fn lock_logged(&self) -> Result<tokio::sync::MappedMutexGuard<'_, Logged>, StoreError> {
        let mut guard = self.logged.lock().await;
        if guard.is_none() {
            // A move the last process did not finish starts again with the next commit: its
            // rows are all in the log still, and copying ignores keys already copied.
            let mut logged = Logged::default();
            for r in sqlx::query("SELECT rowid, device_id, seq FROM telemetry_log ORDER BY rowid")
                .fetch_all(&self.pool)
                .await?
            {
                logged.insert(r.try_get(0)?, r.try_get::<&str, _>(1)?, r.try_get(2)?);
            }
            *guard = Some(logged);
        }
        Ok(tokio::sync::MutexGuard::map(guard, |g| {
            g.get_or_insert_with(Logged::default)
        }))
    }

    /// Moves every row of the log into `telemetry` (finishing a move under way first);
    /// returns how many rows left the log. The writer moves rows by itself as it commits.
    pub async fn compact_telemetry(&self) -> Result<u64, StoreError> {
        let mut logged = self.lock_logged().await?;
        let mut moved = 0;
        loop {
            logged.start_move(1);
            if logged.moving.is_none() {
                return Ok(moved as u64);
            }
            let mut tx = self.telemetry_tx().await?;
            let step = move_step(&mut tx, &logged, usize::MAX).await?;
            tx.commit().await?;
            if let Some(step) = step {
                moved += logged.apply(step);
            }
        }
    }
}

/// Does the next step of the move under way, copying at most `copy` rows (deleting at most
/// [`DELETE_PER_COPY`] times as many); `None` if no move is under way.
async fn move_step(
    tx: &mut sqlx::SqliteConnection,
    logged: &Logged,
    copy: usize,
) -> Result<Option<Step>, StoreError> {
    let Some(m) = logged.moving.as_ref() else {
        return Ok(None);
    };
    if m.copied < m.rows.len() {
        let rows = &m.rows[m.copied..m.rows.len().min(m.copied.saturating_add(copy))];
        // The rowids as one JSON array: a single parameter, looked up row by row.
        let mut ids = String::with_capacity(rows.len() * 8 + 2);
        ids.push('[');
        for (i, r) in rows.iter().enumerate() {
            if i > 0 {
                ids.push(',');
            }
            ids.push_str(&r.rowid.to_string());
        }
        ids.push(']');
        // `WHERE true` keeps SQLite's parser from reading ON CONFLICT as a join's ON. The
        // conflict clause fires only when a restart copies again what a move had copied.
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "INSERT INTO telemetry ({COLUMNS}) SELECT {COLUMNS} FROM telemetry_log \
             WHERE rowid IN (SELECT value FROM json_each(?1)) \
             ORDER BY device_id, seq ON CONFLICT (device_id, seq) DO NOTHING"
        )))
        .bind(ids)
        .execute(&mut *tx)
        .await?;
        return Ok(Some(Step::Copied(rows.len())));
    }
    let span = i64::try_from(copy.saturating_mul(DELETE_PER_COPY)).unwrap_or(i64::MAX);
    let below = m
        .deleted_below
        .saturating_add(span)
        .min(m.last_rowid.saturating_add(1));
    sqlx::query("DELETE FROM telemetry_log WHERE rowid < ?1")
        .bind(below)
        .execute(&mut *tx)
        .await?;
    Ok(Some(Step::Deleted(below)))
}

#[async_trait]
impl TelemetryStore for SqliteStore {
    async fn insert_telemetry(&self, rows: &[TelemetryRow]) -> Result<u64, StoreError> {
        let mut logged = self.lock_logged().await?;
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
        // First a step of the move under way, if any, in the same transaction as the rows
        // appended below. Not in a savepoint, which would journal every page the step
        // changes once more: if the step fails, its transaction is rolled back whole
        // (nothing else is in it yet) and the rows are appended in a fresh one; the next
        // commit tries the step again.
        logged.start_move(TELEMETRY_LOG_ROWS);
        let mut tx = self.telemetry_tx().await?;
        let mut step = None;
        if logged.moving.is_some() {
            match move_step(&mut tx, &logged, MOVE_STEP_ROWS.max(2 * fresh.len())).await {
                Ok(s) => step = s,
                Err(e) => {
                    self.move_failures
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    tracing::error!(error = %e, "a step moving telemetry from the log into its table failed; the readings stay in the log, and the next commit tries again");
                    tx.rollback().await?;
                    tx = self.telemetry_tx().await?;
                }
            }
        }
        // Keys `telemetry` already holds: a reading re-sent after a lost PUBACK. Only a
        // reading at or below its device's bound can be one; devices not seen before get
        // their bound read first, all in one statement.
        let mut unknown: Vec<&str> = fresh
            .iter()
            .map(|r| r.device_id.as_str())
            .filter(|d| !logged.table_max.contains_key(*d))
            .collect();
        unknown.dedup();
        for chunk in unknown.chunks(INSERT_ROWS) {
            let mut q = sqlx::QueryBuilder::<sqlx::Sqlite>::new(
                "SELECT v.column1, (SELECT MAX(t.seq) FROM telemetry AS t \
                 WHERE t.device_id = v.column1) FROM (",
            );
            q.push_values(chunk, |mut b, d| {
                b.push_bind(*d);
            });
            q.push(") AS v");
            for r in q.build().fetch_all(&mut *tx).await? {
                let id: &str = r.try_get(0)?;
                let max: Option<i64> = r.try_get(1)?;
                logged.table_max.insert(Arc::from(id), max);
            }
        }
        let maybe_stored: Vec<&TelemetryRow> = fresh
            .iter()
            .copied()
            .filter(|r| {
                logged
                    .table_max
                    .get(r.device_id.as_str())
                    .is_none_or(|max| max.is_some_and(|m| r.seq <= m))
            })
            .collect();
        let mut stored: HashSet<(String, i64)> = HashSet::new();
        for chunk in maybe_stored.chunks(INSERT_ROWS) {
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
        let mut appended = Vec::with_capacity(fresh.len());
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
            let last = q.build().execute(&mut *tx).await?.last_insert_rowid();
            // The log's rows are only ever deleted from its low end, so SQLite gives each new
            // row the largest rowid plus one, in the order of the VALUES list (it would pick
            // at random only past rowid 2^63 - 1).
            let first = last - (chunk.len() as i64 - 1);
            appended.extend(chunk.iter().zip(first..).map(|(r, id)| (id, *r)));
        }
        tx.commit().await?;
        for (rowid, r) in appended {
            logged.insert(rowid, &r.device_id, r.seq);
        }
        if let Some(step) = step {
            logged.apply(step);
        }
        Ok(fresh.len() as u64)
    }

    async fn telemetry(
        &self,
        device_id: &str,
        since: OffsetDateTime,
        limit: u32,
    ) -> Result<Vec<TelemetryRow>, StoreError> {
        // `telemetry_readings` (migration 0007) is a compound SELECT of both tables, the log's
        // arm skipping rows a move has copied; SQLite pushes the conditions into both arms
        // and merges them in order, walking `telemetry` down its (device_id, ts) index and
        // stopping at the limit.
        let mut rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM telemetry_readings WHERE device_id = ?1 AND ts >= ?2 \
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

    fn telemetry_upkeep_failures(&self) -> u64 {
        self.move_failures
            .load(std::sync::atomic::Ordering::Relaxed)
    }
}
