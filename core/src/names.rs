//! Subject alternative names and the patterns policy matches them against.
//!
//! A [`San`] is a name signet is willing to put in a certificate: a SPIFFE
//! ID, a DNS name (ASCII, LDH labels, optionally one leading `*` label) or an
//! IP address. A [`SanPattern`] is what an operator writes to say which names a
//! principal may have: `spiffe://td/ns/prod/sa/*`, `spiffe://td/batch/**`,
//! `*.svc.example.com`, `**.example.com`, `10.0.0.0/8`.
//!
//! Wildcards say how much they cover, in SPIFFE paths as in DNS names: `*` is
//! exactly one segment (label), `**` one or more and only last in a path
//! (first in a DNS name). A SPIFFE pattern with an `ns` segment must have the
//! mesh shape itself, `ns/<namespace or *>/sa/<service account or *>`, so a
//! grant can never reach deeper than one workload identity.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use ipnet::IpNet;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::spiffe::{SpiffeId, SpiffeIdError};

const MAX_DNS_LEN: usize = 253;
const MAX_LABEL_LEN: usize = 63;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum NameError {
    #[error("DNS name is empty")]
    EmptyDns,
    #[error("DNS name is longer than {MAX_DNS_LEN} characters")]
    DnsTooLong,
    #[error("DNS name {0:?} has an empty label")]
    EmptyLabel(String),
    #[error("DNS name {0:?} has a label longer than {MAX_LABEL_LEN} characters")]
    LabelTooLong(String),
    #[error(
        "DNS name {name:?} contains {ch:?}; only ASCII letters, digits and '-' are allowed (IDNs must be punycode)"
    )]
    DnsChar { name: String, ch: char },
    #[error("DNS name {0:?} has a label starting or ending with '-'")]
    Hyphen(String),
    #[error("DNS name {0:?} has a wildcard that is not the whole leftmost label")]
    Wildcard(String),
    #[error("invalid SPIFFE ID {uri:?}: {source}")]
    Spiffe { uri: String, source: SpiffeIdError },
    #[error("invalid SAN pattern {0:?}")]
    Pattern(String),
    #[error("invalid SAN pattern {pattern:?}: {why}")]
    PatternShape { pattern: String, why: String },
}

fn printable(s: &str) -> String {
    s.chars()
        .take(80)
        .map(|c| if c.is_control() { '\u{fffd}' } else { c })
        .collect()
}

/// A syntactically valid DNS name, stored lowercase.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DnsName(String);

impl DnsName {
    /// Validates a DNS name; a leading `*.` label is allowed (a wildcard
    /// request) and reported by [`DnsName::is_wildcard`].
    pub fn new(name: &str) -> Result<Self, NameError> {
        if name.is_empty() {
            return Err(NameError::EmptyDns);
        }
        if name.len() > MAX_DNS_LEN {
            return Err(NameError::DnsTooLong);
        }
        let shown = || printable(name);
        for (i, label) in name.split('.').enumerate() {
            if label.is_empty() {
                return Err(NameError::EmptyLabel(shown()));
            }
            if label.len() > MAX_LABEL_LEN {
                return Err(NameError::LabelTooLong(shown()));
            }
            if label == "*" {
                if i == 0 && name.len() > 2 {
                    continue;
                }
                return Err(NameError::Wildcard(shown()));
            }
            if let Some(ch) = label
                .chars()
                .find(|c| !(c.is_ascii_alphanumeric() || *c == '-'))
            {
                if ch == '*' {
                    return Err(NameError::Wildcard(shown()));
                }
                return Err(NameError::DnsChar { name: shown(), ch });
            }
            if label.starts_with('-') || label.ends_with('-') {
                return Err(NameError::Hyphen(shown()));
            }
        }
        Ok(Self(name.to_ascii_lowercase()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn is_wildcard(&self) -> bool {
        self.0.starts_with("*.")
    }

    fn labels(&self) -> impl DoubleEndedIterator<Item = &str> {
        self.0.split('.')
    }
}

impl fmt::Display for DnsName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A name that may appear in a certificate's subjectAltName.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum San {
    Uri(SpiffeId),
    Dns(DnsName),
    Ip(IpAddr),
}

impl San {
    pub fn kind(&self) -> &'static str {
        match self {
            San::Uri(_) => "URI",
            San::Dns(_) => "DNS",
            San::Ip(_) => "IP",
        }
    }
}

impl fmt::Display for San {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            San::Uri(id) => write!(f, "URI:{id}"),
            San::Dns(d) => write!(f, "DNS:{d}"),
            San::Ip(ip) => write!(f, "IP:{ip}"),
        }
    }
}

