//! The TUF client workflow against a remote repository: refresh the trusted metadata, find
//! a target, download and verify it.
//!
//! Used by the agent's updater and by `rampart-agent tuf`, the command external TUF
//! conformance suites drive (`init`, `refresh`, `download` with `--metadata-dir`,
//! `--metadata-url`, `--target-name`, `--target-base-url`, `--target-dir`).

use std::path::{Path, PathBuf};

use rampart_update::UpdateError;
use rampart_update::client::{self, Limits, TrustedState, consistent_target_path};
use rampart_update::metadata::TargetFile;
use time::OffsetDateTime;

use super::download::{DownloadError, Downloads, HttpFetch};
use super::http::{HttpClient, Url};
use super::store::MetadataStore;

/// Where a repository is and how to reach it.
#[derive(Debug, Clone)]
pub struct Remote {
    pub client: HttpClient,
    pub metadata_url: Url,
    pub targets_url: Url,
}

/// Why a refresh or a download failed.
#[derive(Debug, thiserror::Error)]
pub enum TufError {
    #[error(transparent)]
    Update(#[from] UpdateError),
    #[error(transparent)]
    Download(#[from] DownloadError),
    #[error("the update task stopped unexpectedly: {0}")]
    Task(String),
}

/// Refreshes the metadata in `store` from `remote` at `now` (spec section 5). Every file
/// verified before a failure is kept, as the specification asks, and the refusal says which
/// check failed. Runs the synchronous state machine on a blocking thread.
pub async fn refresh(
    store: &MetadataStore,
    remote: &Remote,
    now: OffsetDateTime,
    limits: Limits,
) -> Result<TrustedState, TufError> {
    let store = store.clone();
    let mut fetch = HttpFetch {
        client: remote.client.clone(),
        metadata_url: remote.metadata_url.clone(),
        runtime: tokio::runtime::Handle::current(),
    };
    tokio::task::spawn_blocking(move || {
        let (mut state, dropped) = store.load(&limits)?;
        for d in dropped {
            tracing::warn!(file = %d, "stored update metadata failed its checks; deleted, fetching it again");
        }
        let result = client::refresh(&mut state, &mut fetch, now, &limits);
        store.save(&state)?;
        result.map(|()| state)
    })
    .await
    .map_err(|e| TufError::Task(e.to_string()))?
    .map_err(TufError::from)
}

/// The URL of a target under the consistent-snapshot naming the trusted root uses.
pub fn target_url(
    state: &TrustedState,
    base: &Url,
    name: &str,
    file: &TargetFile,
) -> Result<Url, UpdateError> {
    let path = if state.root().consistent_snapshot {
        consistent_target_path(name, file).ok_or_else(|| UpdateError::NoSupportedHash {
            what: format!("target {name}"),
        })?
    } else {
        name.to_owned()
    };
    Ok(base.join(&path))
}

/// Downloads `name` through `downloads` (resumable, verified) and returns the verified
/// file's path.
pub async fn download(
    state: &TrustedState,
    remote: &Remote,
    downloads: &Downloads,
    name: &str,
) -> Result<(PathBuf, TargetFile), TufError> {
    let (file, _role) = state.find_target(name)?;
    let url = target_url(state, &remote.targets_url, name, &file)?;
    let path = downloads
        .fetch(&remote.client, &url, name, &file, |_| {})
        .await?;
    Ok((path, file))
}

/// The file name a target is saved under in a plain target directory: the name with every
/// byte outside `A-Z a-z 0-9 - . _ ~` percent-encoded (so `a/b.txt` is `a%2Fb.txt`), the
/// convention TUF clients share.
pub fn target_file_name(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for b in name.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// `rampart-agent tuf download`: refreshes, downloads `name` verified into `target_dir`.
pub async fn download_to_dir(
    store: &MetadataStore,
    remote: &Remote,
    name: &str,
    target_dir: &Path,
    now: OffsetDateTime,
) -> Result<PathBuf, TufError> {
    let state = refresh(store, remote, now, Limits::default()).await?;
    let staging = Downloads::new(&target_dir.join(".rampart-downloads"));
    let (verified, _) = download(&state, remote, &staging, name).await?;
    let dest = target_dir.join(target_file_name(name));
    std::fs::rename(&verified, &dest).map_err(|e| {
        TufError::Update(UpdateError::Io {
            path: dest.display().to_string(),
            source: e,
        })
    })?;
    let _ = std::fs::remove_dir_all(target_dir.join(".rampart-downloads"));
    Ok(dest)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn target_names_are_percent_encoded_like_other_tuf_clients() {
        assert_eq!(target_file_name("a/b c.txt"), "a%2Fb%20c.txt");
        assert_eq!(target_file_name("file-1.0_x~"), "file-1.0_x~");
    }
}
