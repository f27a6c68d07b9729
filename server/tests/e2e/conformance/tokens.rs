//! The Istio gRPC front-end with real service-account tokens (TokenRequest,
//! audience `istio-ca`) checked by the real API server's TokenReview, signet
//! authenticating to it with its own service account's token (RBAC:
//! `system:auth-delegator` and pod reads only), and ztunnel-style
//! impersonation decided from real Pod objects.

use std::collections::BTreeMap;
use std::path::Path;

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use k8s_openapi::api::core::v1::{Pod, ServiceAccount};
use kube::api::{DeleteParams, PostParams};
use kube::{Api, Client};
use serde_json::json;
use signet_tests::control_plane::ControlPlane;
use signet_tests::istio_client::IstioCertificateRequest;
use signet_tests::istio_client::istio_certificate_service_client::IstioCertificateServiceClient;
use signet_tests::openssl;
use signet_tests::process::Signet;
use tonic::Code;

use super::support::*;

async fn pod(c: &Client, ns: &str, name: &str, sa: &str, node: &str) -> String {
    let api: Api<Pod> = Api::namespaced(c.clone(), ns);
    let p: Pod = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": { "name": name },
        "spec": { "serviceAccountName": sa, "nodeName": node,
                  "containers": [{ "name": "app", "image": "example.invalid/app" }] }
    }))
    .unwrap();
    api.create(&PostParams::default(), &p)
        .await
        .unwrap()
        .metadata
        .uid
        .unwrap()
}

fn request(
    csr: &str,
    token: &str,
    impersonate: Option<&str>,
) -> tonic::Request<IstioCertificateRequest> {
    let metadata = impersonate.map(|id| prost_types::Struct {
        fields: BTreeMap::from([(
            "ImpersonatedIdentity".to_owned(),
            prost_types::Value {
                kind: Some(prost_types::value::Kind::StringValue(id.to_owned())),
            },
        )]),
    });
    let mut r = tonic::Request::new(IstioCertificateRequest {
        csr: csr.to_owned(),
        validity_duration: 3600,
        metadata,
    });
    r.metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    r
}

fn csr(dir: &Path, name: &str, id: &str) -> String {
    let p = openssl::csr(
        dir,
        name,
        openssl::Key::EcP256,
        Some(&format!("URI:{id}")),
        &[],
    );
    std::fs::read_to_string(p).unwrap()
}

