//! The Kubernetes writers through the real kube client: every test body
//! that needs nothing only the fake can do runs twice, on the API fake
//! (`k8s::fake::…`) and on a real kube-apiserver (`k8s::conformance::…`);
//! conflict storms and dropped watches are the fake's alone.

use signet_core::testing::Ready as _;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use async_trait::async_trait;
use k8s_openapi::api::certificates::v1::CertificateSigningRequest;
use kube::api::{Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client};
use serde_json::{Value, json};
use signet_core::chain::{IssuedChain, TrustBundle};
use signet_core::clock::{Clock, ManualClock};
use signet_core::duration::HumanDuration;
use signet_core::key::{KeyAlgorithm, PrivateKey};
use signet_core::names::San;
use signet_core::policy::{AuthorityPolicy, IssuanceDecision, PolicyConfig};
use signet_core::spiffe::TrustDomain;
use signet_core::testing::CaSigner;
use signet_core::{Authority, BackendInfo, SignError, Signer, SystemClock, VerifiedCsr, pem};
use signet_istio::cacerts::{Cacerts, CacertsConfig, Layout, validate};
use signet_istio::k8s::{CacertsKeeper, RootDistributionConfig, RootDistributor};
use signet_kubernetes::csr_signer::{CsrSigner, CsrSignerConfig};
use signet_tests::cluster::Cluster;
use signet_tests::eventually;
use signet_tests::kube_fake::KubeFake;
use tokio::sync::watch;

const DAY: Duration = Duration::from_secs(86_400);
const ISTIOD: &str = "system:serviceaccount:istio-system:istiod";

fn td() -> TrustDomain {
    TrustDomain::new("cluster.local").unwrap()
}

async fn client(fake: &KubeFake) -> Client {
    let dir = tempfile::tempdir().unwrap();
    let kc = Kubeconfig::read_from(fake.kubeconfig(dir.path(), "t")).unwrap();
    Client::try_from(
        kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
            .await
            .unwrap(),
    )
    .unwrap()
}

fn authority(signer: Arc<dyn Signer>, clock: Arc<dyn Clock>) -> Arc<Authority> {
    let policy = PolicyConfig {
        max_ttl: HumanDuration(DAY),
        ..PolicyConfig::default()
    };
    Arc::new(Authority::new(
        "mesh",
        signer,
        AuthorityPolicy::new(td(), policy).unwrap(),
        clock,
    ))
}

fn csr_pem(sans: &[San]) -> Vec<u8> {
    let key = PrivateKey::generate(KeyAlgorithm::EcdsaP256).unwrap();
    pem::encode("CERTIFICATE REQUEST", &key.csr_der(None, sans).unwrap()).into_bytes()
}

fn k8s_csr(
    name: &str,
    signer: &str,
    user: &str,
    sans: &[San],
    expiration: Option<i32>,
) -> CertificateSigningRequest {
    use base64::Engine as _;
    serde_json::from_value(json!({
        "metadata": { "name": name },
        "spec": {
            "request": base64::engine::general_purpose::STANDARD.encode(csr_pem(sans)),
            "signerName": signer, "username": user,
            "usages": ["digital signature", "key encipherment", "server auth", "client auth"],
            "expirationSeconds": expiration,
        }
    }))
    .unwrap()
}

fn workload(n: &str) -> Vec<San> {
    vec![San::Uri(
        format!("spiffe://cluster.local/ns/default/sa/{n}")
            .parse()
            .unwrap(),
    )]
}

async fn approve(api: &Api<CertificateSigningRequest>, name: &str, decision: &str) {
    api.patch_approval(name, &PatchParams::default(), &Patch::Merge(json!({ "status": { "conditions": [{ "type": decision, "status": "True", "reason": "Test", "message": "t" }] } })))
        .await
        .unwrap();
}

/// How long a controller has to converge in these tests.
const WITHIN: Duration = Duration::from_secs(10);

fn csr_config(include_root: bool) -> CsrSignerConfig {
    CsrSignerConfig {
        authority: "mesh".into(),
        routes: Vec::new(),
        signer_names: vec!["signet.dev/mesh".into()],
        allowed_requesters: vec![ISTIOD.into()],
        allowed_sans: None,
        include_root,
    }
}

/// Files a CSR as its `spec.username` (the real server records the
/// impersonated author; the fake takes the field).
async fn file(cluster: &Cluster, csr: &CertificateSigningRequest) {
    let user = csr.spec.username.as_deref().expect("username");
    let api: Api<CertificateSigningRequest> = Api::all(cluster.client_as(user).await);
    api.create(&PostParams::default(), csr)
        .await
        .unwrap_or_else(|e| panic!("create CSR: {e}"));
}

signet_tests::cluster_tests!(both:
    the_csr_signer_signs_only_what_it_should,
    the_csr_signer_routes_by_signer_name_and_namespace,
    followers_do_not_write_and_a_new_leader_catches_up,
    cacerts_are_created_rotated_and_never_broken,
    the_tls_layout_works_too,
    root_configmaps_follow_namespaces_and_bundle_changes,
);

