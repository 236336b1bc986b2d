//! The SQLite telemetry writer: one thread, one connection, every telemetry write.
//!
//! `telemetry` is keyed by `(device_id, ts, seq)` (migration 0008; until then by
//! `(device_id, seq)` with an index on `(device_id, ts)` beside it, a second B-tree every row
//! was written into): a device's readings sit together in time order, which is what reads
//! want, and a document re-sent after a lost PUBACK carries the same key. Writing into it
//! directly is what group commits do not want: a batch holding one reading from each of 64
//! devices changes a leaf page per device, and SQLite writes every changed page whole to its
//! WAL (then again to the database at the checkpoint). Measured on the hub at 10,000
//! readings/s from 100 devices, with the two B-trees: 64 rows per commit, about 8 KiB of
//! pages written per 230-byte row, and 43 µs of CPU per row in SQLite's thread, most of it
//! in the kernel's page writes.
//!
//! So a commit appends to `telemetry_log` (no key: rows go to the table's right edge, a
//! batch fills a few adjacent pages), and once [`TELEMETRY_LOG_ROWS`] rows have been appended
//! they move out, sorted by key: a device's rows as chunks (`chunks` says why; two or more,
//! [`MOVE_CHUNK_MIN_READINGS`]), a device's one row into `telemetry`. A device with many
//! readings in a commit ([`DIRECT_ROWS_PER_DEVICE`]) has them written as one chunk at once,
//! skipping the log.
//!
//! A move is done in bounded steps, one per commit, inside the commit's transaction. A move in
//! one transaction was a burst of about 100 ms of CPU during which no commit could run (the
//! log and the table share one write lock): every PUBACK waiting on it waited that long, which
//! set the hub's p99 latency. A step writes out at least [`MOVE_STEP_ROWS`] of the rows being
//! moved (taken in key order) and twice as many as its commit appends, so a move ends before
//! the log has doubled; once all are written out, steps delete them from the log in rowid
//! ranges. Each step records in `telemetry_move` the key it got to (migration 0010): the rows
//! written out are in the log too until deleted, and reads skip them there by that record; a
//! restart resumes the move after it, so no reading is written twice (a chunk written again
//! could have other bounds, and no key conflict would stop it).
//!
//! Nor is a reading stored twice: before appending, the writer drops rows whose key the log
//! holds (a set kept in memory, loaded when the connection opens) or `telemetry` or a chunk
//! holds (looked up in the same transaction, only for readings at or below the latest key
//! those may hold for their device: a bound kept in memory, so new readings cost no lookup).
//! Only the hub process writes telemetry, through this thread, so the set and the bounds
//! follow the tables.
//!
//! Why a thread of its own, with rusqlite rather than sqlx: every sqlx statement is a round
//! trip to its connection's worker thread — two thread switches — and a commit took four of
//! them (BEGIN, a step of a move, the append, COMMIT), each costing the hub more CPU than the
//! statement inside it (docs/benchmarks.md). Here a commit is one message to this thread and
//! one reply, and the statements run where the connection is. Both libraries link the same
//! SQLite (libsqlite3-sys), so the two connections share its locks like any two connections
//! of one process.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::time::Duration;

use rusqlite::{Connection, OpenFlags, OptionalExtension, TransactionBehavior};
use tokio::sync::oneshot;

use super::Synchronous;
use super::chunks::{self, Key};
use super::wal_sync::{SyncCounters, WalSyncer};
use crate::model::to_ms;
use crate::rows::to_json;
use crate::{Durable, StoreError, TelemetryRow};

/// Rows appended to the log that start a move out of it. Larger moves put more rows of each
/// device in a chunk or on a page; the log is read without an index, so reads of a device's
/// telemetry scan it: 16,384 rows are about 4 MiB.
pub const TELEMETRY_LOG_ROWS: usize = 16_384;

/// The fewest rows a step of a move copies. Smaller steps spread a move's work over more
/// commits, so fewer PUBACKs wait on it: at 29,000 QoS 1 msg/s from 100 devices the hub's
/// p99 latency measured 8–14 ms with 128, 11–14 ms with 512 and 17–21 ms with 2,048
/// (docs/benchmarks.md).
pub const MOVE_STEP_ROWS: usize = 128;

/// Rows a deleting step removes for each row a copying step copies: deleting a rowid range
/// frees whole pages, far cheaper per row than copying into two B-trees.
const DELETE_PER_COPY: usize = 8;

/// Readings of one device in a commit from which they are written as one chunk, skipping the
/// log: the log's append, copy and delete are saved, and SQLite writes one row for them all.
/// This happens when few devices send fast (a saturated benchmark: 2,000 rows from 100
/// devices per commit; at a fixed QoS 0 rate, a commit every 200 ms or 32,000 readings); a
/// fleet of many devices sending now and then commits a reading or two per device, and goes
/// through the log, whose moves give `telemetry` pages of many readings each
/// (docs/storage.md). Until chunks, a commit averaging this many per device wrote its rows
/// straight into `telemetry`.
pub const DIRECT_ROWS_PER_DEVICE: usize = 16;

/// The most readings one chunk holds; a device with more in a move, or in a dense commit,
/// gets several. A step's work is bounded by it (the commit a step runs in waits for it, and
/// so do its PUBACKs), and so is the text a read parses for a device's newest reading: 1,024
/// readings are about 250 KiB. A commit of only QoS 0 rows holds up to
/// `storage.qos0_ingest_batch` (32,000 by default) of them, all of one device's if it alone
/// sends: without this bound, that would be one chunk of about 6 MiB.
pub const CHUNK_READINGS: usize = 1_024;

/// The fewest readings of one device in a move's step that it writes as a chunk; a device
/// with fewer (one) has its row copied into `telemetry`. Far below
/// [`DIRECT_ROWS_PER_DEVICE`] on purpose: a fleet of many devices sending slowly (5,000 at
/// 4 readings a second) has about 3 rows of each in a move, and with the commits' bound of 16
/// every one was copied row by row, each looked up in the log by rowid. Written as chunks,
/// the writer thread's share of the hub's CPU samples fell from 29% to 18% and the hub's
/// file reads by 72–81% (docs/benchmarks.md, "A fleet of many slow devices"). Not one: a
/// chunk is a record and an index entry, a row of `telemetry` one record in its keyed B-tree,
/// so a single reading stays a row (by count of writes, not measured).
pub const MOVE_CHUNK_MIN_READINGS: usize = 2;

