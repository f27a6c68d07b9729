//! The seam between the core and the places that hold trust.

use std::fmt;
use std::time::SystemTime;

use async_trait::async_trait;

use crate::chain::{IssuedChain, TrustBundle};
use crate::csr::VerifiedCsr;
use crate::error::SignError;
use crate::layout::Layout;
use crate::policy::IssuanceDecision;

/// What a backend can do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Capabilities {
    /// It can issue intermediate CA certificates (for delegated authorities).
    pub issues_intermediates: bool,
    /// It honours the decided NotAfter (rather than a fixed validity).
    pub honours_ttl: bool,
    /// It signs in process, without network calls.
    pub in_process: bool,
    /// For how long a repeated sign with the same request ID
    /// ([`IssuanceDecision::request_id`](crate::IssuanceDecision::request_id))
    /// returns the first certificate instead of issuing another (`None`:
    /// never; `Duration::MAX`: always).
    pub idempotent_for: Option<std::time::Duration>,
    /// It can put a pathLenConstraint on CA certificates (cert-manager's
    /// CertificateRequest API cannot).
    pub constrains_path_len: bool,
}

/// A backend's self-description, for logs, metrics and readiness.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendInfo {
    /// The configured name (`backends.<name>`).
    pub name: String,
    /// The backend type (`local`, `vault`, ...).
    pub kind: &'static str,
    pub capabilities: Capabilities,
    /// NotAfter of the CA certificate that signs, when known.
    pub ca_not_after: Option<SystemTime>,
    /// Whether the backend can sign right now, and why not if not.
    pub ready: Result<(), String>,
}

/// A place that signs certificates.
///
/// Implementations map the decision to their own notion (an intermediate is
/// just a decision with `is_ca()`), return the chain leaf first with the
/// trust bundle, and never widen what the decision says. The core verifies
/// the result either way.
#[async_trait]
pub trait Signer: Send + Sync + fmt::Debug {
    async fn sign(
        &self,
        decision: &IssuanceDecision,
        csr: &VerifiedCsr,
    ) -> Result<IssuedChain, SignError>;
    async fn trust_bundle(&self) -> Result<TrustBundle, SignError>;
    fn describe(&self) -> BackendInfo;
    /// Whether `spki_der` is the public key of a CA this signer signs with or
    /// chains to, as far as it knows without a network call (in-process
    /// signers know their own; decorators ask what they wrap).
    fn holds_ca_key(&self, spki_der: &[u8]) -> bool {
        let _ = spki_der;
        false
    }
    /// The upstream layout (signing CA, chain, anchors, what the provider
    /// allows), asking the provider where needed. The default knows only
    /// the trust bundle.
    async fn layout(&self) -> Result<Layout, SignError> {
        Ok(Layout::from_certs(None, &[], &self.trust_bundle().await?))
    }
    /// The CA that issues this signer's certificates, when every replica
    /// holds the same key in process (the `local` backend): it signs the
    /// authority's CRL ([`crate::revocation`]). Remote CAs keep their own
    /// revocation; a delegated authority has one intermediate per replica
    /// and per rotation, which one CRL cannot cover, so it has none yet.
    fn issuing_ca(&self) -> Option<std::sync::Arc<crate::issuer::LocalCa>> {
        None
    }
    /// Changes whenever the CA this signer issues from, or its trust
    /// bundle, changes by a root rotation's phase ([`crate::rotation`]), so
    /// that holders of an intermediate it issued (a delegated authority)
    /// re-mint at once. `None`: it never changes that way.
    fn issuer_changes(&self) -> Option<tokio::sync::watch::Receiver<u64>> {
        None
    }
    /// Revokes at the upstream CA a certificate this signer issued (a
    /// delegated intermediate that was compromised), so that the upstream's
    /// CRL lists it. `serial_hex`: lowercase hex, as
    /// [`IssuedChain::serial_hex`]. `Ok(false)`: this backend cannot.
    async fn revoke(
        &self,
        serial_hex: &str,
        reason: crate::revocation::Reason,
    ) -> Result<bool, SignError> {
        let _ = (serial_hex, reason);
        Ok(false)
    }
}
