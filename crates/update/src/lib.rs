//! Secure software updates for Rampart devices, following The Update Framework (TUF)
//! specification 1.0: what the hub publishes and what a device accepts.
//!
//! - `canonical`: the canonical JSON form every signature is computed over.
//! - `keys`: Ed25519 public keys (with their TUF key ids) and signing keys.
//! - `metadata`: the four top-level roles (root, targets, snapshot, timestamp), delegated
//!   targets roles, and the signed envelope; signature checks against a threshold.
//! - `repository`: builds, signs and publishes a repository with consistent snapshots.
//! - `release`: the hub's staged release workflow — offline signatures collected role by
//!   role, thresholds checked at publish, online re-signing of snapshot and timestamp.
//! - `selection`: Rampart's fields on a target (version, hardware, kind, channel, security)
//!   and which target a device should install; hardware and downgrade checks.
//! - `rollout`: staged rollouts — the plan (waves, thresholds, approval), the states of a
//!   rollout and of its devices, the verdict on a wave, and the hub's instruction to a device.
//! - `client`: the client's trust state machine — the root chain walk, expiry, rollback
//!   and mix-and-match checks, length limits, and target verification before anything is
//!   installed.
//!
//! This crate does no I/O beyond the repository's files: fetching is the caller's job, so the
//! same checks run whether bytes come over HTTPS, from a directory or from a test.

pub mod canonical;
pub mod client;
pub mod error;
pub mod keys;
pub mod metadata;
pub mod release;
pub mod repository;
pub mod rollout;
pub mod selection;

pub use error::UpdateError;

/// The TUF specification version Rampart writes.
pub const SPEC_VERSION: &str = "1.0.31";