/// Rows per multi-row append (14 parameters a row stays well under SQLite's limit of 32,766).
const INSERT_ROWS: usize = 64;

/// Chunks per multi-row insert.
const INSERT_CHUNKS: usize = 64;

/// A chunk's columns.
const CHUNK_COLUMNS: &str = "device_id, ts_last, seq_last, ts_first, n_readings, readings";

/// How long a statement waits for another connection's write lock (a registry write, a
/// `rampart` command run beside the hub) before failing with SQLITE_BUSY.
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

/// The table's columns, in the order of both tables.
const COLUMNS: &str = "device_id, seq, ts, received_at, voltage_v, current_a, soc_pct, \
    soh_pct, temp_min_c, temp_max_c, cell_min_v, cell_max_v, alarms, body";

/// The writer's handle: cheap to clone; the thread ends when the last clone is dropped.
#[derive(Debug, Clone)]
pub(crate) struct TelemetryWriter {
    commands: mpsc::Sender<Command>,
    /// Steps of moves that failed, for the hub's metrics.
    move_failures: Arc<AtomicU64>,
    /// The WAL syncs made after commits (`synchronous = full`). A failed sync fails its
    /// batches, which the ingest queue logs and counts; the tests read these.
    #[cfg_attr(not(test), expect(dead_code, reason = "read by the tests"))]
    sync_counters: Arc<SyncCounters>,
}

/// What the thread is asked to do; each carries where its answer goes.
enum Command {
    /// `committed` gets the count of new rows once the transaction commits; `durable` its
    /// outcome once the WAL is synced (at once at `synchronous = normal`, or when the commit
    /// failed: then `committed` has the error).
    Insert {
        rows: Vec<TelemetryRow>,
        committed: oneshot::Sender<Result<u64, StoreError>>,
        durable: oneshot::Sender<Result<(), StoreError>>,
    },
    Compact {
        done: oneshot::Sender<Result<u64, StoreError>>,
    },
    /// Closes the connection for good: later commands are refused, as the pool refuses
    /// queries once closed.
    Close { done: oneshot::Sender<()> },
}

impl TelemetryWriter {
    /// Starts the thread. Its connection is opened by the first command, so `rampart`
    /// commands that only read never open it nor load the log's keys.
    pub(crate) fn spawn(
        path: PathBuf,
        synchronous: Synchronous,
        nice: i32,
    ) -> Result<Self, StoreError> {
        let (commands, received) = mpsc::channel();
        let move_failures = Arc::new(AtomicU64::new(0));
        let sync_counters = Arc::new(SyncCounters::default());
        // Durable commits are synced on a thread of their own (`wal_sync` says why).
        let syncer = match synchronous {
            Synchronous::Full => Some(WalSyncer::spawn(&path, nice, sync_counters.clone())?),
            Synchronous::Normal => None,
        };
        let thread = Thread {
            path,
            syncer,
            open: None,
            closed: false,
            move_failures: Arc::clone(&move_failures),
        };
        std::thread::Builder::new()
            // At most 15 bytes: the kernel's limit on a thread's name.
            .name("telemetry-write".into())
            .spawn(move || {
                lower_priority(nice);
                thread.run(received)
            })
            .map_err(|e| {
                StoreError::Config(format!("cannot start the telemetry writer thread: {e}"))
            })?;
        Ok(TelemetryWriter {
            commands,
            move_failures,
            sync_counters,
        })
    }

    /// Stores the readings not stored yet, in one transaction; returns once it is committed,
    /// with how many were new and what resolves once they are durable.
    pub(crate) async fn insert(
        &self,
        rows: Vec<TelemetryRow>,
    ) -> Result<(u64, Durable), StoreError> {
        let (committed, answer) = oneshot::channel();
        let (durable, synced) = oneshot::channel();
        self.send(Command::Insert {
            rows,
            committed,
            durable,
        })?;
        let inserted = answer.await.map_err(|_| StoreError::WriterStopped)??;
        let synced = async move { synced.await.map_err(|_| StoreError::WriterStopped)? };
        Ok((inserted, Box::pin(synced)))
    }

    /// Moves every row of the log out of it; returns how many rows left the log.
    pub(crate) async fn compact(&self) -> Result<u64, StoreError> {
        let (done, answer) = oneshot::channel();
        self.send(Command::Compact { done })?;
        answer.await.map_err(|_| StoreError::WriterStopped)?
    }

    /// Closes the writer's connection for good, waiting for the commands before it.
    pub(crate) async fn close(&self) {
        let (done, answer) = oneshot::channel();
        if self.send(Command::Close { done }).is_ok() {
            let _ = answer.await;
        }
    }

    pub(crate) fn move_failures(&self) -> u64 {
        self.move_failures.load(Ordering::Relaxed)
    }

    /// The WAL syncs made so far, and how many failed.
    #[cfg(test)]
    pub(crate) fn syncs(&self) -> (u64, u64) {
        (
            self.sync_counters.syncs.load(Ordering::Relaxed),
            self.sync_counters.failures.load(Ordering::Relaxed),
        )
    }

    fn send(&self, command: Command) -> Result<(), StoreError> {
        self.commands
            .send(command)
            .map_err(|_| StoreError::WriterStopped)
    }
}

/// Gives the calling thread the nice value `nice` (0 to 19): on Linux a thread has its own.
/// Raising it needs no privilege; a failure (a sandbox refusing the call) leaves the
/// thread as it was, which costs latency, not data, so it is logged and not fatal.
pub(super) fn lower_priority(nice: i32) {
    if nice <= 0 {
        return;
    }
    #[cfg(target_os = "linux")]
    match rustix::process::setpriority_process(Some(rustix::thread::gettid()), nice.min(19)) {
        Ok(()) => tracing::debug!(nice, "telemetry writer thread runs at a lower priority"),
        Err(e) => tracing::warn!(nice, error = %e,
            "cannot lower a telemetry writer thread's priority; commits compete with routing for the CPU"),
    }
    #[cfg(not(target_os = "linux"))]
    tracing::debug!(nice, "thread priorities are set on Linux only");
}

/// The thread's state.
struct Thread {
    path: PathBuf,
    /// With `synchronous = full`: where a commit's answer waits for the WAL's sync.
    syncer: Option<WalSyncer>,
    open: Option<Writer>,
    closed: bool,
    move_failures: Arc<AtomicU64>,
}

