//! The policy language.
//!
//! A policy is a named list of statements, written in TOML (or the same structure in JSON):
//!
//! ```toml
//! name = "fleet-default"
//! description = "Each device reaches only its own topics."
//!
//! [[statement]]
//! effect = "allow"
//! actions = ["connect"]
//! resources = ["${device.id}"]
//!
//! [[statement]]
//! effect = "allow"
//! actions = ["publish", "subscribe", "receive"]
//! resources = ["devices/${device.id}/#"]
//! ```
//!
//! `actions` are `connect`, `publish`, `subscribe`, `receive` (`*` = the three topic actions). For
//! `connect` a resource is a client id (`*` = any); for the others it is an MQTT topic filter
//! (`+` and `#` wildcards). Resources may use variables (see `template`).

use serde::{Deserialize, Serialize};

use crate::identity::Action;
use crate::template::Template;
use rampart_mqtt::topic;

/// Allow or deny.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Effect {
    Allow,
    Deny,
}

/// One statement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Statement {
    /// Optional label shown in decisions and lint findings.
    pub sid: Option<String>,
    pub effect: Effect,
    pub actions: Vec<Action>,
    pub resources: Vec<Template>,
}

impl Statement {
    /// "statement 2 (sid)" for messages.
    pub fn label(&self, index: usize) -> String {
        match &self.sid {
            Some(s) => format!("statement {} ({s})", index + 1),
            None => format!("statement {}", index + 1),
        }
    }
}

/// A validated policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyDocument {
    pub name: String,
    pub description: String,
    pub statements: Vec<Statement>,
}

/// Why a policy document was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    #[error("cannot parse policy: {0}")]
    Parse(String),
    #[error("invalid policy name {0:?}: use 1-64 of A-Z a-z 0-9 . _ -")]
    Name(String),
    #[error("statement {statement}: {message}")]
    Statement { statement: usize, message: String },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDocument {
    name: String,
    #[serde(default)]
    description: String,
    #[serde(rename = "statement", alias = "statements", default)]
    statements: Vec<RawStatement>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStatement {
    #[serde(default)]
    sid: Option<String>,
    effect: Effect,
    actions: Vec<String>,
    resources: Vec<String>,
}

fn parse_action(s: &str) -> Result<Vec<Action>, String> {
    Ok(match s {
        "connect" => vec![Action::Connect],
        "publish" => vec![Action::Publish],
        "subscribe" => vec![Action::Subscribe],
        "receive" => vec![Action::Receive],
        "*" => vec![Action::Publish, Action::Subscribe, Action::Receive],
        other => {
            return Err(format!(
                "unknown action {other:?} (connect, publish, subscribe, receive, or * for the three topic actions)"
            ));
        }
    })
}

fn valid_name(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= 64
        && n.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

impl PolicyDocument {
    /// Parses a policy from TOML, or JSON when the text starts with `{`.
    pub fn parse(text: &str) -> Result<PolicyDocument, PolicyError> {
        let raw: RawDocument = if text.trim_start().starts_with('{') {
            serde_json::from_str(text).map_err(|e| PolicyError::Parse(e.to_string()))?
        } else {
            toml::from_str(text).map_err(|e| PolicyError::Parse(e.to_string()))?
        };
        if !valid_name(&raw.name) {
            return Err(PolicyError::Name(raw.name));
        }
        let mut statements = Vec::with_capacity(raw.statements.len());
        for (i, s) in raw.statements.into_iter().enumerate() {
            let err = |message: String| PolicyError::Statement {
                statement: i + 1,
                message,
            };
            if s.actions.is_empty() {
                return Err(err("no actions".into()));
            }
            if s.resources.is_empty() {
                return Err(err("no resources".into()));
            }
            let mut actions = Vec::new();
            for a in &s.actions {
                for a in parse_action(a).map_err(err)? {
                    if !actions.contains(&a) {
                        actions.push(a);
                    }
                }
            }
            let connect = actions.contains(&Action::Connect);
            let topics = actions.iter().any(|a| a.is_topic_action());
            if connect && topics {
                return Err(err(
                    "connect takes client ids and the other actions take topics: put them in separate statements"
                        .into(),
                ));
            }
            let mut resources = Vec::with_capacity(s.resources.len());
            for r in &s.resources {
                let t = Template::parse(r).map_err(err)?;
                let sample = t.with_placeholder("x");
                if topics {
                    topic::validate_topic_filter(&sample).map_err(|e| {
                        err(format!("resource {r:?} is not a valid topic filter: {e}"))
                    })?;
                    if sample.starts_with("$share/") {
                        return Err(err(format!(
                            "resource {r:?}: shared subscriptions are not supported"
                        )));
                    }
                } else if sample != "*" && sample.contains(['/', '+', '#']) {
                    return Err(err(format!(
                        "resource {r:?} is not a client id (or \"*\" for any)"
                    )));
                }
                resources.push(t);
            }
            statements.push(Statement {
                sid: s.sid,
                effect: s.effect,
                actions,
                resources,
            });
        }
        Ok(PolicyDocument {
            name: raw.name,
            description: raw.description,
            statements,
        })
    }

    /// The default fleet policy installed by `rampart init`: each device may connect under its
    /// own id and use only its own namespace.
    pub fn fleet_default_text() -> &'static str {
        FLEET_DEFAULT
    }

    /// The policy quarantined devices get: only the update and diagnostics topics.
    pub fn quarantine_text() -> &'static str {
        QUARANTINE
    }

    /// The policy of factory claim certificates: only their own provisioning topics.
    pub fn provisioning_text() -> &'static str {
        PROVISIONING
    }
}

