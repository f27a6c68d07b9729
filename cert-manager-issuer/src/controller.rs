//! The controllers: issuers (build, health, `Ready`) and the
//! `cert-manager.io/v1` CertificateRequests that name them.
//!
//! Every replica watches; only the leader builds issuers and writes. Writes
//! carry the resourceVersion read, so a conflict means "read again".
//!
//! A request is signed at most once:
//! - before the first attempt the request is annotated with
//!   [`REQUEST_ID_ANNOTATION`]; that ID goes to the backend, and backends
//!   with idempotency (cert_manager's request names, cloud CAs' tokens)
//!   return the first certificate for a repeated ID;
//! - a certificate signed but not yet written is kept in memory, so a failed
//!   status write is retried without signing again;
//! - a request found annotated but unfinished by a process that did not
//!   start it (signet restarted, or leadership moved, mid-flight) is signed
//!   again only when that cannot issue a second certificate (idempotent or
//!   in-process signing); otherwise it is failed with an explanation.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use base64::Engine as _;
use k8s_openapi::api::core::v1::Secret;
use kube::api::PostParams;
use kube::runtime::controller::Action;
use kube::runtime::watcher;
use kube::{Api, Client, ResourceExt as _};
use serde::Deserialize;
use signet_backends::BackendConfig;
use signet_backends::cert_manager::{CertificateRequest, RequestCondition};
use signet_core::duration::HumanDuration;
use signet_core::envelope::{Envelope, Handled};
use signet_core::spiffe::TrustDomain;
use signet_core::worker::{Backoff, Next, Worker};
use signet_core::{Clock, SignError, Signer, VerifiedCsr};
use tokio::sync::watch;

use crate::crd::{IssuerCondition, IssuerSpec, IssuerStatus, SignetClusterIssuer, SignetIssuer};
use crate::issuer::{BuildError, Issuer, IssuerKey, IssuerKind, RequestParams};
use crate::resolve::{self, ResolveError, Scope};

/// The API group whose requests signet answers.
pub const GROUP: &str = "signet.dev";
/// Annotation recording that signing has started, with the request ID.
pub const REQUEST_ID_ANNOTATION: &str = "signet.dev/request-id";
/// When signing started (RFC 3339), to know whether a backend's idempotency
/// window still covers a resumed attempt.
pub const STARTED_ANNOTATION: &str = "signet.dev/signing-started";

/// signet's own namespace, as cert-manager defaults its cluster resource
/// namespace to its own.
fn default_cluster_resource_namespace() -> String {
    std::env::var("POD_NAMESPACE").unwrap_or_else(|_| "signet".to_owned())
}
fn default_health_interval() -> HumanDuration {
    HumanDuration::from_secs(60)
}

/// `frontends.cert_manager` of the config file.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ControllerConfig {
    /// Where SignetClusterIssuers' Secret references are read.
    #[serde(default = "default_cluster_resource_namespace")]
    pub cluster_resource_namespace: String,
    /// How often each issuer's backend is checked (and its Secrets re-read).
    #[serde(default = "default_health_interval")]
    pub health_interval: HumanDuration,
}

impl Default for ControllerConfig {
    fn default() -> Self {
        Self {
            cluster_resource_namespace: default_cluster_resource_namespace(),
            health_interval: default_health_interval(),
        }
    }
}

pub use signet_kubernetes::ReconcileError;

fn kube_err(e: kube::Error) -> ReconcileError {
    if signet_kubernetes::is_conflict(&e) {
        ReconcileError::Conflict
    } else {
        ReconcileError::Kube(signet_kubernetes::kube_err(e))
    }
}

/// A certificate signed and not yet written.
#[derive(Clone)]
struct Signed {
    certificate: String,
    ca: String,
}

/// Starts a backend from a resolved config; the default is
/// [`signet_backends::build`]. Tests substitute fault-injecting signers.
pub type BackendFactory = Arc<
    dyn Fn(
            String,
            BackendConfig,
            Arc<dyn Clock>,
        ) -> futures::future::BoxFuture<'static, Result<Arc<dyn Signer>, String>>
        + Send
        + Sync,
>;

fn default_factory() -> BackendFactory {
    Arc::new(|name, config, clock| {
        Box::pin(async move {
            signet_backends::build(&name, &config, clock)
                .await
                .map_err(|e| e.to_string())
        })
    })
}

