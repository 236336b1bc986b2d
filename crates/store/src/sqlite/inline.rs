//! Point reads made on the caller's thread, without sqlx's worker thread.
//!
//! Every sqlx query on SQLite is a round trip to its connection's worker thread, and giving
//! the connection back to the pool is a second one (sqlx pings a connection as it is
//! released): four thread switches and a spawned task around a lookup that SQLite itself
//! answers in a few microseconds. The hub makes one such lookup per CONNECT; in a connection
//! storm sqlx's thread took 11% of the hub's CPU (docs/benchmarks.md). The reads here run on
//! a rusqlite connection taken from a small idle list, on the calling thread.
//!
//! Only reads that are bounded belong here — a lookup by key, a few pages of B-tree — since
//! they block the async task that asks for them while they run. A WAL reader never waits for
//! the writer; the short busy timeout covers the rare moments when SQLite makes a reader wait
//! (recovering the WAL index after a crash), and a read still blocked after it fails, as a
//! busy database, rather than stalling the thread.

use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

use rusqlite::{Connection, OpenFlags};

use crate::StoreError;

/// Idle connections kept; more callers at once open more, and the surplus is closed.
const IDLE: usize = 4;

/// How long a read waits for a lock (see the module's doc).
const BUSY_TIMEOUT: Duration = Duration::from_millis(250);

/// The idle connections of the inline reads, and whether the store was closed.
#[derive(Debug)]
pub(crate) struct InlineReads {
    path: PathBuf,
    /// `None` once the store is closed: reads are refused, as the pool refuses them.
    idle: Mutex<Option<Vec<Connection>>>,
}

impl InlineReads {
    pub(crate) fn new(path: PathBuf) -> InlineReads {
        InlineReads {
            path,
            idle: Mutex::new(Some(Vec::new())),
        }
    }

    /// Runs `read` on an idle connection (opened if there is none) and keeps the connection
    /// for the next read unless it failed.
    pub(crate) fn read<T>(
        &self,
        read: impl FnOnce(&Connection) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let conn = match self.lock().as_mut() {
            None => return Err(StoreError::Closed),
            Some(idle) => idle.pop(),
        };
        let conn = match conn {
            Some(c) => c,
            None => self.open()?,
        };
        let result = read(&conn);
        // A connection whose read failed is dropped: the next read opens a fresh one rather
        // than trust one left in an unknown state.
        if result.is_ok()
            && let Some(idle) = self.lock().as_mut()
            && idle.len() < IDLE
        {
            idle.push(conn);
        }
        result
    }

    /// Closes the idle connections; later reads are refused.
    pub(crate) fn close(&self) {
        self.lock().take();
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Vec<Connection>>> {
        // A panic while the lock was held left at worst a list missing a connection.
        self.idle.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn open(&self) -> Result<Connection, StoreError> {
        // The store created the database and ran its migrations before any read. No mutex in
        // SQLite: a connection is used by one thread at a time, the one that took it.
        let conn = Connection::open_with_flags(
            &self.path,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        conn.busy_timeout(BUSY_TIMEOUT)?;
        // Read-write so that it can use the WAL index like the other connections, but it
        // never writes.
        conn.pragma_update(None, "query_only", true)?;
        Ok(conn)
    }
}
