//! SBOMs of Rust workspaces, from `cargo metadata` and Cargo.lock, and Cargo.lock itself as a
//! component list for scans.
//!
//! The SBOM of a package holds what ships in its binary: the package and everything it reaches
//! through normal and build dependencies on the target platform (dev-dependencies are left
//! out; `--filter-platform` drops other platforms' crates). The graph comes from cargo's own
//! resolver, so every component's dependency list is complete. Registry crates carry the
//! Cargo.lock checksum (SHA-256 of the `.crate` file) and, where the `.crate` file is in the
//! local cargo cache, its SHA-512.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::process::Command;

use serde::Deserialize;
use sha2::{Digest, Sha512};

use super::{Completeness, Component, ComponentKind, Hash, Sbom, normalise_license, purl_encode};
use crate::ComplianceError;

const CRATES_IO: &str = "registry+https://github.com/rust-lang/crates.io-index";

/// Options of [`from_workspace`].
#[derive(Debug, Clone, Default)]
pub struct CargoOptions {
    pub manifest_path: PathBuf,
    /// The package to describe (default: the workspace's only root, or the first member).
    pub package: Option<String>,
    /// Target triple whose dependencies count (default: the host's).
    pub target: Option<String>,
    /// The built binary, hashed (SHA-512) as the root component's deployable.
    pub binary: Option<PathBuf>,
    /// The manufacturer, recorded as the SBOM's author and the root's supplier.
    pub manufacturer: Option<String>,
    /// RFC 3339 creation time (default: now).
    pub created: Option<String>,
}

#[derive(Deserialize)]
struct Metadata {
    packages: Vec<MetaPackage>,
    workspace_members: Vec<String>,
    resolve: Option<Resolve>,
    workspace_root: PathBuf,
}

#[derive(Deserialize)]
struct MetaPackage {
    name: String,
    version: String,
    id: String,
    license: Option<String>,
    description: Option<String>,
    source: Option<String>,
    authors: Vec<String>,
    repository: Option<String>,
    homepage: Option<String>,
}

#[derive(Deserialize)]
struct Resolve {
    nodes: Vec<Node>,
}

#[derive(Deserialize)]
struct Node {
    id: String,
    deps: Vec<NodeDep>,
}

#[derive(Deserialize)]
struct NodeDep {
    pkg: String,
    dep_kinds: Vec<DepKind>,
}

#[derive(Deserialize)]
struct DepKind {
    kind: Option<String>,
}

/// One `[[package]]` of a Cargo.lock.
#[derive(Debug, Clone, Deserialize)]
pub struct LockedPackage {
    pub name: String,
    pub version: String,
    pub source: Option<String>,
    pub checksum: Option<String>,
    #[serde(default)]
    pub dependencies: Vec<String>,
}

#[derive(Deserialize)]
struct Lockfile {
    #[serde(default)]
    package: Vec<LockedPackage>,
}

/// Reads a Cargo.lock.
pub fn read_lockfile(path: &Path) -> Result<Vec<LockedPackage>, ComplianceError> {
    let text = std::fs::read_to_string(path).map_err(|e| ComplianceError::read(path, e))?;
    parse_lockfile(&path.display().to_string(), &text)
}

/// Parses Cargo.lock text; `file` names it in errors.
pub fn parse_lockfile(file: &str, text: &str) -> Result<Vec<LockedPackage>, ComplianceError> {
    let lock: Lockfile = toml::from_str(text).map_err(|e| ComplianceError::toml(file, text, &e))?;
    if lock.package.is_empty() {
        return Err(ComplianceError::invalid(
            file,
            "document",
            "no [[package]] entries: not a Cargo.lock",
        ));
    }
    Ok(lock.package)
}

