//! The vault backend against a real OpenBao (and, for response quirks OpenBao
//! 2.7 does not produce, a fake that answers like older Vaults).

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde_json::json;
use signet_backends::vault::{VaultAuth, VaultBackend, VaultConfig};
use signet_backends::{BackendConfig, build};
use signet_core::caller::Caller;
use signet_core::chain::IssuedChain;
use signet_core::delegated::{Delegated, IntermediateConfig};
use signet_core::duration::HumanDuration;
use signet_core::error::ErrorKind;
use signet_core::key::{KeyAlgorithm, PrivateKey};
use signet_core::names::{DnsName, San, SanPattern};
use signet_core::policy::{
    AuthorityPolicy, Grant, IssuanceRequest, PolicyConfig, Profile, TtlOverflow,
};
use signet_core::resilience::ResilienceConfig;
use signet_core::spiffe::TrustDomain;
use signet_core::{Authority, Signer, SystemClock, VerifiedCsr, pem};
use signet_tests::openbao::{OpenBao, write};

fn td() -> TrustDomain {
    TrustDomain::new("cluster.local").unwrap()
}

fn config(address: &str, auth: VaultAuth) -> VaultConfig {
    VaultConfig {
        address: address.to_owned(),
        namespace: None,
        mount: "pki".into(),
        role: Some("mesh".into()),
        issuer: None,
        ca_cert_file: None,
        auth,
        roots_file: None,
        trust_bundle_refresh: HumanDuration::from_secs(300),
        resilience: ResilienceConfig::default(),
    }
}

/// A dev OpenBao with a root in `pki`, role `mesh` and a `signet` policy.
fn bao_with_pki() -> (OpenBao, String) {
    let bao = OpenBao::dev();
    bao.enable_pki("pki");
    let root = bao.generate_root("pki", "OpenBao test root");
    bao.create_role("pki", "mesh");
    bao.write_policy("signet", &OpenBao::signet_policy("pki", "mesh"));
    (bao, root)
}

fn authority(signer: Arc<dyn Signer>) -> Authority {
    let policy = PolicyConfig {
        max_ttl: HumanDuration::from_secs(86_400),
        ..PolicyConfig::default()
    };
    Authority::new(
        "mesh",
        signer,
        AuthorityPolicy::new(td(), policy).unwrap(),
        Arc::new(SystemClock),
    )
}

async fn issue(
    a: &Authority,
    sans: Vec<San>,
    profile: Profile,
) -> Result<IssuedChain, signet_core::SignError> {
    let key = PrivateKey::generate(KeyAlgorithm::EcdsaP256).unwrap();
    let csr = VerifiedCsr::from_der(&key.csr_der(Some("ignored-cn"), &sans).unwrap()).unwrap();
    let grant = Grant {
        allowed_sans: ["spiffe://cluster.local/**", "**.example.com", "10.0.0.0/8"]
            .iter()
            .map(|p| SanPattern::parse(p).unwrap())
            .collect(),
        max_ttl: None,
        profiles: Profile::ALL.to_vec(),
        allow_wildcards: false,
    };
    let req = IssuanceRequest {
        profile,
        ttl: Some(Duration::from_secs(3600)),
        ttl_overflow: TtlOverflow::Refuse,
        renewable: false,
        request_id: None,
    };
    a.issue(&Caller::internal("test"), &grant, &csr, &req).await
}

fn workload(n: &str) -> Vec<San> {
    vec![San::Uri(
        format!("spiffe://cluster.local/ns/default/sa/{n}")
            .parse()
            .unwrap(),
    )]
}

#[tokio::test]
async fn token_auth_direct_signing_verifies_to_openbaos_root() {
    let (bao, root_pem) = bao_with_pki();
    let dir = tempfile::tempdir().unwrap();
    let token = bao.create_token(&["signet"], "1h", true, None);
    let token_file = write(dir.path(), "token", &token);
    let backend = build(
        "v",
        &BackendConfig::Vault(Box::new(config(
            &bao.addr(),
            VaultAuth::Token {
                token_file: Some(token_file),
                token_env: None,
            },
        ))),
        Arc::new(SystemClock),
    )
    .await
    .unwrap();
    let a = authority(backend.clone());

    let chain = issue(&a, workload("demo"), Profile::Workload)
        .await
        .unwrap();
    let root = pem::certificates(root_pem.as_bytes()).unwrap().remove(0);
    assert_eq!(chain.trust_bundle().roots(), &[root.into()]);
    assert!(
        chain.intermediates().is_empty(),
        "the root signs directly; the root itself is not repeated"
    );
    assert!(backend.describe().ready.is_ok());

    let server = vec![
        San::Dns(DnsName::new("api.example.com").unwrap()),
        San::Ip("10.1.2.3".parse().unwrap()),
    ];
    let chain = issue(&a, server, Profile::Server).await.unwrap();
    assert!(chain.not_after() <= SystemTime::now() + Duration::from_secs(3600 + 300));
    assert_eq!(bao.issued_serials("pki").len(), 3, "root + two leaves");
}