impl Thread {
    fn run(mut self, commands: mpsc::Receiver<Command>) {
        while let Ok(command) = commands.recv() {
            match command {
                Command::Insert {
                    rows,
                    committed,
                    durable,
                } => {
                    let result = self.writer().and_then(|w| w.insert(&rows));
                    // A submitter that went away no longer needs the answers.
                    match (&self.syncer, result) {
                        // Also when nothing was new: the rows found stored may belong to a
                        // commit whose sync has not returned yet.
                        (Some(syncer), Ok(inserted)) => {
                            let _ = committed.send(Ok(inserted));
                            syncer.answer_when_synced(durable);
                        }
                        (None, Ok(inserted)) => {
                            let _ = committed.send(Ok(inserted));
                            let _ = durable.send(Ok(()));
                        }
                        (_, Err(e)) => {
                            let _ = committed.send(Err(e));
                        }
                    }
                }
                Command::Compact { done } => {
                    let _ = done.send(self.writer().and_then(Writer::compact));
                }
                Command::Close { done } => {
                    self.open = None;
                    self.closed = true;
                    let _ = done.send(());
                }
            }
        }
    }

    /// The open connection, opening it (and reading the log's keys) if need be; a failure
    /// is the command's answer, and the next command tries again.
    fn writer(&mut self) -> Result<&mut Writer, StoreError> {
        if self.closed {
            return Err(StoreError::Closed);
        }
        let writer = match self.open.take() {
            Some(w) => w,
            None => Writer::open(&self.path, &self.move_failures)?,
        };
        Ok(self.open.insert(writer))
    }
}

/// The connection and what the writer keeps of the log.
struct Writer {
    conn: Connection,
    logged: Logged,
    append_sql: InsertSql,
    /// Into `telemetry_chunks`, for devices with readings enough to skip the log.
    chunk_sql: InsertSql,
    /// The buffers the chunks' JSON is made in, reused from one commit to the next.
    chunk_text: Vec<Vec<u8>>,
    /// The thread's count, shared with the handle.
    move_failures: Arc<AtomicU64>,
}

/// The text of the insert statement into one table for each row count up to
/// [`INSERT_ROWS`], built once: the statement cache is looked up by text.
///
/// `OR IGNORE`, though the writer has already dropped every row either table holds: a
/// statement writing many rows that could stop half-way (on a key or NOT NULL conflict)
/// keeps a statement journal of every page it changes, to undo itself; one that ignores
/// conflicts cannot stop half-way and keeps none. Measured on 2,048-row commits of 64-row
/// statements, about 0.4 µs less CPU per row. That no row was ignored is checked instead
/// ([`StoreError::TelemetryOutOfStep`]).
struct InsertSql(Vec<String>);

impl InsertSql {
    /// Statements for 0 to `max` rows of `columns` (`params` of them) into `table`.
    fn new(table: &str, columns: &str, params: usize, max: usize) -> InsertSql {
        let mut row = "(?".to_owned();
        row.push_str(&",?".repeat(params - 1));
        row.push(')');
        InsertSql(
            (0..=max)
                .map(|n| {
                    let mut sql = format!("INSERT OR IGNORE INTO {table} ({columns}) VALUES ");
                    for i in 0..n {
                        if i > 0 {
                            sql.push(',');
                        }
                        sql.push_str(&row);
                    }
                    sql
                })
                .collect(),
        )
    }

    /// The statement for `n` rows, 1 ≤ `n` ≤ the most it was built for.
    fn get(&self, n: usize) -> &str {
        &self.0[n.min(self.0.len() - 1)]
    }
}

impl Writer {
    fn open(path: &std::path::Path, move_failures: &Arc<AtomicU64>) -> Result<Writer, StoreError> {
        // The database exists (the store created it and ran the migrations); no mutex: only
        // this thread uses the connection.
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        conn.busy_timeout(BUSY_TIMEOUT)?;
        // At `synchronous = full` the sync thread syncs the WAL after each commit and before
        // its answer (`wal_sync`); the connection itself never waits for the disk.
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        // Statement journals in memory: a statement inside a transaction journals the pages
        // it changes, and past 64 KiB SQLite spills that journal to a temporary file — about
        // 1,900 file writes a second at 22,600 readings/s. A statement changes a bounded
        // number of pages (one row; a deleting step's range; at most the whole log, about
        // 4 MiB, in `compact`), so memory holds it.
        conn.pragma_update(None, "temp_store", "MEMORY")?;
        // A 16 MiB page cache: a move copies rows in key order, found by rowid across the
        // whole log (about 4 MiB), and with the default 2 MiB most of those were read from
        // the file again (about 4,000 reads a second at that rate). The cache stays warm
        // because no other connection writes these tables.
        conn.pragma_update(None, "cache_size", -16_384)?;
        let page_size: i64 = conn.pragma_query_value(None, "page_size", |r| r.get(0))?;
        conn.pragma_update(
            None,
            "wal_autocheckpoint",
            super::autocheckpoint_pages(page_size),
        )?;
        // Room for the insert statements of every row count, both tables, and the few others.
        conn.set_prepared_statement_cache_capacity(INSERT_ROWS + INSERT_CHUNKS + 8);
        // The log's keys, and each reading as a chunk holds it, for the moves.
        let mut logged = Logged::default();
        {
            let mut log = conn.prepare(
                "SELECT rowid, device_id, seq, ts, received_at, voltage_v, current_a, soc_pct, \
                 soh_pct, temp_min_c, temp_max_c, cell_min_v, cell_max_v, alarms, body \
                 FROM telemetry_log ORDER BY rowid",
            )?;
            let mut rows = log.query([])?;
            let mut scratch = Vec::with_capacity(512);
            while let Some(r) = rows.next()? {
                let alarms: Vec<String> = serde_json::from_str(log_text(r, 13)?)
                    .map_err(|e| log_corrupt(format!("the alarms of a reading: {e}")))?;
                let (seq, ts) = (r.get(2)?, r.get(3)?);
                let reading = encoded(
                    (
                        seq,
                        ts,
                        r.get(4)?,
                        r.get(5)?,
                        r.get(6)?,
                        r.get(7)?,
                        r.get(8)?,
                        r.get(9)?,
                        r.get(10)?,
                        r.get(11)?,
                        r.get(12)?,
                        &alarms,
                        log_text(r, 14)?,
                    ),
                    &mut scratch,
                );
                logged.insert(r.get(0)?, log_text(r, 1)?, (ts, seq), reading);
            }
        }
        // The move the last process had under way, if any, resumes where its last step left
        // it: its rows are those of the log up to its last rowid, in key order as before.
        let progress = conn
            .query_row(
                "SELECT last_rowid, device_id, ts, seq FROM telemetry_move",
                [],
                |r| {
                    let done = match (r.get(1)?, r.get(2)?, r.get(3)?) {
                        (Some(device_id), Some(ts), Some(seq)) => Some((device_id, (ts, seq))),
                        _ => None,
                    };
                    Ok((r.get::<_, i64>(0)?, done))
                },
            )
            .optional()?;
        if let Some((last_rowid, done)) = progress
            && !logged.resume(last_rowid, done)
        {
            // Its last step deletes the record with the last of its rows, so this cannot
            // be; were it so, the record would hide rows given its rowids again once the log
            // is empty (SQLite then starts over at 1).
            tracing::warn!(
                last_rowid,
                "a finished move of the telemetry log was still recorded; record removed"
            );
            conn.execute("DELETE FROM telemetry_move", [])?;
        }
        Ok(Writer {
            conn,
            logged,
            append_sql: InsertSql::new("telemetry_log", COLUMNS, 14, INSERT_ROWS),
            chunk_sql: InsertSql::new("telemetry_chunks", CHUNK_COLUMNS, 6, INSERT_CHUNKS),
            chunk_text: Vec::new(),
            move_failures: Arc::clone(move_failures),
        })
    }

