//! The `cert_manager` backend with a small simulated cert-manager controller
//! that approves and signs CertificateRequests the way cert-manager's CA
//! issuer does (leaf plus intermediates in `status.certificate`, the root in
//! `status.ca`, no pathLenConstraint on CA certificates). cert-manager's own
//! controller cannot be built here (docs/conformance.md says why), so the
//! simulation stands in for it; the API server under both is the fake
//! (`cert_manager::fake::…`) and a real kube-apiserver with cert-manager's
//! own CRDs (`cert_manager::conformance::…`).
#![cfg(feature = "cert_manager")]

use signet_core::testing::Ready as _;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use base64::Engine as _;
use futures::StreamExt as _;
use kube::api::PostParams;
use kube::runtime::{WatchStreamExt as _, watcher};
use kube::{Api, Client, CustomResourceExt as _, ResourceExt as _};
use serde_json::json;
use signet_backends::cert_manager::{
    CertManagerBackend, CertManagerConfig, CertificateRequest, CertificateRequestSpec,
    IssuerRefConfig, RequestCondition, now_rfc3339,
};
use signet_backends::{BackendConfig, BackendKind};
use signet_core::caller::Caller;
use signet_core::delegated::{Delegated, IntermediateConfig};
use signet_core::duration::HumanDuration;
use signet_core::issuer::LocalCa;
use signet_core::key::{KeyAlgorithm, PrivateKey};
use signet_core::names::San;
use signet_core::policy::{
    AuthorityPolicy, Grant, IssuanceDecision, IssuanceRequest, PolicyConfig, Profile, TtlOverflow,
};
use signet_core::resilience::ResilienceConfig;
use signet_core::spiffe::TrustDomain;
use signet_core::testing;
use signet_core::{Authority, ErrorKind, Signer, SystemClock, VerifiedCsr, pem};
use signet_tests::cluster::Cluster;
use signet_tests::openssl;

const DAY: Duration = Duration::from_secs(86_400);
const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

fn td() -> TrustDomain {
    TrustDomain::new("cluster.local").unwrap()
}

// === a simulated cert-manager ===

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Approve, then sign.
    Issue,
    /// Deny.
    Deny,
    /// Never answer.
    Ignore,
    /// Answer with a certificate for some other key.
    WrongKey,
}

/// What an issued answer looks like, by issuer type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Answer {
    /// A CA (or Vault) issuer: leaf + issuing CA, `ca` the root.
    WithRoot,
    /// `ca` empty, the chain up to the issuing CA in `certificate`.
    EmptyCaWithChain,
    /// `ca` empty and the leaf alone.
    EmptyCaLeafOnly,
    /// What a SelfSigned issuer gives: a self-signed certificate that is its own `ca`.
    SelfSigned,
}

struct SimCertManager {
    root: LocalCa,
    issuing: LocalCa,
    mode: Mutex<Mode>,
    answer: Mutex<Answer>,
    /// Specs of the requests it signed.
    signed: Mutex<Vec<CertificateRequestSpec>>,
}

impl SimCertManager {
    fn new() -> Arc<Self> {
        let now = SystemTime::now();
        let root = LocalCa::self_signed_root(
            "sim root",
            PrivateKey::generate(KeyAlgorithm::EcdsaP256).unwrap(),
            now,
            365 * DAY,
        )
        .unwrap();
        let issuing = testing::intermediate_under(
            &root,
            "sim issuing CA",
            &td(),
            1,
            now,
            300 * DAY,
            Duration::ZERO,
        );
        Arc::new(Self {
            root,
            issuing,
            mode: Mutex::new(Mode::Issue),
            answer: Mutex::new(Answer::WithRoot),
            signed: Mutex::new(Vec::new()),
        })
    }

    fn set_mode(&self, m: Mode) {
        *self.mode.lock().unwrap() = m;
    }

    fn signed(&self) -> Vec<CertificateRequestSpec> {
        self.signed.lock().unwrap().clone()
    }

    fn root_pem(&self) -> String {
        pem::encode("CERTIFICATE", self.root.certificate())
    }

    fn issuing_pem(&self) -> String {
        pem::encode("CERTIFICATE", self.issuing.certificate())
    }

