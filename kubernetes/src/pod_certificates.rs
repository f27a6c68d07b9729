//! The PodCertificateRequest signer (certificates.k8s.io/v1, Kubernetes
//! 1.37; KEP-4317): a pod's `podCertificate` projected volume makes the
//! kubelet file a request for a signer name; signet, for its names, checks
//! what the API says against the cluster, issues the pod's service-account
//! SPIFFE identity (plus DNS names by configuration) to the key of the
//! request's stub PKCS#10 CSR, and writes the chain with `notBefore`,
//! `notAfter` and the `beginRefreshAt` hint, or a `Denied`/`Failed`
//! condition with the reason [`SignError::wire`] gives.
//!
//! What the signer checks, because only a kubelet's own request passes
//! NodeRestriction and anyone with `create` may file one: the pod exists
//! with that UID, runs on that node under that service account, the node
//! and the service account have those UIDs. Like the CSR signer it acts on
//! the leader only, reads each request fresh before signing, and never
//! signs twice for one request.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{Node, Pod, ServiceAccount};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, ObjectMeta, Time};
use kube::api::{Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::watcher;
use kube::{Api, Client, ResourceExt as _};
use serde::{Deserialize, Serialize};
use signet_core::caller::{AuthMethod, Caller, Principal};
use signet_core::envelope::{Envelope, Handled};
use signet_core::metrics::Metrics;
use signet_core::names::{DnsName, San, SanPattern};
use signet_core::policy::{Grant, IssuanceRequest, Profile, TtlOverflow};
use signet_core::routing::{RouteConfig, RouteSubject, Routes};
use signet_core::spiffe::TrustDomain;
use signet_core::{IssuedChain, SignError, VerifiedCsr};
use tokio::sync::watch;

use crate::{
    CONTROLLER_DEADLINE, ReconcileError, is_conflict, kube_err, on_leadership, run_controller,
};

const FRONTEND: &str = "pod_certificates";
/// The shortest lifetime the API accepts for an issued certificate.
pub const MIN_LIFETIME: Duration = Duration::from_secs(3600);
/// How far `notBefore` may lie from the API server's clock.
pub const MAX_BACKDATE: Duration = Duration::from_secs(300);
/// `beginRefreshAt` must lie this far inside the certificate's lifetime.
const REFRESH_MARGIN: Duration = Duration::from_secs(600);

/// `frontends.pod_certificates`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PodCertificatesConfig {
    /// Signer names to act for (`<domain>/<path>`, not `kubernetes.io/...`),
    /// as pods name them in `podCertificate.signerName`.
    pub signer_names: Vec<String>,
    /// Name of an entry under `authorities`: the default route.
    pub authority: String,
    /// Other authorities, by namespace, service account or signer name.
    #[serde(default)]
    pub routes: Vec<RouteConfig>,
    /// DNS names put into every certificate besides the SPIFFE ID;
    /// `{namespace}`, `{service_account}` and `{pod}` are replaced, e.g.
    /// `{service_account}.{namespace}.svc`.
    #[serde(default)]
    pub dns_names: Vec<String>,
    /// When the kubelet should start refreshing, as a fraction of the
    /// lifetime (kept at least 10 minutes from either end, as the API
    /// requires).
    #[serde(default = "default_refresh_at")]
    pub refresh_at: f64,
}

fn default_refresh_at() -> f64 {
    0.5
}

impl PodCertificatesConfig {
    /// What makes the section unusable, before anything starts.
    pub fn validate(&self) -> Result<(), String> {
        if self.signer_names.is_empty() {
            return Err("signer_names is empty".into());
        }
        for s in &self.signer_names {
            let ok = s.split_once('/').is_some_and(|(domain, path)| {
                signet_core::spiffe::is_dns1123_subdomain(domain) && !path.is_empty()
            });
            if !ok {
                return Err(format!("signer name {s:?} must be <domain>/<path>"));
            }
            if s.starts_with("kubernetes.io/") || s.contains(".kubernetes.io/") {
                return Err(format!(
                    "signer name {s:?} is reserved for the Kubernetes project"
                ));
            }
        }
        if !(0.1..=0.9).contains(&self.refresh_at) {
            return Err(format!(
                "refresh_at {} must lie between 0.1 and 0.9",
                self.refresh_at
            ));
        }
        for t in &self.dns_names {
            let sample = expand(t, "ns", "sa", "pod");
            DnsName::new(&sample).map_err(|e| format!("dns_names: {t:?}: {e}"))?;
        }
        Ok(())
    }
}