/// Shared state of the controllers.
pub struct IssuerController {
    factory: BackendFactory,
    client: Client,
    config: ControllerConfig,
    trust_domain: TrustDomain,
    clock: Arc<dyn Clock>,
    leader: watch::Receiver<bool>,
    /// Built issuers; builds are serialised by the lock.
    issuers: tokio::sync::Mutex<HashMap<IssuerKey, Arc<Issuer>>>,
    /// uid → certificate signed but not yet written.
    signed: Mutex<HashMap<String, Signed>>,
    /// uids this process has started signing.
    started: Mutex<HashSet<String>>,
    /// uid → transient failures so far (for backoff).
    failures: Mutex<HashMap<String, u32>>,
    metrics: signet_core::metrics::Metrics,
    /// Requests this process finished (see [`signet_core::once`]).
    finished: signet_core::once::Finished,
}

impl std::fmt::Debug for IssuerController {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IssuerController")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Sets a condition, keeping lastTransitionTime when the status is unchanged.
/// Returns whether anything changed.
fn set_condition(
    conditions: &mut Vec<RequestCondition>,
    now: &str,
    type_: &str,
    status: &str,
    reason: &str,
    message: &str,
) -> bool {
    let now = now.to_owned();
    match conditions.iter_mut().find(|c| c.type_ == type_) {
        Some(c) => {
            let changed = c.status != status
                || c.reason.as_deref() != Some(reason)
                || c.message.as_deref() != Some(message);
            if c.status != status {
                c.last_transition_time = Some(now);
            }
            c.status = status.to_owned();
            c.reason = Some(reason.to_owned());
            c.message = Some(message.to_owned());
            changed
        }
        None => {
            conditions.push(RequestCondition {
                type_: type_.to_owned(),
                status: status.to_owned(),
                reason: Some(reason.to_owned()),
                message: Some(message.to_owned()),
                last_transition_time: Some(now),
            });
            true
        }
    }
}

impl IssuerController {
    /// Now, as cert-manager writes condition times.
    fn now_rfc3339(&self) -> String {
        signet_core::clock::rfc3339(self.clock.now())
    }

    pub fn new(
        client: Client,
        config: ControllerConfig,
        trust_domain: TrustDomain,
        clock: Arc<dyn Clock>,
        leader: watch::Receiver<bool>,
    ) -> Self {
        Self {
            factory: default_factory(),
            client,
            config,
            trust_domain,
            clock,
            leader,
            issuers: tokio::sync::Mutex::new(HashMap::new()),
            signed: Mutex::new(HashMap::new()),
            started: Mutex::new(HashSet::new()),
            failures: Mutex::new(HashMap::new()),
            metrics: signet_core::metrics::Metrics::default(),
            finished: signet_core::once::Finished::default(),
        }
    }

    /// Records signing outcomes in `metrics` (front-end `cert_manager`, the
    /// issuer as authority), like every other front-end.
    pub fn with_metrics(mut self, metrics: signet_core::metrics::Metrics) -> Self {
        self.metrics = metrics;
        self
    }

    /// Builds backends with `factory` instead of [`signet_backends::build`].
    pub fn with_backend_factory(mut self, factory: BackendFactory) -> Self {
        self.factory = factory;
        self
    }

    fn is_leader(&self) -> bool {
        *self.leader.borrow()
    }

    /// Runs the three controllers until they end.
    pub async fn run(self: Arc<Self>) {
        tokio::join!(
            self.clone().run_issuers::<SignetIssuer>(),
            self.clone().run_issuers::<SignetClusterIssuer>(),
            self.clone().run_requests(),
            self.clone().sweep(),
        );
    }

    /// Stops issuers that were deleted, and all of them when leadership is
    /// lost (a delegated issuer keeps renewing its intermediate while it runs).
    async fn sweep(self: Arc<Self>) {
        let period = self.config.health_interval.get();
        Worker::new("cert-manager issuer sweep")
            .first(Next::In(period))
            .wake_on(self.leader.clone())
            .run(|| async {
                self.sweep_once().await;
                Ok::<_, String>(Next::In(period))
            })
            .await;
    }

