//! Certificate chains: what a signer returns, and the checks it must pass.
//!
//! Every chain is verified before a front-end sees it: each link's issuer
//! name, signature, CA flag, keyCertSign, path length and validity, up to a
//! root of the trust bundle; and the leaf must be what the decision said
//! (same key, same names, CA or not, no later NotAfter). Backends are not
//! trusted to get this right (Vault's `ca_chain` quirks are the classic case).

use std::collections::{BTreeSet, HashSet};
use std::fmt;
use std::net::IpAddr;
use std::sync::{LazyLock, OnceLock, RwLock};
use std::time::{Duration, SystemTime};

use rustls_pki_types::CertificateDer;
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::{GeneralName, ParsedExtension};
use x509_parser::prelude::FromDer;

use crate::clock::{from_unix_seconds, rfc3339};
use crate::crypto::{self, KeyError, SignatureError};
use crate::csr::VerifiedCsr;
use crate::names::{DnsName, San};
use crate::pem;
use crate::policy::{ExtKeyUsage, IssuanceDecision};
use crate::spiffe::SpiffeId;

/// How far a remote backend's NotAfter may exceed the decision (its clock
/// and ours differ a little).
pub const BACKEND_CLOCK_TOLERANCE: Duration = Duration::from_secs(300);

/// How far in our future a remote backend's NotBefore may be: its clock may
/// run a little ahead of ours (some backends do not back-date at all). More
/// than this is a clock to fix, and is refused as `NotYetValid`.
pub const MAX_NOT_BEFORE_SKEW: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ChainError {
    #[error("{what} is not a valid certificate: {detail}")]
    Parse { what: String, detail: String },
    #[error("the trust bundle is empty")]
    EmptyTrustBundle,
    #[error("{child} was not issued by {issuer} (issuer name differs)")]
    IssuerMismatch { child: String, issuer: String },
    #[error("{0} is not a CA certificate")]
    NotACa(String),
    #[error("{0} may not sign certificates (keyUsage lacks keyCertSign)")]
    NoKeyCertSign(String),
    #[error("{0}'s path length constraint is exceeded")]
    PathLenExceeded(String),
    #[error("{what} expired at {at}")]
    Expired { what: String, at: String },
    #[error("{what} is not valid before {at} (is a clock wrong?)")]
    NotYetValid { what: String, at: String },
    #[error("signature on {what} does not verify: {source}")]
    Signature {
        what: String,
        source: SignatureError,
    },
    #[error("key of {what} is not acceptable: {source}")]
    Key { what: String, source: KeyError },
    #[error("chain does not lead to a root of the trust bundle")]
    UntrustedRoot,
    #[error("the certificate expires at {leaf}, after its issuer {issuer} (at {issuer_not_after})")]
    OutlivesIssuer {
        leaf: String,
        issuer: String,
        issuer_not_after: String,
    },
    #[error("the certificate's public key is not the CSR's")]
    KeyMismatch,
    #[error("the certificate's CA flag or path length is not what was decided")]
    CaMismatch,
    #[error(
        "the certificate's names differ from the decision (unexpected: {unexpected:?}, missing: {missing:?})"
    )]
    NamesDiffer {
        unexpected: Vec<String>,
        missing: Vec<String>,
    },
    #[error("the certificate is valid until {got}, beyond the decided {decided}")]
    ValidityBeyondDecision { got: String, decided: String },
    #[error("the certificate's subject has a common name policy did not choose ({0:?})")]
    UnexpectedCommonName(String),
    #[error("the certificate lacks extended key usage {0}")]
    MissingExtKeyUsage(String),
    #[error("the certificate has unsupported subjectAltName entries ({0})")]
    UnsupportedSan(String),
    #[error("the certificate's renewal mark (subject OU) is not what was decided ({0})")]
    RenewalMarker(String),
    #[error("the certificate's public key is a CA's key in its own chain")]
    LeafKeyIsCaKey,
}

/// Why a root is in a trust bundle: a root rotation
/// ([`crate::rotation`]) adds the next root before anything chains to it and
/// keeps the retiring one until nothing does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RootRole {
    /// What certificates are issued under now.
    Current,
    /// Published ahead of a rotation; nothing chains to it yet.
    Next,
    /// Replaced; kept until certificates under it have expired.
    Retiring,
}

impl RootRole {
    pub fn as_str(self) -> &'static str {
        match self {
            RootRole::Current => "current",
            RootRole::Next => "next",
            RootRole::Retiring => "retiring",
        }
    }
}

