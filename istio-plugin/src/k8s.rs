//! The Kubernetes writers of the Istio integration: the CSR signer for
//! istiod's RA mode, the `cacerts` keeper for the plug-in CA, root
//! distribution (`istio-ca-root-cert`), and istiod's serving certificate.
//!
//! Every replica runs them; only the leader writes (`leader` turns false the
//! moment leadership is lost, and writers check it before each write). All
//! writes carry the resourceVersion that was read: a conflict means someone
//! else changed the object, so the controller reads again and re-decides.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt as _;
use k8s_openapi::ByteString;
use k8s_openapi::api::certificates::v1::{
    CertificateSigningRequest, CertificateSigningRequestCondition,
};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use kube::api::{ListParams, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::watcher;
use kube::{Api, Client, ResourceExt as _};
use serde::Deserialize;
use signet_core::caller::{AuthMethod, Caller, Principal};
use signet_core::duration::HumanDuration;
use signet_core::envelope::{Envelope, Handled};
use signet_core::error::ErrorKind;
use signet_core::metrics::Metrics;
use signet_core::names::SanPattern;
use signet_core::policy::{Grant, IssuanceRequest, Profile, TtlOverflow};
use signet_core::{Authority, SignError, VerifiedCsr};
use tokio::sync::watch;

use crate::cacerts::{Cacerts, Files, Plan};

fn kube_err(e: kube::Error) -> String {
    match e {
        kube::Error::Api(s) => format!("{} ({})", s.message, s.code),
        other => other.to_string(),
    }
}

fn is_conflict(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 409)
}

/// A stream that yields each time `leader` turns true (to re-examine
/// everything the previous leader may have left undone).
fn on_leadership(leader: watch::Receiver<bool>) -> impl futures::Stream<Item = ()> + Send {
    tokio_stream::wrappers::WatchStream::new(leader)
        .filter(|l| std::future::ready(*l))
        .map(|_| ())
}

// === CSR signer ===

fn default_allowed_sans() -> Option<Vec<SanPattern>> {
    None
}

/// `frontends.kubernetes_csr`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CsrSignerConfig {
    pub authority: String,
    /// Signer names to act for, e.g. `signet.dev/mesh`
    /// (istiod: `K8S_SIGNER` / `ISTIO_META_CERT_SIGNER`).
    pub signer_names: Vec<String>,
    /// Usernames whose CSRs are signed, e.g.
    /// `system:serviceaccount:istio-system:istiod`.
    pub allowed_requesters: Vec<String>,
    /// Names that may be certified; default any SPIFFE ID in the trust domain.
    #[serde(default = "default_allowed_sans")]
    pub allowed_sans: Option<Vec<SanPattern>>,
    /// Append the root to `status.certificate` (istiod then takes the last
    /// certificate as the root when `meshConfig.caCertificates` is unset).
    #[serde(default)]
    pub include_root: bool,
}

/// Signs Approved CSRs for the configured signer names.
pub struct CsrSigner {
    client: Client,
    config: CsrSignerConfig,
    authority: Arc<Authority>,
    grant: Grant,
    leader: watch::Receiver<bool>,
    /// Certificates signed but not yet written (uid → PEM), so a retried
    /// write never signs again.
    pending: Mutex<HashMap<String, String>>,
    /// CSRs this process wrote a certificate into (see [`signet_core::once`]).
    finished: signet_core::once::Finished,
    envelope: Envelope,
}

/// The longest a controller waits for one signing before counting it a
/// `timeout` and trying again later.
pub const CONTROLLER_DEADLINE: Duration = Duration::from_secs(120);

#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    #[error("kubernetes: {0}")]
    Kube(String),
    #[error("signing: {0}")]
    Sign(SignError),
    #[error("conflict; re-reading")]
    Conflict,
}

impl CsrSigner {
    pub fn new(
        client: Client,
        config: CsrSignerConfig,
        authority: Arc<Authority>,
        leader: watch::Receiver<bool>,
    ) -> Self {
        let td = authority.policy().trust_domain().clone();
        let authority_name = authority.name().to_owned();
        let allowed = config
            .allowed_sans
            .clone()
            .unwrap_or_else(|| vec![SanPattern::whole_trust_domain(&td)]);
        let grant = Grant {
            allowed_sans: allowed,
            max_ttl: None,
            profiles: vec![Profile::Workload, Profile::Server],
            allow_wildcards: false,
        };
        Self {
            client,
            config,
            authority,
            grant,
            leader,
            pending: Mutex::new(HashMap::new()),
            finished: signet_core::once::Finished::default(),
            envelope: Envelope::new(
                "kubernetes_csr",
                authority_name,
                None,
                CONTROLLER_DEADLINE,
                Metrics::default(),
            ),
        }
    }

