//! Policy: what a certificate contains, chosen here and nowhere else.
//!
//! [`AuthorityPolicy::decide`] turns a verified CSR, an authenticated caller
//! and that caller's [`Grant`] into an [`IssuanceDecision`]. Names come from
//! the CSR only when the grant allows each of them; key usages, extended key
//! usages, CA flag, subject and validity are chosen by the profile and the
//! policy, never copied from the request.

use std::fmt;
use std::str::FromStr;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use crate::caller::Caller;
use crate::clock::rfc3339;
use crate::csr::VerifiedCsr;
use crate::duration::HumanDuration;
use crate::names::{San, SanPattern};
use crate::spiffe::TrustDomain;

/// The kinds of end-entity certificate signet issues.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Profile {
    /// A workload identity: exactly one SPIFFE ID, serverAuth + clientAuth.
    Workload,
    /// A TLS server: DNS names and/or IP addresses, serverAuth.
    Server,
    /// A TLS client: clientAuth.
    Client,
    /// Both ends of mutual TLS with DNS names, IPs and/or a SPIFFE ID:
    /// serverAuth + clientAuth (what cert-manager users usually ask for).
    Mtls,
}

impl Profile {
    pub const ALL: [Profile; 4] = [
        Profile::Workload,
        Profile::Server,
        Profile::Client,
        Profile::Mtls,
    ];

    /// The profile a request that names none means (a Kubernetes CSR, a
    /// cert-manager CertificateRequest), from its names and, where the
    /// request states them, the extended usages it asks for (`Some((server
    /// auth, client auth))`). A lone SPIFFE ID is a workload unless the
    /// usages say otherwise; without usages anything else is a server.
    pub fn infer(sans: &[San], usages: Option<(bool, bool)>) -> Profile {
        let workload = matches!(sans, [San::Uri(_)]);
        match usages {
            None if workload => Profile::Workload,
            None => Profile::Server,
            Some((true, true)) if workload => Profile::Workload,
            Some((true, true)) => Profile::Mtls,
            Some((false, true)) => Profile::Client,
            // cert-manager's default extended usage is server auth.
            Some(_) => Profile::Server,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Profile::Workload => "workload",
            Profile::Server => "server",
            Profile::Client => "client",
            Profile::Mtls => "mtls",
        }
    }

    fn extended_key_usage(self) -> Vec<ExtKeyUsage> {
        match self {
            Profile::Workload => vec![ExtKeyUsage::ServerAuth, ExtKeyUsage::ClientAuth],
            Profile::Server => vec![ExtKeyUsage::ServerAuth],
            Profile::Mtls => vec![ExtKeyUsage::ServerAuth, ExtKeyUsage::ClientAuth],
            Profile::Client => vec![ExtKeyUsage::ClientAuth],
        }
    }
}

impl fmt::Display for Profile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Profile {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "workload" => Ok(Profile::Workload),
            "server" => Ok(Profile::Server),
            "client" => Ok(Profile::Client),
            "mtls" => Ok(Profile::Mtls),
            other => Err(format!(
                "unknown profile {:?} (expected workload, server, client or mtls)",
                other.chars().take(32).collect::<String>()
            )),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KeyUsage {
    DigitalSignature,
    KeyEncipherment,
    KeyCertSign,
    CrlSign,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ExtKeyUsage {
    ServerAuth,
    ClientAuth,
}

/// Why policy refused a request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PolicyError {
    #[error("profile {profile} is not allowed for {principal}")]
    ProfileNotAllowed { profile: Profile, principal: String },
    #[error(
        "the CSR asks for a CA certificate (basicConstraints cA=TRUE); only end-entity certificates are issued here"
    )]
    CaRequested,
    #[error("{kind} name {value:?} is never issued")]
    UnsupportedName { kind: &'static str, value: String },
    #[error("{san} is outside trust domain {trust_domain}")]
    WrongTrustDomain { san: String, trust_domain: String },
    #[error("{san} is not allowed for {principal}")]
    SanNotAllowed { san: String, principal: String },
    #[error("{san} is not a workload identity signet issues: {why}")]
    IdentityShape { san: String, why: String },
    #[error("wildcard name {0} is not allowed")]
    WildcardNotAllowed(String),
    #[error("profile {profile}: {detail}")]
    ProfileMismatch { profile: Profile, detail: String },
    #[error("requested ttl {requested} exceeds the maximum of {max}")]
    TtlTooLong {
        requested: HumanDuration,
        max: HumanDuration,
    },
    #[error("requested ttl {requested} is below the minimum of {min}")]
    TtlTooShort {
        requested: HumanDuration,
        min: HumanDuration,
    },
    #[error("no policy grants anything to {0}")]
    NoGrant(String),
    #[error("usage {usage:?} is not allowed by {issuer}")]
    UsageNotAllowed { usage: String, issuer: String },
}