/// Trust anchors: the roots a chain must end in, ordered current, next,
/// retiring, each with its [`RootRole`].
#[derive(Clone, PartialEq, Eq)]
pub struct TrustBundle {
    roots: Vec<CertificateDer<'static>>,
    /// SHA-256 of each root's SubjectPublicKeyInfo (see [`TrustBundle::holds_key`]).
    keys: Vec<[u8; 32]>,
    /// Parallel to `roots`.
    roles: Vec<RootRole>,
    /// Roots a finished rotation removed: consumers that keep earlier roots
    /// until they expire (`cacerts`) drop these.
    dropped: Vec<CertificateDer<'static>>,
}

impl fmt::Debug for TrustBundle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TrustBundle")
            .field("roots", &self.roots.len())
            .field("roles", &self.roles)
            .finish()
    }
}

impl TrustBundle {
    /// A bundle of one or more parseable CA certificates (duplicates
    /// dropped), all current.
    pub fn new(roots: Vec<CertificateDer<'static>>) -> Result<Self, ChainError> {
        if roots.is_empty() {
            return Err(ChainError::EmptyTrustBundle);
        }
        let mut unique: Vec<CertificateDer<'static>> = Vec::with_capacity(roots.len());
        let mut keys = Vec::with_capacity(roots.len());
        for (i, der) in roots.into_iter().enumerate() {
            let what = format!("trust bundle root {i}");
            let cert = parse(&der, &what)?;
            if !is_ca(&cert) {
                return Err(ChainError::NotACa(what));
            }
            if !unique.contains(&der) {
                keys.push(crypto::sha256(cert.public_key().raw));
                unique.push(der);
            }
        }
        let roles = vec![RootRole::Current; unique.len()];
        Ok(Self {
            roots: unique,
            keys,
            roles,
            dropped: Vec::new(),
        })
    }

    /// The bundle of a rotation: `issuing`'s roots as current (and in the
    /// roles they already have), then `other`'s roots that `issuing` lacks,
    /// as `role` (next or retiring).
    pub fn with_rotation(issuing: &TrustBundle, other: &TrustBundle, role: RootRole) -> Self {
        let mut out = issuing.clone();
        for (i, der) in other.roots.iter().enumerate() {
            if !out.roots.contains(der) {
                out.roots.push(der.clone());
                out.keys.push(other.keys[i]);
                out.roles.push(role);
            }
        }
        out.dropped.retain(|d| !out.roots.contains(d));
        out.sort_by_role();
        out
    }

    /// This bundle, recording `dropped` (roots of `previous` it lacks) as
    /// removed by a finished rotation.
    pub fn with_dropped(mut self, previous: &TrustBundle) -> Self {
        for der in &previous.roots {
            if !self.roots.contains(der) && !self.dropped.contains(der) {
                self.dropped.push(der.clone());
            }
        }
        self
    }

    fn sort_by_role(&mut self) {
        let mut entries: Vec<_> = std::mem::take(&mut self.roots)
            .into_iter()
            .zip(std::mem::take(&mut self.keys))
            .zip(std::mem::take(&mut self.roles))
            .collect();
        // Stable: the order within a role is kept.
        entries.sort_by_key(|((_, _), role)| *role);
        for ((der, key), role) in entries {
            self.roots.push(der);
            self.keys.push(key);
            self.roles.push(role);
        }
    }

    /// Each root with its role, in order.
    pub fn with_roles(&self) -> impl Iterator<Item = (&CertificateDer<'static>, RootRole)> {
        self.roots.iter().zip(self.roles.iter().copied())
    }

    /// The roots certificates are issued under now.
    pub fn current(&self) -> impl Iterator<Item = &CertificateDer<'static>> {
        self.with_roles()
            .filter(|(_, r)| *r == RootRole::Current)
            .map(|(d, _)| d)
    }

    /// Roots a finished rotation removed ([`TrustBundle::with_dropped`]).
    pub fn dropped(&self) -> &[CertificateDer<'static>] {
        &self.dropped
    }

    pub fn roots(&self) -> &[CertificateDer<'static>] {
        &self.roots
    }

    pub fn contains(&self, der: &[u8]) -> bool {
        self.roots.iter().any(|r| r.as_ref() == der)
    }

    /// Whether `spki_der` is the public key of one of the roots.
    pub fn holds_key(&self, spki_der: &[u8]) -> bool {
        let digest = crypto::sha256(spki_der);
        self.keys.contains(&digest)
    }

    /// All roots as concatenated PEM.
    pub fn to_pem(&self) -> String {
        self.roots
            .iter()
            .map(|r| pem::encode_certificate(r))
            .collect()
    }

    /// Each root as its own PEM string.
    pub fn pems(&self) -> Vec<String> {
        self.roots
            .iter()
            .map(|r| pem::encode_certificate(r))
            .collect()
    }

    /// The earliest NotAfter among the roots.
    pub fn earliest_expiry(&self) -> Option<SystemTime> {
        self.roots
            .iter()
            .filter_map(|r| X509Certificate::from_der(r).ok())
            .map(|(_, c)| from_unix_seconds(c.validity().not_after.timestamp()))
            .min()
    }
}