    fn insert(&mut self, rows: &[TelemetryRow]) -> Result<u64, StoreError> {
        let Writer {
            conn,
            logged,
            append_sql,
            chunk_sql,
            chunk_text,
            move_failures,
        } = self;
        // Each device's rows, devices in order of their ids, each device's rows in key
        // order and each key once. Grouped once here, the device's id is hashed once per
        // row and looked up once per device below.
        let mut devices = in_key_order(rows.iter().map(|r| ((to_ms(r.ts), r.seq), r)));
        for run in &mut devices {
            // One device's rows: equal keys are one reading sent twice; the first stays.
            run.rows.dedup_by_key(|(k, _)| *k);
            // Keys the log holds.
            if let Some(keys) = logged.by_device.get(run.device_id)
                && !keys.all_before(run.rows[0].0)
            {
                run.rows.retain(|(k, _)| !keys.contains(k));
            }
        }
        devices.retain(|run| !run.rows.is_empty());
        if devices.is_empty() {
            return Ok(0);
        }
        // First a step of the move under way, if any, in the same transaction as the rows
        // appended below. Not in a savepoint, which would journal every page the step
        // changes once more: if the step fails, its transaction is rolled back whole
        // (nothing else is in it yet) and the rows are appended in a fresh one; the next
        // commit tries the step again.
        logged.start_move(TELEMETRY_LOG_ROWS);
        let mut tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let mut step = None;
        if logged.moving.is_some() {
            let fresh = devices.iter().map(|run| run.rows.len()).sum::<usize>();
            let copy = MOVE_STEP_ROWS.max(2 * fresh);
            match move_step(&tx, logged, copy, chunk_sql, chunk_text) {
                Ok(s) => step = s,
                Err(e) => {
                    move_failures.fetch_add(1, Ordering::Relaxed);
                    tracing::error!(error = %e, "a step moving telemetry from the log into its table failed; the readings stay in the log, and the next commit tries again");
                    tx.rollback()?;
                    tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
                }
            }
        }
        // Keys `telemetry` or a chunk already holds: a reading re-sent after a lost PUBACK.
        // Only a reading at or below its device's bound can be one; a device not seen before
        // gets its bound read first (the last key of its range in each). The bound is a whole
        // key, not a ts: readings taken within one millisecond (or sent with whole-second
        // times) share a ts, and with a ts bound each new one was looked up — inside chunks
        // a parse of the chunk's JSON, which at QoS 0 saturation cost the hub five times its
        // CPU per message.
        let mut in_table = tx.prepare_cached(
            "SELECT ts, seq FROM telemetry WHERE device_id = ?1 \
             ORDER BY ts DESC, seq DESC LIMIT 1",
        )?;
        let mut in_chunks = tx.prepare_cached(
            "SELECT ts_last, seq_last FROM telemetry_chunks WHERE device_id = ?1 \
             ORDER BY ts_last DESC, seq_last DESC LIMIT 1",
        )?;
        // A chunk can hold the key only if its range covers the ts: the range's ends are on
        // the row's first page, the readings are only parsed for those.
        let mut held = tx.prepare_cached(
            "SELECT EXISTS (SELECT 1 FROM telemetry \
                 WHERE device_id = ?1 AND ts = ?2 AND seq = ?3) \
             OR EXISTS (SELECT 1 FROM telemetry_chunks AS c, json_each(c.readings) AS r \
                 WHERE c.device_id = ?1 AND c.ts_last >= ?2 AND c.ts_first <= ?2 \
                 AND json_extract(r.value, '$[1]') = ?2 \
                 AND json_extract(r.value, '$[0]') = ?3)",
        )?;
        let key = |row: &rusqlite::Row<'_>| Ok((row.get(0)?, row.get(1)?));
        for run in &mut devices {
            let bound = match logged.table_max.get(run.device_id) {
                Some(bound) => *bound,
                None => {
                    let table: Option<Key> = in_table.query_row([run.device_id], key).optional()?;
                    let chunk: Option<Key> =
                        in_chunks.query_row([run.device_id], key).optional()?;
                    let bound = table.max(chunk);
                    logged.table_max.insert(Arc::from(run.device_id), bound);
                    bound
                }
            };
            // The run is in key order: if its first key is above the bound, all are.
            if let Some(max) = bound
                && run.rows[0].0 <= max
            {
                let mut kept = Vec::with_capacity(run.rows.len());
                for &(k, r) in &run.rows {
                    if k > max
                        || !held
                            .query_row((run.device_id, k.0, k.1), |row| row.get::<_, bool>(0))?
                    {
                        kept.push((k, r));
                    }
                }
                run.rows = kept;
            }
        }
        drop((in_table, in_chunks, held));
        // A device with enough readings gets a chunk (several, past `CHUNK_READINGS`); the
        // others' go to the log, in key order (the devices are in order of their ids).
        let mut dense = Vec::new();
        let mut sparse = Vec::new();
        for run in &devices {
            if run.rows.len() >= DIRECT_ROWS_PER_DEVICE {
                dense.extend(run.rows.chunks(CHUNK_READINGS));
            } else {
                sparse.extend_from_slice(&run.rows);
            }
        }
        let appended = append(&tx, append_sql, &sparse)?;
        write_chunks(&tx, chunk_sql, chunk_text, &dense)?;
        tx.commit()?;
        let mut scratch = Vec::with_capacity(512);
        for (rowid, k, r) in appended {
            let reading = encoded(chunks::columns(r), &mut scratch);
            logged.insert(rowid, &r.device_id, k, reading);
        }
        // Readings now in chunks: their devices' bounds must cover them, or a reading
        // re-sent later would skip the lookup and be stored twice.
        for run in &dense {
            if let Some((k, r)) = run.last() {
                raise_bound(&mut logged.table_max, &r.device_id, *k);
            }
        }
        if let Some(step) = step {
            logged.apply(step);
        }
        Ok(devices.iter().map(|run| run.rows.len() as u64).sum())
    }

