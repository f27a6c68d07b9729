//! What an upstream CA looks like from signet, and whether an authority can
//! use it.
//!
//! Every provider has several layouts (a root used directly, a subordinate
//! under another CA of the provider or under an external root, several CAs
//! under two roots during a rotation), and some layouts cannot serve some
//! authorities (an AWS short-lived-certificate CA cannot sign the
//! intermediate a delegated authority needs; cert-manager's SelfSigned issuer
//! chains to nothing). A backend reports its [`Layout`]; start-up checks it
//! against each authority that uses the backend and refuses what cannot
//! work, saying what to change; `signet check` prints it.

use std::fmt;
use std::time::{Duration, SystemTime};

use rustls_pki_types::CertificateDer;
use x509_parser::certificate::X509Certificate;
use x509_parser::prelude::FromDer;

use crate::chain::{TrustBundle, is_self_signed};
use crate::clock::{from_unix_seconds, rfc3339};
use crate::duration::HumanDuration;

/// One CA certificate, as a person reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaSummary {
    pub subject: String,
    pub not_after: SystemTime,
    pub self_signed: bool,
    /// The key type (`EC P-256`, `RSA 2048`, ...).
    pub key: String,
}

impl CaSummary {
    pub fn of(der: &[u8]) -> Option<Self> {
        let (_, c) = X509Certificate::from_der(der).ok()?;
        let key = match c.public_key().parsed() {
            Ok(x509_parser::public_key::PublicKey::RSA(r)) => format!("RSA {}", r.key_size()),
            Ok(x509_parser::public_key::PublicKey::EC(p)) => match p.key_size() {
                256 => "EC P-256".to_owned(),
                384 => "EC P-384".to_owned(),
                521 => "EC P-521".to_owned(),
                n => format!("EC {n}"),
            },
            _ => c.public_key().algorithm.algorithm.to_id_string(),
        };
        Some(Self {
            subject: c.subject().to_string(),
            not_after: from_unix_seconds(c.validity().not_after.timestamp()),
            self_signed: is_self_signed(der),
            key,
        })
    }
}

impl fmt::Display for CaSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} ({}, until {}{})",
            if self.subject.is_empty() {
                "(empty subject)"
            } else {
                &self.subject
            },
            self.key,
            rfc3339(self.not_after),
            if self.self_signed {
                ", self-signed"
            } else {
                ""
            }
        )
    }
}

/// Where the signing CA sits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Position {
    /// The signing CA is itself a trust anchor.
    Root,
    /// The signing CA chains up to an anchor through `n` certificates (its
    /// own included).
    Subordinate,
    /// The backend does not know its signing CA until it signs.
    Unknown,
}

/// An upstream CA as signet sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    /// The CA that signs (when known before signing).
    pub issuing: Option<CaSummary>,
    /// The certificates between the signing CA and an anchor, nearest first.
    pub chain: Vec<CaSummary>,
    /// The trust anchors workloads are given.
    pub anchors: Vec<CaSummary>,
    /// Whether the provider lets this CA sign CA certificates (a delegated
    /// authority's intermediate).
    pub issues_ca_certificates: bool,
    /// The longest validity the provider allows for what this CA signs.
    pub max_validity: Option<Duration>,
    /// Whether the anchors are real roots (self-signed) or only the top of a
    /// chain whose root the provider was not given.
    pub anchored_at_root: bool,
    /// Provider facts worth showing (`type: ROOT`, `usage mode: ...`).
    pub facts: Vec<(String, String)>,
    /// Why no authority can use this upstream at all, and what to change.
    pub unusable: Option<String>,
}

