//! Software bills of materials: one model, several producers and formats.
//!
//! Producers: [`cargo`] (a Rust workspace, from `cargo metadata` and Cargo.lock), [`firmware`]
//! (a component manifest for a firmware release), and [`ingest`] (CycloneDX 1.4-1.6 or
//! SPDX 2.3 JSON made by other tools). Writers: [`cyclonedx`] (1.6 JSON) and [`spdx`] (2.3
//! JSON). The model carries the per-component fields BSI TR-03183-2 asks for: creator
//! (supplier/authors), name, version, filename, licences, hashes (SHA-512 of the deployable
//! where the file was at hand), source and download locations, purl, and a dependency graph
//! with a completeness marker.

pub mod cargo;
pub mod cyclonedx;
pub mod firmware;
pub mod ingest;
pub mod spdx;
pub mod spdx3;

use serde::{Deserialize, Serialize};

/// What a component is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ComponentKind {
    Application,
    Library,
    Firmware,
    OperatingSystem,
    File,
}

impl ComponentKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ComponentKind::Application => "application",
            ComponentKind::Library => "library",
            ComponentKind::Firmware => "firmware",
            ComponentKind::OperatingSystem => "operating-system",
            ComponentKind::File => "file",
        }
    }

    pub fn parse(s: &str) -> Option<ComponentKind> {
        Some(match s {
            "application" => ComponentKind::Application,
            "library" | "framework" => ComponentKind::Library,
            "firmware" => ComponentKind::Firmware,
            "operating-system" => ComponentKind::OperatingSystem,
            "file" => ComponentKind::File,
            _ => return None,
        })
    }
}

/// A hash of a component's file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hash {
    /// `SHA-256`, `SHA-512`, ... (CycloneDX spelling).
    pub alg: String,
    /// Lower-case hex.
    pub value: String,
}

/// Whether a component's dependency list is known to be complete.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Completeness {
    Complete,
    Incomplete,
    #[default]
    Unknown,
}

impl Completeness {
    pub fn as_str(self) -> &'static str {
        match self {
            Completeness::Complete => "complete",
            Completeness::Incomplete => "incomplete",
            Completeness::Unknown => "unknown",
        }
    }
}

/// One component.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Component {
    /// Unique within the SBOM (the purl where there is one).
    pub bom_ref: String,
    pub kind: ComponentKind,
    pub name: String,
    pub version: String,
    pub purl: Option<String>,
    /// Who supplies the component (an organisation or person).
    pub supplier: Option<String>,
    pub authors: Vec<String>,
    /// An SPDX licence expression, or `None` when not declared.
    pub license: Option<String>,
    pub hashes: Vec<Hash>,
    pub description: Option<String>,
    /// Where the source is (repository).
    pub source_url: Option<String>,
    /// Where the deployable can be downloaded.
    pub download_url: Option<String>,
    /// The deployable's file name.
    pub filename: Option<String>,
    /// Whether this component's own dependency list is complete.
    pub dependencies_complete: Completeness,
}

impl Component {
    /// The OSV ecosystem and package name of this component, from its purl.
    pub fn osv_package(&self) -> Option<(String, String)> {
        self.purl.as_deref().and_then(osv_package_of_purl)
    }
}

/// A bill of materials.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sbom {
    /// The component the SBOM describes (its name and version identify the release).
    pub root: Component,
    pub components: Vec<Component>,
    /// `bom_ref` → the `bom_ref`s it depends on directly.
    pub dependencies: Vec<(String, Vec<String>)>,
    /// RFC 3339 creation time.
    pub created: String,
    /// Who made the SBOM (the manufacturer) — the TR's "creator of the SBOM".
    pub author: Option<String>,
    /// The tool that produced it.
    pub tool: String,
    /// The format it was read from (for ingested SBOMs), e.g. `CycloneDX 1.5`.
    pub source_format: Option<String>,
}

impl Sbom {
    /// All components including the root.
    pub fn all_components(&self) -> impl Iterator<Item = &Component> {
        std::iter::once(&self.root).chain(self.components.iter())
    }

    /// The direct dependencies of `bom_ref`.
    pub fn depends_on(&self, bom_ref: &str) -> &[String] {
        self.dependencies
            .iter()
            .find(|(r, _)| r == bom_ref)
            .map(|(_, d)| d.as_slice())
            .unwrap_or(&[])
    }
}

/// A parsed package URL (purl-spec): `pkg:type/namespace/name@version?qualifiers#subpath`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Purl {
    pub kind: String,
    pub namespace: Option<String>,
    pub name: String,
    pub version: Option<String>,
    /// `key=value` qualifiers (keys lower-cased, values decoded), e.g. `distro`, `arch`.
    pub qualifiers: Vec<(String, String)>,
}