    /// Moves every row of the log into chunks or `telemetry` (finishing a move under way
    /// first); returns how many rows left the log.
    fn compact(&mut self) -> Result<u64, StoreError> {
        let Writer {
            conn,
            logged,
            chunk_sql,
            chunk_text,
            ..
        } = self;
        let mut moved = 0;
        loop {
            logged.start_move(1);
            if logged.moving.is_none() {
                return Ok(moved as u64);
            }
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let step = move_step(&tx, logged, usize::MAX, chunk_sql, chunk_text)?;
            tx.commit()?;
            if let Some(step) = step {
                moved += logged.apply(step);
            }
        }
    }
}

/// Appends `rows` to the log in multi-row statements; returns each row's rowid. One
/// statement's execution opens the table once and walks to its right edge once for all its
/// rows. Each row count has its own statement, prepared once (the cache holds them all).
fn append<'r>(
    tx: &Connection,
    sql: &InsertSql,
    rows: &[(Key, &'r TelemetryRow)],
) -> Result<Vec<(i64, Key, &'r TelemetryRow)>, StoreError> {
    let mut appended = Vec::with_capacity(rows.len());
    for chunk in rows.chunks(INSERT_ROWS) {
        let mut insert = tx.prepare_cached(sql.get(chunk.len()))?;
        let mut at = 0;
        for ((ts, _), r) in chunk {
            let alarms = to_json(&r.alarms, "telemetry")?;
            let values: [&dyn rusqlite::ToSql; 14] = [
                &&*r.device_id,
                &r.seq,
                ts,
                &to_ms(r.received_at),
                &r.voltage_v,
                &r.current_a,
                &r.soc_pct,
                &r.soh_pct,
                &r.temp_min_c,
                &r.temp_max_c,
                &r.cell_min_v,
                &r.cell_max_v,
                &alarms,
                &&*r.body,
            ];
            for v in values {
                at += 1;
                insert.raw_bind_parameter(at, v)?;
            }
        }
        let stored = insert.raw_execute()?;
        if stored != chunk.len() {
            // Dropping the transaction undoes the commit.
            return Err(StoreError::TelemetryOutOfStep {
                expected: chunk.len(),
                stored,
            });
        }
        let last = tx.last_insert_rowid();
        // The log's rows are only ever deleted from its low end, so SQLite gives each new
        // row the largest rowid plus one, in the order of the VALUES list (it would pick at
        // random only past rowid 2^63 - 1).
        let first = last - (chunk.len() as i64 - 1);
        appended.extend(chunk.iter().zip(first..).map(|((k, r), id)| (id, *k, *r)));
    }
    Ok(appended)
}

/// A reading as the log's row for it is kept in memory ([`LogRow::reading`]), encoded in
/// `scratch` and copied out at its size. Encoded into a vector of its own, which grew to about
/// 256 bytes by doubling and then shrank into a box, it was five allocations and 1.5% of the
/// hub's CPU at the compare's fixed QoS 1 rate (docs/benchmarks.md).
fn encoded(reading: chunks::Columns<'_>, scratch: &mut Vec<u8>) -> Box<[u8]> {
    scratch.clear();
    chunks::encode_one(reading, scratch);
    Box::from(scratch.as_slice())
}

/// One device's rows of a commit, each with its key.
struct Run<'r> {
    device_id: &'r str,
    rows: Vec<(Key, &'r TelemetryRow)>,
}

/// A commit's rows in key order: a run per device, in order of their ids, each in order of
/// (ts, seq); of rows with one key, the first sent first. Each device's rows are gathered in
/// the order they came, which is nearly always their key order already, and sorted on their
/// own: a sort of the whole commit compared device ids about 13 times a row (2% of the hub's
/// CPU at a fixed QoS 0 rate, docs/benchmarks.md, run AP). Handed on as runs, they are not
/// compared again to find where a device's rows end.
fn in_key_order<'r>(rows: impl Iterator<Item = (Key, &'r TelemetryRow)>) -> Vec<Run<'r>> {
    let mut index: HashMap<&str, usize, Hasher> = HashMap::default();
    let mut devices: Vec<Run<'r>> = Vec::new();
    for (k, r) in rows {
        let i = *index.entry(&*r.device_id).or_insert_with(|| {
            devices.push(Run {
                device_id: &r.device_id,
                rows: Vec::new(),
            });
            devices.len() - 1
        });
        devices[i].rows.push((k, r));
    }
    devices.sort_unstable_by(|a, b| a.device_id.cmp(b.device_id));
    for run in &mut devices {
        // Stable, and linear for rows already in order.
        run.rows.sort_by_key(|(k, _)| *k);
    }
    devices
}

/// One device's readings, in key order, none stored yet, to be written as one chunk.
trait Piece {
    /// The device, the ts of the oldest reading and the key of the newest, how many.
    fn head(&self) -> Option<(&str, i64, Key, usize)>;
    /// Appends the chunk's array to `out`.
    fn encode(&self, out: &mut Vec<u8>);
}

/// A run of a commit's rows.
impl Piece for &[(Key, &TelemetryRow)] {
    fn head(&self) -> Option<(&str, i64, Key, usize)> {
        let (((ts_first, _), r), (last, _)) = (self.first()?, self.last()?);
        Some((&*r.device_id, *ts_first, *last, self.len()))
    }

