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
    /// The request broke a rule of the transport that carried it (too big,
    /// too slow, wrong media type, no such endpoint).
    #[error("{message}")]
    Transport {
        fault: TransportFault,
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
    /// signet shed the request to protect itself or an upstream (a full
    /// queue, the upstream call budget spent); the caller retries.
    #[error("server is overloaded; retry later")]
    Overloaded { retry_after: Option<Duration> },
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

/// How a request broke its transport's rules: each has its own answer on
/// the wire (HTTP 413, 408, 415, 404, 405), all of kind `invalid_request`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum TransportFault {
    BodyTooLarge,
    BodyTooSlow,
    UnsupportedMediaType,
    NotFound,
    MethodNotAllowed,
}

impl TransportFault {
    pub fn reason(self) -> &'static str {
        match self {
            TransportFault::BodyTooLarge => "body_too_large",
            TransportFault::BodyTooSlow => "body_too_slow",
            TransportFault::UnsupportedMediaType => "unsupported_media_type",
            TransportFault::NotFound => "not_found",
            TransportFault::MethodNotAllowed => "method_not_allowed",
        }
    }
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

/// A gRPC status code, numbered as every gRPC implementation numbers them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(i32)]
pub enum GrpcCode {
    InvalidArgument = 3,
    DeadlineExceeded = 4,
    PermissionDenied = 7,
    ResourceExhausted = 8,
    Internal = 13,
    Unavailable = 14,
    Unauthenticated = 16,
}

/// One error as each front-end says it ([`SignError::wire`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Wire {
    /// REST's HTTP status.
    pub http_status: u16,
    /// The Istio CA service's status code.
    pub grpc: GrpcCode,
    /// The reason of a Kubernetes CSR's `Failed` condition.
    pub csr_failed_reason: &'static str,
    /// The request itself is at fault and will never succeed as sent:
    /// cert-manager's `InvalidRequest` condition.
    pub request_at_fault: bool,
    /// A PodCertificateRequest's final condition: `(type, reason)`, type
    /// `Denied` (the request will never be signed: the API's own
    /// `UnsupportedKeyType` for a key signet does not take) or `Failed`
    /// (signet or its backend could not). Retryable errors write nothing.
    pub pod_certificate: (&'static str, &'static str),
}

impl SignError {
    pub fn kind(&self) -> ErrorKind {
        match self {
            SignError::InvalidRequest { .. } | SignError::Transport { .. } => {
                ErrorKind::InvalidRequest
            }
            SignError::InvalidCsr(_) => ErrorKind::InvalidCsr,
            SignError::Unauthenticated(_) => ErrorKind::Unauthenticated,
            SignError::PolicyDenied(_) => ErrorKind::PolicyDenied,
            SignError::RateLimited { .. } => ErrorKind::RateLimited,
            SignError::Overloaded { .. } => ErrorKind::Overloaded,
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
            SignError::Transport { fault, .. } => Some(fault.reason()),
            SignError::InvalidCsr(e) => Some(e.reason()),
            SignError::PolicyDenied(e) => Some(e.reason()),
            _ => None,
        }
    }

    pub fn transport(fault: TransportFault, message: impl Into<String>) -> Self {
        SignError::Transport {
            fault,
            message: message.into(),
        }
    }