/// A fresh API fake holding the CSR `name`, filed by istiod and approved.
async fn fake_with_approved_csr(name: &str) -> (KubeFake, Client, Api<CertificateSigningRequest>) {
    let fake = KubeFake::start().await;
    let c = client(&fake).await;
    let api: Api<CertificateSigningRequest> = Api::all(c.clone());
    api.create(
        &PostParams::default(),
        &k8s_csr(name, "signet.dev/mesh", ISTIOD, &workload("demo"), None),
    )
    .await
    .unwrap();
    approve(&api, name, "Approved").await;
    (fake, c, api)
}

/// A CSR signer over `up` (system clock), running until the test ends.
fn start_csr_signer(
    c: Client,
    config: CsrSignerConfig,
    up: &Arc<CaSigner>,
    leader: watch::Receiver<bool>,
) {
    let signer = Arc::new(CsrSigner::new(
        c,
        config,
        authority(up.clone(), Arc::new(SystemClock)),
        leader,
    ));
    tokio::spawn(signer.run());
}

/// Two authorities behind one CSR signer: a request for the second signer
/// name, or for an identity in the routed namespace, is signed under the
/// second root; anything else under the first.
async fn the_csr_signer_routes_by_signer_name_and_namespace(cluster: Cluster) {
    let c = cluster.client().await;
    let now = SystemTime::now();
    let (mesh_up, pay_up) = (
        CaSigner::root(now, 365 * DAY),
        CaSigner::root(now, 365 * DAY),
    );
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let pay = Arc::new(Authority::new(
        "payments",
        pay_up.clone(),
        AuthorityPolicy::new(td(), PolicyConfig::default()).unwrap(),
        clock.clone(),
    ));
    let routes: Vec<signet_core::routing::RouteConfig> = serde_json::from_value(json!([
        { "name": "by-signer", "authority": "payments", "signer_names": ["signet.dev/payments"] },
        { "name": "by-namespace", "authority": "payments", "namespaces": ["payments"] },
    ]))
    .unwrap();
    let mut config = csr_config(false);
    config.signer_names.push("signet.dev/payments".into());
    config.routes = routes.clone();
    let (_tx, leader) = watch::channel(true);
    let routed = signet_core::routing::Routes::new(
        routes.into_iter().map(|r| (r, pay.clone())).collect(),
        authority(mesh_up.clone(), clock),
        None,
    )
    .unwrap();
    tokio::spawn(Arc::new(CsrSigner::routed(c.clone(), config, routed, leader)).run());
    let api: Api<CertificateSigningRequest> = Api::all(c);
    let in_ns = |ns: &str| {
        vec![San::Uri(
            format!("spiffe://cluster.local/ns/{ns}/sa/web")
                .parse()
                .unwrap(),
        )]
    };
    for (name, signer, sans, up) in [
        ("plain", "signet.dev/mesh", workload("demo"), &mesh_up),
        (
            "by-signer",
            "signet.dev/payments",
            workload("demo"),
            &pay_up,
        ),
        (
            "by-namespace",
            "signet.dev/mesh",
            in_ns("payments"),
            &pay_up,
        ),
    ] {
        file(&cluster, &k8s_csr(name, signer, ISTIOD, &sans, None)).await;
        approve(&api, name, "Approved").await;
        let cert = eventually(name, WITHIN, async || {
            api.get(name)
                .await
                .unwrap()
                .status
                .and_then(|s| s.certificate)
        })
        .await;
        let leaf = &pem::certificates(&cert.0).unwrap()[0];
        let root = up.trust_bundle().await.unwrap().roots()[0].clone();
        assert!(
            signet_core::chain::anchored_by(leaf, root.as_ref()),
            "{name}: signed under the routed authority's root"
        );
    }
}

