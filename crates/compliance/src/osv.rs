//! OSV advisories: parsing with validation, and range evaluation as the OSV schema defines it.
//!
//! A record is validated completely when it is read (at import), so a scan never meets an
//! advisory it cannot evaluate: every range has a known type and at least one `introduced`
//! event, every event has exactly one of `introduced`, `fixed`, `last_affected`, `limit`, and
//! every version in a `SEMVER` range is a semantic version. An invalid record is an error
//! naming the file and the JSON path of the fault.
//!
//! Evaluation follows the schema's algorithm: a version is affected if it is listed in
//! `affected[].versions`, or if some range, with its events sorted by version, leaves it
//! "vulnerable" (`introduced` at or below it sets, a `fixed` at or below it or a
//! `last_affected` below it clears) and it is below every `limit`. `GIT` ranges are ordered by
//! commit history, which a scan does not have: they match a component whose version is the
//! very commit named by an `introduced` or `last_affected` event, and otherwise through the
//! `versions` list that OSV producers enumerate from the history.

use std::cmp::Ordering;

use serde_json::Value;

use crate::ComplianceError;
use crate::version::{self, VersionOrder};

/// The type of a range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RangeKind {
    Semver,
    Ecosystem,
    Git,
}

/// One event of a range.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    Introduced(String),
    Fixed(String),
    LastAffected(String),
    Limit(String),
}

impl Event {
    fn version(&self) -> &str {
        match self {
            Event::Introduced(v) | Event::Fixed(v) | Event::LastAffected(v) | Event::Limit(v) => v,
        }
    }
}

/// A version range of an affected package.
#[derive(Debug, Clone)]
pub struct Range {
    pub kind: RangeKind,
    pub events: Vec<Event>,
}

/// One `affected[]` entry.
#[derive(Debug, Clone)]
pub struct Affected {
    pub ecosystem: String,
    pub name: String,
    pub ranges: Vec<Range>,
    pub versions: Vec<String>,
    /// RustSec's `database_specific.informational` (unmaintained, unsound, notice).
    pub informational: Option<String>,
}

/// A validated OSV advisory.
#[derive(Debug, Clone)]
pub struct Advisory {
    pub id: String,
    pub modified: String,
    pub published: Option<String>,
    pub withdrawn: Option<String>,
    pub aliases: Vec<String>,
    pub summary: String,
    pub details: String,
    /// CVSS vectors from `severity[]`.
    pub severity: Vec<String>,
    pub affected: Vec<Affected>,
    /// The record as read, re-serialised compactly (what the store keeps).
    pub json: String,
}

impl Advisory {
    /// Parses and validates one OSV JSON document; `file` names it in errors.
    pub fn parse(file: &str, text: &str) -> Result<Advisory, ComplianceError> {
        let v: Value = serde_json::from_str(text).map_err(|e| ComplianceError::json(file, &e))?;
        Self::from_value(file, &v)
    }

    pub fn from_value(file: &str, v: &Value) -> Result<Advisory, ComplianceError> {
        let bad = |place: &str, msg: String| ComplianceError::invalid(file, place, msg);
        let obj = v
            .as_object()
            .ok_or_else(|| bad("$", "an OSV record is a JSON object".into()))?;
        let id = req_str(obj.get("id"), file, "id")?;
        if id.trim().is_empty() {
            return Err(bad("id", "empty id".into()));
        }
        let modified = req_str(obj.get("modified"), file, "modified")?;
        let opt = |k: &str| obj.get(k).and_then(Value::as_str).map(str::to_owned);
        let aliases = str_list(obj.get("aliases"), file, "aliases")?;
        let mut severity = Vec::new();
        if let Some(Value::Array(s)) = obj.get("severity") {
            for (i, s) in s.iter().enumerate() {
                severity.push(req_str(
                    s.get("score"),
                    file,
                    &format!("severity[{i}].score"),
                )?);
            }
        }
        let mut affected = Vec::new();
        match obj.get("affected") {
            None | Some(Value::Null) => {}
            Some(Value::Array(list)) => {
                for (i, a) in list.iter().enumerate() {
                    affected.push(parse_affected(file, &format!("affected[{i}]"), a)?);
                }
            }
            Some(_) => return Err(bad("affected", "must be an array".into())),
        }
        Ok(Advisory {
            id,
            modified,
            published: opt("published"),
            withdrawn: opt("withdrawn"),
            aliases,
            summary: opt("summary").unwrap_or_default(),
            details: opt("details").unwrap_or_default(),
            severity,
            affected,
            json: v.to_string(),
        })
    }