/// A token in the API server's own format and key, already expired: only a
/// real TokenReview can say so (TokenRequest will not mint one).
fn expired_token(cp: &ControlPlane, ns: &str, sa: &str, uid: &str) -> String {
    use base64::Engine as _;
    let key_pem = std::fs::read(cp.dir().join("sa-key.pem")).unwrap();
    let pub_pem = std::fs::read_to_string(cp.dir().join("sa.pub")).unwrap();
    let pub_der = signet_core::pem::parse_strict(pub_pem.as_bytes()).unwrap()[0]
        .der
        .clone();
    // kube-apiserver's key ID: base64url(SHA-256(PKIX public key)).
    let kid = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode(signet_core::crypto::sha256(&pub_der));
    let mut h = Header::new(Algorithm::ES256);
    h.kid = Some(kid);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let claims = json!({
        "iss": cp.server, "aud": ["istio-ca"], "sub": format!("system:serviceaccount:{ns}:{sa}"),
        "iat": now - 7200, "nbf": now - 7200, "exp": now - 3600,
        "kubernetes.io": { "namespace": ns, "serviceaccount": { "name": sa, "uid": uid } }
    });
    jsonwebtoken::encode(&h, &claims, &EncodingKey::from_ec_pem(&key_pem).unwrap()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_are_checked_by_the_real_token_review() {
    let cp = ControlPlane::start();
    let c = admin(&cp).await;
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();

    // signet's own identity: a service account allowed TokenReview and pod reads.
    service_account(&c, "signet", "signet").await;
    bind_cluster_role(
        &c,
        "signet-auth-delegator",
        "system:auth-delegator",
        "signet",
        "signet",
    )
    .await;
    grant_cluster(
        &c,
        "signet-pods",
        vec![rule(&[""], &["pods"], &["get", "list"])],
        "signet",
        "signet",
    )
    .await;
    let own = token(&c, "signet", "signet", &[], None).await;
    let kubeconfig = cp.kubeconfig_with_token("signet", &own);

    let (cert, key, root) = local_ca(d);
    let config = format!(
        r#"trust_domain: cluster.local
backends:
  ca: {{ type: local, cert_file: {cert}, key_file: {key}, chain_file: {root} }}
authorities:
  mesh: {{ backend: ca }}
frontends:
  istio:
    listen: 127.0.0.1:0
    authority: mesh
    auth:
      token_review:
        clusters:
          Kubernetes: {{ kubeconfig: {kc} }}
    impersonation: {{ trusted_node_accounts: [istio-system/ztunnel] }}
"#,
        cert = cert.display(),
        key = key.display(),
        root = root.display(),
        kc = kubeconfig.display()
    );
    std::fs::write(d.join("signet.yaml"), config).unwrap();
    let signet = Signet::start(
        &bin(),
        &["serve", "--config", d.join("signet.yaml").to_str().unwrap()],
    )
    .expect("signet starts");
    let mut istio = IstioCertificateServiceClient::new(istio_channel(&signet, &root, None).await);
    let demo = "spiffe://cluster.local/ns/default/sa/demo";

    // A real TokenRequest token for istio-ca: the workload's own identity.
    service_account(&c, "default", "demo").await;
    let good = token(&c, "default", "demo", &["istio-ca"], None).await;
    let resp = istio
        .create_certificate(request(&csr(d, "demo", demo), &good, None))
        .await
        .expect("a real token is accepted")
        .into_inner();
    let (leaf, chain) = (d.join("leaf.pem"), d.join("chain.pem"));
    std::fs::write(&leaf, &resp.cert_chain[0]).unwrap();
    std::fs::write(
        &chain,
        resp.cert_chain[1..resp.cert_chain.len() - 1].concat(),
    )
    .unwrap();
    openssl::verify(&root, Some(&chain), &leaf, None).unwrap();
    assert!(openssl::text(&leaf).contains(&format!("URI:{demo}")));

    // Refused by the real review, each as UNAUTHENTICATED.
    let wrong_aud = token(&c, "default", "demo", &["kubernetes"], None).await;
    let api_aud = token(&c, "default", "demo", &[], None).await;
    let gone_uid = service_account(&c, "default", "gone").await;
    let gone = token(&c, "default", "gone", &["istio-ca"], None).await;
    Api::<ServiceAccount>::namespaced(c.clone(), "default")
        .delete("gone", &DeleteParams::default())
        .await
        .unwrap();
    let demo_uid = service_account(&c, "default", "demo").await;
    let expired = expired_token(&cp, "default", "demo", &demo_uid);
    let _ = gone_uid;
    for (what, t) in [
        ("a token for another audience", &wrong_aud),
        ("a token for the API server's audience", &api_aud),
        ("a deleted service account's token", &gone),
        ("an expired token", &expired),
        ("garbage", &"not-a-token".to_owned()),
    ] {
        let err = istio
            .create_certificate(request(&csr(d, "x", demo), t, None))
            .await
            .expect_err(what);
        assert_eq!(err.code(), Code::Unauthenticated, "{what}: {err:?}");
    }

    // ztunnel may act for pods on its own node, and only those.
    service_account(&c, "istio-system", "ztunnel").await;
    service_account(&c, "prod", "db").await;
    let zt_uid = pod(&c, "istio-system", "ztunnel-abc", "ztunnel", "node-1").await;
    pod(&c, "default", "demo-1", "demo", "node-1").await;
    pod(&c, "prod", "db-0", "db", "node-2").await;
    let zt = token(
        &c,
        "istio-system",
        "ztunnel",
        &["istio-ca"],
        Some(("ztunnel-abc", &zt_uid)),
    )
    .await;
    istio
        .create_certificate(request(&csr(d, "imp", demo), &zt, Some(demo)))
        .await
        .expect("a pod on ztunnel's node");
    let db = "spiffe://cluster.local/ns/prod/sa/db";
    let err = istio
        .create_certificate(request(&csr(d, "db", db), &zt, Some(db)))
        .await
        .expect_err("a pod on another node");
    assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");
    // A workload that is not a trusted node account may not impersonate.
    let err = istio
        .create_certificate(request(&csr(d, "imp2", db), &good, Some(db)))
        .await
        .expect_err("not a node account");
    assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");
    // istio-agent's own CA client code, with a real token, accepts what signet answers.
    let out = d.join("agent");
    let grpc = signet.grpc_addr.unwrap().to_string();
    let got = agent_client(&grpc, &root, &good, "default", "demo", &out)
        .unwrap_or_else(|e| panic!("istio-agent's client refused signet's answer: {e}"));
    let chain = out.join("cert-chain.pem");
    openssl::verify(&out.join("root-cert.pem"), Some(&chain), &chain, None).unwrap();
    assert!(
        openssl::text(&chain).contains(&format!("URI:{demo}")),
        "{got}"
    );
    assert_eq!(
        std::fs::read_to_string(out.join("root-cert.pem"))
            .unwrap()
            .trim(),
        std::fs::read_to_string(&root).unwrap().trim(),
        "the agent's root is signet's"
    );
    // A token for another audience fails there too.
    assert!(
        agent_client(
            &grpc,
            &root,
            &wrong_aud,
            "default",
            "demo",
            &d.join("agent2")
        )
        .is_err()
    );
    drop(signet);
    println!(
        "proved: istio-agent's CA client code (SecretManagerClient over the citadel client) gets and accepts signet's workload certificate with a real token; real TokenRequest tokens pass the real TokenReview (signet holding only auth-delegator and pod reads); other audiences, the API audience, deleted accounts, expired and garbage tokens are UNAUTHENTICATED; impersonation follows real Pods' spec.nodeName"
    );
}

/// TokenReviews the API server has answered, from its own metrics.
async fn token_reviews(c: &Client) -> u64 {
    let text = c
        .request_text(http::Request::get("/metrics").body(Vec::new()).unwrap())
        .await
        .unwrap();
    text.lines()
        .filter(|l| {
            l.starts_with("apiserver_request_total{") && l.contains("resource=\"tokenreviews\"")
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

fn with_cluster(
    mut r: tonic::Request<IstioCertificateRequest>,
    cluster: &str,
) -> tonic::Request<IstioCertificateRequest> {
    r.metadata_mut()
        .insert("clusterid", cluster.parse().unwrap());
    r
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_reviews_go_to_the_cluster_the_request_names_and_are_cached() {
    let (primary, remote) = (ControlPlane::start(), ControlPlane::start());
    let (pc, rc) = (admin(&primary).await, admin(&remote).await);
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let (cert, key, root) = local_ca(d);
    let config = format!(
        r#"trust_domain: cluster.local
backends:
  ca: {{ type: local, cert_file: {cert}, key_file: {key}, chain_file: {root} }}
authorities:
  mesh: {{ backend: ca }}
frontends:
  istio:
    listen: 127.0.0.1:0
    authority: mesh
    auth:
      token_review:
        cache_ttl: 5m
        clusters:
          Kubernetes: {{ kubeconfig: {primary} }}
          east: {{ kubeconfig: {remote} }}
"#,
        cert = cert.display(),
        key = key.display(),
        root = root.display(),
        primary = reviewer_kubeconfig(&primary, "primary").await.display(),
        remote = reviewer_kubeconfig(&remote, "remote").await.display(),
    );
    std::fs::write(d.join("signet.yaml"), config).unwrap();
    let signet = Signet::start(
        &bin(),
        &["serve", "--config", d.join("signet.yaml").to_str().unwrap()],
    )
    .expect("signet starts");
    let mut istio = IstioCertificateServiceClient::new(istio_channel(&signet, &root, None).await);
    let demo = "spiffe://cluster.local/ns/default/sa/demo";
    service_account(&pc, "default", "demo").await;
    service_account(&rc, "default", "demo").await;
    let home = token(&pc, "default", "demo", &["istio-ca"], None).await;
    let east = token(&rc, "default", "demo", &["istio-ca"], None).await;

    // Each token is reviewed by the cluster the request names (no header:
    // the primary, `Kubernetes`), and only by that one.
    let before = (token_reviews(&pc).await, token_reviews(&rc).await);
    for _ in 0..3 {
        istio
            .create_certificate(request(&csr(d, "home", demo), &home, None))
            .await
            .expect("the primary's token, no cluster named");
        istio
            .create_certificate(with_cluster(
                request(&csr(d, "east", demo), &east, None),
                "east",
            ))
            .await
            .expect("the remote's token, named");
    }
    let after = (token_reviews(&pc).await, token_reviews(&rc).await);
    assert_eq!(
        (after.0 - before.0, after.1 - before.1),
        (1, 1),
        "one review per token on its own cluster: positive reviews are cached"
    );
    for (what, t, cluster) in [
        ("the remote's token sent to the primary", &east, None),
        (
            "the primary's token sent to the remote",
            &home,
            Some("east"),
        ),
        ("a cluster signet does not know", &home, Some("west")),
    ] {
        let mut r = request(&csr(d, "x", demo), t, None);
        if let Some(c) = cluster {
            r = with_cluster(r, c);
        }
        let err = istio.create_certificate(r).await.expect_err(what);
        assert_eq!(err.code(), Code::Unauthenticated, "{what}: {err:?}");
    }
    drop(signet);
    println!(
        "proved: with two real clusters, a token is reviewed by the cluster its request names in ClusterID (the primary when none), another cluster's token or an unknown cluster is UNAUTHENTICATED, and a positive review is cached (one TokenReview per token, counted by kube-apiserver's own metrics)"
    );
}