/// A Cargo.lock as an SBOM: every crates.io package as a component (what `cargo audit` checks),
/// dependencies as locked. Packages from other sources (workspace members, git, paths) are
/// listed without a crates.io purl.
pub fn sbom_from_lockfile(path: &Path) -> Result<Sbom, ComplianceError> {
    let packages = read_lockfile(path)?;
    let by_name: HashMap<&str, Vec<&LockedPackage>> =
        packages.iter().fold(HashMap::new(), |mut m, p| {
            m.entry(p.name.as_str()).or_default().push(p);
            m
        });
    let reference = |p: &LockedPackage| format!("{}@{}", p.name, p.version);
    let mut components = Vec::new();
    let mut dependencies = Vec::new();
    for p in &packages {
        let from_crates_io = p.source.as_deref() == Some(CRATES_IO)
            || p.source.as_deref() == Some("sparse+https://index.crates.io/");
        components.push(Component {
            bom_ref: reference(p),
            kind: ComponentKind::Library,
            name: p.name.clone(),
            version: p.version.clone(),
            purl: from_crates_io.then(|| {
                format!(
                    "pkg:cargo/{}@{}",
                    purl_encode(&p.name),
                    purl_encode(&p.version)
                )
            }),
            supplier: None,
            authors: Vec::new(),
            license: None,
            hashes: p
                .checksum
                .iter()
                .map(|c| Hash {
                    alg: "SHA-256".into(),
                    value: c.clone(),
                })
                .collect(),
            description: None,
            source_url: None,
            download_url: None,
            filename: None,
            dependencies_complete: Completeness::Complete,
        });
        // A dependency entry is "name" or "name version" (or "name version (source)").
        let deps = p
            .dependencies
            .iter()
            .filter_map(|d| {
                let mut it = d.split_whitespace();
                let name = it.next()?;
                let candidates = by_name.get(name)?;
                let target = match it.next() {
                    Some(v) => candidates.iter().find(|c| c.version == v)?,
                    None => candidates.first()?,
                };
                Some(reference(target))
            })
            .collect();
        dependencies.push((reference(p), deps));
    }
    let root = Component {
        bom_ref: "lockfile".into(),
        kind: ComponentKind::Application,
        name: path.display().to_string(),
        version: "unversioned".into(),
        purl: None,
        supplier: None,
        authors: Vec::new(),
        license: None,
        hashes: Vec::new(),
        description: None,
        source_url: None,
        download_url: None,
        filename: Some("Cargo.lock".into()),
        dependencies_complete: Completeness::Complete,
    };
    dependencies.push((
        root.bom_ref.clone(),
        components.iter().map(|c| c.bom_ref.clone()).collect(),
    ));
    Ok(Sbom {
        root,
        components,
        dependencies,
        created: now_rfc3339(),
        author: None,
        tool: tool_name(),
        source_format: Some("Cargo.lock".into()),
    })
}