    /// Records request metrics (`frontend="kubernetes_csr"`) in `metrics`.
    pub fn with_metrics(mut self, metrics: Metrics) -> Self {
        self.envelope = Envelope::new(
            "kubernetes_csr",
            self.authority.name(),
            None,
            CONTROLLER_DEADLINE,
            metrics,
        );
        self
    }

    /// Watches CSRs and reconciles them until the stream ends.
    pub async fn run(self: Arc<Self>) {
        let api: Api<CertificateSigningRequest> = Api::all(self.client.clone());
        Controller::new(api, watcher::Config::default())
            .reconcile_all_on(on_leadership(self.leader.clone()))
            .run(
                |csr, ctx: Arc<CsrSigner>| async move { ctx.reconcile(csr).await },
                |_csr, e: &ReconcileError, _ctx| match e {
                    ReconcileError::Conflict => Action::requeue(Duration::from_millis(100)),
                    _ => Action::requeue(Duration::from_secs(5)),
                },
                self,
            )
            .for_each(|r| async move {
                if let Err(e) = r {
                    tracing::debug!(error = %e, "csr reconcile");
                }
            })
            .await;
    }

    async fn reconcile(
        &self,
        csr: Arc<CertificateSigningRequest>,
    ) -> Result<Action, ReconcileError> {
        if !self.wants_signing(&csr) || !*self.leader.borrow() {
            return Ok(Action::await_change());
        }
        let name = csr.name_any();
        let uid = csr.uid().unwrap_or_default();
        // Written by this process already: this copy is from a lagging cache.
        if self.finished.contains(&uid) {
            return Ok(Action::await_change());
        }
        let cached = self
            .pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&uid)
            .cloned();
        let (csr, pem) = match cached {
            Some(p) => (csr, p),
            None => {
                // The watch cache may lag behind a write by another signer
                // (or by an earlier leader): read the CSR itself before
                // signing, so a stale copy never costs a signature.
                let fresh = match self.csr_api().get_opt(&name).await {
                    Ok(Some(fresh)) => fresh,
                    Ok(None) => return Ok(Action::await_change()),
                    Err(e) => return Err(ReconcileError::Kube(kube_err(e))),
                };
                if fresh.uid().as_deref() != Some(uid.as_str()) || !self.wants_signing(&fresh) {
                    return Ok(Action::await_change());
                }
                let fresh = Arc::new(fresh);
                let requester = fresh.spec.username.clone().unwrap_or_default();
                let signed = self
                    .envelope
                    .serve(&name, async {
                        Handled::by(requester, self.sign(&fresh).await)
                    })
                    .await;
                match signed {
                    Ok(p) => {
                        self.pending
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .insert(uid.clone(), p.clone());
                        (fresh, p)
                    }
                    Err(e) if e.kind().may_succeed_later() => {
                        return Err(ReconcileError::Sign(e));
                    }
                    Err(e) => return self.fail(&fresh, &e).await,
                }
            }
        };
        self.write_certificate(&csr, &name, &uid, pem).await
    }

    /// For one of our signer names, approved, not denied or failed, and
    /// without a certificate.
    fn wants_signing(&self, csr: &CertificateSigningRequest) -> bool {
        if !self.config.signer_names.contains(&csr.spec.signer_name) {
            return false;
        }
        let status = csr.status.clone().unwrap_or_default();
        if status.certificate.as_ref().is_some_and(|c| !c.0.is_empty()) {
            return false;
        }
        let conditions = status.conditions.unwrap_or_default();
        let has = |t: &str| {
            conditions
                .iter()
                .any(|c| c.type_ == t && c.status == "True")
        };
        has("Approved") && !has("Denied") && !has("Failed")
    }

    async fn sign(&self, csr: &CertificateSigningRequest) -> Result<String, SignError> {
        let requester = csr.spec.username.clone().unwrap_or_default();
        if !self.config.allowed_requesters.contains(&requester) {
            return Err(SignError::PolicyDenied(
                signet_core::policy::PolicyError::NoGrant(requester),
            ));
        }
        let verified = VerifiedCsr::from_pem(&csr.spec.request.0)?;
        let profile = Profile::infer(verified.requested_sans(), None);
        let request = IssuanceRequest {
            profile,
            ttl: csr
                .spec
                .expiration_seconds
                .map(|s| Duration::from_secs(s.max(0) as u64)),
            ttl_overflow: TtlOverflow::Clamp,
            renewable: false,
            request_id: None,
        };
        let caller = Caller::new(
            Principal::Kubernetes(requester),
            AuthMethod::KubernetesToken {
                cluster: "local".into(),
            },
        );
        let chain = self
            .authority
            .issue(&caller, &self.grant, &verified, &request)
            .await?;
        let mut pem = chain.leaf_pem();
        pem.extend(chain.intermediate_pems());
        if self.config.include_root {
            pem.push_str(&chain.trust_bundle().to_pem());
        }
        Ok(pem)
    }

    async fn write_certificate(
        &self,
        csr: &CertificateSigningRequest,
        name: &str,
        uid: &str,
        pem: String,
    ) -> Result<Action, ReconcileError> {
        if !*self.leader.borrow() {
            return Ok(Action::await_change());
        }
        let mut updated = csr.clone();
        updated
            .status
            .get_or_insert_with(Default::default)
            .certificate = Some(ByteString(pem.into_bytes()));
        match self
            .csr_api()
            .replace_status(name, &PostParams::default(), &updated)
            .await
        {
            Ok(_) => {
                self.finished.insert(uid);
                self.pending
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .remove(uid);
                tracing::info!(csr = name, signer = %csr.spec.signer_name, "kubernetes CSR signed");
                Ok(Action::await_change())
            }
            Err(e) if is_conflict(&e) => Err(ReconcileError::Conflict),
            Err(e) => Err(ReconcileError::Kube(kube_err(e))),
        }
    }

    async fn fail(
        &self,
        csr: &CertificateSigningRequest,
        e: &SignError,
    ) -> Result<Action, ReconcileError> {
        if !*self.leader.borrow() {
            return Ok(Action::await_change());
        }
        let name = csr.name_any();
        let reason = match e.kind() {
            ErrorKind::InvalidCsr => "SignetInvalidRequest",
            ErrorKind::PolicyDenied => "SignetPolicyDenied",
            _ => "SignetSigningFailed",
        };
        tracing::info!(csr = %name, reason, error = %e, "kubernetes CSR refused");
        let mut updated = csr.clone();
        let status = updated.status.get_or_insert_with(Default::default);
        status
            .conditions
            .get_or_insert_with(Vec::new)
            .push(CertificateSigningRequestCondition {
                type_: "Failed".into(),
                status: "True".into(),
                reason: Some(reason.into()),
                message: Some(e.to_string()),
                last_update_time: Some(Time(
                    jiff::Timestamp::try_from(self.authority.clock().now())
                        .unwrap_or(jiff::Timestamp::UNIX_EPOCH),
                )),
                last_transition_time: Some(Time(
                    jiff::Timestamp::try_from(self.authority.clock().now())
                        .unwrap_or(jiff::Timestamp::UNIX_EPOCH),
                )),
            });
        match self
            .csr_api()
            .replace_status(&name, &PostParams::default(), &updated)
            .await
        {
            Ok(_) => Ok(Action::await_change()),
            Err(e) if is_conflict(&e) => Err(ReconcileError::Conflict),
            Err(e) => Err(ReconcileError::Kube(kube_err(e))),
        }
    }

    fn csr_api(&self) -> Api<CertificateSigningRequest> {
        Api::all(self.client.clone())
    }
}

