//! Who a caller is once authenticated: a Kubernetes service account in a
//! cluster (from a token), or a SPIFFE ID (from a client certificate).

use std::fmt;

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
    /// A SPIFFE ID, from a verified client certificate.
    Spiffe(SpiffeId),
}

impl Identity {
    /// The SPIFFE ID the caller may have a certificate for.
    pub fn spiffe_id(&self, td: &TrustDomain) -> Result<SpiffeId, SpiffeIdError> {
        match self {
            Identity::ServiceAccount {
                namespace, name, ..
            } => td.service_account_id(namespace, name),
            Identity::Spiffe(id) => Ok(id.clone()),
        }
    }

    /// `(namespace, service account)`, when the identity has that shape.
    pub fn namespace_and_account(&self) -> Option<(String, String)> {
        match self {
            Identity::ServiceAccount {
                namespace, name, ..
            } => Some((namespace.clone(), name.clone())),
            Identity::Spiffe(id) => {
                let s: Vec<&str> = id.segments().collect();
                match s.as_slice() {
                    ["ns", ns, "sa", sa] => Some(((*ns).to_owned(), (*sa).to_owned())),
                    _ => None,
                }
            }
        }
    }

    pub fn cluster(&self) -> Option<&str> {
        match self {
            Identity::ServiceAccount { cluster, .. } => Some(cluster),
            Identity::Spiffe(_) => None,
        }
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
            Identity::Spiffe(id) => write!(f, "{id}"),
        }
    }
}

/// Parses `system:serviceaccount:<ns>:<sa>`.
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
        let id = Identity::Spiffe(
            "spiffe://cluster.local/ns/istio-system/sa/ztunnel"
                .parse()
                .unwrap(),
        );
        assert_eq!(
            id.namespace_and_account(),
            Some(("istio-system".into(), "ztunnel".into()))
        );
        let odd = Identity::Spiffe("spiffe://cluster.local/custom/path".parse().unwrap());
        assert_eq!(odd.namespace_and_account(), None);
    }
}
