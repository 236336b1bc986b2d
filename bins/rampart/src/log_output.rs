//! Where log lines go: standard error, written in batches.
//!
//! One write(2) per line cost the hub about 7 % of its CPU in a connection storm, where it
//! logs a line per connection (docs/benchmarks.md). Lines are gathered in memory and written
//! together:
//! - by a flusher thread, [`FLUSH_AFTER`] after the first line of a batch;
//! - at once for a warning or an error, with every line logged before it (in order), so that
//!   what matters is on standard error before the call that logged it returns;
//! - at once when a batch reaches [`FLUSH_BYTES`];
//! - when the process ends, and before a panic's message.
//!
//! A process killed outright can lose the info and debug lines of its last [`FLUSH_AFTER`].

use std::io::{self, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use tracing::{Level, Metadata};
use tracing_subscriber::fmt::MakeWriter;

/// How long a line below warning level may wait in memory.
pub const FLUSH_AFTER: Duration = Duration::from_millis(20);

/// A batch this large is written at once.
pub const FLUSH_BYTES: usize = 64 * 1024;

type Sink = Box<dyn Write + Send>;

struct Shared {
    state: Mutex<State>,
    first_line: Condvar,
    /// False if the flusher thread could not start: every line is then written at once.
    batched: AtomicBool,
}

struct State {
    batch: Vec<u8>,
    sink: Sink,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock (in a sink's write) leaves a batch that can still be
        // written; logging must not panic in turn.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl State {
    /// Writes the batch. Under the lock, so batches reach the sink in the order logged.
    fn flush(&mut self) {
        if self.batch.is_empty() {
            return;
        }
        // Nowhere to report a failed write of the log itself; the lines are dropped rather
        // than kept to grow without bound.
        let _ = self.sink.write_all(&self.batch);
        let _ = self.sink.flush();
        self.batch.clear();
    }
}

/// The `MakeWriter` for `tracing_subscriber::fmt`, and the handle to flush it.
#[derive(Clone)]
pub struct BatchedStderr {
    shared: Arc<Shared>,
}

impl BatchedStderr {
    /// Batches for standard error, flushed by a thread of their own.
    pub fn start() -> BatchedStderr {
        Self::with_sink(Box::new(io::stderr()))
    }

    fn with_sink(sink: Sink) -> BatchedStderr {
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                batch: Vec::with_capacity(FLUSH_BYTES),
                sink,
            }),
            first_line: Condvar::new(),
            batched: AtomicBool::new(true),
        });
        let flusher = shared.clone();
        let spawned = std::thread::Builder::new()
            .name("log-flush".into())
            .spawn(move || {
                let mut state = flusher.lock();
                loop {
                    while state.batch.is_empty() {
                        state = flusher
                            .first_line
                            .wait(state)
                            .unwrap_or_else(|p| p.into_inner());
                    }
                    drop(state);
                    std::thread::sleep(FLUSH_AFTER);
                    state = flusher.lock();
                    state.flush();
                }
            });
        if spawned.is_err() {
            shared.batched.store(false, Ordering::Relaxed);
        }
        BatchedStderr { shared }
    }

    /// Writes what is waiting.
    pub fn flush(&self) {
        self.shared.lock().flush();
    }
}

/// The process's log output, once logging is set up.
static INSTALLED: OnceLock<BatchedStderr> = OnceLock::new();

/// Makes `out` the process's log output for [`flush`] and [`exit`].
pub fn install(out: &BatchedStderr) {
    let _ = INSTALLED.set(out.clone());
}

/// Writes every log line still waiting.
pub fn flush() {
    if let Some(out) = INSTALLED.get() {
        out.flush();
    }
}

/// Ends the process with `code`, after writing the log lines still waiting.
pub fn exit(code: i32) -> ! {
    flush();
    std::process::exit(code)
}

/// One log line on its way into the batch.
pub struct Line<'a> {
    shared: &'a Shared,
    urgent: bool,
}