/// A certificate and the chain that leads to the trust bundle.
#[derive(Clone)]
pub struct IssuedChain {
    leaf: CertificateDer<'static>,
    intermediates: Vec<CertificateDer<'static>>,
    trust_bundle: TrustBundle,
    serial_hex: String,
    not_before: SystemTime,
    not_after: SystemTime,
    /// The SubjectPublicKeyInfo under which the leaf's signature is known
    /// to be good: set by the first successful [`IssuedChain::verify`], or by
    /// the in-process signer ([`IssuedChain::signed_in_process`]). The leaf
    /// cannot change, so a second check of the same chain (a backend's, then
    /// the authority's) repeats everything but that verification.
    leaf_signed_by: OnceLock<Vec<u8>>,
}

impl fmt::Debug for IssuedChain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IssuedChain")
            .field("serial", &self.serial_hex)
            .field("not_after", &rfc3339(self.not_after))
            .field("intermediates", &self.intermediates.len())
            .field("trust_bundle", &self.trust_bundle)
            .finish()
    }
}

impl IssuedChain {
    /// Assembles a chain, leaf first. Intermediates that are trust-bundle
    /// roots or repeat the leaf are dropped (some backends include them);
    /// nothing is verified yet, see [`IssuedChain::verify`].
    pub fn new(
        leaf: CertificateDer<'static>,
        intermediates: Vec<CertificateDer<'static>>,
        trust_bundle: TrustBundle,
    ) -> Result<Self, ChainError> {
        let cert = parse(&leaf, "the certificate")?;
        let serial_hex = hex::encode(cert.raw_serial());
        let not_before = from_unix_seconds(cert.validity().not_before.timestamp());
        let not_after = from_unix_seconds(cert.validity().not_after.timestamp());
        let mut kept: Vec<CertificateDer<'static>> = Vec::with_capacity(intermediates.len());
        for der in intermediates {
            if der == leaf || trust_bundle.contains(&der) || kept.contains(&der) {
                continue;
            }
            kept.push(der);
        }
        Ok(Self {
            leaf,
            intermediates: kept,
            trust_bundle,
            serial_hex,
            not_before,
            not_after,
            leaf_signed_by: OnceLock::new(),
        })
    }

    /// Records that [`crate::issuer::LocalCa`] signed the leaf in this
    /// process with the key of `issuer_spki`, which was checked against the
    /// CA certificate when the CA was loaded: [`IssuedChain::verify`] then
    /// checks everything but the leaf's own signature, which would only
    /// re-verify what was just computed (one ECDSA verification, a third of a
    /// request's cryptography). Certificates from remote backends are always
    /// verified.
    /// The same chain answered with `bundle` (a rotation's bundle, which
    /// holds the roots of both sides); intermediates that are roots of it
    /// are dropped.
    pub fn with_trust_bundle(mut self, bundle: TrustBundle) -> Self {
        self.intermediates.retain(|c| !bundle.contains(c));
        self.trust_bundle = bundle;
        self
    }

    pub(crate) fn signed_in_process(self, issuer_spki: Vec<u8>) -> Self {
        let _ = self.leaf_signed_by.set(issuer_spki);
        self
    }