async fn the_csr_signer_signs_only_what_it_should(cluster: Cluster) {
    let c = cluster.client().await;
    let up = CaSigner::root(SystemTime::now(), 365 * DAY);
    let (tx, leader) = watch::channel(true);
    start_csr_signer(c.clone(), csr_config(true), &up, leader);
    let api: Api<CertificateSigningRequest> = Api::all(c);

    // Approved, for our signer, from istiod: signed, with expirationSeconds honoured.
    file(
        &cluster,
        &k8s_csr(
            "good",
            "signet.dev/mesh",
            ISTIOD,
            &workload("demo"),
            Some(3600),
        ),
    )
    .await;
    approve(&api, "good", "Approved").await;
    let cert = eventually("certificate", WITHIN, async || {
        api.get("good")
            .await
            .unwrap()
            .status
            .and_then(|s| s.certificate)
    })
    .await;
    let certs = pem::certificates(&cert.0).unwrap();
    assert_eq!(certs.len(), 2, "leaf + root (include_root)");
    let (nb, na) = signet_core::chain::validity(&certs[0]).unwrap();
    assert_eq!(
        na.duration_since(nb).unwrap(),
        Duration::from_secs(3600 + 60)
    );
    let bundle = TrustBundle::new(vec![certs[1].clone().into()]).unwrap();
    signet_core::chain::verify_path(&certs[0], &[], &bundle, SystemTime::now()).unwrap();

    // Denied, another signer, not approved, already signed: untouched.
    file(
        &cluster,
        &k8s_csr("denied", "signet.dev/mesh", ISTIOD, &workload("a"), None),
    )
    .await;
    approve(&api, "denied", "Denied").await;
    file(
        &cluster,
        &k8s_csr(
            "other",
            "kubernetes.io/kube-apiserver-client",
            ISTIOD,
            &workload("b"),
            None,
        ),
    )
    .await;
    approve(&api, "other", "Approved").await;
    file(
        &cluster,
        &k8s_csr("pending", "signet.dev/mesh", ISTIOD, &workload("c"), None),
    )
    .await;
    file(
        &cluster,
        &k8s_csr("presigned", "signet.dev/mesh", ISTIOD, &workload("d"), None),
    )
    .await;
    // Someone else signs "presigned" while this replica is not the leader;
    // as leader it would (rightly) sign it between the approval and the
    // other signer's write.
    tx.send(false).unwrap();
    approve(&api, "presigned", "Approved").await;
    let presigned = {
        use base64::Engine as _;
        base64::engine::general_purpose::STANDARD.encode(up.ca().trust_bundle().to_pem())
    };
    api.patch_status(
        "presigned",
        &PatchParams::default(),
        // The real server takes only PEM certificates here.
        &Patch::Merge(json!({ "status": { "certificate": presigned } })),
    )
    .await
    .unwrap();
    tx.send(true).unwrap();
    let rv_before = api
        .get("presigned")
        .await
        .unwrap()
        .metadata
        .resource_version;

    // Policy failures: another trust domain, and a requester not allowed.
    let foreign = vec![San::Uri("spiffe://evil.org/ns/x/sa/y".parse().unwrap())];
    file(
        &cluster,
        &k8s_csr("foreign", "signet.dev/mesh", ISTIOD, &foreign, None),
    )
    .await;
    approve(&api, "foreign", "Approved").await;
    file(
        &cluster,
        &k8s_csr(
            "stranger",
            "signet.dev/mesh",
            "system:serviceaccount:default:app",
            &workload("e"),
            None,
        ),
    )
    .await;
    approve(&api, "stranger", "Approved").await;
    // An ID Istio would read as namespace kube-system.
    let nested = vec![San::Uri(
        "spiffe://cluster.local/ns/default/sa/x/ns/kube-system/sa/admin"
            .parse()
            .unwrap(),
    )];
    file(
        &cluster,
        &k8s_csr("nested", "signet.dev/mesh", ISTIOD, &nested, None),
    )
    .await;
    approve(&api, "nested", "Approved").await;
    for name in ["foreign", "stranger", "nested"] {
        let cond = eventually("Failed condition", WITHIN, async || {
            let s = api.get(name).await.unwrap().status?;
            s.conditions?.into_iter().find(|c| c.type_ == "Failed")
        })
        .await;
        assert_eq!(cond.reason.as_deref(), Some("SignetPolicyDenied"), "{name}");
        assert!(
            api.get(name)
                .await
                .unwrap()
                .status
                .unwrap()
                .certificate
                .is_none()
        );
    }

    // Approving the pending one later gets it signed.
    approve(&api, "pending", "Approved").await;
    eventually("pending signed", WITHIN, async || {
        api.get("pending")
            .await
            .unwrap()
            .status
            .and_then(|s| s.certificate)
    })
    .await;

    tokio::time::sleep(Duration::from_millis(300)).await;
    for name in ["denied", "other"] {
        assert!(
            api.get(name)
                .await
                .unwrap()
                .status
                .and_then(|s| s.certificate)
                .is_none(),
            "{name}"
        );
    }
    assert_eq!(
        api.get("presigned")
            .await
            .unwrap()
            .metadata
            .resource_version,
        rv_before,
        "already-signed CSRs are not rewritten"
    );
    assert_eq!(up.calls(), 2, "exactly two certificates signed");
}

#[tokio::test]
async fn conflicts_are_retried_without_signing_twice() {
    let (fake, c, api) = fake_with_approved_csr("r").await;
    let up = CaSigner::root(SystemTime::now(), 365 * DAY);
    let (_tx, leader) = watch::channel(true);
    fake.inject_conflicts(3);
    start_csr_signer(c, csr_config(false), &up, leader);
    let cert = eventually("certificate", WITHIN, async || {
        api.get("r")
            .await
            .unwrap()
            .status
            .and_then(|s| s.certificate)
    })
    .await;
    assert_eq!(
        pem::certificates(&cert.0).unwrap().len(),
        1,
        "leaf only (no intermediates, root not included)"
    );
    assert_eq!(
        up.calls(),
        1,
        "signed once despite three conflicting writes"
    );
}

