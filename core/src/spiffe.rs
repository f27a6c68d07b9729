//! SPIFFE IDs and trust domains, validated as the SPIFFE ID specification
//! requires (and a little stricter where ambiguity would help an attacker).
//!
//! `spiffe://<trust-domain>/<path>`: lowercase scheme, a trust domain of
//! `[a-z0-9._-]`, path segments of `[A-Za-z0-9._-]`, no empty, `.` or `..`
//! segments, no percent-encoding, query, fragment, port or user info.
//!
//! The mesh shape: Istio reads a SPIFFE ID's namespace by matching
//! `.*/ns/<namespace>/.*` against it, wherever `/ns/` appears. So an ID with
//! a segment `ns` anywhere in its path is a Kubernetes workload identity and
//! must be exactly `/ns/<namespace>/sa/<service account>`, each part valid by
//! Kubernetes' own naming rules ([`SpiffeId::mesh_identity`]); anything else
//! (`/ns/a/sa/b/ns/kube-system/sa/x`, `/x/ns/kube-system/sa/y`) is refused
//! wherever an ID is issued or accepted.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The longest SPIFFE ID accepted (the specification's limit for URIs in SANs).
pub const MAX_SPIFFE_ID_LEN: usize = 2048;
const MAX_TRUST_DOMAIN_LEN: usize = 255;
const SCHEME: &str = "spiffe://";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SpiffeIdError {
    #[error("scheme must be \"spiffe://\"")]
    Scheme,
    #[error("trust domain is empty")]
    EmptyTrustDomain,
    #[error("trust domain contains {0:?}; only a-z, 0-9, '.', '-' and '_' are allowed")]
    TrustDomainChar(char),
    #[error("trust domain is longer than {MAX_TRUST_DOMAIN_LEN} characters")]
    TrustDomainTooLong,
    #[error("path has an empty segment")]
    EmptySegment,
    #[error("path has a '.' or '..' segment")]
    DotSegment,
    #[error("path contains {0:?}; only A-Z, a-z, 0-9, '.', '-' and '_' are allowed")]
    PathChar(char),
    #[error("path must not end with '/'")]
    TrailingSlash,
    #[error("SPIFFE ID is longer than {MAX_SPIFFE_ID_LEN} bytes")]
    TooLong,
    #[error("a path with an \"ns\" segment must be exactly /ns/<namespace>/sa/<service account>")]
    MeshShape,
    #[error("namespace {0:?} is not a valid Kubernetes namespace name (a DNS-1123 label)")]
    Namespace(String),
    #[error(
        "service account {0:?} is not a valid Kubernetes service account name (a DNS-1123 subdomain)"
    )]
    ServiceAccount(String),
}

/// Kubernetes' DNS-1123 label (a namespace name): at most 63 characters of
/// `[a-z0-9-]`, starting and ending with a letter or digit.
pub fn is_dns1123_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// Kubernetes' DNS-1123 subdomain (a service account name): at most 253
/// characters, DNS-1123 labels joined by dots.
pub fn is_dns1123_subdomain(s: &str) -> bool {
    !s.is_empty() && s.len() <= 253 && s.split('.').all(is_dns1123_label)
}

/// Checks a namespace and service account name as Kubernetes would.
pub fn check_service_account(namespace: &str, service_account: &str) -> Result<(), SpiffeIdError> {
    if !is_dns1123_label(namespace) {
        return Err(SpiffeIdError::Namespace(printable(namespace)));
    }
    if !is_dns1123_subdomain(service_account) {
        return Err(SpiffeIdError::ServiceAccount(printable(service_account)));
    }
    Ok(())
}

fn printable(s: &str) -> String {
    s.chars()
        .take(80)
        .map(|c| if c.is_control() { '\u{fffd}' } else { c })
        .collect()
}

fn is_td_char(c: char) -> bool {
    matches!(c, 'a'..='z' | '0'..='9' | '.' | '-' | '_')
}

fn is_path_char(c: char) -> bool {
    matches!(c, 'a'..='z' | 'A'..='Z' | '0'..='9' | '.' | '-' | '_')
}

/// A validated trust domain name such as `cluster.local`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TrustDomain(String);

