//! The `cert_manager` backend: any issuer cert-manager supports signs for
//! signet, through `cert-manager.io/v1` CertificateRequests.
//!
//! For each signature: create a CertificateRequest for the configured issuer
//! (PEM CSR, duration, `isCA`, usages from the decision), wait for it by watch
//! (not polling) until Ready, Denied or Failed or the timeout, take
//! `status.certificate` (leaf + chain) and `status.ca`, and delete the request
//! unless `keep_requests`. Works for leaves and for delegated intermediates.
//! Also holds the CertificateRequest types signet's own issuer controller uses.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use arc_swap::ArcSwapOption;
use async_trait::async_trait;
use base64::Engine as _;
use futures::StreamExt as _;
use kube::api::{DeleteParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::runtime::{WatchStreamExt as _, watcher};
use kube::{Api, Client, CustomResource};
use rustls_pki_types::CertificateDer;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use signet_core::chain::{IssuedChain, TrustBundle, order_path};
use signet_core::layout::Layout;
use signet_core::policy::{ExtKeyUsage, KeyUsage};
use signet_core::resilience::ResilienceConfig;
use signet_core::signer::Capabilities;
use signet_core::{BackendInfo, Clock, IssuanceDecision, SignError, Signer, VerifiedCsr, pem};

// === cert-manager's CertificateRequest (the parts signet reads and writes) ===

/// `cert-manager.io/v1` CertificateRequest.
#[derive(CustomResource, Clone, Debug, Default, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "cert-manager.io",
    version = "v1",
    kind = "CertificateRequest",
    namespaced,
    status = "CertificateRequestStatus"
)]
#[serde(rename_all = "camelCase")]
pub struct CertificateRequestSpec {
    /// Base64 of the PEM CSR.
    pub request: String,
    pub issuer_ref: IssuerRef,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration: Option<String>,
    #[serde(default, rename = "isCA", skip_serializing_if = "Option::is_none")]
    pub is_ca: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usages: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub groups: Option<Vec<String>>,
}

/// Which issuer a request is for.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct IssuerRef {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CertificateRequestStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conditions: Option<Vec<RequestCondition>>,
    /// Base64 of the PEM leaf followed by intermediates.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certificate: Option<String>,
    /// Base64 of the PEM CA (root).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure_time: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RequestCondition {
    #[serde(rename = "type")]
    pub type_: String,
    pub status: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_transition_time: Option<String>,
}

impl CertificateRequest {
    /// The condition of `type_`, if set.
    pub fn condition(&self, type_: &str) -> Option<&RequestCondition> {
        self.status
            .as_ref()?
            .conditions
            .as_ref()?
            .iter()
            .find(|c| c.type_ == type_)
    }

    pub fn is_true(&self, type_: &str) -> bool {
        self.condition(type_).is_some_and(|c| c.status == "True")
    }
}

/// cert-manager's names for key usages.
pub fn usages(decision: &IssuanceDecision) -> Vec<String> {
    let mut out: Vec<String> = decision
        .key_usage()
        .iter()
        .map(|u| match u {
            KeyUsage::DigitalSignature => "digital signature",
            KeyUsage::KeyEncipherment => "key encipherment",
            KeyUsage::KeyCertSign => "cert sign",
            KeyUsage::CrlSign => "crl sign",
        })
        .map(str::to_owned)
        .collect();
    out.extend(decision.extended_key_usage().iter().map(|e| {
        match e {
            ExtKeyUsage::ServerAuth => "server auth",
            ExtKeyUsage::ClientAuth => "client auth",
        }
        .to_owned()
    }));
    out
}

/// `YYYY-MM-DDTHH:MM:SSZ` now, as cert-manager writes condition times.
pub fn now_rfc3339(clock: &dyn Clock) -> String {
    signet_core::clock::rfc3339(clock.now())
}

// === the backend ===

fn default_issuer_group() -> String {
    "cert-manager.io".to_owned()
}
fn default_issuer_kind() -> String {
    "Issuer".to_owned()
}