    async fn sweep_once(&self) {
        if !self.is_leader() {
            let mut issuers = self.issuers.lock().await;
            if !issuers.is_empty() {
                tracing::info!(count = issuers.len(), "not the leader: stopping issuers");
                issuers.clear();
            }
            return;
        }
        let keys: Vec<IssuerKey> = self.issuers.lock().await.keys().cloned().collect();
        for key in keys {
            let exists = match key.kind {
                IssuerKind::Issuer => Api::<SignetIssuer>::namespaced(
                    self.client.clone(),
                    key.namespace.as_deref().unwrap_or_default(),
                )
                .get_opt(&key.name)
                .await
                .map(|o| o.is_some()),
                IssuerKind::ClusterIssuer => Api::<SignetClusterIssuer>::all(self.client.clone())
                    .get_opt(&key.name)
                    .await
                    .map(|o| o.is_some()),
            };
            if let Ok(false) = exists {
                tracing::info!(issuer = %key, "issuer deleted: stopped");
                self.issuers.lock().await.remove(&key);
            }
        }
    }

    // === issuers ===

    async fn run_issuers<K>(self: Arc<Self>)
    where
        K: IssuerObject,
    {
        let api: Api<K> = Api::all(self.client.clone());
        let leadership = signet_kubernetes::on_leadership(self.leader.clone());
        signet_kubernetes::run_controller(
            "cert-manager issuers",
            api,
            watcher::Config::default(),
            leadership,
            self,
            |obj, ctx| async move { ctx.reconcile_issuer(obj).await },
        )
        .await;
    }

    async fn reconcile_issuer<K: IssuerObject>(
        &self,
        obj: Arc<K>,
    ) -> Result<Action, ReconcileError> {
        if !self.is_leader() {
            return Ok(Action::await_change());
        }
        let key = obj.key();
        let generation = obj.meta().generation;
        let (status, reason, message) = match self.built_issuer(&key, obj.as_ref(), true).await {
            Ok(issuer) => match issuer.health().await {
                Ok(summary) => ("True", "Checked", format!("backend healthy: {summary}")),
                Err(e) => ("False", "NotReady", e),
            },
            Err(BuildError::Invalid(e)) => ("False", "InvalidConfig", e),
            Err(BuildError::Unavailable(e)) => ("False", "NotReady", e),
        };
        let current = obj.status().cloned().unwrap_or_default();
        let mut conditions = current.conditions.clone();
        let now = self.now_rfc3339();
        let changed = match conditions.iter_mut().find(|c| c.type_ == "Ready") {
            Some(c) => {
                let changed = c.status != status
                    || c.reason.as_deref() != Some(reason)
                    || c.message.as_deref() != Some(message.as_str())
                    || c.observed_generation != generation;
                if c.status != status {
                    c.last_transition_time = Some(now);
                }
                c.status = status.into();
                c.reason = Some(reason.into());
                c.message = Some(message.clone());
                c.observed_generation = generation;
                changed
            }
            None => {
                conditions.push(IssuerCondition {
                    type_: "Ready".into(),
                    status: status.into(),
                    reason: Some(reason.into()),
                    message: Some(message.clone()),
                    last_transition_time: Some(now),
                    observed_generation: generation,
                });
                true
            }
        };
        if changed && self.is_leader() {
            tracing::info!(issuer = %key, ready = status, reason, message = %message, "issuer status");
            let mut updated = (*obj).clone();
            *updated.status_mut() = Some(IssuerStatus { conditions });
            K::api(&self.client, &key)
                .replace_status(&key.name, &PostParams::default(), &updated)
                .await
                .map_err(kube_err)?;
        }
        let every = self.config.health_interval.get();
        Ok(Action::requeue(if status == "True" {
            every
        } else {
            every.min(Duration::from_secs(15))
        }))
    }

    /// The running issuer for `obj`, built (or rebuilt) when its generation
    /// changed — or, with `check_secrets`, when a Secret it read changed.
    async fn built_issuer<K: IssuerObject>(
        &self,
        key: &IssuerKey,
        obj: &K,
        check_secrets: bool,
    ) -> Result<Arc<Issuer>, BuildError> {
        let mut issuers = self.issuers.lock().await;
        let generation = obj.meta().generation;
        if let Some(existing) = issuers.get(key)
            && existing.generation == generation
        {
            if !check_secrets || self.secrets_unchanged(key, obj.spec(), existing).await {
                return Ok(existing.clone());
            }
            tracing::info!(issuer = %key, "a Secret the issuer uses changed; rebuilding");
        }
        issuers.remove(key);
        let issuer = Arc::new(self.build(key, generation, obj.spec()).await?);
        issuers.insert(key.clone(), issuer.clone());
        Ok(issuer)
    }