    /// Watches requests for Issuer `sim-ca` and answers them.
    async fn run(self: Arc<Self>, client: Client) {
        let api: Api<CertificateRequest> = Api::all(client.clone());
        let mut events = watcher(api, watcher::Config::default())
            .default_backoff()
            .boxed();
        while let Some(ev) = events.next().await {
            let Ok(watcher::Event::Apply(cr) | watcher::Event::InitApply(cr)) = ev else {
                continue;
            };
            let api: Api<CertificateRequest> =
                Api::namespaced(client.clone(), &cr.namespace().unwrap());
            // Like a controller's requeue: a refused write re-reads the
            // request and handles the newer version (no event is relied on).
            let mut cr = cr;
            for _ in 0..10 {
                match self.answer_once(&api, &cr).await {
                    Ok(()) => break,
                    Err(e) => {
                        if !matches!(&e, kube::Error::Api(s) if s.code == 409) {
                            eprintln!("sim cert-manager: status write refused: {e}");
                        }
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        match api.get_opt(&cr.name_any()).await {
                            Ok(Some(fresh)) => cr = fresh,
                            _ => break,
                        }
                    }
                }
            }
        }
    }

    /// Takes one step on `cr` (approve, then answer), as cert-manager's
    /// approver and issuer controllers do.
    async fn answer_once(
        &self,
        api: &Api<CertificateRequest>,
        cr: &CertificateRequest,
    ) -> Result<(), kube::Error> {
        if cr.spec.issuer_ref.name != "sim-ca"
            || cr.spec.issuer_ref.group.as_deref() != Some("cert-manager.io")
            || cr.condition("Ready").is_some()
        {
            return Ok(());
        }
        let mode = *self.mode.lock().unwrap();
        let mut updated = cr.clone();
        let status = updated.status.get_or_insert_with(Default::default);
        let conds = status.conditions.get_or_insert_with(Vec::new);
        let cond = |t: &str, s: &str, r: &str, m: &str| RequestCondition {
            type_: t.into(),
            status: s.into(),
            reason: Some(r.into()),
            message: Some(m.into()),
            last_transition_time: Some(now_rfc3339(&SystemClock)),
        };
        match mode {
            Mode::Ignore => return Ok(()),
            Mode::Deny => {
                conds.push(cond(
                    "Denied",
                    "True",
                    "policy.cert-manager.io",
                    "not on the list",
                ));
                conds.push(cond(
                    "Ready",
                    "False",
                    "Denied",
                    "The CertificateRequest was denied by an approval controller",
                ));
                status.failure_time = Some(now_rfc3339(&SystemClock));
            }
            Mode::Issue | Mode::WrongKey if !cr.is_true("Approved") => {
                conds.push(cond(
                    "Approved",
                    "True",
                    "cert-manager.io",
                    "Certificate request has been approved by cert-manager.io",
                ));
            }
            Mode::Issue | Mode::WrongKey => {
                let (certificate, ca) = self.sign(&cr.spec, mode);
                status.certificate = Some(B64.encode(certificate));
                // cert-manager omits an empty `ca` (a real API server
                // refuses "" as `format: byte`).
                status.ca = (!ca.is_empty()).then(|| B64.encode(ca));
                conds.push(cond(
                    "Ready",
                    "True",
                    "Issued",
                    "Certificate fetched from issuer successfully",
                ));
            }
        }
        // Counted as signed before the write (a watcher may see the answer
        // before this call returns), and uncounted if the write is refused:
        // only certificates that reached the API count.
        let issued = updated.is_true("Ready");
        if issued {
            self.signed.lock().unwrap().push(cr.spec.clone());
        }
        let result = api
            .replace_status(&cr.name_any(), &PostParams::default(), &updated)
            .await;
        if result.is_err() && issued {
            self.signed.lock().unwrap().pop();
        }
        result.map(|_| ())
    }

