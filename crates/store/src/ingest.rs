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
//!
//! A batch holding a row somebody waits for may wait a little too, for company: the
//! *waited delay* (PostgreSQL's `commit_delay` does the same). Under a steady QoS 1 load a
//! commit at once holds about one row per device, and each of its PUBACKs is a TLS record and
//! a write of its own, as is each commit's WAL sync: at 35,000 QoS 1 msgs/s from 100 devices
//! that was about one write system call per message. Waiting a few milliseconds puts more of
//! each device's rows in one commit and their PUBACKs in one write (docs/benchmarks.md). The
//! delay applies only when the batch before held more than one waiter: a lone device's PUBACK
//! is not held back for company that is not coming. Nor is a batch that already has company
//! enough: a quarter of its bound.
//!
//! The queue is a double-ended queue under a lock, not a channel: a submitter pushes its row
//! and wakes the writer only when the writer has something to do (the first row of a batch, a
//! row somebody waits for, a full batch), and the writer takes a whole batch at once. Through
//! a channel every row woke the lingering writer, which took it alone and went back to sleep:
//! a task switch per QoS 0 reading.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::{Notify, Semaphore, TryAcquireError, oneshot};

use crate::{Durable, Store, StoreError, TelemetryRow};

/// A batch with a waiter holding a `COMPANY_DIVISOR`th of its bound (`ingest_batch`) is not
/// delayed for company: it shares its commit well enough, and delaying it held the hub back at
/// QoS 1 saturation, where commits hold their bound (docs/benchmarks.md).
const COMPANY_DIVISOR: usize = 4;

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

type Waiter = oneshot::Sender<Result<(), Arc<StoreError>>>;

/// The rows queued and not yet taken by the writer.
///
/// Double-ended, because a writer that is behind takes a batch off the front of a long
/// queue: from a vector, the rows left behind were all moved up each time (6% of the hub's
/// CPU at QoS 0 saturation, with 65,536 rows queued and 8,000 taken).
#[derive(Default)]
struct Pending {
    rows: VecDeque<TelemetryRow>,
    /// The waiters of rows somebody waits for, each with its row's number: how many rows
    /// were queued before it since the queue began (`taken` + its place in `rows`).
    waiters: VecDeque<(u64, Waiter)>,
    /// Rows the writer has taken so far.
    taken: u64,
    /// The last submitting handle is gone: the writer commits what is queued and ends.
    closed: bool,
    /// The writer has ended: nothing queued now would ever be committed.
    writer_gone: bool,
    /// The writer is holding a batch with a waiter back for company (the waited delay): only
    /// company enough wakes it, not each row somebody waits for.
    delaying: bool,
}

/// What the submitters and the writer share.
struct Shared {
    pending: Mutex<Pending>,
    /// Wakes the writer (at most one permit is kept, so a wake while it works is not lost).
    wake: Notify,
    /// One permit per row that may still be queued: back-pressure on the submitters.
    room: Semaphore,
    /// The bound of a batch without (≥ `max_batch`, unless the queue holds fewer rows), and
    /// the size that ends a linger.
    max_unacknowledged: usize,
    /// The bound of a batch with a waiter.
    max_batch: usize,
    /// The size at which a batch with a waiter has company enough: a waited delay does not
    /// start, or ends, once the batch holds this many rows.
    company: usize,
}

/// The submitting side of the group-commit writer. Cloning is cheap.
#[derive(Clone)]
pub struct IngestQueue {
    handle: Arc<Handle>,
    stats: Arc<IngestStats>,
}

/// Held by every clone of an [`IngestQueue`]; the last one dropped closes the queue.
struct Handle(Arc<Shared>);

impl Drop for Handle {
    fn drop(&mut self) {
        self.0.pending.lock().closed = true;
        self.0.wake.notify_one();
    }
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
    /// How long a batch holding a row somebody waits for may wait for more, when the batch
    /// before it held more than one such row (zero: commit at once).
    pub waited_delay: Duration,
}

