//! Routing on the Istio gRPC front-end with a real kube-apiserver: two
//! tenants' namespaces (told apart by a label signet watches) get
//! certificates from two authorities with two roots, each answer carrying
//! its own root; the `CertSigner` metadata routes too; a renewal is only
//! accepted under the roots of the authority its identity routes to.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::Namespace;
use kube::api::PostParams;
use kube::{Api, Client};
use serde_json::json;
use signet_tests::control_plane::ControlPlane;
use signet_tests::istio_client::IstioCertificateRequest;
use signet_tests::istio_client::istio_certificate_service_client::IstioCertificateServiceClient;
use signet_tests::openssl::{self, Key};
use signet_tests::process::Signet;
use tonic::Code;
use tonic::transport::{Channel, Identity};

use super::support::*;

async fn labelled_namespace(c: &Client, name: &str, labels: serde_json::Value) {
    let ns: Namespace =
        serde_json::from_value(json!({ "metadata": { "name": name, "labels": labels } })).unwrap();
    Api::<Namespace>::all(c.clone())
        .create(&PostParams::default(), &ns)
        .await
        .unwrap();
}

fn request(
    csr: &str,
    token: Option<&str>,
    cert_signer: Option<&str>,
) -> tonic::Request<IstioCertificateRequest> {
    let metadata = cert_signer.map(|s| prost_types::Struct {
        fields: BTreeMap::from([(
            "CertSigner".to_owned(),
            prost_types::Value {
                kind: Some(prost_types::value::Kind::StringValue(s.to_owned())),
            },
        )]),
    });
    let mut r = tonic::Request::new(IstioCertificateRequest {
        csr: csr.to_owned(),
        validity_duration: 3600,
        metadata,
    });
    if let Some(t) = token {
        r.metadata_mut()
            .insert("authorization", format!("Bearer {t}").parse().unwrap());
    }
    r
}

/// A CSR for `id` on a fresh key (`<name>.key` beside it).
fn csr(dir: &Path, name: &str, id: &str) -> String {
    let p = openssl::csr(dir, name, Key::EcP256, Some(&format!("URI:{id}")), &[]);
    std::fs::read_to_string(p).unwrap()
}

/// Writes an answer's leaf, intermediates and root into `dir`; returns
/// `(leaf, chain, root)` paths.
fn save(dir: &Path, name: &str, chain: &[String]) -> (PathBuf, PathBuf, PathBuf) {
    let paths = (
        dir.join(format!("{name}-leaf.pem")),
        dir.join(format!("{name}-chain.pem")),
        dir.join(format!("{name}-root.pem")),
    );
    std::fs::write(&paths.0, &chain[0]).unwrap();
    std::fs::write(&paths.1, chain[1..chain.len() - 1].concat()).unwrap();
    std::fs::write(&paths.2, &chain[chain.len() - 1]).unwrap();
    paths
}

fn same_pem(a: &Path, b: &Path) -> bool {
    std::fs::read_to_string(a).unwrap().trim() == std::fs::read_to_string(b).unwrap().trim()
}