// === cacerts keeper ===

fn files_of(secret: &Secret) -> Files {
    secret
        .data
        .clone()
        .unwrap_or_default()
        .into_iter()
        .map(|(k, v)| (k, v.0))
        .collect()
}

/// Keeps the `cacerts` Secret filled and fresh (leader only).
pub struct CacertsKeeper {
    client: Client,
    cacerts: Cacerts,
    leader: watch::Receiver<bool>,
    period: Duration,
}

impl CacertsKeeper {
    pub fn new(client: Client, cacerts: Cacerts, leader: watch::Receiver<bool>) -> Self {
        Self {
            client,
            cacerts,
            leader,
            period: Duration::from_secs(30),
        }
    }

    /// How often the Secret is examined (default 30 s).
    pub fn with_period(mut self, period: Duration) -> Self {
        self.period = period;
        self
    }

    /// Examines the Secret and writes what it needs, once. Returns whether
    /// it wrote.
    pub async fn reconcile_once(&self) -> Result<bool, String> {
        if !*self.leader.borrow() {
            return Ok(false);
        }
        let cfg = self.cacerts.config();
        let api: Api<Secret> = Api::namespaced(self.client.clone(), &cfg.namespace);
        let current = api.get_opt(&cfg.secret).await.map_err(kube_err)?;
        let files = current.as_ref().map(files_of);
        let new_files = match self.cacerts.plan(files.as_ref()).await {
            Plan::Keep => return Ok(false),
            Plan::Write(f) => f,
            Plan::Mint { previous_roots } => self
                .cacerts
                .mint(&previous_roots)
                .await
                .map_err(|e| e.to_string())?,
        };
        if !*self.leader.borrow() {
            return Ok(false);
        }
        let data: BTreeMap<String, ByteString> = new_files
            .into_iter()
            .map(|(k, v)| (k, ByteString(v)))
            .collect();
        let result = match current {
            Some(mut secret) => {
                secret.data = Some(data);
                secret.string_data = None;
                api.replace(&cfg.secret, &PostParams::default(), &secret)
                    .await
            }
            None => {
                let secret = Secret {
                    metadata: ObjectMeta {
                        name: Some(cfg.secret.clone()),
                        namespace: Some(cfg.namespace.clone()),
                        labels: Some(
                            [(
                                "app.kubernetes.io/managed-by".to_owned(),
                                "signet".to_owned(),
                            )]
                            .into(),
                        ),
                        ..ObjectMeta::default()
                    },
                    type_: Some("Opaque".into()),
                    data: Some(data),
                    ..Secret::default()
                };
                api.create(&PostParams::default(), &secret).await
            }
        };
        match result {
            Ok(_) => {
                tracing::info!(namespace = %cfg.namespace, secret = %cfg.secret, "cacerts written");
                Ok(true)
            }
            Err(e) if is_conflict(&e) => Err("conflict writing cacerts; will re-read".into()),
            Err(e) => Err(kube_err(e)),
        }
    }