fn expand(template: &str, namespace: &str, service_account: &str, pod: &str) -> String {
    template
        .replace("{namespace}", namespace)
        .replace("{service_account}", service_account)
        .replace("{pod}", pod)
}

/// certificates.k8s.io/v1 PodCertificateRequest, as Kubernetes 1.37 serves
/// it (k8s-openapi has no v1 type for it yet).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct PodCertificateRequest {
    #[serde(default)]
    pub metadata: ObjectMeta,
    pub spec: PodCertificateRequestSpec,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<PodCertificateRequestStatus>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodCertificateRequestSpec {
    pub signer_name: String,
    pub pod_name: String,
    #[serde(rename = "podUID")]
    pub pod_uid: String,
    pub service_account_name: String,
    #[serde(rename = "serviceAccountUID")]
    pub service_account_uid: String,
    pub node_name: String,
    #[serde(rename = "nodeUID")]
    pub node_uid: String,
    #[serde(default)]
    pub max_expiration_seconds: Option<i32>,
    #[serde(rename = "stubPKCS10Request", default)]
    pub stub_pkcs10_request: Option<ByteString>,
    #[serde(default)]
    pub unverified_user_annotations: Option<BTreeMap<String, String>>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodCertificateRequestStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conditions: Option<Vec<Condition>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certificate_chain: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_before: Option<Time>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub begin_refresh_at: Option<Time>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_after: Option<Time>,
}

impl k8s_openapi::Resource for PodCertificateRequest {
    const API_VERSION: &'static str = "certificates.k8s.io/v1";
    const GROUP: &'static str = "certificates.k8s.io";
    const KIND: &'static str = "PodCertificateRequest";
    const VERSION: &'static str = "v1";
    const URL_PATH_SEGMENT: &'static str = "podcertificaterequests";
    type Scope = k8s_openapi::NamespaceResourceScope;
}

impl k8s_openapi::ListableResource for PodCertificateRequest {
    const LIST_KIND: &'static str = "PodCertificateRequestList";
}

impl k8s_openapi::Metadata for PodCertificateRequest {
    type Ty = ObjectMeta;
    fn metadata(&self) -> &ObjectMeta {
        &self.metadata
    }
    fn metadata_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

impl PodCertificateRequest {
    fn is_final(&self) -> bool {
        self.status.as_ref().is_some_and(|s| {
            s.certificate_chain.as_ref().is_some_and(|c| !c.is_empty())
                || s.conditions.iter().flatten().any(|c| {
                    matches!(c.type_.as_str(), "Issued" | "Denied" | "Failed") && c.status == "True"
                })
        })
    }
}

/// What a request says about its pod (checked against the cluster before
/// [`pod_request`] is asked).
#[derive(Debug, Clone, Copy)]
pub struct PodFacts<'a> {
    pub namespace: &'a str,
    pub service_account: &'a str,
    pub pod: &'a str,
    pub max_expiration_seconds: Option<i32>,
}

/// What the signer asks an authority for, for a pod.
#[derive(Debug)]
pub struct PodRequest {
    pub caller: Caller,
    pub grant: Grant,
    pub request: IssuanceRequest,
    /// The names the certificate gets (the stub CSR names nothing).
    pub sans: Vec<San>,
    /// The longest lifetime the request allows, backdate included.
    pub max_lifetime: Duration,
}

/// How a request is routed: by its namespace, service account and signer
/// name (the trust domain is the front-end's).
pub fn route_subject<'a>(
    namespace: &'a str,
    service_account: &'a str,
    signer_name: &'a str,
    td: &'a TrustDomain,
) -> RouteSubject<'a> {
    RouteSubject {
        namespace: Some(namespace),
        service_account: Some(service_account),
        trust_domain: Some(td.as_str()),
        cert_signer: None,
        signer_name: Some(signer_name),
    }
}

