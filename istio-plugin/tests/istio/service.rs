//! The Istio CA service in process: every authentication path, authorisation,
//! impersonation against the Kubernetes API fake, TTLs, chain shape, load.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::json;
use signet_core::caller::PeerInfo;
use signet_core::clock::unix_seconds;
use signet_core::delegated::{Delegated, IntermediateConfig};
use signet_core::duration::HumanDuration;
use signet_core::key::{KeyAlgorithm, PrivateKey};
use signet_core::metrics::Metrics;
use signet_core::names::San;
use signet_core::pem;
use signet_core::policy::{AuthorityPolicy, PolicyConfig};
use signet_core::spiffe::TrustDomain;
use signet_core::testing::{CaSigner, Fault};
use signet_core::{Authority, Signer, SystemClock};
use signet_istio::auth::Authenticators;
use signet_istio::auth::jwt::JwtAuthenticator;
use signet_istio::auth::token_review::{Clusters, TokenReviewer};
use signet_istio::config::{
    ClusterConfig, ImpersonationConfig, JwtIssuerConfig, TokenReviewConfig,
};
use signet_istio::dev::DevIssuer;
use signet_istio::impersonation::{Impersonation, KubePods};
use signet_istio::pb::istio_certificate_service_server::IstioCertificateService;
use signet_istio::pb::{IstioCertificateRequest, IstioCertificateResponse};
use signet_istio::service::IstioCa;
use signet_tests::kube_fake::{KubeFake, TokenInfo};
use tonic::{Code, Request};

const DAY: Duration = Duration::from_secs(86_400);

fn td() -> TrustDomain {
    TrustDomain::new("cluster.local").unwrap()
}

fn sa(ns: &str, name: &str) -> String {
    format!("spiffe://cluster.local/ns/{ns}/sa/{name}")
}

fn csr(id: &str) -> String {
    let key = PrivateKey::generate(KeyAlgorithm::EcdsaP256).unwrap();
    pem::encode(
        "CERTIFICATE REQUEST",
        &key.csr_der(None, &[San::Uri(id.parse().unwrap())]).unwrap(),
    )
}

fn request(
    csr: String,
    validity: i64,
    token: Option<&str>,
    cluster: Option<&str>,
    impersonate: Option<&str>,
    peer: Option<PeerInfo>,
) -> Request<IstioCertificateRequest> {
    let metadata = impersonate.map(|id| prost_types::Struct {
        fields: BTreeMap::from([(
            "ImpersonatedIdentity".to_owned(),
            prost_types::Value {
                kind: Some(prost_types::value::Kind::StringValue(id.to_owned())),
            },
        )]),
    });
    let mut r = Request::new(IstioCertificateRequest {
        csr,
        validity_duration: validity,
        metadata,
    });
    if let Some(t) = token {
        r.metadata_mut()
            .insert("authorization", format!("Bearer {t}").parse().unwrap());
    }
    if let Some(c) = cluster {
        r.metadata_mut().insert("clusterid", c.parse().unwrap());
    }
    if let Some(p) = peer {
        r.extensions_mut().insert(p);
    }
    r
}

/// The common request: a CSR and a bearer token, default validity.
fn with_token(csr: String, token: &str) -> Request<IstioCertificateRequest> {
    request(csr, 0, Some(token), None, None, None)
}

/// Parses a response the way ztunnel does: the first element is the leaf, each
/// middle element's first PEM is an intermediate, the last element may hold
/// several roots. Returns (leaf, intermediates, roots).
fn ztunnel_parse(resp: &IstioCertificateResponse) -> (Vec<u8>, Vec<Vec<u8>>, Vec<Vec<u8>>) {
    let chain = &resp.cert_chain;
    assert!(
        chain.len() >= 2,
        "istio-agent rejects fewer than two elements"
    );
    assert!(
        chain.iter().all(|e| e.ends_with('\n')),
        "each element ends with a newline"
    );
    let leaf = pem::certificates(chain[0].as_bytes()).unwrap();
    assert_eq!(leaf.len(), 1);
    let middle: Vec<Vec<u8>> = chain[1..chain.len() - 1]
        .iter()
        .map(|e| pem::certificates(e.as_bytes()).unwrap().remove(0))
        .collect();
    let roots = pem::certificates(chain[chain.len() - 1].as_bytes()).unwrap();
    (leaf[0].clone(), middle, roots)
}

