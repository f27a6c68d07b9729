//! An authority runs the pipeline: policy → signer → chain check → audit.

use std::sync::Arc;
use std::time::Duration;

use crate::caller::Caller;
use crate::chain::{BACKEND_CLOCK_TOLERANCE, IssuedChain, TrustBundle};
use crate::clock::{Clock, rfc3339};
use crate::csr::VerifiedCsr;
use crate::error::SignError;
use crate::policy::{AuthorityPolicy, Grant, IssuanceDecision, IssuanceRequest};
use crate::signer::{BackendInfo, Signer};

/// A backend plus a policy, addressed by front-ends by name.
#[derive(Debug)]
pub struct Authority {
    name: String,
    signer: Arc<dyn Signer>,
    policy: AuthorityPolicy,
    clock: Arc<dyn Clock>,
    backend_name: String,
    /// In-process signers stamp NotAfter exactly; remote ones get a little slack.
    tolerance: Duration,
}

impl Authority {
    pub fn new(
        name: impl Into<String>,
        signer: Arc<dyn Signer>,
        policy: AuthorityPolicy,
        clock: Arc<dyn Clock>,
    ) -> Self {
        let info = signer.describe();
        let tolerance = if info.capabilities.in_process {
            Duration::ZERO
        } else {
            BACKEND_CLOCK_TOLERANCE
        };
        Self {
            name: name.into(),
            signer,
            policy,
            clock,
            backend_name: info.name,
            tolerance,
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn policy(&self) -> &AuthorityPolicy {
        &self.policy
    }

    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.clock
    }

    pub fn backend(&self) -> BackendInfo {
        self.signer.describe()
    }

    /// Decides, signs, verifies and audits one end-entity certificate.
    pub async fn issue(
        &self,
        caller: &Caller,
        grant: &Grant,
        csr: &VerifiedCsr,
        request: &IssuanceRequest,
    ) -> Result<IssuedChain, SignError> {
        let decision = self
            .policy
            .decide(caller, grant, csr, request, self.clock.now())?;
        self.sign_decided(caller, &decision, csr).await
    }

    /// Signs an already-made decision (intermediates, internal certificates).
    pub async fn sign_decided(
        &self,
        caller: &Caller,
        decision: &IssuanceDecision,
        csr: &VerifiedCsr,
    ) -> Result<IssuedChain, SignError> {
        let chain = self.signer.sign(decision, csr).await?;
        if let Err(e) = chain.check(decision, csr, self.clock.now(), self.tolerance) {
            // Issued all the same (by someone): on the audit trail, refused.
            tracing::error!(
                target: "signet::audit",
                serial = chain.serial_hex(),
                principal = caller.principal(),
                authority = %self.name,
                backend = %self.backend_name,
                delivered = false,
                error = %e,
                "backend returned a certificate that fails verification; not returned"
            );
            return Err(SignError::BadChain(e));
        }
        let sans: Vec<String> = decision.sans().iter().map(ToString::to_string).collect();
        tracing::info!(
            target: "signet::audit",
            serial = chain.serial_hex(),
            principal = caller.principal(),
            auth = caller.method().as_str(),
            profile = decision.profile().map_or("ca", |p| p.as_str()),
            sans = %sans.join(","),
            not_after = %rfc3339(chain.not_after()),
            authority = %self.name,
            backend = %self.backend_name,
            "certificate issued"
        );
        Ok(chain)
    }

    pub async fn trust_bundle(&self) -> Result<TrustBundle, SignError> {
        self.signer.trust_bundle().await
    }
}