    pub fn leaf(&self) -> &CertificateDer<'static> {
        &self.leaf
    }
    pub fn intermediates(&self) -> &[CertificateDer<'static>] {
        &self.intermediates
    }
    pub fn trust_bundle(&self) -> &TrustBundle {
        &self.trust_bundle
    }
    /// Lowercase hex of the serial number's DER content bytes.
    pub fn serial_hex(&self) -> &str {
        &self.serial_hex
    }
    pub fn not_before(&self) -> SystemTime {
        self.not_before
    }
    pub fn not_after(&self) -> SystemTime {
        self.not_after
    }
    /// When a CA certificate an upstream has just answered can be installed
    /// and checked: `now`, or its NotBefore when that is later. Upstreams
    /// that do not back-date (cert-manager's CA issuer) set NotBefore to the
    /// moment they signed, after a request that began at `now`;
    /// [`check`](Self::check) has already refused a NotBefore more than
    /// [`MAX_NOT_BEFORE_SKEW`] in our future.
    pub fn installable_at(&self, now: SystemTime) -> SystemTime {
        now.max(self.not_before)
    }
    pub fn leaf_pem(&self) -> String {
        pem::encode_certificate(&self.leaf)
    }
    pub fn intermediate_pems(&self) -> Vec<String> {
        self.intermediates
            .iter()
            .map(|c| pem::encode_certificate(c))
            .collect()
    }

    /// The trust bundle as PEM with the root this chain leads to last, for
    /// consumers that take the last certificate of an answer as *the* root
    /// (istiod in RA mode reads the CSR signer's answer that way): during a
    /// rotation the bundle holds a next root that anchors nothing yet. The
    /// anchor is the root whose subject is the top certificate's issuer
    /// (and whose key identifier matches its authority key identifier, when
    /// both are present).
    pub fn trust_bundle_pem_anchor_last(&self) -> String {
        let top = self.intermediates.last().unwrap_or(&self.leaf);
        let is_anchor = |root: &CertificateDer<'static>| anchored_by(top, root);
        let (anchors, others): (Vec<_>, Vec<_>) =
            self.trust_bundle.roots().iter().partition(|r| is_anchor(r));
        others
            .into_iter()
            .chain(anchors)
            .map(|r| pem::encode_certificate(r))
            .collect()
    }

    /// Verifies the path from the leaf to a root of the trust bundle at `now`.
    pub fn verify(&self, now: SystemTime) -> Result<(), ChainError> {
        self.verify_with_skew(now, Duration::ZERO)
    }

    /// [`IssuedChain::verify`], allowing NotBefore up to `skew` after `now`
    /// (a backend whose clock runs ahead of ours).
    pub fn verify_with_skew(&self, now: SystemTime, skew: Duration) -> Result<(), ChainError> {
        verify_path_inner(
            &self.leaf,
            &self.intermediates,
            &self.trust_bundle,
            now,
            skew,
            &self.leaf_signed_by,
        )
    }

    /// Checks that the leaf is what `decision` said for `csr`'s key.
    // Long on purpose: a checklist, one comparison per field of the
    // decision, read top to bottom against the certificate.
    pub fn check_matches(
        &self,
        decision: &IssuanceDecision,
        spki_der: &[u8],
        tolerance: Duration,
    ) -> Result<(), ChainError> {
        let leaf = parse(&self.leaf, "the certificate")?;
        if leaf.public_key().raw != spki_der {
            return Err(ChainError::KeyMismatch);
        }
        let bc = leaf.basic_constraints().map_err(|e| ChainError::Parse {
            what: "the certificate".into(),
            detail: e.to_string(),
        })?;
        let leaf_ca = bc.as_ref().is_some_and(|b| b.value.ca);
        match decision.ca() {
            None if leaf_ca => return Err(ChainError::CaMismatch),
            None => {
                let signs = leaf
                    .key_usage()
                    .ok()
                    .flatten()
                    .is_some_and(|ku| ku.value.key_cert_sign());
                if signs {
                    return Err(ChainError::CaMismatch);
                }
            }
            Some(want) => {
                let got = bc.and_then(|b| {
                    if b.value.ca {
                        Some(b.value.path_len_constraint)
                    } else {
                        None
                    }
                });
                // Any constraint at least as strict as the decided one.
                match (got, want.path_len) {
                    (None, _) => return Err(ChainError::CaMismatch),
                    (Some(Some(g)), Some(w)) if g <= u32::from(w) => {}
                    (Some(_), None) => {}
                    _ => return Err(ChainError::CaMismatch),
                }
            }
        }
        // The subject's CN is policy's too: none for leaves, the decided one
        // for CAs (a backend copying the CSR's CN is refused).
        let cns: Vec<&str> = leaf
            .subject()
            .iter_common_name()
            .filter_map(|a| a.as_str().ok())
            .collect();
        let cn_ok = match decision.common_name() {
            None => cns.is_empty(),
            Some(want) => cns.iter().all(|c| *c == want),
        };
        if !cn_ok {
            return Err(ChainError::UnexpectedCommonName(cns.join(", ")));
        }
        // Extended key usages the decision needs must be there (no EKU
        // extension at all means any usage).
        if let Ok(Some(eku)) = leaf.extended_key_usage() {
            let eku = eku.value;
            for want in decision.extended_key_usage() {
                let present = match want {
                    ExtKeyUsage::ServerAuth => eku.server_auth || eku.any,
                    ExtKeyUsage::ClientAuth => eku.client_auth || eku.any,
                };
                if !present {
                    return Err(ChainError::MissingExtKeyUsage(format!("{want:?}")));
                }
            }
        }
        // Only policy puts signet's renewal mark in a certificate; a
        // backend that copies the CSR's subject must not.
        match crate::renewal::is_marked(&leaf) {
            Ok(m) if m == decision.renewable() => {}
            Ok(m) => {
                return Err(ChainError::RenewalMarker(
                    if m { "present" } else { "missing" }.to_owned(),
                ));
            }
            Err(e) => return Err(ChainError::RenewalMarker(e)),
        }
        let got = leaf_sans(&leaf)?;
        let want: BTreeSet<San> = decision.sans().iter().cloned().collect();
        if got != want {
            return Err(ChainError::NamesDiffer {
                unexpected: got.difference(&want).map(ToString::to_string).collect(),
                missing: want.difference(&got).map(ToString::to_string).collect(),
            });
        }
        if self.not_after > decision.not_after() + tolerance {
            return Err(ChainError::ValidityBeyondDecision {
                got: rfc3339(self.not_after),
                decided: rfc3339(decision.not_after()),
            });
        }
        Ok(())
    }

    /// [`IssuedChain::verify`] and [`IssuedChain::check_matches`] for a CSR.
    /// A non-zero `tolerance` (a remote backend's clock) also allows its
    /// NotBefore up to [`MAX_NOT_BEFORE_SKEW`] in our future.
    pub fn check(
        &self,
        decision: &IssuanceDecision,
        csr: &VerifiedCsr,
        now: SystemTime,
        tolerance: Duration,
    ) -> Result<(), ChainError> {
        self.verify_with_skew(now, tolerance.min(MAX_NOT_BEFORE_SKEW))?;
        self.check_matches(decision, csr.spki_der(), tolerance)
    }
}