    fn secret_namespace(&self, key: &IssuerKey) -> String {
        key.namespace
            .clone()
            .unwrap_or_else(|| self.config.cluster_resource_namespace.clone())
    }

    async fn secrets_unchanged(&self, key: &IssuerKey, spec: &IssuerSpec, built: &Issuer) -> bool {
        let api: Api<Secret> = Api::namespaced(self.client.clone(), &self.secret_namespace(key));
        for name in resolve::secret_names(&spec.backend) {
            let now = match api.get_opt(&name).await {
                Ok(s) => s.and_then(|s| s.metadata.resource_version),
                // Cannot tell; keep what works.
                Err(_) => return true,
            };
            if now.as_ref() != built.secret_versions.get(&name) {
                return false;
            }
        }
        true
    }

    async fn build(
        &self,
        key: &IssuerKey,
        generation: Option<i64>,
        spec: &IssuerSpec,
    ) -> Result<Issuer, BuildError> {
        let scope = match key.kind {
            IssuerKind::Issuer => Scope::Namespaced,
            IssuerKind::ClusterIssuer => Scope::Cluster,
        };
        let mut files = resolve::SecretFiles::new()
            .map_err(|e| BuildError::Unavailable(format!("private storage for Secrets: {e}")))?;
        let secrets: Api<Secret> =
            Api::namespaced(self.client.clone(), &self.secret_namespace(key));
        let (backend, versions) = resolve::resolve(&spec.backend, scope, &secrets, &mut files)
            .await
            .map_err(|e| match e {
                ResolveError::Invalid { .. } => BuildError::Invalid(e.to_string()),
                ResolveError::Secret(m) => BuildError::Unavailable(m),
            })?;
        let kind = backend.kind();
        let upstream = (self.factory)(key.to_string(), backend, self.clock.clone())
            .await
            .map_err(|e| BuildError::Invalid(format!("spec.backend: {e}")))?;
        let issuer = Issuer::start(
            key.clone(),
            generation,
            spec,
            upstream,
            versions,
            Some(files),
            &self.trust_domain,
            self.clock.clone(),
        )?;
        tracing::info!(issuer = %key, backend = kind.as_str(), mode = ?spec.mode, "issuer built");
        Ok(issuer)
    }

    /// The issuer a request names, read fresh from the API.
    async fn issuer_named(&self, key: &IssuerKey) -> Result<Arc<Issuer>, String> {
        let found = match key.kind {
            IssuerKind::Issuer => {
                let api: Api<SignetIssuer> =
                    Api::namespaced(self.client.clone(), key.namespace.as_deref().unwrap_or(""));
                match api.get_opt(&key.name).await {
                    Ok(Some(o)) => Some(self.built_issuer(key, &o, false).await),
                    Ok(None) => None,
                    Err(e) => return Err(format!("reading {key}: {e}")),
                }
            }
            IssuerKind::ClusterIssuer => {
                let api: Api<SignetClusterIssuer> = Api::all(self.client.clone());
                match api.get_opt(&key.name).await {
                    Ok(Some(o)) => Some(self.built_issuer(key, &o, false).await),
                    Ok(None) => None,
                    Err(e) => return Err(format!("reading {key}: {e}")),
                }
            }
        };
        match found {
            None => {
                self.issuers.lock().await.remove(key);
                Err(format!("{key} not found"))
            }
            Some(Ok(issuer)) => Ok(issuer),
            Some(Err(e)) => Err(format!("{key} is not ready: {e}")),
        }
    }

    // === CertificateRequests ===

    async fn run_requests(self: Arc<Self>) {
        let api: Api<CertificateRequest> = Api::all(self.client.clone());
        let leadership = signet_kubernetes::on_leadership(self.leader.clone());
        signet_kubernetes::run_controller(
            "cert-manager certificaterequests",
            api,
            watcher::Config::default(),
            leadership,
            self,
            |cr, ctx| async move { ctx.reconcile_request(cr).await },
        )
        .await;
    }

