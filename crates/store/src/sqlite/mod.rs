//! The embedded SQLite backend.
//!
//! WAL journal, one writer at a time (SQLite's rule; `BEGIN IMMEDIATE` takes the lock), and a
//! configurable `synchronous` level: `full` (the default) syncs the WAL after every commit
//! before answering it (telemetry: on a thread of its own, `wal_sync`), so a reading
//! acknowledged to a device survives a power cut; `normal` survives a crash of the hub
//! process but may lose the last commits on power loss.
//!
//! One file per storage trait: `registry`, `telemetry`, `retained`, `policies`, `pki`,
//! `provisioning`, `audit`, `events`, `compliance`, `rollouts`; they use sqlx's pool, but
//! telemetry is written by a thread of its own (`telemetry_writer`), and the lookup every
//! CONNECT makes runs on the caller's thread (`inline`).

mod audit;
mod chunks;
mod compliance;
mod events;
mod inline;
mod jsonb;
mod pki;
mod policies;
mod provisioning;
mod registry;
mod retained;
mod rollouts;
mod telemetry;
mod telemetry_writer;
mod wal_sync;

pub use chunks::encode_rows as encode_telemetry_chunk;
pub use telemetry_writer::{
    CHUNK_READINGS, DIRECT_ROWS_PER_DEVICE, MOVE_CHUNK_MIN_READINGS, MOVE_STEP_ROWS,
    TELEMETRY_LOG_ROWS,
};

use std::path::{Path, PathBuf};
use std::str::FromStr;
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
    /// The telemetry writer thread's nice value (0 to 19; Linux only). Above 0, the
    /// threads routing messages go first when both want the same core: a commit's work
    /// (a step of a move is tens of ms of CPU after a burst) then no longer holds up
    /// deliveries, and the writer still gets the core whenever the routing threads wait,
    /// which they do when its queue is full.
    pub writer_nice: i32,
}

impl SqliteOptions {
    pub fn new(path: impl Into<PathBuf>) -> Self {
        SqliteOptions {
            path: path.into(),
            synchronous: Synchronous::Full,
            max_connections: 4,
            writer_nice: 0,
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
    /// The telemetry writer's thread and its own connection. A SQLite connection's page
    /// cache is emptied whenever another connection has written, so commits taking turns
    /// over the pool's connections would re-read every B-tree page they touch; on one
    /// connection that only writes telemetry the cache stays warm between commits.
    telemetry_writer: telemetry_writer::TelemetryWriter,
    /// Connections for the point reads made without sqlx's worker thread.
    inline: std::sync::Arc<inline::InlineReads>,
    path: PathBuf,
}

/// Page size of a database this store creates: 8 KiB rather than SQLite's 4 KiB. A commit
/// writes every page it changed to the WAL as a frame, in two system calls (the frame's
/// header, then the page), and a group commit of telemetry changes a page or two per device:
/// larger pages mean half the frames for the same readings. Measured on the hub (hub on one
/// core, three rounds each, docs/benchmarks.md): 30–35% fewer write system calls and about
/// 4% less CPU per message at fixed QoS 0 and QoS 1 rates. A database created before keeps
/// its 4 KiB pages (changing them would rewrite the whole file) and works as before.
pub(crate) const NEW_DATABASE_PAGE_SIZE: u32 = 8192;

/// WAL size after which a commit copies the WAL into the database (SQLite's
/// `wal_autocheckpoint`, which counts pages; its default is 1,000 pages, 4 MiB). A page that
/// several commits change between two checkpoints is copied once: the end of the telemetry
/// log, the pages a move fills step by step. With 40 MiB (10,000 pages of 4 KiB) the hub
/// took 12–14% more QoS 1 and QoS 0 messages a second at saturation, and its CPU per message
/// at 25,000 QoS 1 msg/s did not change (docs/benchmarks.md). The WAL file keeps its largest
/// size once reached.
pub(crate) const WAL_AUTOCHECKPOINT_BYTES: i64 = 40 * 1024 * 1024;

/// [`WAL_AUTOCHECKPOINT_BYTES`] in pages of `page_size` bytes (the database's own: 4 KiB for
/// one created before [`NEW_DATABASE_PAGE_SIZE`] was raised).
pub(crate) fn autocheckpoint_pages(page_size: i64) -> i64 {
    // SQLite's smallest page is 512 bytes; the guard only keeps a broken answer from
    // dividing by zero.
    WAL_AUTOCHECKPOINT_BYTES / page_size.max(512)
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
            // Takes effect only in a database that has no table yet.
            .page_size(NEW_DATABASE_PAGE_SIZE)
            .busy_timeout(Duration::from_secs(10));
        let pool = SqlitePoolOptions::new()
            // As the telemetry writer's connection: else a registry write made once the WAL
            // has passed SQLite's default would checkpoint it on sqlx's thread. In pages of
            // the database's own size, which an older database may not share.
            .after_connect(|conn, _| {
                Box::pin(async move {
                    let page_size: i64 = sqlx::query_scalar("PRAGMA page_size")
                        .fetch_one(&mut *conn)
                        .await?;
                    sqlx::query(sqlx::AssertSqlSafe(format!(
                        "PRAGMA wal_autocheckpoint = {}",
                        autocheckpoint_pages(page_size)
                    )))
                    .execute(&mut *conn)
                    .await?;
                    Ok(())
                })
            })
            .max_connections(options.max_connections.max(1))
            // A SQLite connection is a file handle in this process; it cannot go stale the
            // way a network connection can. The default test before every acquire is one
            // more round trip to the connection's worker thread per query — two thread
            // switches for every lookup, in every CONNECT.
            .test_before_acquire(false)
            .connect_with(connect.clone())
            .await?;
        MIGRATOR.run(&pool).await?;
        let telemetry_writer = telemetry_writer::TelemetryWriter::spawn(
            options.path.clone(),
            options.synchronous,
            options.writer_nice,
        )?;
        Ok(SqliteStore {
            pool,
            telemetry_writer,
            inline: std::sync::Arc::new(inline::InlineReads::new(options.path.clone())),
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

    /// Path of the database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Closes the pool and the telemetry writer's connection, waiting for what they are doing,
    /// and the inline reads' connections.
    pub async fn close(&self) {
        self.inline.close();
        self.telemetry_writer.close().await;
        self.pool.close().await;
    }
}

pub(crate) use crate::error::is_unique_violation;