/// The certificate encoder's form of a SAN.
pub(crate) fn rcgen_san(san: &San) -> Result<rcgen::SanType, String> {
    Ok(match san {
        San::Uri(id) => rcgen::SanType::URI(
            id.as_str()
                .try_into()
                .map_err(|e| format!("URI SAN: {e}"))?,
        ),
        San::Dns(d) => {
            rcgen::SanType::DnsName(d.as_str().try_into().map_err(|e| format!("DNS SAN: {e}"))?)
        }
        San::Ip(ip) => rcgen::SanType::IpAddress(*ip),
    })
}

/// One segment of a SPIFFE ID pattern's path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathSegment {
    /// Exactly this segment.
    Exact(String),
    /// `*`: any one segment.
    One,
    /// `**`: one or more segments (only last).
    Many,
}

/// Which names a principal may obtain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SanPattern {
    /// Exactly this SPIFFE ID.
    SpiffeExact(SpiffeId),
    /// `spiffe://td/a/*/c`, `spiffe://td/a/**`: an ID of `td` whose path
    /// matches segment by segment (`spiffe://td/**` is the whole domain but
    /// for its own ID).
    Spiffe {
        trust_domain: String,
        segments: Vec<PathSegment>,
    },
    /// DNS glob: labels compared case-insensitively; a `*` label matches one
    /// label, a leading `**` label matches one or more.
    Dns(Vec<String>),
    /// An IP network (a single address is a /32 or /128).
    Ip(IpNet),
    /// `**` alone: any DNS name.
    AnyDns,
}

impl SanPattern {
    /// The pattern that matches exactly `san`.
    pub fn exactly(san: &San) -> Self {
        match san {
            San::Dns(d) => SanPattern::Dns(d.as_str().split('.').map(str::to_owned).collect()),
            San::Ip(ip) => SanPattern::Ip((*ip).into()),
            San::Uri(id) => SanPattern::SpiffeExact(id.clone()),
        }
    }

    /// Every SPIFFE ID of a trust domain but its own ID (`spiffe://td/**`).
    pub fn whole_trust_domain(trust_domain: &crate::spiffe::TrustDomain) -> Self {
        SanPattern::Spiffe {
            trust_domain: trust_domain.to_string(),
            segments: vec![PathSegment::Many],
        }
    }

    pub fn parse(pattern: &str) -> Result<Self, NameError> {
        let bad = || NameError::Pattern(printable(pattern));
        if pattern.starts_with("spiffe://") {
            return parse_spiffe_pattern(pattern);
        }
        if pattern == "**" {
            return Ok(SanPattern::AnyDns);
        }
        if let Ok(net) = pattern.parse::<IpNet>() {
            return Ok(SanPattern::Ip(net.trunc()));
        }
        if let Ok(ip) = pattern.parse::<IpAddr>() {
            return Ok(SanPattern::Ip(IpNet::from(ip)));
        }
        let labels: Vec<String> = pattern.split('.').map(str::to_ascii_lowercase).collect();
        for (i, label) in labels.iter().enumerate() {
            let ok = match label.as_str() {
                "*" => true,
                "**" => i == 0 && labels.len() > 1,
                l => DnsName::new(l).is_ok() && !l.contains('*'),
            };
            if !ok {
                return Err(bad());
            }
        }
        Ok(SanPattern::Dns(labels))
    }