    /// Signs like cert-manager's CA issuer: names from the CSR, duration and
    /// usages from the spec, CA:TRUE without a path length for isCA.
    fn sign(&self, spec: &CertificateRequestSpec, mode: Mode) -> (String, String) {
        let csr = VerifiedCsr::from_pem(&B64.decode(&spec.request).unwrap()).unwrap();
        let secs: u64 = spec
            .duration
            .as_deref()
            .unwrap()
            .trim_end_matches('s')
            .parse()
            .unwrap();
        let now = SystemTime::now();
        let decision = if spec.is_ca == Some(true) {
            IssuanceDecision::ca_certificate(
                csr.common_name().unwrap_or(""),
                csr.requested_sans().to_vec(),
                None,
                now,
                Duration::from_secs(secs),
                Duration::ZERO,
                "cert-manager",
            )
        } else {
            let usages = spec.usages.clone().unwrap_or_default();
            let client = usages.iter().any(|u| u == "client auth");
            let only_uri = csr
                .requested_sans()
                .iter()
                .all(|s| matches!(s, San::Uri(_)));
            let profile = match (client, only_uri) {
                (true, true) => Profile::Workload,
                (true, false) => Profile::Mtls,
                _ => Profile::Server,
            };
            testing::upstream_decision(
                &csr,
                profile,
                Duration::from_secs(secs),
                PolicyConfig::default().backdate.get(),
                now,
                "cert-manager",
            )
        };
        let chain = if mode == Mode::WrongKey {
            let other = PrivateKey::generate(KeyAlgorithm::EcdsaP256).unwrap();
            self.issuing.sign(&decision, &other).ready().unwrap()
        } else {
            self.issuing
                .sign(&decision, csr.public_key())
                .ready()
                .unwrap()
        };
        let mut certificate = chain.leaf_pem();
        match *self.answer.lock().unwrap() {
            Answer::WithRoot => {
                certificate.push_str(&self.issuing_pem());
                (certificate, self.root_pem())
            }
            Answer::EmptyCaWithChain => {
                certificate.push_str(&self.issuing_pem());
                (certificate, String::new())
            }
            Answer::EmptyCaLeafOnly => (certificate, String::new()),
            Answer::SelfSigned => {
                let own = LocalCa::self_signed_root(
                    "self",
                    PrivateKey::generate(KeyAlgorithm::EcdsaP256).unwrap(),
                    now,
                    DAY,
                )
                .unwrap();
                let pem = pem::encode("CERTIFICATE", own.certificate());
                (pem.clone(), pem)
            }
        }
    }
}

// === set-up ===

signet_tests::cluster_tests!(both:
    leaves_through_cert_manager_carry_its_chain_and_requests_are_cleaned_up,
    a_delegated_intermediate_from_cert_manager_signs_leaves,
    denied_unanswered_and_wrong_answers_are_errors_and_leave_nothing_behind,
    kept_requests_make_request_ids_idempotent,
    every_cert_manager_layout_is_served_or_refused_with_what_to_change,
);

/// cert-manager's CRDs (its own on a real server; on the fake signet's
/// model of CertificateRequest and a schemaless Issuer), namespace `mesh`,
/// and the simulated controller running.
async fn setup(cluster: Cluster) -> (Cluster, Client, Arc<SimCertManager>) {
    let client = cluster.client().await;
    let crds = match cluster.as_fake() {
        Some(_) => vec![
            serde_json::to_value(CertificateRequest::crd()).unwrap(),
            json!({
                "apiVersion": "apiextensions.k8s.io/v1",
                "kind": "CustomResourceDefinition",
                "metadata": { "name": "issuers.cert-manager.io" },
                "spec": {
                    "group": "cert-manager.io",
                    "names": { "kind": "Issuer", "plural": "issuers", "singular": "issuer", "listKind": "IssuerList" },
                    "scope": "Namespaced",
                    "versions": [{ "name": "v1", "served": true, "storage": true,
                        "schema": { "openAPIV3Schema": { "type": "object", "x-kubernetes-preserve-unknown-fields": true } } }]
                }
            }),
        ],
        None => signet_tests::cluster::cert_manager_crds(),
    };
    cluster.install_crds(&crds).await;
    cluster.add_namespace("mesh", json!({})).await;
    let sim = SimCertManager::new();
    tokio::spawn(sim.clone().run(client.clone()));
    (cluster, client, sim)
}

fn config(keep: bool, timeout: Duration) -> CertManagerConfig {
    CertManagerConfig {
        namespace: "mesh".into(),
        issuer: IssuerRefConfig {
            name: "sim-ca".into(),
            kind: "Issuer".into(),
            group: "cert-manager.io".into(),
        },
        keep_requests: keep,
        roots_file: None,
        kubeconfig: None,
        resilience: ResilienceConfig {
            timeout: HumanDuration(timeout),
            attempts: 1,
            ..ResilienceConfig::default()
        },
    }
}