fn parse<'a>(der: &'a [u8], what: &str) -> Result<X509Certificate<'a>, ChainError> {
    let err = |detail: String| ChainError::Parse {
        what: what.to_owned(),
        detail,
    };
    let (rest, cert) = X509Certificate::from_der(der).map_err(|e| err(e.to_string()))?;
    if !rest.is_empty() {
        return Err(err(format!("{} bytes of trailing data", rest.len())));
    }
    if cert.tbs_certificate.signature != cert.signature_algorithm {
        return Err(err("inner and outer signature algorithms differ".into()));
    }
    Ok(cert)
}

fn is_ca(cert: &X509Certificate<'_>) -> bool {
    matches!(cert.basic_constraints(), Ok(Some(bc)) if bc.value.ca)
}

fn leaf_sans(cert: &X509Certificate<'_>) -> Result<BTreeSet<San>, ChainError> {
    let mut out = BTreeSet::new();
    let ext = cert
        .subject_alternative_name()
        .map_err(|e| ChainError::Parse {
            what: "the certificate".into(),
            detail: e.to_string(),
        })?;
    let Some(ext) = ext else { return Ok(out) };
    for name in &ext.value.general_names {
        let san = match name {
            GeneralName::URI(u) => SpiffeId::new(u)
                .map(San::Uri)
                .map_err(|_| ChainError::UnsupportedSan(format!("URI {u}")))?,
            GeneralName::DNSName(d) => DnsName::new(d)
                .map(San::Dns)
                .map_err(|_| ChainError::UnsupportedSan(format!("DNS {d}")))?,
            GeneralName::IPAddress(b) if b.len() == 4 => {
                San::Ip(IpAddr::from(<[u8; 4]>::try_from(*b).unwrap_or_default()))
            }
            GeneralName::IPAddress(b) if b.len() == 16 => {
                San::Ip(IpAddr::from(<[u8; 16]>::try_from(*b).unwrap_or_default()))
            }
            other => {
                return Err(ChainError::UnsupportedSan(
                    format!("{other:?}").chars().take(80).collect(),
                ));
            }
        };
        out.insert(san);
    }
    Ok(out)
}