    pub fn matches(&self, san: &San) -> bool {
        match (self, san) {
            (SanPattern::SpiffeExact(want), San::Uri(id)) => want == id,
            (
                SanPattern::Spiffe {
                    trust_domain,
                    segments,
                },
                San::Uri(id),
            ) => id.trust_domain() == trust_domain && path_glob(segments, id),
            (SanPattern::Dns(pattern), San::Dns(name)) => dns_glob(pattern, name),
            (SanPattern::Ip(net), San::Ip(ip)) => net.contains(ip),
            (SanPattern::AnyDns, San::Dns(_)) => true,
            _ => false,
        }
    }
}

fn parse_spiffe_pattern(pattern: &str) -> Result<SanPattern, NameError> {
    let shape = |why: String| NameError::PatternShape {
        pattern: printable(pattern),
        why,
    };
    let spiffe = |source| NameError::Spiffe {
        uri: printable(pattern),
        source,
    };
    let rest = &pattern["spiffe://".len()..];
    let (td, path) = rest.split_once('/').unwrap_or((rest, ""));
    let raw: Vec<&str> = if path.is_empty() {
        Vec::new()
    } else {
        path.split('/').collect()
    };
    if !raw.iter().any(|s| *s == "*" || *s == "**") {
        let id = SpiffeId::new(pattern).map_err(spiffe)?;
        id.mesh_identity().map_err(spiffe)?;
        return Ok(SanPattern::SpiffeExact(id));
    }
    // Validate the literal parts as an ID would be, a wildcard standing for
    // one ordinary segment.
    let literal: Vec<&str> = raw
        .iter()
        .map(|s| if *s == "*" || *s == "**" { "x" } else { s })
        .collect();
    SpiffeId::new(&format!("spiffe://{td}/{}", literal.join("/"))).map_err(spiffe)?;
    let segments: Vec<PathSegment> = raw
        .iter()
        .map(|s| match *s {
            "*" => PathSegment::One,
            "**" => PathSegment::Many,
            other => PathSegment::Exact(other.to_owned()),
        })
        .collect();
    if segments[..segments.len() - 1].contains(&PathSegment::Many) {
        return Err(shape("`**` may only be the last segment".into()));
    }
    let has_ns = segments
        .iter()
        .any(|s| matches!(s, PathSegment::Exact(e) if e.eq_ignore_ascii_case("ns")));
    if has_ns {
        let fits = match segments.as_slice() {
            [PathSegment::Exact(n), ns, PathSegment::Exact(s), sa] if n == "ns" && s == "sa" => {
                let ns_ok = match ns {
                    PathSegment::One => true,
                    PathSegment::Exact(ns) => crate::spiffe::is_dns1123_label(ns),
                    PathSegment::Many => false,
                };
                let sa_ok = match sa {
                    PathSegment::One => true,
                    PathSegment::Exact(sa) => crate::spiffe::is_dns1123_subdomain(sa),
                    PathSegment::Many => false,
                };
                ns_ok && sa_ok
            }
            _ => false,
        };
        if !fits {
            let hint = match segments.as_slice() {
                [PathSegment::Exact(n), PathSegment::Exact(ns), ..] if n == "ns" => {
                    format!(
                        "; for every service account of namespace {ns} write spiffe://{td}/ns/{ns}/sa/*"
                    )
                }
                _ => String::new(),
            };
            return Err(shape(format!(
                "a pattern with an `ns` segment must be ns/<namespace or *>/sa/<service account or *>, \
                 `*` covering one segment and `**` not allowed{hint}"
            )));
        }
    }
    Ok(SanPattern::Spiffe {
        trust_domain: td.to_owned(),
        segments,
    })
}

fn path_glob(pattern: &[PathSegment], id: &SpiffeId) -> bool {
    let have: Vec<&str> = id.segments().collect();
    let mut i = 0;
    for p in pattern {
        match p {
            PathSegment::Many => return have.len() > i,
            PathSegment::One => {
                if i >= have.len() {
                    return false;
                }
            }
            PathSegment::Exact(e) => {
                if have.get(i) != Some(&e.as_str()) {
                    return false;
                }
            }
        }
        i += 1;
    }
    i == have.len()
}