#[tokio::test]
async fn refusals_and_outages_are_classified() {
    let (mut bao, _) = bao_with_pki();
    let dir = tempfile::tempdir().unwrap();
    // A token without the policy: 403, logged in again, still 403 → permanent.
    let weak = bao.create_token(&["default"], "1h", true, None);
    let cfg = config(
        &bao.addr(),
        VaultAuth::Token {
            token_file: Some(write(dir.path(), "weak", &weak)),
            token_env: None,
        },
    );
    let backend = VaultBackend::new("v", cfg, Arc::new(SystemClock)).unwrap();
    let err = issue(&authority(backend), workload("a"), Profile::Workload)
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::BackendRejected, "{err}");

    // A role that does not allow the name: permanent too.
    let token = bao.create_token(&["signet"], "1h", true, None);
    let mut cfg = config(
        &bao.addr(),
        VaultAuth::Token {
            token_file: Some(write(dir.path(), "t", &token)),
            token_env: None,
        },
    );
    cfg.role = Some("nosuchrole".into());
    let backend = VaultBackend::new("v", cfg.clone(), Arc::new(SystemClock)).unwrap();
    let err = issue(&authority(backend), workload("a"), Profile::Workload)
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::BackendRejected, "{err}");

    // Vault gone: retryable, and fast.
    cfg.role = Some("mesh".into());
    let backend = build(
        "v",
        &BackendConfig::Vault(Box::new(cfg)),
        Arc::new(SystemClock),
    )
    .await
    .unwrap();
    let a = authority(backend);
    issue(&a, workload("a"), Profile::Workload).await.unwrap();
    bao.kill();
    let started = std::time::Instant::now();
    let err = issue(&a, workload("a"), Profile::Workload)
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::BackendUnavailable, "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn approle_logs_in_again_when_its_token_expires() {
    let (bao, _) = bao_with_pki();
    let dir = tempfile::tempdir().unwrap();
    let (role_id, secret_id) = bao.approle("signet", &["signet"], "3s", "3s");
    let auth = VaultAuth::Approle {
        mount: "approle".into(),
        role_id,
        secret_id_file: write(dir.path(), "secret-id", &secret_id),
    };
    let backend = VaultBackend::new("v", config(&bao.addr(), auth), Arc::new(SystemClock)).unwrap();
    let a = authority(backend);
    issue(&a, workload("first"), Profile::Workload)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(4)).await;
    issue(&a, workload("after-expiry"), Profile::Workload)
        .await
        .expect("logged in again");
}

#[tokio::test]
async fn a_renewable_token_is_kept_alive() {
    let (bao, _) = bao_with_pki();
    let dir = tempfile::tempdir().unwrap();
    // Lives 3 s unless renewed; the file keeps the same token, so only
    // renewal can keep signing working past 3 s.
    let token = bao.create_token(&["signet"], "3s", true, Some("1h"));
    let cfg = config(
        &bao.addr(),
        VaultAuth::Token {
            token_file: Some(write(dir.path(), "token", &token)),
            token_env: None,
        },
    );
    let backend = build(
        "v",
        &BackendConfig::Vault(Box::new(cfg)),
        Arc::new(SystemClock),
    )
    .await
    .unwrap();
    let a = authority(backend);
    issue(&a, workload("first"), Profile::Workload)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(7)).await;
    issue(&a, workload("later"), Profile::Workload)
        .await
        .expect("token was renewed");
}

/// A delegated authority over OpenBao's `pki` (token auth, no leaf role),
/// holding its first intermediate.
async fn delegated_over(bao: &OpenBao, dir: &std::path::Path) -> Arc<Delegated> {
    let token = bao.create_token(&["signet"], "1h", true, None);
    let mut cfg = config(
        &bao.addr(),
        VaultAuth::Token {
            token_file: Some(write(dir, "token", &token)),
            token_env: None,
        },
    );
    cfg.role = None; // delegated mode needs no leaf role
    let upstream = build(
        "v",
        &BackendConfig::Vault(Box::new(cfg)),
        Arc::new(SystemClock),
    )
    .await
    .unwrap();
    let delegated = Delegated::start(
        "mesh",
        upstream,
        IntermediateConfig::default(),
        td(),
        Arc::new(SystemClock),
    );
    tokio::time::timeout(Duration::from_secs(10), delegated.ready())
        .await
        .expect("intermediate");
    delegated
}

#[tokio::test]
async fn delegated_over_vault_signs_fifty_leaves_with_one_intermediate() {
    let (bao, root_pem) = bao_with_pki();
    let dir = tempfile::tempdir().unwrap();
    let before = bao.issued_serials("pki").len();
    let delegated = delegated_over(&bao, dir.path()).await;
    let a = authority(delegated.clone());
    let root = pem::certificates(root_pem.as_bytes()).unwrap().remove(0);
    for n in 0..50 {
        let chain = issue(&a, workload(&format!("w{n}")), Profile::Workload)
            .await
            .unwrap();
        assert_eq!(chain.intermediates().len(), 1);
        assert_eq!(chain.trust_bundle().roots()[0].as_ref(), root.as_slice());
    }
    assert_eq!(
        bao.issued_serials("pki").len() - before,
        1,
        "only the intermediate came from OpenBao"
    );
    // OpenBao's sign-intermediate puts the issued certificate into ca_chain;
    // the installed CA's chain does not repeat it.
    let ca = delegated.current().unwrap();
    assert!(ca.chain().is_empty());
}