    async fn reconcile_request(
        &self,
        cr: Arc<CertificateRequest>,
    ) -> Result<Action, ReconcileError> {
        let Some(key) = open_request_for_us(&cr) else {
            return Ok(Action::await_change());
        };
        if !self.is_leader() {
            return Ok(Action::await_change());
        }
        if let Some(action) = self.answer_unapproved(&cr).await? {
            return Ok(action);
        }
        let uid = cr.uid().unwrap_or_default();
        // Finished by this process already: this copy is from a lagging cache.
        if self.finished.contains(&uid) {
            return Ok(Action::await_change());
        }
        // A certificate already signed by this process: only write it.
        let signed = lock(&self.signed).get(&uid).cloned();
        if let Some(s) = signed {
            return self.write_issued(&cr, &uid, s).await;
        }
        let issuer = match self.issuer_named(&key).await {
            Ok(i) => i,
            Err(why) => return self.pending(&cr, &why, Duration::from_secs(10)).await,
        };
        let (cr, request_id) = match self.mark_started(cr, &issuer, &uid).await? {
            Ok(started) => started,
            Err(action) => return Ok(action),
        };

        let envelope = Envelope::new(
            "cert_manager",
            key.to_string(),
            None,
            signet_kubernetes::CONTROLLER_DEADLINE,
            self.metrics.clone(),
        );
        let requester = cr.spec.username.clone().unwrap_or_else(|| "-".into());
        let request = format!("{}/{}", cr.namespace().unwrap_or_default(), cr.name_any());
        let result = envelope
            .serve(&request, async {
                Handled::by(requester, self.sign(&cr, &issuer, &request_id).await)
            })
            .await;
        match result {
            Ok(s) => {
                lock(&self.signed).insert(uid.clone(), s.clone());
                self.write_issued(&cr, &uid, s).await
            }
            Err(e) if e.kind().may_succeed_later() => {
                let n = {
                    let mut f = lock(&self.failures);
                    let n = f.entry(uid.clone()).or_insert(0);
                    *n += 1;
                    *n
                };
                let wait =
                    Backoff::new(Duration::from_secs(2), Duration::from_secs(300)).wait(n - 1);
                tracing::info!(request = %cr.name_any(), issuer = %key, error = %e, retry_in = ?wait, "signing failed; will retry");
                self.pending(&cr, &format!("Signing failed, will retry: {e}"), wait)
                    .await
            }
            Err(e) => self.fail(&cr, &uid, &e).await,
        }
    }

    /// Denied requests are marked failed, unapproved ones pending; `None`
    /// for an approved request.
    async fn answer_unapproved(
        &self,
        cr: &CertificateRequest,
    ) -> Result<Option<Action>, ReconcileError> {
        if cr.is_true("Denied") {
            let why = cr
                .condition("Denied")
                .and_then(|c| c.message.clone())
                .unwrap_or_default();
            let now = self.now_rfc3339();
            self.write(cr, |st, conds| {
                st.failure_time = Some(now.clone());
                set_condition(
                    conds,
                    &now,
                    "Ready",
                    "False",
                    "Denied",
                    &format!("The CertificateRequest was denied by an approval controller: {why}"),
                );
                true
            })
            .await?;
            return Ok(Some(Action::await_change()));
        }
        if !cr.is_true("Approved") {
            let now = self.now_rfc3339();
            self.write(cr, |_, conds| {
                set_condition(
                    conds,
                    &now,
                    "Ready",
                    "False",
                    "Pending",
                    "Waiting for the request to be approved",
                )
            })
            .await?;
            return Ok(Some(Action::await_change()));
        }
        Ok(None)
    }