    /// How this error is said on every wire signet speaks: the one table.
    pub fn wire(&self) -> Wire {
        use GrpcCode as G;
        let (http_status, grpc) = match self.kind() {
            ErrorKind::InvalidRequest => {
                let http = match self {
                    SignError::Transport { fault, .. } => match fault {
                        TransportFault::BodyTooLarge => 413,
                        TransportFault::BodyTooSlow => 408,
                        TransportFault::UnsupportedMediaType => 415,
                        TransportFault::NotFound => 404,
                        TransportFault::MethodNotAllowed => 405,
                    },
                    _ => 400,
                };
                (http, G::InvalidArgument)
            }
            ErrorKind::InvalidCsr => (400, G::InvalidArgument),
            ErrorKind::Unauthenticated => (401, G::Unauthenticated),
            // istiod answers a TTL it will not grant with INVALID_ARGUMENT;
            // istio-agent treats both codes as final.
            ErrorKind::PolicyDenied => match self {
                SignError::PolicyDenied(PolicyError::TtlTooShort { .. }) => {
                    (403, G::InvalidArgument)
                }
                _ => (403, G::PermissionDenied),
            },
            // istio-agent retries UNAVAILABLE, DEADLINE_EXCEEDED and
            // RESOURCE_EXHAUSTED: every "try again later" lands there.
            ErrorKind::RateLimited => (429, G::ResourceExhausted),
            ErrorKind::Timeout => (503, G::DeadlineExceeded),
            ErrorKind::Overloaded | ErrorKind::BackendUnavailable | ErrorKind::NotReady => {
                (503, G::Unavailable)
            }
            ErrorKind::BackendRejected | ErrorKind::BadChain => (502, G::Internal),
            ErrorKind::Internal => (500, G::Internal),
        };
        let csr_failed_reason = match self.kind() {
            ErrorKind::InvalidCsr | ErrorKind::InvalidRequest => "SignetInvalidRequest",
            ErrorKind::PolicyDenied => "SignetPolicyDenied",
            _ => "SignetSigningFailed",
        };
        let pod_certificate = match self {
            SignError::InvalidCsr(CsrError::Key(k)) if k.reason() != "malformed" => {
                ("Denied", "UnsupportedKeyType")
            }
            SignError::InvalidRequest {
                reason: "unverified_user_annotations",
                ..
            } => ("Denied", "InvalidUnverifiedUserAnnotations"),
            _ => match self.kind() {
                ErrorKind::InvalidCsr | ErrorKind::InvalidRequest => {
                    ("Denied", "SignetInvalidRequest")
                }
                ErrorKind::PolicyDenied => ("Denied", "SignetPolicyDenied"),
                // The pod, node or service account named are not the ones
                // the cluster has.
                ErrorKind::Unauthenticated => ("Denied", "SignetPodMismatch"),
                _ => ("Failed", "SignetSigningFailed"),
            },
        };
        Wire {
            http_status,
            grpc,
            csr_failed_reason,
            pod_certificate,
            request_at_fault: matches!(
                self.kind(),
                ErrorKind::InvalidCsr | ErrorKind::InvalidRequest
            ),
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::duration::HumanDuration;

    /// The table, row by row: what each wire says for each error.
    #[test]
    fn every_error_has_one_answer_per_wire() {
        let ttl = |requested, min| {
            SignError::PolicyDenied(PolicyError::TtlTooShort {
                requested: HumanDuration::from_secs(requested),
                min: HumanDuration::from_secs(min),
            })
        };
        #[rustfmt::skip]
        let rows: Vec<(SignError, u16, GrpcCode, &str, bool)> = vec![
            (SignError::invalid_request("bad_ttl", "x"), 400, GrpcCode::InvalidArgument, "SignetInvalidRequest", true),
            (SignError::transport(TransportFault::BodyTooLarge, "x"), 413, GrpcCode::InvalidArgument, "SignetInvalidRequest", true),
            (SignError::transport(TransportFault::BodyTooSlow, "x"), 408, GrpcCode::InvalidArgument, "SignetInvalidRequest", true),
            (SignError::transport(TransportFault::UnsupportedMediaType, "x"), 415, GrpcCode::InvalidArgument, "SignetInvalidRequest", true),
            (SignError::transport(TransportFault::NotFound, "x"), 404, GrpcCode::InvalidArgument, "SignetInvalidRequest", true),
            (SignError::transport(TransportFault::MethodNotAllowed, "x"), 405, GrpcCode::InvalidArgument, "SignetInvalidRequest", true),
            (SignError::Unauthenticated("x".into()), 401, GrpcCode::Unauthenticated, "SignetSigningFailed", false),
            (SignError::PolicyDenied(PolicyError::CaRequested), 403, GrpcCode::PermissionDenied, "SignetPolicyDenied", false),
            (ttl(60, 300), 403, GrpcCode::InvalidArgument, "SignetPolicyDenied", false),
            (SignError::RateLimited { retry_after: None }, 429, GrpcCode::ResourceExhausted, "SignetSigningFailed", false),
            (SignError::Overloaded { retry_after: None }, 503, GrpcCode::Unavailable, "SignetSigningFailed", false),
            (SignError::Timeout, 503, GrpcCode::DeadlineExceeded, "SignetSigningFailed", false),
            (SignError::BackendUnavailable("x".into()), 503, GrpcCode::Unavailable, "SignetSigningFailed", false),
            (SignError::NotReady("x".into()), 503, GrpcCode::Unavailable, "SignetSigningFailed", false),
            (SignError::BackendRejected("x".into()), 502, GrpcCode::Internal, "SignetSigningFailed", false),
            (SignError::Internal("x".into()), 500, GrpcCode::Internal, "SignetSigningFailed", false),
        ];
        for (e, http, grpc, csr, at_fault) in rows {
            let w = e.wire();
            assert_eq!(
                (
                    w.http_status,
                    w.grpc,
                    w.csr_failed_reason,
                    w.request_at_fault
                ),
                (http, grpc, csr, at_fault),
                "{e:?}"
            );
        }
        assert_eq!(
            SignError::transport(TransportFault::BodyTooLarge, "x").reason(),
            Some("body_too_large")
        );
    }

    #[test]
    fn pod_certificate_requests_are_denied_with_the_apis_reasons() {
        use crate::crypto::KeyError;
        let rows: Vec<(SignError, (&str, &str))> = vec![
            (
                CsrError::Key(KeyError::UnsupportedCurve("P-521".into())).into(),
                ("Denied", "UnsupportedKeyType"),
            ),
            (
                CsrError::Key(KeyError::RsaTooSmall { bits: 1024 }).into(),
                ("Denied", "UnsupportedKeyType"),
            ),
            (
                CsrError::TooLarge.into(),
                ("Denied", "SignetInvalidRequest"),
            ),
            (
                SignError::invalid_request("unverified_user_annotations", "x"),
                ("Denied", "InvalidUnverifiedUserAnnotations"),
            ),
            (
                SignError::PolicyDenied(PolicyError::CaRequested),
                ("Denied", "SignetPolicyDenied"),
            ),
            (
                SignError::Unauthenticated("pod UID differs".into()),
                ("Denied", "SignetPodMismatch"),
            ),
            (
                SignError::BackendRejected("x".into()),
                ("Failed", "SignetSigningFailed"),
            ),
        ];
        for (e, want) in rows {
            assert_eq!(e.wire().pod_certificate, want, "{e:?}");
        }
    }
}