impl Purl {
    /// The value of a qualifier.
    pub fn qualifier(&self, key: &str) -> Option<&str> {
        self.qualifiers
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    pub fn parse(s: &str) -> Option<Purl> {
        let rest = s.strip_prefix("pkg:")?;
        let rest = rest.split('#').next()?;
        let (rest, query) = rest.split_once('?').unwrap_or((rest, ""));
        let qualifiers = query
            .split('&')
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| (k.to_ascii_lowercase(), percent_decode(v)))
            .collect();
        let (path, version) = match rest.rsplit_once('@') {
            // An '@' inside the path is a scoped npm namespace, encoded as %40.
            Some((p, v)) => (p, Some(percent_decode(v))),
            None => (rest, None),
        };
        let mut parts: Vec<&str> = path.trim_matches('/').split('/').collect();
        if parts.len() < 2 {
            return None;
        }
        let kind = parts.remove(0).to_ascii_lowercase();
        let name = percent_decode(parts.pop()?);
        let namespace = if parts.is_empty() {
            None
        } else {
            Some(
                parts
                    .iter()
                    .map(|p| percent_decode(p))
                    .collect::<Vec<_>>()
                    .join("/"),
            )
        };
        if name.is_empty() {
            return None;
        }
        Some(Purl {
            kind,
            namespace,
            name,
            version,
            qualifiers,
        })
    }
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && i + 2 < b.len()
            // Bytes, not a str slice: a '%' before a multi-byte character must not panic.
            && let Ok(hex) = std::str::from_utf8(&b[i + 1..i + 3])
            && let Ok(v) = u8::from_str_radix(hex, 16)
        {
            out.push(v);
            i += 3;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Percent-encodes a purl segment (name or version).
pub fn purl_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | '~' | '+') {
            out.push(c);
        } else {
            let mut buf = [0u8; 4];
            for b in c.encode_utf8(&mut buf).bytes() {
                out.push_str(&format!("%{b:02X}"));
            }
        }
    }
    out
}

/// Maps a purl to the OSV (ecosystem, package name) it is matched under.
pub fn osv_package_of_purl(purl: &str) -> Option<(String, String)> {
    let p = Purl::parse(purl)?;
    let joined = |sep: &str| match &p.namespace {
        Some(ns) => format!("{ns}{sep}{}", p.name),
        None => p.name.clone(),
    };
    let (eco, name) = match p.kind.as_str() {
        "cargo" => ("crates.io", p.name.clone()),
        "npm" => ("npm", joined("/")),
        "pypi" => ("PyPI", p.name.to_ascii_lowercase().replace('_', "-")),
        "golang" => ("Go", joined("/")),
        "maven" => ("Maven", joined(":")),
        "gem" => ("RubyGems", p.name.clone()),
        "nuget" => ("NuGet", p.name.clone()),
        "hex" => ("Hex", p.name.clone()),
        "pub" => ("Pub", p.name.clone()),
        "composer" => ("Packagist", joined("/")),
        // OSV files Debian advisories under the release ("Debian:12"); the purl says which
        // with its `distro` qualifier ("debian-12" or a code name). Without it, "Debian".
        "deb" => match p.namespace.as_deref() {
            Some("debian") => {
                let eco = match p.qualifier("distro").and_then(debian_release) {
                    Some(n) => format!("Debian:{n}"),
                    None => "Debian".to_owned(),
                };
                return Some((eco, p.name.clone()));
            }
            Some("ubuntu") => ("Ubuntu", p.name.clone()),
            _ => return None,
        },
        _ => return None,
    };
    Some((eco.to_owned(), name))
}

/// The Debian release number of a purl `distro` qualifier: "debian-12", "12" or a code name.
fn debian_release(distro: &str) -> Option<u32> {
    let d = distro.to_ascii_lowercase();
    let d = d.strip_prefix("debian-").unwrap_or(&d);
    if let Ok(n) = d.parse() {
        return Some(n);
    }
    let n = match d {
        "jessie" => 8,
        "stretch" => 9,
        "buster" => 10,
        "bullseye" => 11,
        "bookworm" => 12,
        "trixie" => 13,
        "forky" => 14,
        _ => return None,
    };
    Some(n)
}

/// Normalises old-style Cargo licence fields (`MIT/Apache-2.0`) into SPDX expressions.
pub fn normalise_license(expr: &str) -> String {
    let parts: Vec<&str> = expr.split('/').map(str::trim).collect();
    if parts.len() > 1 {
        parts.join(" OR ")
    } else {
        expr.trim().to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn purls_map_to_osv_packages() {
        let m = |p| osv_package_of_purl(p);
        assert_eq!(
            m("pkg:cargo/tokio@1.40.0"),
            Some(("crates.io".into(), "tokio".into()))
        );
        assert_eq!(
            m("pkg:npm/%40scope/pkg@1.0.0"),
            Some(("npm".into(), "@scope/pkg".into()))
        );
        assert_eq!(
            m("pkg:maven/org.apache.logging.log4j/log4j-core@2.14.1"),
            Some(("Maven".into(), "org.apache.logging.log4j:log4j-core".into()))
        );
        assert_eq!(
            m("pkg:deb/debian/openssl@3.0.11-1?arch=arm64"),
            Some(("Debian".into(), "openssl".into()))
        );
        assert_eq!(
            m("pkg:deb/debian/openssl@3.0.11-1~deb12u1?arch=arm64&distro=debian-12"),
            Some(("Debian:12".into(), "openssl".into()))
        );
        assert_eq!(
            m("pkg:deb/debian/curl@7.88.1-10?distro=bookworm"),
            Some(("Debian:12".into(), "curl".into()))
        );
        assert_eq!(
            m("pkg:deb/debian/curl@7.88.1-10?distro=unknown-name"),
            Some(("Debian".into(), "curl".into()))
        );
        // A '%' before a multi-byte character is left as it is, not a panic.
        assert_eq!(
            Purl::parse("pkg:generic/x@1%é").and_then(|p| p.version),
            Some("1%é".into())
        );
        assert_eq!(m("pkg:generic/linux@6.6.30"), None);
        assert_eq!(m("not a purl"), None);
        let p = Purl::parse("pkg:golang/github.com/x/y@v1.2.3").expect("valid");
        assert_eq!(p.namespace.as_deref(), Some("github.com/x"));
        assert_eq!(p.version.as_deref(), Some("v1.2.3"));
    }

    #[test]
    fn licenses_normalise() {
        assert_eq!(normalise_license("MIT/Apache-2.0"), "MIT OR Apache-2.0");
        assert_eq!(normalise_license("MIT OR Apache-2.0"), "MIT OR Apache-2.0");
    }
}