/// `issuer:` of a `cert_manager` backend.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IssuerRefConfig {
    pub name: String,
    #[serde(default = "default_issuer_kind")]
    pub kind: String,
    #[serde(default = "default_issuer_group")]
    pub group: String,
}

/// `backends.<name>` with `type: cert_manager`.
///
/// How long signet waits for a request to be issued is
/// `resilience.timeout` (default 10s); raise it for slow issuers.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CertManagerConfig {
    /// Namespace the CertificateRequests are created in.
    pub namespace: String,
    pub issuer: IssuerRefConfig,
    /// Keep finished requests instead of deleting them.
    #[serde(default)]
    pub keep_requests: bool,
    /// Trust anchors (PEM); default: the `ca` cert-manager returns.
    #[serde(default)]
    pub roots_file: Option<PathBuf>,
    /// Cluster to talk to; default in-cluster.
    #[serde(default)]
    pub kubeconfig: Option<PathBuf>,
    #[serde(default)]
    pub resilience: ResilienceConfig,
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CertManagerError {
    #[error("kubernetes client: {0}")]
    Client(String),
    #[error("{path}: {detail}")]
    Roots { path: PathBuf, detail: String },
}

/// The label on every request signet creates.
pub const MANAGED_BY: (&str, &str) = ("app.kubernetes.io/managed-by", "signet");

/// cert-manager as a signer.
pub struct CertManagerBackend {
    name: String,
    config: CertManagerConfig,
    client: Client,
    api: Api<CertificateRequest>,
    bundle: ArcSwapOption<TrustBundle>,
    clock: Arc<dyn Clock>,
}

impl std::fmt::Debug for CertManagerBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertManagerBackend")
            .field("name", &self.name)
            .field("issuer", &self.config.issuer)
            .finish_non_exhaustive()
    }
}

fn certs(pem_bytes: &[u8]) -> Result<Vec<CertificateDer<'static>>, String> {
    Ok(pem::certificates(pem_bytes)
        .map_err(|e| e.to_string())?
        .into_iter()
        .map(CertificateDer::from)
        .collect())
}

/// Deletes a request when dropped unless disarmed: a sign call that times
/// out or is cancelled does not leave a request behind for cert-manager to
/// issue later.
struct Cleanup {
    api: Api<CertificateRequest>,
    name: String,
    armed: bool,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let (api, name) = (self.api.clone(), std::mem::take(&mut self.name));
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                match api.delete(&name, &DeleteParams::default()).await {
                    Ok(_) => tracing::debug!(request = %name, "deleted CertificateRequest"),
                    Err(kube::Error::Api(s)) if s.code == 404 => {}
                    Err(e) => tracing::warn!(request = %name, error = %e, "deleting a CertificateRequest failed"),
                }
            });
        }
    }
}

/// The request name for a decision that carries a request ID, so that a
/// retried or restarted call finds the request it already made.
fn request_name(id: &str) -> String {
    let digest = signet_core::crypto::sha256(id.as_bytes());
    let hex: String = digest[..12].iter().map(|b| format!("{b:02x}")).collect();
    format!("signet-{hex}")
}

fn finished(cr: &CertificateRequest) -> bool {
    cr.is_true("Ready")
        || cr.is_true("Denied")
        || cr.is_true("InvalidRequest")
        || cr
            .condition("Ready")
            .is_some_and(|c| matches!(c.reason.as_deref(), Some("Failed" | "Denied")))
}

impl CertManagerBackend {
    pub async fn new(
        name: &str,
        config: CertManagerConfig,
        clock: Arc<dyn Clock>,
    ) -> Result<Arc<Self>, CertManagerError> {
        let cfg = match &config.kubeconfig {
            Some(path) => {
                let kc = Kubeconfig::read_from(path)
                    .map_err(|e| CertManagerError::Client(format!("{}: {e}", path.display())))?;
                kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
                    .await
                    .map_err(|e| CertManagerError::Client(e.to_string()))?
            }
            None => {
                kube::Config::incluster().map_err(|e| CertManagerError::Client(e.to_string()))?
            }
        };
        let client = Client::try_from(cfg).map_err(|e| CertManagerError::Client(e.to_string()))?;
        Self::with_client(name, config, client, clock)
    }