    /// Runs until dropped: every period, and whenever leadership is gained.
    pub async fn run(self) {
        let mut leader = self.leader.clone();
        loop {
            let wait = match self.reconcile_once().await {
                Ok(_) => self.period,
                Err(e) => {
                    tracing::warn!(error = %e, "cacerts not reconciled");
                    Duration::from_secs(1).min(self.period)
                }
            };
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                r = leader.changed() => if r.is_err() { return },
            }
        }
    }
}

// === root distribution ===

fn default_configmap() -> String {
    "istio-ca-root-cert".to_owned()
}

/// `frontends.istio_root_cert`: the trust bundle as a ConfigMap in every
/// selected namespace (what istiod publishes when its CA serves).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RootDistributionConfig {
    pub authority: String,
    #[serde(default = "default_configmap")]
    pub configmap: String,
    /// Label selector for namespaces; empty means all.
    #[serde(default)]
    pub namespace_selector: String,
    /// How often the trust bundle is re-read.
    #[serde(default = "default_bundle_poll")]
    pub poll: HumanDuration,
}

fn default_bundle_poll() -> HumanDuration {
    HumanDuration::from_secs(30)
}

/// Keeps `istio-ca-root-cert` in sync in every selected namespace (leader only).
pub struct RootDistributor {
    client: Client,
    config: RootDistributionConfig,
    authority: Arc<Authority>,
    leader: watch::Receiver<bool>,
    bundle: Mutex<Option<String>>,
}

impl RootDistributor {
    pub fn new(
        client: Client,
        config: RootDistributionConfig,
        authority: Arc<Authority>,
        leader: watch::Receiver<bool>,
    ) -> Self {
        Self {
            client,
            config,
            authority,
            leader,
            bundle: Mutex::new(None),
        }
    }

    async fn current_bundle(&self) -> Result<String, String> {
        let b = self
            .authority
            .trust_bundle()
            .await
            .map_err(|e| e.to_string())?
            .to_pem();
        *self.bundle.lock().unwrap_or_else(|e| e.into_inner()) = Some(b.clone());
        Ok(b)
    }