impl PolicyError {
    pub fn reason(&self) -> &'static str {
        match self {
            PolicyError::ProfileNotAllowed { .. } => "profile_not_allowed",
            PolicyError::CaRequested => "ca_requested",
            PolicyError::UnsupportedName { .. } => "san_type_not_allowed",
            PolicyError::WrongTrustDomain { .. } => "wrong_trust_domain",
            PolicyError::SanNotAllowed { .. } => "san_not_allowed",
            PolicyError::IdentityShape { .. } => "identity_shape",
            PolicyError::WildcardNotAllowed(_) => "wildcard_not_allowed",
            PolicyError::ProfileMismatch { .. } => "profile_mismatch",
            PolicyError::TtlTooLong { .. } => "ttl_too_long",
            PolicyError::TtlTooShort { .. } => "ttl_too_short",
            PolicyError::NoGrant(_) => "no_grant",
            PolicyError::UsageNotAllowed { .. } => "usage_not_allowed",
        }
    }
}

fn default_ttl() -> HumanDuration {
    HumanDuration::from_secs(24 * 3600)
}
fn default_max_ttl() -> HumanDuration {
    HumanDuration::from_secs(24 * 3600)
}
fn default_min_ttl() -> HumanDuration {
    HumanDuration::from_secs(60)
}
fn default_backdate() -> HumanDuration {
    HumanDuration::from_secs(60)
}

/// An authority's policy (config: `authorities.<name>.policy`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyConfig {
    /// TTL when the caller asks for none.
    #[serde(default = "default_ttl")]
    pub default_ttl: HumanDuration,
    /// Longest TTL any caller may get.
    #[serde(default = "default_max_ttl")]
    pub max_ttl: HumanDuration,
    /// Shortest TTL a caller may ask for.
    #[serde(default = "default_min_ttl")]
    pub min_ttl: HumanDuration,
    /// How far NotBefore is set in the past, for clock skew. Keep it to a few
    /// minutes: ztunnel renews at half of (NotAfter − NotBefore).
    #[serde(default = "default_backdate")]
    pub backdate: HumanDuration,
    /// CRL distribution point URLs put into every end-entity certificate
    /// (where relying parties fetch the authority's CRL, e.g.
    /// `https://signet.example/v1/crl/<authority>`). Only for authorities
    /// whose CA signet holds: remote CAs set their own.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub crl_distribution_points: Vec<String>,
}

impl Default for PolicyConfig {
    fn default() -> Self {
        Self {
            default_ttl: default_ttl(),
            max_ttl: default_max_ttl(),
            min_ttl: default_min_ttl(),
            backdate: default_backdate(),
            crl_distribution_points: Vec::new(),
        }
    }
}

impl PolicyConfig {
    /// Checks the numbers make sense together.
    pub fn validate(&self) -> Result<(), String> {
        if self.min_ttl > self.max_ttl {
            return Err(format!(
                "min_ttl {} exceeds max_ttl {}",
                self.min_ttl, self.max_ttl
            ));
        }
        if self.default_ttl > self.max_ttl || self.default_ttl < self.min_ttl {
            return Err(format!(
                "default_ttl {} must lie between min_ttl {} and max_ttl {}",
                self.default_ttl, self.min_ttl, self.max_ttl
            ));
        }
        if self.backdate.get() > Duration::from_secs(3600) {
            return Err(format!("backdate {} is more than 1h", self.backdate));
        }
        for url in &self.crl_distribution_points {
            let rest = url
                .strip_prefix("https://")
                .or_else(|| url.strip_prefix("http://"));
            let ok = rest.is_some_and(|r| {
                !r.is_empty() && !r.starts_with('/') && r.chars().all(|c| c.is_ascii_graphic())
            });
            if !ok {
                return Err(format!(
                    "crl_distribution_points: {url:?} is not an http(s) URL"
                ));
            }
        }
        Ok(())
    }
}

/// What one principal may obtain (config: `frontends.rest.principals[]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    pub allowed_sans: Vec<SanPattern>,
    /// Tighter cap than the authority's, if any.
    pub max_ttl: Option<Duration>,
    pub profiles: Vec<Profile>,
    pub allow_wildcards: bool,
}