    /// Records on the request that signing starts (its request ID and
    /// when), or finds that it had started: in this process, or in an
    /// earlier one whose upstream answers a repeated request ID with the
    /// same certificate. Otherwise the request fails (`Err` is the action
    /// taken): signet cannot tell whether it was issued.
    async fn mark_started(
        &self,
        cr: Arc<CertificateRequest>,
        issuer: &Issuer,
        uid: &str,
    ) -> Result<Result<(Arc<CertificateRequest>, String), Action>, ReconcileError> {
        let request_id = cr.annotations().get(REQUEST_ID_ANNOTATION).cloned();
        let started_here = lock(&self.started).contains(uid);
        let age = cr
            .annotations()
            .get(STARTED_ANNOTATION)
            .and_then(|t| t.parse::<jiff::Timestamp>().ok())
            .and_then(|t| self.clock.now().duration_since(SystemTime::from(t)).ok())
            .unwrap_or(Duration::MAX);
        let started = match request_id {
            None => {
                let mut updated = (*cr).clone();
                let annotations = updated.annotations_mut();
                annotations.insert(REQUEST_ID_ANNOTATION.to_owned(), uid.to_owned());
                annotations.insert(STARTED_ANNOTATION.to_owned(), self.now_rfc3339());
                let written = self
                    .api(&cr)
                    .replace(&cr.name_any(), &PostParams::default(), &updated)
                    .await
                    .map_err(kube_err)?;
                (Arc::new(written), uid.to_owned())
            }
            Some(id) if started_here || issuer.resumable(age) => (cr, id),
            Some(id) => {
                let e = SignError::BackendRejected(format!(
                    "signing of this request (ID {id}) started in an earlier signet process that did not finish; \
                     {} cannot tell now whether it issued a certificate, so signet will not sign it again. \
                     Delete this CertificateRequest (or renew the Certificate) to get a new one",
                    issuer.key
                ));
                return self.fail(&cr, uid, &e).await.map(Err);
            }
        };
        lock(&self.started).insert(uid.to_owned());
        Ok(Ok(started))
    }

    async fn sign(
        &self,
        cr: &CertificateRequest,
        issuer: &Issuer,
        request_id: &str,
    ) -> Result<Signed, SignError> {
        let pem = base64::engine::general_purpose::STANDARD
            .decode(cr.spec.request.trim())
            .map_err(|e| SignError::InvalidRequest {
                reason: "bad_request_encoding",
                message: format!("spec.request is not base64: {e}"),
            })?;
        let csr = VerifiedCsr::from_pem(&pem)?;
        let usages = cr.spec.usages.clone().unwrap_or_default();
        let params = RequestParams {
            duration: cr.spec.duration.as_deref(),
            is_ca: cr.spec.is_ca.unwrap_or(false),
            usages: &usages,
            username: cr.spec.username.as_deref(),
        };
        let chain = issuer.issue(&csr, params, request_id).await?;
        let mut certificate = chain.leaf_pem();
        certificate.extend(chain.intermediate_pems());
        let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
        Ok(Signed {
            certificate: b64(&certificate),
            ca: b64(&chain.trust_bundle().to_pem()),
        })
    }

    fn api(&self, cr: &CertificateRequest) -> Api<CertificateRequest> {
        Api::namespaced(self.client.clone(), &cr.namespace().unwrap_or_default())
    }

    /// Applies `change` to the status and writes it if it changed (leader only).
    async fn write(
        &self,
        cr: &CertificateRequest,
        change: impl FnOnce(
            &mut signet_backends::cert_manager::CertificateRequestStatus,
            &mut Vec<RequestCondition>,
        ) -> bool,
    ) -> Result<(), ReconcileError> {
        let mut updated = cr.clone();
        let status = updated.status.get_or_insert_with(Default::default);
        let mut conditions = status.conditions.take().unwrap_or_default();
        let changed = change(status, &mut conditions);
        status.conditions = Some(conditions);
        if !changed || !self.is_leader() {
            return Ok(());
        }
        self.api(cr)
            .replace_status(&cr.name_any(), &PostParams::default(), &updated)
            .await
            .map_err(kube_err)?;
        Ok(())
    }

    async fn write_issued(
        &self,
        cr: &CertificateRequest,
        uid: &str,
        s: Signed,
    ) -> Result<Action, ReconcileError> {
        let now = self.now_rfc3339();
        self.write(cr, |st, conds| {
            st.certificate = Some(s.certificate);
            st.ca = Some(s.ca);
            set_condition(
                conds,
                &now,
                "Ready",
                "True",
                "Issued",
                "Certificate fetched from issuer successfully",
            );
            true
        })
        .await?;
        self.finished.insert(uid);
        self.forget(uid);
        tracing::info!(request = %cr.name_any(), namespace = %cr.namespace().unwrap_or_default(), "CertificateRequest issued");
        Ok(Action::await_change())
    }