/// A replica that becomes leader while its watch cache still shows a CSR
/// that another signer has just signed reads the CSR before signing, and
/// leaves it alone: a stale cache never costs the upstream a signature.
/// (Found on the real API server, where the cache lag is not on demand.)
#[tokio::test]
async fn a_new_leader_with_a_stale_cache_does_not_sign_what_is_signed() {
    let (fake, c, api) = fake_with_approved_csr("r").await;
    let up = CaSigner::root(SystemTime::now(), 365 * DAY);
    let (tx, leader) = watch::channel(false);
    start_csr_signer(c, csr_config(false), &up, leader);
    tokio::time::sleep(Duration::from_millis(300)).await; // the follower has its cache

    fake.hold_watches();
    let other = {
        use base64::Engine as _;
        base64::engine::general_purpose::STANDARD.encode(up.ca().trust_bundle().to_pem())
    };
    api.patch_status(
        "r",
        &PatchParams::default(),
        &Patch::Merge(json!({ "status": { "certificate": other } })),
    )
    .await
    .unwrap();
    let rv = api.get("r").await.unwrap().metadata.resource_version;
    tx.send(true).unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    fake.release_watches();
    tokio::time::sleep(Duration::from_millis(300)).await;

    assert_eq!(up.calls(), 0, "nothing signed");
    assert_eq!(api.get("r").await.unwrap().metadata.resource_version, rv);
}

/// A conflict storm (every write refused a hundred times over) and watches
/// dropped again and again while CSRs keep arriving: each CSR is signed
/// exactly once, none is lost, and the signer needs no restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_conflict_storm_and_dropped_watches_lose_nothing_and_sign_once() {
    let fake = KubeFake::start().await;
    let c = client(&fake).await;
    let up = CaSigner::root(SystemTime::now(), 365 * DAY);
    let (_tx, leader) = watch::channel(true);
    let api: Api<CertificateSigningRequest> = Api::all(c.clone());
    // The storm hits the test's own writes too: they retry on 409.
    let conflict = |e: &kube::Error| matches!(e, kube::Error::Api(s) if s.code == 409);
    let create = async |n: usize| {
        let name = format!("storm-{n}");
        let csr = k8s_csr(
            &name,
            "signet.dev/mesh",
            ISTIOD,
            &workload(&format!("w{n}")),
            None,
        );
        while let Err(e) = api.create(&PostParams::default(), &csr).await {
            assert!(conflict(&e), "{e}");
        }
        let approval = json!({ "status": { "conditions": [{ "type": "Approved", "status": "True", "reason": "Test", "message": "t" }] } });
        while let Err(e) = api
            .patch_approval(&name, &PatchParams::default(), &Patch::Merge(&approval))
            .await
        {
            assert!(conflict(&e), "{e}");
        }
    };
    for n in 0..20 {
        create(n).await;
    }
    fake.inject_conflicts(100);
    start_csr_signer(c.clone(), csr_config(false), &up, leader);
    // More CSRs while the watch is dropped under the signer, repeatedly.
    for n in 20..40 {
        if n % 4 == 0 {
            fake.drop_watches();
        }
        create(n).await;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    fake.drop_watches();
    fake.inject_conflicts(20);
    for n in 40..45 {
        create(n).await;
    }
    for n in 0..45 {
        let name = format!("storm-{n}");
        let cert = eventually(&name, WITHIN, async || {
            api.get(&name)
                .await
                .unwrap()
                .status
                .and_then(|s| s.certificate)
        })
        .await;
        let leaf = pem::certificates(&cert.0).unwrap().remove(0);
        let (_, parsed) = x509_parser::parse_x509_certificate(&leaf).unwrap();
        let uri = parsed
            .subject_alternative_name()
            .unwrap()
            .unwrap()
            .value
            .general_names
            .iter()
            .find_map(|g| match g {
                x509_parser::extensions::GeneralName::URI(u) => Some((*u).to_owned()),
                _ => None,
            })
            .unwrap();
        assert_eq!(uri, format!("spiffe://cluster.local/ns/default/sa/w{n}"));
    }
    // Give a duplicate signing time to show itself.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(up.calls(), 45, "each CSR signed exactly once");
}

async fn followers_do_not_write_and_a_new_leader_catches_up(cluster: Cluster) {
    let c = cluster.client().await;
    let up = CaSigner::root(SystemTime::now(), 365 * DAY);
    let (tx, leader) = watch::channel(false);
    start_csr_signer(c.clone(), csr_config(false), &up, leader);
    let api: Api<CertificateSigningRequest> = Api::all(c);
    file(
        &cluster,
        &k8s_csr("r", "signet.dev/mesh", ISTIOD, &workload("demo"), None),
    )
    .await;
    approve(&api, "r", "Approved").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        api.get("r")
            .await
            .unwrap()
            .status
            .and_then(|s| s.certificate)
            .is_none(),
        "a follower does not write"
    );
    assert_eq!(up.calls(), 0);
    tx.send(true).unwrap();
    eventually("certificate after gaining leadership", WITHIN, async || {
        api.get("r")
            .await
            .unwrap()
            .status
            .and_then(|s| s.certificate)
    })
    .await;
}

