//! The chart's own RBAC on a real API server: the chart is rendered for a
//! configuration with every Kubernetes writer (CSR signer, root ConfigMaps,
//! `cacerts`, istiod's TLS Secret) and applied (the API server validates
//! every object); two signet replicas then run with a token of the chart's
//! ServiceAccount — not an admin — so a verb the chart forgot fails the
//! test. One replica leads on the real Lease API; istiod files a real
//! CertificateSigningRequest that only the leader signs; the leader is
//! killed and the other takes over; nothing is signed twice.

use std::path::Path;
use std::time::Duration;

use base64::Engine as _;
use k8s_openapi::api::certificates::v1::{CertificateSigningRequest, ClusterTrustBundle};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::api::PostParams;
use kube::{Api, Client};
use serde_json::json;
use signet_core::key::{KeyAlgorithm, PrivateKey};
use signet_core::names::San;
use signet_core::pem;
use signet_tests::control_plane::ControlPlane;
use signet_tests::eventually;
use signet_tests::openssl;
use signet_tests::process::Signet;

use super::support::*;

const ISTIOD: &str = "system:serviceaccount:istio-system:istiod";

/// The configuration, with files under `pki` (the chart mounts them from a Secret).
fn config(pki: &str, admin: &str) -> serde_json::Value {
    serde_yaml_ng::from_str(&format!(
        r#"trust_domain: cluster.local
admin: {{ listen: "{admin}" }}
backends:
  int: {{ type: local, cert_file: {pki}/ca.pem, key_file: {pki}/ca-key.pem, chain_file: {pki}/root.pem }}
  root: {{ type: local, cert_file: {pki}/root.pem, key_file: {pki}/root-key.pem }}
authorities:
  mesh: {{ backend: int }}
leader_election: {{ namespace: signet, lease_duration: 2s, renew_deadline: 1500ms, retry_period: 200ms }}
frontends:
  kubernetes_csr: {{ authority: mesh, signer_names: [signet.dev/mesh], allowed_requesters: ["{ISTIOD}"] }}
  istio_root_cert: {{ authority: mesh, namespace_selector: "istio-injection=enabled", poll: 1s }}
  istio_cacerts: {{ backend: root, ttl: 720h }}
  istiod_tls: {{ authority: mesh, revisions: [default] }}
  cluster_trust_bundles: {{ bundles: [{{ authority: mesh, signer_name: signet.dev/mesh }}], poll: 1s }}
"#
    ))
    .unwrap()
}

/// How long a controller has to converge in these tests.
const WITHIN: Duration = Duration::from_secs(30);

/// Audit lines of leaves issued for the demo workload.
fn demo_leaves(s: &Signet) -> usize {
    s.logs()
        .iter()
        .filter(|l| {
            l.contains("\"message\":\"certificate issued\"")
                && l.contains("spiffe://cluster.local/ns/default/sa/demo")
        })
        .count()
}

async fn holder(c: &Client) -> Option<String> {
    Api::<Lease>::namespaced(c.clone(), "signet")
        .get_opt("signet-leader")
        .await
        .unwrap()
        .and_then(|l| l.spec?.holder_identity)
}

/// A CSR as istiod's RA mode files it, created with istiod's own token.
async fn file_csr(istiod: &Client, name: &str) {
    let key = PrivateKey::generate(KeyAlgorithm::EcdsaP256).unwrap();
    let der = key
        .csr_der(
            None,
            &[San::Uri(
                "spiffe://cluster.local/ns/default/sa/demo".parse().unwrap(),
            )],
        )
        .unwrap();
    let csr: CertificateSigningRequest = serde_json::from_value(json!({
        "metadata": { "name": name },
        "spec": {
            "request": base64::engine::general_purpose::STANDARD.encode(pem::encode("CERTIFICATE REQUEST", &der)),
            "signerName": "signet.dev/mesh",
            "usages": ["digital signature", "key encipherment", "server auth", "client auth"],
            "expirationSeconds": 3600
        }
    }))
    .unwrap();
    Api::<CertificateSigningRequest>::all(istiod.clone())
        .create(&PostParams::default(), &csr)
        .await
        .unwrap();
}