impl Batching {
    /// At most `max_rows` rows per transaction, whoever waits; every batch commits at once.
    pub fn immediate(max_rows: usize) -> Batching {
        Batching {
            max_rows,
            max_unacknowledged_rows: max_rows,
            linger: Duration::ZERO,
            waited_delay: Duration::ZERO,
        }
    }
}

impl IngestQueue {
    /// Starts the writer task. `capacity` bounds the rows waiting for a commit (submitters wait
    /// when it is full: back-pressure instead of unbounded memory); `batching` bounds each
    /// transaction and says how long rows nobody waits for may wait for company.
    pub fn spawn(store: Arc<dyn Store>, capacity: usize, batching: Batching) -> IngestQueue {
        let stats = Arc::new(IngestStats::default());
        let batch = Batcher::new(capacity, batching);
        let handle = Arc::new(Handle(batch.shared.clone()));
        tokio::spawn(writer(store, batch, stats.clone()));
        IngestQueue { handle, stats }
    }

    /// Queues a row; the returned ticket resolves once it is committed.
    pub async fn submit(&self, row: TelemetryRow) -> Result<Ticket, StoreError> {
        let (done, rx) = oneshot::channel();
        self.queue(row, Some(done)).await?;
        Ok(Ticket(rx))
    }

    /// Queues a row nobody waits for (QoS 0): it is committed within the queue's linger after
    /// the writer takes it, with other rows. A failed commit is logged and counted in
    /// [`IngestStats::failed`].
    pub async fn submit_unacknowledged(&self, row: TelemetryRow) -> Result<(), StoreError> {
        self.queue(row, None).await
    }

    /// [`IngestQueue::submit`] if the queue has room now: `Ok(Err(row))` hands the row back
    /// when it has none (then `submit` waits for room). Not a future: a caller that usually
    /// finds room keeps no state for waiting (the hub's hook for every PUBLISH).
    pub fn try_submit(
        &self,
        row: TelemetryRow,
    ) -> Result<Result<Ticket, Box<TelemetryRow>>, StoreError> {
        let (done, rx) = oneshot::channel();
        Ok(self.try_queue(row, Some(done))?.map(|()| Ticket(rx)))
    }

    /// [`IngestQueue::submit_unacknowledged`] if the queue has room now: `Ok(Err(row))` hands
    /// the row back when it has none.
    pub fn try_submit_unacknowledged(
        &self,
        row: TelemetryRow,
    ) -> Result<Result<(), Box<TelemetryRow>>, StoreError> {
        self.try_queue(row, None)
    }

    fn try_queue(
        &self,
        row: TelemetryRow,
        done: Option<Waiter>,
    ) -> Result<Result<(), Box<TelemetryRow>>, StoreError> {
        match self.handle.0.room.try_acquire() {
            Ok(permit) => permit.forget(),
            Err(TryAcquireError::NoPermits) => return Ok(Err(Box::new(row))),
            Err(TryAcquireError::Closed) => return Err(StoreError::IngestClosed),
        }
        self.push(row, done).map(Ok)
    }

    async fn queue(&self, row: TelemetryRow, done: Option<Waiter>) -> Result<(), StoreError> {
        // Waits while the queue is full (for the writer to take a batch); fails once it is
        // closed (the writer has ended). A queue with room answers at the first poll;
        // callers that want no future at all use `try_queue`.
        self.handle
            .0
            .room
            .acquire()
            .await
            .map_err(|_| StoreError::IngestClosed)?
            .forget();
        self.push(row, done)
    }