/// A backend whose root can be swapped (root rotation), or that can be made
/// to return a non-CA certificate where an intermediate was asked for.
#[derive(Debug)]
struct Switchable {
    current: ArcSwap<CaSigner>,
    lie: std::sync::atomic::AtomicBool,
}

#[async_trait]
impl Signer for Switchable {
    async fn sign(
        &self,
        d: &IssuanceDecision,
        csr: &VerifiedCsr,
    ) -> Result<IssuedChain, SignError> {
        if self.lie.load(std::sync::atomic::Ordering::SeqCst) {
            // An intermediate that may itself sign CAs (pathLen 1): not what was asked.
            let bad = IssuanceDecision::intermediate(
                "x",
                &td(),
                1,
                SystemTime::now(),
                DAY,
                Duration::ZERO,
                "t",
            );
            return self.current.load().ca().sign(&bad, csr.public_key()).await;
        }
        self.current.load().sign(d, csr).await
    }
    async fn trust_bundle(&self) -> Result<TrustBundle, SignError> {
        self.current.load().trust_bundle().await
    }
    fn describe(&self) -> BackendInfo {
        self.current.load().describe()
    }
}

fn cacerts_config(layout: Layout) -> CacertsConfig {
    CacertsConfig {
        backend: "up".into(),
        namespace: "istio-system".into(),
        secret: "cacerts".into(),
        ttl: HumanDuration(30 * DAY),
        renew_before: Some(HumanDuration(10 * DAY)),
        key: KeyAlgorithm::EcdsaP256,
        layout,
        common_name: "signet istio intermediate".into(),
        workload_ttl: HumanDuration(DAY),
        revocation_file: None,
        upstream_crl_files: vec![],
    }
}

async fn secret_files(cluster: &Cluster) -> signet_istio::cacerts::Files {
    use base64::Engine as _;
    let s = cluster
        .get("v1", "secrets", "istio-system", "cacerts")
        .await
        .expect("cacerts secret");
    s["data"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| {
            (
                k.clone(),
                base64::engine::general_purpose::STANDARD
                    .decode(v.as_str().unwrap())
                    .unwrap(),
            )
        })
        .collect()
}

/// The cacerts Secret's resourceVersion: unchanged means not written.
async fn cacerts_version(cluster: &Cluster) -> Value {
    cluster
        .get("v1", "secrets", "istio-system", "cacerts")
        .await
        .expect("cacerts secret")["metadata"]["resourceVersion"]
        .clone()
}

async fn cacerts_are_created_rotated_and_never_broken(cluster: Cluster) {
    cluster.add_namespace("istio-system", json!({})).await;
    let c = cluster.client().await;
    let clock = Arc::new(ManualClock::new(SystemTime::now()));
    let old_root = CaSigner::root(clock.now(), 60 * DAY);
    let backend = Arc::new(Switchable {
        current: ArcSwap::new(old_root.clone()),
        lie: false.into(),
    });
    let (tx, leader) = watch::channel(true);
    let keeper = CacertsKeeper::new(
        c,
        Cacerts::new(
            backend.clone(),
            cacerts_config(Layout::Istio),
            td(),
            clock.clone(),
        ),
        leader,
    );

    assert!(keeper.reconcile_once().await.unwrap(), "created");
    let first = secret_files(&cluster).await;
    assert_eq!(
        first.keys().collect::<Vec<_>>(),
        [
            "ca-cert.pem",
            "ca-key.pem",
            "cert-chain.pem",
            "root-cert.pem"
        ]
    );
    let v = validate(&first, Layout::Istio, clock.now()).unwrap();
    assert_eq!(v.roots.len(), 1);
    assert!(
        !keeper.reconcile_once().await.unwrap(),
        "nothing to do while fresh"
    );

    // Within renew_before of expiry: a new intermediate.
    clock.advance(21 * DAY);
    assert!(keeper.reconcile_once().await.unwrap(), "rotated");
    let second = secret_files(&cluster).await;
    assert_ne!(first["ca-cert.pem"], second["ca-cert.pem"]);
    validate(&second, Layout::Istio, clock.now()).unwrap();

    // A backend that returns something unusable: nothing is written.
    backend.lie.store(true, std::sync::atomic::Ordering::SeqCst);
    clock.advance(21 * DAY);
    let version = cacerts_version(&cluster).await;
    assert!(keeper.reconcile_once().await.is_err());
    assert_eq!(
        cacerts_version(&cluster).await,
        version,
        "an invalid intermediate is never written"
    );
    assert_eq!(secret_files(&cluster).await, second);
    backend
        .lie
        .store(false, std::sync::atomic::Ordering::SeqCst);

    // Root change: the new root is added next to the old one, which stays
    // until it expires.
    let new_root = CaSigner::root(clock.now(), 365 * DAY);
    backend.current.store(new_root.clone());
    assert!(keeper.reconcile_once().await.unwrap());
    let third = secret_files(&cluster).await;
    let roots = pem::certificates(&third["root-cert.pem"]).unwrap();
    assert_eq!(roots.len(), 2, "old and new roots");
    validate(&third, Layout::Istio, clock.now()).unwrap();
    // After the old root has expired, the next intermediate carries only the new one.
    clock.advance(20 * DAY);
    assert!(keeper.reconcile_once().await.unwrap());
    let fourth = secret_files(&cluster).await;
    assert_eq!(
        pem::certificates(&fourth["root-cert.pem"]).unwrap().len(),
        1
    );
    let v = validate(&fourth, Layout::Istio, clock.now()).unwrap();
    assert_eq!(v.roots[0], new_root.ca().trust_bundle().roots()[0]);

    // Conflicts (only the fake makes them on demand): reported, then
    // resolved by re-reading.
    if let Some(fake) = cluster.as_fake() {
        clock.advance(25 * DAY);
        fake.inject_conflicts(1);
        assert!(keeper.reconcile_once().await.is_err());
        assert!(keeper.reconcile_once().await.unwrap());
    }
    // Someone else rewrites the Secret: the keeper reads what is there and
    // keeps a valid set.
    let mut tampered = cluster
        .get("v1", "secrets", "istio-system", "cacerts")
        .await
        .unwrap();
    tampered["metadata"]["annotations"] = json!({ "example.com/touched": "yes" });
    cluster.apply(tampered).await;
    clock.advance(25 * DAY);
    assert!(keeper.reconcile_once().await.unwrap());
    validate(&secret_files(&cluster).await, Layout::Istio, clock.now()).unwrap();
    // Followers never write.
    let version = cacerts_version(&cluster).await;
    tx.send(false).unwrap();
    clock.advance(25 * DAY);
    assert!(!keeper.reconcile_once().await.unwrap());
    assert_eq!(cacerts_version(&cluster).await, version, "a follower wrote");
}