    /// With a client built elsewhere (tests, or a process that already has one).
    pub fn with_client(
        name: &str,
        config: CertManagerConfig,
        client: Client,
        clock: Arc<dyn Clock>,
    ) -> Result<Arc<Self>, CertManagerError> {
        let bundle = match &config.roots_file {
            Some(path) => {
                let roots_err = |detail: String| CertManagerError::Roots {
                    path: path.clone(),
                    detail,
                };
                let bytes = std::fs::read(path).map_err(|e| roots_err(e.to_string()))?;
                let roots = certs(&bytes).map_err(roots_err)?;
                Some(Arc::new(
                    TrustBundle::new(roots).map_err(|e| roots_err(e.to_string()))?,
                ))
            }
            None => None,
        };
        Ok(Arc::new(Self {
            name: name.to_owned(),
            api: Api::namespaced(client.clone(), &config.namespace),
            client,
            config,
            bundle: ArcSwapOption::new(bundle),
            clock,
        }))
    }

    /// What kind of cert-manager issuer `issuer` names. A SelfSigned issuer
    /// signs every request with the request's own key, so nothing it returns
    /// chains to a root: no authority can use it. The issuing CA is known
    /// only once it signs (cert-manager does not say it up front).
    pub async fn read_layout(&self) -> Result<Layout, SignError> {
        let r = &self.config.issuer;
        let bundle = self.bundle.load_full();
        let mut layout = match bundle.as_deref() {
            Some(b) => Layout::from_certs(None, &[], b),
            None => Layout {
                issuing: None,
                chain: Vec::new(),
                anchors: Vec::new(),
                issues_ca_certificates: true,
                max_validity: None,
                anchored_at_root: true,
                facts: Vec::new(),
                unusable: None,
            },
        }
        .fact("issuer", format!("{} {}.{}", r.kind, r.name, r.group));
        if bundle.is_none() {
            layout = layout.fact(
                "trust anchors",
                "what the issuer returns as ca (set roots_file to pin them)",
            );
        }
        if r.group != "cert-manager.io" {
            return Ok(layout.fact("issuer type", "external issuer"));
        }
        let (kind, plural, namespaced) = match r.kind.as_str() {
            "ClusterIssuer" => ("ClusterIssuer", "clusterissuers", false),
            _ => ("Issuer", "issuers", true),
        };
        let ar = kube::core::ApiResource {
            group: "cert-manager.io".into(),
            version: "v1".into(),
            api_version: "cert-manager.io/v1".into(),
            kind: kind.into(),
            plural: plural.into(),
        };
        let api: Api<kube::core::DynamicObject> = if namespaced {
            Api::namespaced_with(self.client.clone(), &self.config.namespace, &ar)
        } else {
            Api::all_with(self.client.clone(), &ar)
        };
        let obj = match api.get_opt(&r.name).await {
            Ok(Some(o)) => o,
            Ok(None) => {
                return Err(SignError::NotReady(format!("{kind} {} not found", r.name)));
            }
            // Reading issuers is a convenience (RBAC may not allow it).
            Err(e) => return Ok(layout.fact("issuer type", format!("unknown ({e})"))),
        };
        let spec = obj.data.get("spec").cloned().unwrap_or_default();
        let ty = ["selfSigned", "ca", "vault", "acme", "venafi"]
            .into_iter()
            .find(|k| spec.get(k).is_some())
            .unwrap_or("other");
        layout = layout.fact("issuer type", ty);
        if ty == "selfSigned" {
            layout.unusable = Some(format!(
                "cert-manager {kind} {} is a SelfSigned issuer: it signs each request with the request's own key, so no certificate chains to a root. Point issuer at a CA issuer (a SelfSigned issuer can make that CA's root certificate)",
                r.name
            ));
        }
        Ok(layout)
    }

    fn kube_err(e: kube::Error) -> SignError {
        match e {
            kube::Error::Api(s) if s.code == 429 || s.code >= 500 => {
                SignError::BackendUnavailable(s.message)
            }
            kube::Error::Api(s) => {
                SignError::BackendRejected(format!("{} ({})", s.message, s.code))
            }
            other => SignError::BackendUnavailable(other.to_string()),
        }
    }