    async fn reconcile(&self, ns: Arc<Namespace>) -> Result<Action, ReconcileError> {
        if !*self.leader.borrow() || ns.metadata.deletion_timestamp.is_some() {
            return Ok(Action::await_change());
        }
        let bundle = self.current_bundle().await.map_err(ReconcileError::Kube)?;
        let ns_name = ns.name_any();
        let api: Api<ConfigMap> = Api::namespaced(self.client.clone(), &ns_name);
        let data: BTreeMap<String, String> = [("root-cert.pem".to_owned(), bundle)].into();
        let labels: BTreeMap<String, String> =
            [("istio.io/config".to_owned(), "true".to_owned())].into();
        let existing = api
            .get_opt(&self.config.configmap)
            .await
            .map_err(|e| ReconcileError::Kube(kube_err(e)))?;
        let result = match existing {
            Some(cm)
                if cm.data.as_ref() == Some(&data)
                    && cm
                        .labels()
                        .get("istio.io/config")
                        .is_some_and(|v| v == "true") =>
            {
                return Ok(Action::await_change());
            }
            Some(mut cm) => {
                cm.data = Some(data);
                cm.labels_mut().extend(labels);
                api.replace(&self.config.configmap, &PostParams::default(), &cm)
                    .await
            }
            None => {
                let cm = ConfigMap {
                    metadata: ObjectMeta {
                        name: Some(self.config.configmap.clone()),
                        namespace: Some(ns_name.clone()),
                        labels: Some(labels),
                        ..ObjectMeta::default()
                    },
                    data: Some(data),
                    ..ConfigMap::default()
                };
                api.create(&PostParams::default(), &cm).await
            }
        };
        match result {
            Ok(_) => {
                tracing::info!(namespace = %ns_name, configmap = %self.config.configmap, "root certificate published");
                Ok(Action::await_change())
            }
            Err(e) if is_conflict(&e) => Err(ReconcileError::Conflict),
            Err(e) => Err(ReconcileError::Kube(kube_err(e))),
        }
    }

    /// Watches namespaces; re-publishes everywhere when the bundle changes
    /// or leadership is gained.
    pub async fn run(self: Arc<Self>) {
        let api: Api<Namespace> = Api::all(self.client.clone());
        let wc = watcher::Config::default().labels(&self.config.namespace_selector);
        let this = self.clone();
        let bundle_changes =
            futures::stream::unfold((this, None::<String>), |(this, mut last)| async move {
                loop {
                    if let Ok(b) = this.authority.trust_bundle().await.map(|b| b.to_pem()) {
                        let changed = last.as_ref().is_some_and(|l| *l != b);
                        last = Some(b);
                        if changed {
                            return Some(((), (this, last)));
                        }
                    }
                    tokio::time::sleep(this.config.poll.get()).await;
                }
            });
        let triggers = futures::stream::select(on_leadership(self.leader.clone()), bundle_changes);
        Controller::new(api, wc)
            .reconcile_all_on(triggers)
            .run(
                |ns, ctx: Arc<RootDistributor>| async move { ctx.reconcile(ns).await },
                |_ns, e: &ReconcileError, _ctx| match e {
                    ReconcileError::Conflict => Action::requeue(Duration::from_millis(100)),
                    _ => Action::requeue(Duration::from_secs(5)),
                },
                self,
            )
            .for_each(|_| async {})
            .await;
    }

    /// Namespaces currently selected (for tests and `signet check`).
    pub async fn selected(&self) -> Result<Vec<String>, String> {
        let api: Api<Namespace> = Api::all(self.client.clone());
        let list = api
            .list(&ListParams::default().labels(&self.config.namespace_selector))
            .await
            .map_err(kube_err)?;
        Ok(list.items.iter().map(|n| n.name_any()).collect())
    }
}

impl std::fmt::Debug for CsrSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CsrSigner").finish_non_exhaustive()
    }
}

impl std::fmt::Debug for CacertsKeeper {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CacertsKeeper").finish_non_exhaustive()
    }
}

impl std::fmt::Debug for RootDistributor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RootDistributor").finish_non_exhaustive()
    }
}

// === istiod serving certificate ===

fn default_istiod_secret() -> String {
    "istiod-tls".to_owned()
}
fn default_revisions() -> Vec<String> {
    vec!["default".to_owned()]
}

/// `frontends.istiod_tls`: a `kubernetes.io/tls` Secret with istiod's
/// serving certificate (what istio-csr calls istiod-tls), renewed at two
/// thirds of its life. Mount it at `/var/run/secrets/istiod/tls`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IstiodTlsConfig {
    pub authority: String,
    #[serde(default = "default_namespace_istio")]
    pub namespace: String,
    #[serde(default = "default_istiod_secret")]
    pub secret: String,
    /// Istio revisions: `default` gives `istiod.<ns>.svc`, others `istiod-<rev>.<ns>.svc`.
    #[serde(default = "default_revisions")]
    pub revisions: Vec<String>,
}