/// A root rotation through a [`Rotating`] slot: publish adds the next root
/// beside the same intermediate, issue mints an intermediate under the next
/// root (both roots kept), done drops the old root.
#[tokio::test]
async fn cacerts_follow_a_root_rotation_phase_by_phase() {
    use signet_core::chain::anchored_by;
    use signet_core::rotation::{Phase, Rotating, Rotation};
    let cluster = Cluster::fake().await;
    cluster.add_namespace("istio-system", json!({})).await;
    let clock = Arc::new(ManualClock::new(SystemTime::now()));
    let old = CaSigner::root(clock.now(), 365 * DAY);
    let new = CaSigner::root(clock.now(), 365 * DAY);
    let slot = Arc::new(Rotating::new(
        "up",
        old.clone(),
        [("next".to_owned(), new.clone() as Arc<dyn Signer>)].into(),
    ));
    let (_tx, leader) = watch::channel(true);
    let keeper = CacertsKeeper::new(
        cluster.client().await,
        Cacerts::new(
            slot.clone(),
            cacerts_config(Layout::Istio),
            td(),
            clock.clone(),
        ),
        leader,
    );
    let state = async || {
        let files = secret_files(&cluster).await;
        let v = validate(&files, Layout::Istio, clock.now()).unwrap();
        (files["ca-cert.pem"].clone(), v)
    };
    assert!(keeper.reconcile_once().await.unwrap());
    let (first, v) = state().await;
    assert_eq!(v.roots, [old.ca().certificate().clone()]);
    let mut rotation = Rotation::new(
        None,
        "next".into(),
        Duration::from_secs(60),
        DAY,
        Duration::from_secs(1),
        clock.now(),
        String::new(),
    );
    for (phase, roots, under) in [
        (Phase::Publish, vec![&old, &new], &old),
        (Phase::Issue, vec![&new, &old], &new),
        (Phase::Done, vec![&new], &new),
    ] {
        rotation.phase = phase;
        slot.apply(Some(&rotation)).unwrap();
        assert!(keeper.reconcile_once().await.unwrap(), "{phase}: written");
        assert!(!keeper.reconcile_once().await.unwrap(), "{phase}: settled");
        let (cert, v) = state().await;
        let mut want: Vec<Vec<u8>> = roots
            .iter()
            .map(|r| r.ca().certificate().to_vec())
            .collect();
        let mut got: Vec<Vec<u8>> = v.roots.iter().map(|r| r.to_vec()).collect();
        want.sort();
        got.sort();
        assert_eq!(got, want, "{phase}: root-cert.pem");
        assert!(
            anchored_by(&v.top, under.ca().certificate()),
            "{phase}: issued under"
        );
        // publish keeps the intermediate; issue mints one under the next root.
        assert_eq!(
            cert == first,
            phase == Phase::Publish,
            "{phase}: intermediate"
        );
    }
}