impl Write for Line<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let mut state = self.shared.lock();
        let first = state.batch.is_empty();
        state.batch.extend_from_slice(buf);
        if self.urgent
            || state.batch.len() >= FLUSH_BYTES
            || !self.shared.batched.load(Ordering::Relaxed)
        {
            state.flush();
        } else if first {
            self.shared.first_line.notify_one();
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for BatchedStderr {
    type Writer = Line<'a>;

    fn make_writer(&'a self) -> Line<'a> {
        Line {
            shared: &self.shared,
            urgent: true,
        }
    }

    fn make_writer_for(&'a self, meta: &Metadata<'_>) -> Line<'a> {
        Line {
            shared: &self.shared,
            // tracing orders levels by verbosity: ERROR < WARN < INFO.
            urgent: *meta.level() <= Level::WARN,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;

    /// A sink the test can read: what reached it, in order.
    #[derive(Clone, Default)]
    struct Seen(Arc<Mutex<Vec<u8>>>);

    impl Write for Seen {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl Seen {
        fn text(&self) -> String {
            String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
        }
    }

    fn line(out: &BatchedStderr, urgent: bool, text: &str) {
        Line {
            shared: &out.shared,
            urgent,
        }
        .write_all(text.as_bytes())
        .unwrap();
    }

    #[test]
    fn info_lines_wait_a_moment_and_a_warning_takes_them_along_in_order() {
        let seen = Seen::default();
        let out = BatchedStderr::with_sink(Box::new(seen.clone()));
        line(&out, false, "info 1\n");
        line(&out, false, "info 2\n");
        assert_eq!(seen.text(), "", "info lines are batched");
        line(&out, true, "warn 3\n");
        assert_eq!(seen.text(), "info 1\ninfo 2\nwarn 3\n");
    }

    #[test]
    fn the_flusher_writes_a_batch_within_its_delay() {
        let seen = Seen::default();
        let out = BatchedStderr::with_sink(Box::new(seen.clone()));
        let t = Instant::now();
        line(&out, false, "connected\n");
        while seen.text().is_empty() {
            assert!(
                t.elapsed() < Duration::from_secs(2),
                "not flushed within 2 s"
            );
            std::thread::sleep(Duration::from_millis(2));
        }
        assert!(t.elapsed() >= FLUSH_AFTER, "flushed before its delay");
        assert_eq!(seen.text(), "connected\n");
        // And again for the next batch: the flusher goes back to waiting.
        line(&out, false, "disconnected\n");
        let t = Instant::now();
        while seen.text() == "connected\n" {
            assert!(t.elapsed() < Duration::from_secs(2), "second batch stuck");
            std::thread::sleep(Duration::from_millis(2));
        }
        assert_eq!(seen.text(), "connected\ndisconnected\n");
    }

    #[test]
    fn a_full_batch_and_an_explicit_flush_write_at_once() {
        let seen = Seen::default();
        let out = BatchedStderr::with_sink(Box::new(seen.clone()));
        let long = "x".repeat(1023) + "\n";
        for _ in 0..FLUSH_BYTES / long.len() {
            line(&out, false, &long);
        }
        assert_eq!(
            seen.text().len(),
            FLUSH_BYTES,
            "written when the batch filled"
        );
        line(&out, false, "tail\n");
        out.flush();
        assert!(seen.text().ends_with(&format!("{long}tail\n")));
    }

    #[test]
    fn lines_from_many_threads_arrive_whole() {
        let seen = Seen::default();
        let out = BatchedStderr::with_sink(Box::new(seen.clone()));
        std::thread::scope(|s| {
            for t in 0..4 {
                let out = out.clone();
                s.spawn(move || {
                    for i in 0..500 {
                        line(&out, i % 100 == 0, &format!("thread {t} line {i}\n"));
                    }
                });
            }
        });
        out.flush();
        let text = seen.text();
        assert_eq!(text.lines().count(), 2_000);
        for t in 0..4 {
            let mine: Vec<usize> = text
                .lines()
                .filter_map(|l| l.strip_prefix(&format!("thread {t} line ")))
                .map(|n| n.parse().unwrap())
                .collect();
            assert_eq!(
                mine,
                (0..500).collect::<Vec<_>>(),
                "thread {t}'s lines in order"
            );
        }
    }
}
