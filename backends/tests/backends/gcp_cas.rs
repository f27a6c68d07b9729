//! The `gcp_cas` backend against a fake Certificate Authority Service that
//! follows the v1 REST reference and signs for real (Google offers no
//! emulator): CreateCertificate (pemCsr or config, lifetime, requestId
//! de-duplication, certificateId uniqueness, issuingCertificateAuthorityId),
//! GetCertificate, FetchCaCerts, Google JSON errors, and the quirks users
//! reported (a chain element holding several PEMs with CRLF line ends).
#![cfg(feature = "gcp_cas")]

use signet_core::testing::Ready as _;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use axum::extract::{Query, State};
use axum::http::{Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use serde_json::{Value, json};
use signet_backends::gcp_cas::{GcpCasBackend, GcpCasConfig};
use signet_core::caller::Caller;
use signet_core::delegated::{Delegated, IntermediateConfig};
use signet_core::duration::HumanDuration;
use signet_core::issuer::LocalCa;
use signet_core::key::{KeyAlgorithm, PrivateKey};
use signet_core::names::{DnsName, San};
use signet_core::policy::{
    AuthorityPolicy, Grant, IssuanceDecision, IssuanceRequest, PolicyConfig, Profile, TtlOverflow,
};
use signet_core::resilience::ResilienceConfig;
use signet_core::spiffe::TrustDomain;
use signet_core::testing;
use signet_core::{Authority, ErrorKind, IssuedChain, Signer, SystemClock, VerifiedCsr, pem};
use signet_tests::openssl;

const DAY: Duration = Duration::from_secs(86_400);
const POOL: &str = "projects/p1/locations/europe-west1/caPools/mesh";

fn td() -> TrustDomain {
    TrustDomain::new("cluster.local").unwrap()
}

// === the fake CAS ===

struct FakeCa {
    id: String,
    ca: LocalCa,
    root_pem: String,
    /// What CAS lists for the CA (pemCaCertificates, and each issued
    /// certificate's pemCertificateChain): the CA, then its issuers.
    chain: Vec<String>,
}

#[derive(Default)]
struct State_ {
    cas: Vec<FakeCa>,
    /// requestId → the certificate returned.
    by_request: HashMap<String, Value>,
    /// name → certificate.
    certificates: HashMap<String, Value>,
    /// (method, path, query, body) of every call.
    calls: Vec<(String, String, HashMap<String, String>, Value)>,
    /// The next n CreateCertificate calls fail with (http, status).
    failures: Vec<(u32, u16, &'static str)>,
    /// Issue, then answer 503 as if the response were lost.
    lose_next_response: bool,
    /// One chain element with every PEM, CRLF line ends.
    quirky_chain: bool,
    issued: u32,
}

#[derive(Clone)]
struct FakeCas {
    state: Arc<Mutex<State_>>,
    url: String,
}

fn new_root(name: &str) -> LocalCa {
    LocalCa::self_signed_root(
        &format!("{name} root"),
        PrivateKey::generate(KeyAlgorithm::EcdsaP256).unwrap(),
        SystemTime::now(),
        3650 * DAY,
    )
    .unwrap()
}

/// A subordinate CA of the pool under a root outside it.
fn ca_under_new_root(name: &str) -> FakeCa {
    ca_under(&new_root(name), name)
}

/// A subordinate CA of the pool under `root`.
fn ca_under(root: &LocalCa, name: &str) -> FakeCa {
    let now = SystemTime::now();
    let ca = testing::intermediate_under(
        root,
        &format!("{name} issuing CA"),
        &td(),
        1,
        now,
        1000 * DAY,
        Duration::ZERO,
    );
    let root_pem = pem::encode("CERTIFICATE", root.certificate());
    FakeCa {
        id: name.to_owned(),
        chain: vec![
            pem::encode("CERTIFICATE", ca.certificate()),
            root_pem.clone(),
        ],
        ca,
        root_pem,
    }
}

/// A root CA in the pool, signing leaves itself.
fn root_ca(name: &str) -> FakeCa {
    let ca = new_root(name);
    let root_pem = pem::encode("CERTIFICATE", ca.certificate());
    FakeCa {
        id: name.to_owned(),
        ca,
        chain: vec![root_pem.clone()],
        root_pem,
    }
}

fn google_error(http: u16, status: &str, message: &str) -> Response {
    (
        StatusCode::from_u16(http).unwrap(),
        [("content-type", "application/json")],
        json!({ "error": { "code": http, "message": message, "status": status } }).to_string(),
    )
        .into_response()
}

fn parse_lifetime(v: &Value) -> Option<Duration> {
    let s = v.as_str()?.strip_suffix('s')?;
    let secs: f64 = s.parse().ok()?;
    Some(Duration::from_secs_f64(secs))
}

impl FakeCas {
    async fn start() -> Self {
        let state = Arc::new(Mutex::new(State_ {
            cas: vec![ca_under_new_root("ca-1")],
            ..State_::default()
        }));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let fake = Self { state, url };
        let app = axum::Router::new()
            .fallback(handle)
            .with_state(fake.clone());
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        fake
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State_> {
        self.state.lock().unwrap()
    }

    fn calls(&self, method: &str, suffix: &str) -> Vec<(HashMap<String, String>, Value)> {
        self.lock()
            .calls
            .iter()
            .filter(|(m, p, _, _)| m == method && p.ends_with(suffix))
            .map(|(_, _, q, b)| (q.clone(), b.clone()))
            .collect()
    }

    fn roots(&self) -> Vec<String> {
        self.lock().cas.iter().map(|c| c.root_pem.clone()).collect()
    }

    fn create(&self, q: &HashMap<String, String>, body: &Value) -> Response {
        let mut s = self.lock();
        if let Some(f) = s.failures.first_mut() {
            f.0 -= 1;
            let (http, status) = (f.1, f.2);
            if f.0 == 0 {
                s.failures.remove(0);
            }
            return google_error(http, status, "injected");
        }
        let request_id = q.get("requestId").cloned().unwrap_or_default();
        if !request_id.is_empty()
            && let Some(previous) = s.by_request.get(&request_id)
        {
            return Json(previous.clone()).into_response();
        }
        let id = q.get("certificateId").cloned().unwrap_or_default();
        let name = format!(
            "{POOL}/certificates/{}",
            if id.is_empty() {
                format!("auto-{}", s.issued)
            } else {
                id.clone()
            }
        );
        if s.certificates.contains_key(&name) {
            return google_error(409, "ALREADY_EXISTS", "certificate exists");
        }
        let Some(lifetime) = parse_lifetime(&body["lifetime"]) else {
            return google_error(400, "INVALID_ARGUMENT", "lifetime is required");
        };
        let want = q
            .get("issuingCertificateAuthorityId")
            .filter(|v| !v.is_empty());
        let Some(ca) = s.cas.iter().find(|c| want.is_none_or(|w| *w == c.id)) else {
            return google_error(400, "FAILED_PRECONDITION", "no such enabled CA in the pool");
        };
        let now = SystemTime::now();
        let signed = if let Some(csr) = body["pemCsr"].as_str() {
            let csr = match VerifiedCsr::from_pem(csr.as_bytes()) {
                Ok(c) => c,
                Err(e) => return google_error(400, "INVALID_ARGUMENT", &e.to_string()),
            };
            // The pool's baseline: serverAuth + clientAuth leaves.
            let only_uri = csr
                .requested_sans()
                .iter()
                .all(|s| matches!(s, San::Uri(_)));
            let profile = if only_uri {
                Profile::Workload
            } else {
                Profile::Mtls
            };
            let d = testing::upstream_decision(&csr, profile, lifetime, Duration::ZERO, now, "cas");
            ca.ca.sign(&d, csr.public_key()).ready()
        } else {
            let c = &body["config"];
            let key_pem = base64::engine::general_purpose::STANDARD
                .decode(c["publicKey"]["key"].as_str().unwrap_or_default())
                .unwrap_or_default();
            let der = pem::parse_strict(&key_pem).unwrap()[0].der.clone();
            let spki = rcgen::SubjectPublicKeyInfo::from_der(&der).unwrap();
            let ca_opts = &c["x509Config"]["caOptions"];
            if ca_opts["isCa"] != true {
                return google_error(
                    400,
                    "INVALID_ARGUMENT",
                    "this fake issues config certificates only for CAs",
                );
            }
            let sans: Vec<San> = c["subjectConfig"]["subjectAltName"]["uris"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|u| San::Uri(u.as_str().unwrap().parse().unwrap()))
                .collect();
            let path_len = ca_opts["maxIssuerPathLength"].as_i64().map(|n| n as u8);
            let d = IssuanceDecision::ca_certificate(
                c["subjectConfig"]["subject"]["commonName"]
                    .as_str()
                    .unwrap_or(""),
                sans,
                path_len,
                now,
                lifetime,
                Duration::ZERO,
                "cas",
            );
            ca.ca.sign(&d, &spki).ready()
        };
        let chain = signed.unwrap();
        let mut pems = ca.chain.clone();
        if s.quirky_chain {
            pems = vec![pems.concat().replace('\n', "\r\n")];
        }
        let cert = json!({
            "name": name,
            "pemCertificate": chain.leaf_pem(),
            "pemCertificateChain": pems,
            "lifetime": body["lifetime"],
            "issuerCertificateAuthority": format!("{POOL}/certificateAuthorities/{}", ca.id),
        });
        s.issued += 1;
        s.certificates.insert(name, cert.clone());
        if !request_id.is_empty() {
            s.by_request.insert(request_id, cert.clone());
        }
        if s.lose_next_response {
            s.lose_next_response = false;
            return google_error(503, "UNAVAILABLE", "connection reset");
        }
        Json(cert).into_response()
    }
}

use axum::Json;

async fn handle(
    State(fake): State<FakeCas>,
    method: Method,
    uri: Uri,
    Query(q): Query<HashMap<String, String>>,
    body: axum::body::Bytes,
) -> Response {
    let path = uri.path().to_owned();
    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    fake.lock()
        .calls
        .push((method.to_string(), path.clone(), q.clone(), body.clone()));
    let pool_path = format!("/v1/{POOL}");
    if method == Method::POST && path == format!("{pool_path}/certificates") {
        return fake.create(&q, &body);
    }
    if method == Method::POST && path == format!("{pool_path}:fetchCaCerts") {
        let s = fake.lock();
        let ca_certs: Vec<Value> = s
            .cas
            .iter()
            .map(|c| json!({ "certificates": c.chain }))
            .collect();
        return Json(json!({ "caCerts": ca_certs })).into_response();
    }
    if method == Method::POST
        && let Some(name) = path
            .strip_prefix("/v1/")
            .and_then(|p| p.strip_suffix(":revoke"))
    {
        let mut s = fake.lock();
        return match s.certificates.get_mut(name) {
            Some(c) => {
                c["revocationDetails"] = json!({ "revocationState": body["reason"], "revocationTime": "2026-01-01T00:00:00Z" });
                Json(c.clone()).into_response()
            }
            None => google_error(404, "NOT_FOUND", "no such certificate"),
        };
    }
    if method == Method::GET
        && let Some(name) = path.strip_prefix("/v1/")
    {
        return match fake.lock().certificates.get(name) {
            Some(c) => Json(c.clone()).into_response(),
            None => google_error(404, "NOT_FOUND", "no such certificate"),
        };
    }
    google_error(404, "NOT_FOUND", &format!("{method} {path}"))
}

// === set-up ===

fn config(fake: &FakeCas) -> GcpCasConfig {
    GcpCasConfig {
        project: "p1".into(),
        location: "europe-west1".into(),
        ca_pool: "mesh".into(),
        certificate_authority: None,
        certificate_template: None,
        endpoint: Some(fake.url.clone()),
        credentials_file: None,
        trust_bundle_refresh: HumanDuration::from_secs(300),
        resilience: ResilienceConfig {
            attempts: 4,
            backoff: HumanDuration(Duration::from_millis(20)),
            circuit_breaker: None,
            ..ResilienceConfig::default()
        },
    }
}

async fn backend(config: GcpCasConfig) -> Arc<dyn Signer> {
    let credentials = google_cloud_auth::credentials::anonymous::Builder::new().build();
    let r = config.resilience.clone();
    r.wrap(
        GcpCasBackend::with_credentials("cas", config, credentials, Arc::new(SystemClock))
            .await
            .unwrap(),
    )
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

fn csr(sans: &[San]) -> VerifiedCsr {
    let key = PrivateKey::generate(KeyAlgorithm::EcdsaP256).unwrap();
    VerifiedCsr::from_der(&key.csr_der(None, sans).unwrap()).unwrap()
}

async fn issue_server(a: &Authority, name: &str) -> Result<IssuedChain, signet_core::SignError> {
    let san = San::Dns(DnsName::new(name).unwrap());
    let grant = Grant {
        allowed_sans: vec!["**".parse().unwrap()],
        max_ttl: None,
        profiles: vec![Profile::Mtls],
        allow_wildcards: false,
    };
    let req = IssuanceRequest {
        profile: Profile::Mtls,
        ttl: Some(Duration::from_secs(3600)),
        ttl_overflow: TtlOverflow::Refuse,
        renewable: false,
        request_id: None,
    };
    a.issue(&Caller::internal("t"), &grant, &csr(&[san]), &req)
        .await
}

fn verify(chain: &IssuedChain, purpose: &str) {
    let dir = tempfile::tempdir().unwrap();
    let (leaf, inter, root) = (
        dir.path().join("leaf.pem"),
        dir.path().join("chain.pem"),
        dir.path().join("root.pem"),
    );
    std::fs::write(&leaf, chain.leaf_pem()).unwrap();
    std::fs::write(&inter, chain.intermediate_pems().concat()).unwrap();
    std::fs::write(&root, chain.trust_bundle().to_pem()).unwrap();
    openssl::verify(&root, Some(&inter), &leaf, Some(purpose)).unwrap();
}

const CREATE: &str = "/certificates";

// === tests ===

#[tokio::test]
async fn leaves_are_requested_by_csr_and_chain_to_the_pool_root() {
    let fake = FakeCas::start().await;
    let mut c = config(&fake);
    c.certificate_authority = Some("ca-1".into());
    c.certificate_template =
        Some("projects/p1/locations/europe-west1/certificateTemplates/mesh-leaf".into());
    let a = authority(backend(c).await);
    let chain = issue_server(&a, "api.mesh.internal").await.unwrap();
    verify(&chain, "sslserver");
    assert_eq!(chain.trust_bundle().to_pem(), fake.roots()[0]);
    let (q, body) = fake.calls("POST", CREATE).remove(0);
    assert_eq!(q["issuingCertificateAuthorityId"], "ca-1");
    let rid = &q["requestId"];
    assert_eq!(rid.len(), 36, "{rid}");
    assert_eq!(&rid[14..15], "4", "a version-4-shaped UUID: {rid}");
    assert!(q["certificateId"].starts_with("signet-") && q["certificateId"].len() <= 63);
    assert!(
        body["pemCsr"]
            .as_str()
            .unwrap()
            .starts_with("-----BEGIN CERTIFICATE REQUEST-----")
    );
    assert_eq!(
        body["certificateTemplate"],
        "projects/p1/locations/europe-west1/certificateTemplates/mesh-leaf"
    );
    let lifetime = parse_lifetime(&body["lifetime"]).unwrap().as_secs();
    assert!((3500..=3600).contains(&lifetime), "{lifetime}");
}

#[tokio::test]
async fn a_delegated_intermediate_comes_with_ca_options_and_signs_leaves() {
    let fake = FakeCas::start().await;
    let d = Delegated::start(
        "mesh",
        backend(config(&fake)).await,
        IntermediateConfig::default(),
        td(),
        Arc::new(SystemClock),
    );
    tokio::time::timeout(Duration::from_secs(15), d.ready())
        .await
        .expect("intermediate");
    let (_, body) = fake.calls("POST", CREATE).remove(0);
    let c = &body["config"];
    assert_eq!(c["x509Config"]["caOptions"]["isCa"], true);
    assert_eq!(c["x509Config"]["caOptions"]["maxIssuerPathLength"], 0);
    assert_eq!(
        c["x509Config"]["keyUsage"]["baseKeyUsage"]["certSign"],
        true
    );
    assert_eq!(c["x509Config"]["keyUsage"]["baseKeyUsage"]["crlSign"], true);
    assert_eq!(
        c["subjectConfig"]["subjectAltName"]["uris"][0],
        "spiffe://cluster.local"
    );
    assert!(body.get("pemCsr").is_none());
    let a = authority(d);
    let chain = issue_server(&a, "web.mesh.internal").await.unwrap();
    // leaf ← signet's intermediate ← CAS issuing CA ← pool root
    assert_eq!(chain.intermediate_pems().len(), 2);
    verify(&chain, "sslclient");
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("int.pem");
    std::fs::write(&p, &chain.intermediate_pems()[0]).unwrap();
    assert!(openssl::text(&p).contains("CA:TRUE, pathlen:0"));
}

/// A re-key revokes the withdrawn intermediate by the resource name CAS
/// gave it (CAS revokes by name, not serial); a serial this process did not
/// issue is not CAS's to revoke here.
#[tokio::test]
async fn a_rekey_revokes_the_intermediate_by_its_cas_name() {
    use signet_core::revocation::Reason;
    let fake = FakeCas::start().await;
    let upstream = backend(config(&fake)).await;
    let d = Delegated::start(
        "mesh",
        upstream.clone(),
        IntermediateConfig::default(),
        td(),
        Arc::new(SystemClock),
    );
    tokio::time::timeout(Duration::from_secs(15), d.ready())
        .await
        .expect("intermediate");
    assert!(
        !upstream
            .revoke("0a1b", Reason::KeyCompromise)
            .await
            .unwrap()
    );
    let serial = d
        .rekey(SystemTime::now(), Reason::KeyCompromise)
        .await
        .expect("withdrawn");
    let revokes: Vec<_> = fake
        .lock()
        .calls
        .iter()
        .filter(|(m, p, _, _)| m == "POST" && p.ends_with(":revoke"))
        .cloned()
        .collect();
    assert_eq!(revokes.len(), 1, "{serial}");
    let (_, path, _, body) = &revokes[0];
    assert!(
        path.starts_with(&format!("/v1/{POOL}/certificates/")),
        "{path}"
    );
    // The client sends enums by number (proto3 JSON accepts both):
    // KEY_COMPROMISE is 1 in RevocationReason.
    assert_eq!(body["reason"], 1);
    let name = path.trim_start_matches("/v1/").trim_end_matches(":revoke");
    assert!(fake.lock().certificates[name]["revocationDetails"].is_object());
    tokio::time::timeout(Duration::from_secs(15), d.ready())
        .await
        .expect("a new intermediate");
}

#[tokio::test]
async fn a_chain_element_with_several_pems_and_crlf_is_read() {
    let fake = FakeCas::start().await;
    fake.lock().quirky_chain = true;
    let a = authority(backend(config(&fake)).await);
    let chain = issue_server(&a, "crlf.mesh.internal").await.unwrap();
    assert_eq!(
        chain.intermediate_pems().len(),
        1,
        "the issuing CA; the root goes to the bundle"
    );
    verify(&chain, "sslserver");
}

#[tokio::test]
async fn every_root_of_the_pool_is_trusted_for_rotation() {
    let fake = FakeCas::start().await;
    fake.lock().cas.push(ca_under_new_root("ca-2"));
    let b = backend(config(&fake)).await;
    let bundle = b.trust_bundle().await.unwrap();
    assert_eq!(bundle.roots().len(), 2);
    for root in fake.roots() {
        assert!(bundle.to_pem().contains(&root));
    }
    // Leaves from the new CA verify against the same bundle.
    let mut c = config(&fake);
    c.certificate_authority = Some("ca-2".into());
    let chain = issue_server(&authority(backend(c).await), "new.mesh.internal")
        .await
        .unwrap();
    verify(&chain, "sslserver");
    assert_eq!(b.describe().ready, Ok(()));
}

#[tokio::test]
async fn quota_errors_are_retried_with_the_same_request_id() {
    let fake = FakeCas::start().await;
    fake.lock().failures.push((2, 429, "RESOURCE_EXHAUSTED"));
    let a = authority(backend(config(&fake)).await);
    let chain = issue_server(&a, "busy.mesh.internal").await.unwrap();
    verify(&chain, "sslserver");
    let calls = fake.calls("POST", CREATE);
    assert_eq!(calls.len(), 3);
    assert!(
        calls
            .iter()
            .all(|(q, _)| q["requestId"] == calls[0].0["requestId"])
    );
    assert_eq!(fake.lock().issued, 1);
    // A quota that outlasts the retries is rate_limited.
    fake.lock().failures.push((4, 429, "RESOURCE_EXHAUSTED"));
    let e = issue_server(&a, "busier.mesh.internal").await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::RateLimited, "{e}");
}

#[tokio::test]
async fn a_lost_response_is_retried_without_issuing_twice() {
    let fake = FakeCas::start().await;
    fake.lock().lose_next_response = true;
    let a = authority(backend(config(&fake)).await);
    let chain = issue_server(&a, "lost.mesh.internal").await.unwrap();
    verify(&chain, "sslserver");
    assert_eq!(
        fake.lock().issued,
        1,
        "the retry got the first certificate back"
    );

    // Past CAS's requestId memory, the certificateId still finds it.
    let b = backend(config(&fake)).await;
    let c = csr(&[San::Dns(DnsName::new("again.mesh.internal").unwrap())]);
    let policy = AuthorityPolicy::new(td(), PolicyConfig::default()).unwrap();
    let grant = Grant {
        allowed_sans: vec!["**".parse().unwrap()],
        max_ttl: None,
        profiles: vec![Profile::Mtls],
        allow_wildcards: false,
    };
    let req = IssuanceRequest {
        profile: Profile::Mtls,
        ttl: None,
        ttl_overflow: TtlOverflow::Clamp,
        renewable: false,
        request_id: None,
    };
    let d = policy
        .decide(&Caller::internal("t"), &grant, &c, &req, SystemTime::now())
        .unwrap()
        .with_request_id("cr-1");
    let first = b.sign(&d, &c).await.unwrap();
    fake.lock().by_request.clear();
    let second = b.sign(&d, &c).await.unwrap();
    assert_eq!(first.leaf(), second.leaf());
    assert_eq!(fake.lock().issued, 2);
    assert_eq!(fake.calls("GET", "").len(), 1);
}

#[tokio::test]
async fn errors_map_to_signet_codes() {
    let fake = FakeCas::start().await;
    let a = authority(backend(config(&fake)).await);
    for (http, status, want) in [
        (403, "PERMISSION_DENIED", ErrorKind::BackendRejected),
        (400, "INVALID_ARGUMENT", ErrorKind::BackendRejected),
        (400, "FAILED_PRECONDITION", ErrorKind::NotReady),
        (503, "UNAVAILABLE", ErrorKind::BackendUnavailable),
    ] {
        // Retryable kinds are tried four times.
        fake.lock().failures.push((4, http, status));
        let e = issue_server(&a, "e.mesh.internal").await.unwrap_err();
        assert_eq!(e.kind(), want, "{status}: {e}");
        fake.lock().failures.clear();
    }
    // A pool CA that does not exist.
    let mut c = config(&fake);
    c.certificate_authority = Some("nope".into());
    let e = issue_server(&authority(backend(c).await), "n.mesh.internal")
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotReady, "{e}");
}

#[test]
fn config_names_are_checked() {
    let c: signet_backends::BackendConfig = serde_yaml_ng::from_str(
        "type: gcp_cas\nproject: p1\nlocation: europe-west1\nca_pool: mesh\n",
    )
    .unwrap();
    let signet_backends::BackendConfig::GcpCas(c) = c else {
        unreachable!()
    };
    assert_eq!(c.pool_name(), POOL);
    assert!(c.resilience.rate_limit.is_some(), "a limiter by default");
}

#[tokio::test]
async fn every_pool_layout_reports_itself_and_chains_to_its_roots() {
    use signet_core::layout::Position;
    // A pool whose CA is a root: leaves need no intermediate.
    let fake = FakeCas::start().await;
    fake.lock().cas = vec![root_ca("root-ca")];
    let b = backend(config(&fake)).await;
    let layout = b.layout().await.unwrap();
    assert_eq!(layout.position(), Position::Root, "{layout}");
    let chain = issue_server(&authority(b), "root.mesh.internal")
        .await
        .unwrap();
    assert!(chain.intermediates().is_empty());
    verify(&chain, "sslserver");

    // A pool whose CA is subordinate to an external root.
    let fake = FakeCas::start().await;
    let b = backend(config(&fake)).await;
    let layout = b.layout().await.unwrap();
    assert_eq!(layout.position(), Position::Subordinate, "{layout}");
    assert!(layout.anchored_at_root, "{layout}");
    let chain = issue_server(&authority(b), "sub.mesh.internal")
        .await
        .unwrap();
    assert_eq!(chain.intermediates().len(), 1);
    verify(&chain, "sslserver");

    // Several CAs under two roots (a rotation inside the pool): both roots
    // are anchors, whichever CA CAS picks verifies.
    let fake = FakeCas::start().await;
    let old_root = new_root("old");
    let new = new_root("new");
    fake.lock().cas = vec![
        ca_under(&old_root, "old-a"),
        ca_under(&old_root, "old-b"),
        ca_under(&new, "new-a"),
    ];
    let b = backend(config(&fake)).await;
    let layout = b.layout().await.unwrap();
    assert_eq!(layout.anchors.len(), 2, "{layout}");
    assert_eq!(layout.position(), Position::Unknown, "CAS picks the CA");
    assert!(
        layout
            .facts
            .contains(&("enabled CAs in the pool".into(), "3".into())),
        "{layout}"
    );
    for ca in ["old-a", "old-b", "new-a"] {
        let mut c = config(&fake);
        c.certificate_authority = Some(ca.into());
        let chain = issue_server(&authority(backend(c).await), &format!("{ca}.mesh.internal"))
            .await
            .unwrap();
        assert_eq!(chain.trust_bundle().roots().len(), 2, "{ca}");
        verify(&chain, "sslserver");
    }
}
