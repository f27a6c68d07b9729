//! Who is asking: an authenticated principal and how it proved itself.

use std::fmt;

/// How a caller authenticated.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum AuthMethod {
    /// A client certificate verified against the configured client CA.
    ClientCertificate,
    /// A bearer token from the tokens file.
    BearerToken,
    /// Unauthenticated on a loopback-only listener (development).
    Loopback,
    /// A Kubernetes service-account token, reviewed by the API server of `cluster`.
    KubernetesToken { cluster: String },
    /// A JWT verified offline against the issuer's JWKS.
    Jwt { issuer: String },
    /// signet itself (its own serving certificates).
    Internal,
}

impl AuthMethod {
    pub fn as_str(&self) -> &'static str {
        match self {
            AuthMethod::ClientCertificate => "client_certificate",
            AuthMethod::BearerToken => "bearer_token",
            AuthMethod::Loopback => "loopback",
            AuthMethod::KubernetesToken { .. } => "kubernetes_token",
            AuthMethod::Jwt { .. } => "jwt",
            AuthMethod::Internal => "internal",
        }
    }
}

/// An authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    principal: String,
    method: AuthMethod,
}

impl Caller {
    pub fn new(principal: impl Into<String>, method: AuthMethod) -> Self {
        Self {
            principal: principal.into(),
            method,
        }
    }

    /// signet acting for itself.
    pub fn internal(what: &str) -> Self {
        Self::new(format!("signet:{what}"), AuthMethod::Internal)
    }

    pub fn principal(&self) -> &str {
        &self.principal
    }

    pub fn method(&self) -> &AuthMethod {
        &self.method
    }
}

impl fmt::Display for Caller {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.principal, self.method.as_str())
    }
}

/// What a connection says about its peer, attached to each request by the
/// listener: the address, and the principal of a verified client certificate
/// (its URI SAN, else its first DNS SAN; an error when it has neither).
#[derive(Debug, Clone)]
pub struct PeerInfo {
    pub addr: std::net::SocketAddr,
    pub client_principal: Option<Result<String, String>>,
}