impl Layout {
    /// A layout from certificates: the signing CA (if known), what lies
    /// above it, and the trust bundle.
    pub fn from_certs(
        issuing: Option<&CertificateDer<'_>>,
        above: &[CertificateDer<'_>],
        bundle: &TrustBundle,
    ) -> Self {
        let chain = above
            .iter()
            .filter(|c| !bundle.contains(c))
            .filter_map(|c| CaSummary::of(c))
            .collect();
        let anchors: Vec<CaSummary> = bundle
            .roots()
            .iter()
            .filter_map(|c| CaSummary::of(c))
            .collect();
        Self {
            issuing: issuing.and_then(|c| CaSummary::of(c)),
            chain,
            anchored_at_root: anchors.iter().all(|a| a.self_signed),
            anchors,
            issues_ca_certificates: true,
            max_validity: None,
            facts: Vec::new(),
            unusable: None,
        }
    }

    pub fn fact(mut self, key: &str, value: impl Into<String>) -> Self {
        self.facts.push((key.to_owned(), value.into()));
        self
    }

    pub fn position(&self) -> Position {
        match &self.issuing {
            None => Position::Unknown,
            Some(i) if self.anchors.iter().any(|a| a == i) => Position::Root,
            Some(_) => Position::Subordinate,
        }
    }

    /// Checks that an authority can work with this layout: a delegated one
    /// needs CA certificates with room for its intermediate; every leaf and
    /// intermediate must fit the provider's longest validity. The error
    /// says what to change.
    pub fn check(&self, need: &Needs) -> Result<(), String> {
        if let Some(why) = &self.unusable {
            return Err(format!("authority {}: {why}", need.authority));
        }
        if let Some(ttl) = need.intermediate_ttl
            && !self.issues_ca_certificates
        {
            let why = self
                .facts
                .iter()
                .find(|(k, _)| k == "ca_certificates")
                .map_or(
                    "the provider does not sign CA certificates here",
                    |(_, v)| v,
                );
            return Err(format!(
                "authority {} is delegated (an intermediate of {}), but {why}: use mode: direct, or a CA that may sign CA certificates",
                need.authority,
                HumanDuration::from(ttl)
            ));
        }
        if let Some(max) = self.max_validity {
            if let Some(ttl) = need.intermediate_ttl
                && ttl > max
            {
                return Err(format!(
                    "authority {}: intermediate.ttl {} exceeds the {} this CA allows: lower intermediate.ttl",
                    need.authority,
                    HumanDuration::from(ttl),
                    HumanDuration::from(max)
                ));
            }
            if need.intermediate_ttl.is_none() && need.max_ttl > max {
                return Err(format!(
                    "authority {}: policy.max_ttl {} exceeds the {} this CA allows: lower policy.max_ttl (and default_ttl)",
                    need.authority,
                    HumanDuration::from(need.max_ttl),
                    HumanDuration::from(max)
                ));
            }
        }
        Ok(())
    }
}

/// What an authority needs of its backend.
#[derive(Debug, Clone)]
pub struct Needs {
    pub authority: String,
    /// Delegated: the intermediate's lifetime; direct: `None`.
    pub intermediate_ttl: Option<Duration>,
    /// The longest leaf (direct mode: signed by the backend).
    pub max_ttl: Duration,
}

impl fmt::Display for Layout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let position = match self.position() {
            Position::Root => "root CA used directly".to_owned(),
            Position::Subordinate => format!(
                "subordinate CA, {} certificate(s) to the anchor",
                self.chain.len() + 1
            ),
            Position::Unknown => "signing CA known once it signs".to_owned(),
        };
        writeln!(f, "  layout: {position}")?;
        if let Some(i) = &self.issuing {
            writeln!(f, "  signing CA: {i}")?;
        }
        for c in &self.chain {
            writeln!(f, "  chain: {c}")?;
        }
        for a in &self.anchors {
            writeln!(f, "  trust anchor: {a}")?;
        }
        if !self.anchored_at_root {
            writeln!(
                f,
                "  note: an anchor is not self-signed (the provider does not hold the root); give signet the root (roots_file / supplemental roots) to anchor there"
            )?;
        }
        for (k, v) in &self.facts {
            writeln!(f, "  {k}: {v}")?;
        }
        if let Some(why) = &self.unusable {
            writeln!(f, "  UNUSABLE: {why}")?;
        }
        if let Some(m) = self.max_validity {
            writeln!(f, "  longest validity: {}", HumanDuration::from(m))?;
        }
        write!(
            f,
            "  signs CA certificates: {}",
            if self.issues_ca_certificates {
                "yes"
            } else {
                "no"
            }
        )
    }
}