#[tokio::test]
async fn an_intermediate_mount_without_its_root_needs_roots_file() {
    let (bao, root_pem) = bao_with_pki();
    // pki_int: an intermediate signed by pki's root, imported without its chain.
    bao.enable_pki("pki_int");
    let csr = bao.api(
        "POST",
        "pki_int/intermediate/generate/internal",
        Some(json!({ "common_name": "OpenBao int", "key_type": "ec", "key_bits": 256 })),
    );
    let signed = bao.api(
        "POST",
        "pki/root/sign-intermediate",
        Some(json!({ "csr": csr["data"]["csr"], "common_name": "OpenBao int", "ttl": "8760h", "format": "pem" })),
    );
    bao.api(
        "POST",
        "pki_int/intermediate/set-signed",
        Some(json!({ "certificate": signed["data"]["certificate"] })),
    );
    bao.create_role("pki_int", "mesh");
    bao.write_policy("signet-int", &OpenBao::signet_policy("pki_int", "mesh"));
    let dir = tempfile::tempdir().unwrap();
    let token = bao.create_token(&["signet-int"], "1h", true, None);
    let mut cfg = config(
        &bao.addr(),
        VaultAuth::Token {
            token_file: Some(write(dir.path(), "token", &token)),
            token_env: None,
        },
    );
    cfg.mount = "pki_int".into();

    // Without the root, the intermediate itself is the anchor.
    let backend = VaultBackend::new("v", cfg.clone(), Arc::new(SystemClock)).unwrap();
    let bundle = backend.refresh_trust_bundle().await.unwrap();
    assert!(
        !bundle
            .roots()
            .iter()
            .any(|r| signet_core::chain::is_self_signed(r))
    );

    // With roots_file, the chain goes up to the real root.
    cfg.roots_file = Some(write(dir.path(), "root.pem", &root_pem));
    let backend = VaultBackend::new("v", cfg, Arc::new(SystemClock)).unwrap();
    let chain = issue(&authority(backend), workload("x"), Profile::Workload)
        .await
        .unwrap();
    assert_eq!(chain.intermediates().len(), 1, "leaf → OpenBao int → root");
    assert!(
        chain
            .trust_bundle()
            .roots()
            .iter()
            .any(|r| signet_core::chain::is_self_signed(r))
    );
}

/// A stand-in for Vault versions whose answers OpenBao 2.7 no longer gives.
mod fake {
    use std::sync::{Arc, Mutex};
    use std::time::{Duration, SystemTime};

    use axum::Json;
    use axum::extract::{Path, State};
    use axum::http::Method;
    use axum::routing::{any, post};
    use serde_json::{Value, json};
    use signet_core::caller::Caller;
    use signet_core::issuer::LocalCa;
    use signet_core::key::{KeyAlgorithm, PrivateKey};
    use signet_core::testing;

    use signet_core::policy::{
        AuthorityPolicy, IssuanceRequest, PolicyConfig, Profile, TtlOverflow,
    };
    use signet_core::{VerifiedCsr, pem};

