//! Fetching metadata and artifacts from an update repository.
//!
//! [`HttpFetch`] adapts the HTTP client to the TUF client's `Fetch` trait (the trust state
//! machine is synchronous; this runs it on a blocking thread and drives each request on the
//! runtime).
//!
//! [`Downloads`] fetches artifacts so that an agent restart, a dropped connection or a power
//! cut costs only the bytes not yet committed:
//!
//! ```text
//! DIR/SHA256.part          bytes received so far
//! DIR/SHA256.journal.json  {name, length, sha256, committed}: bytes known to be on disk
//! DIR/SHA256.verified      complete, length and hashes checked against signed metadata
//! ```
//!
//! The part file is fsynced before `committed` moves forward, so a restart resumes from
//! `committed` with `Range: bytes=N-` (a server that ignores the range and sends the whole
//! file is handled: the part starts over). Nothing past the signed length is ever written,
//! and only a file whose hashes match is renamed to `.verified`; a mismatch deletes the part.

use std::io::{Seek, Write};
use std::path::{Path, PathBuf};

use rampart_update::UpdateError;
use rampart_update::client::{Fetch, verify_target_file};
use rampart_update::metadata::TargetFile;
use rampart_update::repository::atomic_write;
use serde::{Deserialize, Serialize};
use tokio::runtime::Handle;

use super::http::{HttpClient, HttpError, Url, detail};

/// Metadata over HTTP(S) for the TUF client (call from a blocking thread).
#[derive(Debug)]
pub struct HttpFetch {
    pub client: HttpClient,
    pub metadata_url: Url,
    pub runtime: Handle,
}