/// With a revocation file the Secret carries `ca-crl.pem`: a CRL openssl
/// verifies under the plug-in CA, listing exactly the file's serials,
/// rewritten when a serial is added and left alone otherwise.
#[tokio::test]
async fn cacerts_carry_a_crl_of_the_revocation_file() {
    use signet_core::revocation::RevocationList;
    let cluster = Cluster::fake().await;
    cluster.add_namespace("istio-system", json!({})).await;
    let dir = tempfile::tempdir().unwrap();
    let revoked = dir.path().join("revoked.yaml");
    RevocationList::revoke_in_file(&revoked, "0a1b", SystemTime::now(), None).unwrap();
    let clock = Arc::new(ManualClock::new(SystemTime::now()));
    let root = CaSigner::root(clock.now(), 365 * DAY);
    let mut config = cacerts_config(Layout::Istio);
    config.revocation_file = Some(revoked.clone());
    // Without a CRL of the root (signet does not hold this root's key),
    // istiod would refuse any ca-crl.pem: the Secret is written without one.
    let (_tx, leader) = watch::channel(true);
    let keeper = CacertsKeeper::new(
        cluster.client().await,
        Cacerts::new(root.clone(), config.clone(), td(), clock.clone()),
        leader.clone(),
    );
    assert!(keeper.reconcile_once().await.unwrap());
    assert!(!secret_files(&cluster).await.contains_key("ca-crl.pem"));
    assert!(
        !keeper.reconcile_once().await.unwrap(),
        "nothing better to write"
    );
    // With the root's CRL given, ca-crl.pem holds one CRL per CA.
    let root_crl = dir.path().join("root-crl.pem");
    // What the root's operator publishes, signed now.
    let write_root_crl = || {
        std::fs::write(
            &root_crl,
            pem::encode(
                "X509 CRL",
                &RevocationList::default()
                    .crl(root.ca(), clock.now())
                    .ready()
                    .unwrap(),
            ),
        )
        .unwrap()
    };
    write_root_crl();
    config.upstream_crl_files = vec![root_crl.clone()];
    let keeper = CacertsKeeper::new(
        cluster.client().await,
        Cacerts::new(root.clone(), config, td(), clock.clone()),
        leader,
    );
    let crl_text = async || {
        let files = secret_files(&cluster).await;
        for (name, bytes) in &files {
            std::fs::write(dir.path().join(name), bytes).unwrap();
        }
        let out = std::process::Command::new("openssl")
            .args([
                "crl",
                "-noout",
                "-text",
                "-in",
                "ca-crl.pem",
                "-CAfile",
                "ca-cert.pem",
            ])
            .current_dir(dir.path())
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success() && text.contains("verify OK"), "{text}");
        text
    };
    assert!(keeper.reconcile_once().await.unwrap());
    let text = crl_text().await;
    assert!(text.contains("Serial Number: 0A1B"), "{text}");
    let crls = secret_files(&cluster).await["ca-crl.pem"].clone();
    assert_eq!(
        String::from_utf8(crls)
            .unwrap()
            .matches("BEGIN X509 CRL")
            .count(),
        2,
        "the intermediate's and the root's"
    );
    assert!(!keeper.reconcile_once().await.unwrap(), "settled");
    RevocationList::revoke_in_file(&revoked, "ff00ff", SystemTime::now(), None).unwrap();
    assert!(
        keeper.reconcile_once().await.unwrap(),
        "a new serial is written"
    );
    let text = crl_text().await;
    assert!(
        text.contains("Serial Number: 0A1B") && text.contains("Serial Number: FF00FF"),
        "{text}"
    );
    assert!(!keeper.reconcile_once().await.unwrap(), "settled");
    // Before it expires (24 h), the CRL is re-signed.
    clock.advance(Duration::from_secs(13 * 3600));
    assert!(keeper.reconcile_once().await.unwrap(), "refreshed");

    // A renewal replaces the plug-in CA: the old one signs one last CRL that
    // lasts as long as its workload certificates (workload_ttl + 1h), kept
    // beside the new chain's, since Envoy wants a CRL for every CA of a chain.
    let old = validate(&secret_files(&cluster).await, Layout::Istio, clock.now()).unwrap();
    clock.advance(21 * DAY);
    write_root_crl();
    assert!(keeper.reconcile_once().await.unwrap(), "renewed");
    let files = secret_files(&cluster).await;
    let new = validate(&files, Layout::Istio, clock.now()).unwrap();
    assert_ne!(new.ca.certificate(), old.ca.certificate());
    let crls: Vec<Vec<u8>> = pem::parse_lenient(&files["ca-crl.pem"])
        .unwrap()
        .into_iter()
        .map(|b| b.der)
        .collect();
    assert_eq!(
        crls.len(),
        3,
        "the new intermediate's, the root's, the old intermediate's"
    );
    let last = crls
        .iter()
        .find(|c| signet_core::revocation::crl_valid_for(c, old.ca.certificate(), clock.now()))
        .expect("the old plug-in CA's CRL");
    assert!(
        signet_core::revocation::crl_next_update(last).unwrap() >= clock.now() + DAY,
        "it outlives the old CA's workload certificates"
    );
    assert!(!keeper.reconcile_once().await.unwrap(), "settled");
}

