//! The cert-manager issuer through the real kube client, with
//! CertificateRequests shaped like cert-manager's v1 API. Every test body
//! that needs nothing only the fake can do runs twice: on the API fake
//! (`controller::fake::…`, cert-manager's CRD as signet models it) and on a
//! real kube-apiserver with cert-manager's own CRDs from its Go module
//! (`controller::conformance::…`). Conflict storms and dropped watches are
//! the fake's alone.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use base64::Engine as _;
use kube::api::{Patch, PatchParams, PostParams};
use kube::{Api, Client, CustomResourceExt as _, ResourceExt as _};
use serde_json::{Value, json};
use signet_backends::cert_manager::CertificateRequest;
use signet_cert_manager::controller::{BackendFactory, REQUEST_ID_ANNOTATION};
use signet_cert_manager::crd::{SignetClusterIssuer, SignetIssuer};
use signet_cert_manager::{ControllerConfig, IssuerController};
use signet_core::duration::HumanDuration;
use signet_core::issuer::LocalCa;
use signet_core::key::{KeyAlgorithm, PrivateKey};
use signet_core::names::San;
use signet_core::spiffe::TrustDomain;
use signet_core::testing::{CaSigner, Fault};
use signet_core::{Signer, SystemClock, pem};
use signet_tests::cluster::Cluster;
use signet_tests::eventually;
use signet_tests::openssl;
use tokio::sync::watch;

const DAY: Duration = Duration::from_secs(86_400);
const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