    /// Puts a row in the queue, its room already taken.
    fn push(&self, row: TelemetryRow, done: Option<Waiter>) -> Result<(), StoreError> {
        let shared = &self.handle.0;
        let wake = {
            let mut pending = shared.pending.lock();
            if pending.writer_gone {
                return Err(StoreError::IngestClosed);
            }
            let index = pending.rows.len();
            pending.rows.push_back(row);
            let waited = done.is_some();
            if let Some(done) = done {
                let number = pending.taken + index as u64;
                pending.waiters.push_back((number, done));
            }
            // The writer waits for a first row, lingers until a waiter or a full batch, delays
            // until company enough, and otherwise has no use for a wake: it takes every row
            // queued when it next looks.
            index == 0
                || (waited && !pending.delaying)
                || index + 1 == shared.max_unacknowledged
                || (pending.delaying && index + 1 == shared.company)
        };
        if wake {
            shared.wake.notify_one();
        }
        self.stats.submitted.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    pub fn stats(&self) -> &Arc<IngestStats> {
        &self.stats
    }
}

/// Takes the next batch off the queue.
struct Batcher {
    shared: Arc<Shared>,
    linger: Duration,
    waited_delay: Duration,
    /// Waiters in the batch taken last: the waited delay applies when it held more than one.
    last_waiters: usize,
}

/// Ends the queue when the writer ends, however it ends (done, or its task dropped with the
/// runtime): submitters then get [`StoreError::IngestClosed`] instead of waiting for ever, and
/// the tickets of rows still queued resolve with it.
struct WriterGone(Arc<Shared>);

impl Drop for WriterGone {
    fn drop(&mut self) {
        let orphans = {
            let mut pending = self.0.pending.lock();
            pending.writer_gone = true;
            std::mem::take(&mut pending.waiters)
        };
        self.0.room.close();
        drop(orphans);
    }
}

impl Batcher {
    fn new(capacity: usize, batching: Batching) -> Batcher {
        let max_batch = batching.max_rows.max(1);
        let capacity = capacity.clamp(1, Semaphore::MAX_PERMITS);
        // No more than the queue can hold, like `company`: a linger waiting for a batch
        // larger than the queue ended only at its deadline, while the submitters waited for
        // room (with room for one row, one row per linger).
        let max_unacknowledged = batching
            .max_unacknowledged_rows
            .max(max_batch)
            .min(capacity);
        Batcher {
            shared: Arc::new(Shared {
                pending: Mutex::new(Pending::default()),
                wake: Notify::new(),
                room: Semaphore::new(capacity),
                max_unacknowledged,
                max_batch,
                // No more than the queue can hold: a delay waiting for rows that cannot be
                // queued would only hold the submitters back until it ends.
                company: (max_batch / COMPANY_DIVISOR).clamp(1, capacity),
            }),
            linger: batching.linger,
            waited_delay: batching.waited_delay,
            last_waiters: 0,
        }
    }

    /// Rows queued and not yet taken.
    fn queued(&self) -> usize {
        self.shared.pending.lock().rows.len()
    }

    /// Fills `rows` and `waiters` (both empty) with the next batch; `false` once the queue is
    /// closed and empty.
    async fn next(&mut self, rows: &mut Vec<TelemetryRow>, waiters: &mut Vec<Waiter>) -> bool {
        // Until there is a row.
        loop {
            let woken = self.shared.wake.notified();
            {
                let pending = self.shared.pending.lock();
                if !pending.rows.is_empty() {
                    break;
                }
                if pending.closed {
                    return false;
                }
            }
            woken.await;
        }
        // Nobody waits for these rows: let the batch grow until it is full, a row somebody
        // waits for arrives, the queue closes or the linger ends.
        if !self.linger.is_zero() {
            let deadline = tokio::time::Instant::now() + self.linger;
            loop {
                let woken = self.shared.wake.notified();
                {
                    let pending = self.shared.pending.lock();
                    if !pending.waiters.is_empty()
                        || pending.rows.len() >= self.shared.max_unacknowledged
                        || pending.closed
                    {
                        break;
                    }
                }
                tokio::select! {
                    biased;
                    () = woken => {}
                    () = tokio::time::sleep_until(deadline) => break,
                }
            }
        }
        // Somebody waits for a row of this batch: if others were waiting with the last one,
        // let more rows join it until it has company enough, the queue closes or the delay
        // ends.
        if !self.waited_delay.is_zero() && self.last_waiters > 1 {
            let deadline = tokio::time::Instant::now() + self.waited_delay;
            loop {
                let woken = self.shared.wake.notified();
                {
                    let mut pending = self.shared.pending.lock();
                    pending.delaying = !pending.waiters.is_empty()
                        && pending.rows.len() < self.shared.company
                        && !pending.closed;
                    if !pending.delaying {
                        break;
                    }
                }
                tokio::select! {
                    biased;
                    () = woken => {}
                    () = tokio::time::sleep_until(deadline) => {
                        self.shared.pending.lock().delaying = false;
                        break;
                    }
                }
            }
        }
        let taken = self.take(rows, waiters);
        self.last_waiters = waiters.len();
        self.shared.room.add_permits(taken);
        true
    }