    /// Creates the request, or with a deterministic name finds the one an
    /// earlier attempt created.
    async fn create(&self, request: &CertificateRequest) -> Result<String, SignError> {
        match self.api.create(&PostParams::default(), request).await {
            Ok(created) => Ok(created.metadata.name.unwrap_or_default()),
            Err(kube::Error::Api(s)) if s.code == 409 && request.metadata.name.is_some() => {
                let name = request.metadata.name.clone().unwrap_or_default();
                let existing = self.api.get(&name).await.map_err(Self::kube_err)?;
                if existing.spec.request != request.spec.request {
                    return Err(SignError::BackendRejected(format!(
                        "CertificateRequest {name} exists for a different CSR"
                    )));
                }
                tracing::info!(request = %name, "resuming an existing CertificateRequest");
                Ok(name)
            }
            Err(e) => Err(Self::kube_err(e)),
        }
    }

    /// Waits by watch (not polling) until the request has finished.
    async fn wait(&self, name: &str) -> Result<CertificateRequest, SignError> {
        let wc = watcher::Config::default().fields(&format!("metadata.name={name}"));
        // Backoff on errors: without it an unreachable API server is retried
        // in a busy loop.
        let mut stream = watcher(self.api.clone(), wc).default_backoff().boxed();
        while let Some(ev) = stream.next().await {
            match ev {
                Ok(watcher::Event::Apply(cr) | watcher::Event::InitApply(cr)) if finished(&cr) => {
                    return Ok(cr);
                }
                Ok(_) => {}
                // The watcher re-lists, backing off, by itself.
                Err(e) => {
                    tracing::debug!(request = %name, error = %e, "watching a CertificateRequest")
                }
            }
        }
        Err(SignError::BackendUnavailable(
            "CertificateRequest watch ended".into(),
        ))
    }

    fn result(&self, name: &str, cr: CertificateRequest) -> Result<IssuedChain, SignError> {
        if !cr.is_true("Ready") {
            let denied = cr.condition("Denied").filter(|c| c.status == "True");
            let c = denied
                .or(cr
                    .condition("InvalidRequest")
                    .filter(|c| c.status == "True"))
                .or(cr.condition("Ready"));
            let why = c
                .map(|c| {
                    format!(
                        "{}: {}",
                        c.reason.as_deref().unwrap_or(&c.type_),
                        c.message.as_deref().unwrap_or("")
                    )
                })
                .unwrap_or_default();
            return Err(SignError::BackendRejected(format!(
                "CertificateRequest {name}: {why}"
            )));
        }
        let status = cr.status.unwrap_or_default();
        let decode = |what: &str, b64: Option<String>| {
            base64::engine::general_purpose::STANDARD
                .decode(b64.unwrap_or_default().trim())
                .map_err(|e| {
                    SignError::BackendRejected(format!(
                        "CertificateRequest {name}: bad base64 in status.{what}: {e}"
                    ))
                })
        };
        let bad = |what: &str, e: String| {
            SignError::BackendRejected(format!("CertificateRequest {name}: status.{what}: {e}"))
        };
        let mut chain = certs(&decode("certificate", status.certificate)?)
            .map_err(|e| bad("certificate", e))?;
        if chain.is_empty() {
            return Err(bad("certificate", "no certificate".into()));
        }
        let leaf = chain.remove(0);
        // `ca` is optional in cert-manager's API: absent or empty is none.
        let ca_bytes = decode("ca", status.ca)?;
        let ca = if ca_bytes.iter().all(u8::is_ascii_whitespace) {
            Vec::new()
        } else {
            certs(&ca_bytes).map_err(|e| bad("ca", e))?
        };
        if ca.len() == 1 && ca[0] == leaf {
            return Err(SignError::BackendRejected(format!(
                "CertificateRequest {name}: the issuer signed the request with its own key (a SelfSigned issuer?); nothing chains to a root. Point issuer at a CA issuer"
            )));
        }
        let bundle = match self.bundle.load_full() {
            Some(b) if self.config.roots_file.is_some() => (*b).clone(),
            _ => {
                // Without configured roots, trust what cert-manager says the
                // CA is (or the top of the chain when it says nothing).
                let anchors: Vec<_> = if ca.is_empty() {
                    chain.last().cloned().into_iter().collect()
                } else {
                    ca.clone()
                };
                if anchors.is_empty() {
                    return Err(SignError::BackendRejected(format!(
                        "CertificateRequest {name}: the issuer returned no CA (status.ca is empty) and no chain above the certificate, so its root is unknown: set roots_file to the issuer's root"
                    )));
                }
                let b = TrustBundle::new(anchors).map_err(SignError::BadChain)?;
                self.bundle.store(Some(Arc::new(b.clone())));
                b
            }
        };
        let path = order_path(&leaf, [chain, ca].concat());
        IssuedChain::new(leaf, path, bundle).map_err(SignError::BadChain)
    }
}

