//! The per-device telemetry sequence number, kept across restarts.
//!
//! Stored as decimal text in `STATE/seq`, replaced atomically (write temporary file, rename)
//! after every reading, so a crash of the agent never reuses a number. (The write is not
//! fsynced per reading: on power loss the counter can step back by the readings of the last
//! few seconds; the durable outbox, which stores each reading with its number, closes that
//! window.)

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
    /// Opens (or starts) the counter in `state_dir`.
    pub fn open(state_dir: &Path) -> Result<Sequence, AgentError> {
        let err = |source| AgentError::State {
            path: state_dir.to_path_buf(),
            source,
        };
        std::fs::create_dir_all(state_dir).map_err(err)?;
        let path = state_dir.join("seq");
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
        let mut s = Sequence::open(dir.path()).expect("open");
        assert_eq!(s.take().expect("take"), 1);
        assert_eq!(s.take().expect("take"), 2);
        drop(s);
        let mut s = Sequence::open(dir.path()).expect("reopen");
        assert_eq!(s.take().expect("take"), 3);
        std::fs::write(dir.path().join("seq"), "garbage").expect("corrupt");
        assert!(
            Sequence::open(dir.path()).is_err(),
            "a corrupt counter fails closed"
        );
    }
}