/// The moment a chain is checked for, and how far a NotBefore may be
/// after it (a remote backend's clock).
#[derive(Debug, Clone, Copy)]
struct ValidAt {
    now: SystemTime,
    skew: Duration,
}

fn check_validity(
    cert: &X509Certificate<'_>,
    what: &str,
    ValidAt { now, skew }: ValidAt,
) -> Result<(), ChainError> {
    let nb = from_unix_seconds(cert.validity().not_before.timestamp());
    let na = from_unix_seconds(cert.validity().not_after.timestamp());
    if now + skew < nb {
        return Err(ChainError::NotYetValid {
            what: what.to_owned(),
            at: rfc3339(nb),
        });
    }
    if now > na {
        return Err(ChainError::Expired {
            what: what.to_owned(),
            at: rfc3339(na),
        });
    }
    Ok(())
}

/// How a link's signature is checked.
#[derive(Debug, Clone, Copy)]
enum LinkSignature<'a> {
    /// The leaf's: verified unless `known_good` already holds this issuer's
    /// SubjectPublicKeyInfo; recorded there on success.
    Leaf { known_good: &'a OnceLock<Vec<u8>> },
    /// Between CAs: verified once per process (the same for every request).
    VerifyOnce,
}

/// Signatures of CA certificates already verified under a given issuer key:
/// SHA-256 of (to-be-signed, signature, issuer SPKI). Every request's chain
/// repeats the same intermediates, so each CA → CA link costs one
/// verification per process instead of one per request. Only successes are
/// remembered; everything else about the link (names, validity,
/// constraints) is checked every time.
static VERIFIED_LINKS: LazyLock<RwLock<HashSet<[u8; 32]>>> =
    LazyLock::new(|| RwLock::new(HashSet::new()));
/// Beyond this many remembered links the set starts over (rotations add a
/// few per month; this bounds memory if something churns).
const VERIFIED_LINKS_MAX: usize = 1024;

fn link_key(child: &X509Certificate<'_>, issuer: &X509Certificate<'_>) -> [u8; 32] {
    let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    for part in [
        child.tbs_certificate.as_ref(),
        child.signature_value.as_ref(),
        issuer.public_key().raw,
    ] {
        ctx.update(&(part.len() as u64).to_be_bytes());
        ctx.update(part);
    }
    let mut out = [0u8; 32];
    out.copy_from_slice(ctx.finish().as_ref());
    out
}

/// Checks that `issuer` (a CA with `below` intermediates beneath it) issued `child`.
// Long on purpose: RFC 5280's checks for one link, in the order of §6.1.3-4.
fn check_link(
    child: &X509Certificate<'_>,
    child_what: &str,
    issuer: &X509Certificate<'_>,
    issuer_what: &str,
    below: usize,
    at: ValidAt,
    signature: LinkSignature,
) -> Result<(), ChainError> {
    if child.issuer().as_raw() != issuer.subject().as_raw() {
        return Err(ChainError::IssuerMismatch {
            child: child_what.to_owned(),
            issuer: issuer_what.to_owned(),
        });
    }
    let bc = issuer.basic_constraints().ok().flatten();
    let Some(bc) = bc.filter(|b| b.value.ca) else {
        return Err(ChainError::NotACa(issuer_what.to_owned()));
    };
    if let Some(max) = bc.value.path_len_constraint
        && below > max as usize
    {
        return Err(ChainError::PathLenExceeded(issuer_what.to_owned()));
    }
    if let Ok(Some(ku)) = issuer.key_usage()
        && !ku.value.key_cert_sign()
    {
        return Err(ChainError::NoKeyCertSign(issuer_what.to_owned()));
    }
    check_validity(issuer, issuer_what, at)?;
    let kind = crypto::classify_key(issuer.public_key()).map_err(|source| ChainError::Key {
        what: issuer_what.to_owned(),
        source,
    })?;
    let key = match signature {
        LinkSignature::Leaf { known_good } => {
            if known_good
                .get()
                .is_some_and(|spki| spki.as_slice() == issuer.public_key().raw)
            {
                return Ok(());
            }
            None
        }
        LinkSignature::VerifyOnce => {
            let key = link_key(child, issuer);
            let known = VERIFIED_LINKS
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .contains(&key);
            if known {
                return Ok(());
            }
            Some(key)
        }
    };
    crypto::verify_signature(
        issuer.public_key(),
        kind,
        &child.signature_algorithm,
        child.signature_value.as_ref(),
        child.tbs_certificate.as_ref(),
    )
    .map_err(|source| ChainError::Signature {
        what: child_what.to_owned(),
        source,
    })?;
    match (signature, key) {
        (LinkSignature::Leaf { known_good }, _) => {
            let _ = known_good.set(issuer.public_key().raw.to_vec());
        }
        (LinkSignature::VerifyOnce, Some(key)) => {
            let mut links = VERIFIED_LINKS.write().unwrap_or_else(|e| e.into_inner());
            if links.len() >= VERIFIED_LINKS_MAX {
                links.clear();
            }
            links.insert(key);
        }
        (LinkSignature::VerifyOnce, None) => {}
    }
    Ok(())
}

