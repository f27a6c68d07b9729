//! Who a caller is once authenticated: a Kubernetes service account in a
//! cluster (from a token), or a workload renewing with a certificate issued
//! for renewal (see [`signet_core::renewal`]).

use std::fmt;
use std::time::Duration;

use signet_core::spiffe::{SpiffeId, SpiffeIdError, TrustDomain};

/// A pod the token was bound to (projected tokens carry it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodRef {
    pub name: String,
    pub uid: Option<String>,
}

/// An authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Identity {
    /// A service account, from a token.
    ServiceAccount {
        cluster: String,
        namespace: String,
        name: String,
        pod: Option<PodRef>,
        /// How it was proven: `jwt:<issuer>` or `token_review`.
        method: String,
    },
    /// A workload renewing by mTLS: the SPIFFE ID of its certificate, and
    /// that certificate's lifetime (a renewal is never longer).
    Renewal { id: SpiffeId, lifetime: Duration },
}

impl Identity {
    /// The SPIFFE ID the caller may have a certificate for.
    pub fn spiffe_id(&self, td: &TrustDomain) -> Result<SpiffeId, SpiffeIdError> {
        match self {
            Identity::ServiceAccount {
                namespace, name, ..
            } => td.service_account_id(namespace, name),
            Identity::Renewal { id, .. } => Ok(id.clone()),
        }
    }

    /// `(namespace, service account)`, when the identity has that shape.
    pub fn namespace_and_account(&self) -> Option<(String, String)> {
        match self {
            Identity::ServiceAccount {
                namespace, name, ..
            } => Some((namespace.clone(), name.clone())),
            Identity::Renewal { id, .. } => spiffe_account(id),
        }
    }

    pub fn cluster(&self) -> Option<&str> {
        match self {
            Identity::ServiceAccount { cluster, .. } => Some(cluster),
            Identity::Renewal { .. } => None,
        }
    }
}

/// `(namespace, service account)` of an ID of exactly the mesh shape.
pub fn spiffe_account(id: &SpiffeId) -> Option<(String, String)> {
    match id.mesh_identity() {
        Ok(Some((ns, sa))) => Some((ns.to_owned(), sa.to_owned())),
        _ => None,
    }
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Identity::ServiceAccount {
                cluster,
                namespace,
                name,
                ..
            } => {
                write!(f, "system:serviceaccount:{namespace}:{name}@{cluster}")
            }
            Identity::Renewal { id, .. } => write!(f, "{id}"),
        }
    }
}

/// Parses `system:serviceaccount:<ns>:<sa>` (its shape only: the names are
/// checked by [`signet_core::spiffe::check_service_account`]).
pub fn parse_service_account_username(username: &str) -> Option<(String, String)> {
    let rest = username.strip_prefix("system:serviceaccount:")?;
    let (ns, sa) = rest.split_once(':')?;
    if ns.is_empty() || sa.is_empty() || sa.contains(':') {
        return None;
    }
    Some((ns.to_owned(), sa.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usernames() {
        assert_eq!(
            parse_service_account_username("system:serviceaccount:default:demo"),
            Some(("default".into(), "demo".into()))
        );
        for bad in [
            "system:serviceaccount:default",
            "system:serviceaccount::x",
            "system:node:n1",
            "system:serviceaccount:a:b:c",
            "admin",
        ] {
            assert_eq!(parse_service_account_username(bad), None, "{bad}");
        }
    }

    #[test]
    fn spiffe_identities_map_to_accounts() {
        let renewal = |s: &str| Identity::Renewal {
            id: s.parse().unwrap(),
            lifetime: Duration::from_secs(3600),
        };
        let id = renewal("spiffe://cluster.local/ns/istio-system/sa/ztunnel");
        assert_eq!(
            id.namespace_and_account(),
            Some(("istio-system".into(), "ztunnel".into()))
        );
        for odd in [
            "spiffe://cluster.local/custom/path",
            "spiffe://cluster.local/ns/a/sa/b/ns/kube-system/sa/c",
            "spiffe://cluster.local/ns/A/sa/b",
        ] {
            assert_eq!(renewal(odd).namespace_and_account(), None, "{odd}");
        }
    }
}