    /// How `sign` answers.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum Quirk {
        /// No `ca_chain` at all, `expiration` as a string.
        NoChainStringExpiration,
        /// `ca_chain: []`.
        EmptyChain,
        /// `ca_chain` as one string, root before intermediate.
        OneStringUnordered,
        /// `ca_chain` repeating the issued certificate.
        ChainWithLeaf,
    }

    pub struct Fake {
        pub root: LocalCa,
        pub inter: LocalCa,
        pub quirk: Mutex<Quirk>,
    }

    pub async fn start() -> (String, Arc<Fake>) {
        let now = SystemTime::now();
        let root = LocalCa::self_signed_root(
            "fake vault root",
            PrivateKey::generate(KeyAlgorithm::EcdsaP256).unwrap(),
            now,
            Duration::from_secs(86_400 * 365),
        )
        .unwrap();
        let td = signet_core::spiffe::TrustDomain::new("cluster.local").unwrap();
        let inter = testing::intermediate_under(
            &root,
            "fake int",
            &td,
            0,
            now,
            Duration::from_secs(86_400 * 30),
            Duration::ZERO,
        );
        let fake = Arc::new(Fake {
            root,
            inter,
            quirk: Mutex::new(Quirk::EmptyChain),
        });
        let app = axum::Router::new()
            .route("/v1/auth/token/lookup-self", any(lookup_self))
            .route("/v1/pki/sign/mesh", post(sign))
            .route("/v1/pki/issuers", any(issuers))
            .route("/v1/pki/issuer/{id}/json", any(issuer))
            .with_state(fake.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        (format!("http://{addr}"), fake)
    }

    fn wrap(data: Value) -> Json<Value> {
        Json(
            json!({ "request_id": "x", "lease_id": "", "renewable": false, "lease_duration": 0, "data": data, "wrap_info": null, "warnings": null, "auth": null }),
        )
    }

    async fn lookup_self() -> Json<Value> {
        wrap(json!({
            "accessor": "a", "creation_time": 0, "creation_ttl": 0, "display_name": "t", "entity_id": "",
            "expire_time": null, "explicit_max_ttl": 0, "id": "t", "issue_time": null, "meta": null,
            "num_uses": 0, "orphan": true, "path": "auth/token/create", "policies": ["root"],
            "renewable": false, "ttl": 0
        }))
    }

    async fn issuers(method: Method) -> Json<Value> {
        assert_eq!(method.as_str(), "LIST");
        wrap(json!({ "keys": ["r1"], "key_info": {} }))
    }

    async fn issuer(State(f): State<Arc<Fake>>, Path(id): Path<String>) -> Json<Value> {
        assert_eq!(id, "r1");
        let root = f.root.trust_bundle().to_pem();
        wrap(
            json!({ "certificate": root, "ca_chain": [root], "issuer_id": "r1", "issuer_name": "" }),
        )
    }

    // Vault clients do not always send a JSON content type: read the bytes.
    async fn sign(State(f): State<Arc<Fake>>, body: axum::body::Bytes) -> Json<Value> {
        let body: Value = serde_json::from_slice(&body).unwrap();
        let csr = VerifiedCsr::from_pem(body["csr"].as_str().unwrap().as_bytes()).unwrap();
        let policy = AuthorityPolicy::new(
            signet_core::spiffe::TrustDomain::new("cluster.local").unwrap(),
            PolicyConfig::default(),
        )
        .unwrap();
        let grant = testing::grant(&["spiffe://cluster.local/**"], &[Profile::Workload]);
        let req = IssuanceRequest {
            profile: Profile::Workload,
            ttl: Some(Duration::from_secs(3600)),
            ttl_overflow: TtlOverflow::Clamp,
            renewable: false,
            request_id: None,
        };
        let d = policy
            .decide(
                &Caller::internal("fake"),
                &grant,
                &csr,
                &req,
                SystemTime::now(),
            )
            .unwrap();
        let chain = f.inter.sign(&d, csr.public_key()).await.unwrap();
        let leaf = chain.leaf_pem();
        let inter = pem::encode_certificate(f.inter.certificate());
        let root = f.root.trust_bundle().to_pem();
        let quirk = *f.quirk.lock().unwrap();
        let data = match quirk {
            Quirk::NoChainStringExpiration => {
                json!({ "certificate": leaf, "issuing_ca": inter, "serial_number": "01", "expiration": "1999999999" })
            }
            Quirk::EmptyChain => {
                json!({ "certificate": leaf, "issuing_ca": inter, "ca_chain": [], "serial_number": "01", "expiration": 1999999999 })
            }
            Quirk::OneStringUnordered => {
                json!({ "certificate": leaf, "issuing_ca": inter, "ca_chain": format!("{root}{inter}"), "serial_number": "01", "expiration": 1999999999 })
            }
            Quirk::ChainWithLeaf => {
                json!({ "certificate": leaf, "issuing_ca": inter, "ca_chain": [leaf, inter, root], "serial_number": "01", "expiration": 1999999999 })
            }
        };
        wrap(data)
    }
}

#[tokio::test]
async fn vaults_chain_quirks_all_give_the_same_verified_chain() {
    let (addr, fake) = fake::start().await;
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(
        &addr,
        VaultAuth::Token {
            token_file: Some(write(dir.path(), "token", "fake")),
            token_env: None,
        },
    );
    cfg.resilience.attempts = 1;
    let backend = VaultBackend::new("fake", cfg, Arc::new(SystemClock)).unwrap();
    let a = authority(backend);
    for quirk in [
        fake::Quirk::NoChainStringExpiration,
        fake::Quirk::EmptyChain,
        fake::Quirk::OneStringUnordered,
        fake::Quirk::ChainWithLeaf,
    ] {
        *fake.quirk.lock().unwrap() = quirk;
        let chain = issue(&a, workload("q"), Profile::Workload)
            .await
            .unwrap_or_else(|e| panic!("{quirk:?}: {e}"));
        assert_eq!(
            chain.intermediates(),
            &[fake.inter.certificate().clone()],
            "{quirk:?}"
        );
        assert_eq!(
            chain.trust_bundle().roots(),
            fake.root.trust_bundle().roots(),
            "{quirk:?}"
        );
    }
}

#[test]
fn vault_config_parses_every_auth_method_and_refuses_ambiguity() {
    let parse = |auth: &str| {
        let y =
            format!("type: vault\naddress: https://vault.example:8200\nrole: mesh\nauth: {auth}\n");
        serde_yaml_ng::from_str::<BackendConfig>(&y)
    };
    let auth = |c: BackendConfig| match c {
        BackendConfig::Vault(v) => v.auth,
        _ => unreachable!(),
    };
    assert!(matches!(
        auth(parse("{ token: { token_file: /t } }").unwrap()),
        VaultAuth::Token { .. }
    ));
    assert!(matches!(
        auth(parse("{ token: { token_env: VAULT_TOKEN } }").unwrap()),
        VaultAuth::Token { .. }
    ));
    match auth(parse("{ approle: { role_id: r, secret_id_file: /s } }").unwrap()) {
        VaultAuth::Approle { mount, .. } => assert_eq!(mount, "approle"),
        other => panic!("{other:?}"),
    }
    match auth(parse("{ kubernetes: { role: signet } }").unwrap()) {
        VaultAuth::Kubernetes {
            mount, token_file, ..
        } => {
            assert_eq!(mount, "kubernetes");
            assert_eq!(
                token_file.to_str().unwrap(),
                "/var/run/secrets/kubernetes.io/serviceaccount/token"
            );
        }
        other => panic!("{other:?}"),
    }
    for bad in [
        "{}",
        "{ token: {} }",
        "{ token: { token_file: /t, token_env: X } }",
        "{ token: { token_file: /t }, approle: { role_id: r, secret_id_file: /s } }",
        "{ tokn: {} }",
    ] {
        assert!(parse(bad).is_err(), "{bad} accepted");
    }
}