fn backend(client: &Client, keep: bool, timeout: Duration) -> Arc<dyn Signer> {
    let c = config(keep, timeout);
    let b = CertManagerBackend::with_client("cm", c.clone(), client.clone(), Arc::new(SystemClock))
        .unwrap();
    c.resilience.wrap(b)
}

fn authority(signer: Arc<dyn Signer>) -> Authority {
    let policy = PolicyConfig {
        max_ttl: HumanDuration(DAY),
        ..PolicyConfig::default()
    };
    Authority::new(
        "mesh",
        signer,
        AuthorityPolicy::new(td(), policy).unwrap(),
        Arc::new(SystemClock),
    )
}

fn workload_csr(sa: &str) -> VerifiedCsr {
    let key = PrivateKey::generate(KeyAlgorithm::EcdsaP256).unwrap();
    let id = format!("spiffe://cluster.local/ns/default/sa/{sa}")
        .parse()
        .unwrap();
    VerifiedCsr::from_der(&key.csr_der(None, &[San::Uri(id)]).unwrap()).unwrap()
}

async fn issue(
    a: &Authority,
    sa: &str,
) -> Result<signet_core::IssuedChain, signet_core::SignError> {
    let csr = workload_csr(sa);
    let grant = Grant::exact_identity(
        format!("spiffe://cluster.local/ns/default/sa/{sa}")
            .parse()
            .unwrap(),
    );
    let req = IssuanceRequest {
        profile: Profile::Workload,
        ttl: Some(Duration::from_secs(3600)),
        ttl_overflow: TtlOverflow::Refuse,
        renewable: false,
        request_id: None,
    };
    a.issue(&Caller::internal(sa), &grant, &csr, &req).await
}

async fn requests_left(cluster: &Cluster) -> usize {
    // Deletion runs in the background right after the answer.
    for _ in 0..100 {
        if cluster
            .list("cert-manager.io/v1", "certificaterequests")
            .await
            .is_empty()
        {
            return 0;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    cluster
        .list("cert-manager.io/v1", "certificaterequests")
        .await
        .len()
}

/// openssl verify of a chain: leaf, untrusted intermediates, trusted roots.
fn openssl_verify(chain: &signet_core::IssuedChain) {
    let dir = tempfile::tempdir().unwrap();
    let (leaf, inter, root) = (
        dir.path().join("leaf.pem"),
        dir.path().join("chain.pem"),
        dir.path().join("root.pem"),
    );
    std::fs::write(&leaf, chain.leaf_pem()).unwrap();
    std::fs::write(&inter, chain.intermediate_pems().concat()).unwrap();
    std::fs::write(&root, chain.trust_bundle().to_pem()).unwrap();
    openssl::verify(&root, Some(&inter), &leaf, Some("sslclient")).unwrap();
}

// === tests ===

#[test]
fn the_config_entry_parses_with_defaults() {
    let c: BackendConfig = serde_yaml_ng::from_str(
        "type: cert_manager\nnamespace: istio-system\nissuer: { name: org-ca, kind: ClusterIssuer }\n",
    )
    .unwrap();
    assert_eq!(c.kind(), BackendKind::CertManager);
    let BackendConfig::CertManager(c) = c else {
        unreachable!()
    };
    assert_eq!(c.issuer.group, "cert-manager.io");
    assert!(!c.keep_requests);
    let e = serde_yaml_ng::from_str::<BackendConfig>(
        "type: cert_manager\nnamespace: x\nissuer: { name: a }\npoll: 1s\n",
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("unknown field `poll`"), "{e}");
}

async fn leaves_through_cert_manager_carry_its_chain_and_requests_are_cleaned_up(cluster: Cluster) {
    let (cluster, client, sim) = setup(cluster).await;
    let a = authority(backend(&client, false, Duration::from_secs(10)));
    let chain = issue(&a, "web").await.unwrap();
    openssl_verify(&chain);
    assert_eq!(chain.intermediate_pems(), vec![sim.issuing_pem()]);
    assert_eq!(chain.trust_bundle().to_pem(), sim.root_pem());
    let spec = &sim.signed()[0];
    let secs: u64 = spec
        .duration
        .as_deref()
        .unwrap()
        .trim_end_matches('s')
        .parse()
        .unwrap();
    assert!((3590..=3600).contains(&secs), "{secs}");
    assert_eq!(spec.is_ca, Some(false));
    let usages = spec.usages.clone().unwrap();
    assert!(
        usages.contains(&"server auth".to_owned()) && usages.contains(&"client auth".to_owned()),
        "{usages:?}"
    );
    assert_eq!(requests_left(&cluster).await, 0);
    // The trust bundle is known once cert-manager has answered.
    assert_eq!(a.trust_bundle().await.unwrap().to_pem(), sim.root_pem());
}

async fn a_delegated_intermediate_from_cert_manager_signs_leaves(cluster: Cluster) {
    let (cluster, client, sim) = setup(cluster).await;
    let upstream = backend(&client, false, Duration::from_secs(10));
    let d = Delegated::start(
        "mesh",
        upstream,
        IntermediateConfig::default(),
        td(),
        Arc::new(SystemClock),
    );
    tokio::time::timeout(Duration::from_secs(15), d.ready())
        .await
        .expect("intermediate");
    let spec = &sim.signed()[0];
    assert_eq!(spec.is_ca, Some(true));
    let usages = spec.usages.clone().unwrap();
    assert!(
        usages.contains(&"cert sign".to_owned()) && usages.contains(&"crl sign".to_owned()),
        "{usages:?}"
    );
    let a = authority(d);
    let chain = issue(&a, "api").await.unwrap();
    // leaf ← signet intermediate ← sim issuing CA ← sim root
    assert_eq!(chain.intermediate_pems().len(), 2);
    openssl_verify(&chain);
    assert_eq!(sim.signed().len(), 1, "leaves are signed in process");
    assert_eq!(requests_left(&cluster).await, 0);
}

async fn denied_unanswered_and_wrong_answers_are_errors_and_leave_nothing_behind(cluster: Cluster) {
    let (cluster, client, sim) = setup(cluster).await;
    // A real API server takes up to 2 s to store the first request after
    // its CRD and namespace were created: the timeout leaves room for that.
    let a = authority(backend(&client, false, Duration::from_secs(4)));

    sim.set_mode(Mode::Deny);
    let e = issue(&a, "denied").await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::BackendRejected, "{e}");
    assert!(e.to_string().contains("not on the list"), "{e}");
    assert_eq!(requests_left(&cluster).await, 0);

    sim.set_mode(Mode::Ignore);
    let started = std::time::Instant::now();
    let e = issue(&a, "ignored").await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::BackendUnavailable, "{e}");
    assert!(started.elapsed() < Duration::from_secs(7));
    // The abandoned request is deleted so it cannot be issued later.
    assert_eq!(requests_left(&cluster).await, 0);

    sim.set_mode(Mode::WrongKey);
    let e = issue(&a, "wrong").await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::BadChain, "{e}");
    assert_eq!(requests_left(&cluster).await, 0);
}