impl Grant {
    /// A grant for exactly one SPIFFE ID in the workload profile, as the Istio
    /// front-end gives an authenticated service account.
    pub fn exact_identity(id: crate::spiffe::SpiffeId) -> Self {
        Self {
            allowed_sans: vec![SanPattern::SpiffeExact(id)],
            max_ttl: None,
            profiles: vec![Profile::Workload],
            allow_wildcards: false,
        }
    }
}

/// How a requested TTL above the maximum is handled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TtlOverflow {
    /// Refuse (REST: the caller asked for something explicit).
    Refuse,
    /// Clamp to the maximum (Istio: agents send their own SECRET_TTL).
    Clamp,
}

/// What the front-end asks on the caller's behalf.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssuanceRequest {
    pub profile: Profile,
    pub ttl: Option<Duration>,
    pub ttl_overflow: TtlOverflow,
    /// Whether the certificate may later renew itself by mTLS on the Istio
    /// front-end ([`crate::renewal`]): asked only where the caller proved a
    /// workload's own identity; granted for the workload profile only.
    pub renewable: bool,
    /// A key under which the backend must answer at most once (see
    /// [`IssuanceDecision::request_id`]); `None` when the caller has none.
    pub request_id: Option<String>,
}

/// What a caller allowed CA requests asks for (cert-manager `isCA`); see
/// [`AuthorityPolicy::decide_ca`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CaRequest {
    pub ttl: Option<Duration>,
    /// As [`IssuanceRequest::request_id`].
    pub request_id: Option<String>,
}

/// CA-ness of a decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CaConstraints {
    pub path_len: Option<u8>,
}

/// Everything the certificate will say, chosen by policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssuanceDecision {
    profile: Option<Profile>,
    sans: Vec<San>,
    common_name: Option<String>,
    not_before: SystemTime,
    not_after: SystemTime,
    key_usage: Vec<KeyUsage>,
    extended_key_usage: Vec<ExtKeyUsage>,
    ca: Option<CaConstraints>,
    renewable: bool,
    requested_by: String,
    pub(crate) request_id: Option<String>,
    /// URLs of the CRL distribution point extension (empty: none).
    crl_distribution_points: Vec<String>,
}

impl IssuanceDecision {
    /// URLs for the CRL distribution point extension (empty: none).
    pub fn crl_distribution_points(&self) -> &[String] {
        &self.crl_distribution_points
    }

    /// An idempotency key for backends that have one (AWS PCA's
    /// IdempotencyToken, GCP CAS's requestId): the same key must yield the
    /// same certificate, never a second one.
    pub fn request_id(&self) -> Option<&str> {
        self.request_id.as_deref()
    }

    /// A CA certificate with the given subject CN and names (for issuers
    /// whose policy allows CA requests, e.g. cert-manager `isCA`); see
    /// [`AuthorityPolicy::decide_ca`].
    pub(crate) fn new_ca_certificate(
        common_name: &str,
        sans: Vec<San>,
        path_len: Option<u8>,
        now: SystemTime,
        ttl: Duration,
        backdate: Duration,
        requested_by: &str,
    ) -> Self {
        Self {
            profile: None,
            sans,
            common_name: Some(common_name.to_owned()),
            not_before: now - backdate,
            not_after: now + ttl,
            key_usage: vec![
                KeyUsage::DigitalSignature,
                KeyUsage::KeyCertSign,
                KeyUsage::CrlSign,
            ],
            extended_key_usage: Vec::new(),
            ca: Some(CaConstraints { path_len }),
            renewable: false,
            requested_by: requested_by.to_owned(),
            request_id: None,
            crl_distribution_points: Vec::new(),
        }
    }

    /// The end-entity profile, or `None` for a CA certificate.
    pub fn profile(&self) -> Option<Profile> {
        self.profile
    }
    pub fn sans(&self) -> &[San] {
        &self.sans
    }
    /// Subject CN; leaves have an empty subject (and a critical SAN).
    pub fn common_name(&self) -> Option<&str> {
        self.common_name.as_deref()
    }
    pub fn not_before(&self) -> SystemTime {
        self.not_before
    }
    pub fn not_after(&self) -> SystemTime {
        self.not_after
    }
    /// Lifetime from NotBefore to NotAfter.
    pub fn ttl(&self) -> Duration {
        self.not_after
            .duration_since(self.not_before)
            .unwrap_or_default()
    }
    pub fn key_usage(&self) -> &[KeyUsage] {
        &self.key_usage
    }
    pub fn extended_key_usage(&self) -> &[ExtKeyUsage] {
        &self.extended_key_usage
    }
    pub fn ca(&self) -> Option<CaConstraints> {
        self.ca
    }
    pub fn is_ca(&self) -> bool {
        self.ca.is_some()
    }
    /// Whether the certificate carries signet's renewal extension.
    pub fn renewable(&self) -> bool {
        self.renewable
    }
    /// The principal this certificate is issued for (audit).
    pub fn requested_by(&self) -> &str {
        &self.requested_by
    }

