//! Durable telemetry commits without the writer waiting for the disk.
//!
//! With `synchronous = full`, SQLite fsyncs the WAL inside every COMMIT, and the telemetry
//! writer's thread sleeps through it: at QoS 1 saturation the hub's core sat idle about a
//! tenth of the time, waiting for those fsyncs, while the next batch waited for the thread
//! (docs/benchmarks.md). So the writer's own connection commits at `synchronous = NORMAL`
//! (the WAL is written, not synced) and this module's thread syncs the WAL afterwards; the
//! commit's answer — what lets the hub send the batch's PUBACKs — is given only after a sync
//! that began once the commit had returned. Meanwhile the writer commits the next batch.
//!
//! Why that is as durable as `full`: a WAL is replayed as a prefix. After a power loss
//! SQLite recovers the frames up to the last intact commit frame, so an answered commit —
//! whose frames, and every frame before them, were on disk when its sync returned — is
//! recovered, and a commit after it can only be lost with everything that followed it
//! (never one in the middle). A checkpoint at `NORMAL` syncs the WAL before it copies
//! frames into the database and the database before the WAL is reused, so a frame that a
//! restarted WAL overwrites was already durable in the database file.
//!
//! A failed sync is final: every later commit is answered as not durable until the hub
//! restarts (`run` says why).
//!
//! The WAL is opened by path for each sync, not held open: SQLite deletes and re-creates the
//! file when its last connection closes and another opens, and a held descriptor would then
//! sync a file nobody reads. When there is no WAL file, its frames were checkpointed and the
//! database file is synced instead.

use std::fs::OpenOptions;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;

use tokio::sync::oneshot;

use crate::StoreError;

/// Where a commit's durability is reported once the WAL is synced.
type Pending = oneshot::Sender<Result<(), StoreError>>;

/// Counters of the sync thread, shared with the writer's handle.
#[derive(Debug, Default)]
pub(crate) struct SyncCounters {
    /// Syncs done; one covers every commit answered since the last.
    pub(crate) syncs: AtomicU64,
    /// Syncs that failed (at most one: after a failure every commit is refused, no PUBACK,
    /// until the hub restarts).
    pub(crate) failures: AtomicU64,
}

/// The handle the writer's thread answers commits through.
pub(crate) struct WalSyncer {
    pending: mpsc::Sender<Pending>,
}

impl WalSyncer {
    /// Starts the thread syncing the WAL of the database at `db`, at nice `nice`.
    pub(crate) fn spawn(
        db: &Path,
        nice: i32,
        counters: Arc<SyncCounters>,
    ) -> Result<WalSyncer, StoreError> {
        let (pending, received) = mpsc::channel();
        let files = Files::of(db);
        std::thread::Builder::new()
            .name("telemetry-sync".into())
            .spawn(move || {
                super::telemetry_writer::lower_priority(nice);
                run(&files, &received, &counters);
            })
            .map_err(|e| {
                StoreError::Config(format!("cannot start the telemetry sync thread: {e}"))
            })?;
        Ok(WalSyncer { pending })
    }

    /// Answers `done` once a sync begun after this call has returned.
    pub(crate) fn answer_when_synced(&self, done: Pending) {
        if let Err(mpsc::SendError(done)) = self.pending.send(done) {
            // The thread is gone (it can only have panicked): no sync, so no success.
            let _ = done.send(Err(StoreError::WriterStopped));
        }
    }
}

/// The database file and its WAL.
struct Files {
    db: PathBuf,
    wal: PathBuf,
}

impl Files {
    fn of(db: &Path) -> Files {
        let mut wal = db.as_os_str().to_owned();
        wal.push("-wal");
        Files {
            db: db.to_owned(),
            wal: wal.into(),
        }
    }

    /// Syncs the WAL's data (and its size) to the disk.
    fn sync(&self) -> io::Result<()> {
        match OpenOptions::new().write(true).open(&self.wal) {
            Ok(f) => f.sync_data(),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                OpenOptions::new().write(true).open(&self.db)?.sync_data()
            }
            Err(e) => Err(e),
        }
    }
}