    fn encode(&self, out: &mut Vec<u8>) {
        chunks::encode(self.iter().map(|(_, r)| chunks::columns(r)), out);
    }
}

/// Rows of the log being moved, from the text kept for each.
impl Piece for &[LogRow] {
    fn head(&self) -> Option<(&str, i64, Key, usize)> {
        let (first, last) = (self.first()?, self.last()?);
        Some((&first.device_id, first.key.0, last.key, self.len()))
    }

    fn encode(&self, out: &mut Vec<u8>) {
        chunks::encode_encoded(self.iter().map(|r| &*r.reading), out);
    }
}

/// Writes each piece as a chunk, [`INSERT_CHUNKS`] to a statement. `text` keeps the buffers
/// the chunks' JSON is made in, from one commit to the next.
fn write_chunks<P: Piece>(
    tx: &Connection,
    sql: &InsertSql,
    text: &mut Vec<Vec<u8>>,
    pieces: &[P],
) -> Result<(), StoreError> {
    for group in pieces.chunks(INSERT_CHUNKS) {
        if text.len() < group.len() {
            text.resize_with(group.len(), Vec::new);
        }
        for (piece, buf) in group.iter().zip(text.iter_mut()) {
            buf.clear();
            piece.encode(buf);
        }
        let mut insert = tx.prepare_cached(sql.get(group.len()))?;
        let mut at = 0;
        for (piece, buf) in group.iter().zip(text.iter()) {
            let Some((device_id, ts_first, (ts_last, seq_last), n)) = piece.head() else {
                // Runs and pieces are made by `chunk_by` and `chunks`: never empty.
                return Err(chunk_corrupt("an empty chunk".into()));
            };
            // A BLOB: SQLite's JSON functions read it as binary JSON.
            let readings: &[u8] = buf;
            let values: [&dyn rusqlite::ToSql; 6] = [
                &device_id,
                &ts_last,
                &seq_last,
                &ts_first,
                &(n as i64),
                &readings,
            ];
            for v in values {
                at += 1;
                insert.raw_bind_parameter(at, v)?;
            }
        }
        let stored = insert.raw_execute()?;
        if stored != group.len() {
            return Err(StoreError::TelemetryOutOfStep {
                expected: group.len(),
                stored,
            });
        }
    }
    Ok(())
}

fn chunk_corrupt(why: String) -> StoreError {
    StoreError::Corrupt {
        table: "telemetry_chunks",
        why,
    }
}

/// Does the next step of the move under way, copying at least `copy` rows (deleting at most
/// [`DELETE_PER_COPY`] times as many); `None` if no move is under way.
///
/// A copying step takes the next rows in key order: a device's rows become chunks of at most
/// [`CHUNK_READINGS`], made of the text the writer keeps for each log row (made in Rust,
/// not with SQLite's JSON functions, which write floats with 15 digits, not the shortest text
/// that reads back exactly); a device with fewer than [`MOVE_CHUNK_MIN_READINGS`] rows in the
/// step has them copied into `telemetry`, a row each. It then records how far the move has
/// got in `telemetry_move`, in the same transaction, which is what reads skip the log by and
/// what a restart resumes from.
fn move_step(
    conn: &Connection,
    logged: &Logged,
    copy: usize,
    chunk_sql: &InsertSql,
    text: &mut Vec<Vec<u8>>,
) -> Result<Option<Step>, StoreError> {
    let Some(m) = logged.moving.as_ref() else {
        return Ok(None);
    };
    if m.copied < m.rows.len() {
        let start = m.copied;
        let mut end = start.saturating_add(copy).min(m.rows.len());
        // On to the end of the last device's rows, within a bound: otherwise the next step
        // starts with a few of them, too few for a chunk.
        let cap = start
            .saturating_add(copy.max(CHUNK_READINGS))
            .min(m.rows.len());
        while end < cap && m.rows[end].device_id == m.rows[end - 1].device_id {
            end += 1;
        }
        let rows = &m.rows[start..end];
        let mut few = Vec::new();
        let mut pieces = Vec::new();
        for run in rows.chunk_by(|a, b| a.device_id == b.device_id) {
            if run.len() >= MOVE_CHUNK_MIN_READINGS {
                pieces.extend(run.chunks(CHUNK_READINGS));
            } else {
                few.extend(run.iter().map(|r| r.rowid));
            }
        }
        if !few.is_empty() {
            // Inserted in the array's order, so each device's rows land on its pages
            // together. CROSS JOIN keeps the array the outer loop, so no sort is needed (an
            // ORDER BY sorted rows already in order); the order only matters for speed. `OR
            // IGNORE`, as in [`InsertSql`], spares the statement its journal.
            conn.prepare_cached(&format!(
                "INSERT OR IGNORE INTO telemetry ({COLUMNS}) SELECT {COLUMNS} \
                 FROM json_each(?1) AS j CROSS JOIN telemetry_log AS l ON l.rowid = j.value"
            ))?
            .execute([rowid_array(few)])?;
        }
        write_chunks(conn, chunk_sql, text, &pieces)?;
        let last = &rows[rows.len() - 1];
        conn.prepare_cached(
            "INSERT OR REPLACE INTO telemetry_move (id, last_rowid, device_id, ts, seq) \
             VALUES (1, ?1, ?2, ?3, ?4)",
        )?
        .execute((m.last_rowid, &*last.device_id, last.key.0, last.key.1))?;
        return Ok(Some(Step::Copied(rows.len())));
    }
    let span = i64::try_from(copy.saturating_mul(DELETE_PER_COPY)).unwrap_or(i64::MAX);
    let below = m
        .deleted_below
        .saturating_add(span)
        .min(m.last_rowid.saturating_add(1));
    conn.prepare_cached("DELETE FROM telemetry_log WHERE rowid < ?1")?
        .execute([below])?;
    if below > m.last_rowid {
        // The move's last rows leave the log: nothing is in two places any more.
        conn.prepare_cached("DELETE FROM telemetry_move")?
            .execute([])?;
    }
    Ok(Some(Step::Deleted(below)))
}

/// Column `i` of a log row, text.
fn log_text<'r>(row: &'r rusqlite::Row<'_>, i: usize) -> Result<&'r str, StoreError> {
    row.get_ref(i)?
        .as_str()
        .map_err(|e| log_corrupt(format!("column {i}: {e}")))
}