async fn kept_requests_make_request_ids_idempotent(cluster: Cluster) {
    let (cluster, client, sim) = setup(cluster).await;
    let b = CertManagerBackend::with_client(
        "cm",
        config(true, Duration::from_secs(10)),
        client,
        Arc::new(SystemClock),
    )
    .unwrap();
    assert_eq!(
        b.describe().capabilities.idempotent_for,
        Some(Duration::MAX)
    );
    let csr = workload_csr("same");
    let policy = AuthorityPolicy::new(td(), PolicyConfig::default()).unwrap();
    let grant = Grant::exact_identity("spiffe://cluster.local/ns/default/sa/same".parse().unwrap());
    let req = IssuanceRequest {
        profile: Profile::Workload,
        ttl: None,
        ttl_overflow: TtlOverflow::Clamp,
        renewable: false,
        request_id: None,
    };
    let decision = policy
        .decide(
            &Caller::internal("t"),
            &grant,
            &csr,
            &req,
            SystemTime::now(),
        )
        .unwrap()
        .with_request_id("request-1");
    // Unwrapped (no resilience timeout): bound it here, for a clear failure.
    let sign = async || {
        tokio::time::timeout(Duration::from_secs(30), b.sign(&decision, &csr))
            .await
            .expect("answered within 30 s")
            .unwrap()
    };
    let first = sign().await;
    let second = sign().await;
    assert_eq!(first.leaf(), second.leaf());
    assert_eq!(sim.signed().len(), 1);
    let kept = cluster
        .list("cert-manager.io/v1", "certificaterequests")
        .await;
    assert_eq!(kept.len(), 1);
    assert!(
        kept[0]["metadata"]["name"]
            .as_str()
            .unwrap()
            .starts_with("signet-")
    );
    assert_eq!(
        kept[0]["metadata"]["labels"]["app.kubernetes.io/managed-by"],
        "signet"
    );
}