/// signet recognizes no `unverifiedUserAnnotations` keys, and the API asks
/// signers to deny what they do not recognize.
pub fn check_annotations(annotations: Option<&BTreeMap<String, String>>) -> Result<(), SignError> {
    match annotations.filter(|a| !a.is_empty()) {
        None => Ok(()),
        Some(a) => Err(SignError::invalid_request(
            "unverified_user_annotations",
            format!(
                "signet recognizes no unverifiedUserAnnotations; remove {}",
                a.keys().map(String::as_str).collect::<Vec<_>>().join(", ")
            ),
        )),
    }
}

/// The caller, grant, request and names for a pod: the service account's
/// SPIFFE ID (plus `dns_names`), a lifetime up to `maxExpirationSeconds`
/// (backdate included, clamped by the authority). Pure, and shared with
/// `signet policy test`.
pub fn pod_request(
    config: &PodCertificatesConfig,
    td: &TrustDomain,
    backdate: Duration,
    pod: &PodFacts<'_>,
) -> Result<PodRequest, SignError> {
    let id = td
        .service_account_id(pod.namespace, pod.service_account)
        .map_err(|e| SignError::invalid_request("invalid_identity", e.to_string()))?;
    let mut sans = vec![San::Uri(id.clone())];
    let mut allowed = vec![SanPattern::SpiffeExact(id)];
    for t in &config.dns_names {
        let name = expand(t, pod.namespace, pod.service_account, pod.pod);
        let dns = DnsName::new(&name).map_err(|e| {
            SignError::invalid_request("invalid_name", format!("dns name {name:?}: {e}"))
        })?;
        allowed.push(
            SanPattern::parse(&name).map_err(|e| {
                SignError::invalid_request("invalid_name", format!("{name:?}: {e}"))
            })?,
        );
        sans.push(San::Dns(dns));
    }
    let profile = if sans.len() == 1 {
        Profile::Workload
    } else {
        Profile::Mtls
    };
    let grant = Grant {
        allowed_sans: allowed,
        max_ttl: None,
        profiles: vec![profile],
        allow_wildcards: false,
    };
    let max_lifetime = Duration::from_secs(
        u64::try_from(pod.max_expiration_seconds.unwrap_or(86_400)).unwrap_or(0),
    );
    let request = IssuanceRequest {
        profile,
        // The API bounds NotAfter − NotBefore, backdate included.
        ttl: Some(max_lifetime.saturating_sub(backdate)),
        ttl_overflow: TtlOverflow::Clamp,
        renewable: false,
        request_id: None,
    };
    let caller = Caller::new(
        Principal::Kubernetes(format!(
            "system:serviceaccount:{}:{}",
            pod.namespace, pod.service_account
        )),
        AuthMethod::KubernetesToken {
            cluster: "local".into(),
        },
    );
    Ok(PodRequest {
        caller,
        grant,
        request,
        sans,
        max_lifetime,
    })
}

/// What signet writes into a request's status.
#[derive(Debug, Clone)]
enum Outcome {
    Issued {
        chain: String,
        not_before: SystemTime,
        not_after: SystemTime,
        refresh_at: SystemTime,
    },
    Refused {
        type_: &'static str,
        reason: &'static str,
        message: String,
    },
}

/// Signs PodCertificateRequests for the configured signer names.
pub struct PodCertificateSigner {
    client: Client,
    config: PodCertificatesConfig,
    routes: Routes,
    leader: watch::Receiver<bool>,
    /// Outcomes decided but not yet written (uid → outcome): a retried
    /// write never signs again.
    pending: Mutex<HashMap<String, Outcome>>,
    /// Requests this process finished (see [`signet_core::once`]).
    finished: signet_core::once::Finished,
    envelope: Envelope,
}

impl std::fmt::Debug for PodCertificateSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PodCertificateSigner")
            .field("signer_names", &self.config.signer_names)
            .finish_non_exhaustive()
    }
}

impl PodCertificateSigner {
    pub fn new(
        client: Client,
        config: PodCertificatesConfig,
        routes: Routes,
        leader: watch::Receiver<bool>,
        metrics: Metrics,
    ) -> Self {
        let envelope = Envelope::new(
            FRONTEND,
            routes.default_authority().name(),
            None,
            CONTROLLER_DEADLINE,
            metrics,
        );
        Self {
            client,
            config,
            routes,
            leader,
            pending: Mutex::new(HashMap::new()),
            finished: signet_core::once::Finished::default(),
            envelope,
        }
    }