    /// The `affected` entries of this advisory that cover `name@version` in `ecosystem`.
    pub fn matches<'a>(
        &'a self,
        ecosystem: &str,
        name: &str,
        version: &str,
    ) -> Result<Vec<&'a Affected>, String> {
        let mut out = Vec::new();
        for a in &self.affected {
            if a.ecosystem == ecosystem && a.name == name && a.affects(version)? {
                out.push(a);
            }
        }
        Ok(out)
    }
}

impl Affected {
    /// Whether `version` is affected. An error if the version cannot be ordered under a range's
    /// type (e.g. not a semantic version against a `SEMVER` range).
    pub fn affects(&self, version: &str) -> Result<bool, String> {
        if self.versions.iter().any(|v| v == version) {
            return Ok(true);
        }
        for r in &self.ranges {
            let order = match r.kind {
                RangeKind::Semver => VersionOrder::Semver,
                RangeKind::Ecosystem => version::ordering_for(&self.ecosystem),
                RangeKind::Git => {
                    if r.events.iter().any(|e| {
                        matches!(e, Event::Introduced(c) | Event::LastAffected(c) if c == version)
                    }) {
                        return Ok(true);
                    }
                    continue;
                }
            };
            if range_affects(order, &r.events, version)? {
                return Ok(true);
            }
        }
        Ok(false)
    }
}

/// The OSV evaluation of one range's events (see the module comment).
pub fn range_affects(order: VersionOrder, events: &[Event], v: &str) -> Result<bool, String> {
    let cmp = |a: &str, b: &str| -> Result<Ordering, String> {
        if a == "0" {
            // "0" is the schema's "from the first version".
            return Ok(if b == "0" {
                Ordering::Equal
            } else {
                Ordering::Less
            });
        }
        if b == "0" {
            return Ok(Ordering::Greater);
        }
        version::compare(order, a, b)
    };
    let limits: Vec<&str> = events
        .iter()
        .filter_map(|e| match e {
            Event::Limit(l) => Some(l.as_str()),
            _ => None,
        })
        .collect();
    if !limits.is_empty() {
        let mut below_some = false;
        for l in &limits {
            if cmp(v, l)? == Ordering::Less {
                below_some = true;
            }
        }
        if !below_some {
            return Ok(false);
        }
    }
    let mut sorted: Vec<&Event> = events
        .iter()
        .filter(|e| !matches!(e, Event::Limit(_)))
        .collect();
    let mut err = None;
    sorted.sort_by(|a, b| {
        cmp(a.version(), b.version()).unwrap_or_else(|e| {
            err = Some(e);
            Ordering::Equal
        })
    });
    if let Some(e) = err {
        return Err(e);
    }
    let mut vulnerable = false;
    for e in sorted {
        match e {
            Event::Introduced(x) => {
                if cmp(v, x)? != Ordering::Less {
                    vulnerable = true;
                }
            }
            Event::Fixed(x) => {
                if cmp(v, x)? != Ordering::Less {
                    vulnerable = false;
                }
            }
            Event::LastAffected(x) => {
                if cmp(v, x)? == Ordering::Greater {
                    vulnerable = false;
                }
            }
            Event::Limit(_) => {}
        }
    }
    Ok(vulnerable)
}

fn req_str(v: Option<&Value>, file: &str, place: &str) -> Result<String, ComplianceError> {
    match v {
        Some(Value::String(s)) => Ok(s.clone()),
        Some(_) => Err(ComplianceError::invalid(file, place, "must be a string")),
        None => Err(ComplianceError::invalid(file, place, "missing")),
    }
}

fn str_list(v: Option<&Value>, file: &str, place: &str) -> Result<Vec<String>, ComplianceError> {
    match v {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Array(a)) => a
            .iter()
            .enumerate()
            .map(|(i, s)| req_str(Some(s), file, &format!("{place}[{i}]")))
            .collect(),
        Some(_) => Err(ComplianceError::invalid(
            file,
            place,
            "must be an array of strings",
        )),
    }
}

