//! The REST front-end against misbehaving backends, in process: timeouts,
//! load shedding, outages and lying backends each get their own answer.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use axum::body::Body;
use http::Request;
use prometheus_client::registry::Registry;
use serde_json::{Value, json};
use signet::config::{PrincipalConfig, RestAuthConfig, RestConfig, RestLimits};
use signet::listener::PeerInfo;
use signet::rest::Rest;
use signet_core::chain::{IssuedChain, TrustBundle};
use signet_core::duration::HumanDuration;
use signet_core::issuer::LocalCa;
use signet_core::key::{KeyAlgorithm, PrivateKey};
use signet_core::metrics::Metrics;
use signet_core::names::{San, SanPattern};
use signet_core::policy::{AuthorityPolicy, IssuanceDecision, PolicyConfig, Profile};
use signet_core::signer::Capabilities;
use signet_core::spiffe::TrustDomain;
use signet_core::{Authority, BackendInfo, SignError, Signer, SystemClock, VerifiedCsr};
use tower::ServiceExt as _;

#[derive(Debug, Clone, Copy)]
enum Behaviour {
    Slow(Duration),
    Down,
    /// Signs something else than decided (a CA certificate).
    Lies,
}

#[derive(Debug)]
struct Misbehaving {
    ca: LocalCa,
    behaviour: Behaviour,
}

#[async_trait]
impl Signer for Misbehaving {
    async fn sign(
        &self,
        decision: &IssuanceDecision,
        csr: &VerifiedCsr,
    ) -> Result<IssuedChain, SignError> {
        match self.behaviour {
            Behaviour::Slow(d) => {
                tokio::time::sleep(d).await;
                self.ca.sign(decision, csr.public_key()).await
            }
            Behaviour::Down => Err(SignError::BackendUnavailable(
                "connection refused to 10.1.2.3:8200 (secret detail)".into(),
            )),
            Behaviour::Lies => {
                let td = TrustDomain::new("cluster.local").unwrap();
                let d = IssuanceDecision::intermediate(
                    "sneaky",
                    &td,
                    0,
                    SystemTime::now(),
                    Duration::from_secs(3600),
                    Duration::ZERO,
                    "x",
                );
                self.ca.sign(&d, csr.public_key()).await
            }
        }
    }
    async fn trust_bundle(&self) -> Result<TrustBundle, SignError> {
        Ok(self.ca.trust_bundle().clone())
    }
    fn describe(&self) -> BackendInfo {
        BackendInfo {
            name: "misbehaving".into(),
            kind: "test",
            capabilities: Capabilities {
                issues_intermediates: true,
                honours_ttl: true,
                in_process: false,
                idempotent_for: None,
                constrains_path_len: true,
            },
            ca_not_after: Some(self.ca.not_after()),
            ready: Ok(()),
        }
    }
}

fn rest(behaviour: Behaviour, max_concurrent: usize, timeout: Duration) -> (Arc<Rest>, Metrics) {
    let ca = LocalCa::self_signed_root(
        "root",
        PrivateKey::generate(KeyAlgorithm::EcdsaP256).unwrap(),
        SystemTime::now(),
        Duration::from_secs(86_400 * 30),
    )
    .unwrap();
    let td = TrustDomain::new("cluster.local").unwrap();
    let authority = Arc::new(Authority::new(
        "mesh",
        Arc::new(Misbehaving { ca, behaviour }),
        AuthorityPolicy::new(td, PolicyConfig::default()).unwrap(),
        Arc::new(SystemClock),
    ));
    let config = RestConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        authority: "mesh".into(),
        server_names: vec![],
        tls: None,
        auth: RestAuthConfig {
            mtls: None,
            tokens_file: None,
            loopback_unauthenticated: true,
        },
        principals: vec![PrincipalConfig {
            name: signet_core::caller::PrincipalSelector::Anyone,
            allowed_sans: vec![SanPattern::parse("spiffe://cluster.local/**").unwrap()],
            max_ttl: None,
            profiles: Profile::ALL.to_vec(),
            allow_wildcards: false,
        }],
        limits: RestLimits {
            max_concurrent_requests: max_concurrent,
            request_timeout: HumanDuration(timeout),
            ..RestLimits::default()
        },
        spiffe_refresh_hint: HumanDuration::from_secs(300),
    };
    let metrics = Metrics::default();
    let rest = Rest::from_config(
        &config,
        authority,
        metrics.clone(),
        Arc::new(Registry::default()),
        None,
    )
    .unwrap();
    (Arc::new(rest), metrics)
}

