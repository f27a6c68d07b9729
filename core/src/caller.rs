//! Who is asking: an authenticated principal and how it proved itself.
//!
//! Principals are typed by the credential that proved them. A bearer token
//! named `ci` is `token:ci`; a client certificate whose URI SAN is
//! `spiffe://td/x` is `uri:spiffe://td/x`, one with only DNS SANs is
//! `dns:<first DNS SAN>`; a credential-less caller on loopback is
//! `anonymous`. No credential of one type can ever act as a principal of
//! another (a client certificate for `DNS:ci` is `dns:ci`, never `token:ci`).

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

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

/// A principal, typed by how it authenticated.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Principal {
    /// A bearer token's name in the tokens file: `token:<name>`.
    Token(String),
    /// A verified client certificate's URI SAN: `uri:<uri>`.
    CertificateUri(String),
    /// A verified client certificate with no URI SAN, by its first DNS SAN:
    /// `dns:<name>`.
    CertificateDns(String),
    /// No credentials, on a loopback-only listener: `anonymous`.
    Anonymous,
    /// A workload identity proven to the Istio front-end (token or renewal
    /// certificate), shown as its SPIFFE ID.
    Workload(String),
    /// A Kubernetes user who filed the request (CSR, CertificateRequest),
    /// shown as its username.
    Kubernetes(String),
    /// signet itself: `signet:<purpose>`.
    Internal(String),
}

impl fmt::Display for Principal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Principal::Token(n) => write!(f, "token:{n}"),
            Principal::CertificateUri(u) => write!(f, "uri:{u}"),
            Principal::CertificateDns(d) => write!(f, "dns:{d}"),
            Principal::Anonymous => f.write_str("anonymous"),
            Principal::Workload(w) => f.write_str(w),
            Principal::Kubernetes(u) => f.write_str(u),
            Principal::Internal(p) => write!(f, "signet:{p}"),
        }
    }
}

/// Who a grant is for, as the configuration names it: one principal of a
/// REST credential type, every principal of one type (`token:*`, `uri:*`,
/// `dns:*`), or everyone without an entry of their own (`*`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PrincipalSelector {
    Exact(Principal),
    AnyToken,
    AnyCertificateUri,
    AnyCertificateDns,
    Anyone,
}

impl PrincipalSelector {
    /// The type-wide selector a principal falls back to, if any.
    pub fn kind_of(p: &Principal) -> Option<Self> {
        match p {
            Principal::Token(_) => Some(PrincipalSelector::AnyToken),
            Principal::CertificateUri(_) => Some(PrincipalSelector::AnyCertificateUri),
            Principal::CertificateDns(_) => Some(PrincipalSelector::AnyCertificateDns),
            _ => None,
        }
    }
}

impl FromStr for PrincipalSelector {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let nonempty = |v: &str, what: &str| {
            if v.is_empty() || v.chars().any(char::is_control) {
                Err(format!("{what} principal {s:?} has no name"))
            } else {
                Ok(v.to_owned())
            }
        };
        match s {
            "*" => return Ok(PrincipalSelector::Anyone),
            "anonymous" => return Ok(PrincipalSelector::Exact(Principal::Anonymous)),
            "token:*" => return Ok(PrincipalSelector::AnyToken),
            "uri:*" => return Ok(PrincipalSelector::AnyCertificateUri),
            "dns:*" => return Ok(PrincipalSelector::AnyCertificateDns),
            _ => {}
        }
        if let Some(n) = s.strip_prefix("token:") {
            return Ok(PrincipalSelector::Exact(Principal::Token(nonempty(
                n, "token",
            )?)));
        }
        if let Some(u) = s.strip_prefix("uri:") {
            return Ok(PrincipalSelector::Exact(Principal::CertificateUri(
                nonempty(u, "uri")?,
            )));
        }
        if let Some(d) = s.strip_prefix("dns:") {
            return Ok(PrincipalSelector::Exact(Principal::CertificateDns(
                nonempty(d, "dns")?.to_ascii_lowercase(),
            )));
        }
        Err(format!(
            "principal {:?} does not say how it authenticates: write token:<name> (a bearer token), \
             uri:<URI SAN> or dns:<DNS SAN> (a client certificate), anonymous, or * (with token:*, uri:*, dns:* per type)",
            s.chars().take(80).collect::<String>()
        ))
    }
}

