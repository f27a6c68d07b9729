//! The one way signet asks for a CA certificate whose key it will hold: the
//! delegated intermediate ([`crate::delegated`]), Istio's plug-in `cacerts`
//! and the development PKI all mint their intermediate here.
//!
//! An intermediate is CA:TRUE with pathLenConstraint 0 (it signs leaves
//! only), keyCertSign and cRLSign, the trust domain's SPIFFE ID as its only
//! URI SAN (what SPIRE and Istio expect of a mesh CA), back-dated a minute
//! for clock skew. Upstreams that cannot set a path length (cert-manager)
//! get a decision without one, and a warning.

use std::time::{Duration, SystemTime};

use crate::chain::{BACKEND_CLOCK_TOLERANCE, IssuedChain};
use crate::csr::VerifiedCsr;
use crate::error::SignError;
use crate::key::{CaKey, KeyAlgorithm, PrivateKey};
use crate::names::San;
use crate::policy::IssuanceDecision;
use crate::signer::Signer;
use crate::spiffe::TrustDomain;

/// How far an intermediate's NotBefore is set before the moment it is
/// asked for.
pub const INTERMEDIATE_BACKDATE: Duration = Duration::from_secs(60);

/// What intermediate to mint.
#[derive(Debug, Clone, Copy)]
pub struct IntermediateSpec<'a> {
    pub common_name: &'a str,
    pub trust_domain: &'a TrustDomain,
    pub key: KeyAlgorithm,
    pub ttl: Duration,
    /// Who asks, for the audit trail (`signet:delegated:<authority>`, ...).
    pub requested_by: &'a str,
}

/// A new key, its CSR and the decision for its certificate: everything an
/// upstream needs to sign an intermediate.
#[derive(Debug)]
pub struct IntermediateRequest {
    pub key: PrivateKey,
    pub csr: VerifiedCsr,
    pub decision: IssuanceDecision,
}

impl IntermediateRequest {
    /// Generates the key and decides the certificate. `path_len` is false
    /// for an upstream that cannot set a pathLenConstraint.
    pub fn new(
        spec: &IntermediateSpec<'_>,
        now: SystemTime,
        path_len: bool,
    ) -> Result<Self, SignError> {
        let internal = |e: &dyn std::fmt::Display| SignError::Internal(e.to_string());
        let key = PrivateKey::generate(spec.key).map_err(|e| internal(&e))?;
        let csr_der = key
            .csr_der(Some(spec.common_name), &intermediate_sans(spec))
            .map_err(|e| internal(&e))?;
        let csr = VerifiedCsr::from_der(&csr_der)?;
        let decision = intermediate_decision(spec, now, path_len);
        Ok(Self { key, csr, decision })
    }
}

fn intermediate_sans(spec: &IntermediateSpec<'_>) -> [San; 1] {
    [San::Uri(spec.trust_domain.id())]
}

/// The certificate an intermediate is decided to be. `path_len` is false
/// for an upstream that cannot set a pathLenConstraint.
fn intermediate_decision(
    spec: &IntermediateSpec<'_>,
    now: SystemTime,
    path_len: bool,
) -> IssuanceDecision {
    let decision = IssuanceDecision::new_intermediate(
        spec.common_name,
        spec.trust_domain,
        0,
        now,
        spec.ttl,
        INTERMEDIATE_BACKDATE,
        spec.requested_by,
    );
    if path_len {
        decision
    } else {
        // signet never signs CA certificates with the intermediate, so
        // the constraint guards only against misuse of a stolen key.
        tracing::warn!(
            requested_by = spec.requested_by,
            "the upstream cannot set pathLenConstraint; the intermediate will carry none"
        );
        decision.without_path_len()
    }
}

/// A minted intermediate: its key and the chain the upstream returned
/// (checked against the decision).
#[derive(Debug)]
pub struct Minted {
    pub key: PrivateKey,
    pub chain: IssuedChain,
    pub decision: IssuanceDecision,
}

/// Asks `upstream` for an intermediate on a new in-memory key and checks
/// what it returns against the decision (names, CA constraints, validity
/// within the tolerance for remote clocks, a chain to the upstream's
/// roots).
pub async fn mint_intermediate(
    upstream: &dyn Signer,
    spec: &IntermediateSpec<'_>,
    now: SystemTime,
) -> Result<Minted, SignError> {
    let request = IntermediateRequest::new(
        spec,
        now,
        upstream.describe().capabilities.constrains_path_len,
    )?;
    let chain = certify(upstream, &request.csr, &request.decision, now).await?;
    Ok(Minted {
        key: request.key,
        chain,
        decision: request.decision,
    })
}

/// Asks `upstream` to certify `key` as an intermediate (the key may be in a
/// store: its CSR is signed there), checked as [`mint_intermediate`] checks.
pub async fn certify_intermediate(
    upstream: &dyn Signer,
    spec: &IntermediateSpec<'_>,
    key: &CaKey,
    now: SystemTime,
) -> Result<(IssuedChain, IssuanceDecision), SignError> {
    let csr_der = key
        .csr_der(Some(spec.common_name), &intermediate_sans(spec))
        .await?;
    let csr = VerifiedCsr::from_der(&csr_der)?;
    let decision = intermediate_decision(
        spec,
        now,
        upstream.describe().capabilities.constrains_path_len,
    );
    let chain = certify(upstream, &csr, &decision, now).await?;
    Ok((chain, decision))
}

async fn certify(
    upstream: &dyn Signer,
    csr: &VerifiedCsr,
    decision: &IssuanceDecision,
    now: SystemTime,
) -> Result<IssuedChain, SignError> {
    let chain = upstream.sign(decision, csr).await?;
    chain.check(decision, csr, now, BACKEND_CLOCK_TOLERANCE)?;
    Ok(chain)
}

/// signet's own serving certificate (its REST/gRPC listeners, istiod's
/// `istiod-tls`) from `authority`: a new P-256 key, exactly `sans`, the
/// server profile, the policy's longest TTL. Policy decides it like any
/// request, for the internal caller `purpose`.
pub async fn issue_own_server_cert(
    authority: &crate::Authority,
    purpose: &str,
    sans: &[San],
) -> Result<(PrivateKey, IssuedChain), SignError> {
    use crate::policy::{Grant, IssuanceRequest, Profile, TtlOverflow};
    let internal = |e: &dyn std::fmt::Display| SignError::Internal(e.to_string());
    let key = PrivateKey::generate(KeyAlgorithm::EcdsaP256).map_err(|e| internal(&e))?;
    let csr = VerifiedCsr::from_der(&key.csr_der(None, sans).map_err(|e| internal(&e))?)?;
    let grant = Grant {
        allowed_sans: sans.iter().map(crate::names::SanPattern::exactly).collect(),
        max_ttl: None,
        profiles: vec![Profile::Server],
        allow_wildcards: false,
    };
    let request = IssuanceRequest {
        profile: Profile::Server,
        ttl: Some(authority.policy().config().max_ttl.get()),
        ttl_overflow: TtlOverflow::Clamp,
        renewable: false,
        request_id: None,
    };
    let chain = authority
        .issue(&crate::Caller::internal(purpose), &grant, &csr, &request)
        .await?;
    Ok((key, chain))
}
