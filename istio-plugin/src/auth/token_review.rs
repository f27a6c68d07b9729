//! Kubernetes service-account tokens checked by TokenReview, per cluster.
//!
//! The `clusterid` header picks the API server (one kubeconfig per cluster
//! ID; unknown IDs are refused). Positive reviews are cached by the token's
//! SHA-256 for a short while and never past the token's own `exp`: during a
//! restart storm each pod's token is reviewed once, not once per request.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec, TokenReviewStatus};
use kube::api::PostParams;
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client};
use signet_core::Clock;
use signet_core::crypto::sha256;
use signet_core::spiffe::{check_service_account, is_dns1123_subdomain};

use super::AuthError;
use super::jwt::JwtAuthenticator;
use crate::config::{ClusterConfig, TokenReviewConfig};
use crate::identity::{Identity, PodRef, parse_service_account_username};

/// Most cached reviews kept; beyond it, expired ones are dropped, then all.
const MAX_CACHE: usize = 50_000;

/// Kubernetes clients by cluster ID.
#[derive(Clone)]
pub struct Clusters {
    clients: Arc<HashMap<String, Client>>,
}

impl std::fmt::Debug for Clusters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Clusters")
            .field("ids", &self.clients.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl Clusters {
    pub async fn connect(
        config: &std::collections::BTreeMap<String, ClusterConfig>,
    ) -> Result<Self, String> {
        let mut clients = HashMap::new();
        for (id, c) in config {
            let cfg = match &c.kubeconfig {
                Some(path) => {
                    let kc = Kubeconfig::read_from(path)
                        .map_err(|e| format!("cluster {id}: {}: {e}", path.display()))?;
                    let opts = KubeConfigOptions {
                        context: c.context.clone(),
                        ..KubeConfigOptions::default()
                    };
                    kube::Config::from_custom_kubeconfig(kc, &opts)
                        .await
                        .map_err(|e| format!("cluster {id}: {e}"))?
                }
                None => kube::Config::incluster()
                    .map_err(|e| format!("cluster {id}: in-cluster config: {e}"))?,
            };
            let client = Client::try_from(cfg).map_err(|e| format!("cluster {id}: {e}"))?;
            clients.insert(id.clone(), client);
        }
        Ok(Self {
            clients: Arc::new(clients),
        })
    }

    pub fn get(&self, id: &str) -> Option<&Client> {
        self.clients.get(id)
    }
}

#[derive(Debug, Clone)]
struct Cached {
    identity: Identity,
    until: SystemTime,
}

/// Reviews tokens with the API server of the caller's cluster.
#[derive(Debug)]
pub struct TokenReviewer {
    clusters: Clusters,
    audiences: Vec<String>,
    cache_ttl: Duration,
    cache: Mutex<HashMap<[u8; 32], Cached>>,
    clock: Arc<dyn Clock>,
}

impl TokenReviewer {
    pub fn new(clusters: Clusters, config: &TokenReviewConfig, clock: Arc<dyn Clock>) -> Self {
        Self {
            clusters,
            audiences: config.audiences.clone(),
            cache_ttl: config.cache_ttl.get(),
            cache: Mutex::new(HashMap::new()),
            clock,
        }
    }

    fn cache_key(cluster: &str, token: &str) -> [u8; 32] {
        let mut buf = Vec::with_capacity(cluster.len() + token.len() + 1);
        buf.extend_from_slice(cluster.as_bytes());
        buf.push(0);
        buf.extend_from_slice(token.as_bytes());
        sha256(&buf)
    }

    pub async fn review(&self, cluster: &str, token: &str) -> Result<Identity, AuthError> {
        let Some(client) = self.clusters.get(cluster) else {
            return Err(AuthError::invalid(
                "unknown cluster",
                format!("clusterid {cluster:?} is not configured"),
            ));
        };
        let key = Self::cache_key(cluster, token);
        let now = self.clock.now();
        if let Some(hit) = self
            .cache
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&key)
            && hit.until > now
        {
            return Ok(hit.identity.clone());
        }
        let review = TokenReview {
            spec: TokenReviewSpec {
                token: token.to_owned(),
                audiences: Some(self.audiences.clone()),
            },
            ..TokenReview::default()
        };
        let api: Api<TokenReview> = Api::all(client.clone());
        let reviewed = api
            .create(&PostParams::default(), &review)
            .await
            .map_err(|e| {
                AuthError::Unavailable(format!("TokenReview in cluster {cluster}: {e}"))
            })?;
        let identity = self.identity_of(cluster, reviewed.status.unwrap_or_default())?;
        self.remember(key, token, &identity, now);
        Ok(identity)
    }

    /// The service account a successful review names, checked: authenticated,
    /// for one of our audiences, a valid service account, and the pod the
    /// token is bound to (if any).
    fn identity_of(&self, cluster: &str, status: TokenReviewStatus) -> Result<Identity, AuthError> {
        if status.authenticated != Some(true) {
            return Err(AuthError::invalid(
                "token rejected",
                status.error.unwrap_or_else(|| "not authenticated".into()),
            ));
        }
        // An API server that checked the audiences answers with those it
        // found in the token; none at all means the token is good for the API
        // server itself, not for us (or the server ignored the audiences).
        let auds = status.audiences.unwrap_or_default();
        if !auds.iter().any(|a| self.audiences.contains(a)) {
            return Err(AuthError::invalid(
                "token has the wrong audience",
                format!("reviewed audiences {auds:?}"),
            ));
        }
        let user = status.user.unwrap_or_default();
        let username = user.username.unwrap_or_default();
        let (namespace, name) = parse_service_account_username(&username).ok_or_else(|| {
            AuthError::invalid("token is not a service account's", username.clone())
        })?;
        check_service_account(&namespace, &name)
            .map_err(|e| AuthError::invalid("token names an invalid service account", e))?;
        if !user
            .groups
            .unwrap_or_default()
            .iter()
            .any(|g| g == "system:serviceaccounts")
        {
            return Err(AuthError::invalid(
                "token is not a service account's",
                "group system:serviceaccounts missing",
            ));
        }
        let extra = user.extra.unwrap_or_default();
        let first = |k: &str| extra.get(k).and_then(|v| v.first()).cloned();
        let pod = first("authentication.kubernetes.io/pod-name")
            .filter(|n| is_dns1123_subdomain(n))
            .map(|name| PodRef {
                name,
                uid: first("authentication.kubernetes.io/pod-uid"),
            });
        let identity = Identity::ServiceAccount {
            cluster: cluster.to_owned(),
            namespace,
            name,
            pod,
            method: "token_review".to_owned(),
        };
        Ok(identity)
    }

    /// Caches a reviewed identity until the token expires, at most
    /// `cache_ttl` (tokens without a readable expiry are not cached).
    fn remember(&self, key: [u8; 32], token: &str, identity: &Identity, now: SystemTime) {
        // Cache only what has a known expiry, and never beyond it.
        if let Some(exp) = JwtAuthenticator::unverified_expiry(token) {
            let until = exp.min(now + self.cache_ttl);
            if until > now {
                let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
                if cache.len() >= MAX_CACHE {
                    cache.retain(|_, c| c.until > now);
                    if cache.len() >= MAX_CACHE {
                        cache.clear();
                    }
                }
                cache.insert(
                    key,
                    Cached {
                        identity: identity.clone(),
                        until,
                    },
                );
            }
        }
    }
}
