//! SBOMs of firmware releases, from a component manifest (TOML) the manufacturer keeps beside
//! the build. Files named in the manifest are hashed (SHA-512) when present; SBOMs of parts
//! built elsewhere (e.g. the Rust agent's) are merged in with `include`.
//!
//! ```toml
//! [firmware]
//! name = "bms-gateway-firmware"
//! version = "2.1.0"
//! supplier = "Example Energy GmbH"
//! file = "out/firmware.img"          # optional: hashed as the deployable
//! include = ["agent.cdx.json"]       # optional: SBOMs merged in, their roots become dependencies
//!
//! [[component]]
//! name = "linux"
//! version = "6.6.30"
//! purl = "pkg:generic/linux@6.6.30"  # optional
//! supplier = "kernel.org"
//! license = "GPL-2.0-only"
//! kind = "operating-system"          # application, library, firmware, operating-system, file
//! file = "out/zImage"                # optional
//! source_url = "https://git.kernel.org/"
//! depends_on = []                    # names of other components
//! dependencies_complete = true       # false or absent: unknown
//! ```
//!
//! Paths are relative to the manifest.

use std::path::Path;

use serde::Deserialize;

use super::cargo::{now_rfc3339, sha512_file, tool_name};
use super::{Completeness, Component, ComponentKind, Hash, Sbom, ingest, purl_encode};
use crate::ComplianceError;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Manifest {
    firmware: Head,
    #[serde(default)]
    component: Vec<Entry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Head {
    name: String,
    version: String,
    supplier: String,
    file: Option<String>,
    license: Option<String>,
    #[serde(default)]
    include: Vec<String>,
    /// Top-level components; default: every `[[component]]` not depended on by another.
    depends_on: Option<Vec<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Entry {
    name: String,
    version: String,
    purl: Option<String>,
    supplier: Option<String>,
    license: Option<String>,
    kind: Option<String>,
    file: Option<String>,
    source_url: Option<String>,
    download_url: Option<String>,
    description: Option<String>,
    #[serde(default)]
    depends_on: Vec<String>,
    dependencies_complete: Option<bool>,
}

/// Builds the SBOM of a firmware release from its manifest.
pub fn from_manifest(path: &Path) -> Result<Sbom, ComplianceError> {
    let file = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| ComplianceError::read(path, e))?;
    let m: Manifest = toml::from_str(&text).map_err(|e| ComplianceError::toml(&file, &text, &e))?;
    let base = path.parent().unwrap_or(Path::new("."));
    let hash = |f: &Option<String>,
                place: String|
     -> Result<(Vec<Hash>, Option<String>), ComplianceError> {
        let Some(f) = f else {
            return Ok((Vec::new(), None));
        };
        let p = base.join(f);
        let sum = sha512_file(&p).map_err(|e| {
            ComplianceError::invalid(&file, place, format!("cannot hash {}: {e}", p.display()))
        })?;
        let name = p.file_name().map(|n| n.to_string_lossy().into_owned());
        Ok((
            vec![Hash {
                alg: "SHA-512".into(),
                value: sum,
            }],
            name,
        ))
    };
    let reference = |name: &str, version: &str| format!("{name}@{version}");
    let mut components = Vec::new();
    let mut dependencies = Vec::new();
    for (i, e) in m.component.iter().enumerate() {
        let kind = match &e.kind {
            Some(k) => ComponentKind::parse(k).ok_or_else(|| {
                ComplianceError::invalid(
                    &file,
                    format!("component[{i}].kind"),
                    format!("unknown kind {k:?}"),
                )
            })?,
            None => ComponentKind::Library,
        };
        let (hashes, filename) = hash(&e.file, format!("component[{i}].file"))?;
        let mut deps = Vec::new();
        for d in &e.depends_on {
            let t = m.component.iter().find(|c| &c.name == d).ok_or_else(|| {
                ComplianceError::invalid(
                    &file,
                    format!("component[{i}].depends_on"),
                    format!("no component named {d:?}"),
                )
            })?;
            deps.push(reference(&t.name, &t.version));
        }
        let r = reference(&e.name, &e.version);
        dependencies.push((r.clone(), deps));
        components.push(Component {
            bom_ref: r,
            kind,
            name: e.name.clone(),
            version: e.version.clone(),
            purl: e.purl.clone(),
            supplier: e.supplier.clone(),
            authors: Vec::new(),
            license: e.license.clone(),
            hashes,
            description: e.description.clone(),
            source_url: e.source_url.clone(),
            download_url: e.download_url.clone(),
            filename,
            dependencies_complete: match e.dependencies_complete {
                Some(true) => Completeness::Complete,
                Some(false) => Completeness::Incomplete,
                None => Completeness::Unknown,
            },
        });
    }
    let (hashes, filename) = hash(&m.firmware.file, "firmware.file".into())?;
    let root_ref = format!(
        "pkg:generic/{}@{}",
        purl_encode(&m.firmware.name),
        purl_encode(&m.firmware.version)
    );
    let mut top: Vec<String> = match &m.firmware.depends_on {
        Some(names) => names
            .iter()
            .map(|n| {
                m.component
                    .iter()
                    .find(|c| &c.name == n)
                    .map(|c| reference(&c.name, &c.version))
                    .ok_or_else(|| {
                        ComplianceError::invalid(
                            &file,
                            "firmware.depends_on",
                            format!("no component named {n:?}"),
                        )
                    })
            })
            .collect::<Result<_, _>>()?,
        None => components
            .iter()
            .filter(|c| !dependencies.iter().any(|(_, d)| d.contains(&c.bom_ref)))
            .map(|c| c.bom_ref.clone())
            .collect(),
    };
    for (i, inc) in m.firmware.include.iter().enumerate() {
        let sub = ingest::read_file(&base.join(inc)).map_err(|e| {
            ComplianceError::invalid(&file, format!("firmware.include[{i}]"), e.to_string())
        })?;
        top.push(sub.root.bom_ref.clone());
        for c in sub.all_components() {
            if !components.iter().any(|x| x.bom_ref == c.bom_ref) {
                components.push(c.clone());
            }
        }
        for d in sub.dependencies {
            if !dependencies.iter().any(|(r, _)| r == &d.0) {
                dependencies.push(d);
            }
        }
    }
    dependencies.push((root_ref.clone(), top));
    let complete = components
        .iter()
        .all(|c| c.dependencies_complete == Completeness::Complete);
    Ok(Sbom {
        root: Component {
            bom_ref: root_ref.clone(),
            kind: ComponentKind::Firmware,
            name: m.firmware.name.clone(),
            version: m.firmware.version.clone(),
            purl: Some(root_ref),
            supplier: Some(m.firmware.supplier.clone()),
            authors: Vec::new(),
            license: m.firmware.license.clone(),
            hashes,
            description: None,
            source_url: None,
            download_url: None,
            filename,
            dependencies_complete: if complete {
                Completeness::Complete
            } else {
                Completeness::Incomplete
            },
        },
        components,
        dependencies,
        created: now_rfc3339(),
        author: Some(m.firmware.supplier),
        tool: tool_name(),
        source_format: None,
    })
}
