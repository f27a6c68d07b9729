//! The Kubernetes CSR signer (certificates.k8s.io/v1): signs Approved
//! CertificateSigningRequests for its signer names (istiod's RA mode files
//! them), after a fresh read, once, on the leader only; refusals become
//! `Failed` conditions.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::ByteString;
use k8s_openapi::api::certificates::v1::{
    CertificateSigningRequest, CertificateSigningRequestCondition,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::PostParams;
use kube::runtime::controller::Action;
use kube::runtime::watcher;
use kube::{Api, Client, ResourceExt as _};
use serde::Deserialize;
use signet_core::caller::{AuthMethod, Caller, Principal};
use signet_core::envelope::{Envelope, Handled};
use signet_core::metrics::Metrics;
use signet_core::names::{San, SanPattern};
use signet_core::policy::{Grant, IssuanceRequest, Profile, TtlOverflow};
use signet_core::routing::{RouteSubject, Routes};
use signet_core::{Authority, SignError, VerifiedCsr};
use tokio::sync::watch;

use crate::{
    CONTROLLER_DEADLINE, ReconcileError, is_conflict, kube_err, on_leadership, run_controller,
};

fn default_allowed_sans() -> Option<Vec<SanPattern>> {
    None
}

/// `frontends.kubernetes_csr`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CsrSignerConfig {
    /// Name of an entry under `authorities`: the default route.
    pub authority: String,
    /// Other authorities, by signer name, or by the namespace and service
    /// account of the SPIFFE ID requested (first match wins).
    #[serde(default)]
    pub routes: Vec<signet_core::routing::RouteConfig>,
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
    routes: Routes,
    grant: Grant,
    leader: watch::Receiver<bool>,
    /// Certificates signed but not yet written (uid → PEM), so a retried
    /// write never signs again.
    pending: Mutex<HashMap<String, String>>,
    /// CSRs this process wrote a certificate into (see [`signet_core::once`]).
    finished: signet_core::once::Finished,
    envelope: Envelope,
}

impl CsrSigner {
    /// One authority for every request (no routes).
    pub fn new(
        client: Client,
        config: CsrSignerConfig,
        authority: Arc<Authority>,
        leader: watch::Receiver<bool>,
    ) -> Self {
        Self::routed(client, config, Routes::single(authority), leader)
    }

    /// Requests routed among authorities.
    pub fn routed(
        client: Client,
        config: CsrSignerConfig,
        routes: Routes,
        leader: watch::Receiver<bool>,
    ) -> Self {
        let authority = routes.default_authority().clone();
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
            routes,
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
            self.routes.default_authority().name(),
            None,
            CONTROLLER_DEADLINE,
            metrics,
        );
        self
    }

    /// Watches CSRs and reconciles them until the stream ends.
    pub async fn run(self: Arc<Self>) {
        let api: Api<CertificateSigningRequest> = Api::all(self.client.clone());
        let leadership = on_leadership(self.leader.clone());
        run_controller(
            "csr signer",
            api,
            watcher::Config::default(),
            leadership,
            self,
            |csr, ctx| async move { ctx.reconcile(csr).await },
        )
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
                        let mut route = None;
                        let h = Handled::by(requester, self.sign(&fresh, &mut route).await);
                        h.routed(route)
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

    async fn sign(
        &self,
        csr: &CertificateSigningRequest,
        route: &mut Option<(String, String)>,
    ) -> Result<String, SignError> {
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
        let mut caller = Caller::new(
            Principal::Kubernetes(requester),
            AuthMethod::KubernetesToken {
                cluster: "local".into(),
            },
        );
        // The workload's namespace and account, from the SPIFFE ID asked for.
        let account = verified.requested_sans().iter().find_map(|s| match s {
            San::Uri(id) => id
                .mesh_identity()
                .ok()
                .flatten()
                .map(|(ns, sa)| (ns.to_owned(), sa.to_owned(), id.trust_domain().to_owned())),
            _ => None,
        });
        let chosen = self.routes.choose(&RouteSubject {
            namespace: account.as_ref().map(|a| a.0.as_str()),
            service_account: account.as_ref().map(|a| a.1.as_str()),
            trust_domain: account.as_ref().map(|a| a.2.as_str()),
            cert_signer: None,
            signer_name: Some(&csr.spec.signer_name),
        })?;
        if self.routes.is_routed() {
            *route = Some((chosen.route.to_owned(), chosen.authority.name().to_owned()));
            caller = caller.on_route(chosen.route);
        }
        let chain = chosen
            .authority
            .issue(&caller, &self.grant, &verified, &request)
            .await?;
        let mut pem = chain.leaf_pem();
        pem.extend(chain.intermediate_pems());
        if self.config.include_root {
            // istiod takes the last certificate as the root: the one this
            // chain leads to goes last, other roots (a rotation's next)
            // before it.
            pem.push_str(&chain.trust_bundle_pem_anchor_last());
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
        let reason = e.wire().csr_failed_reason;
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
                    jiff::Timestamp::try_from(self.routes.default_authority().clock().now())
                        .unwrap_or(jiff::Timestamp::UNIX_EPOCH),
                )),
                last_transition_time: Some(Time(
                    jiff::Timestamp::try_from(self.routes.default_authority().clock().now())
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

impl std::fmt::Debug for CsrSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CsrSigner").finish_non_exhaustive()
    }
}