fn leaf_uri(der: &[u8]) -> String {
    use x509_parser::prelude::*;
    let (_, cert) = X509Certificate::from_der(der).unwrap();
    let san = cert.subject_alternative_name().unwrap().unwrap();
    match &san.value.general_names[..] {
        [GeneralName::URI(u)] => u.to_string(),
        other => panic!("{other:?}"),
    }
}

fn lifetime(der: &[u8]) -> Duration {
    let (nb, na) = signet_core::chain::validity(der).unwrap();
    na.duration_since(nb).unwrap()
}

struct Setup {
    ca: IstioCa,
    issuer: DevIssuer,
    kube: KubeFake,
    _dir: tempfile::TempDir,
}

async fn setup(
    upstream: Arc<dyn Signer>,
    delegated: bool,
    max_concurrent: usize,
    timeout: Duration,
) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let issuer = DevIssuer::ensure(dir.path()).unwrap();
    let clock = Arc::new(SystemClock);
    let signer: Arc<dyn Signer> = if delegated {
        let d = Delegated::start(
            "mesh",
            upstream,
            IntermediateConfig::default(),
            td(),
            clock.clone(),
        );
        d.ready().await;
        d
    } else {
        upstream
    };
    let policy = PolicyConfig {
        max_ttl: HumanDuration(DAY),
        ..PolicyConfig::default()
    };
    let authority = Arc::new(Authority::new(
        "mesh",
        signer,
        AuthorityPolicy::new(td(), policy).unwrap(),
        clock.clone(),
    ));

    let jwt = JwtAuthenticator::new(
        JwtIssuerConfig {
            issuer: "signet-dev".into(),
            cluster: "Kubernetes".into(),
            jwks_file: Some(issuer.jwks.clone()),
            jwks_url: None,
            audiences: vec!["istio-ca".into()],
            jwks_refresh: HumanDuration::from_secs(300),
            leeway: HumanDuration::from_secs(60),
        },
        clock.clone(),
    )
    .await
    .unwrap();
    let kube = KubeFake::start().await;
    let mut clusters = BTreeMap::new();
    clusters.insert(
        "Kubernetes".to_owned(),
        ClusterConfig {
            kubeconfig: Some(kube.kubeconfig(dir.path(), "primary")),
            context: None,
        },
    );
    let tr_config = TokenReviewConfig {
        clusters: clusters.clone(),
        audiences: vec!["istio-ca".into()],
        cache_ttl: HumanDuration::from_secs(60),
    };
    let kube_clusters = Clusters::connect(&clusters).await.unwrap();
    let auth = Authenticators {
        mtls: Some(td()),
        jwt: vec![jwt],
        token_review: Some(Arc::new(TokenReviewer::new(
            kube_clusters.clone(),
            &tr_config,
            clock.clone(),
        ))),
    };
    let imp = Impersonation::new(
        &ImpersonationConfig {
            trusted_node_accounts: vec!["istio-system/ztunnel".into()],
        },
        Box::new(KubePods::new(kube_clusters)),
    );
    let ca = IstioCa::new(
        signet_core::routing::Routes::single(authority),
        auth,
        Some(imp),
        Metrics::default(),
        max_concurrent,
        timeout,
    );
    Setup {
        ca,
        issuer,
        kube,
        _dir: dir,
    }
}

async fn standard() -> Setup {
    setup(
        CaSigner::root(SystemTime::now(), 365 * DAY),
        true,
        64,
        Duration::from_secs(10),
    )
    .await
}