fn log_corrupt(why: String) -> StoreError {
    StoreError::Corrupt {
        table: "telemetry_log",
        why,
    }
}

/// Rowids as one JSON array: a single parameter, however many.
fn rowid_array(rowids: impl IntoIterator<Item = i64>) -> String {
    let mut ids = String::from("[");
    for (i, id) in rowids.into_iter().enumerate() {
        if i > 0 {
            ids.push(',');
        }
        ids.push_str(&id.to_string());
    }
    ids.push(']');
    ids
}

/// A row of the log: its key and where it is.
#[derive(Debug)]
struct LogRow {
    rowid: i64,
    /// Shared with [`Logged::by_device`]'s key: one allocation per device, not per row.
    device_id: Arc<str>,
    key: Key,
    /// The reading as a chunk holds it (`chunks::encode_one`), so that a move writes its
    /// chunks without reading the log back: about 250 bytes a reading, 4 MiB for a move.
    reading: Box<[u8]>,
}

/// The hasher of the writer's key sets: every reading is looked up and inserted once, and
/// with std's SipHash that hashing was a visible share of the writer's CPU at saturation.
/// foldhash is seeded at random per map, so a device cannot pick keys that collide.
type Hasher = foldhash::fast::RandomState;

/// The keys of one device's rows in the log, in two sorted vectors: those of the move under
/// way and those appended since it began. A device's readings mostly arrive in key order, so
/// an append is a push and a look-up of a new reading one comparison with each vector's last
/// key; a move starting or ending hands a whole vector over or drops it. As a hash set, every
/// append hashed its key into a table that grew from empty again after each move: 3–4% of the
/// hub's CPU at the compare's fixed QoS 1 rate, where every reading passes through the log
/// (docs/benchmarks.md).
#[derive(Debug, Default)]
struct LogKeys {
    moving: Vec<Key>,
    fresh: Vec<Key>,
}

impl LogKeys {
    fn contains(&self, key: &Key) -> bool {
        self.fresh.binary_search(key).is_ok() || self.moving.binary_search(key).is_ok()
    }

    /// Whether every key held is before `key` (then neither it nor a later key is held).
    fn all_before(&self, key: Key) -> bool {
        self.fresh.last().is_none_or(|&last| last < key)
            && self.moving.last().is_none_or(|&last| last < key)
    }

    /// Adds a key appended to the log (not held: the writer drops rows whose key it holds).
    fn insert(&mut self, key: Key) {
        match self.fresh.last() {
            Some(&last) if last >= key => {
                if let Err(at) = self.fresh.binary_search(&key) {
                    self.fresh.insert(at, key);
                }
            }
            _ => self.fresh.push(key),
        }
    }

    fn is_empty(&self) -> bool {
        self.moving.is_empty() && self.fresh.is_empty()
    }
}

/// The log's rows and the move under way.
#[derive(Debug, Default)]
struct Logged {
    /// The keys of every row in `telemetry_log`, by device.
    by_device: HashMap<Arc<str>, LogKeys, Hasher>,
    /// Rows appended since the last move began, in rowid order.
    fresh: Vec<LogRow>,
    moving: Option<Move>,
    /// For each device seen, a bound on the keys `telemetry` and its chunks hold for it
    /// (`None`: none): a reading with a later key cannot be there, so the lookup for re-sent
    /// readings is skipped. Read from the tables the first time a device's reading is
    /// written, raised by moves and chunks; deleting rows leaves it an upper bound.
    table_max: HashMap<Arc<str>, Option<Key>, Hasher>,
}

/// Raises `device_id`'s bound in [`Logged::table_max`] to cover `key`, now stored (a
/// device without a bound gets it read from the table at its next write).
fn raise_bound(table_max: &mut HashMap<Arc<str>, Option<Key>, Hasher>, device_id: &str, key: Key) {
    if let Some(max) = table_max.get_mut(device_id) {
        *max = Some(max.map_or(key, |x| x.max(key)));
    }
}

/// A move: every row of the log up to `last_rowid`, written out in key order, then deleted.
#[derive(Debug)]
struct Move {
    /// The rows, in key order.
    rows: Vec<LogRow>,
    /// How many of `rows` are written into chunks or `telemetry`.
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
    fn insert(&mut self, rowid: i64, device_id: &str, key: Key, reading: Box<[u8]>) {
        let device_id = match self.by_device.get_key_value(device_id) {
            Some((id, _)) => id.clone(),
            None => Arc::from(device_id),
        };
        self.by_device
            .entry(device_id.clone())
            .or_default()
            .insert(key);
        self.fresh.push(LogRow {
            rowid,
            device_id,
            key,
            reading,
        });
    }

    /// Starts moving every row appended so far, if none is being moved and `at_least` have
    /// been appended.
    fn start_move(&mut self, at_least: usize) {
        if self.moving.is_some() || self.fresh.is_empty() || self.fresh.len() < at_least {
            return;
        }
        // The next move's rows start in a vector as large as this one's, which would
        // otherwise grow from empty by doubling, copying its rows each time.
        let n = self.fresh.len();
        let mut rows = std::mem::replace(&mut self.fresh, Vec::with_capacity(n));
        let (first, last) = (rows[0].rowid, rows[rows.len() - 1].rowid);
        rows.sort_unstable_by(|a, b| (&a.device_id, a.key).cmp(&(&b.device_id, b.key)));
        // Every row appended so far is in this move, and so is every device's fresh key.
        for keys in self.by_device.values_mut() {
            debug_assert!(keys.moving.is_empty(), "one move at a time");
            keys.moving = std::mem::take(&mut keys.fresh);
        }
        self.moving = Some(Move {
            rows,
            copied: 0,
            deleted_below: first,
            last_rowid: last,
        });
    }

