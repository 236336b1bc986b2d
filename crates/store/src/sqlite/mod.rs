//! The embedded SQLite backend.
//!
//! WAL journal, one writer at a time (SQLite's rule; sqlx serialises through the pool), and a
//! configurable `synchronous` level: `full` (the default) fsyncs the WAL on every commit, so a
//! reading acknowledged to a device survives a power cut; `normal` survives a crash of the hub
//! process but may lose the last commits on power loss.
//!
//! One file per storage trait: `registry`, `telemetry`, `retained`, `policies`, `pki`,
//! `provisioning`, `audit`, `events`, `compliance`, `rollouts`.

mod audit;
mod compliance;
mod events;
mod pki;
mod policies;
mod provisioning;
mod registry;
mod retained;
mod rollouts;
mod telemetry;

pub use telemetry::{MOVE_STEP_ROWS, TELEMETRY_LOG_ROWS};

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};

use crate::StoreError;

/// Durability level of commits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Synchronous {
    /// fsync on every commit: durable across power loss.
    #[default]
    Full,
    /// fsync at checkpoints only: durable across process crashes.
    Normal,
}

impl FromStr for Synchronous {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "full" => Ok(Synchronous::Full),
            "normal" => Ok(Synchronous::Normal),
            other => Err(format!(
                "unknown synchronous level {other:?} (full or normal)"
            )),
        }
    }
}

/// How to open the database.
#[derive(Debug, Clone)]
pub struct SqliteOptions {
    pub path: PathBuf,
    pub synchronous: Synchronous,
    /// Connections in the pool (readers; writes are serialised by SQLite).
    pub max_connections: u32,
}

impl SqliteOptions {
    pub fn new(path: impl Into<PathBuf>) -> Self {
        SqliteOptions {
            path: path.into(),
            synchronous: Synchronous::Full,
            max_connections: 4,
        }
    }
}

/// SQLite implementation of the storage traits.
/// Rows per multi-row statement in batched writes (four bound values each at most, far
/// below SQLite's limit on bound parameters).
pub(super) const ROWS_PER_STATEMENT: usize = 100;

#[derive(Debug, Clone)]
pub struct SqliteStore {
    pool: SqlitePool,
    /// The telemetry writer's own connection. A SQLite connection's page cache is emptied
    /// whenever another connection has written, so group commits taking turns over the
    /// pool's connections re-read every B-tree page they touch; on one connection that only
    /// writes telemetry the cache stays warm between commits.
    telemetry_writer: SqlitePool,
    /// The keys of the rows in `telemetry_log`, read on the first telemetry write (CLI
    /// commands that only read never load them); its lock is the telemetry writer's (see
    /// `telemetry`).
    logged: Arc<tokio::sync::Mutex<Option<telemetry::Logged>>>,
    /// Steps of telemetry moves that failed (see `telemetry`), for the hub's metrics.
    move_failures: Arc<std::sync::atomic::AtomicU64>,
    path: PathBuf,
}

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");

impl SqliteStore {
    /// Opens (creating if needed) the database and applies pending migrations.
    pub async fn open(options: &SqliteOptions) -> Result<SqliteStore, StoreError> {
        let connect = SqliteConnectOptions::new()
            .filename(&options.path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(match options.synchronous {
                Synchronous::Full => SqliteSynchronous::Full,
                Synchronous::Normal => SqliteSynchronous::Normal,
            })
            .foreign_keys(true)
            .busy_timeout(Duration::from_secs(10));
        let pool = SqlitePoolOptions::new()
            .max_connections(options.max_connections.max(1))
            // A SQLite connection is a file handle in this process; it cannot go stale the
            // way a network connection can. The default test before every acquire is one
            // more round trip to the connection's worker thread per query — two thread
            // switches for every lookup, in every CONNECT.
            .test_before_acquire(false)
            .connect_with(connect.clone())
            .await?;
        MIGRATOR.run(&pool).await?;
        // Opened on the first telemetry write, then kept for the life of the store: its
        // warm cache is the point.
        let telemetry_writer = SqlitePoolOptions::new()
            .max_connections(1)
            .idle_timeout(None)
            .max_lifetime(None)
            .test_before_acquire(false)
            // Statement journals in memory: a multi-row statement inside a transaction
            // (each append, each step of a move) journals the pages it changes, and past
            // 64 KiB SQLite spills that journal to a temporary file — about 1,900 file
            // writes a second at 22,600 readings/s. A statement changes a bounded number of
            // pages (a step of a move, a 64-row append; at most the whole log, about 4 MiB,
            // in `compact_telemetry`), so memory holds it.
            // A 16 MiB page cache: a move copies rows in key order, found by rowid across
            // the whole log (about 4 MiB), and with the default 2 MiB most of those were
            // read from the file again (about 4,000 reads a second at that rate).
            .connect_lazy_with(
                connect
                    .pragma("temp_store", "memory")
                    .pragma("cache_size", "-16384"),
            );
        Ok(SqliteStore {
            pool,
            telemetry_writer,
            logged: Arc::new(tokio::sync::Mutex::new(None)),
            move_failures: Arc::default(),
            path: options.path.clone(),
        })
    }

    /// Starts a write transaction. `BEGIN IMMEDIATE` takes the write lock up front: a deferred
    /// transaction that reads first and writes later fails with SQLITE_BUSY_SNAPSHOT — not
    /// retried by the busy timeout — whenever another writer (the telemetry group commit, many
    /// times a second) committed in between.
    pub(crate) async fn write_tx(
        &self,
    ) -> Result<sqlx::Transaction<'static, sqlx::Sqlite>, sqlx::Error> {
        self.pool.begin_with("BEGIN IMMEDIATE").await
    }

    /// Starts a write transaction on the telemetry writer's own connection.
    pub(crate) async fn telemetry_tx(
        &self,
    ) -> Result<sqlx::Transaction<'static, sqlx::Sqlite>, sqlx::Error> {
        self.telemetry_writer.begin_with("BEGIN IMMEDIATE").await
    }

    /// Path of the database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Closes the pool, waiting for connections to finish.
    pub async fn close(&self) {
        self.telemetry_writer.close().await;
        self.pool.close().await;
    }
}

pub(crate) use crate::error::is_unique_violation;
