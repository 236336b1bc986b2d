//! Group commit for telemetry.
//!
//! Connections submit rows and get a [`Ticket`]; one writer task takes everything queued,
//! writes it in a single transaction, and resolves every ticket of the batch with the commit's
//! outcome. While one commit is in flight the next batch accumulates, so the batch size grows
//! with load and the cost of each fsync is shared by every row in it.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};

use tokio::sync::{mpsc, oneshot};

use crate::{Store, StoreError, TelemetryRow};

struct Job {
    row: TelemetryRow,
    done: oneshot::Sender<Result<(), Arc<StoreError>>>,
}

/// Counters of the ingest queue.
#[derive(Debug, Default)]
pub struct IngestStats {
    /// Rows submitted.
    pub submitted: AtomicU64,
    /// Rows in committed batches (including duplicates skipped by the store).
    pub committed: AtomicU64,
    /// Rows that were new (not duplicates).
    pub inserted: AtomicU64,
    /// Transactions committed.
    pub batches: AtomicU64,
    /// Rows whose batch failed to commit.
    pub failed: AtomicU64,
    /// The store's failed upkeep steps (`TelemetryStore::telemetry_upkeep_failures`), as of
    /// the last batch.
    pub upkeep_failures: AtomicU64,
}

/// The submitting side of the group-commit writer. Cloning is cheap.
#[derive(Clone)]
pub struct IngestQueue {
    tx: mpsc::Sender<Job>,
    stats: Arc<IngestStats>,
}

impl std::fmt::Debug for IngestQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IngestQueue")
            .field("stats", &self.stats)
            .finish()
    }
}

/// Resolves when the submitted row is durable (or its commit failed).
#[derive(Debug)]
pub struct Ticket(oneshot::Receiver<Result<(), Arc<StoreError>>>);

impl Future for Ticket {
    type Output = Result<(), Arc<StoreError>>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.0)
            .poll(cx)
            .map(|r| r.unwrap_or_else(|_| Err(Arc::new(StoreError::IngestClosed))))
    }
}

impl IngestQueue {
    /// Starts the writer task. `capacity` bounds the rows waiting for a commit (submitters wait
    /// when it is full: back-pressure instead of unbounded memory); `max_batch` bounds one
    /// transaction.
    pub fn spawn(store: Arc<dyn Store>, capacity: usize, max_batch: usize) -> IngestQueue {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        let stats = Arc::new(IngestStats::default());
        tokio::spawn(writer(store, rx, max_batch.max(1), stats.clone()));
        IngestQueue { tx, stats }
    }

    /// Queues a row; the returned ticket resolves once it is committed.
    pub async fn submit(&self, row: TelemetryRow) -> Result<Ticket, StoreError> {
        let (done, rx) = oneshot::channel();
        self.tx
            .send(Job { row, done })
            .await
            .map_err(|_| StoreError::IngestClosed)?;
        self.stats.submitted.fetch_add(1, Ordering::Relaxed);
        Ok(Ticket(rx))
    }

    pub fn stats(&self) -> &Arc<IngestStats> {
        &self.stats
    }
}

async fn writer(
    store: Arc<dyn Store>,
    mut rx: mpsc::Receiver<Job>,
    max_batch: usize,
    stats: Arc<IngestStats>,
) {
    let mut rows = Vec::with_capacity(max_batch);
    let mut waiters = Vec::with_capacity(max_batch);
    while let Some(first) = rx.recv().await {
        rows.push(first.row);
        waiters.push(first.done);
        while rows.len() < max_batch {
            match rx.try_recv() {
                Ok(job) => {
                    rows.push(job.row);
                    waiters.push(job.done);
                }
                Err(_) => break,
            }
        }
        let n = rows.len() as u64;
        let outcome = store.insert_telemetry(&rows).await;
        let result = match outcome {
            Ok(inserted) => {
                stats.committed.fetch_add(n, Ordering::Relaxed);
                stats.inserted.fetch_add(inserted, Ordering::Relaxed);
                stats.batches.fetch_add(1, Ordering::Relaxed);
                Ok(())
            }
            Err(e) => {
                tracing::error!(rows = n, error = %e, "telemetry batch failed to commit; \
                    the publishers get no PUBACK and will resend");
                stats.failed.fetch_add(n, Ordering::Relaxed);
                Err(Arc::new(e))
            }
        };
        stats
            .upkeep_failures
            .store(store.telemetry_upkeep_failures(), Ordering::Relaxed);
        for w in waiters.drain(..) {
            // A submitter that went away (connection closed) no longer needs the answer.
            let _ = w.send(result.clone());
        }
        rows.clear();
    }
}