/// OpenBao's Kubernetes auth method calls a TokenReview endpoint; this stands
/// in for the API server with just that (the full Kubernetes API fake lives
/// with the Kubernetes front-ends).
async fn token_review_server(accept: &'static str) -> String {
    use axum::Json;
    use axum::routing::post;
    use serde_json::Value;
    let app = axum::Router::new().route(
        "/apis/authentication.k8s.io/v1/tokenreviews",
        post(move |body: axum::body::Bytes| async move {
            let review: Value = serde_json::from_slice(&body).unwrap();
            let ok = review["spec"]["token"].as_str() == Some(accept);
            Json(json!({
                "apiVersion": "authentication.k8s.io/v1",
                "kind": "TokenReview",
                "status": if ok {
                    json!({ "authenticated": true, "user": { "username": "system:serviceaccount:signet:signet", "uid": "uid-1", "groups": ["system:serviceaccounts", "system:serviceaccounts:signet"] } })
                } else {
                    json!({ "authenticated": false, "error": "invalid token" })
                }
            }))
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    format!("http://{addr}")
}

/// A service-account-shaped JWT (OpenBao reads its claims; the review decides).
fn sa_jwt() -> String {
    use base64::Engine as _;
    let b64 = |v: serde_json::Value| {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
    };
    format!(
        "{}.{}.{}",
        b64(json!({ "alg": "RS256", "kid": "k" })),
        b64(json!({
            "iss": "kubernetes/serviceaccount",
            "sub": "system:serviceaccount:signet:signet",
            "kubernetes.io/serviceaccount/namespace": "signet",
            "kubernetes.io/serviceaccount/service-account.name": "signet",
            "kubernetes.io/serviceaccount/service-account.uid": "uid-1"
        })),
        "c2lnbmF0dXJl"
    )
}

#[tokio::test]
async fn kubernetes_auth_logs_in_with_a_service_account_token() {
    let (bao, some_ca) = bao_with_pki();
    let jwt = sa_jwt();
    let host = token_review_server(Box::leak(jwt.clone().into_boxed_str())).await;
    bao.api(
        "POST",
        "sys/auth/kubernetes",
        Some(json!({ "type": "kubernetes" })),
    );
    bao.api("POST", "auth/kubernetes/config", Some(json!({ "kubernetes_host": host, "disable_local_ca_jwt": true, "kubernetes_ca_cert": some_ca })));
    bao.api(
        "POST",
        "auth/kubernetes/role/signet",
        Some(json!({ "bound_service_account_names": ["signet"], "bound_service_account_namespaces": ["signet"], "token_policies": ["signet"], "token_ttl": "1h" })),
    );
    let dir = tempfile::tempdir().unwrap();
    let auth = VaultAuth::Kubernetes {
        mount: "kubernetes".into(),
        role: "signet".into(),
        token_file: write(dir.path(), "sa-token", &jwt),
    };
    let backend = VaultBackend::new("v", config(&bao.addr(), auth), Arc::new(SystemClock)).unwrap();
    issue(&authority(backend), workload("k8s"), Profile::Workload)
        .await
        .expect("signed after a Kubernetes login");

    // A token the review rejects: permanent refusal.
    let auth = VaultAuth::Kubernetes {
        mount: "kubernetes".into(),
        role: "signet".into(),
        token_file: write(
            dir.path(),
            "bad",
            &sa_jwt().replace("c2lnbmF0dXJl", "Zm9yZ2Vk"),
        ),
    };
    let backend = VaultBackend::new("v", config(&bao.addr(), auth), Arc::new(SystemClock)).unwrap();
    let err = issue(&authority(backend), workload("k8s"), Profile::Workload)
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::BackendRejected, "{err}");
}

#[tokio::test]
async fn a_role_that_copies_the_csr_common_name_is_caught() {
    let (bao, _) = bao_with_pki();
    bao.api("POST", "pki/roles/mesh", Some(json!({ "key_type": "any", "allow_any_name": true, "allowed_uri_sans": "spiffe://*", "require_cn": false, "use_csr_common_name": true, "use_csr_sans": false })));
    let dir = tempfile::tempdir().unwrap();
    let token = bao.create_token(&["signet"], "1h", true, None);
    let backend = VaultBackend::new(
        "v",
        config(
            &bao.addr(),
            VaultAuth::Token {
                token_file: Some(write(dir.path(), "t", &token)),
                token_env: None,
            },
        ),
        Arc::new(SystemClock),
    )
    .unwrap();
    // issue() sends a CSR with CN "ignored-cn"; this role copies it.
    let err = issue(&authority(backend), workload("cn"), Profile::Workload)
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::BadChain, "{err}");
    assert!(err.to_string().contains("common name"), "{err}");
}

/// Real time, shifted: signet's clock `offset_s` seconds off OpenBao's.
#[derive(Debug)]
struct Skewed(i64);

impl signet_core::clock::Clock for Skewed {
    fn now(&self) -> SystemTime {
        let d = Duration::from_secs(self.0.unsigned_abs());
        if self.0 >= 0 {
            SystemTime::now() + d
        } else {
            SystemTime::now() - d
        }
    }
}

/// Clock skew between signet and OpenBao (which back-dates NotBefore by
/// 30 s): signet behind by 80 s sees NotBefore 50 s ahead, within the
/// one-minute allowance; 200 s behind is refused as a clock problem, never
/// returned; ahead by ten minutes is harmless.
#[tokio::test]
async fn clock_skew_is_tolerated_within_a_minute_and_named_beyond() {
    let (bao, _root) = bao_with_pki();
    let dir = tempfile::tempdir().unwrap();
    let token = bao.create_token(&["signet"], "1h", true, None);
    let token_file = write(dir.path(), "token", &token);
    for (offset, ok) in [(-80, true), (600, true), (-200, false)] {
        let clock: Arc<dyn signet_core::clock::Clock> = Arc::new(Skewed(offset));
        let backend = build(
            "v",
            &BackendConfig::Vault(Box::new(config(
                &bao.addr(),
                VaultAuth::Token {
                    token_file: Some(token_file.clone()),
                    token_env: None,
                },
            ))),
            clock.clone(),
        )
        .await
        .unwrap();
        let policy = PolicyConfig {
            max_ttl: HumanDuration::from_secs(86_400),
            ..PolicyConfig::default()
        };
        let a = Authority::new(
            "mesh",
            backend,
            AuthorityPolicy::new(td(), policy).unwrap(),
            clock,
        );
        let result = issue(&a, workload("demo"), Profile::Workload).await;
        match (ok, result) {
            (true, Ok(chain)) => assert!(chain.verify(SystemTime::now()).is_ok()),
            (false, Err(e)) => {
                assert_eq!(e.kind(), ErrorKind::BadChain, "{e}");
                let detail = e.to_string();
                assert!(
                    detail.contains("not valid before") && detail.contains("clock"),
                    "{detail}"
                );
            }
            (ok, other) => panic!("offset {offset}s: expected ok={ok}, got {other:?}"),
        }
    }
}

/// `issue` and OpenSSL's verdict against exactly `root_pem`.
async fn issue_verifies_to(a: &Authority, root_pem: &str, what: &str) -> IssuedChain {
    let chain = issue(a, workload("layout"), Profile::Workload)
        .await
        .unwrap_or_else(|e| panic!("{what}: {e}"));
    let dir = tempfile::tempdir().unwrap();
    let (leaf, inter, root) = (
        dir.path().join("leaf.pem"),
        dir.path().join("chain.pem"),
        dir.path().join("root.pem"),
    );
    std::fs::write(&leaf, chain.leaf_pem()).unwrap();
    std::fs::write(&inter, chain.intermediate_pems().concat()).unwrap();
    std::fs::write(&root, root_pem).unwrap();
    let untrusted = (!chain.intermediates().is_empty()).then_some(inter.as_path());
    signet_tests::openssl::verify(&root, untrusted, &leaf, None)
        .unwrap_or_else(|e| panic!("{what}: {e}"));
    chain
}

fn token_backend(
    bao: &OpenBao,
    dir: &std::path::Path,
    mount: &str,
    role: &str,
) -> Arc<VaultBackend> {
    let policy = format!("signet-{mount}-{role}");
    bao.write_policy(&policy, &OpenBao::signet_policy(mount, role));
    let token = bao.create_token(&[&policy], "1h", true, None);
    let mut cfg = config(
        &bao.addr(),
        VaultAuth::Token {
            token_file: Some(write(dir, &format!("{policy}.token"), &token)),
            token_env: None,
        },
    );
    cfg.mount = mount.into();
    cfg.role = Some(role.into());
    VaultBackend::new("v", cfg, Arc::new(SystemClock)).unwrap()
}

/// An intermediate mount signed by `pki`'s root; `with_root` imports the
/// root with it (as `set-signed` allows), else the intermediate alone.
fn intermediate_mount(bao: &OpenBao, mount: &str, with_root: Option<&str>) -> String {
    bao.enable_pki(mount);
    let csr = bao.api(
        "POST",
        &format!("{mount}/intermediate/generate/internal"),
        Some(json!({ "common_name": format!("{mount} int"), "key_type": "ec", "key_bits": 256 })),
    );
    let signed = bao.api(
        "POST",
        "pki/root/sign-intermediate",
        Some(json!({ "csr": csr["data"]["csr"], "common_name": format!("{mount} int"), "ttl": "8760h", "format": "pem" })),
    );
    let int = signed["data"]["certificate"].as_str().unwrap().to_owned();
    let bundle = match with_root {
        Some(root) => format!("{}\n{root}", int.trim()),
        None => int.clone(),
    };
    bao.api(
        "POST",
        &format!("{mount}/intermediate/set-signed"),
        Some(json!({ "certificate": bundle })),
    );
    bao.create_role(mount, "mesh");
    int
}

#[tokio::test]
async fn every_openbao_layout_reports_itself_and_chains_to_its_root() {
    use signet_core::layout::Position;
    let (bao, root_pem) = bao_with_pki();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();

    // 1. A root mount signing directly: no chain, the root is the anchor.
    let root_backend = token_backend(&bao, d, "pki", "mesh");
    let layout = root_backend.layout().await.unwrap();
    assert_eq!(layout.position(), Position::Root, "{layout}");
    assert!(
        layout
            .facts
            .contains(&("issuers in the mount".into(), "1".into())),
        "{layout}"
    );
    let chain = issue_verifies_to(&authority(root_backend.clone()), &root_pem, "root mount").await;
    assert!(chain.intermediates().is_empty());

    // 2. An intermediate mount that holds its root: subordinate, anchored at the root.
    intermediate_mount(&bao, "pki_int", Some(&root_pem));
    let b = token_backend(&bao, d, "pki_int", "mesh");
    let layout = b.layout().await.unwrap();
    assert_eq!(layout.position(), Position::Subordinate, "{layout}");
    assert!(layout.anchored_at_root, "{layout}");
    let chain = issue_verifies_to(&authority(b), &root_pem, "intermediate with root").await;
    assert_eq!(chain.intermediates().len(), 1);

    // 3. An intermediate mount without its root: the layout says so and what to do.
    intermediate_mount(&bao, "pki_int2", None);
    let b = token_backend(&bao, d, "pki_int2", "mesh");
    let layout = b.layout().await.unwrap();
    assert!(!layout.anchored_at_root, "{layout}");
    assert!(layout.to_string().contains("roots_file"), "{layout}");

    // 4. A root rotation adds a second issuer to `pki`; a role may pin either.
    let next = bao.api(
        "POST",
        "pki/root/rotate/internal",
        Some(json!({ "common_name": "OpenBao next root", "issuer_name": "next", "ttl": "87600h", "key_type": "ec", "key_bits": 256 })),
    );
    let next_pem = next["data"]["certificate"].as_str().unwrap().to_owned();
    bao.api(
        "POST",
        "pki/roles/mesh-next",
        Some(json!({
            "issuer_ref": "next", "key_type": "any", "allow_any_name": true,
            "allowed_uri_sans": "spiffe://*", "require_cn": false,
            "use_csr_common_name": false, "use_csr_sans": false,
            "key_usage": "DigitalSignature", "server_flag": true, "client_flag": true,
            "max_ttl": "720h",
        })),
    );
    // The old role still signs with the old root; both roots are trusted.
    let bundle = root_backend.refresh_trust_bundle().await.unwrap();
    assert_eq!(bundle.roots().len(), 2, "both issuers' roots");
    let layout = root_backend.layout().await.unwrap();
    assert!(
        layout
            .facts
            .contains(&("issuers in the mount".into(), "2".into())),
        "{layout}"
    );
    assert_eq!(layout.anchors.len(), 2);
    let old = issue_verifies_to(&authority(root_backend.clone()), &root_pem, "old issuer").await;
    assert_eq!(old.trust_bundle().roots().len(), 2);
    // A role pinned to the new issuer chains to the new root.
    let next_backend = token_backend(&bao, d, "pki", "mesh-next");
    let layout = next_backend.layout().await.unwrap();
    assert!(
        layout
            .facts
            .contains(&("signing issuer".into(), "next".into())),
        "{layout}"
    );
    assert_eq!(layout.position(), Position::Root, "{layout}");
    issue_verifies_to(&authority(next_backend), &next_pem, "next issuer").await;
    // Making the new issuer the mount's default moves the old role over.
    bao.api(
        "POST",
        "pki/config/issuers",
        Some(json!({ "default": "next" })),
    );
    issue_verifies_to(&authority(root_backend), &next_pem, "default moved").await;
}

/// A root rotation inside one OpenBao mount: two root issuers (`old`,
/// `next`), each a backend (`issuer:`), and a rotation slot moving from one
/// to the other. Leaves are issued by the phase's issuer, through
/// `<mount>/issuer/<ref>/sign/<role>`; bundles carry each root's role; the
/// chains are checked by webpki under the expected root alone.
#[tokio::test]
async fn a_root_rotation_moves_signing_to_the_next_issuer_of_the_mount() {
    use signet_core::chain::RootRole;
    use signet_core::rotation::{Phase, Rotating, Rotation};
    let bao = OpenBao::dev();
    bao.enable_pki("pki");
    let mut roots = std::collections::BTreeMap::new();
    for name in ["old", "next"] {
        let r = bao.api(
            "POST",
            "pki/root/generate/internal",
            Some(json!({ "common_name": format!("{name} root"), "issuer_name": name, "ttl": "87600h", "key_type": "ec" })),
        );
        let pem = r["data"]["certificate"].as_str().unwrap().to_owned();
        roots.insert(name, pem::certificates(pem.as_bytes()).unwrap().remove(0));
    }
    bao.create_role("pki", "mesh");
    bao.write_policy(
        "signet",
        &format!(
            "{}path \"pki/issuer/+/sign/mesh\" {{ capabilities = [\"create\", \"update\"] }}\n",
            OpenBao::signet_policy("pki", "mesh")
        ),
    );
    let dir = tempfile::tempdir().unwrap();
    let token_file = write(
        dir.path(),
        "token",
        &bao.create_token(&["signet"], "1h", true, None),
    );
    let mut backends = std::collections::BTreeMap::new();
    for name in ["old", "next"] {
        let mut c = config(
            &bao.addr(),
            VaultAuth::Token {
                token_file: Some(token_file.clone()),
                token_env: None,
            },
        );
        c.issuer = Some(name.to_owned());
        let b = build(
            name,
            &BackendConfig::Vault(Box::new(c)),
            Arc::new(SystemClock),
        )
        .await
        .unwrap();
        backends.insert(name.to_owned(), b);
    }
    let slot = Arc::new(Rotating::new(
        "old",
        backends["old"].clone(),
        backends.clone(),
    ));
    let a = authority(slot.clone());
    let under = |chain: &IssuedChain, root: &str| {
        let der = rustls_pki_types::CertificateDer::from(roots[root].clone());
        let anchor = webpki::anchor_from_trusted_cert(&der).unwrap().to_owned();
        let ee = webpki::EndEntityCert::try_from(chain.leaf()).unwrap();
        ee.verify_for_usage(
            webpki::ALL_VERIFICATION_ALGS,
            &[anchor],
            chain.intermediates(),
            rustls_pki_types::UnixTime::now(),
            webpki::KeyUsage::client_auth(),
            None,
            None,
        )
        .is_ok()
    };
    let roles = |b: &signet_core::TrustBundle| -> Vec<(Vec<u8>, RootRole)> {
        b.with_roles().map(|(d, r)| (d.to_vec(), r)).collect()
    };
    let (old, next) = (roots["old"].to_vec(), roots["next"].to_vec());

    // Without a rotation the backend trusts its own issuer's root only.
    let chain = issue(&a, workload("w"), Profile::Workload).await.unwrap();
    assert!(under(&chain, "old") && !under(&chain, "next"));
    assert_eq!(
        roles(chain.trust_bundle()),
        [(old.clone(), RootRole::Current)]
    );

    let mut rotation = Rotation::new(
        None,
        "next".into(),
        Duration::from_secs(60),
        Duration::from_secs(3600),
        Duration::from_secs(1),
        SystemTime::now(),
        String::new(),
    );
    for (phase, issuer, want) in [
        (
            Phase::Publish,
            "old",
            vec![
                (old.clone(), RootRole::Current),
                (next.clone(), RootRole::Next),
            ],
        ),
        (
            Phase::Issue,
            "next",
            vec![
                (next.clone(), RootRole::Current),
                (old.clone(), RootRole::Retiring),
            ],
        ),
        (Phase::Done, "next", vec![(next.clone(), RootRole::Current)]),
    ] {
        rotation.phase = phase;
        slot.apply(Some(&rotation)).unwrap();
        let chain = issue(&a, workload("w"), Profile::Workload).await.unwrap();
        assert!(under(&chain, issuer), "{phase}: issued by {issuer}");
        assert_eq!(
            roles(chain.trust_bundle()),
            want,
            "{phase}: the answer's bundle"
        );
        assert_eq!(roles(&slot.trust_bundle().await.unwrap()), want, "{phase}");
    }
}

/// An emergency re-key of a delegated authority over OpenBao: the
/// intermediate stops signing at once, a new one on a fresh key replaces it,
/// and OpenBao has revoked the old one (its CRL lists it).
#[tokio::test]
async fn a_rekey_withdraws_the_intermediate_and_revokes_it_in_openbao() {
    use signet_core::revocation::Reason;
    let (bao, _root) = bao_with_pki();
    let dir = tempfile::tempdir().unwrap();
    let delegated = delegated_over(&bao, dir.path()).await;
    let a = authority(delegated.clone());
    let old = delegated.current().unwrap();
    let before_leaf = issue(&a, workload("w"), Profile::Workload).await.unwrap();
    assert_eq!(before_leaf.intermediates()[0], *old.certificate());

    // A request older than the intermediate held is ignored.
    let long_ago = SystemTime::now() - Duration::from_secs(3600);
    assert_eq!(delegated.rekey(long_ago, Reason::KeyCompromise).await, None);
    assert!(Arc::ptr_eq(&delegated.current().unwrap(), &old));

    let requested = SystemTime::now();
    let serial = delegated
        .rekey(requested, Reason::KeyCompromise)
        .await
        .expect("the intermediate is withdrawn");
    let new = signet_core::testing::eventually_changes(
        || delegated.current().unwrap_or_else(|| old.clone()),
        &old,
    )
    .await;
    assert_ne!(new.certificate(), old.certificate());
    assert_ne!(new.key().spki_der(), old.key().spki_der(), "a fresh key");
    let after = issue(&a, workload("w"), Profile::Workload).await.unwrap();
    assert_eq!(after.intermediates()[0], *new.certificate());
    let cert = bao.api(
        "GET",
        &format!(
            "pki/cert/{}",
            signet_core::revocation::colon_serial(&serial)
        ),
        None,
    );
    assert!(
        cert["data"]["revocation_time"].as_i64().unwrap_or(0) > 0,
        "OpenBao revoked {serial}: {cert}"
    );
    // The same request again changes nothing: the new one came after it.
    assert_eq!(
        delegated.rekey(requested, Reason::KeyCompromise).await,
        None
    );
}