    /// Takes up a move recorded by an earlier process: the rows up to `last_rowid`, those up
    /// to the key `done` copied. False if the log holds none of them.
    fn resume(&mut self, last_rowid: i64, done: Option<(String, Key)>) -> bool {
        let end = self.fresh.partition_point(|r| r.rowid <= last_rowid);
        if end == 0 {
            return false;
        }
        let mut rows: Vec<LogRow> = self.fresh.drain(..end).collect();
        let first = rows[0].rowid;
        rows.sort_unstable_by(|a, b| (&a.device_id, a.key).cmp(&(&b.device_id, b.key)));
        let copied = done.map_or(0, |(device_id, key)| {
            rows.partition_point(|r| (&*r.device_id, r.key) <= (device_id.as_str(), key))
        });
        // The keys as the two vectors hold them: the move's rows (in key order by device)
        // and the rest of the log, after them by rowid.
        for keys in self.by_device.values_mut() {
            keys.moving.clear();
            keys.fresh.clear();
        }
        for r in &rows {
            if let Some(keys) = self.by_device.get_mut(&r.device_id) {
                keys.moving.push(r.key);
            }
        }
        for r in &self.fresh {
            if let Some(keys) = self.by_device.get_mut(&r.device_id) {
                keys.insert(r.key);
            }
        }
        // No bound to raise: a device's bound is read from the tables at its first write.
        self.moving = Some(Move {
            rows,
            copied,
            deleted_below: first,
            last_rowid,
        });
        true
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
                    raise_bound(&mut self.table_max, &r.device_id, r.key);
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
                // The move's keys are every device's moving ones.
                for keys in self.by_device.values_mut() {
                    keys.moving.clear();
                }
                self.by_device.retain(|_, keys| !keys.is_empty());
                m.rows.len()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use time::OffsetDateTime;

    use super::super::{SqliteOptions, SqliteStore, Synchronous};
    use super::{Key, LogKeys, in_key_order};
    use crate::ingest::tests::row;
    use crate::{TelemetryRow, TelemetryStore};

    /// A device's keys in the log: late and repeated readings keep each vector sorted and
    /// each key once; a move takes the fresh keys over, and both are looked in.
    #[test]
    fn log_keys_stay_sorted_when_readings_arrive_out_of_order() {
        let mut keys = LogKeys::default();
        for k in [(10, 1), (20, 2), (15, 9), (20, 2), (5, 0), (30, 3)] {
            keys.insert(k);
        }
        assert_eq!(keys.fresh, [(5, 0), (10, 1), (15, 9), (20, 2), (30, 3)]);
        assert!(keys.all_before((30, 4)));
        assert!(!keys.all_before((30, 3)));
        keys.moving = std::mem::take(&mut keys.fresh);
        keys.insert((25, 0));
        keys.insert((40, 0));
        for k in [(5, 0), (15, 9), (30, 3), (25, 0), (40, 0)] {
            assert!(keys.contains(&k), "{k:?} held");
        }
        for k in [(15, 8), (26, 0), (41, 0)] {
            assert!(!keys.contains(&k), "{k:?} not held");
        }
        assert!(!keys.all_before((35, 0)), "the fresh keys count too");
        assert!(keys.all_before((40, 1)));
        keys.moving.clear();
        assert!(!keys.is_empty());
        keys.fresh.clear();
        assert!(keys.is_empty() && keys.all_before((i64::MIN, i64::MIN)));
    }

    /// Rows of devices interleaved, some out of order, some sharing a key (the body tells
    /// the copies apart): in the order of a stable sort of the whole by device and key.
    #[test]
    fn a_commit_is_put_in_key_order_as_a_stable_sort_would() {
        let mut rows: Vec<TelemetryRow> = Vec::new();
        for i in 0..400i64 {
            let mut r = row((i * 7919) % 97);
            r.device_id = format!("dev-{}", (i * 31) % 13).into();
            r.body = format!("{i}").into();
            rows.push(r);
        }
        let with_keys = || rows.iter().map(|r| ((r.ts.unix_timestamp(), r.seq), r));
        let mut want: Vec<(Key, &TelemetryRow)> = with_keys().collect();
        want.sort_by(|(a, x), (b, y)| (&x.device_id, a).cmp(&(&y.device_id, b)));
        let runs = in_key_order(with_keys());
        assert_eq!(runs.len(), 13, "a run per device");
        for run in &runs {
            assert!(run.rows.iter().all(|(_, r)| &*r.device_id == run.device_id));
        }
        let got: Vec<(Key, &TelemetryRow)> = runs.into_iter().flat_map(|run| run.rows).collect();
        let bodies =
            |v: &[(Key, &TelemetryRow)]| v.iter().map(|(_, r)| r.body.clone()).collect::<Vec<_>>();
        assert_eq!(bodies(&got), bodies(&want));
        assert!(in_key_order(std::iter::empty()).is_empty());
    }

    async fn open(dir: &tempfile::TempDir, synchronous: Synchronous) -> SqliteStore {
        let mut options = SqliteOptions::new(dir.path().join("t.db"));
        options.synchronous = synchronous;
        SqliteStore::open(&options).await.unwrap()
    }

    /// At `full` every commit is answered after a WAL sync begun once it had committed —
    /// also a commit whose rows were all stored already, since the commit that stored them
    /// may be the one still syncing. At `normal` nothing syncs.
    #[tokio::test]
    async fn durable_commits_are_answered_after_a_wal_sync_and_normal_ones_without() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(&dir, Synchronous::Full).await;
        let rows: Vec<_> = (1..=50).map(row).collect();
        assert_eq!(store.insert_telemetry(&rows).await.unwrap(), 50);
        let (syncs, failures) = store.telemetry_writer.syncs();
        assert!(syncs >= 1, "answered before any sync");
        assert_eq!(failures, 0);
        assert!(dir.path().join("t.db-wal").exists());
        assert_eq!(store.insert_telemetry(&rows[..10]).await.unwrap(), 0);
        assert!(store.telemetry_writer.syncs().0 > syncs);
        // Concurrent commits: each answered, each row once.
        let commits: Vec<_> = (0..4)
            .map(|b| {
                let (store, rows) = (store.clone(), (1..=25).map(|i| row(100 + b * 25 + i)));
                let rows: Vec<_> = rows.collect();
                tokio::spawn(async move { store.insert_telemetry(&rows).await })
            })
            .collect();
        for c in commits {
            assert_eq!(c.await.unwrap().unwrap(), 25);
        }
        let back = store
            .telemetry("dev-1", OffsetDateTime::UNIX_EPOCH, 1000)
            .await
            .unwrap();
        assert_eq!(back.len(), 150);
        store.close().await;

        let dir = tempfile::tempdir().unwrap();
        let store = open(&dir, Synchronous::Normal).await;
        assert_eq!(store.insert_telemetry(&rows).await.unwrap(), 50);
        assert_eq!(store.telemetry_writer.syncs(), (0, 0));
        store.close().await;
    }
}
