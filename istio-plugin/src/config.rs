//! `frontends.istio` in the configuration file.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;

use serde::Deserialize;
use signet_core::duration::HumanDuration;

fn default_audiences() -> Vec<String> {
    vec!["istio-ca".to_owned()]
}
fn default_true() -> bool {
    true
}
fn default_cache_ttl() -> HumanDuration {
    HumanDuration::from_secs(60)
}
fn default_jwks_refresh() -> HumanDuration {
    HumanDuration::from_secs(300)
}
fn default_leeway() -> HumanDuration {
    HumanDuration::from_secs(60)
}
fn default_namespace() -> String {
    std::env::var("POD_NAMESPACE").unwrap_or_else(|_| "signet".to_owned())
}

/// The Istio CA gRPC front-end.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IstioConfig {
    /// Listen address, e.g. `0.0.0.0:15012`.
    pub listen: SocketAddr,
    /// Name of an entry under `authorities`: the default route.
    pub authority: String,
    /// Other authorities, by namespace, service account, trust domain or
    /// `CertSigner` (first match wins; no match: `authority`).
    #[serde(default)]
    pub routes: Vec<signet_core::routing::RouteConfig>,
    /// Namespace signet runs in (for the default server name
    /// `signet.<namespace>.svc`); default `$POD_NAMESPACE`, else `signet`.
    #[serde(default = "default_namespace")]
    pub namespace: String,
    /// DNS names of the serving certificate; default
    /// `istiod.istio-system.svc` and `signet.<namespace>.svc`.
    #[serde(default)]
    pub server_names: Option<Vec<String>>,
    #[serde(default)]
    pub auth: IstioAuthConfig,
    /// ztunnel's node proxies asking for other identities.
    #[serde(default)]
    pub impersonation: Option<ImpersonationConfig>,
    #[serde(default)]
    pub limits: IstioLimits,
}

impl IstioConfig {
    pub fn server_names(&self) -> Vec<String> {
        self.server_names.clone().unwrap_or_else(|| {
            vec![
                "istiod.istio-system.svc".to_owned(),
                format!("signet.{}.svc", self.namespace),
            ]
        })
    }
}

/// How callers authenticate, tried in this order: client certificate,
/// offline JWT (when the token's issuer is configured), TokenReview.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IstioAuthConfig {
    /// Accept client certificates whose SPIFFE ID chains to the authority's
    /// trust bundle (a workload renewing with its live certificate).
    #[serde(default = "default_true")]
    pub mtls: bool,
    #[serde(default)]
    pub token_review: Option<TokenReviewConfig>,
    #[serde(default)]
    pub jwt: Vec<JwtIssuerConfig>,
}

impl Default for IstioAuthConfig {
    fn default() -> Self {
        Self {
            mtls: true,
            token_review: None,
            jwt: Vec::new(),
        }
    }
}

/// Kubernetes service-account tokens checked by TokenReview.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenReviewConfig {
    /// Cluster ID (the `clusterid` header; istio-agent sends `Kubernetes`
    /// by default) → how to reach its API server.
    pub clusters: BTreeMap<String, ClusterConfig>,
    #[serde(default = "default_audiences")]
    pub audiences: Vec<String>,
    /// How long a positive review is reused (never past the token's `exp`).
    #[serde(default = "default_cache_ttl")]
    pub cache_ttl: HumanDuration,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    /// A kubeconfig file; absent means the in-cluster service account.
    #[serde(default)]
    pub kubeconfig: Option<PathBuf>,
    /// The kubeconfig context to use; default its current context.
    #[serde(default)]
    pub context: Option<String>,
}

/// JWTs verified offline against an issuer's keys.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JwtIssuerConfig {
    /// The `iss` claim.
    pub issuer: String,
    /// The cluster ID these tokens belong to.
    pub cluster: String,
    /// A JWKS document on disk (re-read every `jwks_refresh`) ...
    #[serde(default)]
    pub jwks_file: Option<PathBuf>,
    /// ... or at an HTTPS URL (cached, refreshed every `jwks_refresh` and
    /// when a token names an unknown key).
    #[serde(default)]
    pub jwks_url: Option<String>,
    #[serde(default = "default_audiences")]
    pub audiences: Vec<String>,
    #[serde(default = "default_jwks_refresh")]
    pub jwks_refresh: HumanDuration,
    /// Clock-skew allowance for `exp` and `nbf`.
    #[serde(default = "default_leeway")]
    pub leeway: HumanDuration,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImpersonationConfig {
    /// `namespace/serviceaccount` of node proxies (ztunnel) allowed to ask
    /// for the identities of pods on their node, e.g. `istio-system/ztunnel`.
    pub trusted_node_accounts: Vec<String>,
}

