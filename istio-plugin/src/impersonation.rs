//! ztunnel's node proxy asks for certificates of the pods on its node
//! (`ImpersonatedIdentity`). Allowed only for configured node accounts, and
//! only when the caller's pod runs on a node where a pod with the requested
//! service account also runs — checked against the Kubernetes API.

use std::collections::HashSet;

use async_trait::async_trait;

use crate::config::ImpersonationConfig;
use crate::identity::Identity;

/// Pod lookups the check needs.
#[async_trait]
pub trait PodDirectory: Send + Sync + std::fmt::Debug {
    /// The node a pod runs on (`None`: no such pod, or not scheduled).
    async fn node_of(
        &self,
        cluster: &str,
        namespace: &str,
        pod: &str,
    ) -> Result<Option<String>, String>;
    /// Whether a pod of `namespace`/`service_account` runs on `node`.
    async fn account_on_node(
        &self,
        cluster: &str,
        namespace: &str,
        service_account: &str,
        node: &str,
    ) -> Result<bool, String>;
}

/// Why impersonation was refused.
#[derive(Debug, thiserror::Error)]
pub enum ImpersonationError {
    #[error("caller is not a trusted node account")]
    NotTrusted,
    #[error("caller's token names no pod")]
    NoCallerPod,
    #[error("caller's pod was not found")]
    CallerPodMissing,
    #[error("no pod with that service account runs on the caller's node")]
    NotOnNode,
    #[error("impersonated identity is not a service account SPIFFE ID in this trust domain")]
    BadTarget,
    #[error("pod lookup failed: {0}")]
    Lookup(String),
}

#[derive(Debug)]
pub struct Impersonation {
    trusted: HashSet<(String, String)>,
    pods: Box<dyn PodDirectory>,
}

impl Impersonation {
    pub fn new(config: &ImpersonationConfig, pods: Box<dyn PodDirectory>) -> Self {
        let trusted = config
            .trusted_node_accounts
            .iter()
            .filter_map(|a| a.split_once('/').map(|(n, s)| (n.to_owned(), s.to_owned())))
            .collect();
        Self { trusted, pods }
    }

    /// Checks that `caller` may act for `target` (`namespace`, `service account`).
    pub async fn check(
        &self,
        caller: &Identity,
        target: &(String, String),
    ) -> Result<(), ImpersonationError> {
        let Identity::ServiceAccount {
            cluster,
            namespace,
            name,
            pod,
            ..
        } = caller
        else {
            return Err(ImpersonationError::NotTrusted);
        };
        if !self.trusted.contains(&(namespace.clone(), name.clone())) {
            return Err(ImpersonationError::NotTrusted);
        }
        let pod = pod.as_ref().ok_or(ImpersonationError::NoCallerPod)?;
        let node = self
            .pods
            .node_of(cluster, namespace, &pod.name)
            .await
            .map_err(ImpersonationError::Lookup)?
            .ok_or(ImpersonationError::CallerPodMissing)?;
        let present = self
            .pods
            .account_on_node(cluster, &target.0, &target.1, &node)
            .await
            .map_err(ImpersonationError::Lookup)?;
        if present {
            Ok(())
        } else {
            Err(ImpersonationError::NotOnNode)
        }
    }
}

/// How long a positive pod look-up is reused: a node proxy renews a burst of
/// identities at once (a node restart), and each would otherwise cost the API
/// server a GET and a LIST. Negative answers are never cached (a new pod must
/// be served at once); a pod that left is still believed for at most this.
#[cfg(feature = "kube")]
const POD_CACHE_TTL: std::time::Duration = std::time::Duration::from_secs(15);
#[cfg(feature = "kube")]
const POD_CACHE_MAX: usize = 10_000;

/// Positive answers, by key, until an instant.
#[cfg(feature = "kube")]
#[derive(Debug, Default)]
struct PodCache {
    nodes: std::collections::HashMap<(String, String, String), (String, tokio::time::Instant)>,
    present: std::collections::HashMap<(String, String, String, String), tokio::time::Instant>,
}

/// Pod lookups through the clusters' API servers, positive answers cached
/// for [`POD_CACHE_TTL`].
#[cfg(feature = "kube")]
#[derive(Debug)]
pub struct KubePods {
    clusters: crate::auth::token_review::Clusters,
    cache: std::sync::Mutex<PodCache>,
}

#[cfg(feature = "kube")]
impl KubePods {
    pub fn new(clusters: crate::auth::token_review::Clusters) -> Self {
        Self {
            clusters,
            cache: std::sync::Mutex::new(PodCache::default()),
        }
    }

    fn cache(&self) -> std::sync::MutexGuard<'_, PodCache> {
        let mut c = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        if c.nodes.len() + c.present.len() > POD_CACHE_MAX {
            let now = signet_core::clock::monotonic();
            c.nodes.retain(|_, (_, until)| *until > now);
            c.present.retain(|_, until| *until > now);
            if c.nodes.len() + c.present.len() > POD_CACHE_MAX {
                *c = PodCache::default();
            }
        }
        c
    }

    fn api(
        &self,
        cluster: &str,
        ns: &str,
    ) -> Result<kube::Api<k8s_openapi::api::core::v1::Pod>, String> {
        let client = self
            .clusters
            .get(cluster)
            .ok_or_else(|| format!("cluster {cluster:?} is not configured"))?;
        Ok(kube::Api::namespaced(client.clone(), ns))
    }
}

#[cfg(feature = "kube")]
#[async_trait]
impl PodDirectory for KubePods {
    async fn node_of(
        &self,
        cluster: &str,
        namespace: &str,
        pod: &str,
    ) -> Result<Option<String>, String> {
        let key = (cluster.to_owned(), namespace.to_owned(), pod.to_owned());
        let now = signet_core::clock::monotonic();
        if let Some((node, until)) = self.cache().nodes.get(&key)
            && *until > now
        {
            return Ok(Some(node.clone()));
        }
        let p = self
            .api(cluster, namespace)?
            .get_opt(pod)
            .await
            .map_err(|e| e.to_string())?;
        let node = p.and_then(|p| p.spec).and_then(|s| s.node_name);
        if let Some(n) = &node {
            self.cache()
                .nodes
                .insert(key, (n.clone(), now + POD_CACHE_TTL));
        }
        Ok(node)
    }

    async fn account_on_node(
        &self,
        cluster: &str,
        namespace: &str,
        service_account: &str,
        node: &str,
    ) -> Result<bool, String> {
        let key = (
            cluster.to_owned(),
            namespace.to_owned(),
            service_account.to_owned(),
            node.to_owned(),
        );
        let now = signet_core::clock::monotonic();
        if self.cache().present.get(&key).is_some_and(|u| *u > now) {
            return Ok(true);
        }
        let lp = kube::api::ListParams::default().fields(&format!("spec.nodeName={node}"));
        let pods = self
            .api(cluster, namespace)?
            .list(&lp)
            .await
            .map_err(|e| e.to_string())?;
        let present = pods.items.iter().any(|p| {
            let spec = p.spec.as_ref();
            spec.and_then(|s| s.node_name.as_deref()) == Some(node)
                && spec
                    .and_then(|s| s.service_account_name.as_deref())
                    .unwrap_or("default")
                    == service_account
        });
        if present {
            self.cache().present.insert(key, now + POD_CACHE_TTL);
        }
        Ok(present)
    }
}
