//! An authority runs the pipeline: policy → signer → chain check → audit.

use std::collections::HashSet;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use rustls_pki_types::CertificateDer;
use x509_parser::prelude::FromDer as _;

use crate::caller::Caller;
use crate::chain::{BACKEND_CLOCK_TOLERANCE, IssuedChain, TrustBundle};
use crate::clock::{Clock, rfc3339};
use crate::crypto::sha256;
use crate::csr::{CsrError, VerifiedCsr};
use crate::error::SignError;
use crate::policy::{AuthorityPolicy, CaRequest, Grant, IssuanceDecision, IssuanceRequest};
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
    /// Keys of the CAs this authority's chains have shown (roots and
    /// intermediates), so that a CSR carrying one is refused before signing.
    ca_keys: RwLock<CaKeys>,
}

/// SHA-256 digests of CA SubjectPublicKeyInfos, and the certificates they
/// were learnt from (re-learnt only when a chain shows different ones).
#[derive(Debug, Default)]
struct CaKeys {
    digests: HashSet<[u8; 32]>,
    seen: Vec<CertificateDer<'static>>,
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
            ca_keys: RwLock::new(CaKeys::default()),
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

    /// The CA that issues this authority's certificates, when signet holds
    /// its key ([`Signer::issuing_ca`]): it signs the authority's CRL.
    pub fn issuing_ca(&self) -> Option<Arc<crate::issuer::LocalCa>> {
        self.signer.issuing_ca()
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

    /// Decides, signs, verifies and audits a CA certificate for a caller
    /// whose grant allows CA requests.
    pub async fn issue_ca(
        &self,
        caller: &Caller,
        grant: &Grant,
        csr: &VerifiedCsr,
        request: &CaRequest,
    ) -> Result<IssuedChain, SignError> {
        let decision = self
            .policy
            .decide_ca(caller, grant, csr, request, self.clock.now())?;
        self.sign_decided(caller, &decision, csr).await
    }

    /// Signs a decision policy made ([`AuthorityPolicy::decide`],
    /// [`AuthorityPolicy::decide_ca`]); private, so that nothing else
    /// decides what this authority signs.
    async fn sign_decided(
        &self,
        caller: &Caller,
        decision: &IssuanceDecision,
        csr: &VerifiedCsr,
    ) -> Result<IssuedChain, SignError> {
        self.refuse_ca_key(csr)?;
        let chain = self.signer.sign(decision, csr).await?;
        // A chain may show a CA this authority had not seen (a remote
        // backend's intermediate before its first certificate).
        if self.learn(&chain) && self.is_ca_key(csr.spki_der()) {
            tracing::error!(
                target: "signet::audit",
                serial = chain.serial_hex(),
                principal = %caller.principal(),
                authority = %self.name,
                backend = %self.backend_name,
                delivered = false,
                "the CSR carries the key of a CA in the chain; not returned"
            );
            return Err(CsrError::CaKey.into());
        }
        if let Err(e) = chain.check(decision, csr, self.clock.now(), self.tolerance) {
            // Issued all the same (by someone): on the audit trail, refused.
            tracing::error!(
                target: "signet::audit",
                serial = chain.serial_hex(),
                principal = %caller.principal(),
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
            principal = %caller.principal(),
            auth = caller.method().as_str(),
            profile = decision.profile().map_or("ca", |p| p.as_str()),
            sans = %sans.join(","),
            not_after = %rfc3339(chain.not_after()),
            authority = %self.name,
            route = caller.route().unwrap_or("-"),
            backend = %self.backend_name,
            "certificate issued"
        );
        Ok(chain)
    }

    pub async fn trust_bundle(&self) -> Result<TrustBundle, SignError> {
        self.signer.trust_bundle().await
    }

    /// Refuses a CSR whose key is a CA's: one the signer knows without a
    /// network call (its own CA and roots), or one seen in this authority's
    /// chains. (A remote backend's intermediate is known from its first
    /// certificate on; before that, the chain check after signing refuses
    /// such a CSR, and the certificate is audited as not delivered.)
    fn refuse_ca_key(&self, csr: &VerifiedCsr) -> Result<(), SignError> {
        if self.signer.holds_ca_key(csr.spki_der()) || self.is_ca_key(csr.spki_der()) {
            return Err(CsrError::CaKey.into());
        }
        Ok(())
    }

    fn is_ca_key(&self, spki_der: &[u8]) -> bool {
        self.ca_keys
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .digests
            .contains(&sha256(spki_der))
    }

    /// Learns the CA keys of a chain; returns whether any were new.
    fn learn(&self, chain: &IssuedChain) -> bool {
        let certs = chain
            .intermediates()
            .iter()
            .chain(chain.trust_bundle().roots());
        let known = {
            let keys = self.ca_keys.read().unwrap_or_else(|e| e.into_inner());
            certs.clone().all(|c| keys.seen.contains(c))
        };
        !known && self.learn_certs(certs.cloned())
    }

    fn learn_certs(&self, certs: impl Iterator<Item = CertificateDer<'static>>) -> bool {
        let mut keys = self.ca_keys.write().unwrap_or_else(|e| e.into_inner());
        let mut new = false;
        for der in certs {
            if keys.seen.contains(&der) {
                continue;
            }
            if let Ok((_, cert)) = x509_parser::certificate::X509Certificate::from_der(&der) {
                new |= keys.digests.insert(sha256(cert.public_key().raw));
            }
            // Bounded: CA sets are small, but rotations add to them.
            if keys.seen.len() >= 256 {
                keys.seen.clear();
            }
            keys.seen.push(der);
        }
        new
    }
}