fn default_max_concurrent() -> usize {
    1024
}
fn default_request_timeout() -> HumanDuration {
    HumanDuration::from_secs(10)
}
fn default_max_message() -> usize {
    64 * 1024
}
fn default_shutdown_grace() -> HumanDuration {
    HumanDuration::from_secs(25)
}
fn default_handshake_timeout() -> HumanDuration {
    HumanDuration::from_secs(10)
}
fn default_max_connections() -> usize {
    20_000
}
fn default_idle_timeout() -> HumanDuration {
    HumanDuration::from_secs(300)
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IstioLimits {
    /// Requests in flight; beyond it new ones get UNAVAILABLE at once (istio-agent retries).
    #[serde(default = "default_max_concurrent")]
    pub max_concurrent_requests: usize,
    #[serde(default = "default_request_timeout")]
    pub request_timeout: HumanDuration,
    #[serde(default = "default_max_message")]
    pub max_message_bytes: usize,
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    #[serde(default = "default_handshake_timeout")]
    pub handshake_timeout: HumanDuration,
    #[serde(default = "default_shutdown_grace")]
    pub shutdown_grace: HumanDuration,
    /// A connection with no request in flight for this long is closed
    /// (agents reconnect for their next renewal).
    #[serde(default = "default_idle_timeout")]
    pub idle_timeout: HumanDuration,
}

impl Default for IstioLimits {
    fn default() -> Self {
        Self {
            max_concurrent_requests: default_max_concurrent(),
            request_timeout: default_request_timeout(),
            max_message_bytes: default_max_message(),
            max_connections: default_max_connections(),
            handshake_timeout: default_handshake_timeout(),
            shutdown_grace: default_shutdown_grace(),
            idle_timeout: default_idle_timeout(),
        }
    }
}

impl IstioConfig {
    /// Checks what types cannot; returns (key, message) on failure.
    pub fn validate(&self) -> Result<(), (String, String)> {
        let e = |k: &str, m: String| Err((format!("frontends.istio.{k}"), m));
        if !self.auth.mtls && self.auth.token_review.is_none() && self.auth.jwt.is_empty() {
            return e(
                "auth",
                "no way to authenticate: enable mtls, token_review or jwt".into(),
            );
        }
        for (i, j) in self.auth.jwt.iter().enumerate() {
            if j.jwks_file.is_some() == j.jwks_url.is_some() {
                return e(
                    &format!("auth.jwt[{i}]"),
                    "needs exactly one of jwks_file and jwks_url".into(),
                );
            }
            if let Some(url) = &j.jwks_url
                && !url.starts_with("https://")
                && !url.starts_with("http://127.0.0.1")
                && !url.starts_with("http://localhost")
            {
                return e(
                    &format!("auth.jwt[{i}].jwks_url"),
                    "must be https (plain http only on loopback)".into(),
                );
            }
            if j.audiences.is_empty() {
                return e(
                    &format!("auth.jwt[{i}].audiences"),
                    "at least one audience is required".into(),
                );
            }
        }
        if let Some(tr) = &self.auth.token_review {
            if tr.clusters.is_empty() {
                return e(
                    "auth.token_review.clusters",
                    "at least one cluster is required".into(),
                );
            }
            if tr.audiences.is_empty() {
                return e(
                    "auth.token_review.audiences",
                    "at least one audience is required".into(),
                );
            }
        }
        if let Some(imp) = &self.impersonation {
            for (i, a) in imp.trusted_node_accounts.iter().enumerate() {
                if a.split_once('/')
                    .is_none_or(|(ns, sa)| ns.is_empty() || sa.is_empty() || sa.contains('/'))
                {
                    return e(
                        &format!("impersonation.trusted_node_accounts[{i}]"),
                        format!("{a:?} is not namespace/serviceaccount"),
                    );
                }
            }
            if self.auth.token_review.is_none() {
                return e("impersonation", "pod lookups need auth.token_review clusters (their kubeconfigs reach the API servers)".into());
            }
        }
        if self.limits.max_concurrent_requests == 0 || self.limits.max_message_bytes < 1024 {
            return e(
                "limits",
                "limits must be positive (max_message_bytes at least 1024)".into(),
            );
        }
        Ok(())
    }
}