#[async_trait]
impl Signer for CertManagerBackend {
    async fn sign(
        &self,
        decision: &IssuanceDecision,
        csr: &VerifiedCsr,
    ) -> Result<IssuedChain, SignError> {
        // cert-manager starts certificates now (no back-dating): ask for
        // what remains until the decided NotAfter.
        let ttl = decision
            .not_after()
            .duration_since(self.clock.now())
            .unwrap_or_default()
            .as_secs()
            .max(1);
        let mut request = CertificateRequest::new(
            "",
            CertificateRequestSpec {
                request: base64::engine::general_purpose::STANDARD.encode(csr.to_pem()),
                issuer_ref: IssuerRef {
                    name: self.config.issuer.name.clone(),
                    kind: Some(self.config.issuer.kind.clone()),
                    group: Some(self.config.issuer.group.clone()),
                },
                duration: Some(format!("{ttl}s")),
                is_ca: Some(decision.is_ca()),
                usages: Some(usages(decision)),
                ..CertificateRequestSpec::default()
            },
        );
        match decision.request_id() {
            Some(id) => request.metadata.name = Some(request_name(id)),
            None => {
                request.metadata.name = None;
                request.metadata.generate_name = Some("signet-".into());
            }
        }
        request.metadata.labels = Some(BTreeMap::from([(
            MANAGED_BY.0.to_owned(),
            MANAGED_BY.1.to_owned(),
        )]));
        let name = self.create(&request).await?;
        // Finished, failed, timed out or cancelled: the request goes
        // (unless kept), so nothing is issued after signet gave up on it.
        let cleanup = Cleanup {
            api: self.api.clone(),
            name: name.clone(),
            armed: !self.config.keep_requests,
        };
        let outcome = self.wait(&name).await;
        drop(cleanup);
        self.result(&name, outcome?)
    }

    async fn layout(&self) -> Result<Layout, SignError> {
        self.read_layout().await
    }

    async fn trust_bundle(&self) -> Result<TrustBundle, SignError> {
        self.bundle
            .load_full()
            .map(|b| (*b).clone())
            .ok_or_else(|| {
                SignError::NotReady(
                    "no CA seen from cert-manager yet (set roots_file to know it up front)".into(),
                )
            })
    }

    fn holds_ca_key(&self, spki_der: &[u8]) -> bool {
        // The roots last read (no network call on the signing path).
        self.bundle
            .load()
            .as_ref()
            .is_some_and(|b| b.holds_key(spki_der))
    }

    fn describe(&self) -> BackendInfo {
        let bundle = self.bundle.load_full();
        BackendInfo {
            name: self.name.clone(),
            kind: "cert_manager",
            capabilities: Capabilities {
                issues_intermediates: true,
                honours_ttl: true,
                in_process: false,
                // A repeated request ID finds its request only while it is kept.
                idempotent_for: self
                    .config
                    .keep_requests
                    .then_some(std::time::Duration::MAX),
                constrains_path_len: false,
            },
            ca_not_after: bundle.as_ref().and_then(|b| b.earliest_expiry()),
            ready: Ok(()),
        }
    }
}