    async fn pending(
        &self,
        cr: &CertificateRequest,
        message: &str,
        retry_in: Duration,
    ) -> Result<Action, ReconcileError> {
        let now = self.now_rfc3339();
        self.write(cr, |_, conds| {
            set_condition(conds, &now, "Ready", "False", "Pending", message)
        })
        .await?;
        Ok(Action::requeue(retry_in))
    }

    async fn fail(
        &self,
        cr: &CertificateRequest,
        uid: &str,
        e: &SignError,
    ) -> Result<Action, ReconcileError> {
        let invalid = e.wire().request_at_fault;
        let message = format!("{e}");
        let now = self.now_rfc3339();
        self.write(cr, |st, conds| {
            st.failure_time = Some(now.clone());
            if invalid {
                set_condition(
                    conds,
                    &now,
                    "InvalidRequest",
                    "True",
                    e.kind().code(),
                    &message,
                );
            }
            set_condition(conds, &now, "Ready", "False", "Failed", &message);
            true
        })
        .await?;
        self.forget(uid);
        tracing::info!(request = %cr.name_any(), namespace = %cr.namespace().unwrap_or_default(), code = e.kind().code(), error = %e, "CertificateRequest failed");
        Ok(Action::await_change())
    }

    fn forget(&self, uid: &str) {
        lock(&self.signed).remove(uid);
        lock(&self.started).remove(uid);
        lock(&self.failures).remove(uid);
    }
}

/// The issuer a request names, if it is one of ours and not finished
/// (finished requests are never touched again).
fn open_request_for_us(cr: &CertificateRequest) -> Option<IssuerKey> {
    let r = &cr.spec.issuer_ref;
    if r.group.as_deref() != Some(GROUP) {
        return None;
    }
    let kind = IssuerKind::from_ref(r.kind.as_deref())?;
    let ready = cr.condition("Ready");
    let finished = ready.is_some_and(|c| {
        c.status == "True" || matches!(c.reason.as_deref(), Some("Failed" | "Denied"))
    }) || cr.status.as_ref().is_some_and(|s| s.certificate.is_some());
    if finished {
        return None;
    }
    Some(IssuerKey {
        kind,
        namespace: match kind {
            IssuerKind::Issuer => cr.namespace(),
            IssuerKind::ClusterIssuer => None,
        },
        name: r.name.clone(),
    })
}

/// What the issuer controller needs of SignetIssuer and SignetClusterIssuer.
pub trait IssuerObject:
    kube::Resource<DynamicType = ()>
    + Clone
    + std::fmt::Debug
    + serde::Serialize
    + serde::de::DeserializeOwned
    + Send
    + Sync
    + 'static
{
    fn key(&self) -> IssuerKey;
    fn spec(&self) -> &IssuerSpec;
    fn status(&self) -> Option<&IssuerStatus>;
    fn status_mut(&mut self) -> &mut Option<IssuerStatus>;
    fn api(client: &Client, key: &IssuerKey) -> Api<Self>;
}

impl IssuerObject for SignetIssuer {
    fn key(&self) -> IssuerKey {
        IssuerKey {
            kind: IssuerKind::Issuer,
            namespace: self.namespace(),
            name: self.name_any(),
        }
    }
    fn spec(&self) -> &IssuerSpec {
        &self.spec.issuer
    }
    fn status(&self) -> Option<&IssuerStatus> {
        self.status.as_ref()
    }
    fn status_mut(&mut self) -> &mut Option<IssuerStatus> {
        &mut self.status
    }
    fn api(client: &Client, key: &IssuerKey) -> Api<Self> {
        Api::namespaced(client.clone(), key.namespace.as_deref().unwrap_or_default())
    }
}

impl IssuerObject for SignetClusterIssuer {
    fn key(&self) -> IssuerKey {
        IssuerKey {
            kind: IssuerKind::ClusterIssuer,
            namespace: None,
            name: self.name_any(),
        }
    }
    fn spec(&self) -> &IssuerSpec {
        &self.spec.issuer
    }
    fn status(&self) -> Option<&IssuerStatus> {
        self.status.as_ref()
    }
    fn status_mut(&mut self) -> &mut Option<IssuerStatus> {
        &mut self.status
    }
    fn api(client: &Client, _key: &IssuerKey) -> Api<Self> {
        Api::all(client.clone())
    }
}
