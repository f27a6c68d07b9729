//! The pipeline's error type and its stable kinds.
//!
//! [`SignError`] carries detail for logs; [`ErrorKind`] is the small, stable
//! vocabulary every front-end maps to its wire (HTTP status, gRPC code,
//! cert-manager reason) in exactly one place, and that metrics use as labels.

use std::time::Duration;

use crate::chain::ChainError;
use crate::csr::CsrError;
use crate::policy::PolicyError;

/// Why an issuance did not happen.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SignError {
    /// The request itself is malformed (not the CSR): bad JSON, bad TTL, ...
    #[error("{message}")]
    InvalidRequest {
        reason: &'static str,
        message: String,
    },
    #[error(transparent)]
    InvalidCsr(#[from] CsrError),
    /// No valid credentials. The message is safe to show to the caller.
    #[error("{0}")]
    Unauthenticated(String),
    #[error(transparent)]
    PolicyDenied(#[from] PolicyError),
    #[error("rate limited")]
    RateLimited { retry_after: Option<Duration> },
    #[error("server is overloaded; retry later")]
    Overloaded,
    #[error("request timed out")]
    Timeout,
    /// The backend could not be reached or is failing; retrying may work.
    #[error("backend unavailable: {0}")]
    BackendUnavailable(String),
    /// The backend refused the request; retrying will not help.
    #[error("backend refused the request: {0}")]
    BackendRejected(String),
    /// The backend answered with something signet will not pass on.
    #[error("backend returned an unusable certificate chain: {0}")]
    BadChain(#[from] ChainError),
    /// The authority holds no usable CA yet (or any more).
    #[error("authority not ready: {0}")]
    NotReady(String),
    #[error("internal error: {0}")]
    Internal(String),
}

/// The stable classification of a [`SignError`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum ErrorKind {
    InvalidRequest,
    InvalidCsr,
    Unauthenticated,
    PolicyDenied,
    RateLimited,
    Overloaded,
    Timeout,
    BackendUnavailable,
    BackendRejected,
    BadChain,
    NotReady,
    Internal,
}

impl ErrorKind {
    /// The wire code, stable across releases.
    pub fn code(self) -> &'static str {
        match self {
            ErrorKind::InvalidRequest => "invalid_request",
            ErrorKind::InvalidCsr => "invalid_csr",
            ErrorKind::Unauthenticated => "unauthenticated",
            ErrorKind::PolicyDenied => "policy_denied",
            ErrorKind::RateLimited => "rate_limited",
            ErrorKind::Overloaded => "overloaded",
            ErrorKind::Timeout => "timeout",
            ErrorKind::BackendUnavailable => "backend_unavailable",
            ErrorKind::BackendRejected => "backend_rejected",
            ErrorKind::BadChain => "backend_bad_chain",
            ErrorKind::NotReady => "not_ready",
            ErrorKind::Internal => "internal",
        }
    }

    /// Whether the same request may succeed later without change.
    pub fn is_retryable(self) -> bool {
        matches!(
            self,
            ErrorKind::RateLimited
                | ErrorKind::Overloaded
                | ErrorKind::Timeout
                | ErrorKind::BackendUnavailable
                | ErrorKind::NotReady
        )
    }

    /// Whether the same request may succeed later without the caller
    /// changing it: the [retryable](Self::is_retryable) kinds, and faults on
    /// signet's or the upstream's side that an operator can fix (a chain
    /// that does not check out, an internal error). A controller that owns
    /// a request (the Kubernetes CSR signer, the cert-manager issuer) keeps
    /// retrying these with backoff; anything else is the request's fault and
    /// final.
    pub fn may_succeed_later(self) -> bool {
        self.is_retryable() || matches!(self, ErrorKind::BadChain | ErrorKind::Internal)
    }
}

impl SignError {
    pub fn kind(&self) -> ErrorKind {
        match self {
            SignError::InvalidRequest { .. } => ErrorKind::InvalidRequest,
            SignError::InvalidCsr(_) => ErrorKind::InvalidCsr,
            SignError::Unauthenticated(_) => ErrorKind::Unauthenticated,
            SignError::PolicyDenied(_) => ErrorKind::PolicyDenied,
            SignError::RateLimited { .. } => ErrorKind::RateLimited,
            SignError::Overloaded => ErrorKind::Overloaded,
            SignError::Timeout => ErrorKind::Timeout,
            SignError::BackendUnavailable(_) => ErrorKind::BackendUnavailable,
            SignError::BackendRejected(_) => ErrorKind::BackendRejected,
            SignError::BadChain(_) => ErrorKind::BadChain,
            SignError::NotReady(_) => ErrorKind::NotReady,
            SignError::Internal(_) => ErrorKind::Internal,
        }
    }

    /// A finer, stable reason within the kind (e.g. `weak_key` for
    /// `invalid_csr`), where there is one.
    pub fn reason(&self) -> Option<&'static str> {
        match self {
            SignError::InvalidRequest { reason, .. } => Some(reason),
            SignError::InvalidCsr(e) => Some(e.reason()),
            SignError::PolicyDenied(e) => Some(e.reason()),
            _ => None,
        }
    }

    pub fn invalid_request(reason: &'static str, message: impl Into<String>) -> Self {
        SignError::InvalidRequest {
            reason,
            message: message.into(),
        }
    }

    /// The message for the caller. Errors about our own side keep their
    /// detail in the logs and give the caller a short, generic text.
    pub fn public_message(&self) -> String {
        match self {
            SignError::BackendUnavailable(_) => "the signing backend is unavailable".to_owned(),
            SignError::BackendRejected(_) => "the signing backend refused the request".to_owned(),
            SignError::BadChain(_) => "the signing backend returned an unusable chain".to_owned(),
            SignError::Internal(_) => "internal error".to_owned(),
            SignError::NotReady(_) => "the authority is not ready".to_owned(),
            other => other.to_string(),
        }
    }
}
