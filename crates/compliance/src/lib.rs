//! Rampart's CRA compliance engine: the records and documents Regulation (EU) 2024/2847 asks of
//! a manufacturer, computed from the platform's real state.
//!
//! | module | serves |
//! |---|---|
//! | [`product`] | product records, support period (Art. 13(8), (19)) |
//! | [`classify`] | Annex III/IV classification and conformity routes (Art. 7, 32) |
//! | [`sbom`] | SBOMs: Cargo, firmware manifests, CycloneDX/SPDX (Annex I Part II (1)) |
//! | [`osv`], [`version`], [`scan`] | vulnerability matching (Annex I Part I (2)(a), Part II (2)) |
//! | [`vex`] | VEX statements, OpenVEX and CycloneDX VEX |
//! | [`csaf`] | CSAF advisories, provider metadata, security.txt (Part II (4)-(6)) |
//! | [`report`] | Article 14 report clocks |
//! | [`srp`] | drafts for the single reporting platform and user notifications (Art. 14(8)) |
//! | [`documents`] | Annex VII technical documentation and Annex V declaration |
//!
//! This crate is pure logic over files and values: it stores nothing itself (the hub's store
//! does) and talks to no network.

pub mod classify;
pub mod csaf;
pub mod documents;
mod error;
pub mod osv;
pub mod product;
pub mod report;
pub mod sbom;
pub mod scan;
pub mod srp;
pub mod version;
pub mod vex;

pub use error::ComplianceError;