const FLEET_DEFAULT: &str = r#"# Installed by `rampart init`, attached to the whole fleet.
name = "fleet-default"
description = "Each device connects under its own id and reaches only devices/<its id>/."

[[statement]]
sid = "own-client-id"
effect = "allow"
actions = ["connect"]
resources = ["${device.id}"]

[[statement]]
sid = "own-namespace"
effect = "allow"
actions = ["publish", "subscribe", "receive"]
resources = ["devices/${device.id}/#"]

[[statement]]
sid = "own-control-topics"
effect = "allow"
actions = ["publish", "subscribe", "receive"]
resources = ["$rampart/devices/${device.id}/#"]
"#;

const QUARANTINE: &str = r#"# Installed by `rampart init`. A quarantined device gets this policy instead of its own:
# it can still receive updates and send diagnostics, nothing else.
name = "quarantine"
description = "Only update and diagnostics topics stay open."

[[statement]]
sid = "own-client-id"
effect = "allow"
actions = ["connect"]
resources = ["${device.id}"]

[[statement]]
sid = "updates-and-diagnostics"
effect = "allow"
actions = ["publish", "subscribe", "receive"]
resources = [
    "devices/${device.id}/update/#",
    "devices/${device.id}/diagnostics/#",
    "$rampart/devices/${device.id}/#",
]
"#;

const PROVISIONING: &str = r#"# Installed by `rampart init`, attached to every claim certificate.
name = "provisioning"
description = "A factory claim certificate may only ask for a device certificate."

[[statement]]
sid = "any-client-id"
effect = "allow"
actions = ["connect"]
resources = ["*"]

[[statement]]
sid = "own-provisioning-topics"
effect = "allow"
actions = ["publish", "subscribe", "receive"]
resources = ["$rampart/provision/${client.id}/#"]
"#;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn built_in_policies_parse() {
        for text in [FLEET_DEFAULT, QUARANTINE, PROVISIONING] {
            PolicyDocument::parse(text).expect("built-in policy parses");
        }
    }

    #[test]
    fn json_form() {
        let p = PolicyDocument::parse(
            r#"{"name":"p","statement":[{"effect":"deny","actions":["*"],"resources":["secret/#"]}]}"#,
        )
        .unwrap();
        assert_eq!(p.statements[0].actions.len(), 3);
        assert_eq!(p.statements[0].effect, Effect::Deny);
    }

    #[test]
    fn errors_point_at_the_statement() {
        let cases = [
            ("name = \"a b\"", "invalid policy name"),
            (
                "name = \"p\"\n[[statement]]\neffect = \"allow\"\nactions = [\"fly\"]\nresources = [\"x\"]",
                "statement 1: unknown action",
            ),
            (
                "name = \"p\"\n[[statement]]\neffect = \"allow\"\nactions = [\"publish\"]\nresources = [\"a/#/b\"]",
                "not a valid topic filter",
            ),
            (
                "name = \"p\"\n[[statement]]\neffect = \"allow\"\nactions = [\"connect\", \"publish\"]\nresources = [\"*\"]",
                "separate statements",
            ),
            (
                "name = \"p\"\n[[statement]]\neffect = \"allow\"\nactions = [\"connect\"]\nresources = [\"a/b\"]",
                "not a client id",
            ),
            (
                "name = \"p\"\n[[statement]]\neffect = \"allow\"\nactions = [\"publish\"]\nresources = [\"${nope}\"]",
                "unknown variable",
            ),
            (
                "name = \"p\"\n[[statement]]\neffect = \"maybe\"\nactions = [\"publish\"]\nresources = [\"x\"]",
                "cannot parse",
            ),
            ("name = \"p\"\nextra = 1", "cannot parse"),
        ];
        for (text, needle) in cases {
            let e = PolicyDocument::parse(text).expect_err(text).to_string();
            assert!(e.contains(needle), "{text}\n=> {e}");
        }
    }
}