impl Fetch for HttpFetch {
    fn fetch(&mut self, path: &str, max_len: u64) -> Result<Option<Vec<u8>>, UpdateError> {
        let url = self.metadata_url.join(path);
        let client = self.client.clone();
        match self
            .runtime
            .block_on(async move { client.get_small(&url, max_len).await })
        {
            Ok(v) => Ok(v),
            Err(HttpError::TooLarge { limit, .. }) => Err(UpdateError::TooLarge {
                what: path.to_owned(),
                len: limit + 1,
                limit,
            }),
            Err(e) => Err(UpdateError::Transport {
                what: path.to_owned(),
                message: e.to_string(),
            }),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Journal {
    name: String,
    length: u64,
    sha256: String,
    committed: u64,
}

/// Why a download did not produce a verified file.
#[derive(Debug, thiserror::Error)]
pub enum DownloadError {
    #[error(transparent)]
    Http(#[from] HttpError),
    #[error(transparent)]
    Verify(#[from] UpdateError),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{url}: the server sent more than the signed length of {length} bytes")]
    TooLong { url: String, length: u64 },
    #[error("{url}: the server answered a range request from byte {asked} with {got:?}")]
    BadRange {
        url: String,
        asked: u64,
        got: Option<String>,
    },
    #[error("{url}: the connection ended after {got} of {length} bytes (will resume)")]
    Incomplete { url: String, got: u64, length: u64 },
    #[error("target {0} has no sha256 hash to name its download by")]
    NoSha256(String),
}

/// Bytes between fsyncs of the part file (and journal updates).
const COMMIT_EVERY: u64 = 1 << 20;

/// The artifact download directory.
#[derive(Debug, Clone)]
pub struct Downloads {
    dir: PathBuf,
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> DownloadError + '_ {
    move |source| DownloadError::Io {
        path: path.to_path_buf(),
        source,
    }
}

impl Downloads {
    pub fn new(dir: &Path) -> Downloads {
        Downloads {
            dir: dir.to_path_buf(),
        }
    }

    fn paths(&self, sha: &str) -> (PathBuf, PathBuf, PathBuf) {
        (
            self.dir.join(format!("{sha}.part")),
            self.dir.join(format!("{sha}.journal.json")),
            self.dir.join(format!("{sha}.verified")),
        )
    }

    /// Downloads `name` from `url` (resuming a journaled attempt) and returns the path of
    /// the verified file. `progress` is called with the bytes on disk so far.
    pub async fn fetch(
        &self,
        client: &HttpClient,
        url: &Url,
        name: &str,
        file: &TargetFile,
        mut progress: impl FnMut(u64),
    ) -> Result<PathBuf, DownloadError> {
        let sha = file
            .hashes
            .get("sha256")
            .ok_or_else(|| DownloadError::NoSha256(name.to_owned()))?
            .clone();
        std::fs::create_dir_all(&self.dir).map_err(io(&self.dir))?;
        let (part, journal_path, verified) = self.paths(&sha);
        if verified.exists() {
            match check(name, file, &verified).await {
                Ok(()) => return Ok(verified),
                Err(_) => remove(&verified)?,
            }
        }
        let mut journal = read_journal(&journal_path, name, file, &sha).unwrap_or(Journal {
            name: name.to_owned(),
            length: file.length,
            sha256: sha.clone(),
            committed: 0,
        });
        let mut out = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&part)
            .map_err(io(&part))?;
        let on_disk = out.metadata().map_err(io(&part))?.len();
        journal.committed = journal.committed.min(on_disk).min(file.length);
        // Bytes past the last commit may be torn by a power cut: drop them.
        out.set_len(journal.committed).map_err(io(&part))?;
        write_journal(&journal_path, &journal)?;
        let mut offset = journal.committed;

        if offset < file.length {
            let from = (offset > 0).then_some(offset);
            let mut resp = client.get(url, from).await?;
            match (resp.status, from) {
                (200, _) => {
                    offset = 0;
                    out.set_len(0).map_err(io(&part))?;
                }
                (206, Some(n)) => {
                    let range = resp
                        .headers
                        .get("content-range")
                        .and_then(|v| v.to_str().ok())
                        .map(str::to_owned);
                    let starts = range
                        .as_deref()
                        .and_then(|r| r.strip_prefix("bytes "))
                        .and_then(|r| r.split_once('-'))
                        .and_then(|(a, _)| a.parse::<u64>().ok());
                    if starts != Some(n) {
                        return Err(DownloadError::BadRange {
                            url: resp.url,
                            asked: n,
                            got: range,
                        });
                    }
                }
                (status, _) => {
                    let body = resp
                        .read_limited(2048, client.timeout)
                        .await
                        .unwrap_or_default();
                    return Err(HttpError::Status {
                        url: resp.url,
                        status,
                        detail: detail(&body),
                    }
                    .into());
                }
            }
            out.seek(std::io::SeekFrom::Start(offset))
                .map_err(io(&part))?;
            let mut since_commit = 0u64;
            while let Some(chunk) = resp.chunk(client.timeout).await? {
                if offset + chunk.len() as u64 > file.length {
                    drop(out);
                    remove(&part)?;
                    remove(&journal_path)?;
                    return Err(DownloadError::TooLong {
                        url: resp.url,
                        length: file.length,
                    });
                }
                out.write_all(&chunk).map_err(io(&part))?;
                offset += chunk.len() as u64;
                since_commit += chunk.len() as u64;
                if since_commit >= COMMIT_EVERY {
                    out.sync_data().map_err(io(&part))?;
                    journal.committed = offset;
                    write_journal(&journal_path, &journal)?;
                    since_commit = 0;
                    progress(offset);
                }
            }
            out.sync_data().map_err(io(&part))?;
            journal.committed = offset;
            write_journal(&journal_path, &journal)?;
            progress(offset);
            if offset < file.length {
                return Err(DownloadError::Incomplete {
                    url: resp.url,
                    got: offset,
                    length: file.length,
                });
            }
        }
        drop(out);
        if let Err(e) = check(name, file, &part).await {
            remove(&part)?;
            remove(&journal_path)?;
            return Err(e);
        }
        std::fs::rename(&part, &verified).map_err(io(&verified))?;
        remove(&journal_path)?;
        sync_dir(&self.dir)?;
        Ok(verified)
    }

    /// Removes every download except the verified files named in `keep`.
    pub fn clean(&self, keep: &[PathBuf]) -> Result<(), DownloadError> {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return Ok(());
        };
        for e in entries.flatten() {
            let p = e.path();
            if !keep.contains(&p) {
                remove(&p)?;
            }
        }
        Ok(())
    }
}

async fn check(name: &str, file: &TargetFile, path: &Path) -> Result<(), DownloadError> {
    let (name, file, path) = (name.to_owned(), file.clone(), path.to_path_buf());
    tokio::task::spawn_blocking(move || verify_target_file(&name, &file, &path))
        .await
        .map_err(|e| DownloadError::Io {
            path: PathBuf::new(),
            source: std::io::Error::other(e.to_string()),
        })?
        .map_err(DownloadError::from)
}

fn read_journal(path: &Path, name: &str, file: &TargetFile, sha: &str) -> Option<Journal> {
    let j: Journal = serde_json::from_slice(&std::fs::read(path).ok()?).ok()?;
    (j.name == name && j.length == file.length && j.sha256 == sha).then_some(j)
}

fn write_journal(path: &Path, j: &Journal) -> Result<(), DownloadError> {
    let text = serde_json::to_vec(j).map_err(|e| DownloadError::Io {
        path: path.to_path_buf(),
        source: std::io::Error::other(e),
    })?;
    atomic_write(path, &text).map_err(DownloadError::from)
}

fn remove(path: &Path) -> Result<(), DownloadError> {
    super::remove_file(path).map_err(io(path))
}

fn sync_dir(dir: &Path) -> Result<(), DownloadError> {
    super::sync_dir(dir).map_err(io(dir))
}