/// Builds the SBOM of a package of a Rust workspace.
pub fn from_workspace(opts: &CargoOptions) -> Result<Sbom, ComplianceError> {
    let target = match &opts.target {
        Some(t) => t.clone(),
        None => host_triple()?,
    };
    let out = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args([
            "metadata",
            "--format-version",
            "1",
            "--locked",
            "--filter-platform",
        ])
        .arg(&target)
        .arg("--manifest-path")
        .arg(&opts.manifest_path)
        .output()
        .map_err(|e| ComplianceError::Tool {
            tool: "cargo metadata".into(),
            message: e.to_string(),
        })?;
    if !out.status.success() {
        return Err(ComplianceError::Tool {
            tool: "cargo metadata".into(),
            message: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        });
    }
    let meta: Metadata =
        serde_json::from_slice(&out.stdout).map_err(|e| ComplianceError::Tool {
            tool: "cargo metadata".into(),
            message: format!("unexpected output: {e}"),
        })?;
    let lock_path = meta.workspace_root.join("Cargo.lock");
    let checksums: HashMap<(String, String), String> = read_lockfile(&lock_path)?
        .into_iter()
        .filter_map(|p| Some(((p.name, p.version), p.checksum?)))
        .collect();
    let packages: HashMap<&str, &MetaPackage> =
        meta.packages.iter().map(|p| (p.id.as_str(), p)).collect();
    let root_id = match &opts.package {
        Some(name) => meta
            .workspace_members
            .iter()
            .find(|id| packages.get(id.as_str()).is_some_and(|p| &p.name == name))
            .cloned()
            .ok_or_else(|| {
                ComplianceError::Rule(format!(
                    "no package {name:?} among the workspace members of {}",
                    opts.manifest_path.display()
                ))
            })?,
        None => meta
            .workspace_members
            .first()
            .cloned()
            .ok_or_else(|| ComplianceError::Rule("the workspace has no members".into()))?,
    };
    let resolve = meta.resolve.as_ref().ok_or_else(|| ComplianceError::Tool {
        tool: "cargo metadata".into(),
        message: "no dependency resolution in the output".into(),
    })?;
    let nodes: HashMap<&str, &Node> = resolve.nodes.iter().map(|n| (n.id.as_str(), n)).collect();
    // Walk normal and build edges from the root.
    let mut reached: BTreeSet<String> = BTreeSet::new();
    let mut edges: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut stack = vec![root_id.clone()];
    while let Some(id) = stack.pop() {
        if !reached.insert(id.clone()) {
            continue;
        }
        let Some(node) = nodes.get(id.as_str()) else {
            continue;
        };
        let mut deps = Vec::new();
        for d in &node.deps {
            let shipped = d.dep_kinds.iter().any(|k| k.kind.as_deref() != Some("dev"));
            if shipped {
                deps.push(d.pkg.clone());
                stack.push(d.pkg.clone());
            }
        }
        edges.insert(id, deps);
    }
    let cache = cargo_cache_dirs();
    let component_of = |id: &str| -> Option<Component> {
        let p = packages.get(id)?;
        let from_crates_io = p.source.as_deref() == Some(CRATES_IO)
            || p.source.as_deref() == Some("sparse+https://index.crates.io/");
        let mut hashes = Vec::new();
        if let Some(sum) = checksums.get(&(p.name.clone(), p.version.clone())) {
            hashes.push(Hash {
                alg: "SHA-256".into(),
                value: sum.clone(),
            });
        }
        let filename = from_crates_io.then(|| format!("{}-{}.crate", p.name, p.version));
        if let Some(f) = &filename
            && let Some(sha512) = cache.iter().find_map(|d| sha512_file(&d.join(f)).ok())
        {
            hashes.push(Hash {
                alg: "SHA-512".into(),
                value: sha512,
            });
        }
        let authors: Vec<String> = p.authors.iter().map(|a| strip_email(a)).collect();
        Some(Component {
            bom_ref: bom_ref_of(p),
            kind: ComponentKind::Library,
            name: p.name.clone(),
            version: p.version.clone(),
            purl: Some(format!(
                "pkg:cargo/{}@{}",
                purl_encode(&p.name),
                purl_encode(&p.version)
            )),
            supplier: authors.first().cloned(),
            authors,
            license: p.license.as_deref().map(normalise_license),
            hashes,
            description: p.description.clone(),
            source_url: p.repository.clone().or_else(|| p.homepage.clone()),
            download_url: from_crates_io.then(|| {
                format!(
                    "https://crates.io/api/v1/crates/{}/{}/download",
                    p.name, p.version
                )
            }),
            filename,
            dependencies_complete: Completeness::Complete,
        })
    };
    let mut root = component_of(&root_id).ok_or_else(|| {
        ComplianceError::Rule(format!("package {root_id} missing from cargo metadata"))
    })?;
    root.kind = ComponentKind::Application;
    if opts.manufacturer.is_some() {
        root.supplier = opts.manufacturer.clone();
    }
    if let Some(bin) = &opts.binary {
        let sum = sha512_file(bin).map_err(|e| ComplianceError::read(bin, e))?;
        root.hashes = vec![Hash {
            alg: "SHA-512".into(),
            value: sum,
        }];
        root.filename = bin.file_name().map(|f| f.to_string_lossy().into_owned());
        root.download_url = None;
    }
    let mut components = Vec::new();
    for id in &reached {
        if id == &root_id {
            continue;
        }
        if let Some(c) = component_of(id) {
            components.push(c);
        }
    }
    let dependencies = edges
        .iter()
        .filter_map(|(id, deps)| {
            let p = packages.get(id.as_str())?;
            let mut d: Vec<String> = deps
                .iter()
                .filter_map(|x| packages.get(x.as_str()).map(|p| bom_ref_of(p)))
                .collect();
            d.sort();
            d.dedup();
            Some((bom_ref_of(p), d))
        })
        .collect();
    Ok(Sbom {
        root,
        components,
        dependencies,
        created: opts.created.clone().unwrap_or_else(now_rfc3339),
        author: opts.manufacturer.clone(),
        tool: tool_name(),
        source_format: None,
    })
}

fn bom_ref_of(p: &MetaPackage) -> String {
    format!(
        "pkg:cargo/{}@{}",
        purl_encode(&p.name),
        purl_encode(&p.version)
    )
}

fn strip_email(author: &str) -> String {
    match author.split_once('<') {
        Some((name, _)) if !name.trim().is_empty() => name.trim().to_owned(),
        _ => author.trim().to_owned(),
    }
}

fn host_triple() -> Result<String, ComplianceError> {
    let out = Command::new(std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into()))
        .arg("-vV")
        .output()
        .map_err(|e| ComplianceError::Tool {
            tool: "rustc -vV".into(),
            message: e.to_string(),
        })?;
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("host: ").map(str::to_owned))
        .ok_or_else(|| ComplianceError::Tool {
            tool: "rustc -vV".into(),
            message: "no host line".into(),
        })
}

fn cargo_cache_dirs() -> Vec<PathBuf> {
    let home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")));
    let Some(home) = home else {
        return Vec::new();
    };
    std::fs::read_dir(home.join("registry").join("cache"))
        .map(|rd| rd.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default()
}

/// SHA-512 of a file, lower-case hex.
pub fn sha512_file(path: &Path) -> std::io::Result<String> {
    use std::io::Read;
    let mut f = std::fs::File::open(path)?;
    let mut h = Sha512::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex::encode(h.finalize()))
}

pub(crate) fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc()
        .replace_nanosecond(0)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| "1970-01-01T00:00:00Z".into())
}

pub(crate) fn tool_name() -> String {
    format!("rampart-{}", env!("CARGO_PKG_VERSION"))
}