fn default_namespace_istio() -> String {
    "istio-system".to_owned()
}

impl IstiodTlsConfig {
    pub fn dns_names(&self) -> Vec<String> {
        self.revisions
            .iter()
            .map(|r| {
                if r == "default" {
                    format!("istiod.{}.svc", self.namespace)
                } else {
                    format!("istiod-{r}.{}.svc", self.namespace)
                }
            })
            .collect()
    }
}

/// Keeps istiod's serving certificate Secret fresh (leader only).
pub struct IstiodTlsKeeper {
    client: Client,
    config: IstiodTlsConfig,
    authority: Arc<Authority>,
    leader: watch::Receiver<bool>,
}

impl IstiodTlsKeeper {
    pub fn new(
        client: Client,
        config: IstiodTlsConfig,
        authority: Arc<Authority>,
        leader: watch::Receiver<bool>,
    ) -> Self {
        Self {
            client,
            config,
            authority,
            leader,
        }
    }

    fn due(&self, secret: &Secret) -> bool {
        let Some(crt) = secret.data.as_ref().and_then(|d| d.get("tls.crt")) else {
            return true;
        };
        let Some(leaf) = signet_core::pem::certificates(&crt.0)
            .ok()
            .and_then(|c| c.into_iter().next())
        else {
            return true;
        };
        match signet_core::chain::validity(&leaf) {
            Ok((nb, na)) => {
                self.authority.clock().now()
                    >= signet_core::clock::renew_time(nb, na, signet_core::clock::RENEW_AT)
            }
            Err(_) => true,
        }
    }

    /// Issues and writes the certificate when missing or due. Returns whether it wrote.
    pub async fn reconcile_once(&self) -> Result<bool, String> {
        if !*self.leader.borrow() {
            return Ok(false);
        }
        let api: Api<Secret> = Api::namespaced(self.client.clone(), &self.config.namespace);
        let current = api.get_opt(&self.config.secret).await.map_err(kube_err)?;
        if current.as_ref().is_some_and(|s| !self.due(s)) {
            return Ok(false);
        }
        let names: Vec<signet_core::names::San> = self
            .config
            .dns_names()
            .iter()
            .map(|n| signet_core::names::DnsName::new(n).map(signet_core::names::San::Dns))
            .collect::<Result<_, _>>()
            .map_err(|e| e.to_string())?;
        let (key, chain) =
            signet_core::mint::issue_own_server_cert(&self.authority, "istiod-tls", &names)
                .await
                .map_err(|e| e.to_string())?;
        if !*self.leader.borrow() {
            return Ok(false);
        }
        let mut crt = chain.leaf_pem();
        crt.extend(chain.intermediate_pems());
        let data: BTreeMap<String, ByteString> = [
            ("tls.crt".to_owned(), ByteString(crt.into_bytes())),
            (
                "tls.key".to_owned(),
                ByteString(key.to_pem().as_bytes().to_vec()),
            ),
            (
                "ca.crt".to_owned(),
                ByteString(chain.trust_bundle().to_pem().into_bytes()),
            ),
        ]
        .into();
        let result = match current {
            Some(mut s) => {
                s.data = Some(data);
                api.replace(&self.config.secret, &PostParams::default(), &s)
                    .await
            }
            None => {
                let s = Secret {
                    metadata: ObjectMeta {
                        name: Some(self.config.secret.clone()),
                        namespace: Some(self.config.namespace.clone()),
                        ..ObjectMeta::default()
                    },
                    type_: Some("kubernetes.io/tls".into()),
                    data: Some(data),
                    ..Secret::default()
                };
                api.create(&PostParams::default(), &s).await
            }
        };
        result.map(|_| true).map_err(kube_err)
    }

    pub async fn run(self) {
        let mut leader = self.leader.clone();
        loop {
            let wait = match self.reconcile_once().await {
                Ok(_) => Duration::from_secs(60),
                Err(e) => {
                    tracing::warn!(error = %e, "istiod serving certificate not reconciled");
                    Duration::from_secs(5)
                }
            };
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                r = leader.changed() => if r.is_err() { return },
            }
        }
    }
}

impl std::fmt::Debug for IstiodTlsKeeper {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IstiodTlsKeeper")
            .field("secret", &self.config.secret)
            .finish_non_exhaustive()
    }
}