impl TrustDomain {
    pub fn new(name: &str) -> Result<Self, SpiffeIdError> {
        if name.is_empty() {
            return Err(SpiffeIdError::EmptyTrustDomain);
        }
        if name.len() > MAX_TRUST_DOMAIN_LEN {
            return Err(SpiffeIdError::TrustDomainTooLong);
        }
        if let Some(c) = name.chars().find(|c| !is_td_char(*c)) {
            return Err(SpiffeIdError::TrustDomainChar(c));
        }
        Ok(Self(name.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The trust domain's own ID, `spiffe://<td>`.
    pub fn id(&self) -> SpiffeId {
        SpiffeId {
            uri: format!("{SCHEME}{}", self.0),
            td_len: self.0.len(),
        }
    }

    /// `spiffe://<td>/ns/<ns>/sa/<sa>`, the identity Istio gives a service
    /// account; both names must be valid Kubernetes names.
    pub fn service_account_id(
        &self,
        namespace: &str,
        service_account: &str,
    ) -> Result<SpiffeId, SpiffeIdError> {
        check_service_account(namespace, service_account)?;
        SpiffeId::new(&format!(
            "{SCHEME}{}/ns/{namespace}/sa/{service_account}",
            self.0
        ))
    }
}

impl fmt::Display for TrustDomain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for TrustDomain {
    type Err = SpiffeIdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

impl<'de> Deserialize<'de> for TrustDomain {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        TrustDomain::new(&s)
            .map_err(|e| serde::de::Error::custom(format!("invalid trust domain {s:?}: {e}")))
    }
}

impl Serialize for TrustDomain {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

/// A validated SPIFFE ID.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SpiffeId {
    uri: String,
    td_len: usize,
}

impl SpiffeId {
    pub fn new(uri: &str) -> Result<Self, SpiffeIdError> {
        if uri.len() > MAX_SPIFFE_ID_LEN {
            return Err(SpiffeIdError::TooLong);
        }
        let rest = uri.strip_prefix(SCHEME).ok_or(SpiffeIdError::Scheme)?;
        let (td, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, ""),
        };
        TrustDomain::new(td)?;
        if !path.is_empty() {
            if path.ends_with('/') {
                return Err(if path == "/" {
                    SpiffeIdError::EmptySegment
                } else {
                    SpiffeIdError::TrailingSlash
                });
            }
            for segment in path[1..].split('/') {
                if segment.is_empty() {
                    return Err(SpiffeIdError::EmptySegment);
                }
                if segment == "." || segment == ".." {
                    return Err(SpiffeIdError::DotSegment);
                }
                if let Some(c) = segment.chars().find(|c| !is_path_char(*c)) {
                    return Err(SpiffeIdError::PathChar(c));
                }
            }
        }
        Ok(Self {
            uri: uri.to_owned(),
            td_len: td.len(),
        })
    }

    pub fn as_str(&self) -> &str {
        &self.uri
    }

    pub fn trust_domain(&self) -> &str {
        &self.uri[SCHEME.len()..SCHEME.len() + self.td_len]
    }

    /// The path, starting with `/`, or empty for a trust domain ID.
    pub fn path(&self) -> &str {
        &self.uri[SCHEME.len() + self.td_len..]
    }

    pub fn is_member_of(&self, td: &TrustDomain) -> bool {
        self.trust_domain() == td.as_str()
    }

    /// Path segments (empty for a trust domain ID).
    pub fn segments(&self) -> impl Iterator<Item = &str> {
        self.path().split('/').skip(1)
    }

    /// The Kubernetes workload this ID names, if it is one: `Ok(Some((ns,
    /// sa)))` for exactly `/ns/<ns>/sa/<sa>` with valid names, `Ok(None)` for
    /// a path with no `ns` segment at all, and an error for every other path
    /// that has one (any case), which Istio would read as a namespace.
    pub fn mesh_identity(&self) -> Result<Option<(&str, &str)>, SpiffeIdError> {
        let segments: Vec<&str> = self.segments().collect();
        if !segments.iter().any(|s| s.eq_ignore_ascii_case("ns")) {
            return Ok(None);
        }
        match segments.as_slice() {
            ["ns", ns, "sa", sa] => {
                check_service_account(ns, sa)?;
                Ok(Some((ns, sa)))
            }
            _ => Err(SpiffeIdError::MeshShape),
        }
    }
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.uri)
    }
}

impl FromStr for SpiffeId {
    type Err = SpiffeIdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_valid_ids() {
        let id = SpiffeId::new("spiffe://cluster.local/ns/default/sa/demo").unwrap();
        assert_eq!(id.trust_domain(), "cluster.local");
        assert_eq!(id.path(), "/ns/default/sa/demo");
        assert_eq!(
            id.segments().collect::<Vec<_>>(),
            ["ns", "default", "sa", "demo"]
        );
        assert!(id.is_member_of(&TrustDomain::new("cluster.local").unwrap()));
        let td = SpiffeId::new("spiffe://example.org").unwrap();
        assert_eq!(td.path(), "");
        assert_eq!(td.segments().count(), 0);
        SpiffeId::new("spiffe://a_b-c.d/Upper/x.y-z_0").unwrap();
    }

