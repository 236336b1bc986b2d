//! Resource templates: topic filters or client ids with variables bound to the verified
//! identity of the connection.
//!
//! A variable whose value is missing (a service has no `${device.group}`) or unsafe in a topic
//! (empty, or containing `/`, `+`, `#` or U+0000) makes the statement inapplicable for that
//! identity: templates fail closed, they never widen into wildcards.

use std::collections::BTreeMap;
use std::fmt;

/// A variable of the policy language.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Variable {
    /// `${device.id}`: the identity's id, for devices only.
    DeviceId,
    /// `${device.group}`: the device's group.
    DeviceGroup,
    /// `${device.attr.NAME}`: an attribute of the device.
    DeviceAttr(String),
    /// `${cert.serial}`: serial number of the presented certificate.
    CertSerial,
    /// `${client.id}`: the MQTT client id of the connection.
    ClientId,
}

impl Variable {
    fn parse(name: &str) -> Result<Variable, String> {
        match name {
            "device.id" => Ok(Variable::DeviceId),
            "device.group" => Ok(Variable::DeviceGroup),
            "cert.serial" => Ok(Variable::CertSerial),
            "client.id" => Ok(Variable::ClientId),
            other => match other.strip_prefix("device.attr.") {
                Some(attr)
                    if !attr.is_empty()
                        && attr
                            .bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-') =>
                {
                    Ok(Variable::DeviceAttr(attr.to_owned()))
                }
                _ => Err(format!(
                    "unknown variable ${{{other}}}; known: ${{device.id}}, ${{device.group}}, \
                     ${{device.attr.NAME}}, ${{cert.serial}}, ${{client.id}}"
                )),
            },
        }
    }

    /// True for variables that single out one identity (its own namespace).
    pub fn is_identity_bound(&self) -> bool {
        matches!(
            self,
            Variable::DeviceId | Variable::CertSerial | Variable::ClientId
        )
    }
}

impl fmt::Display for Variable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Variable::DeviceId => f.write_str("${device.id}"),
            Variable::DeviceGroup => f.write_str("${device.group}"),
            Variable::DeviceAttr(a) => write!(f, "${{device.attr.{a}}}"),
            Variable::CertSerial => f.write_str("${cert.serial}"),
            Variable::ClientId => f.write_str("${client.id}"),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Lit(String),
    Var(Variable),
}

/// A parsed resource template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    source: String,
    parts: Vec<Part>,
}

/// The values variables take for one connection.
#[derive(Debug, Clone, Copy)]
pub struct Bindings<'a> {
    pub device_id: Option<&'a str>,
    pub group: Option<&'a str>,
    pub attributes: &'a BTreeMap<String, String>,
    pub cert_serial: &'a str,
    pub client_id: &'a str,
}

fn safe_value(v: &str) -> bool {
    !v.is_empty() && !v.contains(['/', '+', '#', '\0'])
}

impl Template {
    /// Parses `text`; `${...}` introduces a variable.
    pub fn parse(text: &str) -> Result<Template, String> {
        let mut parts = Vec::new();
        let mut rest = text;
        while let Some(start) = rest.find("${") {
            if start > 0 {
                parts.push(Part::Lit(rest[..start].to_owned()));
            }
            let after = &rest[start + 2..];
            let end = after
                .find('}')
                .ok_or_else(|| format!("unterminated variable in {text:?}"))?;
            parts.push(Part::Var(Variable::parse(&after[..end])?));
            rest = &after[end + 1..];
        }
        if !rest.is_empty() {
            parts.push(Part::Lit(rest.to_owned()));
        }
        Ok(Template {
            source: text.to_owned(),
            parts,
        })
    }

    /// The text as written.
    pub fn source(&self) -> &str {
        &self.source
    }

    pub fn variables(&self) -> impl Iterator<Item = &Variable> {
        self.parts.iter().filter_map(|p| match p {
            Part::Var(v) => Some(v),
            Part::Lit(_) => None,
        })
    }

    /// True if some variable singles out the identity.
    pub fn has_identity_variable(&self) -> bool {
        self.variables().any(Variable::is_identity_bound)
    }

    /// The template with every variable replaced by `sample` (for syntax checks).
    pub fn with_placeholder(&self, sample: &str) -> String {
        self.parts
            .iter()
            .map(|p| match p {
                Part::Lit(s) => s.as_str(),
                Part::Var(_) => sample,
            })
            .collect()
    }

    /// Renders the template for one connection; `None` if a variable has no safe value.
    pub fn render(&self, b: &Bindings<'_>) -> Option<String> {
        let mut out = String::with_capacity(self.source.len() + 16);
        for p in &self.parts {
            match p {
                Part::Lit(s) => out.push_str(s),
                Part::Var(v) => {
                    let value = match v {
                        Variable::DeviceId => b.device_id?,
                        Variable::DeviceGroup => b.group?,
                        Variable::DeviceAttr(a) => b.attributes.get(a)?.as_str(),
                        Variable::CertSerial => b.cert_serial,
                        Variable::ClientId => b.client_id,
                    };
                    if !safe_value(value) {
                        return None;
                    }
                    out.push_str(value);
                }
            }
        }
        Some(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bindings<'a>(attrs: &'a BTreeMap<String, String>) -> Bindings<'a> {
        Bindings {
            device_id: Some("gw-1"),
            group: Some("berlin"),
            attributes: attrs,
            cert_serial: "0abc",
            client_id: "gw-1",
        }
    }

    #[test]
    fn renders_variables() {
        let mut attrs = BTreeMap::new();
        attrs.insert("site".to_string(), "plant-7".to_string());
        let t =
            Template::parse("sites/${device.attr.site}/${device.group}/${device.id}/#").unwrap();
        assert_eq!(
            t.render(&bindings(&attrs)).unwrap(),
            "sites/plant-7/berlin/gw-1/#"
        );
        assert!(t.has_identity_variable());
        let t = Template::parse("c/${cert.serial}-${client.id}").unwrap();
        assert_eq!(t.render(&bindings(&attrs)).unwrap(), "c/0abc-gw-1");
    }

    #[test]
    fn unbound_or_unsafe_values_fail_closed() {
        let mut attrs = BTreeMap::new();
        attrs.insert("evil".to_string(), "a/#".to_string());
        let t = Template::parse("x/${device.attr.evil}").unwrap();
        assert_eq!(t.render(&bindings(&attrs)), None);
        let t = Template::parse("x/${device.attr.missing}").unwrap();
        assert_eq!(t.render(&bindings(&attrs)), None);
        let mut b = bindings(&attrs);
        b.device_id = None;
        assert_eq!(
            Template::parse("devices/${device.id}/#")
                .unwrap()
                .render(&b),
            None
        );
    }

    #[test]
    fn syntax_errors() {
        assert!(
            Template::parse("devices/${device.id")
                .unwrap_err()
                .contains("unterminated")
        );
        assert!(
            Template::parse("devices/${iot:ClientId}")
                .unwrap_err()
                .contains("unknown variable")
        );
        assert!(Template::parse("devices/${device.attr.}").is_err());
    }
}