struct Env {
    cluster: Arc<Cluster>,
    _leader: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Env {
    fn drop(&mut self) {
        self.task.abort();
    }
}

signet_tests::cluster_tests!(both:
    a_namespaced_issuer_with_a_local_ca_from_secrets_issues_what_openssl_verifies,
    denied_requests_are_marked_and_never_signed,
    transient_failures_stay_pending_then_succeed,
    permanent_failures_are_failed_with_a_failure_time,
    ca_requests_need_allow_ca_and_get_path_length_zero,
    a_restart_mid_flight_does_not_sign_twice,
    cluster_and_namespaced_issuers_read_secrets_from_their_own_namespaces,
    issuer_readiness_follows_its_secrets,
    followers_do_not_write_and_the_leader_catches_up,
    the_issuer_rate_limit_delays_but_does_not_fail,
    patching_a_finished_request_changes_nothing,
    a_delegated_issuer_signs_with_its_own_intermediate_and_stops_when_deleted,
);

/// The CRDs (cert-manager's own on a real server, signet's model of its
/// CertificateRequest on the fake) and namespaces `apps` and `signet`.
async fn setup(cluster: Cluster) -> (Arc<Cluster>, Client) {
    let c = cluster.client().await;
    let mut crds = vec![
        serde_json::to_value(SignetIssuer::crd()).unwrap(),
        serde_json::to_value(SignetClusterIssuer::crd()).unwrap(),
    ];
    match cluster.as_fake() {
        Some(_) => crds.push(serde_json::to_value(CertificateRequest::crd()).unwrap()),
        None => crds.extend(signet_tests::cluster::cert_manager_crds()),
    }
    cluster.install_crds(&crds).await;
    cluster.add_namespace("apps", json!({})).await;
    cluster.add_namespace("signet", json!({})).await;
    let ca = root("unused by injected backends");
    ca_secret(&cluster, "apps", "test-ca", &ca).await;
    ca_secret(&cluster, "signet", "test-ca", &ca).await;
    (Arc::new(cluster), c)
}

fn config() -> ControllerConfig {
    ControllerConfig {
        cluster_resource_namespace: "signet".into(),
        health_interval: HumanDuration::from_secs(1),
    }
}

/// Starts the controller; `factory` replaces backend construction.
fn start(cluster: Arc<Cluster>, c: Client, factory: Option<BackendFactory>) -> Env {
    let (tx, leader) = watch::channel(true);
    let mut ctl = IssuerController::new(
        c.clone(),
        config(),
        TrustDomain::new("cluster.local").unwrap(),
        Arc::new(SystemClock),
        leader,
    );
    if let Some(f) = factory {
        ctl = ctl.with_backend_factory(f);
    }
    let task = tokio::spawn(Arc::new(ctl).run());
    Env {
        cluster,
        _leader: tx,
        task,
    }
}

/// A factory that hands every issuer the same test signer.
fn fixed(signer: Arc<CaSigner>) -> BackendFactory {
    Arc::new(move |_name, _config, _clock| {
        let s: Arc<dyn Signer> = signer.clone();
        Box::pin(async move { Ok(s) })
    })
}

async fn ca_secret(cluster: &Cluster, ns: &str, name: &str, ca: &LocalCa) {
    let cert = pem::encode("CERTIFICATE", ca.certificate());
    let key = ca.private_key().unwrap().to_pem();
    cluster
        .apply(json!({
            "apiVersion": "v1", "kind": "Secret",
            "metadata": { "name": name, "namespace": ns },
            "data": { "tls.crt": B64.encode(cert), "tls.key": B64.encode(key.as_bytes()) }
        }))
        .await;
}

fn root(name: &str) -> LocalCa {
    LocalCa::self_signed_root(
        name,
        PrivateKey::generate(KeyAlgorithm::EcdsaP256).unwrap(),
        SystemTime::now(),
        365 * DAY,
    )
    .unwrap()
}

fn local_backend(secret: &str) -> Value {
    json!({ "type": "local",
        "cert_secret": { "name": secret, "key": "tls.crt" },
        "key_secret": { "name": secret, "key": "tls.key" } })
}

async fn issuer(cluster: &Cluster, ns: Option<&str>, name: &str, spec: Value) {
    let (kind, meta) = match ns {
        Some(ns) => ("SignetIssuer", json!({ "name": name, "namespace": ns })),
        None => ("SignetClusterIssuer", json!({ "name": name })),
    };
    cluster
        .apply(json!({ "apiVersion": "signet.dev/v1alpha1", "kind": kind, "metadata": meta, "spec": spec }))
        .await;
}

fn csr_pem(sans: &[San]) -> String {
    let key = PrivateKey::generate(KeyAlgorithm::EcdsaP256).unwrap();
    pem::encode("CERTIFICATE REQUEST", &key.csr_der(None, sans).unwrap())
}

fn dns(n: &str) -> San {
    San::Dns(signet_core::names::DnsName::new(n).unwrap())
}

/// A CertificateRequest as cert-manager creates it.
fn request(name: &str, issuer: &str, kind: &str, csr: &str, extra: Value) -> Value {
    let mut spec = json!({
        "request": B64.encode(csr),
        "issuerRef": { "name": issuer, "kind": kind, "group": "signet.dev" },
        "duration": "2160h0m0s",
        "usages": ["digital signature", "key encipherment", "server auth"],
        "username": "system:serviceaccount:cert-manager:cert-manager",
    });
    if let (Some(s), Some(e)) = (spec.as_object_mut(), extra.as_object()) {
        for (k, v) in e {
            s.insert(k.clone(), v.clone());
        }
    }
    json!({ "apiVersion": "cert-manager.io/v1", "kind": "CertificateRequest",
        "metadata": { "name": name, "namespace": "apps" }, "spec": spec })
}

async fn create(c: &Client, cr: Value) {
    let api: Api<CertificateRequest> = Api::namespaced(c.clone(), "apps");
    api.create(&PostParams::default(), &serde_json::from_value(cr).unwrap())
        .await
        .unwrap();
}

/// Sets Approved or Denied as an approver would (status subresource,
/// re-reading on conflict).
/// Waits until the controller has recorded that signing `name` started.
async fn request_id_recorded(c: &Client, name: &str) -> String {
    eventually("the request ID recorded", WITHIN, async || {
        get(c, name)
            .await
            .annotations()
            .get(REQUEST_ID_ANNOTATION)
            .cloned()
    })
    .await
}

/// Files a request for `host` to the SignetIssuer `issuer` and approves it,
/// as cert-manager and its approver do.
async fn file_approved(c: &Client, name: &str, issuer: &str, host: &str) {
    create(
        c,
        request(
            name,
            issuer,
            "SignetIssuer",
            &csr_pem(&[dns(host)]),
            json!({}),
        ),
    )
    .await;
    decide(c, name, "Approved").await;
}

async fn decide(c: &Client, name: &str, type_: &str) {
    for _ in 0..50 {
        if try_decide(c, name, type_).await {
            return;
        }
    }
    panic!("could not set {type_} on {name}");
}

async fn try_decide(c: &Client, name: &str, type_: &str) -> bool {
    let api: Api<CertificateRequest> = Api::namespaced(c.clone(), "apps");
    let mut cr = api.get(name).await.unwrap();
    let status = cr.status.get_or_insert_with(Default::default);
    status.conditions.get_or_insert_with(Vec::new).push(
        signet_backends::cert_manager::RequestCondition {
            type_: type_.into(),
            status: "True".into(),
            reason: Some("cert-manager.io".into()),
            message: Some(format!("{type_} by the test")),
            last_transition_time: Some(signet_backends::cert_manager::now_rfc3339(&SystemClock)),
        },
    );
    match api.replace_status(name, &PostParams::default(), &cr).await {
        Ok(_) => true,
        Err(kube::Error::Api(s)) if s.code == 409 => false,
        Err(e) => panic!("{e}"),
    }
}

async fn get(c: &Client, name: &str) -> CertificateRequest {
    Api::<CertificateRequest>::namespaced(c.clone(), "apps")
        .get(name)
        .await
        .unwrap()
}

fn ready(cr: &CertificateRequest) -> Option<(String, String)> {
    cr.condition("Ready")
        .map(|c| (c.status.clone(), c.reason.clone().unwrap_or_default()))
}

/// How long a controller has to converge in these tests.
const WITHIN: Duration = Duration::from_secs(15);

async fn wait_reason(c: &Client, name: &str, reason: &str) -> CertificateRequest {
    eventually(
        &format!("{name} Ready reason {reason}"),
        WITHIN,
        async || {
            let cr = get(c, name).await;
            (ready(&cr).map(|r| r.1) == Some(reason.to_owned())).then_some(cr)
        },
    )
    .await
}

async fn issuer_ready(c: &Client, ns: Option<&str>, name: &str) -> (String, String, String) {
    let v: Value = match ns {
        Some(ns) => serde_json::to_value(
            Api::<SignetIssuer>::namespaced(c.clone(), ns)
                .get(name)
                .await
                .unwrap(),
        )
        .unwrap(),
        None => serde_json::to_value(
            Api::<SignetClusterIssuer>::all(c.clone())
                .get(name)
                .await
                .unwrap(),
        )
        .unwrap(),
    };
    let conds = v["status"]["conditions"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    conds
        .iter()
        .find(|c| c["type"] == "Ready")
        .map(|c| {
            (
                c["status"].as_str().unwrap_or("").to_owned(),
                c["reason"].as_str().unwrap_or("").to_owned(),
                c["message"].as_str().unwrap_or("").to_owned(),
            )
        })
        .unwrap_or_default()
}

async fn wait_issuer(
    c: &Client,
    ns: Option<&str>,
    name: &str,
    status: &str,
) -> (String, String, String) {
    eventually(
        &format!("issuer {name} Ready={status}"),
        WITHIN,
        async || {
            let r = issuer_ready(c, ns, name).await;
            (r.0 == status).then_some(r)
        },
    )
    .await
}

/// A namespaced issuer `name` in "apps" on a local CA, served by a
/// controller whose backend is `up`, once the issuer is ready.
async fn running_issuer(cluster: &Arc<Cluster>, c: &Client, name: &str, up: &Arc<CaSigner>) -> Env {
    issuer(
        cluster,
        Some("apps"),
        name,
        json!({ "backend": local_backend("test-ca") }),
    )
    .await;
    let env = start(cluster.clone(), c.clone(), Some(fixed(up.clone())));
    wait_issuer(c, Some("apps"), name, "True").await;
    env
}

/// Writes status.certificate and status.ca to files; returns (leaf+chain, ca).
fn files(
    dir: &std::path::Path,
    cr: &CertificateRequest,
) -> (std::path::PathBuf, std::path::PathBuf) {
    let st = cr.status.clone().unwrap();
    let cert = B64.decode(st.certificate.unwrap()).unwrap();
    let ca = B64.decode(st.ca.unwrap()).unwrap();
    let (c, a) = (dir.join("tls.crt"), dir.join("ca.crt"));
    std::fs::write(&c, cert).unwrap();
    std::fs::write(&a, ca).unwrap();
    (c, a)
}

async fn a_namespaced_issuer_with_a_local_ca_from_secrets_issues_what_openssl_verifies(
    cluster: Cluster,
) {
    let (cluster, c) = setup(cluster).await;
    let ca = root("apps root");
    ca_secret(&cluster, "apps", "apps-ca", &ca).await;
    issuer(
        &cluster,
        Some("apps"),
        "local",
        json!({ "backend": local_backend("apps-ca") }),
    )
    .await;
    let env = start(cluster.clone(), c.clone(), None);
    let (_, reason, message) = wait_issuer(&c, Some("apps"), "local", "True").await;
    assert_eq!(reason, "Checked", "{message}");

    create(
        &c,
        request(
            "web",
            "local",
            "SignetIssuer",
            &csr_pem(&[dns("web.apps.svc")]),
            json!({}),
        ),
    )
    .await;
    // Not yet approved: Pending, nothing signed.
    let cr = wait_reason(&c, "web", "Pending").await;
    assert!(!cr.annotations().contains_key(REQUEST_ID_ANNOTATION));
    assert!(cr.status.unwrap().certificate.is_none());

    decide(&c, "web", "Approved").await;
    let cr = wait_reason(&c, "web", "Issued").await;
    assert_eq!(ready(&cr).unwrap().0, "True");
    assert_eq!(cr.annotations()[REQUEST_ID_ANNOTATION], cr.uid().unwrap());
    let dir = tempfile::tempdir().unwrap();
    let (leaf, ca_file) = files(dir.path(), &cr);
    openssl::verify(&ca_file, None, &leaf, Some("sslserver")).unwrap();
    let text = openssl::text(&leaf);
    assert!(text.contains("DNS:web.apps.svc"), "{text}");
    assert!(text.contains("TLS Web Server Authentication"), "{text}");
    assert!(!text.contains("TLS Web Client Authentication"), "{text}");
    // The requested 90 days (cert-manager's Go duration), within the 90-day default cap.
    let days = days_left(&leaf);
    assert!((89..=90).contains(&days), "{days} days");
    drop(env);
}

async fn denied_requests_are_marked_and_never_signed(cluster: Cluster) {
    let (cluster, c) = setup(cluster).await;
    let up = CaSigner::root(SystemTime::now(), 365 * DAY);
    issuer(
        &cluster,
        Some("apps"),
        "test",
        json!({ "backend": local_backend("test-ca") }),
    )
    .await;
    let env = start(cluster.clone(), c.clone(), Some(fixed(up.clone())));
    wait_issuer(&c, Some("apps"), "test", "True").await;
    create(
        &c,
        request(
            "denied",
            "test",
            "SignetIssuer",
            &csr_pem(&[dns("a.example")]),
            json!({}),
        ),
    )
    .await;
    decide(&c, "denied", "Denied").await;
    let cr = wait_reason(&c, "denied", "Denied").await;
    let st = cr.status.clone().unwrap();
    assert!(st.failure_time.is_some());
    assert!(st.certificate.is_none());
    assert!(ready(&cr).unwrap().0 == "False");
    // Approving afterwards changes nothing: Denied is final.
    decide(&c, "denied", "Approved").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(ready(&get(&c, "denied").await).unwrap().1, "Denied");
    assert_eq!(up.issued(), 0);

    // Requests for other issuers' groups are left alone.
    let mut other = request(
        "other",
        "x",
        "Issuer",
        &csr_pem(&[dns("b.example")]),
        json!({}),
    );
    other["spec"]["issuerRef"]["group"] = json!("cert-manager.io");
    create(&c, other).await;
    decide(&c, "other", "Approved").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(get(&c, "other").await.condition("Ready").is_none());
    drop(env);
}

async fn transient_failures_stay_pending_then_succeed(cluster: Cluster) {
    let (cluster, c) = setup(cluster).await;
    let up = CaSigner::root(SystemTime::now(), 365 * DAY);
    issuer(
        &cluster,
        Some("apps"),
        "test",
        json!({ "backend": local_backend("test-ca") }),
    )
    .await;
    let env = start(cluster.clone(), c.clone(), Some(fixed(up.clone())));
    wait_issuer(&c, Some("apps"), "test", "True").await;
    up.set_fault(Fault::Unavailable, u32::MAX);
    file_approved(&c, "flaky", "test", "f.example").await;
    let cr = eventually("a failed attempt reported as Pending", WITHIN, async || {
        let cr = get(&c, "flaky").await;
        cr.condition("Ready")
            .is_some_and(|r| r.message.as_deref().unwrap_or("").contains("will retry"))
            .then_some(cr)
    })
    .await;
    assert_eq!(ready(&cr).unwrap(), ("False".into(), "Pending".into()));
    assert!(cr.status.unwrap().failure_time.is_none());
    // The issuer reports the outage too.
    let (_, reason, _) = wait_issuer(&c, Some("apps"), "test", "False").await;
    assert_eq!(reason, "NotReady");
    // Never Failed while the backend is down.
    for _ in 0..10 {
        assert_ne!(ready(&get(&c, "flaky").await).unwrap().1, "Failed");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    up.set_fault(Fault::None, 0);
    let cr = wait_reason(&c, "flaky", "Issued").await;
    assert!(cr.status.unwrap().certificate.is_some());
    assert_eq!(up.issued(), 1);
    wait_issuer(&c, Some("apps"), "test", "True").await;
    drop(env);
}

async fn permanent_failures_are_failed_with_a_failure_time(cluster: Cluster) {
    let (cluster, c) = setup(cluster).await;
    let up = CaSigner::root(SystemTime::now(), 365 * DAY);
    issuer(
        &cluster,
        Some("apps"),
        "strict",
        json!({ "backend": local_backend("test-ca"),
            "policy": { "allowedSans": ["*.apps.example", "spiffe://cluster.local/**"], "maxDuration": "720h" } }),
    )
    .await;
    let env = start(cluster.clone(), c.clone(), Some(fixed(up.clone())));
    wait_issuer(&c, Some("apps"), "strict", "True").await;
    let nested: San = San::Uri(
        "spiffe://cluster.local/ns/apps/sa/a/ns/kube-system/sa/admin"
            .parse()
            .unwrap(),
    );

    // A forged CSR signature.
    let key = PrivateKey::generate(KeyAlgorithm::EcdsaP256).unwrap();
    let mut der = key.csr_der(None, &[dns("a.apps.example")]).unwrap();
    let n = der.len();
    der[n - 3] ^= 0x55;
    let forged = pem::encode("CERTIFICATE REQUEST", &der);
    let cases = [
        ("forged", forged, json!({}), "signature"),
        (
            "outside",
            csr_pem(&[dns("evil.example")]),
            json!({}),
            "not allowed",
        ),
        (
            "code-signing",
            csr_pem(&[dns("b.apps.example")]),
            json!({ "usages": ["code signing"] }),
            "code signing",
        ),
        (
            "ca",
            csr_pem(&[dns("c.apps.example")]),
            json!({ "isCA": true, "usages": ["cert sign", "crl sign"] }),
            "CA certificate",
        ),
        (
            "bad-duration",
            csr_pem(&[dns("d.apps.example")]),
            json!({ "duration": "forever" }),
            "spec.duration",
        ),
        (
            "identity-shape",
            csr_pem(std::slice::from_ref(&nested)),
            json!({ "usages": ["server auth", "client auth"] }),
            "not a workload identity",
        ),
    ];
    for (name, csr, extra, _) in &cases {
        create(
            &c,
            request(name, "strict", "SignetIssuer", csr, extra.clone()),
        )
        .await;
        decide(&c, name, "Approved").await;
    }
    for (name, _, _, want) in &cases {
        let cr = wait_reason(&c, name, "Failed").await;
        let msg = cr.condition("Ready").unwrap().message.clone().unwrap();
        assert!(msg.contains(want), "{name}: {msg}");
        let st = cr.status.clone().unwrap();
        assert!(st.failure_time.is_some(), "{name}");
        assert!(st.certificate.is_none(), "{name}");
    }
    assert!(get(&c, "forged").await.is_true("InvalidRequest"));
    assert_eq!(up.issued(), 0);

    // A longer duration than the issuer allows is shortened, not refused.
    create(
        &c,
        request(
            "long",
            "strict",
            "SignetIssuer",
            &csr_pem(&[dns("e.apps.example")]),
            json!({ "duration": "8760h" }),
        ),
    )
    .await;
    decide(&c, "long", "Approved").await;
    let cr = wait_reason(&c, "long", "Issued").await;
    let dir = tempfile::tempdir().unwrap();
    let (leaf, ca) = files(dir.path(), &cr);
    openssl::verify(&ca, None, &leaf, None).unwrap();
    let days = days_left(&leaf);
    assert!((29..=30).contains(&days), "{days} days");
    drop(env);
}

async fn ca_requests_need_allow_ca_and_get_path_length_zero(cluster: Cluster) {
    let (cluster, c) = setup(cluster).await;
    let up = CaSigner::root(SystemTime::now(), 365 * DAY);
    issuer(
        &cluster,
        None,
        "cas",
        json!({ "backend": local_backend("test-ca"), "policy": { "allowCa": true } }),
    )
    .await;
    let env = start(cluster.clone(), c.clone(), Some(fixed(up.clone())));
    wait_issuer(&c, None, "cas", "True").await;
    let dir = tempfile::tempdir().unwrap();
    let key = PrivateKey::generate(KeyAlgorithm::EcdsaP256).unwrap();
    let ca_csr = pem::encode(
        "CERTIFICATE REQUEST",
        &key.csr_der(Some("team ca"), &[]).unwrap(),
    );
    create(&c, request("sub-ca", "cas", "SignetClusterIssuer", &ca_csr, json!({ "isCA": true, "usages": ["cert sign", "crl sign", "digital signature"], "duration": "720h" }))).await;
    decide(&c, "sub-ca", "Approved").await;
    let cr = wait_reason(&c, "sub-ca", "Issued").await;
    let (cert, ca) = files(dir.path(), &cr);
    openssl::verify(&ca, None, &cert, None).unwrap();
    let text = openssl::text(&cert);
    assert!(text.contains("CA:TRUE, pathlen:0"), "{text}");
    assert!(text.contains("Certificate Sign, CRL Sign"), "{text}");
    assert!(
        text.contains("CN=team ca") || text.contains("CN = team ca"),
        "{text}"
    );
    drop(env);
}

async fn a_restart_mid_flight_does_not_sign_twice(cluster: Cluster) {
    // Idempotent backend: the new process resumes with the same request ID.
    let (cluster, c) = setup(cluster).await;
    let up = CaSigner::root(SystemTime::now(), 365 * DAY);
    let env = running_issuer(&cluster, &c, "test", &up).await;
    up.set_fault(Fault::Slow(Duration::from_secs(30)), u32::MAX);
    file_approved(&c, "mid", "test", "m.example").await;
    request_id_recorded(&c, "mid").await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    drop(env); // signet dies mid-flight
    up.set_fault(Fault::None, 0);
    let env = start(cluster.clone(), c.clone(), Some(fixed(up.clone())));
    let cr = wait_reason(&c, "mid", "Issued").await;
    assert!(cr.status.unwrap().certificate.is_some());
    assert_eq!(up.issued(), 1);
    drop(env);

    // A backend without idempotency (Vault): the request is failed with the
    // reason instead of risking a second certificate. (Same cluster, a new
    // request: the finished one above is left alone.)
    let up = CaSigner::forgetful_root(SystemTime::now(), 365 * DAY);
    let env = running_issuer(&cluster, &c, "vaultish", &up).await;
    up.set_fault(Fault::Slow(Duration::from_secs(30)), u32::MAX);
    file_approved(&c, "mid-again", "vaultish", "m.example").await;
    request_id_recorded(&c, "mid-again").await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    drop(env);
    up.set_fault(Fault::None, 0);
    let calls = up.calls();
    let env = start(cluster.clone(), c.clone(), Some(fixed(up.clone())));
    let cr = wait_reason(&c, "mid-again", "Failed").await;
    let msg = cr.condition("Ready").unwrap().message.clone().unwrap();
    assert!(msg.contains("will not sign it again"), "{msg}");
    assert_eq!(up.issued(), 0);
    // The only calls since the restart are health checks (trust bundle reads).
    assert!(up.calls() >= calls);
    drop(env);
}

#[tokio::test]
async fn a_failed_status_write_is_retried_without_signing_again() {
    let (cluster, c) = setup(Cluster::fake().await).await;
    let up = CaSigner::forgetful_root(SystemTime::now(), 365 * DAY);
    let env = running_issuer(&cluster, &c, "test", &up).await;
    up.set_fault(Fault::Slow(Duration::from_secs(1)), u32::MAX);
    file_approved(&c, "conflicted", "test", "c.example").await;
    request_id_recorded(&c, "conflicted").await;
    // While the backend signs, arrange for the status writes to conflict.
    up.set_fault(Fault::None, 0);
    env.cluster.as_fake().unwrap().inject_conflicts(2);
    let cr = wait_reason(&c, "conflicted", "Issued").await;
    assert!(cr.status.unwrap().certificate.is_some());
    assert_eq!(up.issued(), 1);
    drop(env);
}

/// Watches dropped again and again and a conflict storm while requests keep
/// arriving: every CertificateRequest is issued, each signed exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_watches_and_a_conflict_storm_issue_everything_once() {
    let (cluster, c) = setup(Cluster::fake().await).await;
    let up = CaSigner::forgetful_root(SystemTime::now(), 365 * DAY);
    let env = running_issuer(&cluster, &c, "test", &up).await;
    let api: Api<CertificateRequest> = Api::namespaced(c.clone(), "apps");
    for n in 0..30 {
        if n % 5 == 0 {
            env.cluster.as_fake().unwrap().drop_watches();
        }
        if n == 10 {
            env.cluster.as_fake().unwrap().inject_conflicts(60);
        }
        let name = format!("storm-{n}");
        let cr: CertificateRequest = serde_json::from_value(request(
            &name,
            "test",
            "SignetIssuer",
            &csr_pem(&[dns(&format!("s{n}.example"))]),
            json!({}),
        ))
        .unwrap();
        // The storm refuses the test's own writes too: retry on 409.
        while let Err(e) = api.create(&PostParams::default(), &cr).await {
            assert!(matches!(&e, kube::Error::Api(s) if s.code == 409), "{e}");
        }
        decide(&c, &name, "Approved").await;
    }
    env.cluster.as_fake().unwrap().drop_watches();
    for n in 0..30 {
        let cr = wait_reason(&c, &format!("storm-{n}"), "Issued").await;
        assert!(cr.status.unwrap().certificate.is_some());
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(up.issued(), 30, "each request signed exactly once");
    drop(env);
}

async fn cluster_and_namespaced_issuers_read_secrets_from_their_own_namespaces(cluster: Cluster) {
    let (cluster, c) = setup(cluster).await;
    let cluster_ca = root("cluster root");
    let apps_ca = root("apps root");
    // The cluster issuer's Secret lives in the cluster resource namespace;
    // a same-named Secret in the request's namespace must not be used.
    ca_secret(&cluster, "signet", "ca", &cluster_ca).await;
    ca_secret(&cluster, "apps", "ca", &apps_ca).await;
    // A namespaced issuer cannot reach a Secret in another namespace.
    ca_secret(&cluster, "signet", "only-in-signet", &cluster_ca).await;
    issuer(
        &cluster,
        None,
        "org",
        json!({ "backend": local_backend("ca") }),
    )
    .await;
    issuer(
        &cluster,
        Some("apps"),
        "team",
        json!({ "backend": local_backend("ca") }),
    )
    .await;
    issuer(
        &cluster,
        Some("apps"),
        "reach",
        json!({ "backend": local_backend("only-in-signet") }),
    )
    .await;
    issuer(
        &cluster,
        Some("apps"),
        "files",
        json!({ "backend": { "type": "local", "cert_file": "/etc/signet/ca.pem", "key_file": "/etc/signet/ca.key" } }),
    )
    .await;
    let env = start(cluster.clone(), c.clone(), None);
    wait_issuer(&c, None, "org", "True").await;
    wait_issuer(&c, Some("apps"), "team", "True").await;
    let (_, reason, message) = wait_issuer(&c, Some("apps"), "reach", "False").await;
    assert_eq!(reason, "NotReady");
    assert!(message.contains("only-in-signet not found"), "{message}");
    let (_, reason, message) = wait_issuer(&c, Some("apps"), "files", "False").await;
    assert_eq!(reason, "InvalidConfig");
    assert!(message.contains("cert_secret"), "{message}");

    let dir = tempfile::tempdir().unwrap();
    for (name, issuer, kind, want) in [
        ("from-org", "org", "SignetClusterIssuer", &cluster_ca),
        ("from-team", "team", "SignetIssuer", &apps_ca),
    ] {
        create(
            &c,
            request(
                name,
                issuer,
                kind,
                &csr_pem(&[dns("x.example")]),
                json!({ "usages": ["server auth", "client auth"] }),
            ),
        )
        .await;
        decide(&c, name, "Approved").await;
        let cr = wait_reason(&c, name, "Issued").await;
        let (leaf, ca) = files(dir.path(), &cr);
        let want_pem = pem::encode("CERTIFICATE", want.certificate());
        assert_eq!(std::fs::read_to_string(&ca).unwrap(), want_pem, "{name}");
        openssl::verify(&ca, None, &leaf, Some("sslclient")).unwrap();
        openssl::verify(&ca, None, &leaf, Some("sslserver")).unwrap();
    }
    // A request naming a missing issuer waits (Pending), it does not fail.
    file_approved(&c, "nobody", "missing", "y.example").await;
    // Pending first for want of approval, then for want of the issuer.
    eventually("nobody Pending for a missing issuer", WITHIN, async || {
        let cr = get(&c, "nobody").await;
        let cond = cr.condition("Ready")?;
        let message = cond.message.clone().unwrap_or_default();
        (cond.reason.as_deref() == Some("Pending") && message.contains("not found")).then_some(())
    })
    .await;
    drop(env);
}

async fn issuer_readiness_follows_its_secrets(cluster: Cluster) {
    let (cluster, c) = setup(cluster).await;
    issuer(
        &cluster,
        Some("apps"),
        "later",
        json!({ "backend": local_backend("late-ca") }),
    )
    .await;
    let env = start(cluster.clone(), c.clone(), None);
    let (_, reason, message) = wait_issuer(&c, Some("apps"), "later", "False").await;
    assert_eq!(reason, "NotReady");
    assert!(message.contains("late-ca not found"), "{message}");
    // The Secret appears: the issuer becomes Ready at its next check.
    let first = root("first");
    ca_secret(&env.cluster, "apps", "late-ca", &first).await;
    wait_issuer(&c, Some("apps"), "later", "True").await;
    file_approved(&c, "one", "later", "one.example").await;
    let cr = wait_reason(&c, "one", "Issued").await;
    let ca = B64.decode(cr.status.unwrap().ca.unwrap()).unwrap();
    assert_eq!(
        String::from_utf8(ca).unwrap(),
        pem::encode("CERTIFICATE", first.certificate())
    );
    // The Secret is rotated: the issuer is rebuilt from it.
    let second = root("second");
    ca_secret(&env.cluster, "apps", "late-ca", &second).await;
    let expected = pem::encode("CERTIFICATE", second.certificate());
    eventually("requests signed by the rotated CA", WITHIN, async || {
        let name = format!("r{}", rand_suffix());
        file_approved(&c, &name, "later", "two.example").await;
        let cr = wait_reason(&c, &name, "Issued").await;
        let ca = String::from_utf8(B64.decode(cr.status.unwrap().ca.unwrap()).unwrap()).unwrap();
        (ca == expected).then_some(())
    })
    .await;
    drop(env);
}

/// Whole days from now until the certificate's NotAfter (read by openssl).
fn days_left(cert: &std::path::Path) -> i64 {
    let end = openssl::field(cert, "enddate");
    let end = end.trim_start_matches("notAfter=").trim_end_matches(" GMT");
    let end = jiff::fmt::strtime::parse("%b %e %H:%M:%S %Y", end)
        .unwrap()
        .to_datetime()
        .unwrap()
        .to_zoned(jiff::tz::TimeZone::UTC)
        .unwrap()
        .timestamp();
    (end.as_second() - jiff::Timestamp::now().as_second()) / 86_400
}

fn rand_suffix() -> u32 {
    let mut b = [0u8; 4];
    signet_core::crypto::random_bytes(&mut b);
    u32::from_le_bytes(b) % 1_000_000
}

async fn followers_do_not_write_and_the_leader_catches_up(cluster: Cluster) {
    let (cluster, c) = setup(cluster).await;
    let up = CaSigner::root(SystemTime::now(), 365 * DAY);
    issuer(
        &cluster,
        Some("apps"),
        "test",
        json!({ "backend": local_backend("test-ca") }),
    )
    .await;
    let (tx, leader) = watch::channel(false);
    let ctl = IssuerController::new(
        c.clone(),
        config(),
        TrustDomain::new("cluster.local").unwrap(),
        Arc::new(SystemClock),
        leader,
    )
    .with_backend_factory(fixed(up.clone()));
    let task = tokio::spawn(Arc::new(ctl).run());
    file_approved(&c, "waiting", "test", "w.example").await;
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert!(get(&c, "waiting").await.condition("Ready").is_none());
    assert_eq!(issuer_ready(&c, Some("apps"), "test").await.0, "");
    tx.send(true).unwrap();
    wait_reason(&c, "waiting", "Issued").await;
    wait_issuer(&c, Some("apps"), "test", "True").await;
    assert_eq!(up.issued(), 1);
    task.abort();
}

async fn the_issuer_rate_limit_delays_but_does_not_fail(cluster: Cluster) {
    let (cluster, c) = setup(cluster).await;
    let up = CaSigner::root(SystemTime::now(), 365 * DAY);
    issuer(
        &cluster,
        Some("apps"),
        "slow",
        json!({ "backend": local_backend("test-ca"), "policy": { "rateLimit": 2.0 } }),
    )
    .await;
    let env = start(cluster.clone(), c.clone(), Some(fixed(up.clone())));
    wait_issuer(&c, Some("apps"), "slow", "True").await;
    let names: Vec<String> = (0..12).map(|i| format!("burst-{i}")).collect();
    for n in &names {
        file_approved(&c, n, "slow", "b.example").await;
    }
    for n in &names {
        let cr = eventually(&format!("{n} issued"), WITHIN, async || {
            let cr = get(&c, n).await;
            assert_ne!(ready(&cr).map(|r| r.1).as_deref(), Some("Failed"), "{n}");
            (ready(&cr).map(|r| r.1).as_deref() == Some("Issued")).then_some(cr)
        })
        .await;
        assert!(cr.status.unwrap().certificate.is_some());
    }
    assert_eq!(up.issued(), 12);
    drop(env);
}

async fn patching_a_finished_request_changes_nothing(cluster: Cluster) {
    let (cluster, c) = setup(cluster).await;
    let up = CaSigner::root(SystemTime::now(), 365 * DAY);
    issuer(
        &cluster,
        Some("apps"),
        "test",
        json!({ "backend": local_backend("test-ca") }),
    )
    .await;
    let env = start(cluster.clone(), c.clone(), Some(fixed(up.clone())));
    wait_issuer(&c, Some("apps"), "test", "True").await;
    file_approved(&c, "done", "test", "d.example").await;
    let first = wait_reason(&c, "done", "Issued").await;
    let api: Api<CertificateRequest> = Api::namespaced(c.clone(), "apps");
    api.patch(
        "done",
        &PatchParams::default(),
        &Patch::Merge(json!({ "metadata": { "labels": { "touched": "yes" } } })),
    )
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = get(&c, "done").await;
    assert_eq!(
        after.status.unwrap().certificate,
        first.status.unwrap().certificate
    );
    assert_eq!(up.issued(), 1);
    drop(env);
}

async fn a_delegated_issuer_signs_with_its_own_intermediate_and_stops_when_deleted(
    cluster: Cluster,
) {
    let (cluster, c) = setup(cluster).await;
    let up = CaSigner::root(SystemTime::now(), 365 * DAY);
    issuer(
        &cluster,
        Some("apps"),
        "deleg",
        json!({ "backend": local_backend("test-ca"), "mode": "delegated",
            "intermediate": { "ttl": "48h", "commonName": "apps intermediate" } }),
    )
    .await;
    let env = start(cluster.clone(), c.clone(), Some(fixed(up.clone())));
    let (_, _, message) = wait_issuer(&c, Some("apps"), "deleg", "True").await;
    assert!(message.contains("intermediate until"), "{message}");
    for i in 0..3 {
        let name = format!("leaf-{i}");
        file_approved(&c, &name, "deleg", "l.example").await;
        let cr = wait_reason(&c, &name, "Issued").await;
        let dir = tempfile::tempdir().unwrap();
        let st = cr.status.unwrap();
        let pems = String::from_utf8(B64.decode(st.certificate.unwrap()).unwrap()).unwrap();
        let split =
            pems.find("-----END CERTIFICATE-----").unwrap() + "-----END CERTIFICATE-----\n".len();
        let (leaf, chain, ca) = (
            dir.path().join("leaf.pem"),
            dir.path().join("chain.pem"),
            dir.path().join("ca.pem"),
        );
        std::fs::write(&leaf, &pems[..split]).unwrap();
        std::fs::write(&chain, &pems[split..]).unwrap();
        std::fs::write(&ca, B64.decode(st.ca.unwrap()).unwrap()).unwrap();
        assert!(openssl::text(&chain).contains("apps intermediate"));
        openssl::verify(&ca, Some(&chain), &leaf, Some("sslserver")).unwrap();
        // The leaf may not outlive the intermediate.
        assert!(days_left(&leaf) <= 2);
    }
    // One intermediate from the backend; the leaves were signed in process.
    assert_eq!(up.issued(), 1);

    // Deleted: the issuer is stopped (its intermediate's rotation task
    // with it), leaving the backend referenced only by the test and the
    // controller's factory.
    assert!(Arc::strong_count(&up) > 2);
    Api::<SignetIssuer>::namespaced(c.clone(), "apps")
        .delete("deleg", &Default::default())
        .await
        .unwrap();
    eventually("the deleted issuer stopped", WITHIN, async || {
        (Arc::strong_count(&up) == 2).then_some(())
    })
    .await;
    drop(env);
}