/// Twenty rotations, each through a burst of conflicting writes: after
/// every reconcile the Secret is either what it was or a new set that
/// validates. Nothing in between is ever stored.
#[tokio::test]
async fn a_conflict_storm_through_rotations_never_stores_a_broken_cacerts() {
    let cluster = Cluster::fake().await;
    let fake = cluster.as_fake().unwrap();
    fake.add_namespace("istio-system", json!({}));
    let c = cluster.client().await;
    let clock = Arc::new(ManualClock::new(SystemTime::now()));
    let root = CaSigner::root(clock.now(), 3650 * DAY);
    let (_tx, leader) = watch::channel(true);
    let keeper = CacertsKeeper::new(
        c,
        Cacerts::new(root, cacerts_config(Layout::Istio), td(), clock.clone()),
        leader,
    );
    keeper.reconcile_once().await.unwrap();
    let mut last = secret_files(&cluster).await;
    let (mut rotations, mut refused) = (0, 0);
    for round in 0..20u32 {
        clock.advance(21 * DAY);
        fake.inject_conflicts(round % 4);
        let mut done = false;
        for _ in 0..5 {
            let result = keeper.reconcile_once().await;
            let stored = secret_files(&cluster).await;
            if stored != last {
                validate(&stored, Layout::Istio, clock.now())
                    .unwrap_or_else(|e| panic!("round {round}: a broken cacerts was stored: {e}"));
                last = stored;
                rotations += 1;
            }
            match result {
                Ok(_) => {
                    done = true;
                    break;
                }
                Err(_) => refused += 1,
            }
        }
        assert!(done, "round {round} never succeeded");
    }
    assert_eq!(rotations, 20);
    assert_eq!(
        refused,
        (0..20).map(|r| r % 4).sum::<u32>(),
        "each conflict is one failed write"
    );
}

async fn the_tls_layout_works_too(cluster: Cluster) {
    cluster.add_namespace("istio-system", json!({})).await;
    let c = cluster.client().await;
    let up = CaSigner::root(SystemTime::now(), 365 * DAY);
    let (_tx, leader) = watch::channel(true);
    let keeper = CacertsKeeper::new(
        c,
        Cacerts::new(up, cacerts_config(Layout::Tls), td(), Arc::new(SystemClock)),
        leader,
    );
    keeper.reconcile_once().await.unwrap();
    let files = secret_files(&cluster).await;
    assert_eq!(
        files.keys().collect::<Vec<_>>(),
        ["ca.crt", "tls.crt", "tls.key"]
    );
    validate(&files, Layout::Tls, SystemTime::now()).unwrap();
}

async fn root_configmaps_follow_namespaces_and_bundle_changes(cluster: Cluster) {
    cluster
        .add_namespace("default", json!({ "istio-injection": "enabled" }))
        .await;
    cluster.add_namespace("kube-system", json!({})).await;
    let c = cluster.client().await;
    let first = CaSigner::root(SystemTime::now(), 365 * DAY);
    let backend = Arc::new(Switchable {
        current: ArcSwap::new(first.clone()),
        lie: false.into(),
    });
    let (_tx, leader) = watch::channel(true);
    let config = RootDistributionConfig {
        authority: "mesh".into(),
        configmap: "istio-ca-root-cert".into(),
        namespace_selector: "istio-injection=enabled".into(),
        poll: HumanDuration(Duration::from_millis(200)),
    };
    let dist = Arc::new(RootDistributor::new(
        c,
        config,
        authority(backend.clone(), Arc::new(SystemClock)),
        leader,
    ));
    tokio::spawn(dist.run());
    let root_of = async |ns: &str| {
        cluster
            .get("v1", "configmaps", ns, "istio-ca-root-cert")
            .await
            .map(|cm| cm["data"]["root-cert.pem"].as_str().unwrap().to_owned())
    };
    let pem1 = eventually("configmap in default", WITHIN, async || {
        root_of("default").await
    })
    .await;
    assert_eq!(pem1, first.ca().trust_bundle().to_pem());
    let cm = cluster
        .get("v1", "configmaps", "default", "istio-ca-root-cert")
        .await
        .unwrap();
    assert_eq!(cm["metadata"]["labels"]["istio.io/config"], "true");
    // A new selected namespace gets one; unselected ones never do.
    cluster
        .add_namespace("shop", json!({ "istio-injection": "enabled" }))
        .await;
    eventually("configmap in a new namespace", WITHIN, async || {
        root_of("shop").await
    })
    .await;
    assert!(root_of("kube-system").await.is_none());
    // The bundle changes: every ConfigMap follows.
    let second = CaSigner::root(SystemTime::now(), 365 * DAY);
    backend.current.store(second.clone());
    let want = second.ca().trust_bundle().to_pem();
    for ns in ["default", "shop"] {
        eventually("updated configmap", WITHIN, async || {
            root_of(ns).await.filter(|p| *p == want)
        })
        .await;
    }
}