    /// Moves the batch at the head of the queue into `rows` and `waiters`: up to
    /// `max_unacknowledged` rows while none of them has a waiter; once one has, up to
    /// `max_batch`, or up to that row if it lies further. Returns how many rows it took.
    fn take(&self, rows: &mut Vec<TelemetryRow>, waiters: &mut Vec<Waiter>) -> usize {
        let mut pending = self.shared.pending.lock();
        let queued = pending.rows.len();
        // Where the first row somebody waits for lies in the queue.
        let first_waited = pending
            .waiters
            .front()
            .map(|&(number, _)| usize::try_from(number - pending.taken).unwrap_or(usize::MAX));
        let n = match first_waited {
            Some(first) if first < self.shared.max_unacknowledged => {
                queued.min(self.shared.max_batch.max(first + 1))
            }
            _ => queued.min(self.shared.max_unacknowledged),
        };
        if queued - n <= n {
            // The batch is the queue's own buffer, exchanged for the writer's empty vector;
            // the few rows past the batch move into that vector and stay queued. A queue that
            // starts at its buffer's start becomes a vector without a row moving. Drained off
            // the front instead, a batch cut at its bound (then 8,000 rows, every 50 ms at a
            // fixed QoS 0 rate) was copied row by row, and the queue left behind no longer
            // started at its buffer's start: 2.9% of the hub's CPU samples at the compare's
            // fixed QoS 0 rate on an Intel Xeon host, though the A/B measured no change in CPU
            // beyond that host's noise (docs/benchmarks.md).
            let mut rest = VecDeque::from(std::mem::take(rows));
            rest.extend(pending.rows.drain(n..));
            *rows = Vec::from(std::mem::replace(&mut pending.rows, rest));
        } else {
            // A writer that is behind: more rows stay than go, so the batch is the ones that
            // move.
            rows.extend(pending.rows.drain(..n));
        }
        if n == queued {
            waiters.extend(pending.waiters.drain(..).map(|(_, w)| w));
        } else {
            let end = pending.taken + n as u64;
            while pending
                .waiters
                .front()
                .is_some_and(|&(number, _)| number < end)
            {
                waiters.extend(pending.waiters.pop_front().map(|(_, w)| w));
            }
        }
        pending.taken += n as u64;
        n
    }
}

async fn writer(store: Arc<dyn Store>, mut batch: Batcher, stats: Arc<IngestStats>) {
    let _gone = WriterGone(batch.shared.clone());
    let mut rows = Vec::with_capacity(batch.shared.max_unacknowledged);
    let mut waiters = Vec::with_capacity(batch.shared.max_batch);
    // The batch whose sync runs while the next one commits (see below).
    let mut syncing: Option<tokio::task::JoinHandle<()>> = None;
    while batch.next(&mut rows, &mut waiters).await {
        let n = rows.len();
        // The batch goes to the store whole. The next one starts in a vector half as large
        // again as this one: at a steady rate batches differ by a few rows, and growing a
        // vector of thousands of rows copies them all (0.6% of the hub's CPU at a fixed QoS 0
        // rate when it started exactly as large).
        let full = std::mem::replace(&mut rows, Vec::with_capacity(n + n / 2));
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
        if batch.queued() >= n {
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
            body: format!("{{\"seq\":{seq}}}").into(),
        }
    }

    /// A queue with the writer's side in the test's hands: bounded at 4 rows with a waiter
    /// and 16 without, holding `capacity` rows at most.
    fn queue(capacity: usize, linger: Duration) -> (IngestQueue, Batcher) {
        let batch = Batcher::new(
            capacity,
            Batching {
                max_rows: 4,
                max_unacknowledged_rows: 16,
                linger,
                waited_delay: Duration::ZERO,
            },
        );
        let queue = IngestQueue {
            handle: Arc::new(Handle(batch.shared.clone())),
            stats: Arc::default(),
        };
        (queue, batch)
    }

    /// Submits a row per job (true: somebody waits for that row), in order; the tickets.
    async fn submit(queue: &IngestQueue, first_seq: i64, jobs: &[bool]) -> Vec<Ticket> {
        let mut tickets = Vec::new();
        for (seq, &waited) in (first_seq..).zip(jobs) {
            if waited {
                tickets.push(queue.submit(row(seq)).await.expect("queued"));
            } else {
                queue.submit_unacknowledged(row(seq)).await.expect("queued");
            }
        }
        tickets
    }

    /// The batches the writer takes from a closed queue holding `jobs`: (rows, waiters) each.
    async fn batches(jobs: &[bool]) -> Vec<(usize, usize)> {
        let (queue, mut batch) = queue(1024, Duration::ZERO);
        let _tickets = submit(&queue, 1, jobs).await;
        drop(queue);
        let (mut rows, mut waiters, mut sizes) = (Vec::new(), Vec::new(), Vec::new());
        while batch.next(&mut rows, &mut waiters).await {
            let seqs: Vec<i64> = rows.iter().map(|r| r.seq).collect();
            let first = sizes.iter().map(|&(n, _)| n as i64).sum::<i64>() + 1;
            assert_eq!(seqs, (first..first + rows.len() as i64).collect::<Vec<_>>());
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

    /// A lingering batch of rows nobody waits for is taken when a row somebody waits for
    /// joins it, or when it fills, not before: the writer is not woken for each row.
    #[tokio::test]
    async fn a_lingering_batch_ends_on_a_waiter_or_when_full() {
        let (queue, mut batch) = queue(1024, Duration::from_secs(600));
        submit(&queue, 1, &[false; 3]).await;
        let taking = tokio::spawn(async move {
            let (mut rows, mut waiters) = (Vec::new(), Vec::new());
            batch.next(&mut rows, &mut waiters).await;
            (batch, rows.len(), waiters.len())
        });
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(
            !taking.is_finished(),
            "three rows nobody waits for must linger"
        );
        let _ticket = submit(&queue, 4, &[true]).await;
        let (mut batch, rows, waiters) = taking.await.expect("writer side");
        assert_eq!((rows, waiters), (4, 1));

        submit(&queue, 5, &[false; 15]).await;
        let taking = tokio::spawn(async move {
            let (mut rows, mut waiters) = (Vec::new(), Vec::new());
            batch.next(&mut rows, &mut waiters).await;
            rows.len()
        });
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(!taking.is_finished(), "15 of 16 rows must linger");
        submit(&queue, 20, &[false]).await;
        assert_eq!(taking.await.expect("writer side"), 16);
    }

    /// A queue that holds fewer rows than a lingering batch's bound ends the linger when it is
    /// full: its submitters wait for room, and no more rows can join.
    #[tokio::test]
    async fn a_lingering_batch_ends_when_the_queue_is_full() {
        let (queue, batch) = queue(3, Duration::from_secs(600));
        submit(&queue, 1, &[false; 2]).await;
        let taking = take_next(batch);
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(!taking.is_finished(), "two rows of three must linger");
        // The third fills the queue; a fourth waits for room.
        submit(&queue, 3, &[false]).await;
        let fourth = {
            let queue = queue.clone();
            tokio::spawn(async move { submit(&queue, 4, &[false]).await })
        };
        let (batch, rows, waiters, took) = tokio::time::timeout(Duration::from_secs(10), taking)
            .await
            .expect("a full queue ends the linger")
            .expect("writer side");
        assert_eq!((rows, waiters), (3, 0));
        assert!(took < Duration::from_secs(600));
        fourth
            .await
            .expect("the fourth row is queued once there is room");
        assert_eq!(batch.queued(), 1);
    }

    /// Takes the next batch in a task of its own: the batcher, the batch's rows and waiters,
    /// and how long the taking took.
    fn take_next(mut batch: Batcher) -> tokio::task::JoinHandle<(Batcher, usize, usize, Duration)> {
        tokio::spawn(async move {
            let started = tokio::time::Instant::now();
            let (mut rows, mut waiters) = (Vec::new(), Vec::new());
            batch.next(&mut rows, &mut waiters).await;
            (batch, rows.len(), waiters.len(), started.elapsed())
        })
    }

    /// On a queue whose writer has taken no batch yet: takes two rows somebody waits for, so
    /// that the next batch with a waiter is delayed, and starts taking that batch, one such
    /// row: it must be held back.
    async fn one_row_held_back(
        queue: &IngestQueue,
        batch: Batcher,
        seq: i64,
    ) -> tokio::task::JoinHandle<(Batcher, usize, usize, Duration)> {
        let _t = submit(queue, seq, &[true, true]).await;
        let (batch, rows, waiters, _) = take_next(batch).await.expect("writer side");
        assert_eq!((rows, waiters), (2, 2));
        let _t = submit(queue, seq + 2, &[true]).await;
        let taking = take_next(batch);
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(!taking.is_finished(), "one row must wait for company");
        taking
    }

    /// A batch with a waiter waits for company only when the batch before it had more than
    /// one waiter, and only until it holds a quarter of its bound, the queue closes or the
    /// delay ends; rows that arrive meanwhile join it.
    #[tokio::test]
    async fn a_waited_batch_waits_for_company_after_a_shared_commit() {
        let delayed = |waited_delay: Duration, capacity: usize| {
            let batch = Batcher::new(
                capacity,
                Batching {
                    max_rows: 16,
                    max_unacknowledged_rows: 32,
                    linger: Duration::ZERO,
                    waited_delay,
                },
            );
            let queue = IngestQueue {
                handle: Arc::new(Handle(batch.shared.clone())),
                stats: Arc::default(),
            };
            (queue, batch)
        };
        let (queue, batch) = delayed(Duration::from_secs(600), 1024);
        // The first batch, and one after a batch of one waiter: at once.
        let _t = submit(&queue, 1, &[true]).await;
        let (batch, rows, waiters, _) = take_next(batch).await.expect("writer side");
        assert_eq!((rows, waiters), (1, 1));
        let _t = submit(&queue, 2, &[true, true]).await;
        let (batch, rows, waiters, _) = take_next(batch).await.expect("writer side");
        assert_eq!((rows, waiters), (2, 2), "the batch before held one waiter");
        // After a batch of two waiters: held back until it has company enough (4 of 16).
        let _t = submit(&queue, 4, &[true]).await;
        let taking = take_next(batch);
        let _t = submit(&queue, 5, &[true, false]).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(!taking.is_finished(), "3 rows of 4 must wait for company");
        let _t = submit(&queue, 7, &[true]).await;
        let (batch, rows, waiters, _) = taking.await.expect("writer side");
        assert_eq!((rows, waiters), (4, 3));
        // Rows already queued as the delay would start are company enough.
        let _t = submit(&queue, 8, &[true; 5]).await;
        let (batch, rows, waiters, _) = take_next(batch).await.expect("writer side");
        assert_eq!((rows, waiters), (5, 5));
        drop((queue, batch));

        // Closing the queue (the hub stopping) ends the delay.
        let (queue, batch) = delayed(Duration::from_secs(600), 1024);
        let taking = one_row_held_back(&queue, batch, 1).await;
        drop(queue);
        let (_, rows, waiters, _) = taking.await.expect("writer side");
        assert_eq!((rows, waiters), (1, 1));

        // A queue that holds fewer rows than a quarter of the bound: company enough is a
        // full queue (the submitters could queue no more while the delay lasted).
        let (queue, batch) = delayed(Duration::from_secs(600), 2);
        let taking = one_row_held_back(&queue, batch, 1).await;
        let _t = submit(&queue, 4, &[true]).await;
        let (_, rows, waiters, _) = taking.await.expect("writer side");
        assert_eq!((rows, waiters), (2, 2));

        // The delay ends by itself, no sooner.
        let (queue, batch) = delayed(Duration::from_millis(50), 1024);
        let _t = submit(&queue, 1, &[true, true]).await;
        let (batch, _, _, _) = take_next(batch).await.expect("writer side");
        let _t = submit(&queue, 3, &[true]).await;
        let (_, rows, waiters, waited) = take_next(batch).await.expect("writer side");
        assert_eq!((rows, waiters), (1, 1));
        assert!(waited >= Duration::from_millis(50), "{waited:?}");
    }

    /// A full queue makes the next submitter wait until the writer takes a batch.
    #[tokio::test]
    async fn a_full_queue_holds_submitters_back_until_a_batch_is_taken() {
        let (queue, mut batch) = queue(2, Duration::ZERO);
        submit(&queue, 1, &[false, false]).await;
        let third = {
            let queue = queue.clone();
            tokio::spawn(async move { queue.submit_unacknowledged(row(3)).await })
        };
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(!third.is_finished(), "no room for a third row");
        let (mut rows, mut waiters) = (Vec::new(), Vec::new());
        assert!(batch.next(&mut rows, &mut waiters).await);
        assert_eq!(rows.len(), 2);
        third
            .await
            .expect("task")
            .expect("queued once there is room");
        assert_eq!(batch.queued(), 1);
    }

    /// When the writer ends, the tickets of rows it never took resolve with an error, and
    /// submitters, also those waiting for room, are refused: nobody waits for ever.
    #[tokio::test]
    async fn the_writer_ending_fails_queued_tickets_and_later_submits() {
        let (queue, batch) = queue(1, Duration::ZERO);
        let ticket = submit(&queue, 1, &[true]).await.pop().expect("ticket");
        let waiting = {
            let queue = queue.clone();
            tokio::spawn(async move { queue.submit_unacknowledged(row(2)).await })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        drop(WriterGone(batch.shared.clone()));
        assert!(matches!(ticket.await, Err(e) if matches!(*e, StoreError::IngestClosed)));
        assert!(matches!(
            waiting.await.expect("task"),
            Err(StoreError::IngestClosed)
        ));
        assert!(matches!(
            queue.submit(row(3)).await,
            Err(StoreError::IngestClosed)
        ));
    }

    /// Trying to submit: a queue with room takes the row at once; a full one hands the row
    /// back untouched and queues nothing; once the writer has taken a batch there is room
    /// again; a queue whose writer has ended answers with the error, not the row.
    #[tokio::test]
    async fn trying_to_submit_takes_a_row_while_there_is_room_and_hands_it_back_when_full() {
        let (queue, mut batch) = queue(2, Duration::ZERO);
        let ticket = queue
            .try_submit(row(1))
            .expect("open")
            .expect("room for one");
        queue
            .try_submit_unacknowledged(row(2))
            .expect("open")
            .expect("room for two");
        let back = queue.try_submit(row(3)).expect("open").expect_err("full");
        assert_eq!((back.seq, &*back.body), (3, "{\"seq\":3}"));
        let back = queue
            .try_submit_unacknowledged(row(4))
            .expect("open")
            .expect_err("full");
        assert_eq!(back.seq, 4);
        // The writer finds the two rows taken, one with a waiter, and nothing else.
        let (mut rows, mut waiters) = (Vec::new(), Vec::new());
        assert!(batch.next(&mut rows, &mut waiters).await);
        assert_eq!(rows.iter().map(|r| r.seq).collect::<Vec<_>>(), [1, 2]);
        assert_eq!(waiters.len(), 1);
        queue
            .try_submit_unacknowledged(*back)
            .expect("open")
            .expect("room once the writer took its batch");
        // The writer ends without committing its batch: the ticket says so.
        drop((rows, waiters));
        drop(WriterGone(batch.shared.clone()));
        assert!(matches!(ticket.await, Err(e) if matches!(*e, StoreError::IngestClosed)));
        assert!(matches!(
            queue.try_submit(row(5)),
            Err(StoreError::IngestClosed)
        ));
        assert!(matches!(
            queue.try_submit_unacknowledged(row(6)),
            Err(StoreError::IngestClosed)
        ));
    }
}
