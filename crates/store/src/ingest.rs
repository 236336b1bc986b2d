//! Group commit for telemetry.
//!
//! Connections submit rows and get a [`Ticket`]; one writer task takes everything queued,
//! writes it in a single transaction, and resolves every ticket of the batch with the commit's
//! outcome. While one commit is in flight the next batch accumulates, so the batch size grows
//! with load and the cost of each fsync is shared by every row in it.
//!
//! Rows nobody waits for (telemetry sent at QoS 0: no PUBACK) need not be committed at once.
//! A batch holding only such rows waits up to the queue's *linger* for more before it commits,
//! unless it fills or a row somebody waits for arrives. At a steady QoS 0 rate a commit with
//! few rows costs about as much as one with many (the fsync, the WAL's partly filled pages),
//! so this trades a stated delay on rows with no durability promise for fewer commits.
//!
//! Such a batch may also grow larger than one with a waiter ([`Batching`]): nobody's PUBACK
//! waits on its commit, so a longer commit delays no one, and each device's rows fill more of
//! its pages per commit. A batch with a waiter stays at the smaller bound, because with QoS 1
//! the batch is also the devices' in-flight window: one commit holding most of it leaves the
//! devices nothing to send until it is durable.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

use crate::{Durable, Store, StoreError, TelemetryRow};

struct Job {
    row: TelemetryRow,
    /// Where the commit's outcome goes; `None` when nobody waits for this row.
    done: Option<oneshot::Sender<Result<(), Arc<StoreError>>>>,
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
    /// Rows whose batch failed to commit or to become durable.
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

/// How the writer forms its transactions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Batching {
    /// Most rows in a transaction that holds a row somebody waits for (a QoS 1 PUBACK).
    pub max_rows: usize,
    /// Most rows in a transaction that holds only rows nobody waits for (QoS 0); at least
    /// `max_rows` is used.
    pub max_unacknowledged_rows: usize,
    /// How long a batch of rows nobody waits for may wait for more (zero: commit at once).
    pub linger: Duration,
}

impl Batching {
    /// At most `max_rows` rows per transaction, whoever waits; every batch commits at once.
    pub fn immediate(max_rows: usize) -> Batching {
        Batching {
            max_rows,
            max_unacknowledged_rows: max_rows,
            linger: Duration::ZERO,
        }
    }
}

impl IngestQueue {
    /// Starts the writer task. `capacity` bounds the rows waiting for a commit (submitters wait
    /// when it is full: back-pressure instead of unbounded memory); `batching` bounds each
    /// transaction and says how long rows nobody waits for may wait for company.
    pub fn spawn(store: Arc<dyn Store>, capacity: usize, batching: Batching) -> IngestQueue {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        let stats = Arc::new(IngestStats::default());
        let max_batch = batching.max_rows.max(1);
        let batch = Batcher {
            rx,
            max_batch,
            max_unacknowledged: batching.max_unacknowledged_rows.max(max_batch),
            linger: batching.linger,
        };
        tokio::spawn(writer(store, batch, stats.clone()));
        IngestQueue { tx, stats }
    }

    /// Queues a row; the returned ticket resolves once it is committed.
    pub async fn submit(&self, row: TelemetryRow) -> Result<Ticket, StoreError> {
        let (done, rx) = oneshot::channel();
        self.queue(Job {
            row,
            done: Some(done),
        })
        .await?;
        Ok(Ticket(rx))
    }

    /// Queues a row nobody waits for (QoS 0): it is committed within the queue's linger after
    /// the writer takes it, with other rows. A failed commit is logged and counted in
    /// [`IngestStats::failed`].
    pub async fn submit_unacknowledged(&self, row: TelemetryRow) -> Result<(), StoreError> {
        self.queue(Job { row, done: None }).await
    }

