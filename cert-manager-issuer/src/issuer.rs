//! One running issuer: its backend, authority and rules, and how a
//! CertificateRequest becomes an [`IssuanceDecision`].

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::str::FromStr as _;
use std::sync::Arc;
use std::time::Duration;

use signet_core::caller::{AuthMethod, Caller, Principal};
use signet_core::delegated::{Delegated, IntermediateConfig};
use signet_core::duration::HumanDuration;
use signet_core::names::SanPattern;
use signet_core::policy::{
    AuthorityPolicy, CaRequest, Grant, IssuanceRequest, PolicyConfig, PolicyError, Profile,
    TtlOverflow,
};
use signet_core::resilience::RateLimit;
use signet_core::spiffe::TrustDomain;
use signet_core::{Authority, Clock, IssuedChain, SignError, Signer, VerifiedCsr};

use crate::crd::{IssuerSpec, Mode};

/// Which kind of issuer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum IssuerKind {
    Issuer,
    ClusterIssuer,
}

impl IssuerKind {
    pub fn as_str(self) -> &'static str {
        match self {
            IssuerKind::Issuer => "SignetIssuer",
            IssuerKind::ClusterIssuer => "SignetClusterIssuer",
        }
    }

    /// From a CertificateRequest's `issuerRef.kind` (cert-manager's default
    /// kind is `Issuer`, which in group signet.dev means SignetIssuer).
    pub fn from_ref(kind: Option<&str>) -> Option<Self> {
        match kind.unwrap_or("Issuer") {
            "SignetIssuer" | "Issuer" => Some(IssuerKind::Issuer),
            "SignetClusterIssuer" | "ClusterIssuer" => Some(IssuerKind::ClusterIssuer),
            _ => None,
        }
    }
}

/// An issuer's identity.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct IssuerKey {
    pub kind: IssuerKind,
    /// `None` for cluster issuers.
    pub namespace: Option<String>,
    pub name: String,
}

impl fmt::Display for IssuerKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.namespace {
            Some(ns) => write!(f, "{} {ns}/{}", self.kind.as_str(), self.name),
            None => write!(f, "{} {}", self.kind.as_str(), self.name),
        }
    }
}

/// cert-manager's key usages (its `KeyUsage` strings) that signet knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Usage {
    DigitalSignature,
    KeyEncipherment,
    CertSign,
    CrlSign,
    ServerAuth,
    ClientAuth,
}

impl Usage {
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "digital signature" | "signing" => Usage::DigitalSignature,
            "key encipherment" => Usage::KeyEncipherment,
            "cert sign" => Usage::CertSign,
            "crl sign" => Usage::CrlSign,
            "server auth" => Usage::ServerAuth,
            "client auth" => Usage::ClientAuth,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Usage::DigitalSignature => "digital signature",
            Usage::KeyEncipherment => "key encipherment",
            Usage::CertSign => "cert sign",
            Usage::CrlSign => "crl sign",
            Usage::ServerAuth => "server auth",
            Usage::ClientAuth => "client auth",
        }
    }
}

const DEFAULT_MAX_DURATION: Duration = Duration::from_secs(90 * 86_400);
const DEFAULT_RATE: f64 = 10.0;
/// How long a request waits for a rate-limit token before it is requeued.
const RATE_WAIT: Duration = Duration::from_secs(2);
const MIN_DURATION: Duration = Duration::from_secs(600);
const BACKDATE: Duration = Duration::from_secs(300);

/// What an issuer's policy allows, resolved from its spec.
#[derive(Debug, Clone)]
pub struct Rules {
    pub allowed_usages: BTreeSet<Usage>,
    pub allow_ca: bool,
    pub grant: Grant,
    pub max_duration: Duration,
    pub rate_limit: f64,
}