/// Verifies leaf → intermediates → a root of `bundle`, at `now`.
pub fn verify_path(
    leaf_der: &[u8],
    intermediates: &[CertificateDer<'_>],
    bundle: &TrustBundle,
    now: SystemTime,
) -> Result<(), ChainError> {
    verify_path_inner(
        leaf_der,
        intermediates,
        bundle,
        now,
        Duration::ZERO,
        &OnceLock::new(),
    )
}

fn verify_path_inner(
    leaf_der: &[u8],
    intermediates: &[CertificateDer<'_>],
    bundle: &TrustBundle,
    now: SystemTime,
    skew: Duration,
    leaf_signed_by: &OnceLock<Vec<u8>>,
) -> Result<(), ChainError> {
    let leaf = parse(leaf_der, "the certificate")?;
    let at = ValidAt { now, skew };
    check_validity(&leaf, "the certificate", at)?;
    let leaf_not_after = leaf.validity().not_after.timestamp();
    let cas = intermediates
        .iter()
        .enumerate()
        .map(|(i, der)| {
            let what = format!("intermediate {}", i + 1);
            parse(der, &what).map(|c| (c, what))
        })
        .collect::<Result<Vec<_>, _>>()?;

    // A remote backend's own clock sets both ends: a leaf it signs may end
    // a moment (up to the skew allowed for it) after its issuer; more is a
    // chain that would break before the leaf expires.
    let overhang = skew.as_secs() as i64;
    let outlives = |issuer: &X509Certificate<'_>, what: &str| -> Result<(), ChainError> {
        let na = issuer.validity().not_after.timestamp();
        if leaf_not_after > na + overhang {
            return Err(ChainError::OutlivesIssuer {
                leaf: rfc3339(from_unix_seconds(leaf_not_after)),
                issuer: what.to_owned(),
                issuer_not_after: rfc3339(from_unix_seconds(na)),
            });
        }
        Ok(())
    };

    let link = |below: usize| match below {
        0 => LinkSignature::Leaf {
            known_good: leaf_signed_by,
        },
        _ => LinkSignature::VerifyOnce,
    };
    let mut child = &leaf;
    let mut child_what = "the certificate".to_owned();
    for (below, (ca, what)) in cas.iter().enumerate() {
        check_link(child, &child_what, ca, what, below, at, link(below))?;
        outlives(ca, what)?;
        child = ca;
        child_what = what.clone();
    }
    let mut last_err = ChainError::UntrustedRoot;
    for (i, root_der) in bundle.roots().iter().enumerate() {
        let what = format!("root {}", i + 1);
        let root = parse(root_der, &what)?;
        if root.subject().as_raw() != child.issuer().as_raw() {
            continue;
        }
        match check_link(
            child,
            &child_what,
            &root,
            &what,
            cas.len(),
            at,
            link(cas.len()),
        )
        .and_then(|()| outlives(&root, &what))
        {
            Ok(()) => return Ok(()),
            Err(e) => last_err = e,
        }
    }
    Err(last_err)
}

/// NotBefore and NotAfter of a DER certificate.
pub fn validity(der: &[u8]) -> Result<(SystemTime, SystemTime), ChainError> {
    let cert = parse(der, "certificate")?;
    Ok((
        from_unix_seconds(cert.validity().not_before.timestamp()),
        from_unix_seconds(cert.validity().not_after.timestamp()),
    ))
}

/// Orders `candidates` into the path above `leaf` by matching issuer and
/// subject names, dropping certificates that are not on it (a backend's
/// `ca_chain` may be unordered, repeat the leaf, or carry unrelated roots).
/// The path ends at the first self-signed certificate.
pub fn order_path(
    leaf: &[u8],
    candidates: Vec<CertificateDer<'static>>,
) -> Vec<CertificateDer<'static>> {
    let Ok(leaf_cert) = parse(leaf, "the certificate") else {
        return candidates;
    };
    let mut issuer = leaf_cert.issuer().as_raw().to_vec();
    let mut remaining: Vec<CertificateDer<'static>> = candidates
        .into_iter()
        .filter(|c| c.as_ref() != leaf)
        .collect();
    let mut path = Vec::new();
    while let Some(i) = remaining.iter().position(|c| {
        parse(c, "candidate").is_ok_and(|cert| cert.subject().as_raw() == issuer.as_slice())
    }) {
        let next = remaining.remove(i);
        let Ok(cert) = parse(&next, "candidate") else {
            break;
        };
        let self_signed = cert.subject().as_raw() == cert.issuer().as_raw();
        issuer = cert.issuer().as_raw().to_vec();
        path.push(next);
        if self_signed {
            break;
        }
    }
    path
}

