//! Authorization: who may do what on which topic.
//!
//! The broker asks one question through one hook, [`Authorizer::authorize`]: may this
//! verified identity perform this action on this resource? The answer comes from policies:
//!
//! - `identity`: identities, actions and decisions (what the broker passes in).
//! - `template`: resource templates with variables bound to the verified identity
//!   (`${device.id}`, `${device.group}`, `${device.attr.NAME}`, `${cert.serial}`,
//!   `${client.id}`).
//! - `document`: the policy language (TOML or JSON), parsed and validated.
//! - `engine`: evaluation against the attached policies — explicit deny beats allow, nothing
//!   matching means deny — with a per-identity cache that is invalidated on change.
//! - `lint`: findings for overly permissive statements and statements that can never match.

mod document;
mod engine;
mod identity;
mod lint;
mod template;

pub use document::{Effect, PolicyDocument, PolicyError, Statement};
pub use engine::{AttachmentTarget, Facts, PolicyEngine, PolicySet};
pub use identity::{Action, Authorizer, Decision, Identity, IdentityKind};
pub use lint::{Finding, Severity, lint};
pub use template::{Template, Variable};

/// Prefix of every device's namespace.
pub const DEVICE_TOPIC_ROOT: &str = "devices/";