fn policy_test(config: &Path, args: &[&str]) -> String {
    let out = std::process::Command::new(bin())
        .args(["policy", "test", "--config", config.to_str().unwrap()])
        .args(["--frontend", "istio"])
        .args(args)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_namespaces_routed_to_two_authorities_get_two_roots_over_istio_grpc() {
    let cp = ControlPlane::start();
    let c = admin(&cp).await;
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let (da, db) = (d.join("a"), d.join("b"));
    std::fs::create_dir_all(&da).unwrap();
    std::fs::create_dir_all(&db).unwrap();
    let (a_cert, a_key, a_root) = local_ca(&da);
    let (b_cert, b_key, b_root) = local_ca(&db);

    // signet's identity: TokenReview, and Namespaces to watch (routes by label).
    let kc = reviewer_kubeconfig(&cp, "signet").await;
    grant_cluster(
        &c,
        "signet-namespaces",
        vec![rule(&[""], &["namespaces"], &["list", "watch"])],
        "signet",
        "signet",
    )
    .await;

    let cfg = d.join("signet.yaml");
    std::fs::write(
        &cfg,
        format!(
            r#"trust_domain: cluster.local
admin: {{ listen: "127.0.0.1:0" }}
backends:
  a: {{ type: local, cert_file: {a_cert}, key_file: {a_key}, chain_file: {a_root} }}
  b: {{ type: local, cert_file: {b_cert}, key_file: {b_key}, chain_file: {b_root} }}
authorities:
  tenant-a: {{ backend: a }}
  tenant-b: {{ backend: b }}
kubernetes: {{ kubeconfig: {kc} }}
frontends:
  istio:
    listen: 127.0.0.1:0
    authority: tenant-a
    routes:
      - {{ name: labelled-b, authority: tenant-b, namespace_labels: {{ tenant: b }} }}
      - {{ name: asks-for-b, authority: tenant-b, cert_signers: [tenant-b], namespaces: [team-a] }}
    auth:
      token_review:
        clusters:
          Kubernetes: {{ kubeconfig: {kc} }}
"#,
            a_cert = a_cert.display(),
            a_key = a_key.display(),
            a_root = a_root.display(),
            b_cert = b_cert.display(),
            b_key = b_key.display(),
            b_root = b_root.display(),
            kc = kc.display(),
        ),
    )
    .unwrap();
    labelled_namespace(&c, "team-a", json!({ "tenant": "a" })).await;
    labelled_namespace(&c, "team-b", json!({ "tenant": "b" })).await;
    service_account(&c, "team-a", "web").await;
    service_account(&c, "team-b", "web").await;
    let signet = Signet::start(&bin(), &["serve", "--config", cfg.to_str().unwrap()])
        .expect("signet starts");
    // The serving certificate is the default authority's.
    let mut istio = IstioCertificateServiceClient::new(istio_channel(&signet, &a_root, None).await);
    let id_a = "spiffe://cluster.local/ns/team-a/sa/web";
    let id_b = "spiffe://cluster.local/ns/team-b/sa/web";
    let tok_a = token(&c, "team-a", "web", &["istio-ca"], None).await;
    let tok_b = token(&c, "team-b", "web", &["istio-ca"], None).await;

    let ask = async |istio: &mut IstioCertificateServiceClient<Channel>, r| {
        istio
            .create_certificate(r)
            .await
            .map(|r| r.into_inner().cert_chain)
    };
    // team-a: the default route, root A.
    let got = ask(&mut istio, request(&csr(d, "a1", id_a), Some(&tok_a), None))
        .await
        .expect("team-a");
    let (leaf, chain, root) = save(d, "a1", &got);
    openssl::verify(&a_root, Some(&chain), &leaf, None).expect("team-a under root A");
    assert!(openssl::verify(&b_root, Some(&chain), &leaf, None).is_err());
    assert!(same_pem(&root, &a_root), "the answer carries root A");

    // team-b, by its namespace's label: root B, and the answer says so.
    // (The Namespace watch may still be filling: not_ready is UNAVAILABLE,
    // which istio-agent retries.)
    let got = signet_tests::eventually(
        "team-b's certificate",
        std::time::Duration::from_secs(20),
        async || match ask(&mut istio, request(&csr(d, "b1", id_b), Some(&tok_b), None)).await {
            Ok(g) => Some(g),
            Err(s) if s.code() == Code::Unavailable => None,
            Err(s) => panic!("team-b: {s:?}"),
        },
    )
    .await;
    let (b_leaf, b_chain, root) = save(d, "b1", &got);
    openssl::verify(&b_root, Some(&b_chain), &b_leaf, None).expect("team-b under root B");
    assert!(openssl::verify(&a_root, Some(&b_chain), &b_leaf, None).is_err());
    assert!(same_pem(&root, &b_root), "the answer carries root B");
    assert!(openssl::text(&b_leaf).contains(&format!("URI:{id_b}")));

    // team-a asking for signer tenant-b (istio-agent's CertSigner): root B.
    let got = ask(
        &mut istio,
        request(&csr(d, "a2", id_a), Some(&tok_a), Some("tenant-b")),
    )
    .await
    .expect("team-a via CertSigner");
    let (a2_leaf, a2_chain, root) = save(d, "a2", &got);
    openssl::verify(&b_root, Some(&a2_chain), &a2_leaf, None).expect("CertSigner routes to B");
    assert!(same_pem(&root, &b_root));

    // Renewals by mTLS: team-b's certificate renews into B.
    let identity = |name: &str, leaf: &Path, chain: &Path| {
        let pem = format!(
            "{}{}",
            std::fs::read_to_string(leaf).unwrap(),
            std::fs::read_to_string(chain).unwrap()
        );
        Identity::from_pem(pem, std::fs::read(d.join(format!("{name}.key"))).unwrap())
    };
    let mut renew_b = IstioCertificateServiceClient::new(
        istio_channel(&signet, &a_root, Some(identity("b1", &b_leaf, &b_chain))).await,
    );
    let got = ask(&mut renew_b, request(&csr(d, "b2", id_b), None, None))
        .await
        .expect("team-b renews under B");
    let (leaf, chain, _) = save(d, "b2", &got);
    openssl::verify(&b_root, Some(&chain), &leaf, None).unwrap();
    // team-a's certificate from B (via CertSigner) cannot renew without it:
    // team-a routes to A, and B's roots are not A's.
    let mut renew_a2 = IstioCertificateServiceClient::new(
        istio_channel(&signet, &a_root, Some(identity("a2", &a2_leaf, &a2_chain))).await,
    );
    let err = ask(&mut renew_a2, request(&csr(d, "a3", id_a), None, None))
        .await
        .expect_err("a certificate under B renewing into A");
    assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");
    assert!(
        err.message()
            .contains("not under the roots of authority tenant-a"),
        "{err:?}"
    );

    // Metrics name the route.
    let metrics = admin_metrics(&signet).await;
    for want in [
        "frontend=\"istio\",route=\"default\",authority=\"tenant-a\",outcome=\"issued\"",
        "frontend=\"istio\",route=\"labelled-b\",authority=\"tenant-b\",outcome=\"issued\"",
        "frontend=\"istio\",route=\"asks-for-b\",authority=\"tenant-b\",outcome=\"issued\"",
    ] {
        assert!(metrics.contains(want), "{want}\n{metrics}");
    }
    assert!(
        signet
            .logs()
            .iter()
            .any(|l| l.contains("certificate issued") && l.contains("labelled-b")),
        "the audit line names the route"
    );

    // `signet policy test` chooses the same routes.
    let out = policy_test(
        &cfg,
        &[
            "--namespace",
            "team-b",
            "--service-account",
            "web",
            "--namespace-label",
            "tenant=b",
            "--san",
            &format!("URI:{id_b}"),
        ],
    );
    assert!(
        out.contains("route labelled-b, authority tenant-b"),
        "{out}"
    );
    let out = policy_test(
        &cfg,
        &[
            "--namespace",
            "team-a",
            "--service-account",
            "web",
            "--namespace-label",
            "tenant=a",
            "--san",
            &format!("URI:{id_a}"),
        ],
    );
    assert!(out.contains("route default, authority tenant-a"), "{out}");
    let out = policy_test(
        &cfg,
        &[
            "--namespace",
            "team-a",
            "--service-account",
            "web",
            "--namespace-label",
            "tenant=a",
            "--cert-signer",
            "tenant-b",
            "--san",
            &format!("URI:{id_a}"),
        ],
    );
    assert!(
        out.contains("route asks-for-b, authority tenant-b"),
        "{out}"
    );
    drop(signet);
    println!(
        "proved: over the Istio gRPC API with real tokens, a namespace labelled tenant=b (watched on the real API server) gets certificates from authority tenant-b's root and team-a from tenant-a's, each answer carrying its signer's root; CertSigner routes too; a renewal is accepted under its route's roots and refused (UNAUTHENTICATED) under another tenant's; metrics and audit lines name the route; signet policy test prints the same routes"
    );
}
