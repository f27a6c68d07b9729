//! The configuration file (`signet serve --config signet.yaml`).
//!
//! Unknown keys are refused everywhere; a parse error names the key path and
//! the line. [`Config::validate`] then checks what types cannot: references
//! between sections, listener safety, policy numbers. Secrets are never inline:
//! only `*_file` paths.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use signet_backends::BackendConfig;
use signet_backends::keys::IntermediateKey;
use signet_core::caller::{Principal, PrincipalSelector};
use signet_core::delegated::IntermediateConfig;
use signet_core::duration::HumanDuration;
use signet_core::names::SanPattern;
use signet_core::policy::{PolicyConfig, Profile};
use signet_core::spiffe::TrustDomain;

/// Why a configuration was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{file}: line {line}: `{key}`: {message}")]
    Parse {
        file: String,
        line: usize,
        key: String,
        message: String,
    },
    #[error("{file}: `{key}`: {message}")]
    Invalid {
        file: String,
        key: String,
        message: String,
    },
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The SPIFFE trust domain of the mesh (`cluster.local` for Istio's default).
    pub trust_domain: TrustDomain,
    #[serde(default)]
    pub backends: BTreeMap<String, BackendConfig>,
    #[serde(default)]
    pub authorities: BTreeMap<String, AuthorityConfig>,
    #[serde(default)]
    pub frontends: FrontendsConfig,
    /// How signet reaches its own cluster (for the Kubernetes writers).
    #[serde(default)]
    pub kubernetes: KubernetesConfig,
    /// Lease-based leader election among replicas (only the leader writes).
    #[serde(default)]
    pub leader_election: signet_kubernetes::leader::LeaderConfig,
    /// Plain-HTTP health and metrics listener for probes and scrapers.
    #[serde(default)]
    pub admin: Option<crate::admin::AdminConfig>,
    /// Root rotations (`signet trust rotate`): where they are recorded.
    #[serde(default)]
    pub trust: Option<crate::trust::TrustConfig>,
}

/// The local cluster's API server.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KubernetesConfig {
    /// A kubeconfig file; absent means the in-cluster service account.
    #[serde(default)]
    pub kubeconfig: Option<PathBuf>,
    #[serde(default)]
    pub context: Option<String>,
}