    async fn queue(&self, job: Job) -> Result<(), StoreError> {
        self.tx
            .send(job)
            .await
            .map_err(|_| StoreError::IngestClosed)?;
        self.stats.submitted.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    pub fn stats(&self) -> &Arc<IngestStats> {
        &self.stats
    }
}

/// Takes the next batch off the queue.
struct Batcher {
    rx: mpsc::Receiver<Job>,
    /// The bound of a batch with a waiter.
    max_batch: usize,
    /// The bound of a batch without (≥ `max_batch`).
    max_unacknowledged: usize,
    linger: Duration,
}

impl Batcher {
    /// Fills `rows` and `waiters` with the next batch; `false` once the queue is closed and
    /// empty.
    async fn next(&mut self, rows: &mut Vec<TelemetryRow>, waiters: &mut Vec<Waiter>) -> bool {
        let Some(first) = self.rx.recv().await else {
            return false;
        };
        take(first, rows, waiters);
        self.drain(rows, waiters);
        if !waiters.is_empty() || rows.len() >= self.max_unacknowledged || self.linger.is_zero() {
            return true;
        }
        // Nobody waits for these rows: let the batch grow until it is full, a row somebody
        // waits for arrives, or the linger ends.
        let linger = tokio::time::sleep(self.linger);
        tokio::pin!(linger);
        while waiters.is_empty() && rows.len() < self.max_unacknowledged {
            tokio::select! {
                biased;
                job = self.rx.recv() => match job {
                    Some(job) => take(job, rows, waiters),
                    None => break,
                },
                () = &mut linger => break,
            }
            self.drain(rows, waiters);
        }
        true
    }

