//! Version ordering per ecosystem, as the OSV schema needs it to evaluate ranges.
//!
//! - `SEMVER` ranges and the semver ecosystems (crates.io, npm, Go, Hex, Pub, NuGet-like
//!   three-part versions) use Semantic Versioning 2.0.0 precedence (a leading `v`, as Go
//!   writes it, is accepted).
//! - Debian and Ubuntu use dpkg's ordering (epoch, upstream, revision; `~` sorts first).
//! - Every other ecosystem uses a generic ordering: runs of digits compare as numbers, runs
//!   of letters as text, and a pre-release word (`alpha`, `beta`, `rc`, `dev`, `pre`) sorts
//!   before the release it precedes. This is exact for dotted numeric versions and close for
//!   PEP 440 and Maven; such matches are reported with the ordering used.

use std::cmp::Ordering;

/// How versions of an ecosystem are ordered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VersionOrder {
    Semver,
    Dpkg,
    Generic,
}

/// The ordering the OSV `ECOSYSTEM` range type uses for `ecosystem`.
pub fn ordering_for(ecosystem: &str) -> VersionOrder {
    // "Debian:12", "Ubuntu:22.04:LTS" carry a release after the colon.
    let base = ecosystem.split(':').next().unwrap_or(ecosystem);
    match base {
        "crates.io" | "npm" | "Go" | "Hex" | "Pub" | "SwiftURL" => VersionOrder::Semver,
        "Debian" | "Ubuntu" => VersionOrder::Dpkg,
        _ => VersionOrder::Generic,
    }
}

/// A parsed semver version (leading `v` allowed).
pub fn parse_semver(v: &str) -> Result<semver::Version, String> {
    let t = v.strip_prefix('v').unwrap_or(v);
    semver::Version::parse(t).map_err(|e| format!("{v:?} is not a semantic version: {e}"))
}

/// Compares two versions under `ordering`. Semver versions that fail to parse are an error;
/// the other orderings accept any text.
pub fn compare(ordering: VersionOrder, a: &str, b: &str) -> Result<Ordering, String> {
    match ordering {
        VersionOrder::Semver => Ok(parse_semver(a)?.cmp_precedence(&parse_semver(b)?)),
        VersionOrder::Dpkg => Ok(dpkg_compare(a, b)),
        VersionOrder::Generic => Ok(generic_compare(a, b)),
    }
}

/// dpkg's version comparison (deb-version(7)).
pub fn dpkg_compare(a: &str, b: &str) -> Ordering {
    fn split(v: &str) -> (u64, &str, &str) {
        let (epoch, rest) = match v.split_once(':') {
            Some((e, r)) if e.chars().all(|c| c.is_ascii_digit()) => (e.parse().unwrap_or(0), r),
            _ => (0, v),
        };
        match rest.rsplit_once('-') {
            Some((up, rev)) => (epoch, up, rev),
            None => (epoch, rest, ""),
        }
    }
    let (ea, ua, ra) = split(a);
    let (eb, ub, rb) = split(b);
    ea.cmp(&eb)
        .then_with(|| dpkg_part(ua, ub))
        .then_with(|| dpkg_part(ra, rb))
}

fn dpkg_order(c: Option<u8>) -> i32 {
    match c {
        None => 0,
        Some(b'~') => -1,
        Some(c) if c.is_ascii_digit() => 0,
        Some(c) if c.is_ascii_alphabetic() => c as i32,
        Some(c) => c as i32 + 256,
    }
}

fn dpkg_part(a: &str, b: &str) -> Ordering {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    let (mut i, mut j) = (0, 0);
    while i < a.len() || j < b.len() {
        // Non-digit prefix, compared with dpkg's character order.
        loop {
            let ca = a.get(i).copied().filter(|c| !c.is_ascii_digit());
            let cb = b.get(j).copied().filter(|c| !c.is_ascii_digit());
            if ca.is_none() && cb.is_none() {
                break;
            }
            let (oa, ob) = (dpkg_order(ca), dpkg_order(cb));
            if oa != ob {
                return oa.cmp(&ob);
            }
            if ca.is_some() {
                i += 1;
            }
            if cb.is_some() {
                j += 1;
            }
        }
        // Digit run, compared as a number.
        let sa = i;
        while i < a.len() && a[i].is_ascii_digit() {
            i += 1;
        }
        let sb = j;
        while j < b.len() && b[j].is_ascii_digit() {
            j += 1;
        }
        let c = numeric_cmp(&a[sa..i], &b[sb..j]);
        if c != Ordering::Equal {
            return c;
        }
    }
    Ordering::Equal
}

/// Compares two digit strings as numbers of any length.
fn numeric_cmp(a: &[u8], b: &[u8]) -> Ordering {
    let trim = |s: &[u8]| {
        let k = s.iter().position(|&c| c != b'0').unwrap_or(s.len());
        s[k..].to_vec()
    };
    let (a, b) = (trim(a), trim(b));
    a.len().cmp(&b.len()).then_with(|| a.cmp(&b))
}