/// Verifies a presented client chain (leaf first, then the intermediates
/// the client sent) for client authentication at `now`, trusting only
/// `roots`: signatures, validity, constraints and the path, by webpki.
pub fn verify_client_chain(
    presented: &[Vec<u8>],
    roots: &[CertificateDer<'_>],
    now: SystemTime,
) -> Result<(), String> {
    let (leaf, rest) = presented
        .split_first()
        .ok_or_else(|| "no client certificate".to_owned())?;
    let anchors = roots
        .iter()
        .map(|r| webpki::anchor_from_trusted_cert(r).map(|a| a.to_owned()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("unusable root: {e}"))?;
    let leaf = CertificateDer::from(leaf.as_slice());
    let ee = webpki::EndEntityCert::try_from(&leaf).map_err(|e| e.to_string())?;
    let intermediates: Vec<CertificateDer<'_>> = rest
        .iter()
        .map(|c| CertificateDer::from(c.as_slice()))
        .collect();
    let since = now
        .duration_since(std::time::UNIX_EPOCH)
        .map_err(|e| e.to_string())?;
    ee.verify_for_usage(
        webpki::ALL_VERIFICATION_ALGS,
        &anchors,
        &intermediates,
        rustls_pki_types::UnixTime::since_unix_epoch(since),
        webpki::KeyUsage::client_auth(),
        None,
        None,
    )
    .map(|_| ())
    .map_err(|e| e.to_string())
}

/// Whether a DER certificate's subject and issuer names are the same.
/// Whether `root` is the certificate `top` chains to: its subject is
/// `top`'s issuer, and its key identifier matches `top`'s authority key
/// identifier when both are present. (Not a signature check.)
pub fn anchored_by(top: &[u8], root: &[u8]) -> bool {
    let (Ok((_, top)), Ok((_, root))) = (
        X509Certificate::from_der(top),
        X509Certificate::from_der(root),
    ) else {
        return false;
    };
    if top.issuer().as_raw() != root.subject().as_raw() {
        return false;
    }
    match (authority_key_id(&top), subject_key_id(&root)) {
        (Some(aki), Some(ski)) => aki == ski,
        _ => true,
    }
}

/// A certificate's subject as text, for messages (or a placeholder when it
/// does not parse).
pub fn subject_name(der: &[u8]) -> String {
    X509Certificate::from_der(der)
        .map(|(_, c)| c.subject().to_string())
        .unwrap_or_else(|_| "(unparseable certificate)".into())
}

pub fn is_self_signed(der: &[u8]) -> bool {
    parse(der, "certificate").is_ok_and(|c| c.subject().as_raw() == c.issuer().as_raw())
}

fn authority_key_id(cert: &X509Certificate<'_>) -> Option<Vec<u8>> {
    cert.extensions()
        .iter()
        .find_map(|e| match e.parsed_extension() {
            ParsedExtension::AuthorityKeyIdentifier(a) => {
                a.key_identifier.as_ref().map(|k| k.0.to_vec())
            }
            _ => None,
        })
}

/// A certificate's Subject Key Identifier, if it has one.
pub(crate) fn subject_key_id(cert: &X509Certificate<'_>) -> Option<Vec<u8>> {
    cert.extensions()
        .iter()
        .find_map(|e| match e.parsed_extension() {
            ParsedExtension::SubjectKeyIdentifier(k) => Some(k.0.to_vec()),
            _ => None,
        })
}