/// How an authority uses its backend.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// Every certificate is signed by the backend.
    #[default]
    Direct,
    /// signet holds an intermediate issued by the backend and signs leaves itself.
    Delegated,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthorityConfig {
    /// Name of an entry under `backends`.
    pub backend: String,
    #[serde(default)]
    pub mode: Mode,
    /// The intermediate a delegated authority holds; its `key` is an
    /// algorithm (made in memory) or a key store that makes it.
    #[serde(default)]
    pub intermediate: Option<IntermediateConfig<IntermediateKey>>,
    #[serde(default)]
    pub policy: PolicyConfig,
    /// The authority's revoked serials (`signet revoke` writes it; a missing
    /// file is an empty list). With it, `GET /v1/crl/<authority>` serves a
    /// CRL signed by the authority's issuing CA when signet holds that key.
    #[serde(default)]
    pub revocation_file: Option<PathBuf>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FrontendsConfig {
    #[serde(default)]
    pub rest: Option<RestConfig>,
    /// The Istio CA gRPC service (istio-agent's `CA_ADDR`, ztunnel's `CA_ADDRESS`).
    #[serde(default)]
    pub istio: Option<signet_istio::config::IstioConfig>,
    /// Kubernetes CSR signer (istiod's RA mode).
    #[serde(default)]
    pub kubernetes_csr: Option<signet_kubernetes::csr_signer::CsrSignerConfig>,
    /// istiod's plug-in CA Secret (`cacerts`).
    #[serde(default)]
    pub istio_cacerts: Option<signet_istio::cacerts::CacertsConfig>,
    /// `istio-ca-root-cert` ConfigMaps in every selected namespace.
    #[serde(default)]
    pub istio_root_cert: Option<signet_istio::k8s::RootDistributionConfig>,
    /// istiod's serving certificate Secret (`istiod-tls`).
    #[serde(default)]
    pub istiod_tls: Option<signet_istio::k8s::IstiodTlsConfig>,
    /// cert-manager external issuer (SignetIssuer / SignetClusterIssuer).
    #[serde(default)]
    pub cert_manager: Option<signet_cert_manager::ControllerConfig>,
    /// Authorities' roots as certificates.k8s.io ClusterTrustBundles.
    #[serde(default)]
    pub cluster_trust_bundles: Option<signet_kubernetes::trust_bundles::ClusterTrustBundlesConfig>,
    /// The PodCertificateRequest signer (pods' `podCertificate` volumes).
    #[serde(default)]
    pub pod_certificates: Option<signet_kubernetes::pod_certificates::PodCertificatesConfig>,
}

impl FrontendsConfig {
    /// The configured front-ends, by config key.
    pub fn names(&self) -> Vec<&'static str> {
        [
            ("rest", self.rest.is_some()),
            ("istio", self.istio.is_some()),
            ("kubernetes_csr", self.kubernetes_csr.is_some()),
            ("istio_cacerts", self.istio_cacerts.is_some()),
            ("istio_root_cert", self.istio_root_cert.is_some()),
            ("istiod_tls", self.istiod_tls.is_some()),
            ("cert_manager", self.cert_manager.is_some()),
            (
                "cluster_trust_bundles",
                self.cluster_trust_bundles.is_some(),
            ),
            ("pod_certificates", self.pod_certificates.is_some()),
        ]
        .into_iter()
        .filter_map(|(n, on)| on.then_some(n))
        .collect()
    }

    /// Whether anything writes to Kubernetes (and so needs leader election).
    pub fn writes_to_kubernetes(&self) -> bool {
        self.kubernetes_csr.is_some()
            || self.istio_cacerts.is_some()
            || self.istio_root_cert.is_some()
            || self.istiod_tls.is_some()
            || self.cert_manager.is_some()
            || self.cluster_trust_bundles.is_some()
            || self.pod_certificates.is_some()
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RestConfig {
    /// Address to listen on, e.g. `0.0.0.0:8443`.
    pub listen: SocketAddr,
    /// Name of an entry under `authorities`.
    pub authority: String,
    /// Extra DNS names for the serving certificate issued by the authority.
    #[serde(default)]
    pub server_names: Vec<String>,
    /// A serving certificate from files instead of one issued by the authority.
    #[serde(default)]
    pub tls: Option<TlsFiles>,
    #[serde(default)]
    pub auth: RestAuthConfig,
    /// Who may obtain what. `name: "*"` applies to principals with no entry of their own.
    #[serde(default)]
    pub principals: Vec<PrincipalConfig>,
    #[serde(default)]
    pub limits: RestLimits,
    /// How soon consumers of `GET /v1/spiffe-bundle` (SPIRE federation,
    /// istiod's `spiffeBundleUrl`) should fetch it again.
    #[serde(default = "default_spiffe_refresh_hint")]
    pub spiffe_refresh_hint: HumanDuration,
}

pub fn default_spiffe_refresh_hint() -> HumanDuration {
    HumanDuration::from_secs(300)
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsFiles {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RestAuthConfig {
    /// Accept client certificates issued by these CAs; principal = URI SAN, else DNS SAN.
    #[serde(default)]
    pub mtls: Option<MtlsConfig>,
    /// YAML file of bearer tokens, stored as SHA-256 hashes.
    #[serde(default)]
    pub tokens_file: Option<PathBuf>,
    /// Callers with no credentials are principal `anonymous`. Only allowed
    /// when `listen` is a loopback address.
    #[serde(default)]
    pub loopback_unauthenticated: bool,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MtlsConfig {
    pub client_ca_file: PathBuf,
}

fn all_profiles() -> Vec<Profile> {
    Profile::ALL.to_vec()
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PrincipalConfig {
    /// The typed principal (`token:<name>`, `uri:<URI SAN>`, `dns:<DNS SAN>`,
    /// `anonymous`), every principal of a type (`token:*`, `uri:*`, `dns:*`),
    /// or `*`.
    pub name: PrincipalSelector,
    /// SAN patterns: `spiffe://td/path/*`, `spiffe://td/exact`, `*.example.com`,
    /// `**.example.com`, `10.0.0.0/8`.
    pub allowed_sans: Vec<SanPattern>,
    #[serde(default)]
    pub max_ttl: Option<HumanDuration>,
    #[serde(default = "all_profiles")]
    pub profiles: Vec<Profile>,
    #[serde(default)]
    pub allow_wildcards: bool,
}

fn default_max_body() -> usize {
    64 * 1024
}
fn default_request_timeout() -> HumanDuration {
    HumanDuration::from_secs(10)
}
fn default_max_concurrent() -> usize {
    1024
}
fn default_max_connections() -> usize {
    10_000
}
fn default_handshake_timeout() -> HumanDuration {
    HumanDuration::from_secs(10)
}
fn default_shutdown_grace() -> HumanDuration {
    HumanDuration::from_secs(25)
}
fn default_idle_timeout() -> HumanDuration {
    HumanDuration::from_secs(300)
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RestLimits {
    /// Largest request body accepted (413 above it).
    #[serde(default = "default_max_body")]
    pub max_body_bytes: usize,
    /// Time to answer a signing request (503 `timeout` after it).
    #[serde(default = "default_request_timeout")]
    pub request_timeout: HumanDuration,
    /// Signing requests in flight before new ones are shed (503 `overloaded`).
    #[serde(default = "default_max_concurrent")]
    pub max_concurrent_requests: usize,
    /// Open connections before new ones are refused.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// Time for a client to finish the TLS handshake, and to send request headers.
    #[serde(default = "default_handshake_timeout")]
    pub handshake_timeout: HumanDuration,
    /// Time in-flight requests get to finish after SIGTERM.
    #[serde(default = "default_shutdown_grace")]
    pub shutdown_grace: HumanDuration,
    /// A connection with no request in flight for this long is closed.
    #[serde(default = "default_idle_timeout")]
    pub idle_timeout: HumanDuration,
}

impl Default for RestLimits {
    fn default() -> Self {
        Self {
            max_body_bytes: default_max_body(),
            request_timeout: default_request_timeout(),
            max_concurrent_requests: default_max_concurrent(),
            max_connections: default_max_connections(),
            handshake_timeout: default_handshake_timeout(),
            shutdown_grace: default_shutdown_grace(),
            idle_timeout: default_idle_timeout(),
        }
    }
}

impl Config {
    /// Reads, parses and validates a configuration file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let file = path.display().to_string();
        let config = Self::parse(&text, &file)?;
        config.validate(&file)?;
        Ok(config)
    }

    /// Parses YAML; errors carry the key path and line.
    pub fn parse(text: &str, file: &str) -> Result<Self, ConfigError> {
        let de = serde_yaml_ng::Deserializer::from_str(text);
        serde_path_to_error::deserialize(de).map_err(|e| {
            let key = match e.path().to_string() {
                p if p == "." => "(top level)".to_owned(),
                p => p,
            };
            let inner = e.into_inner();
            let line = inner.location().map_or(0, |l| l.line());
            // serde_yaml_ng appends " at line L column C"; the line is reported separately.
            let mut message = inner.to_string();
            if let Some(i) = message.find(" at line ") {
                message.truncate(i);
            }
            // ... and may prefix its own rendering of the path.
            if let Some((prefix, rest)) = message.split_once(": ")
                && !prefix.contains(char::is_whitespace)
                && (prefix.contains('.') || key.starts_with(prefix))
            {
                message = rest.to_owned();
            }
            ConfigError::Parse {
                file: file.to_owned(),
                line,
                key,
                message,
            }
        })
    }

    /// Checks cross-references and safety rules.
    pub fn validate(&self, file: &str) -> Result<(), ConfigError> {
        let at = At { file };
        for (name, b) in &self.backends {
            if let BackendConfig::Local(c) = b {
                c.key()
                    .map_err(|e| at.invalid(format!("backends.{name}"), e.to_string()))?
                    .check()
                    .map_err(|m| at.invalid(format!("backends.{name}.key"), m))?;
            }
        }
        self.validate_authorities(at)?;
        self.validate_kubernetes(at)?;
        if let Some(istio) = &self.frontends.istio {
            self.authority_ref(at, "frontends.istio.authority", &istio.authority)?;
            self.routes(at, "frontends.istio.routes", &istio.routes)?;
            istio.validate().map_err(|(k, m)| at.invalid(k, m))?;
            dns_names(
                at,
                "frontends.istio.server_names",
                istio.server_names().iter(),
            )?;
        }
        if let Some(rest) = &self.frontends.rest {
            self.validate_rest(at, rest)?;
        }
        if let Some(t) = &self.trust {
            t.validate().map_err(|m| at.invalid("trust.poll", m))?;
        }
        Ok(())
    }

    fn validate_authorities(&self, at: At<'_>) -> Result<(), ConfigError> {
        for (name, a) in &self.authorities {
            self.backend_ref(at, &format!("authorities.{name}.backend"), &a.backend)?;
            a.policy
                .validate()
                .map_err(|m| at.invalid(format!("authorities.{name}.policy"), m))?;
            match (a.mode, &a.intermediate) {
                (Mode::Direct, Some(_)) => {
                    return Err(at.invalid(
                        format!("authorities.{name}.intermediate"),
                        "only used with mode: delegated",
                    ));
                }
                (Mode::Delegated, i) => {
                    let i = i.clone().unwrap_or_default();
                    if i.key.store().is_some()
                        && !name
                            .bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
                    {
                        return Err(at.invalid(
                            format!("authorities.{name}.intermediate.key"),
                            "the authority's name is part of each key the store makes: use letters, digits, '-' and '_'",
                        ));
                    }
                    i.validate()
                        .map_err(|m| at.invalid(format!("authorities.{name}.intermediate"), m))?;
                    if a.policy.max_ttl > i.ttl {
                        return Err(at.invalid(
                            format!("authorities.{name}.policy.max_ttl"),
                            format!(
                                "{} exceeds the intermediate's ttl {}",
                                a.policy.max_ttl, i.ttl
                            ),
                        ));
                    }
                }
                (Mode::Direct, None) => {}
            }
            let local = self
                .backends
                .get(&a.backend)
                .is_some_and(|b| b.kind() == signet_backends::BackendKind::Local);
            if !a.policy.crl_distribution_points.is_empty() && a.revocation_file.is_none() {
                return Err(at.invalid(
                    format!("authorities.{name}.policy.crl_distribution_points"),
                    "needs authorities.<name>.revocation_file (the CRL the URL serves)",
                ));
            }
            if !a.policy.crl_distribution_points.is_empty() && (a.mode != Mode::Direct || !local) {
                return Err(at.invalid(
                    format!("authorities.{name}.policy.crl_distribution_points"),
                    "only for mode: direct on a local backend (signet's CRL covers only a CA whose key it holds; remote CAs publish their own distribution points)",
                ));
            }
        }
        Ok(())
    }

    /// The front-ends that write to Kubernetes, and leader election.
    fn validate_kubernetes(&self, at: At<'_>) -> Result<(), ConfigError> {
        let f = &self.frontends;
        if let Some(k) = &f.kubernetes_csr {
            self.authority_ref(at, "frontends.kubernetes_csr.authority", &k.authority)?;
            self.routes(at, "frontends.kubernetes_csr.routes", &k.routes)?;
            if k.signer_names.is_empty() || k.allowed_requesters.is_empty() {
                return Err(at.invalid(
                    "frontends.kubernetes_csr",
                    "signer_names and allowed_requesters must not be empty",
                ));
            }
        }
        if let Some(p) = &f.pod_certificates {
            self.authority_ref(at, "frontends.pod_certificates.authority", &p.authority)?;
            self.routes(at, "frontends.pod_certificates.routes", &p.routes)?;
            p.validate()
                .map_err(|m| at.invalid("frontends.pod_certificates", m))?;
            // The API takes no certificate shorter than an hour.
            let min = signet_kubernetes::pod_certificates::MIN_LIFETIME;
            let used = std::iter::once(&p.authority).chain(p.routes.iter().map(|r| &r.authority));
            for name in used {
                let a = &self.authorities[name];
                // AWS PCA's end-entity template takes names from the CSR, and
                // the kubelet's stub CSR names nothing.
                let pca = self
                    .backends
                    .get(&a.backend)
                    .is_some_and(|b| b.kind() == signet_backends::BackendKind::AwsPca);
                if pca && a.mode == Mode::Direct {
                    return Err(at.invalid(
                        format!("authorities.{name}.mode"),
                        "frontends.pod_certificates needs mode: delegated over aws_pca (PCA takes a leaf's names from the CSR, and the kubelet's names nothing)",
                    ));
                }
                let policy = &a.policy;
                if policy.backdate.get() > signet_kubernetes::pod_certificates::MAX_BACKDATE {
                    return Err(at.invalid(
                        format!("authorities.{name}.policy.backdate"),
                        format!(
                            "{} is too far back for frontends.pod_certificates: Kubernetes wants notBefore within 5m of its clock",
                            policy.backdate
                        ),
                    ));
                }
                if policy.max_ttl.get() + policy.backdate.get() < min {
                    return Err(at.invalid(
                        format!("authorities.{name}.policy.max_ttl"),
                        format!(
                            "{} is too short for frontends.pod_certificates: Kubernetes accepts no pod certificate shorter than 1h",
                            policy.max_ttl
                        ),
                    ));
                }
            }
        }
        if let Some(r) = &f.istio_root_cert {
            self.authority_ref(at, "frontends.istio_root_cert.authority", &r.authority)?;
        }
        if let Some(t) = &f.istiod_tls {
            self.authority_ref(at, "frontends.istiod_tls.authority", &t.authority)?;
            for n in t.dns_names() {
                signet_core::names::DnsName::new(&n)
                    .map_err(|e| at.invalid("frontends.istiod_tls.revisions", e.to_string()))?;
            }
        }
        if let Some(c) = &f.istio_cacerts {
            self.backend_ref(at, "frontends.istio_cacerts.backend", &c.backend)?;
            c.validate()
                .map_err(|m| at.invalid("frontends.istio_cacerts", m))?;
        }
        if let Some(c) = &f.cluster_trust_bundles {
            let mut names = BTreeSet::new();
            for (i, b) in c.bundles.iter().enumerate() {
                let key = format!("frontends.cluster_trust_bundles.bundles[{i}]");
                self.authority_ref(at, &format!("{key}.authority"), &b.authority)?;
                b.validate().map_err(|m| at.invalid(&key, m))?;
                if !names.insert(b.object_name()) {
                    return Err(at.invalid(&key, "names the same object as an earlier entry"));
                }
            }
        }
        if f.writes_to_kubernetes() {
            self.leader_election
                .validate()
                .map_err(|m| at.invalid("leader_election", m))?;
        }
        Ok(())
    }

    fn validate_rest(&self, at: At<'_>, rest: &RestConfig) -> Result<(), ConfigError> {
        let key = |k: &str| format!("frontends.rest.{k}");
        self.authority_ref(at, &key("authority"), &rest.authority)?;
        let auth = &rest.auth;
        if auth.loopback_unauthenticated && !rest.listen.ip().is_loopback() {
            return Err(at.invalid(
                key("auth.loopback_unauthenticated"),
                format!(
                    "only allowed when listen is a loopback address, not {}",
                    rest.listen
                ),
            ));
        }
        if auth.mtls.is_none() && auth.tokens_file.is_none() && !auth.loopback_unauthenticated {
            return Err(at.invalid(
                key("auth"),
                "no way to authenticate: set mtls, tokens_file or loopback_unauthenticated",
            ));
        }
        if rest.tls.is_none() && rest.listen.ip().is_unspecified() && rest.server_names.is_empty() {
            return Err(at.invalid(
                key("server_names"),
                format!(
                    "listening on {} needs at least one server name for the serving certificate",
                    rest.listen
                ),
            ));
        }
        dns_names(at, "frontends.rest.server_names", rest.server_names.iter())?;
        let min_ttl = self.authorities[&rest.authority].policy.min_ttl;
        let mut seen = BTreeSet::new();
        for (i, p) in rest.principals.iter().enumerate() {
            if !seen.insert(p.name.clone()) {
                return Err(at.invalid(
                    format!("frontends.rest.principals[{i}].name"),
                    format!("principal \"{}\" is listed twice", p.name),
                ));
            }
            validate_principal(at, rest, i, p, min_ttl)?;
        }
        let limits = &rest.limits;
        if limits.max_body_bytes < 1024 || limits.max_body_bytes > 16 * 1024 * 1024 {
            return Err(at.invalid(
                key("limits.max_body_bytes"),
                "must be between 1024 and 16777216",
            ));
        }
        if limits.max_concurrent_requests == 0 || limits.max_connections == 0 {
            return Err(at.invalid(key("limits"), "limits must be positive"));
        }
        Ok(())
    }

    /// A front-end's routes: known authorities, unique names, well formed.
    fn routes(
        &self,
        at: At<'_>,
        key: &str,
        routes: &[signet_core::routing::RouteConfig],
    ) -> Result<(), ConfigError> {
        let mut names = BTreeSet::new();
        for (i, r) in routes.iter().enumerate() {
            let k = format!("{key}[{i}]");
            self.authority_ref(at, &format!("{k}.authority"), &r.authority)?;
            r.validate().map_err(|m| at.invalid(&k, m))?;
            if !names.insert(r.name.as_str()) {
                return Err(at.invalid(&k, format!("route name {:?} is used twice", r.name)));
            }
        }
        Ok(())
    }

    /// Whether any front-end routes by namespace labels (signet then
    /// watches Namespaces).
    pub fn routes_by_labels(&self) -> bool {
        let f = &self.frontends;
        let lists = [
            f.istio.as_ref().map(|c| &c.routes),
            f.kubernetes_csr.as_ref().map(|c| &c.routes),
            f.pod_certificates.as_ref().map(|c| &c.routes),
        ];
        lists
            .into_iter()
            .flatten()
            .flatten()
            .any(|r| r.needs_labels())
    }

    fn authority_ref(&self, at: At<'_>, key: &str, name: &str) -> Result<(), ConfigError> {
        known(at, key, "authority", name, &self.authorities)
    }

    fn backend_ref(&self, at: At<'_>, key: &str, name: &str) -> Result<(), ConfigError> {
        known(at, key, "backend", name, &self.backends)
    }
}

/// `name` is a key of `map` (the configured authorities or backends).
fn known<V>(
    at: At<'_>,
    key: &str,
    what: &str,
    name: &str,
    map: &BTreeMap<String, V>,
) -> Result<(), ConfigError> {
    if map.contains_key(name) {
        return Ok(());
    }
    Err(at.invalid(
        key,
        format!("no {what} named {name:?} (known: {})", names(map.keys())),
    ))
}

/// Where a validation error is reported: the file, then the key.
#[derive(Debug, Clone, Copy)]
struct At<'a> {
    file: &'a str,
}

impl At<'_> {
    fn invalid(self, key: impl Into<String>, message: impl Into<String>) -> ConfigError {
        ConfigError::Invalid {
            file: self.file.to_owned(),
            key: key.into(),
            message: message.into(),
        }
    }
}

/// Each of a list of DNS names is valid (`key[i]` names the bad one).
fn dns_names<'n>(
    at: At<'_>,
    key: &str,
    list: impl Iterator<Item = &'n String>,
) -> Result<(), ConfigError> {
    for (i, n) in list.enumerate() {
        signet_core::names::DnsName::new(n)
            .map_err(|e| at.invalid(format!("{key}[{i}]"), e.to_string()))?;
    }
    Ok(())
}

/// A REST principal can authenticate with the configured auth, has a
/// profile, and a max_ttl the authority can honour.
fn validate_principal(
    at: At<'_>,
    rest: &RestConfig,
    i: usize,
    p: &PrincipalConfig,
    min_ttl: HumanDuration,
) -> Result<(), ConfigError> {
    let k = |f: &str| format!("frontends.rest.principals[{i}].{f}");
    let unusable = match &p.name {
        PrincipalSelector::Exact(Principal::Token(_)) | PrincipalSelector::AnyToken => rest
            .auth
            .tokens_file
            .is_none()
            .then_some("auth.tokens_file"),
        PrincipalSelector::Exact(Principal::CertificateUri(_) | Principal::CertificateDns(_))
        | PrincipalSelector::AnyCertificateUri
        | PrincipalSelector::AnyCertificateDns => rest.auth.mtls.is_none().then_some("auth.mtls"),
        PrincipalSelector::Exact(Principal::Anonymous) => {
            (!rest.auth.loopback_unauthenticated).then_some("auth.loopback_unauthenticated")
        }
        _ => None,
    };
    if let Some(needs) = unusable {
        return Err(at.invalid(
            k("name"),
            format!(
                "principal \"{}\" can never authenticate: {needs} is not configured",
                p.name
            ),
        ));
    }
    if p.profiles.is_empty() {
        return Err(at.invalid(k("profiles"), "at least one profile is required"));
    }
    if let Some(max) = p.max_ttl
        && max < min_ttl
    {
        return Err(at.invalid(
            k("max_ttl"),
            format!("{max} is below the authority's min_ttl {min_ttl}"),
        ));
    }
    Ok(())
}

fn names<'a>(keys: impl Iterator<Item = &'a String>) -> String {
    let v: Vec<&str> = keys.map(String::as_str).collect();
    if v.is_empty() {
        "none".to_owned()
    } else {
        v.join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use signet_core::key::KeyAlgorithm;

    const GOOD: &str = r#"
trust_domain: cluster.local
backends:
  ca:
    type: local
    cert_file: /etc/signet/ca.pem
    key_file: /etc/signet/ca-key.pem
authorities:
  mesh:
    backend: ca
    policy: { default_ttl: 1h, max_ttl: 24h }
frontends:
  rest:
    listen: 127.0.0.1:8443
    authority: mesh
    auth:
      tokens_file: /etc/signet/tokens.yaml
    principals:
      - name: token:ci
        allowed_sans: ["spiffe://cluster.local/ns/ci/sa/*", "*.ci.example.com"]
        max_ttl: 1h
"#;

    fn parse(s: &str) -> Result<Config, ConfigError> {
        let c = Config::parse(s, "test.yaml")?;
        c.validate("test.yaml")?;
        Ok(c)
    }

    #[test]
    fn a_ca_key_is_a_file_or_in_a_store_and_the_plug_in_key_is_never_in_one() {
        let pkcs11 = "key: { type: pkcs11, module: /usr/lib/softhsm/libsofthsm2.so, token_label: ca, pin_env: PIN, key_label: issuing }";
        let store = GOOD.replace("key_file: /etc/signet/ca-key.pem", pkcs11);
        let c = parse(&store).unwrap();
        let BackendConfig::Local(local) = &c.backends["ca"] else {
            panic!("a local backend")
        };
        assert_eq!(local.key().unwrap().store(), "pkcs11");

        let both = GOOD.replace(
            "key_file: /etc/signet/ca-key.pem",
            &format!("key_file: /etc/signet/ca-key.pem\n    {pkcs11}"),
        );
        let err = parse(&both).unwrap_err().to_string();
        assert!(
            err.contains("backends.ca") && err.contains("exactly one of key_file and key"),
            "{err}"
        );
        let neither = GOOD.replace("    key_file: /etc/signet/ca-key.pem\n", "");
        assert!(parse(&neither).is_err());

        let cacerts = format!("{GOOD}  istio_cacerts:\n    backend: ca\n    {}\n", pkcs11);
        let err = parse(&cacerts).unwrap_err().to_string();
        assert!(err.contains("istiod reads ca-key.pem"), "{err}");

        let unnamed = GOOD.replace(
            "key_file: /etc/signet/ca-key.pem",
            "key: { type: aws_kms, region: eu-west-1 }",
        );
        let err = parse(&unnamed).unwrap_err().to_string();
        assert!(
            err.contains("backends.ca.key") && err.contains("key_id is required"),
            "{err}"
        );
    }

    #[test]
    fn a_delegated_intermediate_key_is_an_algorithm_or_a_store_that_makes_it() {
        let delegated = |key: &str| {
            GOOD.replace(
                "  mesh:\n    backend: ca\n",
                &format!(
                    "  mesh:\n    backend: ca\n    mode: delegated\n    intermediate:\n      key: {key}\n"
                ),
            )
        };
        let c = parse(&delegated("ecdsa-p384")).unwrap();
        let i = c.authorities["mesh"].intermediate.as_ref().unwrap();
        assert_eq!(i.key, IntermediateKey::InMemory(KeyAlgorithm::EcdsaP384));

        let c = parse(&delegated(
            "{ type: pkcs11, module: /usr/lib/softhsm/libsofthsm2.so, token_label: ca, pin_env: PIN, algorithm: rsa-3072, resilience: { timeout: 2s } }",
        ))
        .unwrap();
        let store = c.authorities["mesh"]
            .intermediate
            .as_ref()
            .unwrap()
            .key
            .store()
            .unwrap();
        assert_eq!(store.algorithm, KeyAlgorithm::Rsa3072);
        assert_eq!(store.store.store(), "pkcs11");
        assert_eq!(
            store.resilience.timeout.get(),
            std::time::Duration::from_secs(2)
        );

        for (key, why) in [
            (
                "{ type: pkcs11, module: /m.so, token_label: ca, pin_env: PIN, key_label: mine }",
                "signet names the keys it makes",
            ),
            (
                "{ type: aws_kms, region: eu-west-1, key_id: alias/x }",
                "leave out key_id",
            ),
            (
                "{ type: file, path: /k.pem }",
                "a key file cannot make keys",
            ),
            (
                "{ type: aws_kms, region: eu-west-1, algorithm: ed25519 }",
                "not ed25519",
            ),
            (
                "{ type: aws_kms, region: eu-west-1, colour: blue }",
                "unknown field `colour`",
            ),
            ("rsa-1024", "unknown key algorithm"),
        ] {
            let err = parse(&delegated(key)).unwrap_err().to_string();
            assert!(
                err.contains("intermediate") && err.contains(why),
                "{key}: {err}"
            );
        }
        let odd_name = delegated("{ type: aws_kms, region: eu-west-1 }")
            .replace(
                "  mesh:\n    backend: ca\n    mode",
                "  \"mesh/a\":\n    backend: ca\n    mode",
            )
            .replace("authority: mesh", "authority: \"mesh/a\"");
        let err = parse(&odd_name).unwrap_err().to_string();
        assert!(err.contains("letters, digits"), "{err}");
    }

    #[test]
    fn parses_a_full_config() {
        let c = parse(GOOD).unwrap();
        assert_eq!(c.trust_domain.as_str(), "cluster.local");
        let rest = c.frontends.rest.unwrap();
        assert_eq!(rest.principals[0].profiles, Profile::ALL.to_vec());
        assert_eq!(rest.limits.max_body_bytes, 65536);
    }

    #[test]
    fn unknown_keys_name_path_and_line() {
        let bad = GOOD.replace("    policy:", "    polcy:");
        match parse(&bad).unwrap_err() {
            ConfigError::Parse {
                line, key, message, ..
            } => {
                assert_eq!(key, "authorities.mesh.polcy");
                assert_eq!(line, 11);
                assert!(message.contains("unknown field `polcy`"), "{message}");
            }
            other => panic!("{other}"),
        }
        let bad = GOOD.replace("max_ttl: 1h", "max_ttl: forever");
        let err = parse(&bad).unwrap_err().to_string();
        assert!(
            err.contains("frontends.rest.principals[0].max_ttl")
                || err.contains("frontends.rest.principals.0.max_ttl"),
            "{err}"
        );
        // Errors inside a value point at the line of the entry that holds it.
        assert!(err.contains("line 19"), "{err}");
        assert!(err.contains("invalid duration \"forever\""), "{err}");
        let bad = GOOD.replace("cluster.local\n", "Cluster.Local\n");
        let err = parse(&bad).unwrap_err().to_string();
        assert!(
            err.contains("trust_domain") && err.contains("line 2"),
            "{err}"
        );
    }

    #[test]
    fn routes_and_pod_certificates_are_checked() {
        let with = |frontends: &str| {
            let text = GOOD.replace("frontends:\n", &format!("frontends:\n{frontends}"));
            parse(&text).map(|_| ()).map_err(|e| e.to_string())
        };
        let pods = |extra: &str| {
            format!(
                "  pod_certificates:\n    signer_names: [signet.dev/pods]\n    authority: mesh\n{extra}"
            )
        };
        with(&pods("")).unwrap();
        let e = with(&pods("    routes: [{ name: t, authority: nope }]\n")).unwrap_err();
        assert!(
            e.contains("frontends.pod_certificates.routes[0].authority"),
            "{e}"
        );
        let e = with(&pods(
            "    routes: [{ name: t, authority: mesh }, { name: t, authority: mesh }]\n",
        ))
        .unwrap_err();
        assert!(e.contains("used twice"), "{e}");
        let e = with(&pods("    routes: [{ name: default, authority: mesh }]\n")).unwrap_err();
        assert!(e.contains("reserved"), "{e}");
        let e = with(
            "  pod_certificates: { signer_names: [kubernetes.io/kube-apiserver-client-pod], authority: mesh }\n",
        )
        .unwrap_err();
        assert!(e.contains("reserved for the Kubernetes project"), "{e}");
        // Kubernetes takes no pod certificate under an hour.
        let short = GOOD.replace(
            "{ default_ttl: 1h, max_ttl: 24h }",
            "{ default_ttl: 30m, max_ttl: 30m }",
        );
        let e = parse(&short.replace("frontends:\n", &format!("frontends:\n{}", pods(""))))
            .unwrap_err()
            .to_string();
        assert!(e.contains("authorities.mesh.policy.max_ttl"), "{e}");
        let e = with(&pods("    dns_names: [\"{pod}..bad\"]\n")).unwrap_err();
        assert!(e.contains("dns_names"), "{e}");
        let far = GOOD.replace(
            "{ default_ttl: 1h, max_ttl: 24h }",
            "{ default_ttl: 1h, max_ttl: 24h, backdate: 10m }",
        );
        let e = parse(&far.replace("frontends:\n", &format!("frontends:\n{}", pods(""))))
            .unwrap_err()
            .to_string();
        assert!(e.contains("authorities.mesh.policy.backdate"), "{e}");
        // CertSigner is the workload's own say: never a route by itself.
        let e = with(&pods(
            "    routes: [{ name: t, authority: mesh, cert_signers: [x] }]\n",
        ))
        .unwrap_err();
        assert!(e.contains("cert_signers"), "{e}");
    }

    #[test]
    fn cross_references_and_safety_rules() {
        let e = |s: String| parse(&s).unwrap_err().to_string();
        assert!(
            e(GOOD.replace("backend: ca", "backend: nope")).contains("authorities.mesh.backend")
        );
        assert!(
            e(GOOD.replace("authority: mesh", "authority: nope"))
                .contains("frontends.rest.authority")
        );
        let open = GOOD.replace("127.0.0.1:8443", "0.0.0.0:8443").replace(
            "tokens_file: /etc/signet/tokens.yaml",
            "loopback_unauthenticated: true",
        );
        assert!(e(open).contains("loopback_unauthenticated"));
        let none = GOOD
            .replace("tokens_file: /etc/signet/tokens.yaml", "{}")
            .replace("auth:\n      {}", "auth: {}");
        assert!(
            e(none).contains("no way to authenticate"),
            "{}",
            e(GOOD.replace("tokens_file: /etc/signet/tokens.yaml", ""))
        );
        assert!(e(GOOD.replace("127.0.0.1:8443", "0.0.0.0:8443")).contains("server_names"));
        assert!(e(GOOD.replace("max_ttl: 24h", "max_ttl: 30m")).contains("default_ttl"));
        assert!(e(GOOD.replace("*.ci.example.com", "a..b")).contains("allowed_sans"));
        // Principals say how they authenticate, and only a configured way.
        assert!(e(GOOD.replace("name: token:ci", "name: ci")).contains("token:<name>"));
        assert!(e(GOOD.replace("name: token:ci", "name: dns:ci")).contains("auth.mtls"));
        assert!(
            e(GOOD.replace("name: token:ci", "name: anonymous"))
                .contains("loopback_unauthenticated")
        );
        // Grant patterns cover what they say, and never more than one identity.
        assert!(e(GOOD.replace("ns/ci/sa/*", "ns/ci/*")).contains("ns/ci/sa/*"));
        assert!(e(GOOD.replace("ns/ci/sa/*", "ns/ci/**")).contains("allowed_sans"));
    }
}