    /// An intermediate CA: CA:TRUE with the given path length, keyCertSign and
    /// cRLSign, the trust domain's SPIFFE ID as its URI SAN (as SPIRE and
    /// Istio expect of a mesh CA).
    pub(crate) fn new_intermediate(
        common_name: &str,
        trust_domain: &TrustDomain,
        path_len: u8,
        now: SystemTime,
        ttl: Duration,
        backdate: Duration,
        requested_by: &str,
    ) -> Self {
        Self {
            profile: None,
            sans: vec![San::Uri(trust_domain.id())],
            common_name: Some(common_name.to_owned()),
            not_before: now - backdate,
            not_after: now + ttl,
            key_usage: vec![
                KeyUsage::DigitalSignature,
                KeyUsage::KeyCertSign,
                KeyUsage::CrlSign,
            ],
            extended_key_usage: Vec::new(),
            ca: Some(CaConstraints {
                path_len: Some(path_len),
            }),
            renewable: false,
            requested_by: requested_by.to_owned(),
            request_id: None,
            crl_distribution_points: Vec::new(),
        }
    }

    /// Drops the pathLenConstraint of a CA decision, for upstreams that
    /// cannot set one.
    pub fn without_path_len(mut self) -> Self {
        if let Some(ca) = &mut self.ca {
            ca.path_len = None;
        }
        self
    }

    /// Shortens NotAfter (a backend clamps to its issuer's NotAfter).
    pub fn with_not_after_at_most(mut self, limit: SystemTime) -> Self {
        if self.not_after > limit {
            self.not_after = limit;
        }
        self
    }
}

impl fmt::Display for IssuanceDecision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sans: Vec<String> = self.sans.iter().map(ToString::to_string).collect();
        write!(
            f,
            "{} [{}] until {}",
            self.profile.map_or("ca", Profile::as_str),
            sans.join(", "),
            rfc3339(self.not_after)
        )
    }
}

/// An authority's policy, validated and ready to decide.
#[derive(Debug, Clone)]
pub struct AuthorityPolicy {
    trust_domain: TrustDomain,
    config: PolicyConfig,
}

impl AuthorityPolicy {
    pub fn new(trust_domain: TrustDomain, config: PolicyConfig) -> Result<Self, String> {
        config.validate()?;
        Ok(Self {
            trust_domain,
            config,
        })
    }

    pub fn trust_domain(&self) -> &TrustDomain {
        &self.trust_domain
    }

    pub fn config(&self) -> &PolicyConfig {
        &self.config
    }

    /// Decides what to issue, or why not.
    pub fn decide(
        &self,
        caller: &Caller,
        grant: &Grant,
        csr: &VerifiedCsr,
        request: &IssuanceRequest,
        now: SystemTime,
    ) -> Result<IssuanceDecision, PolicyError> {
        let profile = request.profile;
        if !grant.profiles.contains(&profile) {
            return Err(PolicyError::ProfileNotAllowed {
                profile,
                principal: caller.principal().to_string(),
            });
        }
        if csr.requests_ca() {
            return Err(PolicyError::CaRequested);
        }
        if let Some(name) = csr.unsupported_names().first() {
            return Err(PolicyError::UnsupportedName {
                kind: name.kind,
                value: name.value.clone(),
            });
        }
        let sans = csr.requested_sans();
        self.check_profile_shape(profile, sans)?;
        self.check_sans(caller, grant, sans)?;

        let ttl = self.ttl(grant, request)?;
        let mut key_usage = vec![KeyUsage::DigitalSignature];
        if csr.key_kind().is_rsa() {
            key_usage.push(KeyUsage::KeyEncipherment);
        }
        Ok(IssuanceDecision {
            profile: Some(profile),
            sans: sans.to_vec(),
            common_name: None,
            not_before: now - self.config.backdate.get(),
            not_after: now + ttl,
            key_usage,
            extended_key_usage: profile.extended_key_usage(),
            ca: None,
            renewable: request.renewable && profile == Profile::Workload,
            requested_by: caller.principal().to_string(),
            request_id: request.request_id.clone(),
            crl_distribution_points: self.config.crl_distribution_points.clone(),
        })
    }