async fn approve(admin: &Client, name: &str) {
    let api: Api<CertificateSigningRequest> = Api::all(admin.clone());
    let mut csr = api.get(name).await.unwrap();
    csr.status = Some(
        serde_json::from_value(json!({ "conditions": [{
            "type": "Approved", "status": "True", "reason": "IstiodApproved", "message": "as istiod does"
        }]}))
        .unwrap(),
    );
    api.replace_subresource("approval", name, &PostParams::default(), &csr)
        .await
        .unwrap();
}

async fn certificate(c: &Client, name: &str) -> Option<Vec<u8>> {
    Api::<CertificateSigningRequest>::all(c.clone())
        .get(name)
        .await
        .ok()?
        .status?
        .certificate
        .map(|b| b.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_chart_rbac_runs_two_replicas_one_writer_with_failover() {
    let cp = ControlPlane::start();
    let admin = admin(&cp).await;
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let (_, _, root_pem) = local_ca(d);
    mesh_namespaces(&admin).await;

    // Render the chart for this configuration and apply all of it.
    let values = d.join("values.yaml");
    std::fs::write(
        &values,
        serde_json::to_string(&json!({
            "config": config("/etc/signet/pki", "0.0.0.0:9090"),
            "secretMounts": [{ "name": "pki", "secretName": "signet-pki", "mountPath": "/etc/signet/pki" }],
        }))
        .unwrap(),
    )
    .unwrap();
    let chart = Path::new(env!("CARGO_MANIFEST_DIR")).join("../charts/signet");
    let out = signet_tests::helm::render(&chart, "signet", "signet", std::slice::from_ref(&values));
    let one = &out[values.to_str().unwrap()];
    assert!(one["render_error"].is_null(), "{}", one["render_error"]);
    let kinds = apply_manifests(&admin, &one["manifests"], "signet", false).await;
    for k in ["ServiceAccount", "ClusterRole", "Role", "Deployment"] {
        assert!(kinds.iter().any(|x| x == k), "{k} not in {kinds:?}");
    }

    // The replicas run as the chart's ServiceAccount.
    let sa_token = token(&admin, "signet", "signet", &[], None).await;
    let kubeconfig = cp.kubeconfig_with_token("chart-signet", &sa_token);
    let mut local = config(&d.display().to_string(), "127.0.0.1:0");
    local["kubernetes"] = json!({ "kubeconfig": kubeconfig });
    let start = |identity: &str| {
        let mut c = local.clone();
        c["leader_election"]["identity"] = json!(identity);
        let path = d.join(format!("{identity}.yaml"));
        std::fs::write(&path, serde_yaml_ng::to_string(&c).unwrap()).unwrap();
        Signet::start(&bin(), &["serve", "--config", path.to_str().unwrap()])
            .expect("signet starts")
    };
    let a = start("replica-a");
    eventually("replica-a leads", WITHIN, async || {
        (holder(&admin).await.as_deref() == Some("replica-a")).then_some(())
    })
    .await;
    let b = start("replica-b");

    // istiod (its own RBAC: create and read CSRs) files a CSR; approval as istiod would.
    service_account(&admin, "istio-system", "istiod").await;
    grant_cluster(
        &admin,
        "istiod-csr",
        vec![rule(
            &["certificates.k8s.io"],
            &["certificatesigningrequests"],
            &["create", "get", "list", "watch", "delete"],
        )],
        "istio-system",
        "istiod",
    )
    .await;
    let istiod_token = token(&admin, "istio-system", "istiod", &[], None).await;
    let istiod = client_from(&cp.kubeconfig_with_token("istiod", &istiod_token)).await;
    file_csr(&istiod, "first").await;
    approve(&admin, "first").await;
    let cert = eventually("first CSR signed", WITHIN, async || {
        certificate(&istiod, "first").await
    })
    .await;
    let leaf = d.join("first.pem");
    std::fs::write(&leaf, &cert).unwrap();
    openssl::verify(&root_pem, Some(&d.join("ca.pem")), &leaf, None).unwrap();
    // The other writers, under the same RBAC.
    eventually("istio-ca-root-cert", WITHIN, async || {
        Api::<ConfigMap>::namespaced(admin.clone(), "mesh-apps")
            .get_opt("istio-ca-root-cert")
            .await
            .unwrap()
    })
    .await;
    eventually("cacerts", WITHIN, async || {
        Api::<Secret>::namespaced(admin.clone(), "istio-system")
            .get_opt("cacerts")
            .await
            .unwrap()
    })
    .await;
    eventually("istiod-tls", WITHIN, async || {
        Api::<Secret>::namespaced(admin.clone(), "istio-system")
            .get_opt("istiod-tls")
            .await
            .unwrap()
    })
    .await;
    // The ClusterTrustBundle, linked to the signer (the chart grants
    // `attest` on it; the real API server checks that).
    let root_text = std::fs::read_to_string(&root_pem).unwrap();
    eventually("ClusterTrustBundle", WITHIN, async || {
        Api::<ClusterTrustBundle>::all(admin.clone())
            .get_opt("signet.dev:mesh:mesh")
            .await
            .unwrap()
            .filter(|b| b.spec.trust_bundle == root_text)
    })
    .await;
    assert!(
        Api::<ConfigMap>::namespaced(admin.clone(), "istio-system")
            .get_opt("istio-ca-root-cert")
            .await
            .unwrap()
            .is_none(),
        "only selected namespaces get the root"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    let signed_by = |s: &Signet| {
        s.logs()
            .iter()
            .filter(|l| l.contains("kubernetes CSR signed"))
            .count()
    };
    assert_eq!(
        (signed_by(&a), signed_by(&b)),
        (1, 0),
        "only the leader writes"
    );
    for s in [&a, &b] {
        assert!(
            !s.logs()
                .iter()
                .any(|l| l.to_lowercase().contains("forbidden")),
            "a request the chart's RBAC does not allow: {:#?}",
            s.logs()
        );
    }

    let audit_a = demo_leaves(&a);
    assert_eq!(audit_a, 1, "the first CSR was signed once: {:#?}", a.logs());
    // The leader is killed (no Lease release): the other takes over when it expires.
    drop(a);
    eventually("replica-b leads", WITHIN, async || {
        (holder(&admin).await.as_deref() == Some("replica-b")).then_some(())
    })
    .await;
    let rv = Api::<CertificateSigningRequest>::all(admin.clone())
        .get("first")
        .await
        .unwrap()
        .metadata
        .resource_version;
    file_csr(&istiod, "second").await;
    approve(&admin, "second").await;
    eventually("second CSR signed", WITHIN, async || {
        certificate(&istiod, "second").await
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(signed_by(&b), 1, "the new leader signed the new CSR only");
    // And each CSR was signed exactly once: one audit line per CSR leaf (the
    // watch cache lags the signer's own write; a stale copy must not be
    // signed again).
    assert_eq!(demo_leaves(&b), 1, "{:#?}", b.logs());
    assert_eq!(
        Api::<CertificateSigningRequest>::all(admin.clone())
            .get("first")
            .await
            .unwrap()
            .metadata
            .resource_version,
        rv,
        "the first CSR is not signed again"
    );
    drop(b);
    println!(
        "proved: the chart applies to a real API server; under its own ServiceAccount's RBAC two replicas elect one writer on the Lease API, sign istiod's real CSRs, write root ConfigMaps, cacerts and istiod's TLS Secret, fail over when the leader is killed, and sign nothing twice"
    );
}