/// Why a spec cannot make an issuer (permanent until edited).
pub fn rules(spec: &IssuerSpec, trust_domain: &TrustDomain) -> Result<Rules, String> {
    let p = &spec.policy;
    let max_duration = match &p.max_duration {
        Some(s) => HumanDuration::from_str(s)
            .map_err(|e| format!("policy.maxDuration: {e}"))?
            .get(),
        None => DEFAULT_MAX_DURATION,
    };
    if max_duration < MIN_DURATION {
        return Err(format!(
            "policy.maxDuration must be at least {}",
            HumanDuration::from(MIN_DURATION)
        ));
    }
    let mut allowed_usages = BTreeSet::new();
    match &p.allowed_usages {
        Some(list) => {
            for u in list {
                allowed_usages.insert(Usage::parse(u).ok_or_else(|| {
                    format!("policy.allowedUsages: {u:?} is not a usage signet issues")
                })?);
            }
        }
        None => {
            allowed_usages.extend([
                Usage::DigitalSignature,
                Usage::KeyEncipherment,
                Usage::ServerAuth,
                Usage::ClientAuth,
            ]);
            if p.allow_ca {
                allowed_usages.extend([Usage::CertSign, Usage::CrlSign]);
            }
        }
    }
    let allowed_sans = match &p.allowed_sans {
        Some(list) => list
            .iter()
            .map(|s| SanPattern::parse(s).map_err(|e| format!("policy.allowedSans: {s:?}: {e}")))
            .collect::<Result<Vec<_>, _>>()?,
        None => vec![
            SanPattern::AnyDns,
            SanPattern::parse("0.0.0.0/0").map_err(|e| e.to_string())?,
            SanPattern::parse("::/0").map_err(|e| e.to_string())?,
            SanPattern::whole_trust_domain(trust_domain),
        ],
    };
    let rate_limit = p.rate_limit.unwrap_or(DEFAULT_RATE);
    if !(rate_limit.is_finite() && rate_limit > 0.0 && rate_limit <= 10_000.0) {
        return Err(format!(
            "policy.rateLimit {rate_limit} is not in (0, 10000]"
        ));
    }
    Ok(Rules {
        allowed_usages,
        allow_ca: p.allow_ca,
        grant: Grant {
            allowed_sans,
            max_ttl: Some(max_duration),
            profiles: Profile::ALL.to_vec(),
            allow_wildcards: p.allow_wildcards,
        },
        max_duration,
        rate_limit,
    })
}

/// The parts of a CertificateRequest that decide what is signed.
#[derive(Debug, Clone, Copy)]
pub struct RequestParams<'a> {
    pub duration: Option<&'a str>,
    pub is_ca: bool,
    pub usages: &'a [String],
    /// Who created the request (`spec.username`), for the audit log.
    pub username: Option<&'a str>,
}

/// A running issuer.
pub struct Issuer {
    pub key: IssuerKey,
    /// `metadata.generation` it was built from.
    pub generation: Option<i64>,
    /// resourceVersion of every Secret it read.
    pub secret_versions: BTreeMap<String, String>,
    pub rules: Rules,
    authority: Arc<Authority>,
    upstream: Arc<dyn Signer>,
    delegated: Option<Arc<Delegated>>,
    /// Holds the Secret values its backend reads; gone with the issuer.
    _secrets: Option<crate::resolve::SecretFiles>,
}

impl fmt::Debug for Issuer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Issuer")
            .field("key", &self.key)
            .field("generation", &self.generation)
            .finish_non_exhaustive()
    }
}

/// What can go wrong building an issuer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BuildError {
    /// The spec is wrong (reason `InvalidConfig`); nothing is retried until
    /// it changes.
    #[error("{0}")]
    Invalid(String),
    /// Something it needs is missing or down (reason `NotReady`); retried.
    #[error("{0}")]
    Unavailable(String),
}