fn dns_glob(pattern: &[String], name: &DnsName) -> bool {
    let labels: Vec<&str> = name.labels().collect();
    let (multi, fixed) = match pattern.first().map(String::as_str) {
        Some("**") => (true, &pattern[1..]),
        _ => (false, pattern),
    };
    if multi {
        if labels.len() <= fixed.len() {
            return false;
        }
    } else if labels.len() != fixed.len() {
        return false;
    }
    let tail = &labels[labels.len() - fixed.len()..];
    tail.iter().zip(fixed).all(|(l, p)| p == "*" || p == l)
}

impl fmt::Display for SanPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SanPattern::SpiffeExact(id) => write!(f, "{id}"),
            SanPattern::Spiffe {
                trust_domain,
                segments,
            } => {
                write!(f, "spiffe://{trust_domain}")?;
                for s in segments {
                    match s {
                        PathSegment::Exact(e) => write!(f, "/{e}")?,
                        PathSegment::One => f.write_str("/*")?,
                        PathSegment::Many => f.write_str("/**")?,
                    }
                }
                Ok(())
            }
            SanPattern::Dns(labels) => f.write_str(&labels.join(".")),
            SanPattern::Ip(net) => write!(f, "{net}"),
            SanPattern::AnyDns => f.write_str("**"),
        }
    }
}

impl FromStr for SanPattern {
    type Err = NameError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl<'de> Deserialize<'de> for SanPattern {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        SanPattern::parse(&s).map_err(serde::de::Error::custom)
    }
}

impl Serialize for SanPattern {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dns(s: &str) -> San {
        San::Dns(DnsName::new(s).unwrap())
    }
    fn uri(s: &str) -> San {
        San::Uri(SpiffeId::new(s).unwrap())
    }
    fn pat(s: &str) -> SanPattern {
        SanPattern::parse(s).unwrap()
    }

    #[test]
    fn validates_dns_names() {
        assert_eq!(
            DnsName::new("Api.Example.COM").unwrap().as_str(),
            "api.example.com"
        );
        assert!(DnsName::new("localhost").is_ok());
        assert!(DnsName::new("*.example.com").unwrap().is_wildcard());
        assert!(DnsName::new("xn--caf-dma.example").is_ok());
        let bad = [
            "", ".", "a..b", "a.", "-a.b", "a-.b", "a_b.c", "a b", "a\0b", "café.fr", "*", "a.*.b",
            "*a.b", "**.b", "a.b*",
        ];
        for b in bad {
            assert!(DnsName::new(b).is_err(), "{b:?} accepted");
        }
        assert_eq!(
            DnsName::new(&"a".repeat(64)),
            Err(NameError::LabelTooLong("a".repeat(64)))
        );
        let long = vec!["a".repeat(60); 5].join(".");
        assert_eq!(DnsName::new(&long), Err(NameError::DnsTooLong));
    }