    /// Adds the jobs already queued, up to a full batch: `max_unacknowledged` rows while
    /// nobody waits for one of them, `max_batch` once somebody does.
    fn drain(&mut self, rows: &mut Vec<TelemetryRow>, waiters: &mut Vec<Waiter>) {
        loop {
            let bound = if waiters.is_empty() {
                self.max_unacknowledged
            } else {
                self.max_batch
            };
            if rows.len() >= bound {
                break;
            }
            match self.rx.try_recv() {
                Ok(job) => take(job, rows, waiters),
                Err(_) => break,
            }
        }
    }
}

type Waiter = oneshot::Sender<Result<(), Arc<StoreError>>>;

/// Adds a job to the batch, and its waiter if it has one.
fn take(job: Job, rows: &mut Vec<TelemetryRow>, waiters: &mut Vec<Waiter>) {
    rows.push(job.row);
    waiters.extend(job.done);
}

async fn writer(store: Arc<dyn Store>, mut batch: Batcher, stats: Arc<IngestStats>) {
    let mut rows = Vec::with_capacity(batch.max_unacknowledged);
    let mut waiters = Vec::with_capacity(batch.max_batch);
    // The batch whose sync runs while the next one commits (see below).
    let mut syncing: Option<tokio::task::JoinHandle<()>> = None;
    while batch.next(&mut rows, &mut waiters).await {
        let n = rows.len();
        // The batch goes to the store whole; the next one starts in a vector as large as
        // this one was, so that it seldom grows.
        let full = std::mem::replace(&mut rows, Vec::with_capacity(n));
        let committed = store.commit_telemetry(full).await;
        // At most one batch waits for its sync while the next commits.
        if let Some(previous) = syncing.take() {
            let _ = previous.await;
        }
        let answer = answer(
            committed,
            n,
            std::mem::take(&mut waiters),
            Arc::clone(&store),
            Arc::clone(&stats),
        );
        // The next batch commits during this one's sync only when the writer is behind: as
        // many rows wait as this batch held. Otherwise the rows that arrive during the sync
        // join the next batch, and the commit that would have taken them early is saved.
        if batch.rx.len() >= n {
            syncing = Some(tokio::spawn(answer));
        } else {
            answer.await;
        }
    }
    if let Some(previous) = syncing {
        let _ = previous.await;
    }
}

/// Waits until a committed batch is durable and answers its waiters with the outcome.
async fn answer(
    committed: Result<(u64, Durable), StoreError>,
    n: usize,
    waiters: Vec<Waiter>,
    store: Arc<dyn Store>,
    stats: Arc<IngestStats>,
) {
    let outcome = match committed {
        Ok((inserted, durable)) => durable.await.map(|()| inserted),
        Err(e) => Err(e),
    };
    let n = n as u64;
    let result = match outcome {
        Ok(inserted) => {
            stats.committed.fetch_add(n, Ordering::Relaxed);
            stats.inserted.fetch_add(inserted, Ordering::Relaxed);
            stats.batches.fetch_add(1, Ordering::Relaxed);
            Ok(())
        }
        Err(e) => {
            let unacknowledged = n - waiters.len() as u64;
            tracing::error!(rows = n, unacknowledged, error = %e,
                "telemetry batch not stored durably; the publishers waiting for it get no \
                 PUBACK and will resend; the rows sent at QoS 0 may be lost");
            stats.failed.fetch_add(n, Ordering::Relaxed);
            Err(Arc::new(e))
        }
    };
    stats
        .upkeep_failures
        .store(store.telemetry_upkeep_failures(), Ordering::Relaxed);
    for w in waiters {
        // A submitter that went away (connection closed) no longer needs the answer.
        let _ = w.send(result.clone());
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use time::OffsetDateTime;

    /// A reading of one device, taken `seq` seconds after a fixed instant (so a row built
    /// again is the same reading re-sent); the store's other unit tests use it too.
    pub(crate) fn row(seq: i64) -> TelemetryRow {
        TelemetryRow {
            device_id: "dev-1".into(),
            seq,
            ts: OffsetDateTime::UNIX_EPOCH + time::Duration::seconds(1_790_000_000 + seq),
            received_at: OffsetDateTime::now_utc(),
            voltage_v: Some(52.0),
            current_a: None,
            soc_pct: None,
            soh_pct: None,
            temp_min_c: None,
            temp_max_c: None,
            cell_min_v: None,
            cell_max_v: None,
            alarms: vec![],
            body: format!("{{\"seq\":{seq}}}"),
        }
    }

    /// A batcher over a queue already holding `jobs` (true: somebody waits for that row),
    /// bounded at 4 rows with a waiter and 16 without; the sizes of the batches it takes.
    async fn batches(jobs: &[bool]) -> Vec<(usize, usize)> {
        let (tx, rx) = mpsc::channel(1024);
        let mut kept = Vec::new();
        for (seq, &waited) in (1..).zip(jobs) {
            let done = waited.then(|| {
                let (done, answer) = oneshot::channel();
                kept.push(answer);
                done
            });
            tx.try_send(Job {
                row: row(seq),
                done,
            })
            .expect("room");
        }
        drop(tx);
        let mut batch = Batcher {
            rx,
            max_batch: 4,
            max_unacknowledged: 16,
            linger: Duration::ZERO,
        };
        let (mut rows, mut waiters, mut sizes) = (Vec::new(), Vec::new(), Vec::new());
        while batch.next(&mut rows, &mut waiters).await {
            sizes.push((rows.len(), waiters.len()));
            rows.clear();
            waiters.clear();
        }
        sizes
    }

    #[tokio::test]
    async fn rows_nobody_waits_for_fill_the_larger_bound() {
        assert_eq!(batches(&[false; 20]).await, vec![(16, 0), (4, 0)]);
    }

    #[tokio::test]
    async fn rows_somebody_waits_for_keep_the_smaller_bound() {
        assert_eq!(batches(&[true; 10]).await, vec![(4, 4), (4, 4), (2, 2)]);
    }

    /// Once a row with a waiter joins, the batch stops at the smaller bound, or at once if it
    /// already holds more: its PUBACK does not wait for a commit of the larger size to fill.
    #[tokio::test]
    async fn a_waiter_joining_ends_the_batch_at_the_smaller_bound() {
        let mut jobs = vec![false; 2];
        jobs.extend([true; 6]);
        assert_eq!(batches(&jobs).await, vec![(4, 2), (4, 4)]);
        let mut jobs = vec![false; 6];
        jobs.push(true);
        jobs.extend([false; 12]);
        assert_eq!(batches(&jobs).await, vec![(7, 1), (12, 0)]);
    }
}