fn token(s: &Setup, ns: &str, name: &str) -> String {
    s.issuer
        .mint(ns, name, Duration::from_secs(3600), SystemTime::now())
        .unwrap()
}

/// A JWT signed with the dev key but with chosen claims.
fn custom_token(s: &Setup, claims: serde_json::Value, alg: Algorithm) -> String {
    let pem = std::fs::read(&s.issuer.key).unwrap();
    let key = EncodingKey::from_ec_pem(&pem).unwrap();
    let mut h = Header::new(alg);
    let jwks: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&s.issuer.jwks).unwrap()).unwrap();
    h.kid = jwks["keys"][0]["kid"].as_str().map(str::to_owned);
    jsonwebtoken::encode(&h, &claims, &key).unwrap()
}

fn claims(ns: &str, name: &str, aud: &str, exp_in: i64) -> serde_json::Value {
    let now = unix_seconds(SystemTime::now());
    json!({ "iss": "signet-dev", "aud": [aud], "sub": format!("system:serviceaccount:{ns}:{name}"), "iat": now, "exp": now + exp_in })
}

#[tokio::test]
async fn a_valid_token_gets_its_own_identity_in_ztunnel_shape() {
    let s = standard().await;
    let id = sa("default", "demo");
    let resp =
        s.ca.create_certificate(request(
            csr(&id),
            3600,
            Some(&token(&s, "default", "demo")),
            None,
            None,
            None,
        ))
        .await
        .unwrap()
        .into_inner();
    let (leaf, middle, roots) = ztunnel_parse(&resp);
    assert_eq!(leaf_uri(&leaf), id);
    assert_eq!(middle.len(), 1, "the delegated intermediate");
    assert_eq!(roots.len(), 1);
    assert_eq!(lifetime(&leaf), Duration::from_secs(3600 + 60));
}