fn parse_affected(file: &str, place: &str, a: &Value) -> Result<Affected, ComplianceError> {
    let bad = |p: String, msg: &str| ComplianceError::invalid(file, p, msg);
    let pkg = a
        .get("package")
        .ok_or_else(|| bad(format!("{place}.package"), "missing"))?;
    let ecosystem = req_str(
        pkg.get("ecosystem"),
        file,
        &format!("{place}.package.ecosystem"),
    )?;
    let name = req_str(pkg.get("name"), file, &format!("{place}.package.name"))?;
    let versions = str_list(a.get("versions"), file, &format!("{place}.versions"))?;
    let mut ranges = Vec::new();
    match a.get("ranges") {
        None | Some(Value::Null) => {}
        Some(Value::Array(rs)) => {
            for (i, r) in rs.iter().enumerate() {
                let rp = format!("{place}.ranges[{i}]");
                let kind = match r.get("type").and_then(Value::as_str) {
                    Some("SEMVER") => RangeKind::Semver,
                    Some("ECOSYSTEM") => RangeKind::Ecosystem,
                    Some("GIT") => RangeKind::Git,
                    Some(other) => {
                        return Err(ComplianceError::invalid(
                            file,
                            format!("{rp}.type"),
                            format!("unknown range type {other:?} (SEMVER, ECOSYSTEM or GIT)"),
                        ));
                    }
                    None => return Err(bad(format!("{rp}.type"), "missing")),
                };
                if kind == RangeKind::Git && r.get("repo").and_then(Value::as_str).is_none() {
                    return Err(bad(format!("{rp}.repo"), "a GIT range needs its repo"));
                }
                let evs = match r.get("events") {
                    Some(Value::Array(e)) if !e.is_empty() => e,
                    Some(Value::Array(_)) => {
                        return Err(bad(format!("{rp}.events"), "a range needs events"));
                    }
                    _ => return Err(bad(format!("{rp}.events"), "missing or not an array")),
                };
                let mut events = Vec::new();
                for (j, e) in evs.iter().enumerate() {
                    let ep = format!("{rp}.events[{j}]");
                    let o = e
                        .as_object()
                        .ok_or_else(|| bad(ep.clone(), "an event is an object"))?;
                    if o.len() != 1 {
                        return Err(bad(
                            ep,
                            "an event has exactly one of introduced, fixed, last_affected, limit",
                        ));
                    }
                    let (k, val) = o.iter().next().ok_or_else(|| bad(ep.clone(), "empty"))?;
                    let val = req_str(Some(val), file, &format!("{ep}.{k}"))?;
                    let ev = match k.as_str() {
                        "introduced" => Event::Introduced(val),
                        "fixed" => Event::Fixed(val),
                        "last_affected" => Event::LastAffected(val),
                        "limit" => Event::Limit(val),
                        other => {
                            return Err(ComplianceError::invalid(
                                file,
                                ep,
                                format!("unknown event {other:?}"),
                            ));
                        }
                    };
                    if kind == RangeKind::Semver && (ev.version() != "0") {
                        let is_limit_star = matches!(&ev, Event::Limit(l) if l == "*");
                        if !is_limit_star {
                            version::parse_semver(ev.version()).map_err(|m| {
                                ComplianceError::invalid(file, format!("{ep}.{k}"), m)
                            })?;
                        }
                    }
                    events.push(ev);
                }
                if !events.iter().any(|e| matches!(e, Event::Introduced(_))) {
                    return Err(bad(
                        format!("{rp}.events"),
                        "a range needs at least one introduced event",
                    ));
                }
                ranges.push(Range { kind, events });
            }
        }
        Some(_) => return Err(bad(format!("{place}.ranges"), "must be an array")),
    }
    let informational = a
        .get("database_specific")
        .and_then(|d| d.get("informational"))
        .and_then(Value::as_str)
        .map(str::to_owned);
    Ok(Affected {
        ecosystem,
        name,
        ranges,
        versions,
        informational,
    })
}