#[derive(Debug, PartialEq, Eq)]
enum Token {
    Num(Vec<u8>),
    Word(String),
}

fn tokens(v: &str) -> Vec<Token> {
    let v = v.strip_prefix('v').unwrap_or(v);
    let mut out = Vec::new();
    let b = v.as_bytes();
    let mut i = 0;
    while i < b.len() {
        let s = i;
        if b[i].is_ascii_digit() {
            while i < b.len() && b[i].is_ascii_digit() {
                i += 1;
            }
            out.push(Token::Num(b[s..i].to_vec()));
        } else if b[i].is_ascii_alphabetic() {
            while i < b.len() && b[i].is_ascii_alphabetic() {
                i += 1;
            }
            out.push(Token::Word(v[s..i].to_ascii_lowercase()));
        } else {
            i += 1;
        }
    }
    out
}

fn word_rank(w: &str) -> i32 {
    match w {
        "dev" | "snapshot" => -5,
        "a" | "alpha" => -4,
        "b" | "beta" => -3,
        "pre" | "preview" | "m" | "milestone" => -2,
        "c" | "rc" | "cr" => -1,
        "final" | "ga" | "release" => 0,
        // post-releases and other words sort after the release.
        _ => 1,
    }
}

/// The generic ordering: numbers as numbers, pre-release words before the release.
pub fn generic_compare(a: &str, b: &str) -> Ordering {
    let (ta, tb) = (tokens(a), tokens(b));
    let n = ta.len().max(tb.len());
    for k in 0..n {
        let c = match (ta.get(k), tb.get(k)) {
            (Some(Token::Num(x)), Some(Token::Num(y))) => numeric_cmp(x, y),
            (Some(Token::Word(x)), Some(Token::Word(y))) => {
                word_rank(x).cmp(&word_rank(y)).then_with(|| x.cmp(y))
            }
            // A number against a word: 1.0.1 > 1.0rc1 (the word is a qualifier).
            (Some(Token::Num(_)), Some(Token::Word(w))) => {
                if word_rank(w) < 1 {
                    Ordering::Greater
                } else {
                    Ordering::Less
                }
            }
            (Some(Token::Word(w)), Some(Token::Num(_))) => {
                if word_rank(w) < 1 {
                    Ordering::Less
                } else {
                    Ordering::Greater
                }
            }
            // One is a prefix of the other: 1.0 vs 1.0.1 or 1.0 vs 1.0rc1.
            (None, Some(Token::Num(_))) => Ordering::Less,
            (Some(Token::Num(_)), None) => Ordering::Greater,
            (None, Some(Token::Word(w))) => 0.cmp(&word_rank(w)),
            (Some(Token::Word(w)), None) => word_rank(w).cmp(&0),
            (None, None) => Ordering::Equal,
        };
        if c != Ordering::Equal {
            return c;
        }
    }
    Ordering::Equal
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn semver_precedence() {
        let c = |a, b| compare(VersionOrder::Semver, a, b).expect("valid");
        assert_eq!(c("1.0.0-alpha", "1.0.0"), Ordering::Less);
        assert_eq!(c("0.0.0-0", "0.0.1"), Ordering::Less);
        assert_eq!(c("1.0.0-rc.1", "1.0.0-beta.11"), Ordering::Greater);
        assert_eq!(c("v1.2.3", "1.2.3"), Ordering::Equal);
        assert_eq!(c("1.0.0+build", "1.0.0"), Ordering::Equal);
        assert!(compare(VersionOrder::Semver, "1.0", "1.0.0").is_err());
    }

    #[test]
    fn dpkg_order_matches_deb_version() {
        assert_eq!(dpkg_compare("1.0~rc1", "1.0"), Ordering::Less);
        assert_eq!(dpkg_compare("1:0.9", "2.0"), Ordering::Greater);
        assert_eq!(dpkg_compare("1.2.3-1", "1.2.3-10"), Ordering::Less);
        assert_eq!(dpkg_compare("1.2a", "1.2+"), Ordering::Less);
        assert_eq!(dpkg_compare("2.30-1+deb12u1", "2.30-1"), Ordering::Greater);
        assert_eq!(dpkg_compare("1.0", "1.0"), Ordering::Equal);
    }

    #[test]
    fn generic_order() {
        assert_eq!(generic_compare("1.10", "1.9"), Ordering::Greater);
        assert_eq!(generic_compare("2.0rc1", "2.0"), Ordering::Less);
        assert_eq!(generic_compare("2.0.post1", "2.0"), Ordering::Greater);
        assert_eq!(generic_compare("1.0.dev0", "1.0a1"), Ordering::Less);
        assert_eq!(generic_compare("1.0", "1.0.0.1"), Ordering::Less);
    }
}