fn csr_pem() -> String {
    let key = PrivateKey::generate(KeyAlgorithm::EcdsaP256).unwrap();
    let der = key
        .csr_der(
            None,
            &[San::Uri(
                "spiffe://cluster.local/ns/a/sa/b".parse().unwrap(),
            )],
        )
        .unwrap();
    signet_core::pem::encode("CERTIFICATE REQUEST", &der)
}

async fn call(rest: &Arc<Rest>) -> (u16, Option<String>, Value) {
    let addr: SocketAddr = "127.0.0.1:40000".parse().unwrap();
    let mut req = Request::post("/v1/sign")
        .header("content-type", "application/json")
        .body(Body::from(json!({ "csr": csr_pem() }).to_string()))
        .unwrap();
    req.extensions_mut().insert(PeerInfo {
        addr,
        client_cert: None,
        client_chain: None,
    });
    let resp = rest.clone().router().oneshot(req).await.unwrap();
    let status = resp.status().as_u16();
    let retry = resp
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_owned());
    let body = axum::body::to_bytes(resp.into_body(), 1 << 20)
        .await
        .unwrap();
    (status, retry, serde_json::from_slice(&body).unwrap())
}

#[tokio::test]
async fn slow_backends_time_out_with_503() {
    let (rest, metrics) = rest(
        Behaviour::Slow(Duration::from_secs(5)),
        8,
        Duration::from_millis(200),
    );
    let (status, retry, body) = call(&rest).await;
    assert_eq!(
        (status, body["error"]["code"].as_str().unwrap()),
        (503, "timeout"),
        "{body}"
    );
    assert_eq!(retry.as_deref(), Some("1"));
    assert_eq!(metrics.count("rest", "mesh", "timeout"), 1);
}

#[tokio::test]
async fn a_full_server_sheds_instead_of_queueing() {
    let (rest, metrics) = rest(
        Behaviour::Slow(Duration::from_millis(500)),
        1,
        Duration::from_secs(5),
    );
    let first = tokio::spawn({
        let rest = rest.clone();
        async move { call(&rest).await }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let started = std::time::Instant::now();
    let (status, retry, body) = call(&rest).await;
    assert_eq!(
        (status, body["error"]["code"].as_str().unwrap()),
        (503, "overloaded"),
        "{body}"
    );
    assert!(
        started.elapsed() < Duration::from_millis(300),
        "shed at once, not after waiting"
    );
    assert_eq!(retry.as_deref(), Some("1"));
    let (status, _, body) = first.await.unwrap();
    assert_eq!(status, 200, "{body}");
    assert_eq!(metrics.count("rest", "mesh", "overloaded"), 1);
    assert_eq!(metrics.count("rest", "mesh", "issued"), 1);
}

#[tokio::test]
async fn a_backend_outage_is_503_without_leaking_detail() {
    let (rest, _) = rest(Behaviour::Down, 8, Duration::from_secs(5));
    let (status, _, body) = call(&rest).await;
    assert_eq!(
        (status, body["error"]["code"].as_str().unwrap()),
        (503, "backend_unavailable"),
        "{body}"
    );
    assert!(!body.to_string().contains("10.1.2.3"), "{body}");
}

#[tokio::test]
async fn a_lying_backend_is_caught_and_nothing_is_returned() {
    let (rest, metrics) = rest(Behaviour::Lies, 8, Duration::from_secs(5));
    let (status, _, body) = call(&rest).await;
    assert_eq!(
        (status, body["error"]["code"].as_str().unwrap()),
        (502, "backend_bad_chain"),
        "{body}"
    );
    assert!(body.get("certificate").is_none());
    assert_eq!(metrics.count("rest", "mesh", "backend_bad_chain"), 1);
}