/// Calls `f(name, text)` for every `*.json` file under a directory (recursively) or in a ZIP
/// archive (such as OSV's per-ecosystem `all.zip`), one file at a time: memory holds one record,
/// never the database.
pub fn for_each_file(
    path: &std::path::Path,
    f: &mut dyn FnMut(&str, &str) -> Result<(), ComplianceError>,
) -> Result<usize, ComplianceError> {
    let meta = std::fs::metadata(path).map_err(|e| ComplianceError::read(path, e))?;
    let mut count = 0;
    if meta.is_dir() {
        let mut stack = vec![path.to_path_buf()];
        while let Some(dir) = stack.pop() {
            let mut entries: Vec<std::path::PathBuf> = std::fs::read_dir(&dir)
                .map_err(|e| ComplianceError::read(&dir, e))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .collect();
            entries.sort();
            for p in entries {
                if p.is_dir() {
                    stack.push(p);
                } else if p.extension().is_some_and(|x| x == "json") {
                    let text =
                        std::fs::read_to_string(&p).map_err(|e| ComplianceError::read(&p, e))?;
                    f(&p.display().to_string(), &text)?;
                    count += 1;
                }
            }
        }
    } else {
        let file = std::fs::File::open(path).map_err(|e| ComplianceError::read(path, e))?;
        let mut zip = zip::ZipArchive::new(file).map_err(|e| ComplianceError::UnknownFormat {
            file: path.display().to_string(),
            message: format!("neither a directory nor a ZIP archive of OSV JSON: {e}"),
        })?;
        for i in 0..zip.len() {
            let mut entry = zip.by_index(i).map_err(|e| {
                ComplianceError::invalid(
                    path.display().to_string(),
                    format!("entry {i}"),
                    e.to_string(),
                )
            })?;
            if !entry.is_file() || !entry.name().ends_with(".json") {
                continue;
            }
            let name = format!("{}!{}", path.display(), entry.name());
            let mut text = String::new();
            std::io::Read::read_to_string(&mut entry, &mut text)
                .map_err(|e| ComplianceError::invalid(&name, "file", e.to_string()))?;
            f(&name, &text)?;
            count += 1;
        }
    }
    Ok(count)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn adv(affected: &str) -> Result<Advisory, ComplianceError> {
        Advisory::parse(
            "test.json",
            &format!(r#"{{"id":"T-1","modified":"2026-01-01T00:00:00Z","affected":[{affected}]}}"#),
        )
    }

    fn hits(a: &Advisory, eco: &str, name: &str, v: &str) -> bool {
        !a.matches(eco, name, v).expect("orderable").is_empty()
    }

    #[test]
    fn semver_ranges_with_two_windows() {
        let a = adv(r#"{"package":{"ecosystem":"crates.io","name":"x"},"ranges":[{"type":"SEMVER","events":[{"introduced":"0.0.0-0"},{"fixed":"1.2.3"},{"introduced":"2.0.0"},{"fixed":"2.1.4"}]}]}"#).expect("valid");
        for (v, want) in [
            ("0.1.0", true),
            ("1.2.2", true),
            ("1.2.3", false),
            ("1.9.0", false),
            ("2.0.0-rc.1", false),
            ("2.0.0", true),
            ("2.1.3", true),
            ("2.1.4", false),
            ("3.0.0", false),
        ] {
            assert_eq!(hits(&a, "crates.io", "x", v), want, "{v}");
        }
        assert!(!hits(&a, "crates.io", "y", "1.0.0"), "other package");
        assert!(!hits(&a, "npm", "x", "1.0.0"), "other ecosystem");
    }

    #[test]
    fn events_out_of_order_are_sorted() {
        let a = adv(r#"{"package":{"ecosystem":"crates.io","name":"x"},"ranges":[{"type":"SEMVER","events":[{"fixed":"1.5.0"},{"introduced":"1.0.0"}]}]}"#).expect("valid");
        assert!(hits(&a, "crates.io", "x", "1.4.9"));
        assert!(!hits(&a, "crates.io", "x", "0.9.0"));
        assert!(!hits(&a, "crates.io", "x", "1.5.0"));
    }

    #[test]
    fn last_affected_is_inclusive() {
        let a = adv(r#"{"package":{"ecosystem":"PyPI","name":"p"},"ranges":[{"type":"ECOSYSTEM","events":[{"introduced":"0"},{"last_affected":"2.4"}]}]}"#).expect("valid");
        assert!(hits(&a, "PyPI", "p", "2.4"));
        assert!(hits(&a, "PyPI", "p", "2.4rc1"));
        assert!(!hits(&a, "PyPI", "p", "2.4.1"));
        assert!(!hits(&a, "PyPI", "p", "2.10"));
    }

    #[test]
    fn ecosystem_ranges_use_dpkg_for_debian() {
        let a = adv(r#"{"package":{"ecosystem":"Debian:12","name":"openssl"},"ranges":[{"type":"ECOSYSTEM","events":[{"introduced":"0"},{"fixed":"3.0.11-1~deb12u2"}]}]}"#).expect("valid");
        assert!(hits(&a, "Debian:12", "openssl", "3.0.11-1~deb12u1"));
        assert!(!hits(&a, "Debian:12", "openssl", "3.0.11-1~deb12u2"));
        assert!(
            !hits(&a, "Debian:12", "openssl", "3.0.11-1"),
            "~ sorts before"
        );
    }

    #[test]
    fn limit_bounds_a_range() {
        let a = adv(r#"{"package":{"ecosystem":"npm","name":"n"},"ranges":[{"type":"SEMVER","events":[{"introduced":"1.0.0"},{"limit":"1.8.0"}]}]}"#).expect("valid");
        assert!(hits(&a, "npm", "n", "1.7.9"));
        assert!(!hits(&a, "npm", "n", "1.8.0"));
    }

    #[test]
    fn versions_list_and_git_ranges() {
        let a = adv(r#"{"package":{"ecosystem":"GIT","name":"https://example.org/r.git"},"ranges":[{"type":"GIT","repo":"https://example.org/r.git","events":[{"introduced":"aaaa"},{"fixed":"bbbb"}]}],"versions":["v1.0","v1.1"]}"#).expect("valid");
        let n = "https://example.org/r.git";
        assert!(hits(&a, "GIT", n, "v1.1"), "listed version");
        assert!(hits(&a, "GIT", n, "aaaa"), "the introducing commit");
        assert!(!hits(&a, "GIT", n, "bbbb"), "the fixing commit");
        assert!(!hits(&a, "GIT", n, "v2.0"), "unlisted version");
    }

    #[test]
    fn unorderable_component_version_is_an_error_not_a_miss() {
        let a = adv(r#"{"package":{"ecosystem":"crates.io","name":"x"},"ranges":[{"type":"SEMVER","events":[{"introduced":"0"},{"fixed":"1.0.0"}]}]}"#).expect("valid");
        assert!(a.matches("crates.io", "x", "not-a-version").is_err());
    }

    #[test]
    fn invalid_records_name_the_place() {
        let cases = [
            (
                r#"{"package":{"ecosystem":"crates.io","name":"x"},"ranges":[{"type":"SEMVER","events":[{"introduced":"one"}]}]}"#,
                "affected[0].ranges[0].events[0].introduced",
            ),
            (
                r#"{"package":{"ecosystem":"crates.io","name":"x"},"ranges":[{"type":"RANGE","events":[{"introduced":"0"}]}]}"#,
                "affected[0].ranges[0].type",
            ),
            (
                r#"{"package":{"ecosystem":"crates.io","name":"x"},"ranges":[{"type":"SEMVER","events":[{"fixed":"1.0.0"}]}]}"#,
                "affected[0].ranges[0].events",
            ),
            (
                r#"{"package":{"ecosystem":"crates.io","name":"x"},"ranges":[{"type":"SEMVER","events":[{"introduced":"0","fixed":"1.0.0"}]}]}"#,
                "affected[0].ranges[0].events[0]",
            ),
            (
                r#"{"package":{"ecosystem":"crates.io","name":"x"},"ranges":[{"type":"GIT","events":[{"introduced":"0"}]}]}"#,
                "affected[0].ranges[0].repo",
            ),
            (
                r#"{"package":{"name":"x"},"ranges":[]}"#,
                "affected[0].package.ecosystem",
            ),
        ];
        for (affected, place) in cases {
            let e = adv(affected).expect_err(place);
            match e {
                ComplianceError::Invalid { file, place: p, .. } => {
                    assert_eq!(file, "test.json");
                    assert_eq!(p, place);
                }
                other => panic!("unexpected {other}"),
            }
        }
        let e = Advisory::parse("x.json", "{ not json").expect_err("not json");
        assert!(e.to_string().starts_with("x.json: line 1 column"), "{e}");
    }
}