    /// Decides a CA certificate for a caller whose grant allows CA requests
    /// (cert-manager `isCA`): the same name rules as a leaf, the subject CN
    /// from the CSR (printable, at most 64 characters), pathLen 0, and the
    /// TTL clamped to the grant.
    pub fn decide_ca(
        &self,
        caller: &Caller,
        grant: &Grant,
        csr: &VerifiedCsr,
        ca: &CaRequest,
        now: SystemTime,
    ) -> Result<IssuanceDecision, PolicyError> {
        if let Some(name) = csr.unsupported_names().first() {
            return Err(PolicyError::UnsupportedName {
                kind: name.kind,
                value: name.value.clone(),
            });
        }
        self.check_sans(caller, grant, csr.requested_sans())?;
        let request = IssuanceRequest {
            profile: Profile::Mtls,
            ttl: ca.ttl,
            ttl_overflow: TtlOverflow::Clamp,
            renewable: false,
            request_id: None,
        };
        let ttl = self.ttl(grant, &request)?;
        let mut decision = IssuanceDecision::new_ca_certificate(
            csr.common_name().unwrap_or("signet issued CA"),
            csr.requested_sans().to_vec(),
            Some(0),
            now,
            ttl,
            self.config.backdate.get(),
            &caller.principal().to_string(),
        );
        decision.request_id = ca.request_id.clone();
        Ok(decision)
    }

    /// Every name must be in the trust domain (SPIFFE IDs), of the mesh
    /// shape where it names a namespace, a wildcard only where granted, and
    /// matched by one of the grant's patterns.
    fn check_sans(&self, caller: &Caller, grant: &Grant, sans: &[San]) -> Result<(), PolicyError> {
        for san in sans {
            if let San::Uri(id) = san {
                if !id.is_member_of(&self.trust_domain) {
                    return Err(PolicyError::WrongTrustDomain {
                        san: san.to_string(),
                        trust_domain: self.trust_domain.to_string(),
                    });
                }
                if let Err(e) = id.mesh_identity() {
                    return Err(PolicyError::IdentityShape {
                        san: san.to_string(),
                        why: e.to_string(),
                    });
                }
            }
            if let San::Dns(d) = san
                && d.is_wildcard()
                && !grant.allow_wildcards
            {
                return Err(PolicyError::WildcardNotAllowed(d.to_string()));
            }
            if !grant.allowed_sans.iter().any(|p| p.matches(san)) {
                return Err(PolicyError::SanNotAllowed {
                    san: san.to_string(),
                    principal: caller.principal().to_string(),
                });
            }
        }
        Ok(())
    }

    fn check_profile_shape(&self, profile: Profile, sans: &[San]) -> Result<(), PolicyError> {
        let uris = sans.iter().filter(|s| matches!(s, San::Uri(_))).count();
        let others = sans.len() - uris;
        let mismatch = |detail: &str| PolicyError::ProfileMismatch {
            profile,
            detail: detail.to_owned(),
        };
        if uris > 1 {
            return Err(mismatch("at most one SPIFFE ID may be requested"));
        }
        match profile {
            Profile::Workload => {
                if uris != 1 {
                    return Err(mismatch("exactly one SPIFFE ID URI SAN is required"));
                }
                if others > 0 {
                    return Err(mismatch(
                        "workload certificates carry only a SPIFFE ID; use profile server for DNS names or IP addresses",
                    ));
                }
                if let Some(San::Uri(id)) = sans.first()
                    && id.path().is_empty()
                {
                    return Err(mismatch(
                        "the trust domain's own ID is not a workload identity",
                    ));
                }
            }
            Profile::Server => {
                if others == 0 {
                    return Err(mismatch("at least one DNS name or IP address is required"));
                }
            }
            Profile::Client | Profile::Mtls => {
                if sans.is_empty() {
                    return Err(mismatch("at least one SAN is required"));
                }
            }
        }
        Ok(())
    }

    fn ttl(&self, grant: &Grant, request: &IssuanceRequest) -> Result<Duration, PolicyError> {
        let mut max = self.config.max_ttl.get();
        if let Some(g) = grant.max_ttl {
            max = max.min(g);
        }
        let min = self.config.min_ttl.get();
        let wanted = request
            .ttl
            .unwrap_or_else(|| self.config.default_ttl.get().min(max));
        if wanted < min {
            return Err(PolicyError::TtlTooShort {
                requested: wanted.into(),
                min: min.into(),
            });
        }
        if wanted > max {
            return match request.ttl_overflow {
                TtlOverflow::Clamp => Ok(max),
                TtlOverflow::Refuse => Err(PolicyError::TtlTooLong {
                    requested: wanted.into(),
                    max: max.into(),
                }),
            };
        }
        Ok(wanted)
    }
}