    #[test]
    fn refuses_tricks() {
        let cases = [
            ("SPIFFE://cluster.local/a", SpiffeIdError::Scheme),
            ("spiffe:/cluster.local/a", SpiffeIdError::Scheme),
            ("https://cluster.local/a", SpiffeIdError::Scheme),
            ("spiffe:///a", SpiffeIdError::EmptyTrustDomain),
            (
                "spiffe://Cluster.local/a",
                SpiffeIdError::TrustDomainChar('C'),
            ),
            (
                "spiffe://cluster.local:443/a",
                SpiffeIdError::TrustDomainChar(':'),
            ),
            (
                "spiffe://user@cluster.local/a",
                SpiffeIdError::TrustDomainChar('@'),
            ),
            ("spiffe://cluster.local/", SpiffeIdError::EmptySegment),
            ("spiffe://cluster.local/a/", SpiffeIdError::TrailingSlash),
            ("spiffe://cluster.local//a", SpiffeIdError::EmptySegment),
            ("spiffe://cluster.local/a/../b", SpiffeIdError::DotSegment),
            ("spiffe://cluster.local/./b", SpiffeIdError::DotSegment),
            (
                "spiffe://cluster.local/a/%2e%2e/b",
                SpiffeIdError::PathChar('%'),
            ),
            ("spiffe://cluster.local/a?b=c", SpiffeIdError::PathChar('?')),
            (
                "spiffe://cluster.local/a#frag",
                SpiffeIdError::PathChar('#'),
            ),
            ("spiffe://cluster.local/a b", SpiffeIdError::PathChar(' ')),
            ("spiffe://cluster.local/a\0b", SpiffeIdError::PathChar('\0')),
            (
                "spiffe://cluster.local/caf\u{e9}",
                SpiffeIdError::PathChar('\u{e9}'),
            ),
        ];
        for (input, want) in cases {
            assert_eq!(SpiffeId::new(input), Err(want), "{input}");
        }
        let long = format!("spiffe://td/{}", "a".repeat(MAX_SPIFFE_ID_LEN));
        assert_eq!(SpiffeId::new(&long), Err(SpiffeIdError::TooLong));
    }

    #[test]
    fn builds_service_account_ids() {
        let td = TrustDomain::new("cluster.local").unwrap();
        assert_eq!(
            td.service_account_id("default", "demo").unwrap().as_str(),
            "spiffe://cluster.local/ns/default/sa/demo"
        );
        assert_eq!(
            td.service_account_id("a", "b.c-d").unwrap().as_str(),
            "spiffe://cluster.local/ns/a/sa/b.c-d"
        );
        for (ns, sa) in [
            ("..", "demo"),
            ("a/b", "demo"),
            ("ci/sa/x/ns/kube-system", "admin"),
            ("Default", "demo"),
            ("a.b", "demo"),
            ("-a", "demo"),
            ("", "demo"),
            (&"a".repeat(64), "demo"),
            ("ns", "a/b"),
            ("ns", "A"),
            ("ns", "a..b"),
            ("ns", ".a"),
            ("ns", "a_b"),
            ("ns", ""),
            ("ns", "a\0"),
            ("ns", &"a".repeat(254)),
        ] {
            assert!(
                td.service_account_id(ns, sa).is_err(),
                "{ns:?} {sa:?} accepted"
            );
        }
        assert_eq!(td.id().as_str(), "spiffe://cluster.local");
    }

    #[test]
    fn mesh_shape() {
        let ok = |s: &str| {
            SpiffeId::new(s)
                .unwrap()
                .mesh_identity()
                .map(|o| o.is_some())
        };
        assert_eq!(ok("spiffe://td/ns/default/sa/demo"), Ok(true));
        assert_eq!(ok("spiffe://td/ns/a/sa/b.c"), Ok(true));
        assert_eq!(ok("spiffe://td/custom/path"), Ok(false));
        assert_eq!(ok("spiffe://td"), Ok(false));
        assert_eq!(ok("spiffe://td/nsx/a"), Ok(false));
        for bad in [
            "spiffe://td/ns/ci/sa/x/ns/kube-system/sa/admin",
            "spiffe://td/ns/ci/sa/x/y",
            "spiffe://td/ns/ci",
            "spiffe://td/ns/ci/x",
            "spiffe://td/ns/ci/SA/x",
            "spiffe://td/NS/ci/sa/x",
            "spiffe://td/x/ns/kube-system/sa/admin",
            "spiffe://td/a/Ns/b",
            "spiffe://td/ns",
            "spiffe://td/ns/Upper/sa/x",
            "spiffe://td/ns/a_b/sa/x",
            "spiffe://td/ns/a/sa/B",
            "spiffe://td/ns/a.b/sa/x",
        ] {
            assert!(
                SpiffeId::new(bad).unwrap().mesh_identity().is_err(),
                "{bad} accepted"
            );
        }
    }
}
