//! Secure software updates on the device: the TUF client wired to storage and the network.
//!
//! - `http`: a small HTTP/1.1 client (plain, or HTTPS with the device certificate).
//! - `store`: the trusted metadata on disk (atomic writes, fail closed) and the trust clock
//!   for devices without a real-time clock.
//! - `download`: metadata fetching for the TUF client, and resumable artifact downloads with
//!   a journal.
//! - `tuf`: the refresh/download workflow, shared by the agent and the `rampart-agent tuf`
//!   conformance command.
//! - `install`: package and A/B image installers, the trial after a switch, commit and
//!   rollback, recovery of interrupted installs.
//! - `updater`: the agent's task that checks, decides (security updates by default) and
//!   installs, reporting each stage to the hub.
//!
//! The verification itself is `rampart_update`'s: this module moves bytes and keeps state.

pub mod download;
pub mod http;
pub mod install;
pub mod store;
pub mod tuf;
pub mod updater;

use std::path::Path;

/// Removes a file; one that is already gone is fine.
pub(crate) fn remove_file(path: &Path) -> std::io::Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// Makes a directory's entries (renames, new files) durable.
pub(crate) fn sync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir).and_then(|d| d.sync_all())
}