impl fmt::Display for PrincipalSelector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PrincipalSelector::Exact(p) => p.fmt(f),
            PrincipalSelector::AnyToken => f.write_str("token:*"),
            PrincipalSelector::AnyCertificateUri => f.write_str("uri:*"),
            PrincipalSelector::AnyCertificateDns => f.write_str("dns:*"),
            PrincipalSelector::Anyone => f.write_str("*"),
        }
    }
}

impl<'de> serde::Deserialize<'de> for PrincipalSelector {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// An authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    principal: Principal,
    method: AuthMethod,
    /// The route the request took, when its front-end has routes.
    route: Option<String>,
}

impl Caller {
    pub fn new(principal: Principal, method: AuthMethod) -> Self {
        Self {
            principal,
            method,
            route: None,
        }
    }

    /// The same caller, on the named route (audit lines name it).
    pub fn on_route(mut self, route: impl Into<String>) -> Self {
        self.route = Some(route.into());
        self
    }

    /// The route the request took (`None`: the front-end has no routes).
    pub fn route(&self) -> Option<&str> {
        self.route.as_deref()
    }

    /// signet acting for itself.
    pub fn internal(what: &str) -> Self {
        Self::new(Principal::Internal(what.to_owned()), AuthMethod::Internal)
    }

    pub fn principal(&self) -> &Principal {
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
/// listener: the address, and the DER of a client certificate the TLS
/// handshake verified (each front-end decides what it may be used for).
#[derive(Debug, Clone)]
pub struct PeerInfo {
    pub addr: std::net::SocketAddr,
    /// The verified client certificate (the leaf).
    pub client_cert: Option<Arc<[u8]>>,
    /// Every certificate the client presented, leaf first: a routed
    /// front-end verifies the chain again against the roots of the one
    /// authority the identity routes to.
    pub client_chain: Option<Arc<[Vec<u8>]>>,
}

/// The principal a verified client certificate names: its URI SAN, else its
/// first DNS SAN, typed accordingly.
pub fn certificate_principal(der: &[u8]) -> Result<Principal, String> {
    use x509_parser::extensions::GeneralName;
    use x509_parser::prelude::FromDer as _;
    let (_, cert) =
        x509_parser::certificate::X509Certificate::from_der(der).map_err(|e| e.to_string())?;
    let sans = cert
        .subject_alternative_name()
        .map_err(|e| e.to_string())?
        .map(|e| e.value.general_names.clone())
        .unwrap_or_default();
    let uris: Vec<&str> = sans
        .iter()
        .filter_map(|n| match n {
            GeneralName::URI(u) => Some(*u),
            _ => None,
        })
        .collect();
    match uris.as_slice() {
        [one] => return Ok(Principal::CertificateUri((*one).to_owned())),
        [] => {}
        _ => return Err("client certificate has more than one URI subjectAltName".to_owned()),
    }
    sans.iter()
        .find_map(|n| match n {
            GeneralName::DNSName(d) => Some(Principal::CertificateDns(d.to_ascii_lowercase())),
            _ => None,
        })
        .ok_or_else(|| "client certificate has no URI or DNS subjectAltName".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selectors_are_typed() {
        let p = |s: &str| s.parse::<PrincipalSelector>();
        assert_eq!(
            p("token:ci"),
            Ok(PrincipalSelector::Exact(Principal::Token("ci".into())))
        );
        assert_eq!(
            p("dns:CI.example"),
            Ok(PrincipalSelector::Exact(Principal::CertificateDns(
                "ci.example".into()
            )))
        );
        assert_eq!(
            p("uri:spiffe://td/x"),
            Ok(PrincipalSelector::Exact(Principal::CertificateUri(
                "spiffe://td/x".into()
            )))
        );
        assert_eq!(
            p("anonymous"),
            Ok(PrincipalSelector::Exact(Principal::Anonymous))
        );
        assert_eq!(p("*"), Ok(PrincipalSelector::Anyone));
        assert_eq!(p("dns:*"), Ok(PrincipalSelector::AnyCertificateDns));
        for bad in [
            "ci",
            "token:",
            "uri:",
            "dns:",
            "Anonymous",
            "spiffe://td/x",
            "",
        ] {
            assert!(p(bad).is_err(), "{bad:?} accepted");
        }
        // The same name under two types is two principals.
        assert_ne!(
            Principal::Token("ci".into()),
            Principal::CertificateDns("ci".into())
        );
        assert_eq!(Principal::CertificateDns("ci".into()).to_string(), "dns:ci");
        assert_eq!(Principal::Token("ci".into()).to_string(), "token:ci");
    }
}