impl Issuer {
    /// Builds and starts an issuer from an already-resolved backend.
    #[allow(clippy::too_many_arguments)]
    pub fn start(
        key: IssuerKey,
        generation: Option<i64>,
        spec: &IssuerSpec,
        upstream: Arc<dyn Signer>,
        secret_versions: BTreeMap<String, String>,
        secrets: Option<crate::resolve::SecretFiles>,
        default_trust_domain: &TrustDomain,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, BuildError> {
        let trust_domain = match &spec.trust_domain {
            Some(td) => TrustDomain::new(td)
                .map_err(|e| BuildError::Invalid(format!("trustDomain: {e}")))?,
            None => default_trust_domain.clone(),
        };
        let rules = rules(spec, &trust_domain).map_err(BuildError::Invalid)?;
        let label = key.to_string();
        let (signer, delegated): (Arc<dyn Signer>, _) = match spec.mode {
            Mode::Direct => (upstream.clone(), None),
            Mode::Delegated => {
                let config = intermediate_config(spec).map_err(BuildError::Invalid)?;
                let d = Delegated::start(
                    &label,
                    upstream.clone(),
                    config,
                    trust_domain.clone(),
                    clock.clone(),
                );
                (d.clone() as Arc<dyn Signer>, Some(d))
            }
        };
        let rate = rules.rate_limit;
        let burst = (rate * 2.0).ceil().clamp(1.0, 20_000.0) as u32;
        let signer: Arc<dyn Signer> = Arc::new(RateLimit::new(signer, rate, burst, RATE_WAIT));
        let policy = AuthorityPolicy::new(
            trust_domain,
            PolicyConfig {
                default_ttl: rules.max_duration.into(),
                max_ttl: rules.max_duration.into(),
                min_ttl: MIN_DURATION.into(),
                backdate: BACKDATE.into(),
                crl_distribution_points: Vec::new(),
            },
        )
        .map_err(BuildError::Invalid)?;
        let authority = Arc::new(Authority::new(label, signer, policy, clock.clone()));
        Ok(Self {
            key,
            generation,
            secret_versions,
            rules,
            authority,
            upstream,
            delegated,
            _secrets: secrets,
        })
    }

    pub fn authority(&self) -> &Arc<Authority> {
        &self.authority
    }

    /// Whether re-signing a request whose earlier attempt started `age` ago
    /// and was interrupted cannot issue a second certificate: the backend
    /// still returns the first one for the same request ID, or nothing ever
    /// left the process.
    pub fn resumable(&self, age: Duration) -> bool {
        let caps = self.authority.backend().capabilities;
        caps.in_process || caps.idempotent_for.is_some_and(|window| age < window)
    }

    /// The readiness check: the backend answers with its CA, and a
    /// delegated issuer holds a current intermediate. `Ok` carries a
    /// human-readable summary.
    pub async fn health(&self) -> Result<String, String> {
        let bundle = self
            .upstream
            .trust_bundle()
            .await
            .map_err(|e| format!("backend: {e}"))?;
        let info = self.authority.backend();
        info.ready.clone()?;
        let mut summary = format!("{} root(s)", bundle.roots().len());
        if let Some(d) = &self.delegated {
            // A new issuer's first intermediate is usually a moment away.
            let _ = tokio::time::timeout(Duration::from_secs(5), d.ready()).await;
            let ca = d
                .current()
                .ok_or_else(|| "no intermediate obtained from the backend yet".to_owned())?;
            summary.push_str(&format!(
                "; intermediate until {}",
                signet_core::clock::rfc3339(ca.not_after())
            ));
        } else if let Some(t) = info.ca_not_after {
            summary.push_str(&format!("; CA until {}", signet_core::clock::rfc3339(t)));
        }
        Ok(summary)
    }

    /// Issues what a request asks for, as this issuer's policy decides, or
    /// says why not (policy errors are permanent). `request_id` makes the
    /// upstream answer at most once per request.
    pub async fn issue(
        &self,
        csr: &VerifiedCsr,
        params: RequestParams<'_>,
        request_id: &str,
    ) -> Result<IssuedChain, SignError> {
        if params.is_ca && !self.rules.allow_ca {
            return Err(PolicyError::CaRequested.into());
        }
        let mut usages = BTreeSet::new();
        for u in params.usages {
            let usage = Usage::parse(u).ok_or_else(|| SignError::InvalidRequest {
                reason: "unsupported_usage",
                message: format!("usage {u:?} is not one signet issues"),
            })?;
            if !self.rules.allowed_usages.contains(&usage) {
                return Err(PolicyError::UsageNotAllowed {
                    usage: u.clone(),
                    issuer: self.key.to_string(),
                }
                .into());
            }
            usages.insert(usage);
        }
        let ttl = match params.duration {
            Some(d) => Some(
                HumanDuration::from_str(d)
                    .map_err(|e| SignError::InvalidRequest {
                        reason: "bad_duration",
                        message: format!("spec.duration: {e}"),
                    })?
                    .get(),
            ),
            None => None,
        };
        let caller = Caller::new(
            Principal::Kubernetes(params.username.unwrap_or("unknown").to_owned()),
            AuthMethod::KubernetesToken {
                cluster: "local".into(),
            },
        );
        let grant = &self.rules.grant;
        if params.is_ca || usages.contains(&Usage::CertSign) {
            if !self.rules.allow_ca {
                return Err(PolicyError::CaRequested.into());
            }
            let request = CaRequest {
                ttl,
                request_id: Some(request_id.to_owned()),
            };
            return self.authority.issue_ca(&caller, grant, csr, &request).await;
        }
        let profile = Profile::infer(
            csr.requested_sans(),
            Some((
                usages.contains(&Usage::ServerAuth),
                usages.contains(&Usage::ClientAuth),
            )),
        );
        let request = IssuanceRequest {
            profile,
            ttl,
            ttl_overflow: TtlOverflow::Clamp,
            renewable: false,
            request_id: Some(request_id.to_owned()),
        };
        self.authority.issue(&caller, grant, csr, &request).await
    }
}

fn intermediate_config(spec: &IssuerSpec) -> Result<IntermediateConfig, String> {
    let mut config = IntermediateConfig::default();
    if let Some(i) = &spec.intermediate {
        if let Some(ttl) = &i.ttl {
            config.ttl = ttl.parse().map_err(|e| format!("intermediate.ttl: {e}"))?;
        }
        if let Some(key) = &i.key {
            config.key = key.parse().map_err(|e| format!("intermediate.key: {e}"))?;
        }
        if let Some(r) = i.renew_at {
            config.renew_at = r;
        }
        config.common_name = i.common_name.clone();
    }
    config
        .validate()
        .map_err(|e| format!("intermediate: {e}"))?;
    Ok(config)
}