    /// Watches PodCertificateRequests and reconciles them until the stream ends.
    pub async fn run(self: Arc<Self>) {
        let api: Api<PodCertificateRequest> = Api::all(self.client.clone());
        let leadership = on_leadership(self.leader.clone());
        run_controller(
            "pod certificate signer",
            api,
            watcher::Config::default(),
            leadership,
            self,
            |pcr, ctx| async move { ctx.reconcile(pcr).await },
        )
        .await;
    }

    fn wants(&self, pcr: &PodCertificateRequest) -> bool {
        self.config.signer_names.contains(&pcr.spec.signer_name) && !pcr.is_final()
    }

    async fn reconcile(&self, pcr: Arc<PodCertificateRequest>) -> Result<Action, ReconcileError> {
        if !self.wants(&pcr) || !*self.leader.borrow() {
            return Ok(Action::await_change());
        }
        let uid = pcr.uid().unwrap_or_default();
        if self.finished.contains(&uid) {
            return Ok(Action::await_change());
        }
        let (name, namespace) = (pcr.name_any(), pcr.namespace().unwrap_or_default());
        let api = self.api(&namespace);
        let cached = self
            .pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&uid)
            .cloned();
        let (fresh, outcome) = match cached {
            Some(o) => (pcr, o),
            None => {
                // The watch cache may lag behind another signer's write.
                let fresh = match api.get_opt(&name).await {
                    Ok(Some(f)) => f,
                    Ok(None) => return Ok(Action::await_change()),
                    Err(e) => return Err(ReconcileError::Kube(kube_err(e))),
                };
                if fresh.uid().as_deref() != Some(uid.as_str()) || !self.wants(&fresh) {
                    return Ok(Action::await_change());
                }
                let mut route = None;
                let peer = format!("{namespace}/{name}");
                let principal = format!(
                    "pod {namespace}/{} on node {}",
                    fresh.spec.pod_name, fresh.spec.node_name
                );
                let signed = self
                    .envelope
                    .serve(&peer, async {
                        let r = self.sign(&fresh, &mut route).await;
                        let h = Handled::by(principal, r);
                        h.routed(route.take())
                    })
                    .await;
                let outcome = match signed {
                    Ok(o) => o,
                    Err(e) if e.kind().may_succeed_later() => {
                        return Err(ReconcileError::Sign(e));
                    }
                    Err(e) => {
                        let (type_, reason) = e.wire().pod_certificate;
                        Outcome::Refused {
                            type_,
                            reason,
                            message: e.public_message(),
                        }
                    }
                };
                self.pending
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(uid.clone(), outcome.clone());
                (Arc::new(fresh), outcome)
            }
        };
        self.write(&api, &fresh, &uid, outcome).await
    }

    /// Checks the request against the cluster, routes it, and signs.
    async fn sign(
        &self,
        pcr: &PodCertificateRequest,
        route: &mut Option<(String, String)>,
    ) -> Result<Outcome, SignError> {
        let spec = &pcr.spec;
        let namespace = pcr.namespace().unwrap_or_default();
        check_annotations(spec.unverified_user_annotations.as_ref())?;
        let stub = spec
            .stub_pkcs10_request
            .as_ref()
            .filter(|b| !b.0.is_empty())
            .ok_or_else(|| {
                SignError::invalid_request("no_csr", "spec.stubPKCS10Request is empty")
            })?;
        // Key type and proof of possession (the CSR's signature), checked
        // before anything else is looked up.
        let csr = VerifiedCsr::from_der(&stub.0)?;
        self.check_pod(&namespace, pcr).await?;

        let td = self.routes.default_authority().policy().trust_domain();
        let chosen = self.routes.choose(&route_subject(
            &namespace,
            &spec.service_account_name,
            &spec.signer_name,
            td,
        ))?;
        let authority = chosen.authority;
        if self.routes.is_routed() {
            *route = Some((chosen.route.to_owned(), authority.name().to_owned()));
        }
        let mut p = pod_request(
            &self.config,
            authority.policy().trust_domain(),
            authority.policy().config().backdate.get(),
            &PodFacts {
                namespace: &namespace,
                service_account: &spec.service_account_name,
                pod: &spec.pod_name,
                max_expiration_seconds: spec.max_expiration_seconds,
            },
        )?;
        p.request.request_id = pcr.uid();
        if self.routes.is_routed() {
            p.caller = p.caller.on_route(chosen.route);
        }
        let chain = authority
            .issue(&p.caller, &p.grant, &csr.naming(p.sans), &p.request)
            .await?;
        self.outcome(&chain, p.max_lifetime)
    }

    fn outcome(&self, chain: &IssuedChain, max: Duration) -> Result<Outcome, SignError> {
        let (nb, na) = (chain.not_before(), chain.not_after());
        let lifetime = na.duration_since(nb).unwrap_or_default();
        if lifetime < MIN_LIFETIME || lifetime > max {
            // The API refuses such a status: signed, but not deliverable
            // (e.g. the issuing CA expires within the hour).
            return Err(SignError::BackendRejected(format!(
                "the certificate's lifetime {}s is outside the API's [{}s, {}s]",
                lifetime.as_secs(),
                MIN_LIFETIME.as_secs(),
                max.as_secs()
            )));
        }
        let at = lifetime.mul_f64(self.config.refresh_at);
        let at = at.clamp(REFRESH_MARGIN, lifetime - REFRESH_MARGIN);
        let mut pem = chain.leaf_pem();
        pem.extend(chain.intermediate_pems());
        Ok(Outcome::Issued {
            chain: pem,
            not_before: nb,
            not_after: na,
            refresh_at: nb + at,
        })
    }

    /// The request's pod, node and service account, as the cluster has
    /// them; a mismatch is `unauthenticated` (denied `SignetPodMismatch`),
    /// a failed lookup retryable.
    async fn check_pod(
        &self,
        namespace: &str,
        pcr: &PodCertificateRequest,
    ) -> Result<(), SignError> {
        let spec = &pcr.spec;
        let lookup = |what: &str, e: kube::Error| {
            SignError::BackendUnavailable(format!("reading {what}: {}", kube_err(e)))
        };
        let mismatch = |m: String| Err(SignError::Unauthenticated(m));
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), namespace);
        let Some(pod) = pods
            .get_opt(&spec.pod_name)
            .await
            .map_err(|e| lookup("the pod", e))?
        else {
            return mismatch(format!("pod {namespace}/{} does not exist", spec.pod_name));
        };
        if pod.uid().as_deref() != Some(spec.pod_uid.as_str()) {
            return mismatch(format!(
                "pod {namespace}/{} has another UID than spec.podUID",
                spec.pod_name
            ));
        }
        let pod_spec = pod.spec.unwrap_or_default();
        if pod_spec.node_name.as_deref() != Some(spec.node_name.as_str()) {
            return mismatch(format!(
                "pod {namespace}/{} does not run on node {}",
                spec.pod_name, spec.node_name
            ));
        }
        // The pod must ask for this signer in a podCertificate volume (what
        // NodeRestriction checks for the kubelet; a request someone else
        // filed for a pod that never asked is denied).
        let asks = pod_spec.volumes.iter().flatten().any(|v| {
            v.projected.iter().any(|p| {
                p.sources.iter().flatten().any(|src| {
                    src.pod_certificate
                        .as_ref()
                        .is_some_and(|pc| pc.signer_name == spec.signer_name)
                })
            })
        });
        if !asks {
            return mismatch(format!(
                "pod {namespace}/{} has no podCertificate volume for signer {}",
                spec.pod_name, spec.signer_name
            ));
        }
        let account = pod_spec
            .service_account_name
            .unwrap_or_else(|| "default".to_owned());
        if account != spec.service_account_name {
            return mismatch(format!(
                "pod {namespace}/{} runs as service account {account}, not {}",
                spec.pod_name, spec.service_account_name
            ));
        }
        if matches!(
            pod.status.and_then(|s| s.phase).as_deref(),
            Some("Succeeded" | "Failed")
        ) {
            return mismatch(format!("pod {namespace}/{} has finished", spec.pod_name));
        }
        let nodes: Api<Node> = Api::all(self.client.clone());
        let node = nodes
            .get_opt(&spec.node_name)
            .await
            .map_err(|e| lookup("the node", e))?;
        if node.and_then(|n| n.metadata.uid).as_deref() != Some(spec.node_uid.as_str()) {
            return mismatch(format!(
                "node {} does not exist with spec.nodeUID",
                spec.node_name
            ));
        }
        let accounts: Api<ServiceAccount> = Api::namespaced(self.client.clone(), namespace);
        let sa = accounts
            .get_opt(&spec.service_account_name)
            .await
            .map_err(|e| lookup("the service account", e))?;
        if sa.and_then(|s| s.metadata.uid).as_deref() != Some(spec.service_account_uid.as_str()) {
            return mismatch(format!(
                "service account {namespace}/{} does not exist with spec.serviceAccountUID",
                spec.service_account_name
            ));
        }
        Ok(())
    }

    async fn write(
        &self,
        api: &Api<PodCertificateRequest>,
        pcr: &PodCertificateRequest,
        uid: &str,
        outcome: Outcome,
    ) -> Result<Action, ReconcileError> {
        if !*self.leader.borrow() {
            return Ok(Action::await_change());
        }
        let now = self.routes.default_authority().clock().now();
        let time = |t: SystemTime| {
            Time(jiff::Timestamp::try_from(t).unwrap_or(jiff::Timestamp::UNIX_EPOCH))
        };
        let condition = |type_: &str, reason: &str, message: String| Condition {
            type_: type_.to_owned(),
            status: "True".into(),
            reason: reason.to_owned(),
            message,
            last_transition_time: time(now),
            observed_generation: pcr.metadata.generation,
        };
        let status = match &outcome {
            Outcome::Issued {
                chain,
                not_before,
                not_after,
                refresh_at,
            } => PodCertificateRequestStatus {
                conditions: Some(vec![condition(
                    "Issued",
                    "SignetIssued",
                    "issued by signet".into(),
                )]),
                certificate_chain: Some(chain.clone()),
                not_before: Some(time(*not_before)),
                begin_refresh_at: Some(time(*refresh_at)),
                not_after: Some(time(*not_after)),
            },
            Outcome::Refused {
                type_,
                reason,
                message,
            } => PodCertificateRequestStatus {
                conditions: Some(vec![condition(type_, reason, message.clone())]),
                ..Default::default()
            },
        };
        // The resourceVersion makes a concurrent writer a 409 to re-read.
        let patch = serde_json::json!({
            "metadata": { "resourceVersion": pcr.resource_version() },
            "status": status,
        });
        let name = pcr.name_any();
        match api
            .patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(_) => {
                self.finished.insert(uid);
                self.pending
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .remove(uid);
                match &outcome {
                    Outcome::Issued { .. } => {
                        tracing::info!(request = %name, namespace = ?pcr.namespace(), pod = %pcr.spec.pod_name, "pod certificate issued")
                    }
                    Outcome::Refused {
                        type_,
                        reason,
                        message,
                    } => {
                        tracing::info!(request = %name, namespace = ?pcr.namespace(), pod = %pcr.spec.pod_name, condition = type_, reason, message, "pod certificate refused")
                    }
                }
                Ok(Action::await_change())
            }
            Err(e) if is_conflict(&e) => Err(ReconcileError::Conflict),
            Err(kube::Error::Api(s))
                if s.code == 422 && matches!(outcome, Outcome::Issued { .. }) =>
            {
                // The API will not take this certificate (e.g. its notBefore
                // is no longer within 5 minutes of the server's clock after
                // failed writes): fail the request instead of signing again.
                tracing::error!(request = %name, error = %s.message, "the API refused the issued status; failing the request");
                self.pending
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(
                        uid.to_owned(),
                        Outcome::Refused {
                            type_: "Failed",
                            reason: "SignetSigningFailed",
                            message: "the API refused the issued certificate's status; delete the request to retry".into(),
                        },
                    );
                Err(ReconcileError::Kube(s.message))
            }
            Err(e) => Err(ReconcileError::Kube(kube_err(e))),
        }
    }

    fn api(&self, namespace: &str) -> Api<PodCertificateRequest> {
        Api::namespaced(self.client.clone(), namespace)
    }
}