/// The Issuer `sim-ca` with `spec`.
async fn issuer_object(cluster: &Cluster, spec: serde_json::Value) {
    cluster
        .apply(json!({
            "apiVersion": "cert-manager.io/v1",
            "kind": "Issuer",
            "metadata": { "name": "sim-ca", "namespace": "mesh" },
            "spec": spec,
        }))
        .await;
}

async fn every_cert_manager_layout_is_served_or_refused_with_what_to_change(cluster: Cluster) {
    use signet_core::layout::Needs;
    let (cluster, client, sim) = setup(cluster).await;
    let direct = Needs {
        authority: "mesh".into(),
        intermediate_ttl: None,
        max_ttl: DAY,
    };
    let dir = tempfile::tempdir().unwrap();
    // A CA issuer and a Vault issuer answer with the root as `ca`.
    for (ty, spec) in [
        ("ca", json!({ "ca": { "secretName": "mesh-ca" } })),
        (
            "vault",
            json!({ "vault": { "server": "https://vault.example", "path": "pki/sign/mesh",
                "auth": { "tokenSecretRef": { "name": "vault-token", "key": "token" } } } }),
        ),
    ] {
        issuer_object(&cluster, spec).await;
        let b = backend(&client, false, Duration::from_secs(10));
        let layout = b.layout().await.unwrap();
        assert!(
            layout.facts.contains(&("issuer type".into(), ty.into())),
            "{layout}"
        );
        layout.check(&direct).unwrap();
        let chain = issue(&authority(b), ty).await.unwrap();
        openssl_verify(&chain);
        assert_eq!(chain.trust_bundle().to_pem(), sim.root_pem(), "{ty}");
    }

    // `ca` empty: the top of the chain is the anchor, unless roots_file says more.
    *sim.answer.lock().unwrap() = Answer::EmptyCaWithChain;
    let chain = issue(
        &authority(backend(&client, false, Duration::from_secs(10))),
        "noca",
    )
    .await
    .unwrap();
    assert_eq!(chain.trust_bundle().to_pem(), sim.issuing_pem());
    let roots = dir.path().join("root.pem");
    std::fs::write(&roots, sim.root_pem()).unwrap();
    let mut c = config(false, Duration::from_secs(10));
    c.roots_file = Some(roots.clone());
    let pinned: Arc<dyn Signer> =
        CertManagerBackend::with_client("cm", c.clone(), client.clone(), Arc::new(SystemClock))
            .unwrap();
    let chain = issue(&authority(pinned), "pinned").await.unwrap();
    openssl_verify(&chain);
    assert_eq!(chain.trust_bundle().to_pem(), sim.root_pem());

    // `ca` empty and no chain: the root is unknown; the refusal says to set roots_file.
    *sim.answer.lock().unwrap() = Answer::EmptyCaLeafOnly;
    let err = issue(
        &authority(backend(&client, false, Duration::from_secs(10))),
        "bare",
    )
    .await
    .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::BackendRejected, "{err}");
    assert!(err.to_string().contains("set roots_file"), "{err}");
    // ... and with the issuing CA as a root it is served.
    let issuing = dir.path().join("issuing.pem");
    std::fs::write(&issuing, sim.issuing_pem()).unwrap();
    c.roots_file = Some(issuing);
    let pinned: Arc<dyn Signer> =
        CertManagerBackend::with_client("cm", c, client.clone(), Arc::new(SystemClock)).unwrap();
    issue(&authority(pinned), "bare-pinned").await.unwrap();

    // A SelfSigned issuer: refused at start-up, and its answers refused too.
    issuer_object(&cluster, json!({ "selfSigned": {} })).await;
    let b = backend(&client, false, Duration::from_secs(10));
    let layout = b.layout().await.unwrap();
    let e = layout.check(&direct).unwrap_err();
    assert!(e.contains("SelfSigned") && e.contains("CA issuer"), "{e}");
    *sim.answer.lock().unwrap() = Answer::SelfSigned;
    let err = issue(&authority(b), "selfsigned").await.unwrap_err();
    assert!(err.to_string().contains("own key"), "{err}");
}