#[tokio::test]
async fn every_bad_credential_is_unauthenticated_with_its_reason() {
    let s = standard().await;
    let id = sa("default", "demo");
    let call = |t: Option<String>| {
        s.ca.create_certificate(request(csr(&id), 0, t.as_deref(), None, None, None))
    };
    let mut wrong = Vec::new();
    let mut expect = async |what: &str, t: Option<String>, reason: &str| match call(t).await {
        Err(status)
            if status.code() == Code::Unauthenticated && status.message().contains(reason) => {}
        Err(status) => wrong.push(format!("{what}: {status:?}, want {reason:?}")),
        Ok(_) => wrong.push(format!("{what}: signed")),
    };

    // Positive control: the same construction with valid claims is accepted,
    // so each refusal below is for the reason named.
    call(Some(custom_token(
        &s,
        claims("default", "demo", "istio-ca", 3600),
        Algorithm::ES256,
    )))
    .await
    .expect("valid custom token");

    expect("no token", None, "no credentials").await;
    let es256 = |c| Some(custom_token(&s, c, Algorithm::ES256));
    expect(
        "expired",
        es256(claims("default", "demo", "istio-ca", -3600)),
        "token expired",
    )
    .await;
    let mut not_yet = claims("default", "demo", "istio-ca", 7200);
    not_yet["nbf"] = json!(unix_seconds(SystemTime::now()) + 3600);
    expect("not yet valid", es256(not_yet), "token not yet valid").await;
    expect(
        "wrong audience",
        es256(claims("default", "demo", "kubernetes", 3600)),
        "token audience not accepted",
    )
    .await;
    let mut other_issuer = claims("default", "demo", "istio-ca", 3600);
    other_issuer["iss"] = json!("https://evil.example");
    expect(
        "wrong issuer",
        es256(other_issuer),
        // No JWT issuer of that name is configured, so the token goes to
        // the cluster's TokenReview, which rejects it.
        "token rejected",
    )
    .await;
    let mut no_exp = claims("default", "demo", "istio-ca", 3600);
    no_exp.as_object_mut().unwrap().remove("exp");
    expect("no exp", es256(no_exp), "token has no expiry").await;

    // Signed by another key under the same issuer name and key ID.
    let other_dir = tempfile::tempdir().unwrap();
    let forger = DevIssuer::ensure(other_dir.path()).unwrap();
    let forged = forger
        .mint(
            "default",
            "demo",
            Duration::from_secs(3600),
            SystemTime::now(),
        )
        .unwrap();
    let forged_reason =
        if forged.split('.').next() == token(&s, "default", "demo").split('.').next() {
            "token signature does not verify"
        } else {
            "token signed by an unknown key"
        };
    expect("forged signature", Some(forged), forged_reason).await;
    // A tampered payload.
    let good = token(&s, "default", "demo");
    let parts: Vec<&str> = good.split('.').collect();
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let mut payload: serde_json::Value =
        serde_json::from_slice(&b64.decode(parts[1]).unwrap()).unwrap();
    payload["sub"] = json!("system:serviceaccount:kube-system:admin");
    let tampered = format!(
        "{}.{}.{}",
        parts[0],
        b64.encode(payload.to_string()),
        parts[2]
    );
    expect(
        "tampered",
        Some(tampered),
        "token signature does not verify",
    )
    .await;
    // alg: none, and HS256 keyed with the public key (the classic
    // confusion), as its PEM and as the JWKS document.
    let none = format!(
        "{}.{}.",
        b64.encode(r#"{"alg":"none","typ":"JWT"}"#),
        b64.encode(claims("default", "demo", "istio-ca", 3600).to_string())
    );
    expect("alg none", Some(none), "malformed token").await;
    let public_pem = std::process::Command::new("openssl")
        .args(["pkey", "-pubout", "-in"])
        .arg(&s.issuer.key)
        .output()
        .expect("openssl")
        .stdout;
    assert!(public_pem.starts_with(b"-----BEGIN PUBLIC KEY-----"));
    let jwks = std::fs::read(&s.issuer.jwks).unwrap();
    for (what, secret) in [
        ("HS256 with the public key PEM", &public_pem),
        ("HS256 with the JWKS", &jwks),
    ] {
        let mut h = Header::new(Algorithm::HS256);
        let doc: serde_json::Value = serde_json::from_slice(&jwks).unwrap();
        h.kid = doc["keys"][0]["kid"].as_str().map(str::to_owned);
        let hs = jsonwebtoken::encode(
            &h,
            &claims("default", "demo", "istio-ca", 3600),
            &EncodingKey::from_secret(secret),
        )
        .unwrap();
        expect(what, Some(hs), "token algorithm not allowed").await;
    }
    expect("garbage", Some("not-a-jwt".into()), "token rejected").await;
    assert!(wrong.is_empty(), "{wrong:#?}");
}

#[tokio::test]
async fn tokens_reviewed_by_the_cluster_named_in_the_header() {
    let s = standard().await;
    let now = unix_seconds(SystemTime::now());
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    // Shaped like a projected token (the fake only compares the string).
    let k8s_token = format!(
        "{}.{}.sig",
        b64.encode(r#"{"alg":"RS256"}"#),
        b64.encode(
            json!({ "iss": "https://kubernetes.default.svc", "exp": now + 3600 }).to_string()
        )
    );
    s.kube.add_token(
        &k8s_token,
        TokenInfo {
            namespace: "default".into(),
            service_account: "demo".into(),
            audiences: vec!["istio-ca".into()],
            pod: None,
        },
    );
    let id = sa("default", "demo");
    for _ in 0..3 {
        let resp =
            s.ca.create_certificate(request(
                csr(&id),
                0,
                Some(&k8s_token),
                Some("Kubernetes"),
                None,
                None,
            ))
            .await
            .unwrap()
            .into_inner();
        let (leaf, _, _) = ztunnel_parse(&resp);
        assert_eq!(leaf_uri(&leaf), id);
        assert_eq!(
            lifetime(&leaf),
            DAY + Duration::from_secs(60),
            "0 means the default 24h"
        );
    }
    assert_eq!(s.kube.reviews(), 1, "positive reviews are cached");

    let err =
        s.ca.create_certificate(request(
            csr(&id),
            0,
            Some(&k8s_token),
            Some("remote-cluster"),
            None,
            None,
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated, "unknown cluster id");
    let wrong_aud = format!("{k8s_token}x");
    s.kube.add_token(
        &wrong_aud,
        TokenInfo {
            namespace: "default".into(),
            service_account: "demo".into(),
            audiences: vec!["kubernetes".into()],
            pod: None,
        },
    );
    let err =
        s.ca.create_certificate(with_token(csr(&id), &wrong_aud))
            .await
            .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated, "wrong audience");
    let err =
        s.ca.create_certificate(with_token(csr(&id), "unknown.token.x"))
            .await
            .unwrap_err();
    assert_eq!(
        err.code(),
        Code::Unauthenticated,
        "rejected by the API server"
    );
}

#[tokio::test]
async fn the_csr_must_carry_exactly_the_callers_identity() {
    let s = standard().await;
    let t = token(&s, "default", "demo");
    let err =
        s.ca.create_certificate(with_token(csr(&sa("default", "other")), &t))
            .await
            .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    let key = PrivateKey::generate(KeyAlgorithm::EcdsaP256).unwrap();
    let two = pem::encode(
        "CERTIFICATE REQUEST",
        &key.csr_der(
            None,
            &[
                San::Uri(sa("default", "demo").parse().unwrap()),
                San::Dns(signet_core::names::DnsName::new("evil.example.com").unwrap()),
            ],
        )
        .unwrap(),
    );
    let err =
        s.ca.create_certificate(with_token(two, &t))
            .await
            .unwrap_err();
    assert_eq!(
        err.code(),
        Code::PermissionDenied,
        "no extra names: {err:?}"
    );
    let err =
        s.ca.create_certificate(with_token("garbage".into(), &t))
            .await
            .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    let err =
        s.ca.create_certificate(request(
            csr(&sa("default", "demo")),
            -5,
            Some(&t),
            None,
            None,
            None,
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "negative TTL");
    // TTL is clamped, not refused: istio-agent sends its own SECRET_TTL.
    let resp =
        s.ca.create_certificate(request(
            csr(&sa("default", "demo")),
            90 * 86_400,
            Some(&t),
            None,
            None,
            None,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        lifetime(&ztunnel_parse(&resp).0),
        DAY + Duration::from_secs(60)
    );
}

fn peer_with(cert: &[u8]) -> PeerInfo {
    PeerInfo {
        addr: "127.0.0.1:4000".parse().unwrap(),
        client_cert: Some(Arc::from(cert)),
        client_chain: Some(Arc::from(vec![cert.to_vec()])),
    }
}

/// A self-signed certificate with chosen extensions, standing in for one
/// another CA issued (the handshake already checked its chain; here only its
/// contents matter).
fn foreign_cert(
    id: &str,
    ekus: Vec<rcgen::ExtendedKeyUsagePurpose>,
    marked: bool,
    extra_dns: bool,
) -> Vec<u8> {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut p = rcgen::CertificateParams::default();
    p.distinguished_name = rcgen::DistinguishedName::new();
    p.subject_alt_names = vec![rcgen::SanType::URI(id.try_into().unwrap())];
    if extra_dns {
        p.subject_alt_names
            .push(rcgen::SanType::DnsName("x.example.com".try_into().unwrap()));
    }
    p.extended_key_usages = ekus;
    if marked {
        p.distinguished_name.push(
            rcgen::DnType::OrganizationalUnitName,
            signet_core::renewal::RENEWAL_MARKER,
        );
    }
    p.self_signed(&key).unwrap().der().to_vec()
}

#[tokio::test]
async fn a_workload_renews_with_a_certificate_issued_for_renewal() {
    let s = standard().await;
    let id = sa("default", "demo");
    // First certificate: with the workload's own token, for one hour.
    let t = token(&s, "default", "demo");
    let first =
        s.ca.create_certificate(request(csr(&id), 3600, Some(&t), None, None, None))
            .await
            .unwrap()
            .into_inner();
    let first = ztunnel_parse(&first).0;
    // Renewal by mTLS asks for the whole day: it gets no more than the hour.
    let resp =
        s.ca.create_certificate(request(
            csr(&id),
            86_400,
            None,
            None,
            None,
            Some(peer_with(&first)),
        ))
        .await
        .unwrap()
        .into_inner();
    let renewed = ztunnel_parse(&resp).0;
    assert_eq!(leaf_uri(&renewed), id);
    assert!(
        lifetime(&renewed) <= lifetime(&first),
        "{:?}",
        lifetime(&renewed)
    );
    // The renewal renews in turn, and the chain of renewals never grows.
    let again =
        s.ca.create_certificate(request(
            csr(&id),
            86_400,
            None,
            None,
            None,
            Some(peer_with(&renewed)),
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(lifetime(&ztunnel_parse(&again).0) <= lifetime(&first));

    // What may not renew, each with its reason.
    let refused = |cert: Vec<u8>| {
        let ca = &s.ca;
        let id = id.clone();
        async move {
            ca.create_certificate(request(
                csr(&id),
                0,
                None,
                None,
                None,
                Some(peer_with(&cert)),
            ))
            .await
            .unwrap_err()
        }
    };
    use rcgen::ExtendedKeyUsagePurpose::{ClientAuth, ServerAuth};
    for (what, cert, want) in [
        (
            "not issued for renewal (a REST certificate)",
            foreign_cert(&id, vec![ServerAuth, ClientAuth], false, false),
            "not issued for renewal",
        ),
        (
            "a client-profile certificate",
            foreign_cert(&id, vec![ClientAuth], true, false),
            "not a workload certificate",
        ),
        (
            "no EKU at all",
            foreign_cert(&id, vec![], true, false),
            "not a workload certificate",
        ),
        (
            "a DNS name beside the ID",
            foreign_cert(&id, vec![ServerAuth, ClientAuth], true, true),
            "not a workload certificate",
        ),
        (
            "another trust domain",
            foreign_cert(
                "spiffe://evil.org/ns/default/sa/demo",
                vec![ServerAuth, ClientAuth],
                true,
                false,
            ),
            "another trust domain",
        ),
    ] {
        let err = refused(cert).await;
        assert_eq!(err.code(), Code::Unauthenticated, "{what}");
        assert!(err.message().contains(want), "{what}: {}", err.message());
    }
    // A marked certificate whose ID breaks the mesh shape is refused by policy.
    let odd = "spiffe://cluster.local/ns/default/sa/demo/ns/kube-system/sa/admin";
    let err =
        s.ca.create_certificate(request(
            csr(odd),
            0,
            None,
            None,
            None,
            Some(peer_with(&foreign_cert(
                odd,
                vec![ServerAuth, ClientAuth],
                true,
                false,
            ))),
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{}", err.message());
}

#[tokio::test]
async fn ztunnel_may_impersonate_only_pods_on_its_node() {
    let s = standard().await;
    let now = unix_seconds(SystemTime::now());
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let mk = |n: &str| {
        format!(
            "{}.{}.{n}",
            b64.encode(r#"{"alg":"RS256"}"#),
            b64.encode(json!({ "iss": "k8s", "exp": now + 3600 }).to_string())
        )
    };
    let ztunnel = mk("zt");
    s.kube.add_token(
        &ztunnel,
        TokenInfo {
            namespace: "istio-system".into(),
            service_account: "ztunnel".into(),
            audiences: vec!["istio-ca".into()],
            pod: Some(("ztunnel-abc".into(), "uid-zt".into())),
        },
    );
    let app = mk("app");
    s.kube.add_token(
        &app,
        TokenInfo {
            namespace: "default".into(),
            service_account: "demo".into(),
            audiences: vec!["istio-ca".into()],
            pod: Some(("demo-1".into(), "uid-demo".into())),
        },
    );
    s.kube
        .add_pod("istio-system", "ztunnel-abc", "ztunnel", "node-1");
    s.kube.add_pod("default", "demo-1", "demo", "node-1");
    s.kube.add_pod("prod", "db-0", "db", "node-2");

    let demo = sa("default", "demo");
    let resp =
        s.ca.create_certificate(request(
            csr(&demo),
            0,
            Some(&ztunnel),
            None,
            Some(&demo),
            None,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        leaf_uri(&ztunnel_parse(&resp).0),
        demo,
        "ztunnel gets demo's certificate"
    );

    let db = sa("prod", "db");
    let err =
        s.ca.create_certificate(request(csr(&db), 0, Some(&ztunnel), None, Some(&db), None))
            .await
            .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated, "db runs on another node");
    let err =
        s.ca.create_certificate(request(csr(&db), 0, Some(&app), None, Some(&db), None))
            .await
            .unwrap_err();
    assert_eq!(
        err.code(),
        Code::Unauthenticated,
        "an application may not impersonate"
    );
    // A burst from the same node proxy costs the API server nothing more:
    // positive look-ups are reused for a short while.
    let pod_reads = |s: &Setup| {
        s.kube
            .accesses()
            .iter()
            .filter(|a| a.resource == "pods")
            .count()
    };
    let before = pod_reads(&s);
    for _ in 0..3 {
        s.ca.create_certificate(request(
            csr(&demo),
            0,
            Some(&ztunnel),
            None,
            Some(&demo),
            None,
        ))
        .await
        .unwrap();
    }
    assert_eq!(pod_reads(&s), before, "cached pod look-ups");
    // A caller whose pod does not exist is refused (refusals are not cached).
    let gone = mk("gone");
    s.kube.add_token(
        &gone,
        TokenInfo {
            namespace: "istio-system".into(),
            service_account: "ztunnel".into(),
            audiences: vec!["istio-ca".into()],
            pod: Some(("ztunnel-gone".into(), "uid-gone".into())),
        },
    );
    let err =
        s.ca.create_certificate(request(csr(&demo), 0, Some(&gone), None, Some(&demo), None))
            .await
            .unwrap_err();
    assert_eq!(
        err.code(),
        Code::Unauthenticated,
        "the caller's pod must exist"
    );
}

#[tokio::test]
async fn a_full_service_sheds_with_unavailable_and_slow_ones_time_out() {
    let up = CaSigner::root(SystemTime::now(), 365 * DAY);
    up.set_fault(Fault::Slow(Duration::from_millis(400)), u32::MAX);
    let s = Arc::new(setup(up.clone(), false, 1, Duration::from_secs(5)).await);
    let t = token(&s, "default", "demo");
    let first = {
        let (s, t) = (s.clone(), t.clone());
        tokio::spawn(async move {
            s.ca.create_certificate(with_token(csr(&sa("default", "demo")), &t))
                .await
                .map(|_| ())
        })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    let err =
        s.ca.create_certificate(with_token(csr(&sa("default", "demo")), &t))
            .await
            .unwrap_err();
    assert_eq!(
        err.code(),
        Code::Unavailable,
        "shed, for istio-agent to retry"
    );
    first.await.unwrap().unwrap();

    let slow = setup(up, false, 8, Duration::from_millis(100)).await;
    let t = token(&slow, "default", "demo");
    let err = slow
        .ca
        .create_certificate(with_token(csr(&sa("default", "demo")), &t))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::DeadlineExceeded);
}
