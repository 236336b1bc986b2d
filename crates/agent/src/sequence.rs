//! Per-device sequence numbers (telemetry: `STATE/seq`, events: `STATE/event-seq`), kept
//! across restarts.
//!
//! Stored as decimal text, replaced atomically (write temporary file, rename) after every
//! number taken, so a crash of the agent never reuses a number. The write is not fsynced: on
//! power loss the file can step back by the last few seconds, so at start the agent moves the
//! counter past the highest number in the outbox (which is synced per its fsync policy).

use std::io::Write;
use std::path::{Path, PathBuf};

use crate::error::AgentError;

/// A persistent counter.
#[derive(Debug)]
pub struct Sequence {
    path: PathBuf,
    next: u64,
}

impl Sequence {
    /// Opens (or starts) the counter `name` in `state_dir`.
    pub fn open(state_dir: &Path, name: &str) -> Result<Sequence, AgentError> {
        let err = |source| AgentError::State {
            path: state_dir.to_path_buf(),
            source,
        };
        std::fs::create_dir_all(state_dir).map_err(err)?;
        let path = state_dir.join(name);
        let next = match std::fs::read_to_string(&path) {
            Ok(s) => s.trim().parse::<u64>().map_err(|e| AgentError::State {
                path: path.clone(),
                source: std::io::Error::new(std::io::ErrorKind::InvalidData, e),
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => 1,
            Err(e) => return Err(err(e)),
        };
        Ok(Sequence { path, next })
    }

    /// The next number to hand out.
    pub fn peek(&self) -> u64 {
        self.next
    }

    /// Makes sure the next number is at least `n`.
    pub fn ensure_at_least(&mut self, n: u64) {
        self.next = self.next.max(n);
    }

    /// Records that the number from [`Sequence::peek`] was used. Called after the document
    /// carrying it is in the outbox: a crash in between leaves the number unused (no gap),
    /// and one after is covered by the outbox's highest number at the next start.
    pub fn commit(&mut self) -> Result<(), AgentError> {
        self.take().map(|_| ())
    }

    /// Takes the next number and records that it was used.
    pub fn take(&mut self) -> Result<u64, AgentError> {
        let n = self.next;
        self.next += 1;
        let tmp = self.path.with_extension("tmp");
        let write = || -> std::io::Result<()> {
            let mut f = std::fs::File::create(&tmp)?;
            writeln!(f, "{}", self.next)?;
            drop(f);
            std::fs::rename(&tmp, &self.path)
        };
        write().map_err(|source| AgentError::State {
            path: self.path.clone(),
            source,
        })?;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn survives_reopen_and_never_repeats() {
        let dir = tempfile::tempdir().expect("tmp");
        let mut s = Sequence::open(dir.path(), "seq").expect("open");
        assert_eq!(s.take().expect("take"), 1);
        assert_eq!(s.take().expect("take"), 2);
        drop(s);
        let mut s = Sequence::open(dir.path(), "seq").expect("reopen");
        assert_eq!(s.take().expect("take"), 3);
        s.ensure_at_least(10);
        s.ensure_at_least(5);
        assert_eq!(s.take().expect("take"), 10);
        std::fs::write(dir.path().join("seq"), "garbage").expect("corrupt");
        assert!(
            Sequence::open(dir.path(), "seq").is_err(),
            "a corrupt counter fails closed"
        );
    }
}
