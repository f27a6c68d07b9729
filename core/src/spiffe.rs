//! SPIFFE IDs and trust domains, validated as the SPIFFE ID specification
//! requires (and a little stricter where ambiguity would help an attacker).
//!
//! `spiffe://<trust-domain>/<path>`: lowercase scheme, a trust domain of
//! `[a-z0-9._-]`, path segments of `[A-Za-z0-9._-]`, no empty, `.` or `..`
//! segments, no percent-encoding, query, fragment, port or user info.

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

    /// `spiffe://<td>/ns/<ns>/sa/<sa>`, the identity Istio gives a service account.
    pub fn service_account_id(
        &self,
        namespace: &str,
        service_account: &str,
    ) -> Result<SpiffeId, SpiffeIdError> {
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
        assert!(td.service_account_id("..", "demo").is_err());
        assert_eq!(td.id().as_str(), "spiffe://cluster.local");
    }
}
