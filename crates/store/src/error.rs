//! Storage errors.

/// Why a storage operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{what} {id:?} already exists")]
    AlreadyExists { what: &'static str, id: String },
    #[error("{what} {id:?} not found")]
    NotFound { what: &'static str, id: String },
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error("database error: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("the SQLite telemetry writer's thread has stopped (it panicked; see the log above)")]
    WriterStopped,
    #[error("committed, but not yet durable: {0}")]
    Sync(String),
    #[error("the store has been closed")]
    Closed,
    #[error("database migration failed: {0}")]
    Migration(#[from] sqlx::migrate::MigrateError),
    #[error("storage configuration: {0}")]
    Config(String),
    #[error("corrupt row in {table}: {why}")]
    Corrupt { table: &'static str, why: String },
    #[error("the ingest queue is closed (the hub is shutting down)")]
    IngestClosed,
    /// The SQLite telemetry writer found a table holding a reading its checks said was new:
    /// something else wrote telemetry (only the hub's writer may). The commit is undone.
    #[error(
        "telemetry commit undone: {expected} readings checked as new, {stored} stored; another process writes telemetry into this database"
    )]
    TelemetryOutOfStep { expected: usize, stored: usize },
    #[error("{what} {id:?} is used up: {why}")]
    Exhausted {
        what: &'static str,
        id: String,
        why: String,
    },
}

/// Whether a database error is a unique-key violation (an id or key already taken).
pub(crate) fn is_unique_violation(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(db) if db.is_unique_violation())
}