    #[test]
    fn spiffe_patterns_match_by_segment() {
        let p = pat("spiffe://cluster.local/ns/default/sa/*");
        assert!(p.matches(&uri("spiffe://cluster.local/ns/default/sa/demo")));
        assert!(!p.matches(&uri("spiffe://cluster.local/ns/default/sa")));
        assert!(!p.matches(&uri(
            "spiffe://cluster.local/ns/default/sa/x/ns/kube-system/sa/a"
        )));
        assert!(!p.matches(&uri("spiffe://cluster.local/ns/defaultx/sa/demo")));
        assert!(!p.matches(&uri("spiffe://other.local/ns/default/sa/demo")));
        assert!(!p.matches(&dns("default")));
        let any_ns = pat("spiffe://cluster.local/ns/*/sa/default");
        assert!(any_ns.matches(&uri("spiffe://cluster.local/ns/a/sa/default")));
        assert!(!any_ns.matches(&uri("spiffe://cluster.local/ns/a/sa/other")));
        let one = pat("spiffe://cluster.local/batch/*");
        assert!(one.matches(&uri("spiffe://cluster.local/batch/a")));
        assert!(!one.matches(&uri("spiffe://cluster.local/batch/a/b")));
        assert!(!one.matches(&uri("spiffe://cluster.local/batch")));
        let many = pat("spiffe://cluster.local/batch/**");
        assert!(many.matches(&uri("spiffe://cluster.local/batch/a/b/c")));
        assert!(!many.matches(&uri("spiffe://cluster.local/batch")));
        let whole = pat("spiffe://cluster.local/**");
        assert!(whole.matches(&uri("spiffe://cluster.local/anything/at/all")));
        assert!(!whole.matches(&uri("spiffe://cluster.local")));
        assert_eq!(whole.to_string(), "spiffe://cluster.local/**");
        assert_eq!(
            whole,
            SanPattern::whole_trust_domain(&"cluster.local".parse().unwrap())
        );
        assert_eq!(p.to_string(), "spiffe://cluster.local/ns/default/sa/*");
        let exact = pat("spiffe://cluster.local/ns/a/sa/b");
        assert!(exact.matches(&uri("spiffe://cluster.local/ns/a/sa/b")));
        assert!(!exact.matches(&uri("spiffe://cluster.local/ns/a/sa/bb")));
    }

    #[test]
    fn spiffe_patterns_keep_the_mesh_shape() {
        for bad in [
            "spiffe://cluster.local/ns/ci/*",
            "spiffe://cluster.local/ns/ci/**",
            "spiffe://cluster.local/ns/**",
            "spiffe://cluster.local/ns/*/sa/**",
            "spiffe://cluster.local/ns/ci/sa/*/x",
            "spiffe://cluster.local/x/ns/*/sa/*",
            "spiffe://cluster.local/NS/*/sa/*",
            "spiffe://cluster.local/ns/Ci/sa/*",
            "spiffe://cluster.local/ns/ci/sa/x/ns/kube-system/sa/admin",
            "spiffe://cluster.local/**/x",
            "spiffe://cluster.local/a/**/b",
            "spiffe://cluster.local/a*",
            "spiffe://cluster.local/**x",
            "spiffe://cluster.local/a/%2a",
            "spiffe://Cluster.local/*",
        ] {
            assert!(SanPattern::parse(bad).is_err(), "{bad:?} accepted");
        }
        let e = SanPattern::parse("spiffe://cluster.local/ns/ci/*")
            .unwrap_err()
            .to_string();
        assert!(e.contains("spiffe://cluster.local/ns/ci/sa/*"), "{e}");
    }

    #[test]
    fn dns_globs() {
        let one = pat("*.example.com");
        assert!(one.matches(&dns("api.example.com")));
        assert!(one.matches(&dns("API.example.com")));
        assert!(!one.matches(&dns("a.b.example.com")));
        assert!(!one.matches(&dns("example.com")));
        let many = pat("**.example.com");
        assert!(many.matches(&dns("a.b.example.com")));
        assert!(!many.matches(&dns("example.com")));
        assert!(!many.matches(&dns("evil-example.com")));
        assert!(pat("localhost").matches(&dns("localhost")));
        // A wildcard request only matches a pattern that is itself a glob there.
        assert!(one.matches(&dns("*.example.com")));
        assert!(!pat("api.example.com").matches(&dns("*.example.com")));
        assert!(pat("**").matches(&dns("anything.at.all")));
        for bad in ["a.**.b", "a*.b", "exa mple.com", ""] {
            assert!(SanPattern::parse(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn ip_patterns() {
        let net = pat("10.0.0.0/8");
        assert!(net.matches(&San::Ip("10.1.2.3".parse().unwrap())));
        assert!(!net.matches(&San::Ip("11.1.2.3".parse().unwrap())));
        let one = pat("::1");
        assert!(one.matches(&San::Ip("::1".parse().unwrap())));
        assert!(!one.matches(&San::Ip("::2".parse().unwrap())));
    }
}