fn run(files: &Files, received: &mpsc::Receiver<Pending>, counters: &SyncCounters) {
    // Once a sync has failed, no later one is trusted: Linux may mark the pages whose
    // write-back failed clean, so the next fsync can succeed without them on disk (the
    // "fsyncgate" lesson PostgreSQL drew, which stops the server). A reading re-sent after
    // its lost PUBACK is found already stored and would be acknowledged on that next sync.
    // So every later commit is refused as not durable, until the hub restarts.
    let mut failed: Option<String> = None;
    while let Ok(first) = received.recv() {
        // Every commit answered so far rides on one sync: they are all in the file already.
        let mut waiting = vec![first];
        waiting.extend(received.try_iter());
        if failed.is_none() {
            counters.syncs.fetch_add(1, Ordering::Relaxed);
            if let Err(e) = files.sync() {
                counters.failures.fetch_add(1, Ordering::Relaxed);
                tracing::error!(wal = %files.wal.display(), error = %e, commits = waiting.len(),
                    "cannot sync the telemetry WAL to disk; telemetry is no longer acknowledged (the devices keep it and send it again) until the hub is restarted with the disk fixed");
                failed = Some(format!("syncing {}: {e}", files.wal.display()));
            }
        }
        let outcome = match &failed {
            None => Ok(()),
            Some(why) => Err(why),
        };
        for done in waiting {
            // A submitter that went away no longer needs the answer.
            let _ = done.send(outcome.map_err(|why| StoreError::Sync(why.clone())));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn syncs_the_wal_or_else_the_database_and_reports_other_failures() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("t.db");
        let files = Files::of(&db);
        assert_eq!(files.wal, dir.path().join("t.db-wal"));
        // Neither file: the error is the database's, not a silent success.
        assert_eq!(
            files.sync().unwrap_err().kind(),
            io::ErrorKind::NotFound,
            "nothing to sync must not pass as synced"
        );
        std::fs::write(&db, b"x").unwrap();
        files.sync().unwrap();
        std::fs::write(&files.wal, b"y").unwrap();
        files.sync().unwrap();
        // A WAL that cannot be opened for writing is a failure, not a fall-back.
        std::fs::remove_file(&files.wal).unwrap();
        std::fs::create_dir(&files.wal).unwrap();
        assert!(files.sync().is_err());
    }

    #[test]
    fn answers_after_the_sync_and_errors_when_it_fails() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("t.db");
        std::fs::write(&db, b"x").unwrap();
        let counters = Arc::new(SyncCounters::default());
        let syncer = WalSyncer::spawn(&db, 0, counters.clone()).unwrap();
        let (done, answer) = oneshot::channel();
        syncer.answer_when_synced(done);
        answer.blocking_recv().unwrap().unwrap();
        assert_eq!(counters.syncs.load(Ordering::Relaxed), 1);
        assert_eq!(counters.failures.load(Ordering::Relaxed), 0);

        // The database gone and no WAL: the sync fails, and so does the answer.
        std::fs::remove_file(&db).unwrap();
        let (done, answer) = oneshot::channel();
        syncer.answer_when_synced(done);
        let e = answer.blocking_recv().unwrap().unwrap_err();
        assert!(matches!(e, StoreError::Sync(_)), "{e}");
        assert_eq!(counters.failures.load(Ordering::Relaxed), 1);

        // The database back: a failed sync is not forgotten, later commits stay refused.
        std::fs::write(&db, b"x").unwrap();
        let (done, answer) = oneshot::channel();
        syncer.answer_when_synced(done);
        let e = answer.blocking_recv().unwrap().unwrap_err();
        assert!(e.to_string().contains("not yet durable"), "{e}");
        assert_eq!(
            counters.syncs.load(Ordering::Relaxed),
            2,
            "no sync is tried again"
        );
    }
}
