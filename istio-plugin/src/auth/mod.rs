//! Caller authentication for the Istio CA service, in Istio's order:
//! a client certificate chaining to our trust bundle that was issued for
//! renewal ([`signet_core::renewal`]); a JWT verified offline when its issuer
//! is configured; a Kubernetes TokenReview against the cluster named by the
//! `clusterid` header.

pub mod jwt;
#[cfg(feature = "kube")]
pub mod token_review;

use std::fmt;
use std::sync::Arc;

use signet_core::caller::PeerInfo;
use signet_core::renewal::{RenewalRefused, renewal_certificate};
use signet_core::spiffe::TrustDomain;

use crate::identity::Identity;
use jwt::JwtAuthenticator;

/// Why authentication failed: a short reason for the caller, the detail for
/// the log. `Unavailable` means the check itself could not be made.
#[derive(Debug)]
pub enum AuthError {
    Invalid {
        public: &'static str,
        detail: String,
    },
    Unavailable(String),
}

impl AuthError {
    pub fn invalid(public: &'static str, detail: impl fmt::Display) -> Self {
        AuthError::Invalid {
            public,
            detail: detail.to_string(),
        }
    }
}

impl fmt::Display for AuthError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AuthError::Invalid { public, detail } => write!(f, "{public}: {detail}"),
            AuthError::Unavailable(d) => write!(f, "authentication unavailable: {d}"),
        }
    }
}

/// What a request carries to prove who it is.
#[derive(Debug)]
pub struct Credentials<'a> {
    pub peer: Option<&'a PeerInfo>,
    /// The bearer token, if any.
    pub token: Option<&'a str>,
    /// The `clusterid` header; istio-agent's default is `Kubernetes`.
    pub cluster_id: &'a str,
}

/// The configured authenticators, tried in order.
#[derive(Debug, Default)]
pub struct Authenticators {
    pub mtls: Option<TrustDomain>,
    pub jwt: Vec<Arc<JwtAuthenticator>>,
    #[cfg(feature = "kube")]
    pub token_review: Option<Arc<token_review::TokenReviewer>>,
}

impl Authenticators {
    pub async fn authenticate(&self, creds: &Credentials<'_>) -> Result<Identity, AuthError> {
        if let (Some(td), Some(peer)) = (&self.mtls, creds.peer)
            && let Some(der) = &peer.client_cert
        {
            let cert = renewal_certificate(der).map_err(|e| {
                let public = match e {
                    RenewalRefused::NotRenewable => {
                        "client certificate was not issued for renewal (use a token)"
                    }
                    RenewalRefused::NotWorkload(_) => {
                        "client certificate is not a workload certificate"
                    }
                    _ => "client certificate is not valid",
                };
                AuthError::invalid(public, e)
            })?;
            if !cert.id.is_member_of(td) {
                return Err(AuthError::invalid(
                    "client certificate is from another trust domain",
                    cert.id,
                ));
            }
            return Ok(Identity::Renewal {
                id: cert.id,
                lifetime: cert.lifetime,
            });
        }
        let Some(token) = creds.token else {
            return Err(AuthError::invalid(
                "no credentials",
                "neither a client certificate nor a bearer token",
            ));
        };
        if !self.jwt.is_empty() {
            // A token one of the issuers verified before skips the parse.
            let digest = signet_core::crypto::sha256(token.as_bytes());
            if let Some(id) = self.jwt.iter().find_map(|j| j.remembered(&digest)) {
                return Ok(id);
            }
            if let Some(iss) = JwtAuthenticator::unverified_issuer(token)
                && let Some(j) = self.jwt.iter().find(|j| j.issuer() == iss)
            {
                return j.verify_new(token, digest).await;
            }
        }
        #[cfg(feature = "kube")]
        if let Some(tr) = &self.token_review {
            return tr.review(creds.cluster_id, token).await;
        }
        Err(AuthError::invalid(
            "token not accepted",
            "no configured issuer matches and TokenReview is not configured",
        ))
    }
}
